"""GGUF files -> ordinary Hugging Face model folders, which both engines load.

Neither engine takes a ``.gguf`` file as ``--model_path`` here (vLLM's GGUF loader needs the original
tokenizer from the hub; the HF engine loads folders), so the preflight recognises one and names the command
that converts it: ``llm-infer convert-gguf FILE OUT_DIR``. The conversion dequantizes to fp32 (transformers
refuses to save a still-quantized GGUF model) and keeps the tokenizer and its chat template.
"""

from __future__ import annotations

import shutil
import tempfile
from pathlib import Path

from llm_infer_dagster.errors import SettingsError

__all__ = ["GGUF_MAGIC", "convert_gguf", "convert_hint", "find_gguf", "needs_gguf_package"]

#: The first four bytes of every GGUF file.
GGUF_MAGIC = b"GGUF"


def find_gguf(model_path: str | Path) -> Path | None:
    """The GGUF file ``model_path`` is (or the only one a folder without ``config.json`` holds), else None."""
    path = Path(model_path)
    if path.is_dir():
        if (path / "config.json").is_file():
            return None
        found = sorted(path.glob("*.gguf"))
        return found[0] if len(found) == 1 else None
    if not path.is_file():
        return None
    try:
        with path.open("rb") as f:
            return path if f.read(4) == GGUF_MAGIC else None
    except OSError:
        return None


def convert_hint(gguf_file: Path) -> str:
    """How to turn ``gguf_file`` into a model folder, as one sentence for an error line."""
    out = gguf_file.parent / (gguf_file.name.removesuffix(".gguf") + "-hf")
    return (
        f"{gguf_file} is a GGUF file; the engines load Hugging Face model folders: convert it once with "
        f"`llm-infer convert-gguf {gguf_file} {out}` (needs pip install 'llm-infer-dagster[demo]') and pass "
        f"--model_path {out}"
    )


def needs_gguf_package() -> None:
    """Raise one line naming the ``demo`` extra when the ``gguf`` package (transformers' GGUF reader) is absent."""
    try:
        import gguf  # noqa: F401
    except ImportError:
        raise SettingsError(
            "reading GGUF files needs the gguf package: pip install 'llm-infer-dagster[demo]'"
        ) from None


def convert_gguf(gguf_file: str | Path, out_dir: str | Path) -> Path:
    """Write ``gguf_file`` as a Hugging Face folder at ``out_dir`` (fp32 weights, tokenizer, chat template).

    Built in a temporary sibling folder and renamed into place, so ``out_dir`` is either absent or whole.
    An existing ``out_dir`` is refused: converting never overwrites a model folder.
    """
    source, out = Path(gguf_file).resolve(), Path(out_dir).resolve()
    if not source.is_file():
        raise SettingsError(f"{source} does not exist: name the .gguf file to convert")
    if find_gguf(source) != source:
        raise SettingsError(f"{source} is not a GGUF file (it does not start with {GGUF_MAGIC!r})")
    if out.exists():
        raise SettingsError(f"{out} exists; converting never overwrites a folder: name a new one")
    needs_gguf_package()
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer, GgufConfig

    out.parent.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix=f".{out.name}.", dir=out.parent))
    try:
        tokenizer = AutoTokenizer.from_pretrained(source.parent, gguf_file=source.name)
        model = AutoModelForCausalLM.from_pretrained(
            source.parent,
            gguf_file=source.name,
            dtype=torch.float32,
            quantization_config=GgufConfig(dequantize=True),  # else save_pretrained refuses a GGUF model
        )
        tokenizer.save_pretrained(work)
        model.save_pretrained(work)
        work.chmod(0o755)  # mkdtemp made it private; a model cache is shared like any model folder
        work.rename(out)
    except BaseException:
        shutil.rmtree(work, ignore_errors=True)
        raise
    return out
