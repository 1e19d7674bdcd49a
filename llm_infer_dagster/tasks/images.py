"""Images in prompts: find them, resolve where they are, read them, and version them by content.

A chat prompt's message ``content`` may be a list of OpenAI-style parts instead of a string::

    [{"type": "text", "text": "What is in the picture?"},
     {"type": "image_url", "image_url": {"url": "images/cat.png"}}]

The ``url`` is a local path, a ``file://`` URL or a ``data:image/...;base64,`` URL. Where a local file is:

- an absolute path or a ``file:///abs/path`` URL is used as given: the user named it;
- a relative path is taken relative to the folder of the input file that holds the row, and must stay inside
  that folder (``../x.png`` is refused: give an absolute path to read from elsewhere).

Nothing is fetched from the network: an ``http(s)://`` URL is the row's error, telling the user to download
the image first. A missing, unreadable or undecodable image is that row's error too (the shard still
finishes): :func:`localize` checks every image of a prompt when prompts are made and rewrites each relative
path to the absolute one, so the engines read exactly what was checked.

Versioning (``shards/manifest.py``): a row's data version covers the *content* of the images the row names
(:class:`RowImages`: any string field that is a ``file://`` URL or ends in an image suffix, resolved as above),
so a replaced image makes exactly its shard stale, and a renamed but identical one changes nothing. Images
``format_prompt`` builds from other fields (``f"img/{row['id']}.png"``) are not seen there: name the file in
the row. A text-only row's version is unchanged (no image, nothing added).
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import io
import os
import re
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any
from urllib.parse import unquote, urlparse

__all__ = [
    "IMAGE_SUFFIXES",
    "ImageError",
    "RowImages",
    "has_images",
    "image_parts",
    "image_url",
    "images_changed",
    "load_image",
    "localize",
    "read_image_bytes",
]

#: File suffixes that make a row's string field an image reference (for versioning).
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".gif", ".webp", ".bmp", ".tif", ".tiff")
#: Part types that carry an image: OpenAI's ``image_url``, and ``image`` with an ``image``/``url`` key.
IMAGE_PART_TYPES = ("image_url", "image")
#: In a row's JSON: a string that ends in an image suffix, or a file URL (one C-level pass over the text).
_MAY_NAME_IMAGE = re.compile(r"\.(?:png|jpe?g|gif|webp|bmp|tiff?)\"|file://", re.IGNORECASE)
_MAX_REF_CHARS = 4096  # longer strings are text, not paths (data: URLs are in the row's JSON already)


class ImageError(ValueError):
    """One image cannot be used: the message says which, where it was looked for, and how to fix it."""


def _parts(prompt: Any) -> Iterator[dict[str, Any]]:
    if not isinstance(prompt, list):
        return
    for message in prompt:
        content = message.get("content") if isinstance(message, Mapping) else None
        if isinstance(content, list):
            yield from (p for p in content if isinstance(p, dict))


def image_parts(prompt: Any) -> list[dict[str, Any]]:
    """The image parts of a chat prompt, in order (none for text or string-content messages)."""
    return [p for p in _parts(prompt) if p.get("type") in IMAGE_PART_TYPES]


def has_images(prompt: Any) -> bool:
    return any(True for _ in image_parts(prompt))


def image_url(part: Mapping[str, Any]) -> str:
    """The reference an image part carries (``image_url.url``, or ``image_url`` / ``image`` / ``url`` as a str)."""
    value = part.get(part.get("type", ""))
    if isinstance(value, Mapping):
        value = value.get("url")
    if value is None:
        value = part.get("url")
    if not isinstance(value, str) or not value.strip():
        raise ImageError(f"image part {dict(part)!r} has no url; give {{'image_url': {{'url': PATH}}}}")
    return value.strip()


def _with_url(part: Mapping[str, Any], url: str) -> dict[str, Any]:
    return {"type": "image_url", "image_url": {"url": url}}


def resolve(ref: str, base: Path) -> Path | bytes:
    """The file an image reference names (a Path), or a ``data:`` URL's bytes. :class:`ImageError` if refused."""
    if ref.startswith("data:"):
        head, sep, payload = ref.partition(",")
        if not sep or not head.startswith("data:image/") or not head.endswith(";base64"):
            raise ImageError(f"data URL {ref[:40]!r}... is not data:image/<type>;base64,<data>")
        try:
            return base64.b64decode(payload, validate=True)
        except (binascii.Error, ValueError):
            raise ImageError(f"data URL {ref[:40]!r}... is not valid base64") from None
    scheme = urlparse(ref).scheme.lower()
    if scheme in ("http", "https"):
        raise ImageError(f"image {ref!r} is a web URL; nothing is downloaded: download it and name the local file")
    if scheme == "file":
        parsed = urlparse(ref)
        if parsed.netloc not in ("", "localhost"):
            raise ImageError(f"image {ref!r}: a file URL must name a local absolute path (file:///path)")
        return Path(unquote(parsed.path))
    if len(scheme) > 1:  # s3://, gs://, ... (one letter is a Windows drive)
        raise ImageError(f"image {ref!r}: {scheme}:// is not read; give a local path, file:// or data: URL")
    path = Path(os.path.expanduser(ref))
    if path.is_absolute():
        return path
    joined = Path(os.path.normpath(base / path))
    if os.path.relpath(joined, base).split(os.sep)[0] == "..":
        raise ImageError(
            f"image {ref!r} resolves outside {base} (relative paths are read from the input file's folder); "
            "give an absolute path to read it from elsewhere"
        )
    return joined


