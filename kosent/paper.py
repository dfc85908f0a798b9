"""The paper's experiments as one plan, run on a Ray cluster (``ray_jobs/paper.py`` parses the flags).

1. ``baselines``: every model of ``models`` (GRU, bidirectional GRU, TF-IDF + logistic regression, the
   BERT model) on NSMC ``train_size`` / ``test_size``.
2. ``scale``: every model of ``scale_models`` at 1..5 x ``train_size`` (nested training sets, the same
   validation and test rows; :func:`kosent.data.make_splits`).
3. ``kmhas``: news comments (K-MHaS, ``hate`` / ``not_hate``), as they are and resampled so that
   ``kmhas_negative_fraction`` of the rows are ``hate`` (label 0), like the paper's mostly negative set.

How it is scaled out. Neural runs go through Ray Train (:func:`kosent.ray_train.fit`), each driven by a
small Ray task (``DRIVER_CPUS``) so several runs train at once; TF-IDF fits are 1-CPU Ray tasks. A driver-
side pool starts a run only when the cluster has its CPUs (and GPUs) free: a Train run left waiting for
resources fails after its start-up timeout. The neural scale runs are one Ray Tune sweep per model
(:func:`kosent.sweep.run_sweep`, one trial per scale, no early stopping). Every checkpoint is then scored
once on its untouched test split by :func:`kosent.evaluate.evaluate_report` in this process.

Library code: needs a connected Ray cluster, never parses arguments. Checkpoints are written under
``storage_path`` by the node that trains them: on several nodes it must be shared storage.
"""

from __future__ import annotations

import dataclasses
import hashlib
import logging
import re
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from pydantic import Field

from kosent.config import DataConfig, TrainConfig, config_dataclass
from kosent.data import DataError, DataReport, Splits, Table, load_table, make_splits
from kosent.storage import is_uri

EXPERIMENTS = ("baselines", "scale", "kmhas")
DEFAULT_LRS = {"e5-small-ko": 5e-5, "e5-small": 5e-5, "gemma-ko": 5e-5, "tiny": 3e-3, "rnn": 2e-3, "birnn": 2e-3}
FALLBACK_LR = 5e-5  # Hugging Face encoders by hub id or folder
NON_TRANSFORMERS = ("tfidf", "rnn", "birnn")
DRIVER_CPUS = 0.01  # the Ray task that drives one Train run (as Tune's trial driver in kosent.sweep)


class PaperError(ValueError):
    """Settings the plan cannot run with; the message names the setting and the fix."""


log = logging.getLogger(__name__)


def slug(name: str) -> str:
    """A model name as a file name: ``klue/bert-base`` -> ``klue_bert-base``."""
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", name).strip("_") or "model"


