"""How fast a run goes and what it will cost, from the shards that landed: pure arithmetic, no clock, no Dagster.

Whoever watches shards land (the Dagster step in ``stream.py``, ``llm-infer``'s progress bar) feeds
:meth:`Throughput.landed` with each shard's landing time, rows and output tokens, and asks
:meth:`Throughput.at` for a :class:`Progress` at a moment it chooses. The numbers:

- **rates** (rows/s, output tokens/s) over a recent window: the last ``window_s`` seconds, widened to about
  three shard durations when shards are slower than that (workers that land their shards together then
  still give a steady rate); until a window has passed, since the start (engine start included);
- **ETA**: rows still to come over the recent rows/s (None while nothing has landed, or nothing lately);
- **device-hours**: the wall time since the start times the devices held (GPUs, or CPU cores on CPU:
  ``runtime/workers.py:devices_in_use``): engine start, idle and the tail count, as on a rented machine;
  projected = (wall time + ETA) x devices.
"""

from __future__ import annotations

import bisect
from dataclasses import dataclass


@dataclass(frozen=True)
class Progress:
    """A run's progress at one moment (``Throughput.at``); rates per second, times in seconds."""

    rows_done: int
    rows_total: int
    tokens_done: int | None  # None: what landed carries no token counts (answers alone)
    elapsed_s: float
    rows_per_s: float  # recent window
    tokens_per_s: float | None  # recent window
    eta_s: float | None  # None: unknown (nothing landed, or nothing in the recent window)
    devices: int
    unit: str  # "GPU" or "CPU"

    @property
    def overall_tokens_per_s(self) -> float | None:
        """Output tokens over the whole wall time since the start (engine start included)."""
        if self.tokens_done is None:
            return None
        return self.tokens_done / self.elapsed_s if self.elapsed_s > 0 else 0.0

    @property
    def tokenless(self) -> bool:
        """Rows landed without output tokens: a pooling task (embed, classify, reward), whose pace is in rows."""
        return self.tokens_done == 0 and self.rows_done > 0

    @property
    def device_hours(self) -> float:
        return self.elapsed_s * self.devices / 3600

    @property
    def projected_device_hours(self) -> float | None:
        return None if self.eta_s is None else (self.elapsed_s + self.eta_s) * self.devices / 3600

    def bar_text(self) -> str:
        """The progress bar's tail: ``312 rows/s, 41.2k tok/s, ETA 2:13:05, 0.31/~4.2 GPU-h`` (with the bar's
        head, ``45%|###| 450k/1.00M``, about 75 columns)."""
        parts = [f"{rate(self.rows_per_s)} rows/s"]
        if self.tokens_per_s is not None and not self.tokenless:
            parts.append(f"{rate(self.tokens_per_s)} tok/s")
        parts.append(f"ETA {clock(self.eta_s)}")
        if self.devices:
            projected = self.projected_device_hours
            of = f"/~{hours(projected)}" if projected is not None and self.rows_done < self.rows_total else ""
            parts.append(f"{hours(self.device_hours)}{of} {self.unit}-h")
        return ", ".join(parts)

    def log_text(self) -> str:
        """One line for a step's log: rows done, rates, ETA, device-hours spent and projected."""
        return f"{self.rows_done}/{self.rows_total} rows, " + self.bar_text()

    def summary_text(self) -> str:
        """For ``llm-infer``'s last line: ``1,234,567 output tokens at 41.2k tokens/s, 3.1 GPU-hours`` (a pooling
        task: ``8,000 rows at 52.1 rows/s, ...``)."""
        parts = []
        overall = self.overall_tokens_per_s
        if self.tokenless:  # a pooling task: rows, not tokens
            per_s = self.rows_done / self.elapsed_s if self.elapsed_s > 0 else 0.0
            parts.append(f"{self.rows_done:,} rows at {rate(per_s)} rows/s")
        elif self.tokens_done is not None and overall is not None:
            parts.append(f"{self.tokens_done:,} output tokens at {rate(overall)} tokens/s")
        if self.devices:
            parts.append(f"{hours(self.device_hours)} {self.unit}-hours")
        return ", ".join(parts)

    def metadata(self) -> dict[str, float | int | str]:
        """The run-level numbers a shard's materialization carries (plain values: Dagster plots them)."""
        md: dict[str, float | int | str] = {
            "run_rows_done": self.rows_done,
            "run_rows_total": self.rows_total,
            "run_rows_per_s": round(self.rows_per_s, 3),
        }
        if self.tokens_per_s is not None:
            md["run_tokens_per_s"] = round(self.tokens_per_s, 1)
        if self.eta_s is not None:
            md["run_eta_s"] = round(self.eta_s, 1)
            md["run_eta"] = clock(self.eta_s)
        if self.devices:
            unit = self.unit.lower()
            md[f"run_{unit}s"] = self.devices
            md[f"run_{unit}_hours"] = round(self.device_hours, 6)
            projected = self.projected_device_hours
            if projected is not None:
                md[f"run_{unit}_hours_projected"] = round(projected, 6)
        return md


