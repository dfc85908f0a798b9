"""Ray Train: the one training loop (``kosent.train.train_loop``) in every worker of a ``TorchTrainer``.

    fit(cfg)            check everything that can be checked up front, train, return the best checkpoint
    build_trainer(...)  the TorchTrainer alone (for Tune, or to inspect its configs)
    RaySession          rank, device, DDP, gather, restore and report through Ray Train V2

Run folders. A run lives at ``<storage_path>/<name>`` (a local folder or a URI such as ``s3://b/runs``),
holding one ``epoch_N`` checkpoint folder per kept epoch and Ray's ``checkpoint_manager_snapshot.json``.
Ray Train V2 has no ``Trainer.restore``: a trainer built with the same ``RunConfig(name, storage_path)``
finds the snapshot and hands its latest checkpoint to the workers (``ray.train.get_checkpoint``). So:

- ``resume=False`` (default): a fresh run. Without ``name`` a unique ``kosent-<time>`` name is made; an
  existing, non-empty folder of the given name is an error (pass ``resume`` or another name), so two
  runs never mix checkpoints silently.
- ``resume=True``: continue the named run from its latest checkpoint (model, optimizer, scheduler,
  epoch, history; the random state is re-seeded per epoch, so a resumed run replays the uninterrupted
  one). The checkpoint's model and data fingerprint must match ``cfg``; a run folder without a
  checkpoint yet starts from scratch; a missing folder is an error.

Worker failures: ``FailureConfig(max_failures=cfg.max_failures)``; a restarted worker group resumes from
the latest checkpoint the same way. ``controller_failure_limit`` is finite, so a run that cannot
schedule its workers fails instead of waiting forever.
"""

from __future__ import annotations

import itertools
import json
import logging
import os
import shutil
import tempfile
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
# Train V2 patches print() in workers to also log it; Ray's wrapped stdout makes every line print twice and
# lets dill's captured disassembly (datasets fingerprinting) leak into the logs. Propagated to the workers.
os.environ.setdefault("RAY_TRAIN_ENABLE_PRINT_PATCH", "0")

import numpy as np
import pyarrow as pa
import pyarrow.fs
import ray
import ray.train
import ray.train.torch
import torch
import torch.distributed as dist
from ray.train import CheckpointConfig, FailureConfig, RunConfig, ScalingConfig
from ray.train.torch import TorchTrainer

from kosent import batches, distill, scoring, storage
from kosent.checkpoint import META_FILE, STATE_DIR, read_meta
from kosent.config import TrainConfig, cache_home, from_dict, to_dict, with_absolute_paths
from kosent.data import DataReport, Splits, make_splits, streaming
from kosent.data.splits import as_dataset
from kosent.logs import LEVEL_ENV, QUIET_LIBRARY_ENV
from kosent.logs import setup as setup_logging
from kosent.metrics import BEST_METRIC, BEST_MODE
from kosent.scoring import ScorePool
from kosent.train import Session, seed_everything, train_loop

log = logging.getLogger(__name__)

SNAPSHOT_FILE = "checkpoint_manager_snapshot.json"  # written by Ray Train V2 in the run folder
COMMIT_TIMEOUT_S = 300.0  # how long rank 0 waits for the controller to register a reported checkpoint
CONTROLLER_FAILURE_LIMIT = 2  # worker-group start-up failures (60 s timeout each) before giving up

__all__ = [
    "RaySession",
    "TrainRunError",
    "TrainRunResult",
    "TrainSetupError",
    "build_trainer",
    "connect",
    "fit",
    "resolve_model",
    "run_scorer",
    "score_pool",
    "train_loop_per_worker",
]


class TrainSetupError(ValueError):
    """A run that cannot start (cluster too small, storage not writable, run folder clash ...)."""


class TrainRunError(RuntimeError):
    """A run that started and failed; the message names the run folder and how to resume it."""


