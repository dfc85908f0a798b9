"""Ray Tune sweeps over learning rate, dataset scale factor and any other TrainConfig field (``grid``); the
best checkpoint is handed to serving.

One trial = one ``(lr, scale)`` pair, plus one value of each ``SweepConfig.grid`` field (``{"warmup_ratio":
[0.0, 0.1], "model": ["e5-small-ko", "/abs/dapt-folder"]}``: every combination is a trial). Its driver is a
Tune function trainable holding a token CPU (``driver_cpus``); it builds the splits for its scale
(:func:`kosent.data.make_splits`: nested training subsets, the same validation and test rows at every scale)
and runs a Ray Train ``TorchTrainer`` (:func:`kosent.ray_train.build_trainer`) whose ``TuneReportCallback``
forwards every epoch's metrics and checkpoint path to Tune. This is the Train V2 pattern: ``Tuner(trainer)``
is not supported in Ray 2.60.

ASHA (on ``val_macro_f1``, ``time_attr="epoch"``) stops weak trials after ``grace_period`` epochs. A trial
that fails (for instance ``FloatingPointError`` from a diverging loss) is recorded with its reason and
the sweep carries on. An interrupted sweep (Ctrl+C, a killed driver) resumes with ``resume=True``:
finished and failed trials are kept as they are, unfinished ones continue (Train resumes them from their
last epoch checkpoint).

At the end the best trial by ``val_macro_f1`` (over every epoch of every trial that did not fail) is
scored once on the untouched test split and written to ``<sweep>/manifest.json``, the file Serve reads;
``trials.csv`` / ``trials.md`` list every trial and ``plots/`` holds the scaling plot and learning curves.
Tune's TensorBoard event files sit in each trial folder: ``tensorboard --logdir <sweep>``.

Storage: ``storage_path`` is a local (or shared, mounted) folder, or a URI (``s3://bucket/sweeps``) that
every node of a multi-node cluster reaches. For a URI, Tune keeps the sweep there, each trial's Train
run writes its checkpoints there, and at the end the sweep's files (checkpoints left out) are copied to a
local mirror, ``$KOSENT_HOME/remote/sweeps/<name>``, where the table, plots and manifest are made and
then uploaded beside the trials; the manifest names the best checkpoint by its URI.

Library code: it needs a connected Ray cluster (``ray_jobs/tune.py`` starts or joins one) and never
parses arguments.
"""

from __future__ import annotations

import csv
import dataclasses
import json
import math
import re
import time
import types
import typing
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from kosent.checkpoint import delete_file, download_tree, exists, is_uri, read_text, upload, write_text
from kosent.config import TrainConfig, cache_home, from_dict, to_dict

METRIC = "val_macro_f1"
MODE = "max"
SWEEP_FILE = "sweep.json"
TRIAL_FILE = "kosent_trial.json"  # written by a trial when it starts: its config and split sizes
FINISHED_FILE = "kosent_finished.json"  # written by a trial whose training ran to its end
ERROR_FILE = "kosent_error.json"  # written by a trial that failed: the reason in one line
TABLE_COLUMNS = [
    "trial_id", "lr", "scale", "train_rows", "epochs_run", "best_epoch", "val_macro_f1", "val_accuracy",
    "val_loss", "train_loss", "status", "outcome", "error", "seconds", "checkpoint",
]  # plus one column per grid field after "scale" (table_columns); a sweep without a grid has exactly these
# TrainConfig fields a grid may not hold: the sweep sets them itself (lr, the scale inside data, where each trial
# writes) or they size a trial's resources, which must be the same for every trial (concurrency, preflight).
RESERVED_GRID_KEYS = ("lr", "scale", "data", "storage_path", "name", "resume", "num_workers", "use_gpu",
                      "cpus_per_worker", "gpus_per_worker")


class SweepError(RuntimeError):
    """A sweep that cannot start or resume; the message says why and what to do."""


class TrialFailed(RuntimeError):
    """Raised by a trial whose training failed; ``str()`` is the reason (e.g. the FloatingPointError)."""


@dataclass
class SweepConfig:
    """The search space and how the sweep runs.

    ``lrs`` is a grid of learning rates; with ``lrs=None`` learning rates are drawn log-uniformly from
    ``[lr_min, lr_max]``, ``num_samples`` per scale. ``scales`` (multiples of ``data.train_size``) is
    always a grid. ``grid`` maps other TrainConfig fields to the values to try (each a grid dimension too:
    ``{"epochs": [2, 3], "pooling": ["cls", "mean"]}`` makes four trials per lr and scale); values are
    checked against the field's type (:func:`check_grid`). ``max_concurrent_trials=None`` fits as many trials
    as the cluster's CPUs allow: a trial costs ``num_workers * cpus_per_worker`` CPUs, of which ``driver_cpus``
    go to the trial driver.
    """

    lrs: list[float] | None = field(default_factory=lambda: [2e-5, 5e-5, 1e-4])
    lr_min: float = 1e-5
    lr_max: float = 3e-4
    num_samples: int = 1
    scales: list[int] = field(default_factory=lambda: [1, 2, 3, 4, 5])
    grid: dict[str, list[Any]] = field(default_factory=dict)
    asha: bool = True
    grace_period: int = 1
    reduction_factor: float = 2.0
    max_concurrent_trials: int | None = None
    driver_cpus: float = 0.01
    name: str | None = None
    storage_path: str = "runs/sweeps"
    resume: bool = False

    def validate(self, base: TrainConfig) -> None:
        if self.lrs is not None:
            if not self.lrs or any(not (lr > 0) for lr in self.lrs):
                raise SweepError(f"lrs must be a non-empty list of positive learning rates, got {self.lrs}")
        elif not (0 < self.lr_min < self.lr_max):
            raise SweepError(f"need 0 < lr_min < lr_max, got {self.lr_min} and {self.lr_max}")
        if not self.scales or any(int(s) != s or s < 1 for s in self.scales):
            raise SweepError(f"scales must be a non-empty list of integers >= 1, got {self.scales}")
        check_grid(self.grid)
        if self.num_samples < 1:
            raise SweepError(f"num_samples must be >= 1, got {self.num_samples}")
        if self.grace_period < 1:
            raise SweepError(f"grace_period must be >= 1 epoch, got {self.grace_period}")
        if self.max_concurrent_trials is not None and self.max_concurrent_trials < 1:
            raise SweepError(f"max_concurrent_trials must be >= 1, got {self.max_concurrent_trials}")
        if not (0 < self.driver_cpus < base.cpus_per_worker * base.num_workers):
            raise SweepError(
                f"driver_cpus {self.driver_cpus} must be > 0 (Tune refuses a 0-CPU trial) and below the "
                f"trial's {base.num_workers} x {base.cpus_per_worker} worker CPUs"
            )

    def num_trials(self) -> int:
        return (len(self.scales) * self.num_samples * (len(self.lrs) if self.lrs is not None else 1)
                * math.prod(len(values) for values in self.grid.values()))


