"""Prefix-aware planning's pure logic: request order in a shard, shard signatures, the shard plan, and how a
ready worker picks its next job (engines/prefix_order.py, runtime/dispatch.Feed)."""

from __future__ import annotations

from llm_infer_dagster.engines.prefix_order import pick, plan_groups, plan_order, prefix_signature, submit_order
from llm_infer_dagster.runtime.dispatch import Feed, ShardJob

DOCS = [f"Document {d}: " + f"text of document {d} " * 60 for d in range(6)]


def shard(docs: range, question: int) -> list[str]:
    return [f"{DOCS[d]}\nQuestion {question}?" for d in docs]


def test_submit_order_puts_equal_prefixes_together_and_is_stable() -> None:
    keys = [[1, 2, 9], [5, 5], [1, 2, 3], [5, 5], [1, 3]]
    order = submit_order(keys)
    assert order == [2, 0, 4, 1, 3]  # [1,2,*] together; equal keys keep input order
    assert sorted(order) == list(range(len(keys)))  # a permutation: every row is sent once


def test_signature_overlap_follows_shared_prefix() -> None:
    a, b, c = (
        prefix_signature(shard(range(3), 1)),
        prefix_signature(shard(range(3), 2)),
        prefix_signature(shard(range(3, 6), 1)),
    )
    assert sum(n for n, _ in a & b) > sum(n for n, _ in a & c)  # other questions, same documents: shared
    assert prefix_signature(["short"]) == frozenset()  # shorter than every rung: nothing to plan on


def test_plan_puts_shards_of_the_same_documents_back_to_back() -> None:
    # File order as a dataset grouped by question: q1 of docs 0-2, q1 of docs 3-5, q2 of docs 0-2, q2 of 3-5.
    shards = [shard(range(0, 3), 1), shard(range(3, 6), 1), shard(range(0, 3), 2), shard(range(3, 6), 2)]
    sigs = [prefix_signature(s) for s in shards]
    assert plan_order(sigs) == [0, 2, 1, 3]
    assert plan_groups(sigs) == [[0, 2], [1, 3]]


def test_plan_keeps_file_order_when_nothing_is_shared() -> None:
    sigs = [prefix_signature([f"{i} " + "unique words " * 50]) for i in range(5)]
    assert plan_order(sigs) == list(range(5))
    assert plan_order([]) == []


def test_prefix_shared_by_every_shard_does_not_reorder() -> None:
    system = "You are a helpful assistant. " * 40  # a long system prompt in every row
    sigs = [prefix_signature([system + f"row {i} " * 100]) for i in range(40)]
    assert plan_order(sigs) == list(range(40))  # shared by all: cached whatever the order, so ignored


def test_pick_keeps_a_worker_on_its_group_and_off_busy_groups() -> None:
    jobs = ["a0", "b0", "a1", "c0"]
    group = {"a0": 0, "a1": 0, "b0": 1, "c0": 2}.get
    assert pick(jobs, group, prefer=1, busy=set()) == 1
    assert pick(jobs, group, prefer=None, busy={0}) == 1  # group 0 runs elsewhere: take b0
    assert pick(jobs, group, prefer=5, busy={0, 1, 2}) == 0  # all busy: the first
    assert pick([], group, prefer=0, busy=set()) == -1


def test_feed_pop_prefers_the_workers_group() -> None:
    jobs = [ShardJob(k, "p", "o", group=g) for k, g in (("s0", 0), ("s1", 1), ("s2", 0), ("s3", 1))]
    feed = Feed(jobs, ahead=4)
    for _ in range(4):
        feed.make_one()
    assert feed.pop(1, set()).key == "s1"  # type: ignore[union-attr]
    assert feed.pop(None, {0}).key == "s3"  # type: ignore[union-attr]
    assert feed.pop().key == "s0"  # type: ignore[union-attr]
    assert feed.pop(1, set()).key == "s2"  # type: ignore[union-attr]
    assert feed.pop() is None
