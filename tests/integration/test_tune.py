"""Ray Tune sweeps (kosent.sweep) on the session cluster: tiny model, small real NSMC slices.

The cheap tests at the top need no cluster; the ``ray`` ones run real sweeps (2 CPUs, dashboard on).
"""

from __future__ import annotations

import csv
import os
import signal
import time
from pathlib import Path

import pytest
from needs import missing  # tests/needs.py

from kosent.config import DataConfig, TrainConfig
from kosent.sweep import (
    SweepConfig,
    SweepError,
    TrialRow,
    asha_savings,
    failure_reason,
    markdown_table,
    pick_best,
    trial_config,
    worker_cpus,
)


def _base(**changes) -> TrainConfig:
    data = DataConfig(source="nsmc", train_size=200, val_size=100, test_size=100)
    values = dict(model="tiny", epochs=2, batch_size=16, eval_batch_size=64, max_length=48, max_grad_norm=1e9,
                  keep_checkpoints=2, data=data)
    return TrainConfig(**(values | changes))


def _row(**kw) -> TrialRow:
    values = dict(trial_id="t", lr=1e-3, scale=1, train_rows=200, epochs_run=2, best_epoch=2, val_macro_f1=0.5,
                  val_accuracy=0.5, val_loss=0.7, train_loss=0.7, status="TERMINATED", outcome="completed",
                  error="", seconds=1.0, checkpoint=None)
    return TrialRow(**(values | kw))


# --------------------------------------------------------------------------------------------------
# No cluster
# --------------------------------------------------------------------------------------------------


def test_sweep_config_validation_and_trial_config():
    base = _base()
    SweepConfig().validate(base)
    assert SweepConfig(lrs=[1e-4, 2e-4], scales=[1, 2, 3], num_samples=2).num_trials() == 12
    assert SweepConfig(lrs=None, scales=[1, 2], num_samples=3).num_trials() == 6
    with pytest.raises(ValueError, match="scales"):  # the declaration refuses a fractional scale
        SweepConfig(scales=[1.5])
    for bad in (SweepConfig(lrs=[]), SweepConfig(lrs=[-1.0]), SweepConfig(scales=[0]),
                SweepConfig(lrs=None, lr_min=1e-3, lr_max=1e-4), SweepConfig(grace_period=0),
                SweepConfig(driver_cpus=0.0), SweepConfig(max_concurrent_trials=0)):
        with pytest.raises(SweepError):
            bad.validate(base)
    # The driver's 0.01 CPU comes off the worker: a 1-worker x 1-CPU trial costs exactly one CPU.
    assert worker_cpus(SweepConfig(), base) == pytest.approx(0.99)
    cfg = trial_config(base, 3e-4, 4, 0.99, "/tmp/sweep/train_runs", "ab12_00003")
    assert (cfg.lr, cfg.data.scale, cfg.cpus_per_worker) == (3e-4, 4, 0.99)
    assert (cfg.storage_path, cfg.name) == ("/tmp/sweep/train_runs", "ab12_00003")  # named by the trial id
    assert (cfg.data.train_size, cfg.data.val_size, cfg.data.test_size) == (200, 100, 100)


def test_failure_reason_finds_the_root_error():
    class WorkerGroupError(RuntimeError):
        def __init__(self, failures):
            super().__init__("Training failed due to worker errors")
            self.worker_failures = failures

    nested = RuntimeError(
        "ray::RayTrainWorker.run_train_fn() (pid=1, ip=127.0.0.1)\n"
        "  File \"kosent/train.py\", line 210, in train_loop\n"
        "    raise FloatingPointError(...)\n"
        "FloatingPointError: loss is nan at epoch 1 step 3: lr 1000000.0 diverged"
    )
    reason = failure_reason(WorkerGroupError({0: nested}))
    assert reason == "FloatingPointError: loss is nan at epoch 1 step 3: lr 1000000.0 diverged"
    assert failure_reason(ValueError("plain")) == "ValueError: plain"


