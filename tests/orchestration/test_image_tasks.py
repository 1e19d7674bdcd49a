"""A task with images through ``llm-infer`` (HF engine, tiny LLaVA): a missing image is its row's error, and
a replaced image makes exactly its shard stale, so the next run redoes that shard alone."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
from PIL import Image
from tests_support import CONFIGS, llm_infer


def png(path: Path, rgb: tuple[int, int, int]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", (16, 16), rgb).save(path)


@pytest.mark.slow
def test_a_replaced_image_redoes_exactly_its_shard(tmp_path: Path, tiny_vlm_path: str) -> None:
    configs, data, out = tmp_path / "configs", tmp_path / "data", tmp_path / "out"
    shutil.copytree(CONFIGS / "image_example", configs / "image_example", ignore=shutil.ignore_patterns("data"))
    colours = {
        "red": (255, 0, 0),
        "green": (0, 255, 0),
        "blue": (0, 0, 255),
        "grey": (90, 90, 90),
        "pink": (250, 0, 250),
    }
    for name, rgb in colours.items():
        png(data / "images" / f"{name}.png", rgb)
    rows = [{"image": f"images/{c}.png", "colour": c} for c in [*colours, "missing"]]
    (data / "pictures.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    base = ["--config_path", str(configs), "--task_name", "image_example", "--input_path", str(data),
            "--shard_size", "2", "--model_path", tiny_vlm_path, "--model_type", "hf", "--use_cpu",
            "--output_path", str(out)]  # fmt: skip

    first = llm_infer(*base)
    assert first.returncode == 0, first.stderr
    assert "3/3 shards done, 6 rows, 1 rows failed" in first.stdout
    results = out / "results" / "infer"
    shard_files = sorted(results.glob("*.json"))
    assert len(shard_files) == 3
    last = json.loads(shard_files[2].read_text())
    assert last[0]["error"] is None and last[0]["model_response"]
    assert "image 'images/missing.png' not found" in last[1]["error"]
    before = {p.name: p.read_text() for p in shard_files}

    png(data / "images" / "blue.png", (0, 0, 90))  # row 2: the second shard
    plan = llm_infer(*base, "--plan_only")
    assert plan.returncode == 0, plan.stderr
    assert "1 shard(s) to redo and 0 to re-extract" in plan.stderr

    again = llm_infer(*base)
    assert again.returncode == 0, again.stderr
    assert "1 shard(s) to redo" in again.stderr
    after = {p.name: p.read_text() for p in sorted(results.glob("*.json"))}
    redone = [name for name in before if json.loads(after[name]) != json.loads(before[name])]
    assert redone == [shard_files[1].name]  # the blue row's answer changed; the other shards were not redone
    third = llm_infer(*base)  # nothing stale now: no shard redone
    assert third.returncode == 0 and "shard(s) to redo" not in third.stderr
    assert {p.name: p.read_text() for p in sorted(results.glob("*.json"))} == after
