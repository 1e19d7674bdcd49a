"""Build a tiny real causal LM (Llama or Qwen2 architecture) on disk, with no model hub.

Tests, benchmarks and the demo need a model that loads through the same code paths as a real one
(``AutoTokenizer``/``AutoModelForCausalLM``, vLLM) but builds in seconds offline. No package ships one,
so this trains a byte-level BPE on a few hundred built-in lines, adds a chat template, and saves a
random-weight model next to it. The weights are random: the text is junk, but shapes, token ids, special
tokens, chat rendering, padding and stopping all behave like a real checkpoint's.

CLI: ``python -m llm_infer_dagster.testing.tiny_model PATH [--arch llama|qwen2] [--hidden-size N]
[--layers N] [--heads N] [--vocab-size N] [--max-position-embeddings N] [--seed N]`` prints PATH.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any

__all__ = ["CHAT_TEMPLATE", "MARKER_FILE", "SPECIAL_TOKENS", "build_tiny_model", "corpus", "main"]

#: Written last into a finished model folder; holds the build parameters for the idempotency check.
MARKER_FILE = "tiny_model_build.json"
# Bump when the build changes in a way that alters the produced files.
_BUILD_VERSION = 1

BOS, EOS, PAD, UNK = "<s>", "</s>", "<pad>", "<unk>"
IM_START, IM_END = "<|im_start|>", "<|im_end|>"
SPECIAL_TOKENS = [UNK, BOS, EOS, PAD, IM_START, IM_END]

#: ChatML-style template; the rendered text starts with BOS, so tokenize it with add_special_tokens=False.
CHAT_TEMPLATE = (
    "{{ bos_token }}"
    "{% for message in messages %}"
    "{{ '<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>' + '\\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}"
)

_ARCHS = ("llama", "qwen2")

_FACTS = [
    ("France", "Paris"),
    ("Germany", "Berlin"),
    ("Italy", "Rome"),
    ("Spain", "Madrid"),
    ("Japan", "Tokyo"),
    ("China", "Beijing"),
    ("Canada", "Ottawa"),
    ("Egypt", "Cairo"),
    ("Kenya", "Nairobi"),
    ("Peru", "Lima"),
    ("Norway", "Oslo"),
    ("Greece", "Athens"),
    ("Poland", "Warsaw"),
    ("Chile", "Santiago"),
    ("India", "New Delhi"),
    ("Brazil", "Brasilia"),
    ("Mexico", "Mexico City"),
    ("Portugal", "Lisbon"),
    ("Austria", "Vienna"),
    ("Sweden", "Stockholm"),
]

_THINGS = [
    ("sky", "blue"),
    ("grass", "green"),
    ("snow", "white"),
    ("coal", "black"),
    ("banana", "yellow"),
    ("tomato", "red"),
    ("orange", "orange"),
    ("violet", "purple"),
    ("ocean", "deep blue"),
    ("sand", "light brown"),
]

_SENTENCES = [
    "The quick brown fox jumps over the lazy dog.",
    "A journey of a thousand miles begins with a single step.",
    "Water boils at one hundred degrees Celsius at sea level.",
    "The moon orbits the earth about once every twenty seven days.",
    "Plants make their food from sunlight, water and carbon dioxide.",
    "Reading every day is a good way to learn new words.",
    "The library opens at nine in the morning and closes at six.",
    "Please remember to save your work before you close the program.",
    "Our train leaves from platform four at half past seven.",
    "She wrote a short story about a lighthouse keeper and his cat.",
    "He forgot his umbrella, so he waited for the rain to stop.",
    "Mathematics is the language in which the universe is written.",
    "Computers store numbers in binary, using only zeros and ones.",
    "A good answer is short, correct and easy to check.",
    "Think step by step, then write the final answer on the last line.",
    "The recipe needs two eggs, a cup of flour and some milk.",
    "Birds migrate south in the autumn to find warmer weather.",
    "The museum has paintings, sculptures and very old maps.",
    "Every language model predicts the next token from the previous ones.",
    "Batch inference processes many prompts together to use the hardware well.",
    "If the input is too long, the model cannot read all of it.",
    "Summarize the following paragraph in one sentence.",
    "Translate the sentence into French, then into German.",
    "List three reasons why exercise is good for your health.",
    "Explain the difference between weather and climate.",
    "Write a polite email asking for a meeting next Tuesday.",
    "Classify the review as positive, negative or neutral.",
    "The answer should be a single number without units.",
    "Yesterday was cold, but today is warm and sunny.",
    "Knowledge is knowing a tomato is a fruit; wisdom is not putting it in a fruit salad.",
]

_CHAT = [
    ("Hello! How are you today?", "I am doing well, thank you. How can I help you?"),
    ("Can you help me with my homework?", "Of course. Tell me the question and we will solve it together."),
    ("What time is it?", "I do not have a clock, but your device can tell you the time."),
    ("Tell me a joke.", "Why did the scarecrow win an award? Because he was outstanding in his field."),
    ("Thanks for your help!", "You are welcome. Have a great day!"),
    ("What is your name?", "I am a small assistant model used for testing."),
    ("Give me a word that rhymes with cat.", "Hat, bat, mat and sat all rhyme with cat."),
    ("Is it going to rain tomorrow?", "I cannot check the forecast, but a weather service can."),
    ("How do I make tea?", "Boil water, pour it over the tea leaves, wait three minutes and enjoy."),
    ("Goodbye!", "Goodbye, and good luck with your work."),
]

_NUMBER_WORDS = ["zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine", "ten"]


def corpus() -> list[str]:
    """A few hundred lines of varied English (facts, questions, arithmetic, chat), fixed and ordered."""
    lines: list[str] = list(_SENTENCES)
    for country, capital in _FACTS:
        lines.append(f"What is the capital of {country}?")
        lines.append(f"The capital of {country} is {capital}.")
        lines.append(f"Q: Which city is the capital of {country}? A: {capital}")
    for thing, colour in _THINGS:
        lines.append(f"What colour is the {thing}? The {thing} is {colour}.")
    for a in range(0, 30, 3):
        for b in range(1, 12, 2):
            lines.append(f"What is {a} + {b}? The answer is {a + b}.")
            lines.append(f"Compute {a} * {b}. Answer: {a * b}")
            if a >= b:
                lines.append(f"{a} minus {b} equals {a - b}.")
    for i, word in enumerate(_NUMBER_WORDS):
        lines.append(f"The number {i} is written as {word}.")
    for user, assistant in _CHAT:
        lines.append(f"{IM_START}user\n{user}{IM_END}\n{IM_START}assistant\n{assistant}{IM_END}")
        lines.append(f"User: {user}\nAssistant: {assistant}")
    return lines


def _params(
    arch: str,
    seed: int,
    hidden_size: int,
    num_layers: int,
    num_heads: int,
    vocab_size: int,
    max_position_embeddings: int,
) -> dict[str, Any]:
    return {
        "version": _BUILD_VERSION,
        "arch": arch,
        "seed": seed,
        "hidden_size": hidden_size,
        "num_layers": num_layers,
        "num_heads": num_heads,
        "vocab_size": vocab_size,
        "max_position_embeddings": max_position_embeddings,
    }


def _read_marker(path: Path) -> dict[str, Any] | None:
    try:
        return json.loads((path / MARKER_FILE).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None


def _is_built(path: Path, params: dict[str, Any]) -> bool:
    return (path / "config.json").is_file() and _read_marker(path) == params


def _build_tokenizer(vocab_size: int, max_position_embeddings: int) -> Any:
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE(unk_token=UNK))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=SPECIAL_TOKENS,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(corpus(), trainer=trainer)
    bos_id = tok.token_to_id(BOS)
    # Like Llama: plain text gets a BOS; the chat template writes its own BOS.
    tok.post_processor = processors.TemplateProcessing(
        single=f"{BOS} $A", pair=f"{BOS} $A {BOS} $B", special_tokens=[(BOS, bos_id)]
    )
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tok,
        bos_token=BOS,
        eos_token=EOS,
        pad_token=PAD,
        unk_token=UNK,
        additional_special_tokens=[IM_START, IM_END],
        model_max_length=max_position_embeddings,
    )
    fast.chat_template = CHAT_TEMPLATE
    return fast


def _build_model(arch: str, tokenizer: Any, params: dict[str, Any]) -> Any:
    import torch
    from transformers import GenerationConfig, LlamaConfig, LlamaForCausalLM, Qwen2Config, Qwen2ForCausalLM

    hidden, heads = params["hidden_size"], params["num_heads"]
    common = {
        # The real vocabulary size: ids the model can emit all decode to text.
        "vocab_size": len(tokenizer),
        "hidden_size": hidden,
        "intermediate_size": 2 * hidden,
        "num_hidden_layers": params["num_layers"],
        "num_attention_heads": heads,
        "num_key_value_heads": heads,
        "max_position_embeddings": params["max_position_embeddings"],
        "bos_token_id": tokenizer.bos_token_id,
        "eos_token_id": tokenizer.eos_token_id,
        "pad_token_id": tokenizer.pad_token_id,
        "tie_word_embeddings": False,
        # Wider than the usual 0.02: peakier logits, so greedy argmax is not decided by rounding noise
        # (batched and single-prompt greedy must agree) and the junk text varies more.
        "initializer_range": 0.2,
        "dtype": "float32",
    }
    config_cls, model_cls = (LlamaConfig, LlamaForCausalLM) if arch == "llama" else (Qwen2Config, Qwen2ForCausalLM)
    config = config_cls(**common)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(params["seed"])
        # transformers wraps PreTrainedModel.to in functools.wraps, whose stub loses the bound self.
        model = model_cls(config).to(torch.float32)  # type: ignore[arg-type]
    model.generation_config = GenerationConfig(
        bos_token_id=tokenizer.bos_token_id,
        # Like chat models: stop at EOS or at the end of an assistant turn.
        eos_token_id=[tokenizer.eos_token_id, tokenizer.convert_tokens_to_ids(IM_END)],
        pad_token_id=tokenizer.pad_token_id,
    )
    return model


def build_tiny_model(
    path: Path,
    arch: str = "llama",
    seed: int = 0,
    hidden_size: int = 128,
    num_layers: int = 2,
    num_heads: int = 2,
    vocab_size: int = 512,
    max_position_embeddings: int = 512,
) -> Path:
    """Build (or reuse) a tiny random-weight model with tokenizer and chat template at ``path``.

    Deterministic for the same arguments. Returns at once when ``path`` already holds a build with the
    same parameters; otherwise builds in a temporary sibling folder and renames it into place, so a
    reader never sees a half-written model. ``vocab_size`` is the BPE target; the model's vocabulary is
    the tokenizer's actual size. ``hidden_size / num_heads`` (head_dim) must be >= 32: vLLM's CPU attention
    supports no smaller heads.
    """
    path = Path(path)
    if arch not in _ARCHS:
        raise ValueError(f"arch must be one of {', '.join(_ARCHS)}, got {arch!r}")
    if hidden_size % num_heads:
        raise ValueError(f"hidden_size {hidden_size} is not divisible by num_heads {num_heads}")
    if hidden_size // num_heads < 32:
        raise ValueError(f"head_dim = hidden_size / num_heads = {hidden_size // num_heads}; vLLM CPU needs >= 32")
    if vocab_size <= len(SPECIAL_TOKENS) + 256:
        raise ValueError(f"vocab_size must exceed {len(SPECIAL_TOKENS) + 256} (bytes plus special tokens)")
    params = _params(arch, seed, hidden_size, num_layers, num_heads, vocab_size, max_position_embeddings)
    if _is_built(path, params):
        return path
    if path.exists() and any(path.iterdir()) and _read_marker(path) is None:
        raise ValueError(f"{path} exists and is not a tiny model built by this tool; refusing to replace it")

    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{path.name}.tmp-", dir=path.parent))
    os.chmod(tmp, 0o755)  # mkdtemp makes it private; the model is meant to be shared like any folder
    try:
        from transformers.utils import logging as hf_logging

        bars = hf_logging.is_progress_bar_enabled()
        hf_logging.disable_progress_bar()
        try:
            tokenizer = _build_tokenizer(vocab_size, max_position_embeddings)
            model = _build_model(arch, tokenizer, params)
            model.save_pretrained(tmp)
            tokenizer.save_pretrained(tmp)
        finally:
            if bars:
                hf_logging.enable_progress_bar()
        (tmp / MARKER_FILE).write_text(json.dumps(params, indent=2) + "\n", encoding="utf-8")
        _move_into_place(tmp, path, params)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
    return path


def _move_into_place(tmp: Path, path: Path, params: dict[str, Any]) -> None:
    """Rename ``tmp`` to ``path``, replacing an older build; tolerate a concurrent builder winning."""
    old: Path | None = None
    if path.exists():
        old = Path(tempfile.mkdtemp(prefix=f".{path.name}.old-", dir=path.parent))
        os.rmdir(old)
        try:
            os.rename(path, old)
        except FileNotFoundError:
            old = None  # another builder moved it first
    try:
        os.rename(tmp, path)
    except OSError:
        if not _is_built(path, params):
            raise
        # Another process finished the same build first; theirs is identical.
    finally:
        if old is not None:
            shutil.rmtree(old, ignore_errors=True)


def main(argv: list[str] | None = None) -> int:
    """CLI entry: build the model and print its path."""
    parser = argparse.ArgumentParser(
        prog="python -m llm_infer_dagster.testing.tiny_model",
        description="Build a tiny random-weight causal LM with a BPE tokenizer and chat template.",
    )
    parser.add_argument("path", type=Path)
    parser.add_argument("--arch", choices=_ARCHS, default="llama")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--hidden-size", type=int, default=128)
    parser.add_argument("--layers", type=int, default=2)
    parser.add_argument("--heads", type=int, default=2)
    parser.add_argument("--vocab-size", type=int, default=512)
    parser.add_argument("--max-position-embeddings", type=int, default=512)
    args = parser.parse_args(argv)
    try:
        path = build_tiny_model(
            args.path,
            arch=args.arch,
            seed=args.seed,
            hidden_size=args.hidden_size,
            num_layers=args.layers,
            num_heads=args.heads,
            vocab_size=args.vocab_size,
            max_position_embeddings=args.max_position_embeddings,
        )
    except ValueError as exc:
        parser.error(str(exc))
    print(path)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