# --------------------------------------------------------------------------------------------------
# Inside the workers
# --------------------------------------------------------------------------------------------------


def _epoch_seed(seed: int, epoch: int) -> int:
    return seed + 1_000_003 * epoch


@dataclass
class RaySession(Session):
    """The loop's view of a Ray Train worker: rank and world size from ``ray.train.get_context()``.

    After every epoch's report (and after restoring a checkpoint of epoch N) the random generators are
    re-seeded from ``(seed, epoch)``, so dropout in a resumed or restarted run matches an uninterrupted one.
    """

    seed: int = 42
    restored_epoch: int | None = None
    train_rows: int = 0  # rows of the whole train split: this worker's shard holds train_rows // world_size
    unlabelled_rows: int = 0  # a teacher's scored texts, sharded the same way
    _temp_dirs: list[Path] = field(default_factory=list)

    def __post_init__(self) -> None:
        ctx = ray.train.get_context()
        self.rank = ctx.get_world_rank()
        self.world_size = ctx.get_world_size()
        self.device = ray.train.torch.get_device()

    def training_rows(self, cfg: TrainConfig, splits: Splits, tokenizer: Any) -> batches.TrainingRows:
        """This worker's shard, read about ``cfg.buffer_rows`` rows at a time every epoch: its labelled rows
        and, with a teacher, its scored rows, mixed in every chunk in the proportion of the whole shard."""
        # streaming_split(equal=True) gives every worker rows // world_size and drops the remainder.
        labelled = self.train_rows // self.world_size
        scored = self.unlabelled_rows // self.world_size if cfg.teacher else 0
        plan = batches.MixedPlan.of(labelled, scored, cfg.buffer_rows)

        def chunks() -> Iterator[batches.Chunk]:
            train = streaming.shard_chunks("train", plan.labelled_rows)
            if not scored:
                yield from (_chunk(table, None, None) for table in train)
                return
            unlabelled = streaming.shard_chunks("unlabelled", plan.scored_rows, ("text", streaming.PROBS))
            for table, soft in itertools.zip_longest(train, unlabelled):  # None: that stream has ended
                yield _chunk(table, soft, len(splits.label_names))

        return batches.BufferedRows(
            sizes=plan.sizes,
            chunks=chunks,
            encode=lambda chunk: distill.encode_rows(tokenizer, chunk, cfg.max_length),
        )

    def prepare_model(self, model: torch.nn.Module) -> torch.nn.Module:
        # DDP when world_size > 1 (the loop keeps the unwrapped model for evaluation and saving).
        return ray.train.torch.prepare_model(model)

    def gather(self, obj: Any) -> list[Any]:
        if self.world_size > 1 and dist.is_available() and dist.is_initialized():
            out: list[Any] = [None] * self.world_size
            dist.all_gather_object(out, obj)
            return out
        return [obj]

    def restore_dir(self) -> Path | None:
        checkpoint = ray.train.get_checkpoint()
        if checkpoint is None:
            return None
        if isinstance(checkpoint.filesystem, pyarrow.fs.LocalFileSystem) and Path(checkpoint.path).is_dir():
            folder = Path(checkpoint.path)
        else:  # remote storage: download once per worker, removed when the worker's loop ends
            folder = Path(tempfile.mkdtemp(prefix="kosent-restore-"))
            self._temp_dirs.append(folder)
            checkpoint.to_directory(str(folder))
        state = json.loads((folder / STATE_DIR / "state.json").read_text(encoding="utf-8"))
        self.restored_epoch = int(state["progress"]["epoch"])
        seed_everything(_epoch_seed(self.seed, self.restored_epoch))
        return folder

    def report(self, metrics: dict[str, float], checkpoint_dir: Path | None) -> None:
        epoch = int(metrics["epoch"])
        checkpoint = None
        if self.rank == 0 and checkpoint_dir is not None:
            checkpoint = ray.train.Checkpoint.from_directory(str(checkpoint_dir))
        try:
            # A barrier: every rank reports; rank 0's checkpoint is copied to <run>/epoch_N.
            ray.train.report(
                {k: float(v) for k, v in metrics.items()},
                checkpoint=checkpoint,
                checkpoint_dir_name=f"epoch_{epoch}",
            )
        finally:
            if checkpoint_dir is not None:
                shutil.rmtree(checkpoint_dir, ignore_errors=True)
        if checkpoint is not None:
            # The controller registers a report when it next polls the workers (every ~2 s); a worker that
            # dies before that loses the checkpoint although its files are in storage. Wait until it counts.
            try:
                ray.train.get_all_reported_checkpoints(
                    consistency_mode=ray.train.CheckpointConsistencyMode.COMMITTED, timeout_s=COMMIT_TIMEOUT_S
                )
            except Exception as e:  # noqa: BLE001  (training goes on; only the guarantee is weaker)
                log.warning(f"warning: could not confirm that checkpoint epoch_{epoch} was committed: {e}")
        seed_everything(_epoch_seed(self.seed, epoch))

    def cleanup(self) -> None:
        for folder in self._temp_dirs:
            shutil.rmtree(folder, ignore_errors=True)