# --------------------------------------------------------------------------------------------------
# The grid: extra TrainConfig fields swept alongside lr and scale
# --------------------------------------------------------------------------------------------------

_SIMPLE = (bool, int, float, str)
_A = {bool: "a bool", int: "an int", float: "a float", str: "a str"}


def _field_types() -> dict[str, Any]:
    """TrainConfig field -> its type hint, over whatever fields TrainConfig has today."""
    hints = typing.get_type_hints(TrainConfig)
    return {f.name: hints[f.name] for f in dataclasses.fields(TrainConfig)}


def _simple_type(hint: Any) -> tuple[type | None, bool]:
    """``(bool/int/float/str, None allowed)`` for a field's type hint; ``(None, ...)`` when it is not that simple
    (a dict, a dataclass, a union of several types): such values are passed through unchecked."""
    optional = False
    if typing.get_origin(hint) in (typing.Union, types.UnionType):
        args = typing.get_args(hint)
        optional = type(None) in args
        rest = [a for a in args if a is not type(None)]
        hint = rest[0] if len(rest) == 1 else None
    return (hint if hint in _SIMPLE else None), optional


def _check_key(key: Any, fields: dict[str, Any]) -> None:
    if key in RESERVED_GRID_KEYS:
        raise SweepError(f"grid: '{key}' cannot be in the grid: "
                         + ("use lrs (--lrs) or lr_min/lr_max" if key == "lr" else
                            "use scales (--scales)" if key in ("scale", "data") else
                            "it is set by the sweep or sizes every trial alike")
                         + f" (not allowed in a grid: {', '.join(RESERVED_GRID_KEYS)})")
    if key not in fields:
        known = [k for k in fields if k not in RESERVED_GRID_KEYS]
        raise SweepError(f"grid: unknown TrainConfig field '{key}'; known: {', '.join(known)}")


def _check_value(key: str, value: Any, hint: Any) -> Any:
    """``value`` as the field's type (an int for a float field becomes a float), or SweepError naming it."""
    kind, optional = _simple_type(hint)
    if value is None:
        if optional or kind is None:
            return None
        raise SweepError(f"grid: {key}={value!r}: {key} cannot be None (it takes {_A[kind]})")
    if kind is None:
        return value
    if kind is float and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    if isinstance(value, kind) and not (kind is int and isinstance(value, bool)):
        return value
    raise SweepError(f"grid: {key}={value!r} is {_A.get(type(value), type(value).__name__)}; {key} takes "
                     f"{_A[kind]}{' or None' if optional else ''}")


def check_grid(grid: Any) -> dict[str, list[Any]]:
    """The grid with every key checked (a TrainConfig field the sweep does not set itself) and every list
    checked (non-empty, no repeats, values of the field's type); SweepError names the first problem."""
    if not isinstance(grid, dict):
        raise SweepError(f"grid must be a mapping of TrainConfig field -> list of values, got {grid!r}")
    fields = _field_types()
    out: dict[str, list[Any]] = {}
    for key, values in grid.items():
        _check_key(key, fields)
        if not isinstance(values, (list, tuple)) or not values:
            raise SweepError(f"grid: {key} needs a non-empty list of values, got {values!r}")
        checked = [_check_value(key, v, fields[key]) for v in values]
        repeated = [v for i, v in enumerate(checked) if v in checked[:i]]
        if repeated:
            raise SweepError(f"grid: {key} lists {repeated[0]!r} twice (to repeat trials use num_samples)")
        out[key] = checked
    return out


def _parse_value(key: str, text: str, hint: Any) -> Any:
    kind, optional = _simple_type(hint)
    if kind is None:
        raise SweepError(f"grid: {key} ({hint}) cannot be given as KEY=V1,V2; put it under grid: in the "
                         "--sweep-config YAML")
    if optional and text.lower() == "none":
        return None
    if kind is bool:
        if text.lower() not in ("true", "false"):
            raise SweepError(f"grid: {key}={text!r}: {key} takes true or false")
        return text.lower() == "true"
    if kind is str:
        return text
    try:
        return kind(text)
    except ValueError:
        raise SweepError(f"grid: {key}={text!r}: {key} takes {_A[kind]}"
                         f"{' or none' if optional else ''}") from None


def parse_grid(items: Iterable[str]) -> dict[str, list[Any]]:
    """The grid written as ``KEY=V1,V2`` strings (the ``--grid`` flag): each value parsed as its field's type
    (``true``/``false`` for a bool, ``none`` for a field that may be None), then :func:`check_grid`."""
    fields = _field_types()
    grid: dict[str, list[Any]] = {}
    for item in items:
        key, sep, text = item.partition("=")
        key = key.strip()
        if not sep or not key:
            raise SweepError(f"grid: '{item}' is not KEY=V1,V2 (e.g. warmup_ratio=0.0,0.1)")
        _check_key(key, fields)
        if key in grid:
            raise SweepError(f"grid: {key} given twice; list its values once, comma-separated")
        pieces = [p.strip() for p in text.split(",")]
        if any(not p for p in pieces):
            raise SweepError(f"grid: '{item}' has an empty value; write {key}=V1,V2")
        grid[key] = [_parse_value(key, p, fields[key]) for p in pieces]
    return check_grid(grid)


def max_epochs(sweep: SweepConfig, base: TrainConfig) -> int:
    """The most epochs any trial runs: ASHA's ``max_t`` (its time_attr is the epoch)."""
    return max(int(e) for e in sweep.grid["epochs"]) if "epochs" in sweep.grid else base.epochs


def table_columns(grid_keys: Iterable[str] = ()) -> list[str]:
    """TABLE_COLUMNS with one column per grid field after lr and scale (a sweep without a grid: unchanged)."""
    i = TABLE_COLUMNS.index("scale") + 1
    return TABLE_COLUMNS[:i] + list(grid_keys) + TABLE_COLUMNS[i:]


def _grid_keys(rows: Iterable[TrialRow]) -> list[str]:
    return list(dict.fromkeys(k for r in rows for k in r.params))


