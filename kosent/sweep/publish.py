"""The end of a sweep: the trials table and plots, the best trial scored once on the test split, the
manifest Serve reads, the outputs uploaded beside a URI sweep, and the trials as MLflow runs."""

from __future__ import annotations

import dataclasses
import json
import logging
from pathlib import Path
from typing import Any

from kosent.config import TrainConfig, to_dict
from kosent.metrics import BEST_METRIC, BEST_MODE
from kosent.storage import copy_files, is_uri
from kosent.sweep.config import (
    TRIAL_FILE,
    SweepConfig,
    max_epochs,
    slug,
    sweep_dir,
    trial_config,
    worker_cpus,
)
from kosent.sweep.results import (
    SweepResult,
    TrialRow,
    asha_savings,
    collect_trials,
    mirror,
    pick_best,
    write_table,
)

log = logging.getLogger(__name__)


def _track_trials(run: Any, rows: list[TrialRow], sweep: SweepConfig, base: TrainConfig) -> dict[str, Any]:
    """A nested MLflow run per trial (``kosent.tracking.track_trials``); trial id -> run ({} untracked)."""
    if run is None:
        return {}
    from kosent import tracking

    def config_of(row: TrialRow) -> dict[str, Any]:  # what the trial ran with, as its kosent_trial.json says
        trial_file = Path(row.run_dir) / TRIAL_FILE
        if trial_file.is_file():
            return json.loads(trial_file.read_text(encoding="utf-8"))["config"]
        return to_dict(trial_config(base, row.lr, row.scale, worker_cpus(sweep, base), Path(row.run_dir).parent,
                                    row.trial_id, row.params))

    return tracking.safely("log the trials", tracking.track_trials, run, rows, config_of) or {}


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
        mirror(location, path)
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
                      f"{''.join(f', {k} {slug(k, v)}' for k, v in r.params.items())} ({r.outcome})"))
    savings = asha_savings(rows, max_epochs(sweep, base), expected_trials=expected)
    (path / "asha.json").write_text(json.dumps(savings, indent=2), encoding="utf-8")
    trial_runs = _track_trials(run, rows, sweep, base)
    best = None if interrupted else pick_best(rows)
    manifest, test_metrics, val_metrics = None, {}, {}
    if interrupted:
        log.info(f"sweep interrupted: {savings['unfinished']} of {expected} trial(s) unfinished; "
                 "resume with resume=True "
                 f"(ray_jobs/tune.py --resume --name {path.name} --storage-path {location.rsplit('/', 1)[0]})")
    elif best is None:
        log.info("no trial produced a usable checkpoint: no manifest written")
    else:
        from kosent.data import make_splits
        from kosent.evaluate import evaluate_checkpoint
        from kosent.manifest import MANIFEST_FILE, write_manifest
        from kosent.ray_train import run_scorer

        splits = make_splits(dataclasses.replace(base.data, scale=best.scale))
        log.info(f"best trial {best.trial_id} (lr {best.lr:g}, scale {best.scale}, "
                 f"{''.join(f'{k} {v}, ' for k, v in best.params.items())}epoch {best.best_epoch}, "
                 f"val_macro_f1 {best.val_macro_f1:.4f}); scoring it once on {len(splits.test)} test rows")
        # On the cluster's actors, as many as a trial has Train workers, or in this process (score_on).
        scorer = run_scorer(base, best.checkpoint, "test split")
        test_metrics = evaluate_checkpoint(best.checkpoint, list(splits.test["text"]), list(splits.test["label"]),
                                           score=scorer)
        val_metrics = dict(best.val_metrics)
        manifest = write_manifest(
            path / MANIFEST_FILE, best.checkpoint, val_metrics=val_metrics, test_metrics=test_metrics,
            source="tune",
            extra={
                "trial": {"trial_id": best.trial_id, "lr": best.lr, "scale": best.scale, "grid": best.params,
                          "train_rows": best.train_rows, "epoch": best.best_epoch, "path": where(best.path)},
                "sweep": {"name": path.name, "path": location, "metric": BEST_METRIC, "mode": BEST_MODE,
                          "trials": len(rows), "search_space": to_dict(sweep), "asha": savings,
                          "table": where(table_csv)},
            } | ({"mlflow": trial_runs[best.trial_id].lineage()} if best.trial_id in trial_runs else {}),
        )
    if remote:
        from kosent.manifest import MANIFEST_FILE

        for local in (table_csv, table_md, path / "asha.json", path / "plots", manifest):
            if local is not None and Path(local).exists():
                copy_files(local, where(local))
        manifest = f"{location}/{MANIFEST_FILE}" if manifest is not None else None
        log.info(f"sweep outputs uploaded to {location} (local copy: {path})")
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