def test_pick_best_savings_and_table(tmp_path):
    good = tmp_path / "ckpt"
    good.mkdir()
    rows = [
        _row(trial_id="a", lr=1e-3, scale=1, val_macro_f1=0.70, checkpoint=str(good)),
        _row(trial_id="b", lr=1e-3, scale=2, val_macro_f1=0.80, checkpoint=str(tmp_path / "gone")),  # not on disk
        _row(trial_id="c", lr=1e6, scale=1, epochs_run=0, best_epoch=None, val_macro_f1=None, status="ERROR",
             outcome="failed", error="FloatingPointError: loss is nan"),
        _row(trial_id="d", lr=1e-4, scale=2, train_rows=400, epochs_run=1, val_macro_f1=0.65,
             outcome="early_stopped", checkpoint=str(good)),
    ]
    assert pick_best(rows).trial_id == "a"
    s = asha_savings(rows, epochs=2)
    assert (s["trial_epochs_run"], s["trial_epochs_full_grid"], s["trial_epochs_saved"]) == (5, 8, 3)
    assert (s["early_stopped"], s["failed"]) == (1, 1)
    assert s["train_rows_processed"] == 2 * 200 + 2 * 200 + 0 + 1 * 400
    table = markdown_table(rows)
    assert table.splitlines()[0].startswith("| trial_id | lr | scale |")
    assert "FloatingPointError: loss is nan" in table and len(table.splitlines()) == 2 + len(rows)


def test_job_flags(tmp_path, tune_job):
    job = tune_job
    sweep_yaml = tmp_path / "sweep.yaml"
    sweep_yaml.write_text("scales: [1, 3]\ngrace_period: 2\n", encoding="utf-8")
    args = job.build_parser().parse_args([
        "--sweep-config", str(sweep_yaml), "--lrs", "1e-4", "3e-4", "--max-concurrent-trials", "1",
        "--no-asha", "--name", "s1", "--storage-path", str(tmp_path), "--train-size", "300", "--epochs", "3",
        "--model", "tiny", "--seed", "7", "--split-seed", "3",
    ])
    sweep = job.sweep_config_from_args(args)
    assert (sweep.lrs, sweep.scales, sweep.grace_period, sweep.asha) == ([1e-4, 3e-4], [1, 3], 2, False)
    assert (sweep.max_concurrent_trials, sweep.name, sweep.storage_path, sweep.resume) == (1, "s1", str(tmp_path), False)
    from kosent.cli import config_from_args

    base = config_from_args(args)
    assert (base.model, base.epochs, base.data.train_size) == ("tiny", 3, 300)
    assert (base.seed, base.data.split_seed) == (7, 3)
    # A range without a grid samples learning rates log-uniformly.
    args = job.build_parser().parse_args(["--lr-min", "1e-5", "--lr-max", "1e-3", "--num-samples", "4", "--resume"])
    sweep = job.sweep_config_from_args(args)
    assert (sweep.lrs, sweep.lr_min, sweep.lr_max, sweep.num_samples, sweep.resume) == (None, 1e-5, 1e-3, 4, True)


# --------------------------------------------------------------------------------------------------
# Real sweeps on the session cluster
# --------------------------------------------------------------------------------------------------


def _interrupt_callback():
    from ray import tune

    class InterruptAfterFirstTrial(tune.Callback):
        """Ctrl+C after the first trial finishes (SIGUSR1: Tune's own stop signal, not pytest's SIGINT).
        Fires once per test session: the Tuner pickles its callbacks and rebuilds them on restore."""

        def on_trial_complete(self, iteration, trials, trial, **info):
            if not _INTERRUPTED:
                _INTERRUPTED.append(trial.trial_id)
                os.kill(os.getpid(), signal.SIGUSR1)

        def __reduce__(self):
            return (_interrupt_callback, ())

    return InterruptAfterFirstTrial()


_INTERRUPTED: list[str] = []


def _no_orphaned_placement_groups(within_s: float = 30.0) -> list[str]:
    from kosent.sweep import orphaned_placement_groups

    deadline = time.monotonic() + within_s
    while (orphans := orphaned_placement_groups()) and time.monotonic() < deadline:
        time.sleep(2)
    return orphans