@config_dataclass
class PaperConfig:
    """The plan; the defaults are the paper's full setting (a GPU cluster's work, hours on a CPU)."""

    experiments: list[str] = Field(default_factory=lambda: list(EXPERIMENTS),
                                   description=f"which experiments to run: some of {', '.join(EXPERIMENTS)}")
    models: list[str] = Field(default_factory=lambda: ["rnn", "birnn", "tfidf", "e5-small-ko"],
                              description="models of the baselines experiment, on NSMC")
    scale_models: list[str] = Field(default_factory=lambda: ["e5-small-ko", "tfidf"],
                                    description="models of the scale experiment")
    kmhas_models: list[str] = Field(default_factory=lambda: ["e5-small-ko", "tfidf"],
                                    description="models of the K-MHaS news-comment experiment")
    scales: list[int] = Field(default_factory=lambda: [1, 2, 3, 4, 5],
                              description="multiples of --train-size of the scale experiment")
    train_size: int = Field(10_000, description="training rows at scale 1 (the paper's 10,000)")
    val_size: int = Field(1_000, description="validation rows: they choose each run's checkpoint")
    test_size: int = Field(5_000, description="test rows, scored once per checkpoint (the paper's 5,000)")
    split_seed: int = Field(42, description="seed of the splits")
    seed: int = Field(42, description="seed of every run's training")
    epochs: int = Field(2, description="epochs of the NSMC runs (the paper's 2)")
    kmhas_epochs: int = Field(5, description="epochs of the K-MHaS runs (the paper's news-comment run)")
    kmhas_negative_fraction: float = Field(0.85, description="share of hate texts after resampling K-MHaS; 0.87 is "
                                           "the most it allows at 10,000 / 1,000 / 5,000")
    max_steps: int | None = Field(None, description="at most this many optimizer steps per neural run")
    batch_size: int = Field(32, description="training texts per optimizer step")
    max_length: int = Field(128, description="tokens per text")
    lrs: dict[str, float] = Field(default_factory=dict, description="learning rate per model, MODEL=LR (defaults: "
                                  "e5 and gemma-ko 5e-5, rnn/birnn 2e-3, tiny 3e-3)")
    frozen_layers: dict[str, int] = Field(default_factory=dict, description="encoder layers kept as pretrained per "
                                          "model, MODEL=N (gemma-ko=12 on a CPU: docs/IMPROVING.md); default 0")
    num_workers: int = Field(1, description="Ray Train workers per run")
    cpus_per_worker: float = Field(1.0, description="CPUs per Ray Train worker")
    use_gpu: bool = Field(False, description="a GPU share (--gpus-per-worker) per Ray Train worker")
    gpus_per_worker: float = Field(1.0, gt=0, le=1, description="GPU share per worker with --use-gpu: 0.25 runs four runs' "
                                   "workers on one GPU at once")
    storage_path: str = Field("runs/paper", description="run folders go to <storage-path>/<name>")
    name: str | None = Field(None, description="the job's folder under --storage-path (default: paper-<UTC time>)")
    embeddings: list[str] | None = Field(None, description="models whose NSMC test embeddings get PCA / t-SNE "
                                         "views (default: the transformer models; none: give the flag no value)")
    max_points: int = Field(2000, description="texts in each PCA / t-SNE view")
    tracking: str | None = Field(None, description="MLflow tracking URI of every run, or off (default: "
                                 "$MLFLOW_TRACKING_URI, else <storage-path>/mlruns)")

    def lr(self, model: str) -> float:
        return float(self.lrs.get(model, DEFAULT_LRS.get(model, FALLBACK_LR)))

    def embedding_models(self) -> list[str]:
        if self.embeddings is not None:
            return list(self.embeddings)
        return [m for m in self.models if m not in NON_TRANSFORMERS]

    def validate(self) -> None:
        unknown = sorted(set(self.experiments) - set(EXPERIMENTS))
        if unknown or not self.experiments:
            raise PaperError(f"experiments must be some of {', '.join(EXPERIMENTS)}, got {self.experiments}")
        for name in ("models", "scale_models", "kmhas_models"):
            values = getattr(self, name)
            if len(set(values)) != len(values):
                raise PaperError(f"{name} lists a model twice: {values}")
        if not self.models and "baselines" in self.experiments:
            raise PaperError("the baselines experiment needs at least one model (--models)")
        if "scale" in self.experiments and (not self.scales or not self.scale_models):
            raise PaperError("the scale experiment needs --scales and --scale-models")
        if any(isinstance(s, bool) or int(s) != s or s < 1 for s in self.scales) or len(set(self.scales)) != len(self.scales):
            raise PaperError(f"scales must be distinct integers >= 1, got {self.scales}")
        if "kmhas" in self.experiments and not self.kmhas_models:
            raise PaperError("the kmhas experiment needs at least one model (--kmhas-models)")
        if not 0.5 <= self.kmhas_negative_fraction < 1:
            raise PaperError(f"kmhas_negative_fraction must be in [0.5, 1) (mostly hate, some not_hate), "
                             f"got {self.kmhas_negative_fraction}")
        for name in ("train_size", "test_size", "epochs", "kmhas_epochs", "batch_size", "max_length", "num_workers"):
            if getattr(self, name) < 1:
                raise PaperError(f"{name} must be at least 1, got {getattr(self, name)}")
        if self.val_size < 1:
            raise PaperError(f"val_size must be at least 1 (checkpoints are chosen on validation), got {self.val_size}")
        if self.max_steps is not None and self.max_steps < 1:
            raise PaperError(f"max_steps must be at least 1 or unset, got {self.max_steps}")
        if self.max_points < 10:
            raise PaperError(f"max_points must be at least 10 (t-SNE needs points), got {self.max_points}")
        if is_uri(self.storage_path):
            raise PaperError(f"storage_path {self.storage_path}: give a local or mounted shared folder; URIs are not "
                             "supported here (reports and figures are written beside the checkpoints)")
        bad_lrs = {m: v for m, v in self.lrs.items() if not v > 0}
        if bad_lrs:
            raise PaperError(f"learning rates must be positive, got {bad_lrs}")
        run = set(self.models) | set(self.scale_models) | set(self.kmhas_models)
        bad_frozen = {m: n for m, n in self.frozen_layers.items() if m not in run or n < 0 or m in NON_TRANSFORMERS}
        if bad_frozen:
            raise PaperError(f"frozen_layers {bad_frozen}: give a transformer model this job trains ({', '.join(sorted(run))}) "
                             "and a count >= 0")

    def data(self, source: str = "nsmc", scale: int = 1) -> DataConfig:
        return DataConfig(source=source, train_size=self.train_size, val_size=self.val_size,
                          test_size=self.test_size, scale=scale, split_seed=self.split_seed)

    def train_config(self, model: str, data: DataConfig, storage: Path, name: str, epochs: int) -> TrainConfig:
        return TrainConfig(
            model=model, epochs=epochs, lr=self.lr(model), batch_size=self.batch_size, max_length=self.max_length,
            frozen_layers=self.frozen_layers.get(model, 0), max_steps=self.max_steps, seed=self.seed, num_workers=self.num_workers,
            cpus_per_worker=self.cpus_per_worker, use_gpu=self.use_gpu, gpus_per_worker=self.gpus_per_worker,
            storage_path=str(storage), name=name,
            patience=max(2, epochs), tracking=self.tracking, data=data,
        )

    def reduced(self) -> list[str]:
        """Why this run is not the paper's setting (empty: it is)."""
        why = []
        if self.train_size < 10_000:
            why.append(f"train_size {self.train_size:,} (paper 10,000)")
        if self.test_size < 5_000:
            why.append(f"test_size {self.test_size:,} (paper 5,000)")
        if self.max_steps:
            why.append(f"max_steps {self.max_steps} per run")
        if "scale" in self.experiments and sorted(self.scales) != [1, 2, 3, 4, 5]:
            why.append(f"scales {sorted(self.scales)} (paper 1-5)")
        if "kmhas" in self.experiments and self.kmhas_epochs < 5:
            why.append(f"kmhas_epochs {self.kmhas_epochs} (paper 5)")
        return why


