"""Images in prompts: where a reference resolves, what is refused, a bad image as its row's error, and a
row's data version covering its images' content (a replaced image changes exactly its shard)."""

from __future__ import annotations

import base64
import json
import os
from pathlib import Path
from typing import Any

import polars as pl
import pytest
from PIL import Image

from llm_infer_dagster.shards.manifest import plan_registration, save_manifest
from llm_infer_dagster.shards.sharding import Shard, row_digest, rows_digest
from llm_infer_dagster.shards.store import TaskStore
from llm_infer_dagster.shards.transforms import prompts_frame, raw_frame
from llm_infer_dagster.tasks.images import ImageError, RowImages, localize, resolve
from llm_infer_dagster.tasks.loader import load_task, to_json

EXAMPLE = Path(__file__).resolve().parents[2] / "task_configs" / "image_example"


def png(path: Path, rgb: tuple[int, int, int]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", (8, 8), rgb).save(path)
    return path


def message(url: str) -> list[dict[str, Any]]:
    return [
        {"role": "user", "content": [{"type": "image_url", "image_url": {"url": url}}, {"type": "text", "text": "?"}]}
    ]


def test_references_resolve_relative_to_the_input_folder_and_stay_inside_it(tmp_path: Path) -> None:
    assert resolve("images/a.png", tmp_path) == tmp_path / "images" / "a.png"
    assert resolve("/abs/a.png", tmp_path) == Path("/abs/a.png")  # named by the user: used as given
    assert resolve("file:///abs/my%20a.png", tmp_path) == Path("/abs/my a.png")
    with pytest.raises(ImageError, match="resolves outside .*give an absolute path"):
        resolve("../secret.png", tmp_path)
    with pytest.raises(ImageError, match="nothing is downloaded: download it"):
        resolve("https://example.com/a.png", tmp_path)
    with pytest.raises(ImageError, match="s3:// is not read"):
        resolve("s3://bucket/a.png", tmp_path)
    with pytest.raises(ImageError, match="file URL must name a local absolute path"):
        resolve("file://host/a.png", tmp_path)
    data = base64.b64encode(png(tmp_path / "x.png", (1, 2, 3)).read_bytes()).decode()
    assert resolve(f"data:image/png;base64,{data}", tmp_path) == (tmp_path / "x.png").read_bytes()
    with pytest.raises(ImageError, match="not data:image"):
        resolve("data:text/plain,hello", tmp_path)


def test_localize_names_each_image_absolutely_and_refuses_a_bad_one(tmp_path: Path) -> None:
    png(tmp_path / "images" / "a.png", (255, 0, 0))
    out = localize(message("images/a.png"), tmp_path)
    assert out[0]["content"][0] == {"type": "image_url", "image_url": {"url": str(tmp_path / "images" / "a.png")}}
    assert out[0]["content"][1] == {"type": "text", "text": "?"}
    assert localize([{"role": "user", "content": "text only"}], tmp_path) == [{"role": "user", "content": "text only"}]
    with pytest.raises(ImageError, match=r"image 'images/none.png' not found \(.*none.png\)"):
        localize(message("images/none.png"), tmp_path)
    (tmp_path / "broken.png").write_bytes(b"not a png at all")
    with pytest.raises(ImageError, match="not an image PIL can decode"):
        localize(message("broken.png"), tmp_path)
    unreadable = png(tmp_path / "locked.png", (0, 0, 0))
    unreadable.chmod(0)
    try:
        if os.access(unreadable, os.R_OK):  # root reads anything: the check below needs an unreadable file
            pytest.skip("running as root: a mode-0 file is still readable")
        with pytest.raises(ImageError, match="cannot be read"):
            localize(message("locked.png"), tmp_path)
    finally:
        unreadable.chmod(0o644)


def test_a_bad_image_is_its_rows_error_and_the_shard_finishes(tmp_path: Path) -> None:
    png(tmp_path / "ok.png", (0, 255, 0))
    (tmp_path / "broken.png").write_bytes(b"junk")
    rows = [{"image": "ok.png"}, {"image": "missing.png"}, {"image": "broken.png"}, {"image": "http://x/y.png"}]
    source = tmp_path / "rows.jsonl"
    raw = raw_frame(Shard(key="k", file=str(source), file_id="f", chunk=0, start=0, stop=4), rows)
    frame = prompts_frame(raw, lambda row: message(row["image"]))
    errors = frame["error"].to_list()
    assert errors[0] is None and json.loads(frame["prompt"][0])[0]["content"][0]["image_url"]["url"] == str(
        tmp_path / "ok.png"
    )
    assert "image 'missing.png' not found" in errors[1] and f"row 1 of {source}" in errors[1]
    assert "not an image PIL can decode" in errors[2]
    assert "download it" in errors[3]
    assert frame["prompt"].to_list()[1:] == [None, None, None]


def test_a_text_rows_version_is_unchanged_and_an_image_rows_covers_its_content(tmp_path: Path) -> None:
    images = RowImages(tmp_path / "rows.jsonl")
    text_row = {"question": "What is 1 + 1?"}
    assert images.suffix(text_row) == ""  # versions made before images existed stay valid
    png(tmp_path / "a.png", (1, 1, 1))
    before = images.suffix({"image": "a.png"})
    png(tmp_path / "a.png", (2, 2, 2))
    assert RowImages(tmp_path / "rows.jsonl").suffix({"image": "a.png"}) != before
    assert "missing" in RowImages(tmp_path / "rows.jsonl").suffix({"image": "gone.png"})


def _copy_example(tmp_path: Path) -> tuple[Path, Path]:
    configs = tmp_path / "configs"
    (configs / "image_example").mkdir(parents=True)
    for name in ("task_config.py", "sampling_params.json"):
        (configs / "image_example" / name).write_bytes((EXAMPLE / name).read_bytes())
    data = tmp_path / "data"
    for colour, rgb in (("red", (255, 0, 0)), ("green", (0, 255, 0)), ("blue", (0, 0, 255)), ("grey", (9, 9, 9))):
        png(data / "images" / f"{colour}.png", rgb)
    rows = [{"image": f"images/{c}.png", "colour": c} for c in ("red", "green", "blue", "grey")]
    (data / "pictures.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    return configs, data


def test_a_replaced_image_changes_exactly_its_shards_digest(tmp_path: Path) -> None:
    configs, data = _copy_example(tmp_path)
    task = load_task(configs, "image_example")
    store = TaskStore(tmp_path / "out", "image_example")

    def register() -> dict[str, str]:
        reg = plan_registration(task, store, str(data), shard_size=2)
        save_manifest(store, reg.manifest)
        return reg.observed

    first = register()
    keys = list(first)
    assert len(keys) == 2
    assert register() == {}  # nothing changed: nothing new to record
    png(data / "images" / "blue.png", (0, 0, 128))  # rows 2-3: the second shard
    changed = register()
    assert list(changed) == [keys[1]] and changed[keys[1]] != first[keys[1]]
    assert register() == {}
    (data / "images" / "red.png").unlink()  # gone: its shard is stale (its row will fail until it is back)
    assert list(register()) == [keys[0]]
    png(data / "images" / "red.png", (255, 0, 0))  # back, with the same content as at first
    assert register() == {keys[0]: first[keys[0]]}
    os.utime(data / "images" / "green.png", ns=(1, 1))  # touched, not changed: the digest stays
    assert register() == {}


def test_a_text_tasks_digests_are_what_they_were(tmp_path: Path) -> None:
    """Rows that name no image keep the digest they had before images existed (nothing made is stale)."""
    rows = [{"q": "a"}, {"q": "b"}]
    images = RowImages(tmp_path / "x.jsonl")
    digests = [row_digest(to_json(r) + images.suffix(r)) for r in rows]
    assert rows_digest(digests, 0, 2) == rows_digest([row_digest(to_json(r)) for r in rows], 0, 2)
    assert pl.DataFrame(rows).height == 2


def test_a_task_yaml_prompt_with_image_parts_renders_them_and_versions_the_images(tmp_path: Path) -> None:
    folder = tmp_path / "configs" / "pics"
    data = folder / "data"
    png(data / "images" / "a.png", (1, 2, 3))
    png(data / "images" / "b.png", (4, 5, 6))
    (data / "rows.jsonl").write_text(
        '{"image": "images/a.png", "q": "Colour?"}\n{"image": "images/b.png", "q": "Hue?"}\n'
    )
    (folder / "task.yaml").write_text(
        "dataset: {path: data}\n"
        "prompt:\n"
        "  - role: user\n"
        "    content:\n"
        "      - {type: image_url, image_url: {url: '{{ image }}'}}\n"
        "      - {type: text, text: '{{ q }} Answer in one word.'}\n"
    )
    task = load_task(tmp_path / "configs", "pics")
    assert task.format_prompt({"image": "images/a.png", "q": "Colour?"}) == [
        {
            "role": "user",
            "content": [
                {"type": "image_url", "image_url": {"url": "images/a.png"}},
                {"type": "text", "text": "Colour? Answer in one word."},
            ],
        }
    ]
    store = TaskStore(tmp_path / "out", "pics")

    def register() -> dict[str, str]:
        reg = plan_registration(task, store, None, shard_size=1)
        save_manifest(store, reg.manifest)
        return reg.observed

    keys = list(register())
    png(data / "images" / "b.png", (7, 8, 9))
    assert list(register()) == [keys[1]]  # the row naming b.png, and only it
