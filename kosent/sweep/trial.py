"""One trial: the Tune function trainable that runs a Ray Train run for its ``(lr, scale, grid)`` values,
the one-line reason of a failed trial, and the callback that frees the resources of stopped trials."""

from __future__ import annotations

import dataclasses
import json
import logging
import re
import time
from pathlib import Path
from typing import Any

from kosent.config import TrainConfig, from_dict, to_dict, utc_now
from kosent.storage import delete_file, exists, is_uri, write_text
from kosent.sweep.config import (
    ERROR_FILE,
    FINISHED_FILE,
    TRIAL_FILE,
    SweepConfig,
    TrialFailed,
    slug,
    trial_config,
)

log = logging.getLogger(__name__)

# --------------------------------------------------------------------------------------------------
# The trial
# --------------------------------------------------------------------------------------------------

ERROR_LINE = re.compile(r"^\s*((?:[A-Za-z_][\w.]*\.)?[A-Za-z_]\w*(?:Error|Exception|Interrupt)): ?(.*)$")


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
        lines = [m for m in (ERROR_LINE.match(line) for line in str(candidate).splitlines()) if m]
        # The innermost error is printed last in a traceback; wrappers (RayTaskError...) come first.
        for m in reversed(lines):
            name = m.group(1).rsplit(".", 1)[-1]
            if name not in ("RayTaskError", "WorkerGroupError", "TrainingFailedError", "RayTrainError"):
                return f"{name}: {m.group(2).strip()}"[:500]
    first = candidates[0]
    text = str(first).strip().splitlines()
    return f"{type(first).__name__}: {text[-1] if text else ''}"[:500]


def run_folder(config: dict[str, Any], trial_id: str) -> str:
    """The Train run folder of a trial: ``<sweep>/train_runs/<trial id>``, a local folder or a URI. The Train run
    is named by the trial id Tune gives (as in Ray's Train-inside-Tune examples), in the sweep's own storage:
    a trial's working folder is a staging copy on one node that goes with the cluster."""
    return f"{config['runs']}/{trial_id}"


def _trial(config: dict[str, Any]) -> None:
    """The Tune function trainable: splits for this trial's scale, then a Ray Train run reporting to Tune."""
    from ray import tune
    from ray.tune.integration.ray_train import TuneReportCallback

    from kosent.data import make_splits
    from kosent.logs import setup as setup_logging
    from kosent.ray_train import SNAPSHOT_FILE, build_trainer

    setup_logging(config.get("log_level"))  # the sweep driver's level, here and in the trial's Train workers
    trial_id = tune.get_context().get_trial_id()
    run_dir = run_folder(config, trial_id)
    base = from_dict(TrainConfig, config["base"])
    cfg = trial_config(base, config["lr"], config["scale"], config["worker_cpus"], config["runs"], trial_id,
                       config.get("grid"))
    # A trial restarted after an interruption finds its Train run's checkpoints: Train resumes it from the last
    # epoch checkpoint instead of starting over.
    cfg = dataclasses.replace(cfg, resume=exists(f"{run_dir}/{SNAPSHOT_FILE}"))
    if not is_uri(run_dir):
        Path(run_dir).mkdir(parents=True, exist_ok=True)
    delete_file(f"{run_dir}/{ERROR_FILE}")
    splits = make_splits(cfg.data)
    info = {"config": to_dict(cfg), "sizes": splits.sizes(), "fingerprint": splits.fingerprint,
            "started_at": utc_now()}
    write_text(f"{run_dir}/{TRIAL_FILE}", json.dumps(info, indent=2, ensure_ascii=False))

    trainer = build_trainer(cfg, splits, callbacks=[TuneReportCallback()])
    try:
        result = trainer.fit()
    except Exception as e:
        reason = failure_reason(e)
        write_text(f"{run_dir}/{ERROR_FILE}", json.dumps({"error": reason}, ensure_ascii=False))
        raise TrialFailed(reason) from e
    done = {"finished_at": utc_now(), "checkpoint": getattr(getattr(result, "checkpoint", None), "path", None)}
    write_text(f"{run_dir}/{FINISHED_FILE}", json.dumps(done, indent=2))


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
            log.warning(f"cannot query the State API ({type(e).__name__}: {e}); placement groups of "
                        "trials stopped early are left to Ray Train (keep the dashboard on)")
            return []
        for pg_id in orphans:
            ray.util.remove_placement_group(PlacementGroup(ray.PlacementGroupID.from_hex(pg_id)))
        if orphans:
            log.info(f"removed {len(orphans)} placement group(s) left by stopped trials")
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
                return (janitor_callback, ())

        return Janitor()


def janitor_callback():
    return _PlacementGroupJanitor().callback()


def trial_dirname(trial: Any) -> str:
    """``<trial id>_lr=5e-05_scale=2[_warmup_ratio=0.1_model=dapt]``: Tune's default name rounds the lr to four
    decimals (5e-05 -> 0.0001). Grid values are shortened; the trial id keeps every name unique."""
    name = f"{trial.trial_id}_lr={float(trial.config['lr']):.3g}_scale={int(trial.config['scale'])}"
    name += "".join(f"_{k}={slug(k, v)}" for k, v in (trial.config.get("grid") or {}).items())
    return name[:200]


def trainable(sweep: SweepConfig):
    from ray import tune

    return tune.with_resources(_trial, {"cpu": sweep.driver_cpus})
