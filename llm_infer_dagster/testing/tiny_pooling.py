"""Tiny pooling models for tests: the tiny causal LM (``tiny_model.py``) with a seeded classification head.

``build_tiny_classifier(path, labels)`` saves a ``LlamaForSequenceClassification`` (or Qwen2) whose body is the
tiny model's and whose ``score`` head is random but seeded, with ``id2label`` from ``labels``; one label makes
a reward (score) model. ``embed`` needs no head: it runs on the tiny causal LM itself. No model hub.

    python -m llm_infer_dagster.testing.tiny_pooling /tmp/tiny-cls --labels negative positive
"""

from __future__ import annotations

import argparse
import json
import shutil
import tempfile
from collections.abc import Sequence
from pathlib import Path

from llm_infer_dagster.testing.tiny_model import MARKER_FILE, build_tiny_model

__all__ = ["build_tiny_classifier"]


def build_tiny_classifier(
    path: Path, labels: Sequence[str] = ("negative", "positive"), *, arch: str = "llama", seed: int = 0
) -> Path:
    """Build (or reuse) a tiny sequence-classification model at ``path``; deterministic for the same arguments."""
    import torch
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    path = Path(path)
    params = {"kind": "sequence-classification", "arch": arch, "seed": seed, "labels": list(labels), "version": 1}
    marker = path / MARKER_FILE
    if marker.is_file() and json.loads(marker.read_text(encoding="utf-8")).get("classifier") == params:
        return path
    if not labels:
        raise ValueError("labels must name at least one label (one label: a reward model)")
    path.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix=f".{path.name}.tmp-", dir=path.parent) as tmp:
        base = build_tiny_model(Path(tmp) / "base", arch=arch, seed=seed)
        id2label = dict(enumerate(labels))
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed + 1)
            model = AutoModelForSequenceClassification.from_pretrained(
                base, num_labels=len(labels), id2label=id2label, label2id={v: k for k, v in id2label.items()},
                dtype=torch.float32, local_files_only=True,
            )  # fmt: skip
            # the head is new: draw it from the seeded RNG, wide enough that labels differ between prompts
            torch.nn.init.normal_(model.score.weight, std=0.5)
        model.config.pad_token_id = AutoTokenizer.from_pretrained(base).pad_token_id
        out = Path(tmp) / "out"
        model.save_pretrained(out)
        AutoTokenizer.from_pretrained(base).save_pretrained(out)
        (out / MARKER_FILE).write_text(json.dumps({"classifier": params}, indent=2) + "\n", encoding="utf-8")
        if path.exists():
            shutil.rmtree(path)
        shutil.move(str(out), str(path))
    return path


def main(argv: list[str] | None = None) -> int:
    """CLI entry: build the classifier and print its path."""
    parser = argparse.ArgumentParser(prog="python -m llm_infer_dagster.testing.tiny_pooling")
    parser.add_argument("path", type=Path)
    parser.add_argument("--labels", nargs="+", default=["negative", "positive"], help="one label: a reward model")
    parser.add_argument("--arch", choices=("llama", "qwen2"), default="llama")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    print(build_tiny_classifier(args.path, args.labels, arch=args.arch, seed=args.seed))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