# --------------------------------------------------------------------------------------------------
# Data
# --------------------------------------------------------------------------------------------------


def resample_table(table: Table, negative_fraction: float, size: int, seed: int = 42) -> Table:
    """``size`` distinct texts of ``table`` of which ``round(negative_fraction * size)`` carry label 0.

    De-duplicates first exactly as :func:`kosent.data.make_splits` does (first occurrence kept, texts with
    two labels dropped), so make_splits keeps every row and can carve ``size`` rows. The rows are drawn
    with ``seed``; the fingerprint source hash covers the resampling, so these splits never pass for the
    unresampled ones.
    """
    first: dict[str, int] = {}
    conflicting: set[str] = set()
    for i, (text, label) in enumerate(zip(table.texts, table.labels, strict=True)):
        j = first.setdefault(text, i)
        if j != i and table.labels[j] != label:
            conflicting.add(text)
    keep = np.asarray([i for text, i in first.items() if text not in conflicting], dtype=np.int64)
    labels = np.asarray(table.labels, dtype=np.int64)[keep]
    n0 = int(round(negative_fraction * size))
    want = {0: n0, 1: size - n0}
    rng = np.random.default_rng(seed)
    picked = []
    for label, n in want.items():
        rows = keep[labels == label]
        if n > len(rows):
            name = table.label_names[label]
            most = len(keep[labels == 0]) / size if label == 0 else None
            hint = (f"; at this size the largest negative fraction is {most:.3f}" if most is not None and most < 1
                    else "")
            raise DataError(
                f"{table.report.source}: resampling to {negative_fraction:.0%} {table.label_names[0]} needs {n:,} "
                f"distinct '{name}' texts for {size:,} rows but there are {len(rows):,}{hint}; lower the sizes "
                "(train + val + test) or the fraction"
            )
        picked.append(rng.choice(rows, size=n, replace=False))
    idx = np.sort(np.concatenate(picked))
    report = DataReport.from_dict(table.report.to_dict())
    report.source = f"{table.report.source} (resampled: {negative_fraction:.0%} {table.label_names[0]}, {size:,} rows)"
    report.rows_kept = len(idx)
    counts = np.bincount(np.asarray(table.labels)[idx], minlength=len(table.label_names))
    report.class_counts = {n: int(counts[k]) for k, n in enumerate(table.label_names)}
    report.duplicate_texts = report.conflicting_texts = 0
    key = f"{table.raw_sha256}:resample:{negative_fraction}:{size}:{seed}"
    return Table(
        texts=[table.texts[i] for i in idx], labels=[int(table.labels[i]) for i in idx],
        label_names=list(table.label_names), report=report,
        raw_sha256=hashlib.sha256(key.encode()).hexdigest(),
        extra={k: [v[i] for i in idx] for k, v in table.extra.items()},
    )


