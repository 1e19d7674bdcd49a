"""Where the output dir lives: a local folder, or an fsspec URL shared by every node of a cluster.

A local path (``/data/out``) stays a plain :class:`pathlib.Path`, written by temp file + ``os.replace``.
A URL (``s3://bucket/run``, ``gs://...``, ``file:///mnt/shared/run``, ``memory://run`` within one process)
becomes a :class:`RemotePath`: the handful of ``Path`` operations the store uses, over fsspec. Its writes are
as atomic as its filesystem allows, and never less than "a reader sees the old file or the new one":

- a filesystem that renames (``file://``, and any fsspec filesystem whose ``mv`` is a rename: NFS, Lustre
  mounts through ``file://``): the bytes go to a temp name beside the target, then ``mv`` into place;
- an object store (S3, GCS, Azure, ``memory://``): the file is made whole in a local temp file and sent in one
  ``put_file`` (one PUT, or a multipart upload that only appears when completed): no partial object is visible.

What must stay on one host (flock leases, start-up locks, worker and shard logs appended line by line) goes to
a local *state dir* instead (:func:`state_dir_for`); see the README's "Shared storage".
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import os
import shutil
import socket
import tempfile
import uuid
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import polars as pl

from llm_infer_dagster.errors import SettingsError


def is_url(location: str | os.PathLike[str]) -> bool:
    """``s3://b/x``, ``file:///x``, ``memory://x``: yes; ``/x``, ``out``, ``C:\\x``: no."""
    text = os.fspath(location)
    scheme, sep, _ = text.partition("://")
    return bool(sep) and scheme.isidentifier() and len(scheme) > 1


@dataclass(frozen=True)
class RemotePath:
    """One file or folder in an fsspec filesystem, with the ``Path`` methods the shard store uses."""

    fs: Any  # fsspec.AbstractFileSystem
    path: str  # the filesystem's own form: ``bucket/run/x`` for S3, ``/mnt/x`` for file://

    @classmethod
    def from_url(cls, url: str) -> RemotePath:
        import fsspec.core

        try:
            # no listings cache: other processes (engine workers, other nodes) write here; a cached one goes stale
            fs, path = fsspec.core.url_to_fs(url, use_listings_cache=False)
        except ImportError as exc:  # fsspec knows the scheme, its package is not installed
            raise SettingsError(
                f"{url}: {exc} (for s3:// `pip install 'llm-infer-dagster[s3]'`); or use a local --output_path"
            ) from None
        except ValueError as exc:
            raise SettingsError(f"{url}: {exc}; an output dir is a local path or an fsspec URL") from None
        return cls(fs, str(path).rstrip("/"))

    def __str__(self) -> str:
        return str(self.fs.unstrip_protocol(self.path))

    def __truediv__(self, name: str) -> RemotePath:
        if not name or "/" in name or name in (".", ".."):
            raise ValueError(f"{name!r} is not one path component; refusing to build a path under {self}")
        return RemotePath(self.fs, f"{self.path}/{name}")

    @property
    def name(self) -> str:
        return self.path.rsplit("/", 1)[-1]

    @property
    def parent(self) -> RemotePath:
        return RemotePath(self.fs, self.path.rsplit("/", 1)[0])

    def with_suffix(self, suffix: str) -> RemotePath:
        stem = self.name.rsplit(".", 1)[0] if "." in self.name.lstrip(".") else self.name
        return self.parent / f"{stem}{suffix}"

    @property
    def renames(self) -> bool:
        """Whether ``mv`` is an atomic rename here (a local or mounted filesystem), not copy + delete."""
        protocol = self.fs.protocol
        return bool({"file", "local"} & set(protocol if isinstance(protocol, tuple) else (protocol,)))

    def is_file(self) -> bool:
        return bool(self.fs.isfile(self.path))

    def exists(self) -> bool:
        return bool(self.fs.exists(self.path))

    def read_bytes(self) -> bytes:
        return bytes(self.fs.cat_file(self.path))

    def read_text(self, encoding: str = "utf-8") -> str:
        return self.read_bytes().decode(encoding)

    def mtime(self) -> float:
        """Seconds since the epoch of its last write (FileNotFoundError when there is none)."""
        info = self.fs.info(self.path)
        for key in ("mtime", "LastModified", "last_modified", "created"):
            value = info.get(key)
            if value is not None:
                return float(value.timestamp() if hasattr(value, "timestamp") else value)
        return self.fs.modified(self.path).timestamp()  # type: ignore[no-any-return]

    def unlink(self, missing_ok: bool = False) -> None:
        try:
            self.fs.rm_file(self.path)
        except FileNotFoundError:
            if not missing_ok:
                raise

    def rmtree(self) -> None:
        with contextlib.suppress(FileNotFoundError):
            if self.fs.exists(self.path):
                self.fs.rm(self.path, recursive=True)