def read_image_bytes(ref: str, base: Path) -> bytes:
    """The bytes of the image ``ref`` names; :class:`ImageError` (missing, unreadable) otherwise."""
    where = resolve(ref, base)
    if isinstance(where, bytes):
        return where
    try:
        return where.read_bytes()
    except FileNotFoundError:
        raise ImageError(f"image {ref!r} not found ({where})") from None
    except IsADirectoryError:
        raise ImageError(f"image {ref!r} is a folder ({where}), not an image file") from None
    except OSError as exc:
        raise ImageError(f"image {ref!r} cannot be read ({where}): {exc.strerror or exc}") from None


def load_image(ref: str, base: Path = Path("/")) -> Any:
    """The image ``ref`` names as an RGB ``PIL.Image`` (decoded now); :class:`ImageError` if it is not one."""
    from PIL import Image, UnidentifiedImageError

    data = read_image_bytes(ref, base)
    try:
        with Image.open(io.BytesIO(data)) as im:
            im.load()
            return im.convert("RGB")
    except (UnidentifiedImageError, OSError, ValueError, Image.DecompressionBombError) as exc:
        shown = ref if not ref.startswith("data:") else ref[:40] + "..."
        raise ImageError(f"image {shown!r} is not an image PIL can decode ({type(exc).__name__}: {exc})") from None


def localize(prompt: Any, base: Path) -> Any:
    """``prompt`` with every image checked (read and decoded) and named absolutely (a path or its data URL).

    Raises :class:`ImageError` for the first image that cannot be used: the row's error. A prompt without
    images is returned as is.
    """
    if not has_images(prompt):
        return prompt
    out = []
    for message in prompt:
        content = message.get("content")
        if not isinstance(content, list):
            out.append(message)
            continue
        parts = []
        for part in content:
            if isinstance(part, dict) and part.get("type") in IMAGE_PART_TYPES:
                ref = image_url(part)
                load_image(ref, base)
                where = resolve(ref, base)
                parts.append(_with_url(part, ref if isinstance(where, bytes) else str(where)))
            else:
                parts.append(part)
        out.append({**message, "content": parts})
    return out


def _looks_like_image(value: str) -> bool:
    if len(value) > _MAX_REF_CHARS or "\n" in value:
        return False
    lower = value.lower()
    return lower.startswith("file://") or lower.endswith(IMAGE_SUFFIXES)


class RowImages:
    """Versions the images the rows of one input file name: by content, with their stat to notice a change.

    ``suffix(row)`` is added to the row's JSON before it is digested: empty for a row that names no image (its
    version is unchanged), else each named image's SHA-256 (or ``missing``), so a replaced image changes the
    row's version. ``stats`` (path -> [size, mtime_ns], or None while missing) is kept in the manifest so the
    next registration re-reads the file when one of its images changed (:func:`images_changed`).
    """

    def __init__(self, input_file: str | Path) -> None:
        self.base = Path(input_file).resolve().parent
        self.stats: dict[str, list[int] | None] = {}
        self._hashes: dict[str, str] = {}  # an image many rows name is read once

    def _refs(self, value: Any) -> Iterator[str]:
        if isinstance(value, str):
            if _looks_like_image(value):
                yield value
        elif isinstance(value, Mapping):
            for v in value.values():
                yield from self._refs(v)
        elif isinstance(value, list | tuple):
            for v in value:
                yield from self._refs(v)

    def suffix(self, row: Mapping[str, Any], row_json: str | None = None) -> str:
        """What joins the row's JSON (``row_json``, when given, lets a row that cannot name an image skip the
        walk)."""
        if row_json is not None and _MAY_NAME_IMAGE.search(row_json) is None:
            return ""
        versions = []
        for ref in self._refs(row):
            try:
                where = resolve(ref, self.base)
            except ImageError:
                continue  # refused where the prompt is made; nothing to read
            if isinstance(where, bytes):
                continue
            key = str(where)
            if key not in self._hashes:
                try:
                    st = where.stat()
                    self._hashes[key] = hashlib.sha256(where.read_bytes()).hexdigest()
                    self.stats[key] = [st.st_size, st.st_mtime_ns]
                except OSError:
                    self._hashes[key], self.stats[key] = "missing", None
            versions.append(f"{ref}={self._hashes[key]}")
        return "\0images:" + "\0".join(versions) if versions else ""


def images_changed(stats: Mapping[str, list[int] | None]) -> bool:
    """Whether an image a file's rows name changed (size or mtime), appeared or vanished since ``stats``."""
    for path, was in stats.items():
        try:
            st = os.stat(path)
        except OSError:
            if was is not None:
                return True
            continue
        if was is None or [st.st_size, st.st_mtime_ns] != list(was):
            return True
    return False