def kmhas_splits(pcfg: PaperConfig, resampled: bool) -> Splits:
    data = pcfg.data("kmhas")
    if not resampled:
        return make_splits(data)
    size = pcfg.train_size + pcfg.val_size + pcfg.test_size
    table = resample_table(load_table(data), pcfg.kmhas_negative_fraction, size, seed=pcfg.split_seed)
    return make_splits(data, table=table)


# --------------------------------------------------------------------------------------------------
# Jobs
# --------------------------------------------------------------------------------------------------


@dataclass
class Job:
    """One model trained on one set of splits. ``key`` is unique: ``<experiment>/<variant>/<model>``."""

    experiment: str
    variant: str  # baselines: "nsmc"; scale: "x<scale>"; kmhas: "as_is" / "resampled"
    model: str
    cfg: TrainConfig
    splits: Splits
    scale: int = 1
    embeddings: bool = False

    @property
    def key(self) -> str:
        return f"{self.experiment}/{self.variant}/{self.model}"

    @property
    def run_dir(self) -> Path:
        return Path(self.cfg.storage_path) / str(self.cfg.name)

    def cost(self) -> tuple[float, float]:
        """(CPUs, GPUs) the job holds while it runs."""
        if self.model == "tfidf":
            return 1.0, 0.0
        gpus = self.cfg.num_workers * self.cfg.gpus_per_worker if self.cfg.use_gpu else 0.0
        return self.cfg.num_workers * self.cfg.cpus_per_worker, float(gpus)


@dataclass
class Record:
    """One finished (or failed) job: what the results document and results.json show."""

    experiment: str
    variant: str
    model: str
    scale: int
    train_rows: int
    test_rows: int
    test_class_counts: dict[str, int]
    label_names: list[str]
    metrics: dict[str, float] = field(default_factory=dict)  # test_* (evaluate_report)
    val_metrics: dict[str, float] = field(default_factory=dict)
    epochs_run: int = 0
    steps: int = 0
    train_seconds: float = 0.0
    eval_seconds: float = 0.0
    checkpoint: str = ""
    run_dir: str = ""
    report_dir: str = ""
    history: list[dict[str, float]] = field(default_factory=list, repr=False)
    error: str = ""

    @property
    def key(self) -> str:
        return f"{self.experiment}/{self.variant}/{self.model}"

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


def _strip_test(splits: Splits) -> Splits:
    """The splits a training task needs: the test split stays on the driver."""
    return dataclasses.replace(splits, test=splits.test.select([]))


def _train_task(cfg: TrainConfig, splits: Splits, log_level: int) -> dict[str, Any]:
    """A Ray task: one Ray Train run (kosent.ray_train.fit) of ``cfg``, logging at the driver's ``log_level``
    (its workers too: :func:`kosent.ray_train.fit` passes the level on)."""
    from kosent.logs import setup as setup_logging
    from kosent.ray_train import fit

    setup_logging(log_level)
    result = fit(cfg, splits)
    return {"checkpoint": str(result.checkpoint), "metrics": result.metrics, "history": result.history,
            "run_dir": result.run_dir, "wall_seconds": result.wall_seconds}


def _tfidf_task(cfg: TrainConfig, splits: Splits, out: str, log_level: int) -> dict[str, Any]:
    """A Ray task: the TF-IDF + logistic regression baseline (one CPU, no Ray Train), logging at ``log_level``."""
    from kosent.logs import setup as setup_logging
    from kosent.train import fit_tfidf

    setup_logging(log_level)
    t0 = time.perf_counter()
    folder = Path(out)
    folder.mkdir(parents=True, exist_ok=True)
    result = fit_tfidf(cfg, splits, folder)
    return {"checkpoint": str(result.checkpoint), "metrics": result.metrics, "history": result.history,
            "run_dir": str(folder), "wall_seconds": time.perf_counter() - t0}