def _chunk(labelled: pa.Table | None, scored: pa.Table | None, labels: int | None) -> batches.Chunk:
    """One buffer of a worker's rows as the loop encodes it: ``labels`` is None without a teacher, and a stream
    that has ended (``None``) adds no rows."""
    texts = [] if labelled is None else labelled.column("text").to_pylist()
    targets = [] if labelled is None else labelled.column("label").to_pylist()
    if labels is None:
        return batches.Chunk(texts, targets)
    if scored is None:
        return batches.Chunk(texts, targets, [], np.zeros((0, labels), np.float32))
    return batches.Chunk(texts, targets, scored.column("text").to_pylist(), streaming.probs_of(scored, labels))


def _splits_payload(splits: Splits, names: list[str]) -> dict[str, Any]:
    """What workers need besides the rows, which reach them as Ray Datasets (``kosent.data.streaming``)."""
    return {
        "label_names": list(splits.label_names),
        "fingerprint": splits.fingerprint,
        "report": splits.report.to_dict(),
        "datasets": names,
        "train_rows": len(splits.train),
        "unlabelled_rows": len(splits.unlabelled),
    }


def _worker_splits(payload: dict[str, Any]) -> Splits:
    """This worker's splits as the loop takes them: all of validation, no test rows, and no training rows: the
    loop streams its shards of ``train`` and ``unlabelled`` (``RaySession.training_rows``)."""
    return Splits(
        train=as_dataset([], []),
        validation=streaming.shard_as_dataset("validation"),
        test=as_dataset([], []),
        label_names=list(payload["label_names"]),
        fingerprint=payload["fingerprint"],
        report=DataReport.from_dict(payload["report"]),
    )


def train_loop_per_worker(config: dict[str, Any]) -> None:
    """What every Ray Train worker runs: rebuild the config, read this worker's shards, then the loop."""
    setup_logging()  # kosent's format and level ($KOSENT_LOG_LEVEL, from _worker_env) in this worker process
    cfg = from_dict(TrainConfig, config["train_config"])
    splits = _worker_splits(config["splits"])
    if cfg.threads is None:
        # Ray sets OMP_NUM_THREADS to the worker's CPU count; torch may have read it before, so set it.
        torch.set_num_threads(max(1, int(os.environ.get("OMP_NUM_THREADS") or cfg.cpus_per_worker or 1)))
    session = RaySession(seed=cfg.seed, train_rows=config["splits"]["train_rows"],
                         unlabelled_rows=config["splits"]["unlabelled_rows"])
    try:
        train_loop(cfg, splits, session)
    finally:
        session.cleanup()


# --------------------------------------------------------------------------------------------------
# On the driver
# --------------------------------------------------------------------------------------------------