class Throughput:
    """Shard landings of one run, and what they say about its pace (module docstring).

    ``started``: when the run began to hold its devices (any clock; ``landed`` and ``at`` use the same one).
    ``parallel``: the workers landing shards side by side (widens the window to cover their shards).
    """

    def __init__(
        self,
        rows_total: int,
        started: float,
        *,
        devices: int = 0,
        unit: str = "GPU",
        parallel: int = 1,
        window_s: float = 300.0,
    ) -> None:
        self.rows_total, self.started, self.devices, self.unit = rows_total, started, devices, unit
        self.parallel, self.window_s = max(1, parallel), window_s
        self._times: list[float] = []  # landing times, ascending (out-of-order ones are inserted in place)
        self._rows: list[int] = []
        self._tokens: list[int] = []
        self._with_tokens = False
        self.rows_done, self.tokens_done = 0, 0

    def landed(self, at: float, rows: int, tokens: int | None = None) -> None:
        """A shard of ``rows`` rows (and ``tokens`` output tokens, if known) landed at time ``at``."""
        i = bisect.bisect_right(self._times, at)
        self._times.insert(i, at)
        self._rows.insert(i, rows)
        self._tokens.insert(i, tokens or 0)
        self.rows_done += rows
        if tokens is not None:
            self._with_tokens = True
            self.tokens_done += tokens

    def window(self) -> float:
        """The recent window's length: ``window_s``, or about three shard durations if shards take longer."""
        if not self._times:
            return self.window_s
        per_shard = (self._times[-1] - self.started) / len(self._times) * self.parallel
        return max(self.window_s, 3 * per_shard)

    def at(self, now: float) -> Progress:
        """The progress at time ``now`` (a landing after ``now`` counts as landed)."""
        elapsed = max(0.0, now - self.started)
        span = min(self.window(), elapsed)
        if span <= 0:
            rows_rate, tokens_rate = 0.0, 0.0
        elif span >= elapsed:  # the window reaches back to the start: the rate since the start
            rows_rate, tokens_rate = self.rows_done / elapsed, self.tokens_done / elapsed
        else:
            i = bisect.bisect_right(self._times, now - span)
            rows_rate, tokens_rate = sum(self._rows[i:]) / span, sum(self._tokens[i:]) / span
        left = max(0, self.rows_total - self.rows_done)
        eta = 0.0 if left == 0 else (left / rows_rate if rows_rate > 0 else None)
        return Progress(
            rows_done=self.rows_done,
            rows_total=self.rows_total,
            tokens_done=self.tokens_done if self._with_tokens else None,
            elapsed_s=elapsed,
            rows_per_s=rows_rate,
            tokens_per_s=tokens_rate if self._with_tokens else None,
            eta_s=eta,
            devices=self.devices,
            unit=self.unit,
        )


def rate(x: float) -> str:
    """A per-second rate in 3 significant digits at most: ``3.2``, ``312``, ``41.2k``, ``1.23M``."""
    for div, suffix in ((1e9, "G"), (1e6, "M"), (1e3, "k")):
        if x >= div * 0.9995:
            return f"{x / div:.3g}{suffix}"
    return f"{x:.2g}" if x < 10 else f"{x:.0f}"


def clock(seconds: float | None) -> str:
    """``m:ss`` under an hour, else ``h:mm:ss`` (hours as many as it takes); ``?`` when unknown."""
    if seconds is None:
        return "?"
    s = round(seconds)
    if s < 3600:
        return f"{s // 60}:{s % 60:02d}"
    return f"{s // 3600}:{s % 3600 // 60:02d}:{s % 60:02d}"


def hours(h: float | None) -> str:
    """Device-hours, readable at any size: ``<0.0001``, ``0.0004``, ``0.31``, ``4.2``, ``12.3``, ``1,234``."""
    if h is None:
        return "?"
    if h >= 100:
        return f"{h:,.0f}"
    if h >= 0.01:
        return f"{h:.3g}"
    if h >= 0.0001:
        return f"{h:.4f}".rstrip("0")
    return "<0.0001" if h > 0 else "0"
