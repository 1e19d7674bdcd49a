"""Prefix-aware ordering: run prompts that share a prefix close together, so the engine's prefix cache hits.

Pure logic, no engine and no Dagster: the vLLM engine orders a shard's requests with :func:`submit_order`,
the pipeline orders shards with :func:`prefix_signature` and :func:`plan_order`, and the pools keep a
planned group on one worker with :func:`pick`. None of it changes which rows a shard holds, its key or its
results: a request carries its row index, and completions are written in row order.

Why it matters: vLLM caches the KV blocks of computed prefixes and evicts the least recently used ones. Rows
that share a long prefix (one document asked several questions) but sit far apart in the input (a dataset
grouped by question type) are evicted before they meet again once the corpus outgrows the KV cache.
"""

from __future__ import annotations

import hashlib
from collections import Counter, defaultdict
from collections.abc import Callable, Sequence
from typing import TypeVar

__all__ = ["LADDER", "Signature", "pick", "plan_groups", "plan_order", "prefix_signature", "submit_order"]

#: Prefix lengths (characters) a shard's signature hashes; a shared prefix of L chars shares every rung <= L.
LADDER = (128, 512, 2048)
#: A prefix held by more shards than this is left out of planning: it is shared so widely (a system
#: prompt, a few-shot template) that it stays cached whatever the order, and scoring it costs O(shards^2).
COMMON = 32

#: A shard's prefixes: (rung, hash of the prompt's first ``rung`` chars), for every prompt at least that long.
Signature = frozenset[tuple[int, int]]
T = TypeVar("T")


def submit_order(keys: Sequence[Sequence[int]]) -> list[int]:
    """Indices of ``keys`` (e.g. prompt token ids) in sorted order: equal prefixes end up adjacent.

    Sorting is stable, so equal prompts keep their input order.
    """
    return sorted(range(len(keys)), key=lambda i: tuple(keys[i]))


def _h(text: str) -> int:
    return int.from_bytes(hashlib.blake2b(text.encode("utf-8", "surrogatepass"), digest_size=8).digest(), "big")


def prefix_signature(texts: Sequence[str], ladder: Sequence[int] = LADDER) -> Signature:
    """The set of (rung, hash of the first ``rung`` chars) over ``texts``: cheap, and two shards' overlap
    weighted by rung is roughly how many leading characters their prompts share."""
    return frozenset((n, _h(t[:n])) for t in texts for n in ladder if len(t) >= n)


def plan_order(signatures: Sequence[Signature], common: int = COMMON) -> list[int]:
    """An order of the shards in which each is followed by the one sharing the most prefix with it.

    Greedy nearest neighbour from shard 0; ties, and shards sharing nothing, keep their input order, so
    shards with no shared prefixes are not reordered at all.
    """
    return [i for group in plan_groups(signatures, common) for i in group]


def plan_groups(signatures: Sequence[Signature], common: int = COMMON) -> list[list[int]]:
    """:func:`plan_order` cut into groups: runs of shards chained by a shared prefix (one group = one worker)."""
    holders: dict[tuple[int, int], list[int]] = defaultdict(list)
    for i, sig in enumerate(signatures):
        for entry in sig:
            holders[entry].append(i)
    useful = {e: h for e, h in holders.items() if 1 < len(h) <= common}
    left = dict.fromkeys(range(len(signatures)))  # insertion-ordered set of shards not placed yet
    groups: list[list[int]] = []
    current: int | None = None
    while left:
        best = None
        if current is not None:
            score: Counter[int] = Counter()
            for entry in signatures[current]:
                for j in useful.get(entry, ()):
                    if j in left:
                        score[j] += entry[0]
            if score:
                best = max(score, key=lambda j: (score[j], -j))
        if best is None:
            best = next(iter(left))
            groups.append([])
        groups[-1].append(best)
        del left[best]
        current = best
    return groups


def pick(waiting: Sequence[T], group_of: Callable[[T], int | None], prefer: int | None, busy: set[int]) -> int:
    """Which waiting job a ready worker takes: the first of the group it ran last (``prefer``), else the
    first whose group no other worker is running (``busy``), else the first; -1 if none is waiting."""
    if not waiting:
        return -1
    if prefer is not None:
        for i, job in enumerate(waiting):
            if group_of(job) == prefer:
                return i
    for i, job in enumerate(waiting):
        g = group_of(job)
        if g is None or g not in busy:
            return i
    return 0
