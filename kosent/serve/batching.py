"""Batching and deadline-aware admission inside one replica (plain asyncio, no Ray: unit-tested directly).

Every text of every admitted request goes into one FIFO queue; one forward loop takes up to
``max_batch_size`` texts each time the model is free, so while a pass runs the next one fills up, and small
concurrent requests share passes while a big request is split across them.

Admission is what keeps an overloaded replica honest. The replica knows the work it holds (texts queued
or in the running pass) and how fast it goes (:class:`Throughput`, texts/s of its own recent forward
passes, measured live), so it can estimate when a new request would be answered. A request whose
estimated wait plus service time does not fit its deadline is refused at once (:class:`Overloaded`: 503
with ``Retry-After``) instead of being queued to time out: admitted work is answered in time, and a
client that cannot be served learns it in milliseconds rather than after 30-60 s.
"""

from __future__ import annotations

import asyncio
import collections
import math
import statistics
import time
from collections.abc import Callable, Sequence
from concurrent.futures import Executor
from dataclasses import dataclass
from typing import Any

#: Admit only when the estimate fits this fraction of the deadline: the estimate is a moving average, the
#: replica slows down as the refusals it answers grow (measured: forward passes 10-28% slower at 20x the
#: capacity on 2 cores) and the HTTP path (client, proxy, routing) adds time the replica does not see. At
#: 0.75 an admitted request missed its deadline in 6 of 11 runs at 20x; at 0.6 in 1 of 9 (a run whose
#: model halved its speed mid-level; docs/SERVING.md). A shorter queue costs no goodput under overload: the
#: model stays busy either way.
DEADLINE_FRACTION = 0.6
#: Passes of at least this fraction of ``max_batch_size`` describe the replica under load (the case where
#: admission decides); smaller passes pay the per-pass overhead on fewer texts and would underestimate it.
FULL_PASS_FRACTION = 0.5
#: The estimate follows a slowdown within this many passes (see :meth:`Throughput.texts_per_s`).
RECENT_PASSES = 3
#: Offered load (admitted and refused texts) is reported over this window (autoscaling reads it).
DEMAND_WINDOW_S = 10.0


class Overloaded(Exception):
    """Refused at admission: ``retry_after_s`` is when the queue should have room for it."""

    def __init__(self, reason: str, retry_after_s: int, estimated_s: float | None, deadline_s: float) -> None:
        super().__init__(reason)
        self.reason, self.retry_after_s, self.estimated_s, self.deadline_s = reason, retry_after_s, estimated_s, deadline_s


class DeadlineExceeded(Exception):
    """An admitted text whose deadline passed before its forward pass started (dropped, not computed)."""


class Throughput:
    """Texts per second of this replica's forward passes, over the last ``window`` passes.

    Passes of at least half a batch are kept apart from small ones: under load passes are full, and their
    rate is what a queue drains at; a replica that only saw single texts (light load) falls back on all
    passes, which underestimates it (refusing too early, never too late)."""

    def __init__(self, full_batch: int, window: int = 16) -> None:
        self.full_batch = full_batch
        self._full: collections.deque[tuple[int, float]] = collections.deque(maxlen=window)
        self._all: collections.deque[tuple[int, float]] = collections.deque(maxlen=window)

    def observe(self, texts: int, seconds: float) -> None:
        if texts <= 0 or seconds <= 0:
            return
        self._all.append((texts, seconds))
        if texts >= max(1, math.ceil(self.full_batch * FULL_PASS_FRACTION)):
            self._full.append((texts, seconds))

    def texts_per_s(self) -> float | None:
        """The estimate, or None before the first pass: the lower of the whole window's rate and the last
        ``RECENT_PASSES``' (a slowdown, say another job starting on the machine, counts at once; a speed-up
        only as it fills the window): admission errs towards refusing, never towards answering late."""
        window = self._full or self._all
        if not window:
            return None
        recent = list(window)[-RECENT_PASSES:]
        return min(sum(n for n, _ in window) / sum(s for _, s in window),
                   sum(n for n, _ in recent) / sum(s for _, s in recent))


@dataclass
class _Item:
    predictor: Any
    text: str
    future: asyncio.Future
    deadline: float  # time.monotonic() by which the request must be answered


def _thread_clock() -> tuple[float, float, float | None]:
    """The calling thread's (wall, on-CPU, waiting-for-a-CPU) seconds; the last only where Linux's
    ``/proc/thread-self/schedstat`` exists (its second field: nanoseconds runnable but not running)."""
    try:
        with open("/proc/thread-self/schedstat", encoding="ascii") as f:
            runqueue: float | None = int(f.read().split()[1]) / 1e9
    except (OSError, ValueError, IndexError):
        runqueue = None
    return time.perf_counter(), time.thread_time(), runqueue


