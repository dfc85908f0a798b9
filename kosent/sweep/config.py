"""What a sweep is: its settings (``SweepConfig``), the grid of extra TrainConfig fields, and each trial's
TrainConfig and Tune search space. No Ray at import time; nothing here runs a trial."""

from __future__ import annotations

import dataclasses
import json
import math
import re
import types
import typing
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from pydantic import Field

from kosent.config import TrainConfig, absolute_local, cache_home, config_dataclass, from_dict, to_dict
from kosent.logs import level_from_env
from kosent.storage import absolute, exists, is_uri, join, read_text, write_text

SWEEP_FILE = "sweep.json"
TRIAL_FILE = "kosent_trial.json"  # written by a trial when it starts: its config and split sizes
FINISHED_FILE = "kosent_finished.json"  # written by a trial whose training ran to its end
ERROR_FILE = "kosent_error.json"  # written by a trial that failed: the reason in one line
TRAIN_RUNS = "train_runs"  # <sweep>/train_runs/<trial id>: each trial's Train run, with the three files above
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


@config_dataclass
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

    lrs: list[float] | None = Field(default_factory=lambda: [2e-5, 5e-5, 1e-4],
                                    description="learning rates to try (a grid); without it, --num-samples rates "
                                    "are drawn log-uniformly from --lr-min..--lr-max")
    lr_min: float = Field(1e-5, description="lower bound of the log-uniform learning rates (when --lrs is not given)")
    lr_max: float = Field(3e-4, description="upper bound of the log-uniform learning rates (when --lrs is not given)")
    num_samples: int = Field(1, description="learning rates drawn per scale (or repeats of the whole grid with --lrs)")
    scales: list[int] = Field(default_factory=lambda: [1, 2, 3, 4, 5],
                              description="dataset scale factors to try: each trial trains on train_size x scale rows")
    grid: dict[str, list[Any]] = Field(default_factory=dict, description="more TrainConfig fields to sweep, "
                                       "KEY=V1,V2 (e.g. warmup_ratio=0.0,0.1 pooling=cls,mean): every combination "
                                       "is a trial")
    asha: bool = Field(True, description="stop weak trials early with ASHA on val_macro_f1")
    grace_period: int = Field(1, description="epochs every trial runs before ASHA may stop it")
    reduction_factor: float = Field(2.0, description="ASHA keeps 1/reduction_factor of the trials at each rung")
    max_concurrent_trials: int | None = Field(None, description="trials run at once (default: as many as the "
                                              "cluster's CPUs, and GPUs, hold)")
    driver_cpus: float = Field(0.01, description="CPU of each trial's driver (taken off its workers' CPUs)")
    name: str | None = Field(None, description="the sweep's folder under --storage-path (default: sweep-<UTC time>); "
                             "with --resume, the sweep to continue")
    storage_path: str = Field("runs/sweeps", description="folder or URI (s3://bucket/sweeps) holding the sweep: "
                              "trials, their Train runs, the table, plots and manifest")
    resume: bool = Field(False, description="continue the interrupted sweep --name in --storage-path (every other "
                         "setting comes from its sweep.json)")

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
        for v in checked:  # within the field's limits (epochs >= 1, warmup_ratio <= 1 ...): fail now, not in a trial
            try:
                dataclasses.replace(TrainConfig(), **{key: v})
            except ValueError as e:
                reason = str(e).splitlines()[2].strip() if len(str(e).splitlines()) > 2 else str(e)
                raise SweepError(f"grid: {key}={v!r}: {reason.split(' [type=')[0]}") from None
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


def slug(key: str, value: Any) -> str:
    """A grid value as a short, folder-name safe string: a model path becomes its (last) folder name."""
    if isinstance(value, float):
        text = f"{value:.3g}"
    elif isinstance(value, str) and (key == "model" or "/" in value):
        text = value.rstrip("/").rsplit("/", 1)[-1] or value
    else:
        text = str(value)
    return re.sub(r"[^A-Za-z0-9._-]+", "_", text).strip("._")[:32] or "_"


# --------------------------------------------------------------------------------------------------
# Configs
# --------------------------------------------------------------------------------------------------


# TrainConfig fields that may name a local folder (a model, a teacher checkpoint): made absolute for trials.
_PATH_FIELDS = ("model", "teacher")


def absolute_grid(grid: dict[str, list[Any]]) -> dict[str, list[Any]]:
    """Local folders in the grid, made absolute like the base config's (trials run in their own folders)."""
    from kosent.models import ALIASES

    return {k: [absolute_local(v, keep=ALIASES) for v in values] if k in _PATH_FIELDS else values
            for k, values in grid.items()}


def sweep_dir(sweep: SweepConfig) -> Path:
    """The sweep's local folder: Tune's experiment folder, or for a URI sweep its local mirror."""
    if not sweep.name:
        raise SweepError("the sweep has no name")
    if is_uri(sweep.storage_path):
        return cache_home() / "remote" / "sweeps" / sweep.name
    return Path(absolute(sweep.storage_path)) / sweep.name


def sweep_location(sweep: SweepConfig) -> str:
    """Where Tune keeps the sweep: ``<storage_path>/<name>``, a local folder or a URI."""
    sweep_dir(sweep)  # checks the name
    return join(absolute(sweep.storage_path), sweep.name)


def trial_config(base: TrainConfig, lr: float, scale: int, worker_cpus: float, runs: str | Path, trial_id: str,
                 grid: dict[str, Any] | None = None) -> TrainConfig:
    """The TrainConfig of one trial: ``base`` with the trial's lr, scale and grid values (one value per grid
    field); its Train run is ``<runs>/<trial_id>`` (``runs``: the sweep's ``train_runs`` folder or URI)."""
    return dataclasses.replace(
        base,
        **(grid or {}),
        lr=float(lr),
        cpus_per_worker=worker_cpus,
        storage_path=absolute(runs),
        name=trial_id,
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
        "runs": f"{sweep_location(sweep)}/{TRAIN_RUNS}",
        "log_level": level_from_env(),
    }


def save_sweep(location: str | Path, sweep: SweepConfig, base: TrainConfig) -> None:
    doc = {"sweep": to_dict(sweep), "base": to_dict(base)}
    write_text(f"{location}/{SWEEP_FILE}", json.dumps(doc, indent=2, ensure_ascii=False))


def load_sweep(path: str | Path) -> tuple[SweepConfig, TrainConfig]:
    """The SweepConfig and base TrainConfig a sweep folder (or sweep URI) was started with."""
    doc_path = f"{path}/{SWEEP_FILE}"
    if not exists(doc_path):
        raise SweepError(f"{path}: no {SWEEP_FILE}; not a kosent sweep folder")
    doc = json.loads(read_text(doc_path))
    return from_dict(SweepConfig, doc["sweep"]), from_dict(TrainConfig, doc["base"])