def _slug(key: str, value: Any) -> str:
    """A grid value as a short, folder-name safe string: a model path becomes its (last) folder name."""
    if isinstance(value, float):
        text = f"{value:.3g}"
    elif isinstance(value, str) and (key == "model" or "/" in value):
        text = value.rstrip("/").rsplit("/", 1)[-1] or value
    else:
        text = str(value)
    return re.sub(r"[^A-Za-z0-9._-]+", "_", text).strip("._")[:32] or "_"


@dataclass
class TrialRow:
    """One line of the trials table."""

    trial_id: str
    lr: float
    scale: int
    train_rows: int
    epochs_run: int
    best_epoch: int | None
    val_macro_f1: float | None
    val_accuracy: float | None
    val_loss: float | None
    train_loss: float | None
    status: str  # Tune's: TERMINATED, ERROR, PENDING, RUNNING, PAUSED
    outcome: str  # completed, early_stopped (ASHA), failed, unfinished
    error: str
    seconds: float | None
    checkpoint: str | None
    params: dict[str, Any] = field(default_factory=dict)  # the trial's grid values (SweepConfig.grid)
    path: str = ""
    history: list[dict[str, float]] = field(default_factory=list, repr=False)
    val_metrics: dict[str, float] = field(default_factory=dict, repr=False)

    def table_values(self, columns: list[str] | None = None) -> dict[str, Any]:
        """Values for ``columns`` (default: TABLE_COLUMNS and this trial's grid fields)."""
        values = {name: getattr(self, name) for name in TABLE_COLUMNS} | self.params
        return {c: values.get(c) for c in (columns or table_columns(self.params))}


@dataclass
class SweepResult:
    path: Path  # the sweep folder (Tune's experiment folder), or its local mirror for a URI sweep
    trials: list[TrialRow]
    best: TrialRow | None
    manifest: Path | str | None  # a URI for a URI sweep
    val_metrics: dict[str, float]
    test_metrics: dict[str, float]
    table_csv: Path
    table_md: Path
    plots: list[Path]
    tensorboard_dir: Path
    savings: dict[str, Any]
    interrupted: bool
    seconds: float
    location: str = ""  # where Tune keeps the sweep: ``path``, or its URI (``path`` is then the local mirror)

    def summary(self) -> dict[str, Any]:
        best = None
        if self.best is not None:
            best = {"trial_id": self.best.trial_id, "lr": self.best.lr, "scale": self.best.scale,
                    "grid": self.best.params, "epoch": self.best.best_epoch, "val_macro_f1": self.best.val_macro_f1,
                    "checkpoint": self.best.checkpoint}
        return {
            "sweep": self.location or str(self.path), "manifest": str(self.manifest) if self.manifest else None,
            "interrupted": self.interrupted, "best": best,
            "test_accuracy": self.test_metrics.get("test_accuracy"),
            "test_macro_f1": self.test_metrics.get("test_macro_f1"),
            "trials": len(self.trials), "asha": self.savings, "seconds": round(self.seconds, 1),
        }


# --------------------------------------------------------------------------------------------------
# Configs
# --------------------------------------------------------------------------------------------------


# TrainConfig fields that may name a local folder (a model, a teacher checkpoint): made absolute for trials.
_PATH_FIELDS = ("model", "teacher")


def _absolute_path(value: Any) -> Any:
    """``value`` made absolute when it names an existing local path; an alias (``tiny``) wins over ./tiny/."""
    from kosent.models import ALIASES

    if isinstance(value, str) and value not in ALIASES and "://" not in value and Path(value).expanduser().exists():
        return str(Path(value).expanduser().resolve())
    return value


def _absolute_grid(grid: dict[str, list[Any]]) -> dict[str, list[Any]]:
    """Local folders in the grid, made absolute like the base config's (trials run in their own folders)."""
    return {k: [_absolute_path(v) for v in values] if k in _PATH_FIELDS else values for k, values in grid.items()}


def _absolute(base: TrainConfig) -> TrainConfig:
    """Trials run with the trial folder as working directory: make every local path absolute."""
    changes: dict[str, Any] = {}
    data: dict[str, Any] = {}
    if base.data.path and "://" not in base.data.path:
        data["path"] = str(Path(base.data.path).expanduser().resolve())
    elif base.data.source and base.data.source not in ("nsmc", "kmhas") and Path(base.data.source).expanduser().exists():
        data["source"] = str(Path(base.data.source).expanduser().resolve())
    for name in _PATH_FIELDS:
        value = getattr(base, name, None)
        if _absolute_path(value) != value:
            changes[name] = _absolute_path(value)
    if data:
        changes["data"] = dataclasses.replace(base.data, **data)
    return dataclasses.replace(base, **changes)


def trial_config(base: TrainConfig, lr: float, scale: int, worker_cpus: float, trial_dir: str | Path,
                 grid: dict[str, Any] | None = None) -> TrainConfig:
    """The TrainConfig of one trial: ``base`` with the trial's lr, scale and grid values (one value per grid
    field); Train writes to the trial folder (a local folder or a URI)."""
    return dataclasses.replace(
        base,
        **(grid or {}),
        lr=float(lr),
        cpus_per_worker=worker_cpus,
        storage_path=str(trial_dir) if is_uri(trial_dir) else str(Path(trial_dir).resolve()),
        name="train",
        data=dataclasses.replace(base.data, scale=int(scale)),
    )


def worker_cpus(sweep: SweepConfig, base: TrainConfig) -> float:
    """CPUs per Train worker: the driver's share is taken off so a trial costs exactly
    ``num_workers * cpus_per_worker`` (two 1-CPU trials fit on two CPUs)."""
    return round(base.cpus_per_worker - sweep.driver_cpus / base.num_workers, 6)


def concurrency(sweep: SweepConfig, base: TrainConfig) -> int:
    """``max_concurrent_trials``, or as many trials as the cluster's CPUs (and GPUs) hold, at least 1."""
    if sweep.max_concurrent_trials is not None:
        return sweep.max_concurrent_trials
    import ray

    return trials_that_fit(ray.cluster_resources(), sweep, base)


def trials_that_fit(total: dict[str, float], sweep: SweepConfig, base: TrainConfig) -> int:
    """Trials that run at once on a cluster of ``total`` resources: each holds ``num_workers`` x
    (``cpus_per_worker`` CPUs, and with ``use_gpu`` ``gpus_per_worker`` GPUs: 0.25 packs four on a GPU)."""
    fits = math.floor(total.get("CPU", 1) / (base.num_workers * base.cpus_per_worker) + 1e-9)
    if base.use_gpu:
        fits = min(fits, math.floor(total.get("GPU", 0) / (base.num_workers * base.gpus_per_worker) + 1e-9))
    return max(1, min(fits, sweep.num_trials()))