def _clocked(forward: Callable[[Any, list[str]], Sequence[Any]], predictor: Any,
             texts: list[str]) -> tuple[Sequence[Any], tuple[float, float, float | None]]:
    """``forward(predictor, texts)`` on the executor's thread, with where that thread's time went (wall,
    on-CPU, waiting for a CPU): what the event loop's own timing of the pass cannot tell apart."""
    w0, c0, r0 = _thread_clock()
    out = forward(predictor, texts)
    w1, c1, r1 = _thread_clock()
    return out, (w1 - w0, c1 - c0, None if r0 is None or r1 is None else r1 - r0)


class BatchStats:
    """Counters behind ``GET /stats``.

    Where a pass's time goes, for telling a slower model from a starved one: ``forward_seconds`` is the
    passes as the event loop sees them (hand-over to the forward thread and back included);
    ``forward_thread_seconds`` the same passes inside the forward thread, of which ``forward_cpu_seconds``
    on a CPU and ``forward_runqueue_seconds`` waiting for one (Linux). The rest of the thread's time it was
    blocked (the GIL, mostly); the rest of the event loop's it waited for the loop, busy elsewhere.
    """

    def __init__(self) -> None:
        self.sizes: collections.Counter[int] = collections.Counter()  # texts per forward pass
        self.requests = 0
        self.texts = 0
        self.refused = 0
        self.timeouts = 0
        self.dropped_texts = 0  # admitted texts whose deadline passed before their pass: not computed
        self.swaps = 0
        self.forward_seconds = 0.0
        self.forward_thread_seconds = 0.0
        self.forward_cpu_seconds = 0.0
        self.forward_runqueue_seconds: float | None = 0.0
        self.handler_ms: collections.deque[float] = collections.deque(maxlen=2000)  # /predict inside the replica
        self.refusal_ms: collections.deque[float] = collections.deque(maxlen=2000)

    def to_dict(self) -> dict[str, Any]:
        batches = sum(self.sizes.values())
        return {
            "requests": self.requests,
            "texts": self.texts,
            "refused": self.refused,
            "batches": batches,
            "batch_sizes": {str(k): v for k, v in sorted(self.sizes.items())},
            "max_batch_size_seen": max(self.sizes, default=0),
            "mean_batch_size": (sum(k * v for k, v in self.sizes.items()) / batches) if batches else 0.0,
            "forward_seconds": round(self.forward_seconds, 4),
            "forward_thread_seconds": round(self.forward_thread_seconds, 4),
            "forward_cpu_seconds": round(self.forward_cpu_seconds, 4),
            "forward_runqueue_seconds": (None if self.forward_runqueue_seconds is None
                                         else round(self.forward_runqueue_seconds, 4)),
            "handler_ms_p50": round(statistics.median(self.handler_ms), 3) if self.handler_ms else None,
            "refusal_ms_p50": round(statistics.median(self.refusal_ms), 3) if self.refusal_ms else None,
            "refusal_ms_p99": (round(statistics.quantiles(self.refusal_ms, n=100)[98], 3)
                               if len(self.refusal_ms) > 1 else None),
            "timeouts": self.timeouts,
            "dropped_texts": self.dropped_texts,
            "swaps": self.swaps,
        }