@dataclass
class TrainRunResult:
    """What a Ray run produced. ``checkpoint`` is a local folder (downloaded when the storage is remote)."""

    checkpoint: Path
    metrics: dict[str, float]
    history: list[dict[str, float]]
    run_dir: str
    wall_seconds: float
    name: str = ""
    checkpoint_uri: str = ""


def run_dir_of(cfg: TrainConfig) -> str:
    """``<storage_path>/<name>`` as a local absolute path or a URI."""
    return storage.join(cfg.storage_path, str(cfg.name))


def _with_run_location(cfg: TrainConfig) -> TrainConfig:
    """A copy with an absolute storage path (Ray needs one), a name (unique when none was given), and every
    local path absolute (``kosent.config.with_absolute_paths``)."""
    import dataclasses

    name = cfg.name or f"kosent-{time.strftime('%Y%m%d-%H%M%S', time.gmtime())}-{uuid.uuid4().hex[:6]}"
    return dataclasses.replace(with_absolute_paths(cfg), storage_path=storage.absolute(cfg.storage_path), name=name)


def check_storage(storage_path: str) -> None:
    """Create ``storage_path`` and write, read back and delete a probe file, or say why not."""
    try:
        storage.check_writable(storage_path)
    except Exception as e:
        raise TrainSetupError(
            f"storage_path '{storage_path}' is not writable: {type(e).__name__}: {e}. "
            "Pass --storage-path with a folder this machine can write (every node, for multi-node runs) "
            "or a URI such as s3://bucket/runs."
        ) from e


def resolve_model(name: str) -> str:
    """Fail before starting workers for a model that cannot load: an alias (the offline e5 folder is built
    here once, so workers on this node find it), an existing Hugging Face folder, or a hub id.
    Raises ``kosent.models.ModelError`` with the reason; returns a one-line description."""
    from kosent.models import ALIASES, ModelError, load_tokenizer

    if name in ALIASES:
        load_tokenizer(name)
        return f"alias {name}"
    path = Path(name).expanduser()
    if path.exists():
        if not (path / "config.json").is_file():
            raise ModelError(f"{name}: not a Hugging Face model folder (no config.json)")
        load_tokenizer(str(path))
        return f"folder {path.resolve()}"
    if "/" not in name:
        raise ModelError(
            f"unknown model '{name}': use one of {', '.join(ALIASES)}, a local folder, "
            "or a Hugging Face hub id such as klue/bert-base"
        )
    load_tokenizer(name)  # a hub id: offline this raises ModelError saying which offline model to use
    return f"hub id {name}"


def connect(address: str | None = None) -> None:
    """Join the cluster at ``address`` / ``$RAY_ADDRESS``, or start a local one on 127.0.0.1 (dashboard on).

    For a local cluster that stays on loopback, set ``RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER=0`` before Ray
    is imported (``ray_jobs/train.py`` does)."""
    if ray.is_initialized():
        return
    address = address or os.environ.get("RAY_ADDRESS")
    if address:
        # Inside `ray job submit` the job's runtime_env (working_dir) applies already: pass none here.
        ray.init(address=address, log_to_driver=True)
        return
    ray.init(
        include_dashboard=True,
        dashboard_host="127.0.0.1",
        _node_ip_address="127.0.0.1",
        log_to_driver=True,
    )


