"""Score texts with a checkpoint on the Ray cluster: Ray Data ``map_batches`` over a pool of actors.

    ScorePool(actors, cpus, gpus, env)                how many scorers, what each one reserves
    score_dataset(ds, checkpoint, pool)               ``ds`` plus a ``probs`` column (lazy Ray Dataset;
                                                      ``kosent.data.streaming.probs_of`` reads it)
    iter_scores(texts, checkpoint, pool)              (indices, probabilities) per batch as they are done
    cluster_scorer(checkpoint, pool, what)            texts -> probabilities, in order, with progress

Each actor loads the checkpoint once (:meth:`kosent.predict.Predictor.from_checkpoint`: every model kind,
a folder or an ``s3://`` URI) and scores the batches it is handed, so every text is scored exactly once in
the cluster, on the actors' CPUs or GPUs, and the driver (a ``ray job submit`` entry point, a Tune trial)
loads no model. A Ray run's test split and a teacher's unlabelled texts (:mod:`kosent.distill`) are scored
this way when ``TrainConfig.score_on`` picks the cluster (:func:`kosent.ray_train.run_scorer`).

Resources. A pool has as many actors as the run has Train workers, each reserving what one worker does:
the cluster can place it whenever it can place the run. Scoring runs before the workers start (a teacher)
or after they stop (the test split), never beside them, so Ray Data and Train never wait for each other's
CPUs on a 2-CPU node (the deadlock recorded for ``map_batches`` stages running beside Train workers).

Cost (``bench/bench_scoring.py``, e5-small-ko, one 2-CPU node). The pool starts in 15-21 s (a worker
process importing torch, the model loaded) and then scores at about 85% of the texts/s of one process
using both CPUs: 0.72x the driver's speed on 5,000 texts, 0.82x on 20,000. It pays where the actors have
what the driver lacks: GPUs, other nodes. Hence ``score_on="auto"``.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pyarrow as pa
import ray.data

from kosent.checkpoint import read_meta
from kosent.data.streaming import PROBS, probs_column, probs_of

log = logging.getLogger(__name__)

SCORE_BATCH_ROWS = 512  # texts per actor call: long enough to sort by length, short enough to spread
#: How long a pool may take to start its first actor (placed, checkpoint loaded: 15-21 s for e5-small-ko on
#: one node) before scoring fails. Without it, a pool the cluster cannot place waits for ever.
POOL_START_TIMEOUT_S = 600


class ScoringError(RuntimeError):
    """Scoring on the cluster failed (an actor could not load the checkpoint or died); says what was scored."""


@dataclass(frozen=True)
class ScorePool:
    """How texts are scored on the cluster: ``actors`` scorers, each reserving ``cpus`` CPUs and ``gpus`` GPUs
    (a GPU scorer scores on its GPU), started with the environment variables ``env``; scoring fails when the
    first actor has not started within ``start_timeout_s`` seconds."""

    actors: int = 1
    cpus: float = 1.0
    gpus: float = 0.0
    env: dict[str, str] = field(default_factory=dict)
    batch_size: int = SCORE_BATCH_ROWS
    start_timeout_s: int = POOL_START_TIMEOUT_S

    def __post_init__(self) -> None:
        if self.actors < 1 or self.cpus < 0 or self.gpus < 0 or self.batch_size < 1 or self.start_timeout_s < 1:
            raise ValueError(f"a score pool needs actors >= 1, cpus >= 0, gpus >= 0, batch_size >= 1, "
                             f"start_timeout_s >= 1: {self}")


class _Scorer:
    """One actor of the pool: the checkpoint loaded once, then ``probs`` added to every batch it is given."""

    def __init__(self, checkpoint: str, cpus: float, gpus: float) -> None:
        import torch

        from kosent.logs import setup as setup_logging
        from kosent.predict import Predictor

        setup_logging()
        torch.set_num_threads(max(1, int(cpus)))
        device = "cuda" if gpus > 0 and torch.cuda.is_available() else "cpu"
        self.predictor = Predictor.from_checkpoint(checkpoint, device=device)

    def __call__(self, batch: pa.Table) -> pa.Table:
        return batch.append_column(PROBS, probs_column(self.predictor.predict_proba(batch.column("text").to_pylist())))


def score_dataset(ds: ray.data.Dataset, checkpoint: str | Path, pool: ScorePool) -> ray.data.Dataset:
    """``ds`` (a ``text`` column) with the checkpoint's probabilities added as ``probs``, in the same order."""
    ds.context.execution_options.preserve_order = True  # this dataset's own copy of the Data context
    ds.context.enable_progress_bars = False  # the callers log progress in one line
    ds.context.wait_for_min_actors_s = pool.start_timeout_s  # Ray Data's default (-1) waits for ever
    return ds.map_batches(
        _Scorer,
        fn_constructor_kwargs={"checkpoint": str(checkpoint), "cpus": pool.cpus, "gpus": pool.gpus},
        compute=ray.data.ActorPoolStrategy(min_size=1, max_size=pool.actors),
        num_cpus=pool.cpus,
        num_gpus=pool.gpus,
        batch_size=pool.batch_size,
        batch_format="pyarrow",
        zero_copy_batch=True,
        udf_modifying_row_count=False,
        runtime_env={"env_vars": dict(pool.env)} if pool.env else None,
    )


