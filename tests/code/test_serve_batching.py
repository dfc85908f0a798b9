"""The replica's batcher and admission, without Ray: real asyncio, a real TF-IDF model on real NSMC reviews.

The model's forward pass is given a fixed cost (``PASS_S + TEXT_S`` per text, slept on the executor
thread like a CPU-bound pass) so that the capacity admission must estimate is known exactly.
"""

from __future__ import annotations

import asyncio
import os
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from kosent.models.tfidf import TfidfClassifier
from kosent.serve.autoscaling import DEMAND_SLACK, replicas_for_demand
from kosent.serve.batching import Batcher, Overloaded, Throughput

PASS_S, TEXT_S = 0.01, 0.01  # 16 texts: 0.17 s, about 94 texts/s


def _reviews(path: Path, n: int) -> tuple[list[str], list[int]]:
    rows = [line.split("\t") for line in path.read_text(encoding="utf-8").splitlines()[1 : n * 2]]
    rows = [r for r in rows if len(r) == 3 and r[1].strip()][:n]
    return [r[1] for r in rows], [int(r[2]) for r in rows]


@pytest.fixture(scope="module")
def model(nsmc_path):
    texts, labels = _reviews(nsmc_path, 600)
    return TfidfClassifier(min_df=1).fit(texts, labels), texts


def forward(clf: TfidfClassifier, texts: list[str]) -> list[float]:
    time.sleep(PASS_S + TEXT_S * len(texts))
    return [float(p) for p in clf.predict_proba(texts)]


def make(**kw) -> Batcher:
    opts = {"max_batch_size": 16, "batch_wait_s": 0.0} | kw
    return Batcher(forward, ThreadPoolExecutor(1), **opts)


def test_throughput_prefers_full_passes():
    t = Throughput(full_batch=16)
    assert t.texts_per_s() is None
    t.observe(1, 0.02)  # a lone text: 50 texts/s, overhead-bound
    assert t.texts_per_s() == pytest.approx(50)
    t.observe(16, 0.17)
    t.observe(16, 0.15)
    assert t.texts_per_s() == pytest.approx(32 / 0.32)
    t.observe(2, 0.03)
    assert t.texts_per_s() == pytest.approx(32 / 0.32), "small passes do not dilute the loaded rate"


def test_answers_in_order_and_merges_concurrent_requests(model):
    clf, texts = model
    b = make()

    async def go():
        chunks = [texts[i : i + 3] for i in range(0, 60, 3)]
        far = time.monotonic() + 30
        return chunks, await asyncio.gather(*(b.run(clf, c, far) for c in chunks))

    chunks, answers = asyncio.run(go())
    for chunk, got in zip(chunks, answers, strict=True):
        assert got == pytest.approx([float(p) for p in clf.predict_proba(chunk)])
    assert max(b.stats.sizes) == 16, "texts of different requests share passes"
    assert sum(k * v for k, v in b.stats.sizes.items()) == 60
    assert b.queued_texts == 0 and b.admitted_requests == 0


def test_admission_refuses_at_once_what_cannot_meet_its_deadline_and_answers_the_rest_in_time(model):
    clf, texts = model
    b = make()
    b.throughput.observe(16, PASS_S + 16 * TEXT_S)  # the warm-up measurement a replica starts with

    async def go():
        admitted, refused, late = [], [], []

        async def client(i: int) -> None:
            deadline_s = 1.0
            t0 = time.monotonic()
            try:
                b.admit(16, deadline_s)
            except Overloaded as e:
                refused.append((time.monotonic() - t0, e.retry_after_s))
                return
            await b.run(clf, texts[i : i + 16], t0 + deadline_s)
            took = time.monotonic() - t0
            admitted.append(took)
            if took > deadline_s:
                late.append(took)

        # 40 requests of 16 texts at once: ~7 s of work against a 1 s deadline
        await asyncio.gather(*(client(i) for i in range(40)))
        return admitted, refused, late

    admitted, refused, late = asyncio.run(go())
    assert not late, late
    assert 2 <= len(admitted) <= 8, len(admitted)  # ~0.85 s / 0.17 s per pass
    assert len(refused) == 40 - len(admitted)
    assert max(s for s, _ in refused) < 0.05, "refusals are answered at once"
    assert all(r >= 1 for _, r in refused)
    assert b.stats.dropped_texts == 0


def test_admission_tracks_a_slower_model(model):
    """The estimate follows measured passes: when the model slows down, fewer requests are admitted."""
    clf, texts = model
    b = make()
    b.throughput.observe(16, 0.17)
    b.admit(16, 1.0)  # fits: 16 texts at ~94/s
    for _ in range(16):
        b.throughput.observe(16, 1.6)  # now 10 texts/s
    with pytest.raises(Overloaded) as info:
        b.admit(16, 1.0)
    assert info.value.estimated_s == pytest.approx(1.6, rel=0.01)
    assert b.offered_texts_per_s() > 0


