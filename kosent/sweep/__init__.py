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

Each trial's Train run is named by its trial id and lives in the sweep: ``<sweep>/train_runs/<trial id>``
(checkpoints ``epoch_N/``, and ``kosent_trial.json``, ``kosent_finished.json`` or ``kosent_error.json``); Tune's
trial folder beside it holds the results and TensorBoard events.

Storage: ``storage_path`` is a local (or shared, mounted) folder, or a URI (``s3://bucket/sweeps``) that
every node of a multi-node cluster reaches. For a URI, Tune keeps the sweep there, each trial's Train
run writes its checkpoints there, and at the end the sweep's files (checkpoints left out) are copied to a
local mirror, ``$KOSENT_HOME/remote/sweeps/<name>``, where the table, plots and manifest are made and
then uploaded beside the trials; the manifest names the best checkpoint by its URI.

The package: :mod:`~kosent.sweep.config` (``SweepConfig``, the grid, each trial's TrainConfig and search
space), :mod:`~kosent.sweep.trial` (the trial function), :mod:`~kosent.sweep.run` (``run_sweep``),
:mod:`~kosent.sweep.results` (the trials table, the best trial, ASHA's savings) and
:mod:`~kosent.sweep.publish` (plots, the test score, the manifest). Import from ``kosent.sweep``.

Library code: it needs a connected Ray cluster (``ray_jobs/tune.py`` starts or joins one) and never
parses arguments.
"""

from kosent.sweep.config import (
    RESERVED_GRID_KEYS,
    TABLE_COLUMNS,
    TRAIN_RUNS,
    SweepConfig,
    SweepError,
    TrialFailed,
    check_grid,
    load_sweep,
    max_epochs,
    parse_grid,
    search_space,
    sweep_dir,
    sweep_location,
    trial_config,
    trials_that_fit,
    worker_cpus,
)
from kosent.sweep.publish import finalize
from kosent.sweep.results import (
    SweepResult,
    TrialRow,
    asha_savings,
    collect_trials,
    markdown_table,
    pick_best,
    table_columns,
    write_table,
)
from kosent.sweep.run import run_sweep
from kosent.sweep.trial import failure_reason, orphaned_placement_groups

__all__ = [
    "RESERVED_GRID_KEYS", "TABLE_COLUMNS", "TRAIN_RUNS", "SweepConfig", "SweepError", "SweepResult", "TrialFailed",
    "TrialRow",
    "asha_savings", "check_grid", "collect_trials", "failure_reason", "finalize", "load_sweep", "markdown_table",
    "max_epochs", "orphaned_placement_groups", "parse_grid", "pick_best", "run_sweep", "search_space",
    "sweep_dir", "sweep_location", "table_columns", "trial_config", "trials_that_fit", "worker_cpus", "write_table",
]