def search_space(sweep: SweepConfig, base: TrainConfig) -> dict[str, Any]:
    from ray import tune

    lr = tune.grid_search([float(x) for x in sweep.lrs]) if sweep.lrs is not None else tune.loguniform(
        sweep.lr_min, sweep.lr_max)
    return {
        "lr": lr,
        "scale": tune.grid_search([int(s) for s in sweep.scales]),
        # Only with a grid: the trials of a sweep without one keep the config they always had.
        **({"grid": {k: tune.grid_search(list(v)) for k, v in sweep.grid.items()}} if sweep.grid else {}),
        # Constants travel in the trial config so a resumed sweep needs nothing but its folder.
        "worker_cpus": worker_cpus(sweep, base),
        "base": to_dict(base),
    } | ({"storage_uri": sweep.storage_path.rstrip("/")} if is_uri(sweep.storage_path) else {})


def _save_sweep(location: str | Path, sweep: SweepConfig, base: TrainConfig) -> None:
    doc = {"sweep": to_dict(sweep), "base": to_dict(base)}
    write_text(f"{location}/{SWEEP_FILE}", json.dumps(doc, indent=2, ensure_ascii=False))


def load_sweep(path: str | Path) -> tuple[SweepConfig, TrainConfig]:
    """The SweepConfig and base TrainConfig a sweep folder (or sweep URI) was started with."""
    doc_path = f"{path}/{SWEEP_FILE}"
    if not exists(doc_path):
        raise SweepError(f"{path}: no {SWEEP_FILE}; not a kosent sweep folder")
    doc = json.loads(read_text(doc_path))
    return from_dict(SweepConfig, doc["sweep"]), from_dict(TrainConfig, doc["base"])


# --------------------------------------------------------------------------------------------------
# The trial
# --------------------------------------------------------------------------------------------------

_ERROR_LINE = re.compile(r"^\s*((?:[A-Za-z_][\w.]*\.)?[A-Za-z_]\w*(?:Error|Exception|Interrupt)): ?(.*)$")


def failure_reason(exc: BaseException) -> str:
    """One line naming the root error of a failed Train run, e.g. ``FloatingPointError: loss is nan ...``."""
    candidates: list[BaseException] = []
    failures = getattr(exc, "worker_failures", None)
    if isinstance(failures, dict) and failures:
        candidates += [failures[k] for k in sorted(failures)]
    for attr in ("controller_failure", "cause", "__cause__"):
        inner = getattr(exc, attr, None)
        if isinstance(inner, BaseException):
            candidates.append(inner)
    candidates.append(exc)
    for candidate in candidates:
        lines = [m for m in (_ERROR_LINE.match(line) for line in str(candidate).splitlines()) if m]
        # The innermost error is printed last in a traceback; wrappers (RayTaskError...) come first.
        for m in reversed(lines):
            name = m.group(1).rsplit(".", 1)[-1]
            if name not in ("RayTaskError", "WorkerGroupError", "TrainingFailedError", "RayTrainError"):
                return f"{name}: {m.group(2).strip()}"[:500]
    first = candidates[0]
    text = str(first).strip().splitlines()
    return f"{type(first).__name__}: {text[-1] if text else ''}"[:500]


def _trial_storage_dir(storage_uri: str | None = None) -> str:
    """The trial's folder in the sweep folder, or its URI when the sweep lives at ``storage_uri``
    (``tune.get_context().get_trial_dir()`` is a staging folder under /tmp/ray/session_*, gone with the
    cluster and on one node only: checkpoints written there would not outlive it)."""
    from ray import tune

    try:
        import pyarrow.fs
        from ray.train._internal.session import get_storage  # DeveloperAPI

        storage = get_storage()
        if isinstance(storage.storage_filesystem, pyarrow.fs.LocalFileSystem):
            return str(storage.trial_fs_path)
        if storage_uri:
            return f"{storage_uri}/{storage.experiment_dir_name}/{storage.trial_dir_name}"
    except Exception:  # noqa: BLE001
        pass
    return str(tune.get_context().get_trial_dir())


def _trial(config: dict[str, Any]) -> None:
    """The Tune function trainable: splits for this trial's scale, then a Ray Train run reporting to Tune."""
    from ray.tune.integration.ray_train import TuneReportCallback

    from kosent.data import make_splits
    from kosent.ray_train import build_trainer

    trial_dir = _trial_storage_dir(config.get("storage_uri"))
    if not is_uri(trial_dir):
        Path(trial_dir).mkdir(parents=True, exist_ok=True)
    base = from_dict(TrainConfig, config["base"])
    cfg = trial_config(base, config["lr"], config["scale"], config["worker_cpus"], trial_dir, config.get("grid"))
    # A trial restarted after an interruption finds its Train run folder: Train resumes it from the last
    # epoch checkpoint instead of starting over.
    cfg = dataclasses.replace(cfg, resume=exists(f"{trial_dir}/{cfg.name}"))
    delete_file(f"{trial_dir}/{ERROR_FILE}")
    splits = make_splits(cfg.data)
    info = {"config": to_dict(cfg), "sizes": splits.sizes(), "fingerprint": splits.fingerprint,
            "started_at": time.strftime("%Y-%m-%dT%H:%M:%S")}
    write_text(f"{trial_dir}/{TRIAL_FILE}", json.dumps(info, indent=2, ensure_ascii=False))

    trainer = build_trainer(cfg, splits, callbacks=[TuneReportCallback()])
    try:
        result = trainer.fit()
    except Exception as e:
        reason = failure_reason(e)
        write_text(f"{trial_dir}/{ERROR_FILE}", json.dumps({"error": reason}, ensure_ascii=False))
        raise TrialFailed(reason) from e
    done = {"finished_at": time.strftime("%Y-%m-%dT%H:%M:%S"),
            "checkpoint": getattr(getattr(result, "checkpoint", None), "path", None)}
    write_text(f"{trial_dir}/{FINISHED_FILE}", json.dumps(done, indent=2))