@pytest.mark.ray
@pytest.mark.timeout(600)
def test_sweep_early_stops_publishes_the_best_and_records_a_diverged_trial(ray_cluster, tiny_ready, tmp_path):
    """Three trials one after another: lr 1e-3 runs both epochs; lr 3e-3 scores lower after epoch 1 and
    ASHA stops it (its CPUs must come back, or the next trial would wait forever); lr 1e6 (gradient
    clipping off) diverges to a NaN loss: FloatingPointError, recorded, and the sweep goes on.
    The GRU baseline ("rnn") is used because it learns within one epoch of 200 reviews; the tiny BERT
    predicts one class for every lr at this size (macro F1 0.333 everywhere), so ASHA would stop nothing."""
    from kosent.manifest import read_manifest
    from kosent.predict import Predictor
    from kosent.sweep import run_sweep

    t0 = time.perf_counter()
    sweep = SweepConfig(lrs=[1e-3, 3e-3, 1e6], scales=[1], grace_period=1, max_concurrent_trials=1,
                        name="e2e", storage_path=str(tmp_path))
    result = run_sweep(sweep, _base(model="rnn"))
    print(f"\n3-trial sweep: {time.perf_counter() - t0:.0f} s\n{markdown_table(result.trials)}\n{result.savings}")

    assert not result.interrupted and [r.lr for r in result.trials] == [1e-3, 3e-3, 1e6]
    good, weak, diverged = result.trials
    assert (diverged.status, diverged.outcome, diverged.epochs_run) == ("ERROR", "failed", 0)
    assert diverged.error.startswith("FloatingPointError: loss is nan"), diverged.error
    assert (good.outcome, good.epochs_run, good.error) == ("completed", 2, "")
    assert (weak.outcome, weak.epochs_run) == ("early_stopped", 1), "ASHA should stop the weaker trial at its rung"
    assert weak.val_macro_f1 < good.val_macro_f1
    for row in (good, weak):
        assert row.train_rows == 200 and Path(row.checkpoint).is_dir()
        assert Path(row.checkpoint).is_relative_to(tmp_path / "e2e")  # not Ray's temporary session folder
    assert Path(weak.path).name == f"{weak.trial_id}_lr=0.003_scale=1"
    assert _no_orphaned_placement_groups() == []

    # The manifest names the best trial's best checkpoint, scored once on the untouched test split.
    assert result.best.trial_id == good.trial_id and result.manifest == tmp_path / "e2e" / "manifest.json"
    manifest = read_manifest(result.manifest)
    assert manifest["source"] == "tune" and manifest["checkpoint"] == str(Path(good.checkpoint).resolve())
    assert manifest["val_metrics"]["val_macro_f1"] == pytest.approx(good.val_macro_f1)
    assert manifest["val_metrics"]["epoch"] == good.best_epoch
    assert manifest["test_metrics"]["test_size"] == 100 and 0 <= manifest["test_metrics"]["test_macro_f1"] <= 1
    assert (manifest["trial"]["lr"], manifest["trial"]["scale"], manifest["sweep"]["trials"]) == (1e-3, 1, 3)
    assert manifest["config"]["lr"] == 1e-3 and manifest["config"]["data"]["scale"] == 1
    preds = Predictor.from_checkpoint(manifest["checkpoint"]).predict(["정말 재밌어요", "최악의 영화"])
    assert len(preds) == 2 and all(p.label in manifest["label_names"] for p in preds)

    # Table, plots, TensorBoard logs, ASHA accounting.
    with result.table_csv.open(encoding="utf-8") as f:
        table = list(csv.DictReader(f))
    assert [r["outcome"] for r in table] == ["completed", "early_stopped", "failed"]
    assert "FloatingPointError" in result.table_md.read_text(encoding="utf-8")
    for plot in result.plots:
        assert plot.is_file() and plot.read_bytes()[:4] == b"\x89PNG"
    assert {p.name for p in result.plots[:2]} == {"val_macro_f1_vs_scale.png", "learning_curves.png"}
    assert len(list(result.path.glob("*/events.out.tfevents.*"))) == 3, "TensorBoard event files per trial"
    s = result.savings
    assert (s["trial_epochs_run"], s["trial_epochs_full_grid"], s["early_stopped"], s["failed"]) == (3, 6, 1, 1)


