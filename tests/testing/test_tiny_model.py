"""The tiny model loads through the same code paths as a real checkpoint and builds reproducibly."""

from __future__ import annotations

import hashlib
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

from llm_infer_dagster.testing.tiny_model import MARKER_FILE, build_tiny_model


def digests(path: Path) -> dict[str, str]:
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(path.iterdir())}


def test_build_writes_a_loadable_model(tiny_model_path: str) -> None:
    path = Path(tiny_model_path)
    for name in ("config.json", "generation_config.json", "model.safetensors", "tokenizer.json", MARKER_FILE):
        assert (path / name).is_file(), name
    tok = AutoTokenizer.from_pretrained(path, local_files_only=True)
    model = AutoModelForCausalLM.from_pretrained(path, local_files_only=True)
    assert type(model).__name__ == "LlamaForCausalLM"
    assert model.dtype == torch.float32
    assert model.config.vocab_size == len(tok)  # every id the model can emit decodes to text
    assert model.config.head_dim == model.config.hidden_size // model.config.num_attention_heads >= 32
    assert (tok.bos_token, tok.eos_token, tok.pad_token, tok.unk_token) == ("<s>", "</s>", "<pad>", "<unk>")
    assert model.generation_config.eos_token_id == [tok.eos_token_id, tok.convert_tokens_to_ids("<|im_end|>")]

    ids = tok("What is 3 + 4?")["input_ids"]
    assert ids[0] == tok.bos_token_id
    assert tok.decode(ids, skip_special_tokens=True) == "What is 3 + 4?"
    with torch.inference_mode():
        logits = model(torch.tensor([ids])).logits
    assert logits.shape == (1, len(ids), len(tok))


def test_chat_template(tiny_model_path: str) -> None:
    tok = AutoTokenizer.from_pretrained(tiny_model_path, local_files_only=True)
    messages = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi"}]
    text = tok.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
    assert text == "<s><|im_start|>system\nBe brief.<|im_end|>\n<|im_start|>user\nHi<|im_end|>\n<|im_start|>assistant\n"
    ids = tok(text, add_special_tokens=False)["input_ids"]
    assert ids.count(tok.bos_token_id) == 1
    assert ids.count(tok.convert_tokens_to_ids("<|im_start|>")) == 3  # special tokens stay whole
    no_prompt = tok.apply_chat_template(messages, add_generation_prompt=False, tokenize=False)
    assert not no_prompt.endswith("assistant\n")


def test_deterministic_and_idempotent(tiny_model_path: str, tmp_path: Path) -> None:
    again = build_tiny_model(tmp_path / "again")
    assert digests(again) == digests(Path(tiny_model_path))

    stamp = (again / "model.safetensors").stat().st_mtime_ns
    assert build_tiny_model(again) == again
    assert (again / "model.safetensors").stat().st_mtime_ns == stamp  # not rebuilt

    other = build_tiny_model(again, seed=1)  # different parameters: rebuilt in place
    assert digests(other)["model.safetensors"] != digests(Path(tiny_model_path))["model.safetensors"]
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]  # no temp folders left


def test_qwen2_arch_via_cli(tmp_path: Path) -> None:
    cli = [sys.executable, "-m", "llm_infer_dagster.testing.tiny_model", str(tmp_path / "q")]
    options = ["--arch", "qwen2", "--hidden-size", "64", "--layers", "1"]
    out = subprocess.run(cli + options, check=True, capture_output=True, text=True)
    assert out.stdout.strip() == str(tmp_path / "q")
    config = AutoConfig.from_pretrained(tmp_path / "q", local_files_only=True)
    assert config.model_type == "qwen2" and config.hidden_size == 64 and config.num_hidden_layers == 1


def test_rejects_small_heads_and_foreign_folders(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="head_dim"):
        build_tiny_model(tmp_path / "m", hidden_size=64, num_heads=4)
    foreign = tmp_path / "mine"
    foreign.mkdir()
    (foreign / "notes.txt").write_text("keep me")
    with pytest.raises(ValueError, match="not a tiny model"):
        build_tiny_model(foreign)
    assert (foreign / "notes.txt").read_text() == "keep me"