def orphaned_placement_groups(address: str | None = None, job_id: str | None = None) -> list[str]:
    """Ids of live placement groups (of ``job_id``, default this job) that held Ray Train workers which are
    all dead: the CPUs of a Train run whose controller was killed. Uses the State API (dashboard on)."""
    import ray
    from ray.util.state import list_actors, list_placement_groups

    address = address or ray.get_runtime_context().gcs_address
    job_id = job_id or ray.get_runtime_context().get_job_id()
    groups = list_placement_groups(address=address, filters=[("state", "=", "CREATED")],
                                   limit=10_000, timeout=10, raise_on_missing_output=False)
    workers = list_actors(address=address, filters=[("class_name", "=", "RayTrainWorker")],
                          limit=10_000, timeout=10, detail=True, raise_on_missing_output=False)
    states: dict[str, list[str]] = {}
    for w in workers:
        if w.placement_group_id:
            states.setdefault(w.placement_group_id, []).append(w.state)
    return [g.placement_group_id for g in groups
            if g.creator_job_id == job_id and states.get(g.placement_group_id)
            and all(s == "DEAD" for s in states[g.placement_group_id])]


class _PlacementGroupJanitor:
    """Removes the placement group of a Train run whose trial Tune stopped (ASHA) or killed.

    Stopping a trial kills its driver, and with it the Train controller, without the controller removing
    its workers' placement group. Ray Train leaves that to a detached cleaner actor that finds the cluster's
    State API by auto-detection, which fails when the dashboard is off *or when more than one Ray instance
    runs on the machine* ("Found multiple active Ray instances"): the CPUs stay reserved and later trials
    wait forever. This Tune callback runs in the sweep's driver, which knows its cluster's address: every
    ``interval_s`` (and when a trial ends) it removes this job's placement groups that held Ray Train
    workers which are all dead. A placement group of a live run always has live (or starting) workers.
    """

    def __init__(self, interval_s: float = 10.0) -> None:
        import ray

        self.address = ray.get_runtime_context().gcs_address
        self.job_id = ray.get_runtime_context().get_job_id()
        self.interval_s = interval_s
        self.removed: list[str] = []
        self._last = 0.0
        self._broken = False

    def sweep(self) -> list[str]:
        if self._broken:
            return []
        import ray
        from ray.util.placement_group import PlacementGroup

        self._last = time.monotonic()
        try:
            orphans = orphaned_placement_groups(self.address, self.job_id)
        except Exception as e:  # noqa: BLE001  (State API down: the dashboard is off or unreachable)
            self._broken = True
            _log(f"warning: cannot query the State API ({type(e).__name__}: {e}); placement groups of "
                 "trials stopped early are left to Ray Train (keep the dashboard on)")
            return []
        for pg_id in orphans:
            ray.util.remove_placement_group(PlacementGroup(ray.PlacementGroupID.from_hex(pg_id)))
        if orphans:
            _log(f"removed {len(orphans)} placement group(s) left by stopped trials")
            self.removed += orphans
        return orphans

    def callback(self):
        from ray.tune import Callback

        janitor = self

        class Janitor(Callback):
            def on_step_end(self, iteration, trials, **info):
                if time.monotonic() - janitor._last > janitor.interval_s:
                    janitor.sweep()

            def on_trial_complete(self, iteration, trials, trial, **info):
                janitor.sweep()

            def __reduce__(self):  # the callback is pickled with the Tuner; rebuild a fresh one on restore
                return (_janitor_callback, ())

        return Janitor()


def _janitor_callback():
    return _PlacementGroupJanitor().callback()


def _trial_dirname(trial: Any) -> str:
    """``<trial id>_lr=5e-05_scale=2[_warmup_ratio=0.1_model=dapt]``: Tune's default name rounds the lr to four
    decimals (5e-05 -> 0.0001). Grid values are shortened; the trial id keeps every name unique."""
    name = f"{trial.trial_id}_lr={float(trial.config['lr']):.3g}_scale={int(trial.config['scale'])}"
    name += "".join(f"_{k}={_slug(k, v)}" for k, v in (trial.config.get("grid") or {}).items())
    return name[:200]


def _trainable(sweep: SweepConfig):
    from ray import tune

    return tune.with_resources(_trial, {"cpu": sweep.driver_cpus})


# --------------------------------------------------------------------------------------------------
# Running
# --------------------------------------------------------------------------------------------------


def sweep_dir(sweep: SweepConfig) -> Path:
    """The sweep's local folder: Tune's experiment folder, or for a URI sweep its local mirror."""
    if not sweep.name:
        raise SweepError("the sweep has no name")
    if is_uri(sweep.storage_path):
        return cache_home() / "remote" / "sweeps" / sweep.name
    return Path(sweep.storage_path).expanduser().resolve() / sweep.name


def sweep_location(sweep: SweepConfig) -> str:
    """Where Tune keeps the sweep: ``<storage_path>/<name>``, a local folder or a URI."""
    if is_uri(sweep.storage_path):
        sweep_dir(sweep)  # checks the name
        return f"{sweep.storage_path.rstrip('/')}/{sweep.name}"
    return str(sweep_dir(sweep))


def _preflight(sweep: SweepConfig, base: TrainConfig) -> None:
    """Fail before any trial starts: a model that cannot load (and the offline e5 folder is built here, once,
    so trials on this node find it), data too small for the largest scale, a trial larger than the cluster."""
    from kosent.data import make_splits
    from kosent.ray_train import check_resources, resolve_model

    for model in dict.fromkeys([base.model, *sweep.grid.get("model", [])]):
        resolve_model(model)
    make_splits(dataclasses.replace(base.data, scale=max(sweep.scales)))
    check_resources(dataclasses.replace(base, cpus_per_worker=worker_cpus(sweep, base)))


