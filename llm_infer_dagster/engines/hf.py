"""The HuggingFace ``transformers`` backend: batched ``generate`` with vLLM's sampling semantics.

The seed ran one prompt at a time and kept one sample. This engine keeps up to ``batch_size`` sequences
decoding at once with continuous batching (``hf_continuous.py``: a finished row leaves the batch and a
queued prompt takes its slot, so the batch never waits for its longest row), restores input order, keeps
every sample, and follows vLLM where HF differs, so a task gives the same kind of answer on either backend:

- Parameters missing from the task mean vLLM's ``SamplingParams`` defaults, not the checkpoint's
  ``generation_config.json`` (the engine keeps only its special-token ids).
- Stop strings are cut from the text (HF keeps them); the terminating EOS / stop token is not in the text.
- ``finish_reason`` is "stop" (EOS, stop token, stop string) or "length"; token counts include the
  terminating token but never padding.
- A prompt longer than the model accepts, or than ``max_input_length`` (the seed's ``--max_input_length``),
  comes back as an error ``Completion``; ``max_tokens`` is capped at ``max_model_len - prompt_len``
  ("length"), as vLLM does.
- LoRA adapters (``lora_adapters``) are loaded once with ``peft`` on top of the base model; ``generate``
  runs the one it names, or the base model (see :mod:`llm_infer_dagster.engines.lora`).
- Prompts with their own sampling parameters share the continuous batch. ``structured_outputs`` masks
  logits with xgrammar (``hf_structured.py``) in static batches of equal parameters (``generate``, left-padded
  prompts of similar length), as do all prompts of a model the continuous loop cannot drive.
- A vision-language model (its config has a ``vision_config``) loads with its processor; a chat prompt with
  image parts is encoded through the processor and generated alone, in the static path
  (:mod:`~llm_infer_dagster.engines.multimodal`); its text-only prompts run as any model's.
"""

from __future__ import annotations

import gc
import logging
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, cast

import torch
from transformers import LogitsProcessorList

from llm_infer_dagster.engines.base import (
    Completion,
    Prompt,
    Sampling,
    check_max_input_length,
    per_prompt,
    sampling_groups,
    sampling_key,
    too_long_error,
)
from llm_infer_dagster.engines.hf_continuous import ContinuousDecoder, Request, Sampler, unsupported_reason
from llm_infer_dagster.engines.hf_sampling import check_hf_supported, normalize_stop, to_hf_generate_kwargs
from llm_infer_dagster.engines.hf_structured import GrammarCompilerCache, GrammarLogitsProcessor
from llm_infer_dagster.engines.lora import hf_with_adapters, use_adapter
from llm_infer_dagster.engines.multimodal import has_images, hf_encode, is_vision_model, load_hf_vision
from llm_infer_dagster.errors import SettingsError, TaskConfigError

__all__ = ["HFEngine"]

log = logging.getLogger(__name__)

_DTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}
# Config keys that hold a model's context length, in the order vLLM looks at them.
_LENGTH_KEYS = ("max_position_embeddings", "n_positions", "max_seq_len", "seq_length", "max_sequence_length")


@dataclass
class _Encoded:
    index: int  # position in the caller's list
    ids: list[int]
    extra: dict[str, Any] | None = None  # a prompt with images: the processor's other inputs (pixel_values...)


@dataclass(frozen=True)
class _DecodeOptions:
    terminators: set[int]
    stop_strings: list[str]
    skip_special_tokens: bool
    include_stop: bool