@pytest.mark.ray
@pytest.mark.timeout(600)
def test_interrupted_sweep_resumes_without_rerunning_finished_trials(ray_cluster, tiny_ready, tmp_path):
    from kosent.manifest import read_manifest
    from kosent.sweep import run_sweep

    t0 = time.perf_counter()
    sweep = SweepConfig(lrs=[3e-3], scales=[1, 2], max_concurrent_trials=1, asha=False, name="resume",
                        storage_path=str(tmp_path))
    first = run_sweep(sweep, _base(), callbacks=[_interrupt_callback()])
    t1 = time.perf_counter()
    assert first.interrupted and first.manifest is None
    done = [r for r in first.trials if r.outcome == "completed"]
    # Trials are generated one at a time here: the second may not even exist yet.
    assert len(done) == 1 and first.savings["unfinished"] == 1 and len(first.trials) <= 2
    before = {name: (Path(folder) / name).read_bytes()
              for folder, name in ((done[0].path, "result.json"), (done[0].run_dir, "kosent_trial.json"))}

    with pytest.raises(SweepError, match="already holds a sweep"):
        run_sweep(sweep, _base())
    resumed = run_sweep(SweepConfig(name="resume", storage_path=str(tmp_path), resume=True), TrainConfig())
    t2 = time.perf_counter()
    print(f"\ninterrupted run {t1 - t0:.0f} s, resumed run {t2 - t1:.0f} s\n{markdown_table(resumed.trials)}")

    assert not resumed.interrupted and [r.outcome for r in resumed.trials] == ["completed", "completed"]
    # The finished trial was not run again: its results and start record are byte for byte the same.
    assert {name: (Path(folder) / name).read_bytes() for folder, name in
            ((done[0].path, "result.json"), (done[0].run_dir, "kosent_trial.json"))} == before
    assert resumed.trials[0].trial_id == done[0].trial_id or resumed.trials[1].trial_id == done[0].trial_id
    assert all(r.epochs_run == 2 for r in resumed.trials)
    assert read_manifest(resumed.manifest)["sweep"]["trials"] == 2
    # The resumed sweep used the stored settings, not the (default) TrainConfig passed in.
    assert all(r.train_rows in (200, 400) for r in resumed.trials)

    # Resuming a finished sweep runs nothing.
    again = run_sweep(SweepConfig(name="resume", storage_path=str(tmp_path), resume=True), TrainConfig())
    assert [r.trial_id for r in again.trials] == [r.trial_id for r in resumed.trials]
    assert {name: (Path(folder) / name).read_bytes() for folder, name in
            ((done[0].path, "result.json"), (done[0].run_dir, "kosent_trial.json"))} == before


