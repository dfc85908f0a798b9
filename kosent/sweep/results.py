"""A sweep's results read back from Tune and the trial folders: the trials table, the best trial, what ASHA
saved."""

from __future__ import annotations

import csv
import json
import math
import re
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from kosent.checkpoint import META_FILE
from kosent.config import TrainConfig
from kosent.metrics import BEST_METRIC, BEST_MODE
from kosent.storage import copy_files, exists, is_uri
from kosent.sweep.config import ERROR_FILE, FINISHED_FILE, TABLE_COLUMNS, TRAIN_RUNS
from kosent.sweep.trial import ERROR_LINE


def table_columns(grid_keys: Iterable[str] = ()) -> list[str]:
    """TABLE_COLUMNS with one column per grid field after lr and scale (a sweep without a grid: unchanged)."""
    i = TABLE_COLUMNS.index("scale") + 1
    return TABLE_COLUMNS[:i] + list(grid_keys) + TABLE_COLUMNS[i:]


def _grid_keys(rows: Iterable[TrialRow]) -> list[str]:
    return list(dict.fromkeys(k for r in rows for k in r.params))


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
    path: str = ""  # Tune's trial folder (results, TensorBoard events, error.txt)
    run_dir: str = ""  # the trial's Train run: checkpoints, kosent_trial.json, kosent_finished.json, kosent_error.json
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

    analysis = ExperimentAnalysis(str(path), default_metric=BEST_METRIC, default_mode=BEST_MODE)
    frames = analysis.trial_dataframes
    rows = []
    for trial in analysis.trials:
        trial_path = Path(trial.path) if trial.path else Path(path)
        run_dir = Path(path) / TRAIN_RUNS / trial.trial_id
        history = _history(frames.get(trial.trial_id))
        scored = [h for h in history if _num(h.get(BEST_METRIC)) is not None]
        best = max(scored, key=lambda h: (_num(h[BEST_METRIC]), -int(h["epoch"]))) if scored else None
        epochs_run = int(history[-1]["epoch"]) if history else 0
        error = ""
        if trial.status == "ERROR":  # (a trial stopped by ASHA may have logged the kill of its run: not an error)
            if (run_dir / ERROR_FILE).is_file():
                error = json.loads((run_dir / ERROR_FILE).read_text(encoding="utf-8")).get("error", "")
            error = error or _tune_error(trial_path)
        params = dict(trial.config.get("grid") or {})
        if trial.status == "ERROR":
            outcome = "failed"
        elif trial.status == "TERMINATED":
            finished = (run_dir / FINISHED_FILE).is_file() or epochs_run >= int(params.get("epochs", base.epochs))
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
            val_macro_f1=_num(best[BEST_METRIC]) if best else None,
            val_accuracy=_num(best.get("val_accuracy")) if best else None,
            val_loss=_num(best.get("val_loss")) if best else None,
            train_loss=_num(best.get("train_loss")) if best else None,
            status=trial.status, outcome=outcome, error=error,
            seconds=_num(history[-1].get("time_total_s")) if history else None,
            checkpoint=str(checkpoint) if isinstance(checkpoint, str) and checkpoint else None,
            params=params, path=str(trial_path), run_dir=str(run_dir),
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
    lines = [m for m in (ERROR_LINE.match(line) for line in text.splitlines()) if m]
    if lines:
        return f"{lines[-1].group(1).rsplit('.', 1)[-1]}: {lines[-1].group(2).strip()}"[:500]
    return text.strip().splitlines()[-1][:500] if text.strip() else "error"


def _checkpoint_present(checkpoint: str) -> bool:
    if is_uri(checkpoint):
        return exists(f"{checkpoint.rstrip('/')}/{META_FILE}")
    return Path(checkpoint).is_dir()


def mirror(location: str, local: Path) -> None:
    """Copy a URI sweep into ``local`` without checkpoint folders (``*/epoch_N/...``): what the table, plots
    and trial outcomes are read from. The best checkpoint is read from storage itself."""
    import shutil

    shutil.rmtree(local, ignore_errors=True)
    local.mkdir(parents=True)
    copy_files(location, local, skip=lambda rel: any(re.fullmatch(r"epoch_\d+", part)
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




def markdown_table(rows: list[TrialRow], columns: list[str] | None = None) -> str:
    columns = columns or [c for c in table_columns(_grid_keys(rows)) if c != "checkpoint"]
    lines = ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
    for r in rows:
        values = r.table_values(columns)
        cells = [_fmt(values[c]).replace("|", "\\|").replace("\n", " ") for c in columns]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)