def run_sweep(sweep: SweepConfig, base: TrainConfig, callbacks: list | None = None) -> SweepResult:
    """Run (or with ``sweep.resume`` continue) a sweep, then pick, test and publish the best checkpoint.

    ``callbacks`` are extra ``ray.tune.Callback`` objects for the Tune run. Needs ``ray.init`` first.
    """
    import ray
    from ray import tune
    from ray.tune.logger import TBXLoggerCallback
    from ray.tune.schedulers import ASHAScheduler, FIFOScheduler
    from ray.tune.search.basic_variant import BasicVariantGenerator

    if not ray.is_initialized():
        raise SweepError("connect to a Ray cluster first (ray.init(...)); ray_jobs/tune.py does this for you")
    t0 = time.perf_counter()
    if sweep.resume:
        if not sweep.name:
            raise SweepError("resume needs the name of the sweep to resume (and its storage_path)")
        location = sweep_location(sweep)
        if not tune.Tuner.can_restore(location):
            raise SweepError(f"{location}: no Tune experiment to resume there (check --name and --storage-path)")
        stored_sweep, base = load_sweep(location)
        sweep = dataclasses.replace(stored_sweep, name=sweep.name, storage_path=sweep.storage_path, resume=True)
        _log(f"resuming sweep {location}: finished and failed trials are kept, unfinished trials continue")
        tuner = tune.Tuner.restore(
            location, trainable=_trainable(sweep),
            resume_unfinished=True, resume_errored=False, restart_errored=False,
        )
    else:
        base = _absolute(base)
        sweep = dataclasses.replace(sweep, name=sweep.name or f"sweep-{time.strftime('%Y%m%d-%H%M%S')}")
        sweep.validate(base)
        sweep = dataclasses.replace(sweep, grid=_absolute_grid(check_grid(sweep.grid)))
        location = sweep_location(sweep)
        if tune.Tuner.can_restore(location):
            raise SweepError(f"{location} already holds a sweep: resume it (--resume) or choose another --name")
        _preflight(sweep, base)
        if not is_uri(location):
            Path(location).mkdir(parents=True, exist_ok=True)
        _save_sweep(location, sweep, base)
        limit = concurrency(sweep, base)
        if sweep.asha:
            max_t = max_epochs(sweep, base)
            scheduler = ASHAScheduler(
                time_attr="epoch", max_t=max_t, grace_period=min(sweep.grace_period, max_t),
                reduction_factor=sweep.reduction_factor,
                # A trial at its last epoch ends by itself: stopping it would kill its Train run mid-exit.
                stop_last_trials=False,
            )
        else:
            scheduler = FIFOScheduler()
        _log(
            f"sweep {location}: {sweep.num_trials()} trials (lr {sweep.lrs or f'log-uniform {sweep.lr_min}..{sweep.lr_max}'}"
            f" x scale {sweep.scales}{''.join(f' x {k} {v}' for k, v in sweep.grid.items())}), "
            f"{'' if 'epochs' in sweep.grid else f'{base.epochs} epochs each, '}{limit} at a time, "
            f"{'ASHA grace ' + str(sweep.grace_period) if sweep.asha else 'no early stopping'}"
        )
        tuner = tune.Tuner(
            _trainable(sweep),
            param_space=search_space(sweep, base),
            tune_config=tune.TuneConfig(
                metric=METRIC, mode=MODE, scheduler=scheduler, num_samples=sweep.num_samples,
                search_alg=BasicVariantGenerator(max_concurrent=limit, random_state=base.seed),
                trial_dirname_creator=_trial_dirname,
            ),
            run_config=tune.RunConfig(
                name=sweep.name, storage_path=sweep.storage_path if is_uri(location) else str(Path(location).parent),
                failure_config=tune.FailureConfig(max_failures=0, fail_fast=False),
                callbacks=[TBXLoggerCallback(), _janitor_callback(), *(callbacks or [])],
            ),
        )
    # Tracking (kosent.tracking): the sweep is a parent run from here on; its trials become nested runs in
    # finalize. Created after the preflight, so a sweep that cannot start leaves no run behind.
    from kosent import tracking

    run = tracking.start_run(base.tracking, sweep.storage_path, kind="sweep", name=sweep.name,
                             params=tracking.config_params(to_dict(base) | to_dict(sweep)),
                             tags={"kosent.sweep": location, "kosent.resumed": sweep.resume or None})
    with tracking.tracked(run):
        tuner.fit()
        return finalize(location, sweep=sweep, base=base, seconds=time.perf_counter() - t0, run=run)


# --------------------------------------------------------------------------------------------------
# Results
# --------------------------------------------------------------------------------------------------


def _log(msg: str) -> None:
    print(f"[kosent {time.strftime('%H:%M:%S')}] {msg}", flush=True)


def _num(value: Any) -> float | None:
    try:
        f = float(value)
    except (TypeError, ValueError):
        return None
    return None if math.isnan(f) else f


def _history(df: Any) -> list[dict[str, Any]]:
    """Per-epoch rows of a trial's results; a trial restarted after an interruption may repeat epochs."""
    if df is None or len(df) == 0 or "epoch" not in df.columns:
        return []
    by_epoch: dict[int, dict[str, Any]] = {}
    for row in df.to_dict("records"):
        epoch = _num(row.get("epoch"))
        if epoch is not None:
            by_epoch[int(epoch)] = row
    return [by_epoch[e] for e in sorted(by_epoch)]


def collect_trials(path: str | Path, base: TrainConfig, location: str | None = None) -> list[TrialRow]:
    """Every trial of the sweep at ``path``, read back from Tune's experiment state and the trial folders.

    ``location`` is the sweep's URI when ``path`` is its local mirror: Ray reports checkpoint paths without
    their scheme (``bucket/key``), and they are named here by URI again (``s3://bucket/key``)."""
    from ray.tune import ExperimentAnalysis

    analysis = ExperimentAnalysis(str(path), default_metric=METRIC, default_mode=MODE)
    frames = analysis.trial_dataframes
    rows = []
    for trial in analysis.trials:
        trial_path = Path(trial.path) if trial.path else Path(path)
        history = _history(frames.get(trial.trial_id))
        scored = [h for h in history if _num(h.get(METRIC)) is not None]
        best = max(scored, key=lambda h: (_num(h[METRIC]), -int(h["epoch"]))) if scored else None
        epochs_run = int(history[-1]["epoch"]) if history else 0
        error = ""
        if trial.status == "ERROR":  # (a trial stopped by ASHA may have logged the kill of its run: not an error)
            if (trial_path / ERROR_FILE).is_file():
                error = json.loads((trial_path / ERROR_FILE).read_text(encoding="utf-8")).get("error", "")
            error = error or _tune_error(trial_path)
        params = dict(trial.config.get("grid") or {})
        if trial.status == "ERROR":
            outcome = "failed"
        elif trial.status == "TERMINATED":
            finished = (trial_path / FINISHED_FILE).is_file() or epochs_run >= int(params.get("epochs", base.epochs))
            outcome = "completed" if finished else "early_stopped"
        else:
            outcome = "unfinished"
        scale = int(trial.config.get("scale", 1))
        checkpoint = best.get("checkpoint_path") if best else None
        if location and is_uri(location) and isinstance(checkpoint, str) and checkpoint and not is_uri(checkpoint):
            checkpoint = f"{location.split('://', 1)[0]}://{checkpoint.lstrip('/')}"
        rows.append(TrialRow(
            trial_id=trial.trial_id, lr=float(trial.config.get("lr", float("nan"))), scale=scale,
            train_rows=base.data.train_size * scale, epochs_run=epochs_run,
            best_epoch=int(best["epoch"]) if best else None,
            val_macro_f1=_num(best[METRIC]) if best else None,
            val_accuracy=_num(best.get("val_accuracy")) if best else None,
            val_loss=_num(best.get("val_loss")) if best else None,
            train_loss=_num(best.get("train_loss")) if best else None,
            status=trial.status, outcome=outcome, error=error,
            seconds=_num(history[-1].get("time_total_s")) if history else None,
            checkpoint=str(checkpoint) if isinstance(checkpoint, str) and checkpoint else None,
            params=params, path=str(trial_path),
            history=[{k: v for k, v in h.items() if isinstance(v, (int, float)) and not isinstance(v, bool)}
                     for h in history],
            val_metrics={k: v for k, v in (best or {}).items()
                         if (k.startswith("val_") or k == "epoch") and _num(v) is not None},
        ))
    rows.sort(key=lambda r: (r.scale, r.lr, _params_order(r.params), r.trial_id))
    return rows