def test_admitted_requests_limit_keeps_slots_for_refusals(model):
    clf, texts = model
    b = make(admitted_limit=2)

    async def go():
        far = time.monotonic() + 30
        first = [asyncio.ensure_future(b.run(clf, texts[:1], far)) for _ in range(2)]
        await asyncio.sleep(0)
        with pytest.raises(Overloaded, match="limit"):
            b.admit(1, 30.0)
        await asyncio.gather(*first)
        b.admit(1, 30.0)

    asyncio.run(go())


def test_expired_texts_are_dropped_not_computed(model):
    clf, texts = model
    b = make(admission=False)

    async def go():
        slow = asyncio.ensure_future(b.run(clf, texts[:16], time.monotonic() + 30))
        await asyncio.sleep(0.01)  # the first pass (0.17 s) is running
        with pytest.raises(asyncio.TimeoutError):
            await b.run(clf, texts[16:48], time.monotonic() + 0.05)
        await slow

    asyncio.run(go())
    assert b.stats.dropped_texts == 32
    assert sum(k * v for k, v in b.stats.sizes.items()) == 16


def test_replicas_for_demand():
    assert replicas_for_demand({}, {}) == 0
    assert replicas_for_demand({"r1": 100.0}, {"r1": 0.0}) == 0
    assert replicas_for_demand({"r1": 30.0}, {"r1": 30.0}) < 1  # at capacity: no extra replica
    assert replicas_for_demand({"r1": 150.0}, {"r1": 30.0}) == pytest.approx(5 / DEMAND_SLACK)
    assert replicas_for_demand({"r1": 60.0, "r2": 60.0}, {"r1": 30.0, "r2": 30.0}) == pytest.approx(4 / DEMAND_SLACK)


@pytest.mark.skipif(not hasattr(os, "getpriority"), reason="per-thread niceness is Linux's")
def test_forward_thread_is_nicer_than_the_thread_that_starts_it():
    """Ray starts workers at niceness 15: the forward pass must still go *after* the replica's event loop
    (an absolute niceness put it ahead of every other Ray thread on the node)."""
    from kosent.serve.deployment import FORWARD_NICENESS_INCREMENT, _forward_thread_setup

    def niceness() -> int:
        return os.getpriority(os.PRIO_PROCESS, threading.get_native_id())

    now = niceness()
    for start in sorted({now, max(now, 15), max(now, 17)}):  # never below now: lowering it needs privilege
        def starter(start: int = start) -> tuple[int, int]:
            os.setpriority(os.PRIO_PROCESS, threading.get_native_id(), start)
            with ThreadPoolExecutor(1, initializer=_forward_thread_setup, initargs=(1,)) as pool:
                return niceness(), pool.submit(niceness).result()

        with ThreadPoolExecutor(1) as outer:  # a fresh thread plays the replica's event loop
            loop_niceness, forward_niceness = outer.submit(starter).result()
        assert loop_niceness == start
        assert forward_niceness == min(19, start + FORWARD_NICENESS_INCREMENT)


def test_stats_tell_a_pass_on_a_cpu_from_one_that_waits(model):
    """``/stats`` splits pass time into on-CPU, waiting for a CPU, and blocked (the GIL, a lock, a sleep), so a
    benchmark can tell a slower model from a starved one: here each pass computes 40 ms, then blocks 40 ms."""
    clf, texts = model

    def compute_then_block(clf: TfidfClassifier, batch: list[str]) -> list[float]:
        t0 = time.thread_time()
        while time.thread_time() - t0 < 0.04:  # on a CPU
            sum(i * i for i in range(1000))
        time.sleep(0.04)  # blocked
        return [float(p) for p in clf.predict_proba(batch)]

    b = Batcher(compute_then_block, ThreadPoolExecutor(1), max_batch_size=16, batch_wait_s=0.0)

    async def go():
        far = time.monotonic() + 30
        await asyncio.gather(*(b.run(clf, texts[i : i + 16], far) for i in range(0, 64, 16)))

    asyncio.run(go())
    st = b.stats.to_dict()
    passes = st["batches"]
    assert passes >= 4
    assert st["forward_cpu_seconds"] == pytest.approx(0.04 * passes, abs=0.02 * passes)
    assert st["forward_thread_seconds"] >= 0.08 * passes  # the sleep counts in the thread's wall time, not its CPU
    assert st["forward_seconds"] >= st["forward_thread_seconds"]  # the loop sees the hand-over too
    if Path("/proc/thread-self/schedstat").exists():
        runqueue = st["forward_runqueue_seconds"]
        assert runqueue is not None and 0 <= runqueue < st["forward_thread_seconds"] - st["forward_cpu_seconds"]
    else:
        assert st["forward_runqueue_seconds"] is None