def iter_scores(texts: list[str], checkpoint: str | Path, pool: ScorePool) -> Iterator[tuple[np.ndarray, np.ndarray]]:
    """``(indices, probs)`` per scored batch as the actors finish them: the probabilities of ``texts[indices]``.

    The texts go out sorted by length, so a batch holds texts of similar length (little padding, as one
    process sorting them all gets); every index comes back exactly once."""
    order = np.argsort([len(t) for t in texts], kind="stable")
    size = pool.batch_size
    blocks = [pa.table({"text": pa.array([texts[i] for i in order[s:s + size]], pa.string()),
                        "index": pa.array(order[s:s + size], pa.int64())}) for s in range(0, len(texts), size)]
    labels = len(read_meta(checkpoint)["label_names"])
    ds = score_dataset(ray.data.from_arrow(blocks), checkpoint, pool)
    for table in ds.iter_batches(batch_size=None, batch_format="pyarrow"):
        yield table.column("index").to_numpy(), probs_of(table, labels)


def cluster_scorer(checkpoint: str | Path, pool: ScorePool, what: str = "texts") -> Callable[[list[str]], np.ndarray]:
    """A function ``texts -> (n, labels) probabilities`` that scores on ``pool`` (for ``kosent.distill`` and
    ``kosent.evaluate``, which take any such function). Logs progress about every tenth of the texts."""
    labels = len(read_meta(checkpoint)["label_names"])  # not a checkpoint: CheckpointError now, naming it

    def score(texts: list[str]) -> np.ndarray:
        probs = np.full((len(texts), labels), np.nan, np.float32)
        t0, done, every, next_log = time.perf_counter(), 0, max(pool.batch_size, len(texts) // 10), 0
        try:
            for index, part in iter_scores(list(texts), checkpoint, pool):
                probs[index] = part
                done += len(index)
                if done >= next_log or done == len(texts):
                    rate = done / max(time.perf_counter() - t0, 1e-9)
                    log.info("scoring the %s on %d actor(s): %d/%d texts, %.0f texts/s, eta %.0f s", what,
                             pool.actors, done, len(texts), rate, (len(texts) - done) / max(rate, 1e-9))
                    next_log = done + every
        except ray.exceptions.GetTimeoutError as e:  # the pool's first actor did not start in time
            free = {k: v for k, v in ray.available_resources().items() if k in ("CPU", "GPU")}
            raise ScoringError(f"scoring the {what} with {checkpoint} on the cluster: no actor of the pool started "
                               f"within {pool.start_timeout_s} s (each reserves {pool.cpus:g} CPU, {pool.gpus:g} "
                               f"GPU; free now: {free}): {e}") from e
        except Exception as e:  # Ray's error carries the actor's traceback: lead with what failed
            raise ScoringError(f"scoring the {what} with {checkpoint} on the cluster failed after {done} of "
                               f"{len(texts)} texts: {type(e).__name__}: {e}") from e
        if done != len(texts) or np.isnan(probs).any():  # map_batches keeps every row: a bug worth stopping for
            raise ScoringError(f"scoring the {what}: {done} scores came back for {len(texts)} texts")
        return probs

    return score


__all__ = ["ScorePool", "ScoringError", "cluster_scorer", "iter_scores", "score_dataset"]