def _launch(job: Job) -> Any:
    import ray

    level = logging.getLogger("kosent").getEffectiveLevel()  # the tasks' processes log like this one
    if job.model == "tfidf":
        return ray.remote(_tfidf_task).options(num_cpus=1, max_retries=0).remote(
            job.cfg, _strip_test(job.splits), str(job.run_dir), level)
    # The task driving the run takes DRIVER_CPUS; its workers the rest of the job's CPUs, so a job costs
    # exactly num_workers * cpus_per_worker (two 1-CPU runs fit on two CPUs).
    cpus = round(job.cfg.cpus_per_worker - DRIVER_CPUS / job.cfg.num_workers, 6)
    cfg = dataclasses.replace(job.cfg, cpus_per_worker=cpus)
    return ray.remote(_train_task).options(num_cpus=DRIVER_CPUS, max_retries=0).remote(cfg, _strip_test(job.splits),
                                                                                       level)


def _error_line(e: BaseException) -> str:
    from kosent.sweep import failure_reason

    return failure_reason(e)


def run_pool(jobs: list[Job], on_done: Callable[[Job, dict[str, Any] | None, str], None]) -> None:
    """Run ``jobs`` on the cluster, as many at once as its free CPUs / GPUs hold, in the order given;
    ``on_done(job, result, error)`` is called in this process as each finishes (``error`` empty on success)."""
    import ray

    total = ray.cluster_resources()
    have = [float(total.get("CPU", 0.0)), float(total.get("GPU", 0.0))]
    for job in jobs:
        cpu, gpu = job.cost()
        if cpu > have[0] + 1e-9 or gpu > have[1] + 1e-9:
            raise PaperError(f"{job.key} needs {cpu:g} CPUs and {gpu:g} GPUs but the Ray cluster has {have[0]:g} "
                             f"and {have[1]:g}; lower --num-workers / --cpus-per-worker or add nodes")
    free = list(have)
    pending, running = list(jobs), {}
    started: dict[str, float] = {}
    while pending or running:
        for job in list(pending):
            cpu, gpu = job.cost()
            if cpu <= free[0] + 1e-9 and gpu <= free[1] + 1e-9:
                pending.remove(job)
                free[0] -= cpu
                free[1] -= gpu
                running[_launch(job)] = job
                started[job.key] = time.perf_counter()
                log.info(f"started {job.key} ({job.cfg.data.train_size * job.scale:,} training texts; "
                         f"{len(running)} running, {len(pending)} waiting)")
        done, _ = ray.wait(list(running), num_returns=1)
        job = running.pop(done[0])
        cpu, gpu = job.cost()
        free[0] += cpu
        free[1] += gpu
        try:
            result, error = ray.get(done[0]), ""
        except Exception as e:  # noqa: BLE001 - one failed run is reported; the others go on
            result, error = None, _error_line(e)
        took = f"{job.key} after {time.perf_counter() - started[job.key]:.0f}s"
        if error:
            log.warning(f"FAILED {took}: {error}")
        else:
            log.info(f"finished {took}")
        on_done(job, result, error)


# --------------------------------------------------------------------------------------------------
# The plan
# --------------------------------------------------------------------------------------------------


@dataclass
class PaperResult:
    config: PaperConfig
    root: Path
    records: list[Record]
    evaluations: dict[str, Any]  # key -> kosent.evaluate.Evaluation (in memory, for the figures)
    seconds: float

    @property
    def failed(self) -> list[Record]:
        return [r for r in self.records if r.error]


