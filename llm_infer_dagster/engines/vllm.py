"""The vLLM backend: one ``vllm.LLM`` kept fed across shards through its engine's add-request/step loop.

``submit`` renders and queues every prompt of a shard at once; ``step`` runs one engine step and hands
back the shards whose last request finished, so the next shard's requests already run while the current
one drains (one ``LLM.generate`` call per shard would drain the batch at every shard boundary).
``generate`` is ``submit`` plus stepping until that shard is back: one code path for both.

Conventions shared with the HF backend (see :mod:`llm_infer_dagster.engines.hf`):

- Plain text is tokenized by vLLM as usual (with the tokenizer's special tokens, e.g. BOS). Chat messages
  are rendered with the model's chat template (``add_generation_prompt=True``) and tokenized without
  special tokens, since the template writes its own BOS.
- A prompt that leaves no room for one new token (``len >= max_model_len``) or is longer than
  ``max_input_length`` (the seed's ``--max_input_length``), an empty prompt, a chat
  template failure, or any request vLLM refuses comes back as an error :class:`Completion`; the rest of
  the shard runs.
- Sampling keys are vLLM ``SamplingParams`` names already; a combination vLLM refuses raises
  :class:`TaskConfigError` before anything is queued. ``structured_outputs`` (``json`` / ``regex`` /
  ``choice`` / ``grammar``) becomes vLLM's ``StructuredOutputsParams``. Rows with their own parameters get
  their own ``SamplingParams`` (one per distinct set).
- ``completion_tokens`` counts the generated token ids (the terminating EOS / stop token included),
  summed over the ``n`` samples; ``finish_reasons`` are vLLM's ("stop", "length", "abort").

With ``prefix_order`` (task_settings' ``prefix_planning``; off by default) submitted requests are staged
and handed to vLLM a batch (``max_num_seqs``) at a time, sorted by token ids across every shard submitted so
far, so rows that share a prefix run together and vLLM's prefix cache (on by default) computes the shared
blocks once, before they are evicted; completions still come back per shard in input order (see
:mod:`llm_infer_dagster.engines.prefix_order`).

A chat prompt with image parts (``engines/multimodal.py``) is rendered with the template's image placeholders
and handed over with its images as ``multi_modal_data``; vLLM's processor expands them into image tokens.

LoRA adapters (``lora_adapters``) load with the base model (``enable_lora``); each submitted shard names
the one its requests run with (a ``LoRARequest``), or none for the base model.

Importing this module imports neither vLLM nor torch: the engine (and its CPU/GPU setup) lives in the
worker process that builds it.
"""

from __future__ import annotations

import bisect
import dataclasses
import gc
import itertools
import logging
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from llm_infer_dagster.engines.base import (
    Completion,
    Prompt,
    Sampling,
    check_max_input_length,
    per_prompt,
    sampling_key,
    too_long_error,
)
from llm_infer_dagster.engines.lora import vllm_lora_args, vllm_requests
from llm_infer_dagster.engines.multimodal import has_images, split_images
from llm_infer_dagster.engines.spec import Dtype
from llm_infer_dagster.engines.structured import compact_json_ebnf
from llm_infer_dagster.errors import SettingsError, TaskConfigError

__all__ = ["DEFAULT_CPU_KV_CACHE_BYTES", "VLLMEngine", "cpu_engine_args", "start_llm"]

log = logging.getLogger(__name__)

#: KV cache reserved on CPU when the caller sets no size. vLLM's default (92% of RAM) fails at start-up.
DEFAULT_CPU_KV_CACHE_BYTES = 512 * 1024 * 1024
_KV_SIZE_ARGS = ("gpu_memory_utilization", "kv_cache_memory_bytes")
_KV_SIZE_ENV = "VLLM_CPU_KVCACHE_SPACE"

