"""Running a sweep: where it lives, the checks before any trial starts, and the Tune run itself."""

from __future__ import annotations

import dataclasses
import logging
import time
from pathlib import Path

from kosent.config import TrainConfig, to_dict, with_absolute_paths
from kosent.metrics import BEST_METRIC, BEST_MODE
from kosent.storage import is_uri
from kosent.sweep.config import (
    SweepConfig,
    SweepError,
    absolute_grid,
    check_grid,
    concurrency,
    load_sweep,
    max_epochs,
    save_sweep,
    search_space,
    sweep_location,
    worker_cpus,
)
from kosent.sweep.publish import finalize
from kosent.sweep.results import SweepResult
from kosent.sweep.trial import janitor_callback, trainable, trial_dirname

log = logging.getLogger(__name__)

# --------------------------------------------------------------------------------------------------
# Running
# --------------------------------------------------------------------------------------------------


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
        log.info(f"resuming sweep {location}: finished and failed trials are kept, unfinished trials continue")
        tuner = tune.Tuner.restore(
            location, trainable=trainable(sweep),
            resume_unfinished=True, resume_errored=False, restart_errored=False,
        )
    else:
        base = with_absolute_paths(base)  # trials run in their own folders
        sweep = dataclasses.replace(sweep, name=sweep.name or f"sweep-{time.strftime('%Y%m%d-%H%M%S', time.gmtime())}")
        sweep.validate(base)
        sweep = dataclasses.replace(sweep, grid=absolute_grid(check_grid(sweep.grid)))
        location = sweep_location(sweep)
        if tune.Tuner.can_restore(location):
            raise SweepError(f"{location} already holds a sweep: resume it (--resume) or choose another --name")
        _preflight(sweep, base)
        if not is_uri(location):
            Path(location).mkdir(parents=True, exist_ok=True)
        save_sweep(location, sweep, base)
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
        log.info(
            f"sweep {location}: {sweep.num_trials()} trials (lr {sweep.lrs or f'log-uniform {sweep.lr_min}..{sweep.lr_max}'}"
            f" x scale {sweep.scales}{''.join(f' x {k} {v}' for k, v in sweep.grid.items())}), "
            f"{'' if 'epochs' in sweep.grid else f'{base.epochs} epochs each, '}{limit} at a time, "
            f"{'ASHA grace ' + str(sweep.grace_period) if sweep.asha else 'no early stopping'}"
        )
        tuner = tune.Tuner(
            trainable(sweep),
            param_space=search_space(sweep, base),
            tune_config=tune.TuneConfig(
                metric=BEST_METRIC, mode=BEST_MODE, scheduler=scheduler, num_samples=sweep.num_samples,
                search_alg=BasicVariantGenerator(max_concurrent=limit, random_state=base.seed),
                trial_dirname_creator=trial_dirname,
            ),
            run_config=tune.RunConfig(
                name=sweep.name, storage_path=sweep.storage_path if is_uri(location) else str(Path(location).parent),
                failure_config=tune.FailureConfig(max_failures=0, fail_fast=False),
                callbacks=[TBXLoggerCallback(), janitor_callback(), *(callbacks or [])],
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