#: A place in the output dir: a local Path, or a RemotePath when the output dir is a URL.
StorePath = Path | RemotePath


def store_path(location: str | os.PathLike[str]) -> StorePath:
    """The output dir (or a file in it, e.g. a worker's job paths) named by a local path or a URL."""
    text = os.fspath(location)
    if is_url(text):
        return RemotePath.from_url(text)
    return Path(text)


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


_FILE_MODE = 0o666 & ~_umask()


#: A temp file's name says who made it (``.<name>.<host>.<pid>.<random>.tmp``): a process SIGKILLed mid-write
#: leaves its temp behind (never a half-written file under the final name), and :func:`sweep_stale_temps`
#: removes the temps of this host's processes that are gone.
_HOST = socket.gethostname().replace(".", "_")


def _temp_prefix(name: str) -> str:
    return f".{name}.{_HOST}.{os.getpid()}."


def _local_atomic_write(path: Path, write: Callable[[Path], object]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=_temp_prefix(path.name), suffix=".tmp")
    os.close(fd)
    try:
        write(Path(tmp))
        os.chmod(tmp, _FILE_MODE)  # mkstemp makes 0600; results are shared like any written file
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def _remote_atomic_write(path: RemotePath, write: Callable[[Path], object]) -> None:
    with tempfile.TemporaryDirectory(prefix="llm-infer-put.") as scratch:
        local = Path(scratch) / path.name
        write(local)  # the whole file is made before anything is sent
        if path.renames:
            path.fs.makedirs(path.parent.path, exist_ok=True)
            tmp = path.parent / f"{_temp_prefix(path.name)}{uuid.uuid4().hex[:12]}.tmp"
            try:
                path.fs.put_file(str(local), tmp.path)
                path.fs.mv(tmp.path, path.path)
            except BaseException:
                tmp.unlink(missing_ok=True)
                raise
        else:
            path.fs.put_file(str(local), path.path)  # one PUT / completed multipart upload: all or nothing


def atomic_write(path: StorePath, write: Callable[[Path], object]) -> None:
    """Call ``write(tmp)`` on a local temp file, then put it at ``path`` whole (rename, or one object put)."""
    if isinstance(path, RemotePath):
        _remote_atomic_write(path, write)
    else:
        _local_atomic_write(Path(path), write)


def read_parquet(path: StorePath, columns: list[str] | None = None) -> pl.DataFrame:
    if isinstance(path, RemotePath):
        return pl.read_parquet(io.BytesIO(path.read_bytes()), columns=columns)
    return pl.read_parquet(path, columns=columns)


def sweep_stale_temps(folders: Iterable[StorePath], recursive: bool = True) -> int:
    """Remove temp files under local ``folders`` left by writers on this host that are gone; how many.

    Run when a run starts: a crash (SIGKILL, power loss) mid-write leaves a temp beside its target. A temp of a
    live process (another run writing now) or of another host (a shared mount) is left alone. Object stores
    never hold temps (one put per file), so a URL folder is skipped.
    """
    removed = 0
    for folder in folders:
        if isinstance(folder, RemotePath) or not folder.is_dir():
            continue
        for tmp in folder.rglob(".*.tmp") if recursive else folder.glob(".*.tmp"):
            parts = tmp.name.rsplit(".", 4)  # [.<name>, <host>, <pid>, <random>, tmp]
            if len(parts) != 5 or parts[1] != _HOST or not parts[2].isdigit() or _alive(int(parts[2])):
                continue
            with contextlib.suppress(FileNotFoundError):
                tmp.unlink()
                removed += 1
    return removed


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def remove_tree(path: StorePath) -> None:
    """Remove a folder and everything under it; nothing if it is not there."""
    if isinstance(path, RemotePath):
        path.rmtree()
    else:
        shutil.rmtree(path, ignore_errors=True)


def mtime(path: StorePath) -> float:
    """The file's last write, seconds since the epoch (FileNotFoundError when it is not there)."""
    return path.mtime() if isinstance(path, RemotePath) else Path(path).stat().st_mtime


def state_dir_for(output: StorePath, base: str | os.PathLike[str] | None = None) -> Path:
    """The local folder for what cannot live in the output dir itself.

    A local output dir is its own state dir (as before: ``<output>/<task>/.leases``, ``<output>/logs``). A URL
    gets ``<base>/<hash of the URL>``: ``base`` is the deployment's ``state_dir`` (``LLM_INFER_STATE_DIR``),
    by default ``~/.cache/llm-infer-dagster/state``; one per URL, the same for every process of this host.
    """
    if not isinstance(output, RemotePath):
        return Path(output)
    root = Path(base) if base else Path.home() / ".cache" / "llm-infer-dagster" / "state"
    digest = hashlib.sha256(str(output).encode()).hexdigest()[:16]
    return root.expanduser().resolve() / digest