def plan(pcfg: PaperConfig, root: Path) -> tuple[list[Job], list[str]]:
    """The pool jobs (baselines, K-MHaS, TF-IDF at every scale) and the models the scale sweeps train."""
    jobs: list[Job] = []
    embed = set(pcfg.embedding_models())
    if "baselines" in pcfg.experiments:
        splits = make_splits(pcfg.data())
        log.info(f"NSMC: {splits.sizes()}")
        for model in pcfg.models:
            cfg = pcfg.train_config(model, pcfg.data(), root / "baselines", slug(model), pcfg.epochs)
            jobs.append(Job("baselines", "nsmc", model, cfg, splits, embeddings=model in embed))
    if "kmhas" in pcfg.experiments:
        for variant in ("as_is", "resampled"):
            splits = kmhas_splits(pcfg, resampled=variant == "resampled")
            log.info(f"K-MHaS {variant}: {splits.sizes()}, test {splits.report.split_class_counts['test']}")
            for model in pcfg.kmhas_models:
                cfg = pcfg.train_config(model, pcfg.data("kmhas"), root / "kmhas", f"{variant}-{slug(model)}",
                                        pcfg.kmhas_epochs)
                jobs.append(Job("kmhas", variant, model, cfg, splits))
    sweeps: list[str] = []
    if "scale" in pcfg.experiments:
        for model in pcfg.scale_models:
            if model != "tfidf":
                sweeps.append(model)
                continue
            for scale in sorted(pcfg.scales):
                data = pcfg.data(scale=scale)
                cfg = pcfg.train_config(model, data, root / "scale", f"{slug(model)}-x{scale}", pcfg.epochs)
                jobs.append(Job("scale", f"x{scale}", model, cfg, make_splits(data), scale=scale))
    return jobs, sweeps


def _record(job: Job, result: dict[str, Any] | None, error: str) -> Record:
    test_counts = job.splits.report.split_class_counts.get("test", {})
    history = (result or {}).get("history") or []
    last = history[-1] if history else {}
    return Record(
        experiment=job.experiment, variant=job.variant, model=job.model, scale=job.scale,
        train_rows=len(job.splits.train), test_rows=len(job.splits.test), test_class_counts=dict(test_counts),
        label_names=list(job.splits.label_names),
        val_metrics={k: v for k, v in ((result or {}).get("metrics") or {}).items() if k.startswith("val_")},
        epochs_run=int(last.get("epoch", 0)), steps=int(last.get("step", 0)),
        train_seconds=float((result or {}).get("wall_seconds", 0.0)),
        checkpoint=(result or {}).get("checkpoint", ""), run_dir=(result or {}).get("run_dir", str(job.run_dir)),
        history=history, error=error,
    )


def _evaluate(job: Job, record: Record, pcfg: PaperConfig, evaluations: dict[str, Any]) -> None:
    """Score the job's checkpoint on its test split and fill ``record`` (a failure is recorded, not raised)."""
    from kosent.evaluate import evaluate_report

    if record.error or not record.checkpoint:
        return
    out = Path(record.run_dir) / "eval_test"
    try:
        ev = evaluate_report(
            record.checkpoint, list(job.splits.test["text"]), list(job.splits.test["label"]), out,
            label_names=job.splits.label_names, embeddings=job.embeddings, max_points=pcfg.max_points,
            seed=pcfg.seed, title=f"{job.model} ({job.experiment} {job.variant})",
            data={"source": job.cfg.data.source, "variant": job.variant, "fingerprint": job.splits.fingerprint,
                  "sizes": job.splits.sizes()},
            progress=lambda msg: log.info(f"{job.key}: {msg}"),
        )
    except Exception as e:  # noqa: BLE001 - one failed evaluation or sweep is reported; the other runs go on
        record.error = f"evaluation failed: {type(e).__name__}: {e}"
        log.warning(f"FAILED to evaluate {job.key}: {record.error}")
        return
    record.metrics = ev.metrics
    record.eval_seconds = float(ev.metrics.get("test_seconds", 0.0))
    record.report_dir = str(out)
    evaluations[job.key] = ev
    m = ev.metrics
    log.info(f"{job.key}: test accuracy {m['test_accuracy']:.4f} macro F1 {m['test_macro_f1']:.4f} "
             + " ".join(f"F1 {n} {m[f'test_f1_{n}']:.4f}" for n in ev.label_names) + f" (report {out})")