def check_resources(cfg: TrainConfig) -> None:
    """More workers than the cluster can place is an error now, not a 60 s start-up timeout later. (Impossible
    values, such as 0 workers or a GPU share above 1, are refused by ``TrainConfig`` itself.)"""
    total = ray.cluster_resources()
    need_cpu = cfg.num_workers * cfg.cpus_per_worker
    have_cpu = total.get("CPU", 0.0)
    if need_cpu > have_cpu + 1e-9:
        raise TrainSetupError(
            f"{cfg.num_workers} workers x {cfg.cpus_per_worker:g} CPU = {need_cpu:g} CPUs requested but the "
            f"Ray cluster has {have_cpu:g} CPUs; lower --num-workers or --cpus-per-worker, or add nodes"
        )
    node_cpus = [n.get("Resources", {}).get("CPU", 0.0) for n in ray.nodes() if n.get("Alive")]
    if node_cpus and cfg.cpus_per_worker > max(node_cpus) + 1e-9:
        raise TrainSetupError(
            f"cpus_per_worker {cfg.cpus_per_worker:g} exceeds the largest node's {max(node_cpus):g} CPUs"
        )
    if cfg.use_gpu:
        have_gpu = total.get("GPU", 0.0)
        if cfg.num_workers * cfg.gpus_per_worker > have_gpu + 1e-9:
            raise TrainSetupError(
                f"{cfg.num_workers} workers x {cfg.gpus_per_worker:g} GPU requested but the Ray cluster has "
                f"{have_gpu:g} GPUs; lower --num-workers or --gpus-per-worker, or drop --use-gpu"
            )


def worker_resources(cfg: TrainConfig) -> dict[str, float]:
    """What each Train worker reserves: its CPUs and, with use_gpu, its GPU share."""
    return {"CPU": float(cfg.cpus_per_worker)} | ({"GPU": float(cfg.gpus_per_worker)} if cfg.use_gpu else {})


def _read_text(location: str) -> str | None:
    return storage.read_text(location) if storage.kind(location) == "file" else None


def _latest_snapshot_entry(run_dir: str) -> dict[str, Any] | None:
    text = _read_text(storage.join(run_dir, SNAPSHOT_FILE))
    if text is None:
        return None
    return json.loads(text).get("latest_checkpoint_result")


def check_run_folder(cfg: TrainConfig, fingerprint: str) -> str | None:
    """Apply the resume rules (module docstring). Returns the checkpoint folder a resume starts from."""
    run_dir = run_dir_of(cfg)
    found = storage.kind(run_dir)
    if found == "file":
        raise TrainSetupError(f"run folder {run_dir} exists and is a file, not a folder")
    exists = found == "folder"
    non_empty = exists and not storage.is_empty(run_dir)
    if not cfg.resume:
        if non_empty:
            raise TrainSetupError(
                f"run folder {run_dir} already exists; pass --resume to continue run '{cfg.name}' from its "
                "latest checkpoint, or choose a new --name (or none, for a fresh unique one)"
            )
        return None
    if not exists:
        raise TrainSetupError(f"--resume: no run '{cfg.name}' at {run_dir} to resume (check --name and --storage-path)")
    latest = _latest_snapshot_entry(run_dir)
    if latest is None:
        log.info(f"--resume: run {run_dir} has no checkpoint yet; starting it from scratch")
        return None
    ckpt = storage.join(run_dir, latest["checkpoint_dir_name"])
    meta_text = _read_text(ckpt + "/" + META_FILE)
    if meta_text is None:
        raise TrainSetupError(f"--resume: latest checkpoint {ckpt} of run '{cfg.name}' has no {META_FILE}")
    meta = json.loads(meta_text)
    old_model = meta.get("config", {}).get("model")
    if old_model != cfg.model:
        raise TrainSetupError(f"--resume: run '{cfg.name}' trained model '{old_model}', not '{cfg.model}'")
    if meta.get("data_fingerprint") != fingerprint:
        raise TrainSetupError(
            f"--resume: run '{cfg.name}' was trained on other data (fingerprint "
            f"{str(meta.get('data_fingerprint'))[:12]} != {fingerprint[:12]}); use the same data flags"
        )
    log.info(f"resuming run '{cfg.name}' from {ckpt} (epoch {int(latest['metrics'].get('epoch', 0))})")
    return ckpt


