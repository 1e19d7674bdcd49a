"""Self-tuning throughput: a worker's first shards try a few batch widths, then the worker keeps the fastest.

The knob is how many sequences decode at once, the one setting that both engines can change between steps
without reloading the model: the HF engine's batch (``batch_size``), and for vLLM how many requests are handed
to its scheduler at once (at most the engine's ``max_num_seqs``, which vLLM sizes per device: 256 on CPU and
most GPUs, 1024 on an H100). ``max_num_batched_tokens`` is fixed when vLLM starts, so it is not tried here.

The width never changes what a sequence generates beyond what any batch composition does (a seeded request
samples from its own generator on both engines, greedy takes the argmax); ``tests/engines/test_calibration.py``
checks that outputs with calibration equal outputs without it on both engines.

The first shard is not measured (it carries the engine's warm-up). A trial runs at least ``min_tokens``
output tokens (or ``max_shards`` shards); widths are tried from the smallest up until a wider batch is slower
than the best so far by more than ``tolerance`` (then the default is tried, if it was not yet: every choice is
measured against it). The chosen width is the fastest, except that the default is kept when it is within
``tolerance`` of it (a noisy win is not worth leaving the default for). Pure logic: no clock, no engine.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, Literal, Protocol

Knob = Literal["batch_size", "max_num_seqs"]


class Tunable(Protocol):
    """An engine whose batch width can change between steps (both engines)."""

    knob: str

    @property
    def width(self) -> int: ...

    def set_width(self, width: int) -> None: ...


#: Output tokens a trial runs before its rate counts (with fewer shards, they also end it: ``max_shards``).
MIN_TRIAL_TOKENS = 4096
MAX_TRIAL_SHARDS = 4
TOLERANCE = 0.05


def candidate_widths(knob: Knob, default: int, *, on_gpu: bool) -> tuple[int, ...]:
    """The widths to try, smallest first, the default among them.

    vLLM: 1/8, 1/4, 1/2 and all of ``max_num_seqs`` (wider needs a restart: set ``model_args.max_num_seqs``).
    HF: 1/4 and 1/2 of ``batch_size`` and the default; on CPU also 2x and 4x (memory is the host's), never on a
    GPU, where a wider batch may not fit (raise ``--batch_size`` to let calibration go wider).
    """
    if default < 1:
        raise ValueError(f"the default width must be at least 1, got {default}")
    if knob == "max_num_seqs":
        factors: tuple[float, ...] = (1 / 8, 1 / 4, 1 / 2, 1)
    else:
        factors = (1 / 4, 1 / 2, 1) if on_gpu else (1 / 4, 1 / 2, 1, 2, 4)
    return tuple(sorted({max(1, round(default * f)) for f in factors}))


@dataclass
class Trial:
    """What one width did: output tokens over seconds, from the shards that finished while it was set."""

    width: int
    tokens: int = 0
    seconds: float = 0.0
    shards: int = 0

    @property
    def rate(self) -> float:
        return self.tokens / self.seconds if self.seconds > 0 else 0.0


@dataclass
class Calibration:
    """Decides the width for the next shards from the shards that finished. Feed it :meth:`landed`.

    ``warmup``: shards to let finish after a switch before measuring (1 for an engine that keeps several shards
    in flight, whose next shard ran partly at the old width; 0 for one that runs one shard at a time).
    """

    knob: Knob
    default: int
    candidates: Sequence[int]
    min_tokens: int = MIN_TRIAL_TOKENS
    max_shards: int = MAX_TRIAL_SHARDS
    tolerance: float = TOLERANCE
    warmup: int = 0
    trials: list[Trial] = field(default_factory=list)
    chosen: int | None = None
    _skip: int = 0
    _since: float | None = None

    def __post_init__(self) -> None:
        widths = sorted(set(self.candidates))
        if not widths or widths[0] < 1:
            raise ValueError(f"candidate widths must be positive, got {list(self.candidates)}")
        if self.default not in widths:
            raise ValueError(f"the default width {self.default} is not among the candidates {widths}")
        self.candidates = widths
        if len(widths) == 1:
            self.chosen = widths[0]
        else:
            self.trials.append(Trial(widths[0]))
            self._skip = 1  # the first shard carries the engine's warm-up (first kernels, allocator growth)

    @property
    def done(self) -> bool:
        return self.chosen is not None

    @property
    def width(self) -> int:
        """The width to run now: the chosen one, or the one on trial."""
        return self.chosen if self.chosen is not None else self.trials[-1].width

    def started(self, now: float) -> None:
        """A shard was handed to the engine at ``now``: the clock starts with the first one."""
        if self._since is None:
            self._since = now

    def landed(self, tokens: int, now: float) -> int | None:
        """A shard with ``tokens`` output tokens finished at ``now``; the new width if it changes, else None."""
        if self.done:
            return None
        if self._since is None:
            self._since = now
            return None
        if self._skip > 0:  # the first shard, or one that ran partly at the previous width
            self._skip -= 1
            self._since = now
            return None
        trial = self.trials[-1]
        trial.tokens += tokens
        trial.seconds += now - self._since
        trial.shards += 1
        self._since = now
        if trial.tokens < self.min_tokens and trial.shards < self.max_shards:
            return None
        best = max(t.rate for t in self.trials)
        slower = trial.rate < (1 - self.tolerance) * best
        tried = {t.width for t in self.trials}
        after = [w for w in self.candidates if w > trial.width and not (slower and w != self.default)]
        if not after or (slower and self.default in tried):
            self.chosen = self._choose()
            return self.chosen if self.chosen != trial.width else None
        # the next width up; once wider got slower, only the default, so the choice is measured against it
        self.trials.append(Trial(after[0]))
        self._skip = self.warmup
        return after[0]

    def _choose(self) -> int:
        fastest = max(self.trials, key=lambda t: t.rate)
        default = next((t for t in self.trials if t.width == self.default), None)
        if default is not None and default.rate >= (1 - self.tolerance) * fastest.rate:
            return self.default
        return fastest.width

    def summary(self) -> dict[str, Any]:
        """For a shard's metadata: the knob, the width now, whether it is chosen, and each trial's rate."""
        return {
            "knob": self.knob,
            "width": self.width,
            "default": self.default,
            "state": "chosen" if self.done else "trying",
            "trials": {str(t.width): round(t.rate, 1) for t in self.trials if t.shards},
        }

    def describe(self) -> str:
        """One line for the logs: what was chosen and each width's output tokens/s."""
        rates = ", ".join(f"{t.width}: {t.rate:.0f}" for t in self.trials if t.shards)
        kept = " (the default)" if self.width == self.default else f" (default {self.default})"
        return f"calibration chose {self.knob} {self.width}{kept}; output tok/s by width: {rates}"


def calibration_for(engine: Any, *, streaming: bool) -> Calibration | None:
    """A calibration over ``engine``'s knob (None for an engine without one: it runs at its own width).

    ``streaming``: the engine keeps several shards in flight, so the first shard after a switch is not measured.
    """
    knob = getattr(engine, "knob", None)
    if knob not in ("batch_size", "max_num_seqs") or not callable(getattr(engine, "set_width", None)):
        return None
    default = int(engine.width)
    on_gpu = str(getattr(engine, "device", "cpu")).split(":")[0] == "cuda"
    calibration = Calibration(knob, default, candidate_widths(knob, default, on_gpu=on_gpu), warmup=int(streaming))
    engine.set_width(calibration.width)
    return calibration