def _scale_sweep(model: str, pcfg: PaperConfig, root: Path, records: list[Record], evaluations: dict[str, Any]) -> None:
    """One Tune sweep over the scales for ``model`` (one lr, no ASHA); every trial's best checkpoint is scored
    on the shared test split."""
    from kosent.sweep import SweepConfig, run_sweep

    base = pcfg.train_config(model, pcfg.data(), root / "scale", slug(model), pcfg.epochs)
    sweep = SweepConfig(lrs=[pcfg.lr(model)], scales=sorted(pcfg.scales), asha=False,
                        name=f"sweep-{slug(model)}", storage_path=str(root / "scale"))
    log.info(f"scale: Tune sweep of {model} over scales {sorted(pcfg.scales)} (lr {pcfg.lr(model):g})")
    t0 = time.perf_counter()
    try:
        result = run_sweep(sweep, base)
    except Exception as e:  # noqa: BLE001 - one failed evaluation or sweep is reported; the other runs go on
        error = _error_line(e)
        log.warning(f"FAILED scale sweep of {model}: {error}")
        for scale in sorted(pcfg.scales):
            records.append(Record("scale", f"x{scale}", model, scale, pcfg.train_size * scale, pcfg.test_size, {},
                                  [], error=error, run_dir=str(root / "scale" / sweep.name)))
        return
    log.info(f"scale: sweep of {model} done in {time.perf_counter() - t0:.0f}s ({result.path})")
    test_splits = make_splits(pcfg.data())
    for row in sorted(result.trials, key=lambda r: r.scale):
        splits = dataclasses.replace(test_splits, train=make_splits(pcfg.data(scale=row.scale)).train)
        job = Job("scale", f"x{row.scale}", model, dataclasses.replace(base, data=pcfg.data(scale=row.scale)), splits,
                  scale=row.scale)
        error = "" if row.checkpoint and row.outcome in ("completed", "early_stopped") else (
            row.error or f"trial {row.outcome} without a checkpoint")
        record = _record(job, {"checkpoint": row.checkpoint or "", "metrics": row.val_metrics, "history": row.history,
                               "run_dir": row.run_dir, "wall_seconds": row.seconds or 0.0}, error)
        _evaluate(job, record, pcfg, evaluations)
        records.append(record)


def _order(pcfg: PaperConfig, r: Record) -> tuple[int, str, int, int]:
    """Experiments in EXPERIMENTS order; models in the order the flags list them; then variant and scale."""
    models = {"baselines": pcfg.models, "scale": pcfg.scale_models, "kmhas": pcfg.kmhas_models}[r.experiment]
    rank = models.index(r.model) if r.model in models else len(models)
    variant = "" if r.experiment == "scale" else r.variant
    return EXPERIMENTS.index(r.experiment), variant, rank, r.scale


def run_paper(pcfg: PaperConfig, root: str | Path) -> PaperResult:
    """Run every experiment of ``pcfg`` with outputs under ``root``; needs ``ray.init`` first."""
    import ray

    from kosent.ray_train import resolve_model

    if not ray.is_initialized():
        raise PaperError("connect to a Ray cluster first (ray.init(...)); ray_jobs/paper.py does this for you")
    pcfg.validate()
    t0 = time.perf_counter()
    root = Path(root).expanduser().resolve()
    if root.exists() and any(root.iterdir()):
        raise PaperError(f"{root} already holds a run: choose another --name (or none, for a fresh one)")
    root.mkdir(parents=True, exist_ok=True)
    for model in sorted(set(pcfg.models + pcfg.scale_models + pcfg.kmhas_models) - {"tfidf"}):
        log.info(f"model {model}: {resolve_model(model)}")  # builds the offline e5 folder once, here
    jobs, sweeps = plan(pcfg, root)
    log.info(f"{len(jobs)} run(s) through the pool" + (f", then Tune scale sweeps of {', '.join(sweeps)}" if sweeps else "")
             + f"; cluster {ray.cluster_resources().get('CPU', 0):g} CPUs, {ray.cluster_resources().get('GPU', 0):g} GPUs")
    records: list[Record] = []
    evaluations: dict[str, Any] = {}

    def done(job: Job, result: dict[str, Any] | None, error: str) -> None:
        record = _record(job, result, error)
        _evaluate(job, record, pcfg, evaluations)
        records.append(record)
        log.info(f"progress: {len(records)}/{len(jobs)} pool run(s) done")

    if jobs:
        run_pool(jobs, done)
    for model in sweeps:
        _scale_sweep(model, pcfg, root, records, evaluations)
    records.sort(key=lambda r: _order(pcfg, r))
    return PaperResult(config=pcfg, root=root, records=records, evaluations=evaluations,
                       seconds=time.perf_counter() - t0)


__all__ = ["EXPERIMENTS", "Job", "PaperConfig", "PaperError", "PaperResult", "Record", "kmhas_splits", "plan",
           "resample_table", "run_paper", "run_pool", "slug"]