# Request ids are f"{tag}{_SEP}{row}"; the row is split off from the right, so a tag may contain anything.
_SEP = "\x1f"
BATCH_WATERMARK = 2  # requests queued per scheduler slot before a worker asks for another shard
_GENERATE_TAG = "\x00generate"
STRUCTURED_KINDS = ("json", "regex", "choice", "grammar")  # vLLM's StructuredOutputsParams kinds


@dataclass
class _Shard:
    """One submitted shard: its completions so far and how many requests are still running."""

    results: list[Completion | None]
    prompt_tokens: dict[int, int] = field(default_factory=dict)
    running: int = 0


@dataclass
class _Request:
    """One rendered request, ready for ``add_request``."""

    request_id: str
    engine_input: Any
    params: Any
    lora: Any
    n_tokens: int


class VLLMEngine:
    """One model served by ``vllm.LLM``; implements both ``Engine`` and ``StreamingEngine``."""

    name = "vllm"
    #: What calibration (:mod:`llm_infer_dagster.engines.calibration`) tunes here: requests handed to vLLM at once.
    knob = "max_num_seqs"

    def __init__(
        self,
        model_path: str,
        *,
        device: str = "cuda",
        dtype: Dtype = "auto",
        max_model_len: int | None = None,
        trust_remote_code: bool = False,
        tensor_parallel_size: int = 1,
        engine_args: dict[str, Any] | None = None,
        max_input_length: int | None = None,
        lora_adapters: Mapping[str, str] | None = None,
        prefix_order: bool = False,
    ) -> None:
        self.model_path = str(model_path)
        self.prefix_order = prefix_order
        self.device = str(device)
        if max_model_len is not None and max_model_len < 2:
            raise SettingsError(f"max_model_len must be at least 2 (prompt plus one token), got {max_model_len}")
        if tensor_parallel_size < 1:
            raise SettingsError(f"tensor_parallel_size must be at least 1, got {tensor_parallel_size}")
        check_max_input_length(max_input_length)
        self.max_input_length = max_input_length
        on_cpu = self._on_cpu = self.device.split(":")[0] == "cpu"
        args: dict[str, Any] = dict(engine_args or {})
        if on_cpu:
            # "auto" turns an fp32 checkpoint into bf16 on CPU; keep what HF would load.
            if dtype == "auto":
                dtype = "float32"
            args = cpu_engine_args(args)
            if args.get("enforce_eager") is True and "enforce_eager" not in (engine_args or {}):
                log.info(
                    "vLLM on CPU: enforce_eager=True (the compile cache cannot load on vllm-cpu %s, so every "
                    "start would compile again; set model_args enforce_eager=false to compile)",
                    _vllm_version(),
                )
        self.dtype = dtype
        #: Whether this engine runs without torch.compile (the CPU default, or the caller's choice).
        self.enforce_eager = bool(args.get("enforce_eager", False))
        self.lora_adapters = dict(lora_adapters or {})
        args.update(vllm_lora_args(self.lora_adapters, args))

        self._llm: Any = start_llm(
            self.model_path,
            tensor_parallel_size=tensor_parallel_size,
            dtype=dtype,
            max_model_len=max_model_len,
            trust_remote_code=trust_remote_code,
            **args,
        )

        self._engine: Any = self._llm.llm_engine
        self.max_model_len = int(self._engine.model_config.max_model_len)
        self._max_num_seqs = int(self._engine.vllm_config.scheduler_config.max_num_seqs)
        self._width = self._max_num_seqs  # requests in vLLM at once; below max_num_seqs the rest wait staged
        self._tokenizer: Any = self._llm.get_tokenizer()
        self._renderer: Any = getattr(self._llm, "renderer", None)
        self._tok_params: dict[bool, Any] = {}
        if self._renderer is not None:
            # vLLM's own completion tokenization, minus its length cap: the engine counts and refuses
            # too-long prompts itself, with the real token count in the message.
            base = self._renderer.default_cmpl_tok_params
            for add_special in (True, False):
                self._tok_params[add_special] = dataclasses.replace(
                    base, max_total_tokens=None, add_special_tokens=add_special
                )
        self._shards: dict[str, _Shard] = {}
        self._staged: list[tuple[tuple[tuple[int, ...], int], _Request]] = []  # prefix_order: not in vLLM yet
        self._arrivals = itertools.count()
        self._in_vllm = 0  # requests handed to vLLM and not finished
        self._ready: list[tuple[str, list[Completion]]] = []
        self._lora = vllm_requests(self.lora_adapters) if self.lora_adapters else {}

    # ------------------------------------------------------------------------------------- sampling

    def sampling_params(self, sampling: Mapping[str, Any]) -> Any:
        """``SamplingParams`` for the merged task parameters; :class:`TaskConfigError` if vLLM refuses them."""
        from vllm import SamplingParams
        from vllm.sampling_params import RequestOutputKind, StructuredOutputsParams

        params = dict(sampling)
        structured = params.pop("structured_outputs", None)
        n = params.get("n", 1)
        if params.get("temperature", 1.0) == 0 and isinstance(n, int) and n > 1:
            raise TaskConfigError(
                f'sampling parameters: "n" is {n} but "temperature" is 0 (greedy), and vLLM requires n = 1 '
                'for greedy sampling; set "n" to 1, or "temperature" above 0, in sampling_params.json'
            )
        try:
            if structured is not None:
                compact = compact_json_ebnf(structured)  # vLLM reads disable_any_whitespace engine-wide only
                kind = (
                    {"grammar": compact}
                    if compact is not None
                    else {k: structured[k] for k in STRUCTURED_KINDS if structured.get(k) is not None}
                )
                params["structured_outputs"] = StructuredOutputsParams(**kind)
            return SamplingParams(**params, output_kind=RequestOutputKind.FINAL_ONLY)
        except Exception as exc:  # VLLMValidationError is no ValueError; msgspec raises TypeError
            key = getattr(exc, "parameter", None)
            where = f' (change "{key}")' if key else ""
            raise TaskConfigError(
                f"sampling parameters rejected by vLLM{where}: {exc}; fix the named key in sampling_params.json"
            ) from exc

    # ------------------------------------------------------------------------------------ streaming

    def submit(self, tag: str, prompts: Sequence[Prompt], sampling: Sampling, *, adapter: str | None = None) -> None:
        """Queue a whole shard under ``tag`` (run with LoRA ``adapter``); bad prompts become error Completions."""
        if self._llm is None:
            raise RuntimeError("VLLMEngine.submit called after close()")
        if tag in self._shards or any(t == tag for t, _ in self._ready):
            raise ValueError(f"shard {tag!r} is already in the engine")
        if adapter is not None and adapter not in self._lora:
            known = ", ".join(sorted(self._lora)) or "none"
            raise ValueError(f"LoRA adapter {adapter!r} is not loaded in this engine (loaded: {known})")
        if adapter is None and self._lora and self._on_cpu:
            raise ValueError(
                "a request without a LoRA adapter cannot share vLLM's CPU engine with adapter requests (its CPU "
                "LoRA ops apply the last adapter to it): run the base model in an engine without lora_adapters"
            )
        lora = self._lora.get(adapter) if adapter is not None else None
        built: dict[str, Any] = {}  # one SamplingParams per distinct set, all built before anything is queued
        row_params = []
        for row_sampling in per_prompt(sampling, len(prompts)):
            key = sampling_key(row_sampling)
            if key not in built:
                built[key] = self.sampling_params(row_sampling)
            row_params.append(built[key])
        shard = _Shard(results=[None] * len(prompts))
        self._shards[tag] = shard
        added: list[str] = []
        try:
            rendered: list[tuple[int, Any, int]] = []  # (row, engine input, prompt tokens)
            for i, prompt in enumerate(prompts):
                engine_input, error, n_tokens = self._render(prompt)
                if engine_input is None:
                    shard.results[i] = Completion(prompt_tokens=n_tokens, error=error)
                    continue
                rendered.append((i, engine_input, n_tokens))
            for i, engine_input, n_tokens in rendered:
                request = _Request(f"{tag}{_SEP}{i}", engine_input, row_params[i], lora, n_tokens)
                shard.prompt_tokens[i] = n_tokens
                shard.running += 1
                if self.prefix_order:
                    # Staged, then fed to vLLM sorted by token ids across every shard submitted so far: rows
                    # that share a prefix (in this shard or the next) run back to back, so vLLM's prefix cache
                    # computes the shared blocks once, before they can be evicted. Results stay keyed by row.
                    order = (tuple(engine_input.get("prompt_token_ids") or ()), next(self._arrivals))
                    bisect.insort(self._staged, (order, request), key=lambda e: e[0])
                elif self._width < self._max_num_seqs or self._staged:
                    # A narrower width (calibration): staged in arrival order, fed as vLLM's batch has room.
                    self._staged.append((((), next(self._arrivals)), request))
                elif self._add(request):
                    added.append(request.request_id)
        except BaseException:
            self._shards.pop(tag, None)
            self._staged = [e for e in self._staged if not e[1].request_id.startswith(f"{tag}{_SEP}")]
            if added:
                self._abort(added)
            raise

    def _add(self, request: _Request) -> bool:
        """Hand one request to vLLM; a refused one becomes its row's error Completion (False)."""
        try:
            self._engine.add_request(
                request.request_id, request.engine_input, request.params, lora_request=request.lora
            )
        except Exception as exc:
            if _is_engine_failure(exc):
                raise
            tag, _, row = request.request_id.rpartition(_SEP)
            shard = self._shards[tag]
            shard.results[int(row)] = Completion(
                prompt_tokens=request.n_tokens, error=f"vLLM refused the prompt: {type(exc).__name__}: {exc}"
            )
            shard.running -= 1
            return False
        self._in_vllm += 1
        return True

    @property
    def width(self) -> int:
        """Requests handed to vLLM at once (its ``max_num_seqs`` unless calibration narrowed it)."""
        return self._width

    def set_width(self, width: int) -> None:
        """Hand vLLM at most ``width`` requests at once from the next step on (1 to ``max_num_seqs``)."""
        if not 1 <= width <= self._max_num_seqs:
            raise ValueError(f"width must be 1 to max_num_seqs ({self._max_num_seqs}), got {width}")
        self._width = width

    def _feed(self) -> None:
        """Move staged requests to vLLM, in staged order, while it holds fewer than ``width``."""
        while self._staged and self._in_vllm < self._width:
            _, request = self._staged.pop(0)
            self._add(request)

    def has_pending(self) -> bool:
        return bool(self._shards) or bool(self._ready)

    def wants_more(self) -> bool:
        """True while fewer requests are queued than keep the scheduler's batch full (2 x max_num_seqs).

        A fixed number of shards in flight caps the batch at that many shards' rows (measured: mean batch 77
        of 256 with two 64-row shards, 0.89x of bare vLLM); counting requests keeps it full (0.97x).
        """
        running = sum(s.running for s in self._shards.values())
        return running < BATCH_WATERMARK * self._max_num_seqs

    def step(self) -> list[tuple[str, list[Completion]]]:
        """One engine step; the shards whose last request finished, each in input order."""
        done, self._ready = self._ready, []
        if self._llm is None:
            return done
        self._feed()
        if any(s.running for s in self._shards.values()):
            if self._engine.has_unfinished_requests():
                for output in self._engine.step():
                    if output.finished:
                        self._record(output)
            else:  # should not happen: vLLM has nothing left, yet requests never came back
                for shard in self._shards.values():
                    for i, result in enumerate(shard.results):
                        if result is None:
                            shard.results[i] = Completion(error="internal: vLLM returned no output for this prompt")
                    shard.running = 0
        for tag in [t for t, s in self._shards.items() if s.running == 0]:
            shard = self._shards.pop(tag)
            done.append((tag, [r if r is not None else Completion(error="internal: no output") for r in shard.results]))
        return done

    def generate(
        self, prompts: Sequence[Prompt], sampling: Sampling, *, adapter: str | None = None
    ) -> list[Completion]:
        """One Completion per prompt, in input order, each with all ``n`` samples (the streaming path)."""
        self.submit(_GENERATE_TAG, prompts, sampling, adapter=adapter)
        while True:
            for tag, completions in self.step():
                if tag == _GENERATE_TAG:
                    return completions
                self._ready.append((tag, completions))  # another caller's shard: keep it for their step()

    # -------------------------------------------------------------------------------------- helpers

    def _render(self, prompt: Prompt) -> tuple[Any, str | None, int]:
        """(engine input, None, token count) or (None, error, token count) for one prompt."""
        images: list[Any] = []
        if has_images(prompt):
            try:
                prompt, images = split_images(prompt)  # type: ignore[arg-type]
            except ValueError as exc:  # an image gone since the prompts were made: this prompt's error
                return None, str(exc), 0
        if isinstance(prompt, str):
            text, add_special = prompt, True
        elif isinstance(prompt, list) and all(isinstance(m, Mapping) for m in prompt):
            if getattr(self._tokenizer, "chat_template", None) is None:
                raise TaskConfigError(
                    f"format_prompt returned chat messages, but the model at {self.model_path} has no chat "
                    "template; return a string from format_prompt or use a chat model"
                )
            try:
                text = self._tokenizer.apply_chat_template(prompt, add_generation_prompt=True, tokenize=False)
            except Exception as exc:  # a template error concerns this prompt only
                return None, f"cannot apply the chat template: {type(exc).__name__}: {exc}", 0
            add_special = False  # the template writes its own BOS
        else:
            return None, f"prompt must be a string or a list of chat messages, got {type(prompt).__name__}", 0

        try:
            if self._renderer is not None:
                request: dict[str, Any] = {"prompt": text}
                if images:
                    request["multi_modal_data"] = {"image": images}
                (engine_input,) = self._renderer.render_cmpl([request], self._tok_params[add_special])
                ids = engine_input["prompt_token_ids"]
            elif images:
                return None, "this vLLM has no renderer: prompts with images need vLLM 0.32 or later", 0
            else:  # older vLLM without a renderer: hand over token ids
                ids = list(self._tokenizer(text, add_special_tokens=add_special)["input_ids"])
                engine_input = {"prompt_token_ids": ids, "prompt": text}
        except Exception as exc:
            return None, f"cannot tokenize the prompt: {type(exc).__name__}: {exc}", 0
        n_tokens = len(ids)
        if n_tokens == 0:
            return None, "prompt is empty (0 tokens)", 0
        too_long = too_long_error(n_tokens, self.max_input_length, self.max_model_len)
        if too_long is not None:
            return None, too_long, n_tokens
        return engine_input, None, n_tokens

    def _record(self, output: Any) -> None:
        tag, _, row = str(output.request_id).rpartition(_SEP)
        shard = self._shards.get(tag)
        if shard is None or not row.isdigit() or not 0 <= int(row) < len(shard.results):
            return  # not one of ours
        i = int(row)
        if shard.results[i] is not None:
            return
        samples = sorted(output.outputs, key=lambda o: o.index)
        prompt_ids = output.prompt_token_ids
        prompt_tokens = len(prompt_ids) if prompt_ids is not None else shard.prompt_tokens.get(i, 0)
        reasons = [str(o.finish_reason) if o.finish_reason is not None else "abort" for o in samples]
        completion = Completion(
            responses=[o.text for o in samples],
            finish_reasons=reasons,
            prompt_tokens=prompt_tokens,
            completion_tokens=sum(len(o.token_ids) for o in samples),
        )
        if "error" in reasons:
            completion.error = "vLLM failed this request (finish_reason 'error'); retrying the shard may help"
        shard.results[i] = completion
        shard.running -= 1
        self._in_vllm -= 1

    def _abort(self, request_ids: list[str]) -> None:
        try:
            self._engine.abort_request(request_ids)
        except Exception:  # best effort
            log.debug("aborting %d vLLM requests failed", len(request_ids), exc_info=True)

    # ------------------------------------------------------------------------------------ tear-down

    def close(self) -> None:
        """Abort what is running and shut the engine core down (best effort; exiting frees the memory)."""
        llm = getattr(self, "_llm", None)
        if llm is None:
            return
        running = [f"{tag}{_SEP}{i}" for tag, s in self._shards.items() for i in s.prompt_tokens]
        if running:
            self._abort(running)
        self._shards.clear()
        self._staged.clear()
        self._ready.clear()
        try:
            self._engine.engine_core.shutdown()
        except Exception:
            log.debug("vLLM engine core shutdown failed", exc_info=True)
        self._llm = None
        self._engine = None
        self._renderer = None
        gc.collect()