@pytest.mark.ray
@pytest.mark.timeout(600)
def test_sweep_over_a_grid_of_warmup_ratios(ray_cluster, tiny_ready, tmp_path):
    """``grid`` sweeps a TrainConfig field alongside lr and scale: two trials (warmup 0.0 and 0.2, one lr,
    one scale, side by side on the two CPUs), each trained with its own value, a table column for it, and the
    manifest naming the best trial's value. Resuming the finished sweep keeps all of that."""
    import json

    from kosent.checkpoint import read_meta
    from kosent.manifest import read_manifest
    from kosent.sweep import run_sweep

    t0 = time.perf_counter()
    sweep = SweepConfig(lrs=[3e-3], scales=[1], grid={"warmup_ratio": [0.0, 0.2]}, name="grid",
                        storage_path=str(tmp_path))
    result = run_sweep(sweep, _base(epochs=1))
    print(f"\n2-trial grid sweep: {time.perf_counter() - t0:.0f} s\n{markdown_table(result.trials)}")

    assert not result.interrupted and len(result.trials) == 2
    assert [r.params for r in result.trials] == [{"warmup_ratio": 0.0}, {"warmup_ratio": 0.2}]
    for row in result.trials:
        ratio = row.params["warmup_ratio"]
        assert (row.outcome, row.epochs_run, row.lr) == ("completed", 1, 3e-3)
        assert Path(row.path).name == f"{row.trial_id}_lr=0.003_scale=1_warmup_ratio={ratio:.3g}"
        # The trial's Train run is named by its trial id, in the sweep's train_runs folder.
        assert Path(row.run_dir) == tmp_path / "grid" / "train_runs" / row.trial_id
        assert Path(row.checkpoint).parent == Path(row.run_dir)
        trial_file = json.loads((Path(row.run_dir) / "kosent_trial.json").read_text(encoding="utf-8"))
        assert trial_file["config"]["warmup_ratio"] == ratio and trial_file["config"]["lr"] == 3e-3
        assert read_meta(row.checkpoint)["config"]["warmup_ratio"] == ratio  # what the model was trained with

    with result.table_csv.open(encoding="utf-8") as f:
        table = list(csv.DictReader(f))
    assert list(table[0])[:4] == ["trial_id", "lr", "scale", "warmup_ratio"]
    assert sorted(float(r["warmup_ratio"]) for r in table) == [0.0, 0.2]
    assert "| warmup_ratio |" in result.table_md.read_text(encoding="utf-8")

    manifest = read_manifest(result.manifest)
    best = result.best
    assert manifest["trial"]["trial_id"] == best.trial_id and manifest["trial"]["grid"] == best.params
    assert manifest["config"]["warmup_ratio"] == best.params["warmup_ratio"]
    assert manifest["sweep"]["search_space"]["grid"] == {"warmup_ratio": [0.0, 0.2]}
    assert result.summary()["best"]["grid"] == best.params
    assert (result.savings["trials"], result.savings["trial_epochs_full_grid"]) == (2, 2)

    # Resuming the finished sweep runs nothing and keeps the grid in the table and manifest.
    again = run_sweep(SweepConfig(name="grid", storage_path=str(tmp_path), resume=True), TrainConfig())
    assert [(r.trial_id, r.params) for r in again.trials] == [(r.trial_id, r.params) for r in result.trials]
    assert read_manifest(again.manifest)["trial"]["grid"] == again.best.params
    assert "| warmup_ratio |" in again.table_md.read_text(encoding="utf-8")


@pytest.mark.timeout(900)
def test_sweep_of_gemma_ko_over_frozen_layers(ray_cluster, nsmc_path, tmp_path):
    """gemma-ko in a Tune sweep (``--grid model=gemma-ko frozen_layers=22,23``): each trial trains the Gemma
    classifier with its own frozen depth, side by side on the two CPUs, and the best checkpoint is a Gemma
    checkpoint that predicts."""
    from kosent.checkpoint import read_meta
    from kosent.models import building, gemma
    from kosent.predict import Predictor
    from kosent.sweep import run_sweep

    try:
        gemma.pull()
    except building.DownloadError as e:
        missing(f"gemma-ko unavailable: {e}")
    sweep = SweepConfig(lrs=[5e-5], scales=[1], grid={"model": ["gemma-ko"], "frozen_layers": [22, 23]},
                        name="gemma-grid", storage_path=str(tmp_path))
    result = run_sweep(sweep, _base(epochs=1, max_steps=2, max_length=32, eval_batch_size=32, threads=1))
    assert not result.interrupted and len(result.trials) == 2
    assert sorted(r.params["frozen_layers"] for r in result.trials) == [22, 23]
    for row in result.trials:
        assert row.outcome == "completed", row.error
        config = read_meta(row.checkpoint)["config"]
        assert (config["model"], config["frozen_layers"]) == ("gemma-ko", row.params["frozen_layers"])
    labels = Predictor.from_checkpoint(result.best.checkpoint).predict(["최고의 영화", "시간 낭비"])
    assert {p.label for p in labels} <= {"negative", "positive"}