class HFEngine:
    """One model loaded with ``transformers`` from a local folder; see the module docstring."""

    name = "hf"
    #: What calibration (:mod:`llm_infer_dagster.engines.calibration`) tunes here: sequences decoding at once.
    knob = "batch_size"

    def __init__(
        self,
        model_path: str,
        *,
        device: str = "cpu",
        dtype: str = "auto",
        max_model_len: int | None = None,
        trust_remote_code: bool = False,
        batch_size: int = 32,
        max_input_length: int | None = None,
        lora_adapters: Mapping[str, str] | None = None,
    ) -> None:
        from transformers import AutoModelForCausalLM, AutoTokenizer, GenerationConfig

        self.model_path = str(model_path)
        self.device = torch.device(device)
        if self.device.type == "cuda" and not torch.cuda.is_available():
            raise SettingsError(f"device {device!r} requested but CUDA is not available; use device='cpu'")
        self.dtype = self._resolve_dtype(dtype)
        if batch_size < 1:
            raise SettingsError(f"batch_size must be at least 1, got {batch_size}")
        if max_model_len is not None and max_model_len < 2:
            raise SettingsError(f"max_model_len must be at least 2 (prompt plus one token), got {max_model_len}")
        self.batch_size = batch_size
        check_max_input_length(max_input_length)
        self.max_input_length = max_input_length

        self._processor: Any = None  # a vision-language model's: encodes prompts with images
        try:
            if is_vision_model(self.model_path):
                self._processor, model = load_hf_vision(self.model_path, self.dtype, trust_remote_code)
                tokenizer = self._processor.tokenizer
            else:
                tokenizer = AutoTokenizer.from_pretrained(
                    self.model_path, local_files_only=True, trust_remote_code=trust_remote_code
                )
                model = AutoModelForCausalLM.from_pretrained(
                    self.model_path, dtype=self.dtype, local_files_only=True, trust_remote_code=trust_remote_code
                )
        except (OSError, ValueError) as exc:
            if not Path(self.model_path).exists():
                reason = "no such folder (nothing is downloaded: give a local folder or an already cached hub id)"
            else:
                reason = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
            raise SettingsError(f"cannot load model from {self.model_path}: {reason}") from exc

        # Left padding: generated tokens of every row start at the same column.
        tokenizer.padding_side = "left"
        if tokenizer.pad_token is None and tokenizer.eos_token is not None:
            tokenizer.pad_token = tokenizer.eos_token
        self._tokenizer = tokenizer

        eos: list[int] = []
        for source in (model.generation_config.eos_token_id, tokenizer.eos_token_id):
            for token in source if isinstance(source, list) else [source]:
                if token is not None and token not in eos:
                    eos.append(int(token))
        self._eos_ids = eos
        pad = tokenizer.pad_token_id
        self._pad_id = int(pad if pad is not None else (eos[0] if eos else 0))
        # Keep only the special-token ids of the checkpoint's generation_config: HF fills every unset
        # sampling knob from it (e.g. a checkpoint's top_k=20), which vLLM's explicit SamplingParams ignore.
        # EOS is passed per call, so ignore_eos can turn it off.
        # transformers leaves GenerationConfig.__init__(**kwargs) unannotated: typed here by what it builds.
        new_config = cast("Callable[..., GenerationConfig]", GenerationConfig)
        model.generation_config = new_config(
            bos_token_id=model.generation_config.bos_token_id, pad_token_id=self._pad_id
        )
        # transformers wraps PreTrainedModel.to in functools.wraps, whose stub loses the bound self.
        to_device = cast("Callable[[torch.device], Any]", model.to)
        self.lora_adapters = dict(lora_adapters or {})
        self._model = hf_with_adapters(to_device(self.device).eval(), self.lora_adapters, str(self.device))

        derived = self._derived_max_len(model.config, tokenizer)
        if max_model_len is not None and derived is not None and max_model_len > derived:
            log.warning(
                "max_model_len %d exceeds the model's %d positions; quality past that is undefined",
                max_model_len,
                derived,
            )
        self.max_model_len = int(max_model_len or derived or 2048)
        self._grammars: GrammarCompilerCache | None = None  # made when a prompt first asks for structured outputs
        off = unsupported_reason(self._model)
        if off is not None:
            log.warning(
                "continuous batching is off for %s (%s): static batches wait for their longest row",
                self.model_path,
                off,
            )
        # batch_size is the most sequences decoding at once (n samples of a prompt take n).
        self._continuous = None if off is not None else ContinuousDecoder(self._model, self.device, batch_size)

    # ----------------------------------------------------------------------------------------- set-up

    @property
    def width(self) -> int:
        """Sequences decoding at once (``batch_size``; calibration may change it between shards)."""
        return self.batch_size

    def set_width(self, width: int) -> None:
        """Decode at most ``width`` sequences at once from the next call on (calibration's knob)."""
        if width < 1:
            raise ValueError(f"width must be at least 1, got {width}")
        self.batch_size = width
        if self._continuous is not None:
            self._continuous.capacity = width
            self._continuous.refill_at = max(1, width // 8)

    def joins_shards(self, prompts: Sequence[Prompt], sampling: Sampling) -> bool:
        """True when ``prompts`` would all run in the continuous loop, where a row's output does not depend on
        its batch (a seeded request samples from its own generator): the worker may then generate the shard
        together with others (``BlockingStream``). Static batches (structured outputs, images, a model the
        loop cannot drive) reseed per batch, so their shards run alone."""
        if self._continuous is None or any(has_images(p) for p in prompts):
            return False
        return not any(params.get("structured_outputs") for params in per_prompt(sampling, len(prompts)))

    def _resolve_dtype(self, dtype: str) -> torch.dtype:
        if dtype == "auto":
            if self.device.type == "cuda":
                return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
            return torch.float32
        if dtype not in _DTYPES:
            raise SettingsError(f"dtype must be auto, {', '.join(_DTYPES)}; got {dtype!r}")
        return _DTYPES[dtype]

    @staticmethod
    def _derived_max_len(config: Any, tokenizer: Any) -> int | None:
        text_config = config.get_text_config() if hasattr(config, "get_text_config") else config
        for key in _LENGTH_KEYS:
            value = getattr(text_config, key, None)
            if isinstance(value, int) and value > 0:
                return value
        limit = getattr(tokenizer, "model_max_length", None)
        return limit if isinstance(limit, int) and 0 < limit < 10**7 else None

    # ------------------------------------------------------------------------------------- generation

    def generate(
        self, prompts: Sequence[Prompt], sampling: Sampling, *, adapter: str | None = None
    ) -> list[Completion]:
        """One Completion per prompt, in input order, each with all ``n`` samples (with LoRA ``adapter``).

        Raises :class:`TaskConfigError` for parameters HF cannot honour, before any work. Prompts run through
        the continuous loop (:mod:`~llm_infer_dagster.engines.hf_continuous`), whatever their parameters;
        those with ``structured_outputs`` (whose grammar state lives in a per-batch logits processor) and
        every prompt of a model the loop cannot drive run in static batches, one group of equal parameters
        at a time. With ``seed``, a prompt samples from its own generator (continuous) or the RNG is
        reseeded before every batch (static): the same prompts and settings give the same samples.
        """
        if self._model is None:
            raise RuntimeError("HFEngine.generate called after close()")
        groups = sampling_groups(sampling, len(prompts))
        for params, _ in groups:
            check_hf_supported(params)
        results: list[Completion] = [Completion()] * len(prompts)
        continuous: list[int] = []
        for params, indices in groups:
            static = indices
            if self._continuous is not None and not params.get("structured_outputs"):
                continuous.extend(i for i in indices if not has_images(prompts[i]))
                static = [i for i in indices if has_images(prompts[i])]  # through the processor: static
            if not static:
                continue
            group = self._generate_group([prompts[i] for i in static], params, adapter)
            for i, completion in zip(static, group, strict=True):
                results[i] = completion
        if continuous:
            continuous.sort()
            params_of = per_prompt(sampling, len(prompts))
            done = self._generate_continuous(
                [prompts[i] for i in continuous], [params_of[i] for i in continuous], adapter
            )
            for i, completion in zip(continuous, done, strict=True):
                results[i] = completion
        return results

    def _generate_continuous(
        self, prompts: Sequence[Prompt], params: Sequence[Mapping[str, Any]], adapter: str | None
    ) -> list[Completion]:
        """Every prompt through the continuous loop, each with its own parameters."""
        assert self._continuous is not None
        results: list[Completion | None] = [None] * len(prompts)
        encoded = self._encode_all(prompts, results)
        samplers: dict[str, tuple[Sampler, dict[str, Any]]] = {}
        requests: list[Request] = []
        for item in encoded:
            p = params[item.index]
            key = sampling_key(p)
            if key not in samplers:
                kwargs = to_hf_generate_kwargs(p)
                samplers[key] = (Sampler(kwargs), kwargs)
            sampler, kwargs = samplers[key]
            stop_ids = [int(t) for t in p.get("stop_token_ids") or []]
            terminators = frozenset(stop_ids + ([] if p.get("ignore_eos") else self._eos_ids))
            stop_strings = normalize_stop(p)
            skip = bool(p.get("skip_special_tokens", True))
            seed = p.get("seed")
            generator = None
            if sampler.do_sample and seed is not None:
                generator = torch.Generator(device=self.device).manual_seed(int(seed))
            requests.append(
                Request(
                    ids=item.ids,
                    max_new=max(1, min(int(kwargs["max_new_tokens"]), self.max_model_len - len(item.ids))),
                    sampler=sampler,
                    samples=int(p.get("n", 1)) if sampler.do_sample else 1,
                    terminators=terminators,
                    min_tokens=int(kwargs.get("min_new_tokens", 0)),
                    generator=generator,
                    stopped=self._stop_check(stop_strings, skip) if stop_strings else None,
                )
            )
        with use_adapter(self._model, self.lora_adapters, adapter):
            generated = self._continuous.run(requests)
        for item, request, samples in zip(encoded, requests, generated, strict=True):
            p = params[item.index]
            options = _DecodeOptions(
                terminators=set(request.terminators),
                stop_strings=normalize_stop(p),
                skip_special_tokens=bool(p.get("skip_special_tokens", True)),
                include_stop=bool(p.get("include_stop_str_in_output", False)),
            )
            finished = [self._finish(tokens, options) for tokens in samples]
            n = int(p.get("n", 1))
            if len(finished) != n:  # greedy: vLLM returns n identical samples
                finished = finished * n
            results[item.index] = _completion(finished, len(item.ids))
        return [r if r is not None else Completion(error="internal: prompt was not generated") for r in results]

    def _stop_check(self, stop_strings: list[str], skip_special_tokens: bool) -> Callable[[list[int]], bool]:
        """Whether new tokens complete a stop string, in the raw or the decoded text (as :meth:`_finish`)."""
        modes = {False, skip_special_tokens}

        def stopped(tokens: list[int]) -> bool:
            return any(any(s in self._decode(tokens, skip) for s in stop_strings) for skip in modes)

        return stopped

    def _generate_group(
        self, prompts: Sequence[Prompt], sampling: Mapping[str, Any], adapter: str | None
    ) -> list[Completion]:
        """Static batches: every prompt with the same parameters (and LoRA ``adapter``, or the base model).

        Each batch runs ``generate`` until its longest row is done. Used for ``structured_outputs`` and for
        models the continuous loop cannot drive.
        """
        kwargs = to_hf_generate_kwargs(sampling)
        max_tokens = int(kwargs.pop("max_new_tokens"))
        n = int(sampling.get("n", 1))
        kwargs.pop("num_return_sequences", None)
        # Greedy: HF refuses num_return_sequences > 1; vLLM returns n identical samples. Repeat instead.
        seqs_per_prompt = n if kwargs["do_sample"] else 1

        results: list[Completion | None] = [None] * len(prompts)
        encoded = self._encode_all(prompts, results)
        # Longest first: similar lengths share a batch (little padding); a batch that runs out of memory
        # does so at the start.
        encoded.sort(key=lambda e: len(e.ids), reverse=True)
        per_batch = max(1, self.batch_size // seqs_per_prompt)
        for batch in self._batches(encoded, max_tokens, per_batch):
            with use_adapter(self._model, self.lora_adapters, adapter):
                samples = self._generate_batch(batch, max_tokens, seqs_per_prompt, kwargs, sampling)
            for item, item_samples in zip(batch, samples, strict=True):
                if seqs_per_prompt != n:
                    item_samples = item_samples * n
                results[item.index] = _completion(item_samples, len(item.ids))
        return [r if r is not None else Completion(error="internal: prompt was not generated") for r in results]

    def _encode_all(self, prompts: Sequence[Prompt], results: list[Completion | None]) -> list[_Encoded]:
        """Tokenize every prompt; bad or too-long ones become error Completions in ``results``."""
        tok = self._tokenizer
        plain: list[tuple[int, str]] = []
        chat: list[tuple[int, str]] = []
        encoded: list[_Encoded] = []
        for i, prompt in enumerate(prompts):
            if has_images(prompt):
                item = self._encode_images(i, prompt, results)
                if item is not None:
                    encoded.append(item)
            elif isinstance(prompt, str):
                plain.append((i, prompt))
            elif isinstance(prompt, list) and all(isinstance(m, Mapping) for m in prompt):
                if tok.chat_template is None:
                    raise TaskConfigError(
                        f"format_prompt returned chat messages, but the model at {self.model_path} has no chat "
                        "template; return a string from format_prompt or use a chat model"
                    )
                try:
                    # tokenize=False gives the text; the stub's return type is the union of every mode's.
                    text = cast(str, tok.apply_chat_template(prompt, add_generation_prompt=True, tokenize=False))
                except Exception as exc:  # a template error concerns this prompt only
                    results[i] = Completion(error=f"cannot apply the chat template: {type(exc).__name__}: {exc}")
                    continue
                chat.append((i, text))
            else:
                results[i] = Completion(
                    error=f"prompt must be a string or a list of chat messages, got {type(prompt).__name__}"
                )

        # Chat templates write their own BOS; plain text gets the tokenizer's special tokens.
        for group, add_special in ((plain, True), (chat, False)):
            if not group:
                continue
            ids_list = tok([text for _, text in group], add_special_tokens=add_special)["input_ids"]
            for (i, _), ids in zip(group, ids_list, strict=True):
                if not ids:
                    results[i] = Completion(error="prompt is empty (0 tokens)")
                elif (too_long := too_long_error(len(ids), self.max_input_length, self.max_model_len)) is not None:
                    results[i] = Completion(prompt_tokens=len(ids), error=too_long)
                else:
                    encoded.append(_Encoded(i, list(ids)))
        return encoded

    def _encode_images(self, i: int, prompt: Prompt, results: list[Completion | None]) -> _Encoded | None:
        """A prompt with images through the processor; None (its error in ``results``) if it cannot be."""
        if self._processor is None:
            results[i] = Completion(error=f"the prompt has images, but the model at {self.model_path} is not a "
                                    "vision-language model (its config.json has no vision_config)")  # fmt: skip
            return None
        try:
            ids, extra = hf_encode(self._processor, prompt)  # type: ignore[arg-type]
        except Exception as exc:  # a bad image or a template error concerns this prompt only
            results[i] = Completion(error=f"cannot encode the prompt's images: {type(exc).__name__}: {exc}")
            return None
        too_long = too_long_error(len(ids), self.max_input_length, self.max_model_len)
        if too_long is not None:
            results[i] = Completion(prompt_tokens=len(ids), error=too_long)
            return None
        return _Encoded(i, ids, extra)

    def _batches(self, encoded: list[_Encoded], max_tokens: int, per_batch: int) -> list[list[_Encoded]]:
        """Cut the length-sorted prompts into batches.

        A batch runs ``min(max_tokens, max_model_len - longest)`` steps. A prompt whose own room
        (``max_model_len - len``) is below ``max_tokens`` is batched only with prompts of its length, so
        no prompt gets fewer new tokens than vLLM would give it.
        """
        batches: list[list[_Encoded]] = []
        for item in encoded:
            if batches and item.extra is None and batches[-1][0].extra is None:  # a prompt with images: alone
                current = batches[-1]
                head = len(current[0].ids)
                constrained = head + max_tokens > self.max_model_len
                if len(current) < per_batch and (not constrained or len(item.ids) == head):
                    current.append(item)
                    continue
            batches.append([item])
        return batches

    def _generate_batch(
        self,
        batch: list[_Encoded],
        max_tokens: int,
        seqs_per_prompt: int,
        kwargs: dict[str, Any],
        sampling: Mapping[str, Any],
    ) -> list[list[tuple[str, str, int]]]:
        """Generate for one batch; per prompt, a list of (text, finish_reason, completion_tokens)."""
        width = max(len(item.ids) for item in batch)
        input_ids = torch.full((len(batch), width), self._pad_id, dtype=torch.long)
        attention_mask = torch.zeros((len(batch), width), dtype=torch.long)
        for row, item in enumerate(batch):
            input_ids[row, width - len(item.ids) :] = torch.tensor(item.ids, dtype=torch.long)
            attention_mask[row, width - len(item.ids) :] = 1

        stop_ids = [int(t) for t in sampling.get("stop_token_ids") or []]
        terminators = list(dict.fromkeys(stop_ids + ([] if sampling.get("ignore_eos") else self._eos_ids)))
        stop_strings = normalize_stop(sampling)
        call: dict[str, Any] = dict(kwargs)
        call.update(
            max_new_tokens=min(max_tokens, self.max_model_len - width),
            eos_token_id=terminators or None,
            pad_token_id=self._pad_id,
        )
        if seqs_per_prompt > 1:
            call["num_return_sequences"] = seqs_per_prompt
        if stop_strings:
            call.update(stop_strings=stop_strings, tokenizer=self._tokenizer)
        seed = sampling.get("seed")
        if seed is not None:
            torch.manual_seed(int(seed))
        structured = sampling.get("structured_outputs")
        if structured:
            call["logits_processor"] = LogitsProcessorList([GrammarLogitsProcessor(self._grammar(structured))])

        for key, value in (batch[0].extra or {}).items():  # one prompt with images: pixel_values...
            call[key] = value.to(self.device, self.dtype) if value.is_floating_point() else value.to(self.device)
        with torch.inference_mode():
            out = self._model.generate(
                input_ids=input_ids.to(self.device), attention_mask=attention_mask.to(self.device), **call
            )
        generated = out[:, width:].tolist()

        options = _DecodeOptions(
            terminators=set(terminators),
            stop_strings=stop_strings,
            skip_special_tokens=bool(sampling.get("skip_special_tokens", True)),
            include_stop=bool(sampling.get("include_stop_str_in_output", False)),
        )
        per_prompt: list[list[tuple[str, str, int]]] = []
        for p in range(len(batch)):
            rows = generated[p * seqs_per_prompt : (p + 1) * seqs_per_prompt]
            per_prompt.append([self._finish(tokens, options) for tokens in rows])
        return per_prompt

    def _grammar(self, spec: Mapping[str, Any]) -> Any:
        """The spec compiled for this tokenizer (cached): masks the full vocabulary, padding ids included."""
        if self._grammars is None:
            config = self._model.config if self._model is not None else None
            text_config = config.get_text_config() if config is not None else None
            vocab = int(getattr(text_config, "vocab_size", 0) or len(self._tokenizer))
            self._grammars = GrammarCompilerCache(self._tokenizer, vocab, self._eos_ids)
        return self._grammars.compiled(spec)

    def _decode(self, tokens: list[int], skip_special_tokens: bool) -> str:
        # One sequence of ids gives one string; the stub's `str | list[str]` also covers a batch of sequences.
        return cast(
            str,
            self._tokenizer.decode(tokens, skip_special_tokens=skip_special_tokens, clean_up_tokenization_spaces=False),
        )

    def _first_stop_end(self, tokens: list[int], stop_strings: list[str], skip: bool) -> int | None:
        """Smallest k such that the text of ``tokens[:k]`` contains a stop string (None if none does)."""

        def hit(k: int) -> bool:
            text = self._decode(tokens[:k], skip)
            return any(s in text for s in stop_strings)

        if not tokens or not hit(len(tokens)):
            return None
        lo, hi = 1, len(tokens)  # hit(hi) holds; containment only grows with k
        while lo < hi:
            mid = (lo + hi) // 2
            if hit(mid):
                hi = mid
            else:
                lo = mid + 1
        return lo

    def _finish(self, tokens: list[int], opt: _DecodeOptions) -> tuple[str, str, int]:
        """Find where one generated row really ends; return (text, finish_reason, token count).

        After a row finishes, HF fills it with padding (or, with no EOS criterion, keeps generating), so
        the end is the earliest of: the first terminating token, the token that completes a stop string.
        Stop strings are looked for both in the raw text (what HF's criterion matched, special tokens
        included) and in the decoded text, as vLLM does.
        """
        end_token = next((k + 1 for k, t in enumerate(tokens) if t in opt.terminators), None)
        end_stop: int | None = None
        if opt.stop_strings:
            head = tokens[:end_token] if end_token is not None else tokens
            ends = [self._first_stop_end(head, opt.stop_strings, skip) for skip in {False, opt.skip_special_tokens}]
            found = [e for e in ends if e is not None]
            end_stop = min(found) if found else None

        if end_stop is not None and (end_token is None or end_stop < end_token):
            text = self._decode(tokens[:end_stop], opt.skip_special_tokens)
            cuts = [(text.find(s), s) for s in opt.stop_strings if s in text]
            if cuts:
                start, stop = min(cuts, key=lambda c: (c[0], -len(c[1])))
                text = text[: start + len(stop)] if opt.include_stop else text[:start]
            return text, "stop", end_stop
        if end_token is not None:
            kept = tokens[:end_token] if opt.include_stop else tokens[: end_token - 1]
            return self._decode(kept, opt.skip_special_tokens), "stop", end_token
        return self._decode(tokens, opt.skip_special_tokens), "length", len(tokens)

    # -------------------------------------------------------------------------------------- tear-down

    def close(self) -> None:
        """Drop the model and free its memory (best effort; exiting the process is what frees a GPU)."""
        if getattr(self, "_model", None) is None:
            return
        on_cuda = self.device.type == "cuda"
        self._model = None
        gc.collect()
        if on_cuda:
            torch.cuda.empty_cache()


def _completion(samples: Sequence[tuple[str, str, int]], prompt_tokens: int) -> Completion:
    """One prompt's Completion from its samples' (text, finish reason, new tokens)."""
    return Completion(
        responses=[s[0] for s in samples],
        finish_reasons=[s[1] for s in samples],
        prompt_tokens=prompt_tokens,
        completion_tokens=sum(s[2] for s in samples),
    )