def start_llm(model_path: str, *, label: str = "vLLM", **kwargs: Any) -> Any:
    """``vllm.LLM(model=model_path, **kwargs)``; a failure is one SettingsError saying why (``label`` names it)."""
    from vllm import LLM

    try:
        return LLM(model=model_path, **kwargs)
    except Exception as exc:
        if not Path(model_path).exists() and os.sep in model_path:
            reason = "no such folder"
        else:
            text = str(exc).strip()
            reason = f"{type(exc).__name__}: {text.splitlines()[0] if text else ''}".rstrip(": ")
        raise SettingsError(f"cannot start {label} for {model_path}: {reason}") from exc


def cpu_engine_args(engine_args: Mapping[str, Any]) -> dict[str, Any]:
    """``engine_args`` with the CPU defaults filled in where the caller set nothing.

    - KV cache: :data:`DEFAULT_CPU_KV_CACHE_BYTES` unless a size is given (argument or ``VLLM_CPU_KVCACHE_SPACE``).
    - ``enforce_eager=True`` unless ``enforce_eager`` or ``compilation_config`` is given. vllm-cpu 0.32's
      compile cache cannot load what it saved (its CPU platform compiles with plain inductor, whose AOT
      artifact loads as a plain function, and vLLM's loader calls ``finalize_loading`` on it), so every
      compiled start compiles again (tens of seconds to minutes, against under a second eager), for about 10%
      more tokens per CPU second once started (BENCHMARKS.md, "vLLM on CPU: start-up, compiled vs eager").
    """
    args = dict(engine_args)
    if not any(k in args for k in _KV_SIZE_ARGS) and not os.environ.get(_KV_SIZE_ENV):
        args["kv_cache_memory_bytes"] = DEFAULT_CPU_KV_CACHE_BYTES
    if "enforce_eager" not in args and "compilation_config" not in args:
        args["enforce_eager"] = True
    return args


def _vllm_version() -> str:
    try:
        from importlib.metadata import version

        return version("vllm-cpu")
    except Exception:  # another vLLM build
        import vllm

        return str(getattr(vllm, "__version__", "?"))


def _is_engine_failure(exc: BaseException) -> bool:
    """True for errors that mean the engine itself is gone (those must sink the shard, not one row)."""
    try:
        from vllm.v1.engine.exceptions import EngineDeadError, EngineGenerateError
    except ImportError:  # pragma: no cover - other vLLM layouts
        return type(exc).__name__ in ("EngineDeadError", "EngineGenerateError")
    return isinstance(exc, EngineDeadError | EngineGenerateError)