def score_pool(cfg: TrainConfig) -> ScorePool:
    """The actors that score for a run (a teacher's unlabelled texts, the test split): one per Train worker,
    each reserving what a worker does, so the cluster can place them whenever it can place the run."""
    return ScorePool(actors=cfg.num_workers, cpus=float(cfg.cpus_per_worker),
                     gpus=float(cfg.gpus_per_worker) if cfg.use_gpu else 0.0, env=_worker_env(cfg))


def run_scorer(cfg: TrainConfig, checkpoint: str | Path, what: str) -> Callable[[list[str]], np.ndarray] | None:
    """How a Ray run scores ``checkpoint`` (``cfg.score_on``): a function scoring on the cluster's actors
    (``kosent.scoring``), or None: in this process. ``auto`` takes the cluster when the run uses GPUs or the
    cluster has more than one node: on one CPU node the driver shares the actors' CPUs and skips their
    start-up (``bench/bench_scoring.py``)."""
    where = cfg.score_on
    if where == "auto":
        nodes = [n for n in ray.nodes() if n.get("Alive")] if ray.is_initialized() else []
        where = "cluster" if cfg.use_gpu or len(nodes) > 1 else "driver"
    if where == "driver":
        return None
    connect()
    return scoring.cluster_scorer(checkpoint, score_pool(cfg), what=what)


def _worker_env(cfg: TrainConfig) -> dict[str, str]:
    env = {"TOKENIZERS_PARALLELISM": "false", "RAY_USAGE_STATS_ENABLED": "0", "RAY_TRAIN_ENABLE_PRINT_PATCH": "0",
           **QUIET_LIBRARY_ENV}
    for name in ("KOSENT_HOME", "HF_HUB_OFFLINE", "HF_HOME", LEVEL_ENV):
        if os.environ.get(name):
            env[name] = os.environ[name]
    try:
        nodes = [n for n in ray.nodes() if n.get("Alive")] if ray.is_initialized() else []
    except Exception:  # noqa: BLE001
        nodes = []
    if nodes and all(str(n.get("NodeManagerAddress", "")).startswith("127.") for n in nodes):
        env["GLOO_SOCKET_IFNAME"] = "lo"  # a loopback-only cluster: keep DDP traffic on loopback too
    return env


def build_trainer(
    cfg: TrainConfig,
    splits: Splits,
    callbacks: list | None = None,
) -> TorchTrainer:
    """The TorchTrainer for ``cfg``; runs at ``<storage_path>/<name>`` (see the module docstring on resume)."""
    cfg = _with_run_location(cfg)
    resources = worker_resources(cfg)
    if cfg.teacher and splits.unlabelled_probs is None:  # each text scored once, before training
        distill.check_teacher(cfg.teacher, splits.label_names)
        splits = distill.with_unlabelled(cfg, splits, run_scorer(cfg, cfg.teacher, "unlabelled texts"))
    datasets = streaming.to_ray_datasets(splits)
    config: dict[str, Any] = {"train_config": to_dict(cfg), "splits": _splits_payload(splits, list(datasets))}
    return TorchTrainer(
        train_loop_per_worker,
        train_loop_config=config,
        datasets=datasets,
        dataset_config=streaming.data_config(list(datasets)),
        scaling_config=ScalingConfig(
            num_workers=cfg.num_workers, use_gpu=cfg.use_gpu, resources_per_worker=resources
        ),
        run_config=RunConfig(
            name=cfg.name,
            storage_path=cfg.storage_path,
            checkpoint_config=CheckpointConfig(
                num_to_keep=cfg.keep_checkpoints,
                checkpoint_score_attribute=BEST_METRIC,
                checkpoint_score_order=BEST_MODE,
            ),
            failure_config=FailureConfig(
                max_failures=cfg.max_failures, controller_failure_limit=CONTROLLER_FAILURE_LIMIT
            ),
            callbacks=callbacks,
            worker_runtime_env={"env_vars": _worker_env(cfg)},
        ),
    )