class Batcher:
    """The replica's queue of texts, its forward loop, and admission against each request's deadline.

    ``forward(predictor, texts)`` runs on ``executor`` (never on the event loop, which keeps accepting and
    refusing requests while a pass runs) and returns one prediction per text.
    """

    def __init__(self, forward: Callable[[Any, list[str]], Sequence[Any]], executor: Executor, max_batch_size: int,
                 batch_wait_s: float, adaptive_wait: bool = True, admission: bool = True,
                 admitted_limit: int = 1_000_000, stats: BatchStats | None = None) -> None:
        self.forward = forward
        self.executor = executor
        self.max_batch_size = max_batch_size
        self.batch_wait_s = batch_wait_s
        self.adaptive_wait = adaptive_wait
        self.admission = admission
        self.admitted_limit = admitted_limit
        self.stats = stats or BatchStats()
        self.throughput = Throughput(max_batch_size)
        self._pending: collections.deque[_Item] = collections.deque()
        self._in_pass = 0  # texts in the forward pass now running
        self._admitted = 0  # admitted requests not yet answered
        self._runner: asyncio.Task | None = None
        self._filled: asyncio.Event | None = None
        self._offered: collections.deque[tuple[float, int]] = collections.deque()  # (time, texts), admitted or not

    def set_max_batch_size(self, value: int) -> None:
        self.max_batch_size = value
        self.throughput.full_batch = value

    # ---- admission ----------------------------------------------------------------------------------

    @property
    def queued_texts(self) -> int:
        """Texts admitted and not yet answered (waiting, or in the running pass)."""
        return len(self._pending) + self._in_pass

    @property
    def admitted_requests(self) -> int:
        return self._admitted

    def estimate_s(self, texts: int) -> float | None:
        """Seconds until a request of ``texts`` texts admitted now would be answered, or None (no estimate yet)."""
        rate = self.throughput.texts_per_s()
        if rate is None:
            return None
        return (self.queued_texts + texts) / rate + self.batch_wait_s

    def admit(self, texts: int, deadline_s: float) -> None:
        """Raise :class:`Overloaded` unless a request of ``texts`` texts can be answered within ``deadline_s``."""
        self._record_offered(texts)
        if not self.admission:
            return
        if self._admitted >= self.admitted_limit:
            raise Overloaded(f"the replica holds {self._admitted} requests, its limit", 1, None, deadline_s)
        estimated = self.estimate_s(texts)
        budget = deadline_s * DEADLINE_FRACTION
        if estimated is not None and estimated > budget:
            retry = max(1, math.ceil(estimated - budget))
            raise Overloaded(f"{self.queued_texts} texts queued at {self.throughput.texts_per_s():.1f} texts/s: "
                             f"about {estimated:.1f}s to answer {texts} more, over the {deadline_s:g}s deadline",
                             retry, estimated, deadline_s)

    def _record_offered(self, texts: int) -> None:
        now = time.monotonic()
        self._offered.append((now, texts))
        while self._offered and self._offered[0][0] < now - DEMAND_WINDOW_S:
            self._offered.popleft()

    def offered_texts_per_s(self) -> float:
        """Texts offered to this replica per second (admitted or refused) over the last ``DEMAND_WINDOW_S``."""
        now = time.monotonic()
        return sum(n for t, n in self._offered if t >= now - DEMAND_WINDOW_S) / DEMAND_WINDOW_S

    # ---- running ------------------------------------------------------------------------------------

    async def run(self, predictor: Any, texts: Sequence[str], deadline: float) -> list[Any]:
        """Predictions for ``texts`` of an admitted request (call :meth:`admit` first), in order. Raises
        :class:`asyncio.TimeoutError` at ``deadline`` (a ``time.monotonic()`` value); its texts that have
        not started are then dropped from the queue."""
        loop = asyncio.get_running_loop()
        futures = [loop.create_future() for _ in texts]
        self._admitted += 1
        try:
            self._pending.extend(_Item(predictor, t, f, deadline) for t, f in zip(texts, futures, strict=True))
            if self._filled is None:
                self._filled = asyncio.Event()
            if len(self._pending) >= self.max_batch_size:
                self._filled.set()
            if self._runner is None or self._runner.done():
                self._runner = loop.create_task(self._forward_loop())
            remaining = max(0.0, deadline - time.monotonic())
            try:
                return list(await asyncio.wait_for(asyncio.gather(*futures), timeout=remaining))
            except DeadlineExceeded:
                for f in futures:
                    f.cancel()
                raise asyncio.TimeoutError from None
        finally:
            self._admitted -= 1

    def _count_thread_time(self, wall: float, cpu: float, runqueue: float | None) -> None:
        st = self.stats
        st.forward_thread_seconds += wall
        st.forward_cpu_seconds += cpu
        st.forward_runqueue_seconds = (None if runqueue is None or st.forward_runqueue_seconds is None
                                       else st.forward_runqueue_seconds + runqueue)

    async def _wait_to_fill(self) -> None:
        """Give a partial batch up to ``batch_wait_s`` to fill, unless it is alone (``adaptive_wait``)."""
        if self.batch_wait_s <= 0 or len(self._pending) >= self.max_batch_size or self._filled is None:
            return
        if self.adaptive_wait and self._admitted <= 1:
            return
        self._filled.clear()
        try:
            await asyncio.wait_for(self._filled.wait(), timeout=self.batch_wait_s)
        except asyncio.TimeoutError:
            pass  # the window closed: go with what is there

    async def _forward_loop(self) -> None:
        """Forward passes over everything queued, one pass per model, until nothing is left."""
        loop = asyncio.get_running_loop()
        while self._pending:
            await self._wait_to_fill()
            take: list[_Item] = []
            now = time.monotonic()
            while self._pending and len(take) < self.max_batch_size:
                item = self._pending.popleft()
                if item.future.done():  # its request gave up (deadline): do not compute it
                    self.stats.dropped_texts += 1
                elif item.deadline <= now:
                    self.stats.dropped_texts += 1
                    item.future.set_exception(DeadlineExceeded())
                else:
                    take.append(item)
            if not take:
                continue
            self._in_pass = len(take)
            self.stats.sizes[len(take)] += 1
            groups: dict[int, tuple[Any, list[_Item]]] = {}
            for item in take:
                groups.setdefault(id(item.predictor), (item.predictor, []))[1].append(item)
            t0 = time.perf_counter()
            try:
                for predictor, items in groups.values():
                    try:
                        preds, clock = await loop.run_in_executor(self.executor, _clocked, self.forward, predictor,
                                                                  [i.text for i in items])
                        self._count_thread_time(*clock)
                    except Exception as e:  # noqa: BLE001 - handed to every waiting request
                        for i in items:
                            if not i.future.done():
                                i.future.set_exception(e)
                        continue
                    for i, pred in zip(items, preds, strict=True):
                        if not i.future.done():
                            i.future.set_result(pred)
            finally:
                seconds = time.perf_counter() - t0
                self._in_pass = 0
                self.stats.forward_seconds += seconds
                if len(groups) == 1:  # a pass mixing models says little about either
                    self.throughput.observe(len(take), seconds)