def _params_order(params: dict[str, Any]) -> tuple:
    """Sorts trials by their grid values (numbers by value, anything else by text; None first)."""
    return tuple((v is not None, 0 if isinstance(v, (int, float)) else 1,
                  v if isinstance(v, (int, float)) else str(v)) for _, v in sorted(params.items()))


def _tune_error(trial_path: Path) -> str:
    """The last ``SomethingError: message`` line of Tune's error.txt for a trial."""
    err = trial_path / "error.txt"
    if not err.is_file():
        return "error (no details recorded)"
    text = err.read_text(encoding="utf-8", errors="replace")
    lines = [m for m in (_ERROR_LINE.match(line) for line in text.splitlines()) if m]
    if lines:
        return f"{lines[-1].group(1).rsplit('.', 1)[-1]}: {lines[-1].group(2).strip()}"[:500]
    return text.strip().splitlines()[-1][:500] if text.strip() else "error"


def _checkpoint_present(checkpoint: str) -> bool:
    if is_uri(checkpoint):
        from kosent.checkpoint import META_FILE

        return exists(f"{checkpoint.rstrip('/')}/{META_FILE}")
    return Path(checkpoint).is_dir()


def _mirror(location: str, local: Path) -> None:
    """Copy a URI sweep into ``local`` without checkpoint folders (``*/epoch_N/...``): what the table, plots
    and trial outcomes are read from. The best checkpoint is read from storage itself."""
    import shutil

    shutil.rmtree(local, ignore_errors=True)
    local.mkdir(parents=True)
    download_tree(location, local, skip=lambda rel: any(re.fullmatch(r"epoch_\d+", part)
                                                        for part in rel.split("/")[:-1]))


def pick_best(rows: list[TrialRow]) -> TrialRow | None:
    """Highest val_macro_f1 among trials that did not fail and whose best checkpoint is on disk;
    ties go to the cheaper trial (smaller scale, then earlier epoch)."""
    usable = [r for r in rows if r.outcome in ("completed", "early_stopped") and r.val_macro_f1 is not None
              and r.checkpoint and _checkpoint_present(r.checkpoint)]
    if not usable:
        return None
    return max(usable, key=lambda r: (r.val_macro_f1, -r.scale, -(r.best_epoch or 0)))


def asha_savings(rows: list[TrialRow], epochs: int, expected_trials: int | None = None) -> dict[str, Any]:
    """Trial-epochs (and training rows processed) run versus the full grid of trials x epochs.

    ``epochs`` is every trial's epochs, except where a trial has its own (an ``epochs`` grid); trials not
    started yet count ``epochs`` (pass the grid's largest)."""
    own = [int(r.params.get("epochs", epochs)) for r in rows]
    run = sum(r.epochs_run for r in rows)
    full = sum(own) + max(0, (expected_trials or 0) - len(rows)) * epochs
    rows_run = sum(r.epochs_run * r.train_rows for r in rows)
    rows_full = sum(e * r.train_rows for e, r in zip(own, rows, strict=True))
    varied = sorted(set(own) | {epochs}) if any("epochs" in r.params for r in rows) else []
    return {
        "trials": max(len(rows), expected_trials or 0),
        "epochs_per_trial": varied if len(varied) > 1 else epochs,
        "trial_epochs_run": run,
        "trial_epochs_full_grid": full,
        "trial_epochs_saved": full - run,
        "saved_fraction": round((full - run) / full, 4) if full else 0.0,
        "train_rows_processed": rows_run,
        "train_rows_full_grid": rows_full,
        "train_rows_saved_fraction": round((rows_full - rows_run) / rows_full, 4) if rows_full else 0.0,
        "early_stopped": sum(r.outcome == "early_stopped" for r in rows),
        "failed": sum(r.outcome == "failed" for r in rows),
        "unfinished": sum(r.outcome == "unfinished" for r in rows) + max(0, (expected_trials or 0) - len(rows)),
    }


def _fmt(value: Any) -> str:
    if value is None:
        return ""
    if isinstance(value, float):
        return f"{value:.4g}" if abs(value) < 1e-2 or abs(value) >= 1e4 else f"{value:.4f}"
    return str(value)


def write_table(rows: list[TrialRow], folder: str | Path, grid_keys: Iterable[str] | None = None) -> tuple[Path, Path]:
    """``trials.csv`` (full precision) and ``trials.md`` (rounded) in ``folder``, with a column per grid field
    (``grid_keys``, default: those the rows have)."""
    folder = Path(folder)
    csv_path, md_path = folder / "trials.csv", folder / "trials.md"
    columns = table_columns(_grid_keys(rows) if grid_keys is None else grid_keys)
    with csv_path.open("w", newline="", encoding="utf-8") as f:
        writer = csv.DictWriter(f, fieldnames=columns)
        writer.writeheader()
        for r in rows:
            writer.writerow({k: ("" if v is None else v) for k, v in r.table_values(columns).items()})
    md_path.write_text(markdown_table(rows, [c for c in columns if c != "checkpoint"]) + "\n", encoding="utf-8")
    return csv_path, md_path