def _local_copy(checkpoint: ray.train.Checkpoint, name: str) -> Path:
    if isinstance(checkpoint.filesystem, pyarrow.fs.LocalFileSystem):
        return Path(checkpoint.path)
    dest = cache_home() / "runs" / name / Path(checkpoint.path).name
    if dest.exists():
        shutil.rmtree(dest)
    dest.mkdir(parents=True)
    checkpoint.to_directory(str(dest))
    return dest


def _history(checkpoint: ray.train.Checkpoint) -> list[dict[str, float]]:
    """The full per-epoch history, from the latest checkpoint's training state (survives restarts)."""
    location = checkpoint.path
    if not isinstance(checkpoint.filesystem, pyarrow.fs.LocalFileSystem):
        with checkpoint.filesystem.open_input_stream(f"{location}/{STATE_DIR}/state.json") as f:
            return json.loads(f.read().decode("utf-8"))["progress"]["history"]
    state = Path(location) / STATE_DIR / "state.json"
    return json.loads(state.read_text(encoding="utf-8"))["progress"]["history"]


def fit(
    cfg: TrainConfig,
    splits: Splits | None = None,
    *,
    callbacks: list | None = None,
    address: str | None = None,
) -> TrainRunResult:
    """Train with Ray Train and return the best checkpoint by ``val_macro_f1``.

    Fails before any worker starts, with a message naming the problem, for: an unknown or unloadable
    model (``ModelError``), unreadable data (``DataError``), an unwritable storage path, a run-folder
    clash or impossible resume, and more workers than the cluster has CPUs/GPUs (``TrainSetupError``).
    """
    t0 = time.perf_counter()
    if cfg.resume and not cfg.name:
        raise TrainSetupError("--resume needs --name: the name of the run to continue")
    cfg = _with_run_location(cfg)
    check_storage(cfg.storage_path)
    described = resolve_model(cfg.model)
    splits = splits if splits is not None else make_splits(cfg.data)
    check_run_folder(cfg, splits.fingerprint)
    connect(address)
    check_resources(cfg)
    run_dir = run_dir_of(cfg)
    log.info(f"run '{cfg.name}' at {run_dir}: model {described}, {cfg.num_workers} worker(s) x "
             f"{cfg.cpus_per_worker:g} CPU{f' + {cfg.gpus_per_worker:g} GPU' if cfg.use_gpu else ''}")
    trainer = build_trainer(cfg, splits, callbacks)
    try:
        result = trainer.fit()
    except Exception as e:
        raise TrainRunError(
            f"run '{cfg.name}' failed: {type(e).__name__}: {e}\nIts checkpoints are in {run_dir}; continue it "
            f"with --resume --name {cfg.name} --storage-path {cfg.storage_path}"
        ) from e
    candidates = list(result.best_checkpoints or [])
    if not candidates:
        raise TrainRunError(f"run '{cfg.name}' finished without reporting a checkpoint ({run_dir})")
    # Highest val_macro_f1; among ties the earliest epoch (as the in-process loop picks).
    best_ckpt, _ = max(candidates, key=lambda cm: (cm[1].get(BEST_METRIC, -1.0), -cm[1].get("epoch", 0)))
    latest = result.checkpoint or best_ckpt
    history = _history(latest)
    local = _local_copy(best_ckpt, str(cfg.name))
    best_metrics = read_meta(local)["metrics"]  # as the loop wrote them (the same keys Ray was given)
    uri = best_ckpt.path if isinstance(best_ckpt.filesystem, pyarrow.fs.LocalFileSystem) else (
        storage.join(run_dir, Path(best_ckpt.path).name)
    )
    return TrainRunResult(
        checkpoint=local,
        metrics=dict(best_metrics),
        history=history,
        run_dir=run_dir,
        wall_seconds=time.perf_counter() - t0,
        name=str(cfg.name),
        checkpoint_uri=str(uri),
    )