def _track_trials(run: Any, rows: list[TrialRow], sweep: SweepConfig, base: TrainConfig) -> dict[str, Any]:
    """A nested MLflow run per trial (``kosent.tracking.track_trials``); trial id -> run ({} untracked)."""
    if run is None:
        return {}
    from kosent import tracking

    def config_of(row: TrialRow) -> dict[str, Any]:  # what the trial ran with, as its kosent_trial.json says
        trial_file = Path(row.path) / TRIAL_FILE
        if trial_file.is_file():
            return json.loads(trial_file.read_text(encoding="utf-8"))["config"]
        return to_dict(trial_config(base, row.lr, row.scale, worker_cpus(sweep, base), row.path, row.params))

    return tracking.safely("log the trials", tracking.track_trials, run, rows, config_of) or {}


def markdown_table(rows: list[TrialRow], columns: list[str] | None = None) -> str:
    columns = columns or [c for c in table_columns(_grid_keys(rows)) if c != "checkpoint"]
    lines = ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
    for r in rows:
        values = r.table_values(columns)
        cells = [_fmt(values[c]).replace("|", "\\|").replace("\n", " ") for c in columns]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def finalize(path: str | Path, sweep: SweepConfig, base: TrainConfig, seconds: float = 0.0,
             run: Any = None) -> SweepResult:
    """Table, plots, and (for a sweep that is not interrupted) the test score and the manifest.

    ``path`` is the sweep folder or its URI; for a URI the outputs are made in the local mirror
    (:func:`sweep_dir`) and uploaded next to the trials. ``run`` is the sweep's ``kosent.tracking.Run``
    (None: not tracked): each trial becomes a run nested in it, and the manifest names the best trial's."""
    from kosent import plots

    location = str(path)
    remote = is_uri(location)
    if remote:
        path = sweep_dir(sweep)
        _mirror(location, path)
    path = Path(path)

    def where(local: Path | str) -> str:  # a file of the mirror, named where it lives in storage
        return f"{location}/{Path(local).relative_to(path).as_posix()}" if remote else str(local)

    rows = collect_trials(path, base, location=location if remote else None)
    expected = sweep.num_trials()
    # Trials are generated lazily (max_concurrent_trials at a time): an interrupted sweep may not know
    # all of its trials yet, so fewer trials than the search space holds also means unfinished.
    interrupted = any(r.outcome == "unfinished" for r in rows) or len(rows) < expected
    table_csv, table_md = write_table(rows, path, grid_keys=list(sweep.grid))
    plot_dir = path / "plots"
    plot_paths = [
        plots.plot_f1_vs_scale(rows, plot_dir / "val_macro_f1_vs_scale.png"),
        plots.plot_trial_curves(rows, plot_dir / "learning_curves.png"),
    ]
    for r in rows:  # one figure per trial: train vs validation loss, accuracy, macro F1
        if r.history:
            plot_paths.append(plots.plot_learning_curves(
                r.history, plot_dir / "trials" / f"{r.trial_id}.png",
                title=f"trial {r.trial_id}: lr {r.lr:.3g}, scale {r.scale}"
                      f"{''.join(f', {k} {_slug(k, v)}' for k, v in r.params.items())} ({r.outcome})"))
    savings = asha_savings(rows, max_epochs(sweep, base), expected_trials=expected)
    (path / "asha.json").write_text(json.dumps(savings, indent=2), encoding="utf-8")
    trial_runs = _track_trials(run, rows, sweep, base)
    best = None if interrupted else pick_best(rows)
    manifest, test_metrics, val_metrics = None, {}, {}
    if interrupted:
        _log(f"sweep interrupted: {savings['unfinished']} of {expected} trial(s) unfinished; "
             "resume with resume=True "
             f"(ray_jobs/tune.py --resume --name {path.name} --storage-path {location.rsplit('/', 1)[0]})")
    elif best is None:
        _log("no trial produced a usable checkpoint: no manifest written")
    else:
        from kosent.data import make_splits
        from kosent.evaluate import evaluate_checkpoint
        from kosent.manifest import MANIFEST_FILE, write_manifest

        splits = make_splits(dataclasses.replace(base.data, scale=best.scale))
        _log(f"best trial {best.trial_id} (lr {best.lr:g}, scale {best.scale}, "
             f"{''.join(f'{k} {v}, ' for k, v in best.params.items())}epoch {best.best_epoch}, "
             f"val_macro_f1 {best.val_macro_f1:.4f}); scoring it once on {len(splits.test)} test rows")
        test_metrics = evaluate_checkpoint(best.checkpoint, list(splits.test["text"]), list(splits.test["label"]))
        val_metrics = dict(best.val_metrics)
        manifest = write_manifest(
            path / MANIFEST_FILE, best.checkpoint, val_metrics=val_metrics, test_metrics=test_metrics,
            source="tune",
            extra={
                "trial": {"trial_id": best.trial_id, "lr": best.lr, "scale": best.scale, "grid": best.params,
                          "train_rows": best.train_rows, "epoch": best.best_epoch, "path": where(best.path)},
                "sweep": {"name": path.name, "path": location, "metric": METRIC, "mode": MODE,
                          "trials": len(rows), "search_space": to_dict(sweep), "asha": savings,
                          "table": where(table_csv)},
            } | ({"mlflow": trial_runs[best.trial_id].lineage()} if best.trial_id in trial_runs else {}),
        )
    if remote:
        from kosent.manifest import MANIFEST_FILE

        for local in (table_csv, table_md, path / "asha.json", path / "plots", manifest):
            if local is not None and Path(local).exists():
                upload(local, where(local))
        manifest = f"{location}/{MANIFEST_FILE}" if manifest is not None else None
        _log(f"sweep outputs uploaded to {location} (local copy: {path})")
    if run is not None:
        from kosent import tracking

        tracking.safely("log the sweep's results", tracking.finish_sweep, run, trial_runs, rows, path,
                        best_trial_id=best.trial_id if best else None, test_metrics=test_metrics,
                        interrupted=interrupted)
    return SweepResult(
        path=path, trials=rows, best=best, manifest=manifest, val_metrics=val_metrics, test_metrics=test_metrics,
        table_csv=table_csv, table_md=table_md, plots=plot_paths, tensorboard_dir=path, savings=savings,
        interrupted=interrupted, seconds=seconds, location=location,
    )


__all__ = [
    "RESERVED_GRID_KEYS", "SweepConfig", "SweepError", "SweepResult", "TrialFailed", "TrialRow", "asha_savings",
    "check_grid", "collect_trials", "concurrency", "failure_reason", "finalize", "load_sweep", "markdown_table",
    "max_epochs", "orphaned_placement_groups", "parse_grid", "pick_best", "run_sweep", "search_space",
    "sweep_dir", "sweep_location", "table_columns", "trial_config", "write_table",
]
