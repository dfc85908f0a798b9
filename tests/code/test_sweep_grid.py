"""The sweep's ``grid`` (extra TrainConfig fields swept alongside lr and scale), without a cluster:
checking and parsing it, the trial configs and folder names it makes, and the trials table's columns."""

from __future__ import annotations

import csv
import dataclasses
import types

import pytest

from kosent.config import DataConfig, TrainConfig
from kosent.sweep import (
    TABLE_COLUMNS,
    SweepConfig,
    SweepError,
    TrialRow,
    asha_savings,
    check_grid,
    markdown_table,
    max_epochs,
    parse_grid,
    table_columns,
    trial_config,
    trials_that_fit,
    write_table,
)

FIELDS = {f.name for f in dataclasses.fields(TrainConfig)}


def _base(**changes) -> TrainConfig:
    return TrainConfig(**({"model": "tiny", "epochs": 2, "data": DataConfig(train_size=200)} | changes))


def _row(**kw) -> TrialRow:
    values = dict(trial_id="t", lr=1e-3, scale=1, train_rows=200, epochs_run=2, best_epoch=2, val_macro_f1=0.5,
                  val_accuracy=0.5, val_loss=0.7, train_loss=0.7, status="TERMINATED", outcome="completed",
                  error="", seconds=1.0, checkpoint=None)
    return TrialRow(**(values | kw))


def test_parse_grid_reads_each_value_as_its_field_type():
    grid = parse_grid(["warmup_ratio=0,0.1", "epochs=2, 3", "model=tiny,/data/runs/dapt-e5", "max_steps=none,10"])
    assert grid == {"warmup_ratio": [0.0, 0.1], "epochs": [2, 3], "model": ["tiny", "/data/runs/dapt-e5"],
                    "max_steps": [None, 10]}
    assert [type(v) for v in grid["warmup_ratio"]] == [float, float] and [type(v) for v in grid["epochs"]] == [int, int]
    assert parse_grid([]) == {}


@pytest.mark.parametrize(("items", "message"), [
    (["warmup=0.1"], "unknown TrainConfig field 'warmup'; known: .*warmup_ratio"),
    (["lr=1e-4,2e-4"], "'lr' cannot be in the grid: use lrs"),
    (["scale=1,2"], "'scale' cannot be in the grid: use scales"),
    (["num_workers=1,2"], "'num_workers' cannot be in the grid"),
    (["epochs=two"], r"epochs='two': epochs takes an int"),
    (["epochs=none"], r"epochs='none': epochs takes an int"),
    (["warmup_ratio=0.1,abc"], r"warmup_ratio='abc': warmup_ratio takes a float"),
    (["max_steps=ten"], r"max_steps='ten': max_steps takes an int or none"),
    (["epochs"], "'epochs' is not KEY=V1,V2"),
    (["=1,2"], "is not KEY=V1,V2"),
    (["epochs=2,"], "has an empty value"),
    (["epochs=2", "epochs=3"], "epochs given twice"),
    (["epochs=2,2"], "epochs lists 2 twice"),
])
def test_parse_grid_names_the_bad_key_or_value(items, message):
    with pytest.raises(SweepError, match=message):
        parse_grid(items)


def test_bool_values_parse_from_true_and_false():
    from kosent.sweep.config import _parse_value

    assert [_parse_value("flag", v, bool) for v in ("true", "False")] == [True, False]
    with pytest.raises(SweepError, match="flag takes true or false"):
        _parse_value("flag", "yes", bool)
    with pytest.raises(SweepError, match="put it under grid: in the --sweep-config YAML"):
        _parse_value("labels", "x", dict[str, int])


def test_check_grid_types_values_and_refuses_what_the_sweep_sets_itself():
    assert check_grid({"warmup_ratio": (0, 0.2), "model": ["tiny"]}) == {"warmup_ratio": [0.0, 0.2], "model": ["tiny"]}
    for grid, message in (
        ({"epochs": [2.5]}, r"epochs=2.5 is a float; epochs takes an int"),
        ({"epochs": [True]}, "epochs=True is a bool"),
        ({"warmup_ratio": ["0.1"]}, "warmup_ratio='0.1' is a str; warmup_ratio takes a float"),
        ({"model": [None]}, "model cannot be None"),
        ({"epochs": []}, "epochs needs a non-empty list"),
        ({"epochs": 3}, "epochs needs a non-empty list"),
        ({"data": [{}]}, "'data' cannot be in the grid"),
        ({"storage_path": ["a"]}, "'storage_path' cannot be in the grid"),
        (["epochs"], "grid must be a mapping"),
    ):
        with pytest.raises(SweepError, match=message):
            check_grid(grid)
    assert check_grid({"max_steps": [None, 5]}) == {"max_steps": [None, 5]}
    # SweepConfig.validate checks the grid too.
    with pytest.raises(SweepError, match="unknown TrainConfig field 'nope'"):
        SweepConfig(grid={"nope": [1]}).validate(_base())


@pytest.mark.parametrize(("key", "values"), [("layer_decay", [1.0, 0.8]), ("pooling", ["cls", "mean"])])
def test_the_new_training_fields_can_be_swept(key, values):
    assert key in FIELDS
    grid = parse_grid([f"{key}={','.join(str(v) for v in values)}"])
    assert grid == {key: values}
    cfg = trial_config(_base(), 1e-4, 1, 0.99, "/tmp/t", "t1", {key: values[1]})
    assert getattr(cfg, key) == values[1]


def test_trial_config_num_trials_and_asha_max_t():
    base = _base()
    cfg = trial_config(base, 3e-4, 2, 0.99, "/tmp/sweep/train_runs", "t1", {"warmup_ratio": 0.2, "epochs": 3})
    assert (cfg.lr, cfg.data.scale, cfg.warmup_ratio, cfg.epochs, cfg.name) == (3e-4, 2, 0.2, 3, "t1")
    assert (cfg.weight_decay, cfg.model) == (base.weight_decay, "tiny")  # everything else from the base
    assert trial_config(base, 3e-4, 2, 0.99, "/tmp/t", "t1") == trial_config(base, 3e-4, 2, 0.99, "/tmp/t", "t1", {})
    sweep = SweepConfig(lrs=[1e-4, 2e-4], scales=[1, 2], grid={"epochs": [2, 4], "warmup_ratio": [0.0, 0.1, 0.2]})
    assert sweep.num_trials() == 2 * 2 * 2 * 3
    assert SweepConfig(lrs=[1e-4], scales=[1]).num_trials() == 1
    assert max_epochs(sweep, base) == 4 and max_epochs(SweepConfig(), base) == 2


def test_trials_that_fit_count_cpus_and_gpu_shares():
    sweep = SweepConfig(lrs=[1e-4, 2e-4, 5e-4], scales=[1, 2, 3])  # 9 trials
    cpu = TrainConfig(num_workers=2, cpus_per_worker=1.0)
    assert trials_that_fit({"CPU": 16.0}, sweep, cpu) == 8
    assert trials_that_fit({"CPU": 1.0}, sweep, cpu) == 1  # never 0: the sweep still runs, one trial at a time
    gpu = TrainConfig(num_workers=1, cpus_per_worker=2.0, use_gpu=True)
    assert trials_that_fit({"CPU": 16.0, "GPU": 1.0}, sweep, gpu) == 1  # a whole GPU per trial
    quarter = dataclasses.replace(gpu, gpus_per_worker=0.25)
    assert trials_that_fit({"CPU": 16.0, "GPU": 1.0}, sweep, quarter) == 4  # four trials share the GPU
    assert trials_that_fit({"CPU": 6.0, "GPU": 1.0}, sweep, quarter) == 3  # then the CPUs are the limit
    assert trials_that_fit({"CPU": 64.0, "GPU": 8.0}, sweep, quarter) == 9  # never more than the sweep has
    with pytest.raises(SweepError, match="gpus_per_worker"):
        SweepConfig(grid={"gpus_per_worker": [0.5, 1.0]}).validate(gpu)


def test_grid_values_outside_a_fields_limits_fail_before_any_trial():
    with pytest.raises(SweepError, match=r"grid: epochs=0: Input should be greater than or equal to 1"):
        check_grid({"epochs": [2, 0]})
    with pytest.raises(SweepError, match=r"grid: warmup_ratio=1.5"):
        parse_grid(["warmup_ratio=0.1,1.5"])


def test_search_space_and_trial_folder_names():
    from kosent.sweep import search_space
    from kosent.sweep.trial import trial_dirname

    sweep = SweepConfig(lrs=[5e-5], scales=[1], grid={"warmup_ratio": [0.0, 0.2], "model": ["tiny"]}, name="s",
                        storage_path="/tmp/sweeps")
    space = search_space(sweep, _base())
    assert space["runs"] == "/tmp/sweeps/s/train_runs"  # each trial's Train run: <runs>/<trial id>
    assert space["grid"] == {"warmup_ratio": {"grid_search": [0.0, 0.2]}, "model": {"grid_search": ["tiny"]}}
    assert "grid" not in search_space(SweepConfig(lrs=[5e-5], scales=[1], name="s"), _base())  # old sweeps: as before

    def name(config):
        return trial_dirname(types.SimpleNamespace(trial_id="ab12_00001", config=config))

    assert name({"lr": 5e-5, "scale": 2}) == "ab12_00001_lr=5e-05_scale=2"
    folder = name({"lr": 5e-5, "scale": 1, "grid": {"warmup_ratio": 0.1, "model": "/runs/pretrain/dapt e5 (v2)/",
                                                    "max_steps": None}})
    assert folder == "ab12_00001_lr=5e-05_scale=1_warmup_ratio=0.1_model=dapt_e5_v2_max_steps=None"
    assert name({"lr": 1e-4, "scale": 1, "grid": {"model": "klue/bert-base"}}).endswith("_model=bert-base")


def test_table_has_a_column_per_grid_field_only_when_the_sweep_has_a_grid(tmp_path):
    assert table_columns() == TABLE_COLUMNS
    assert table_columns(["warmup_ratio"])[:4] == ["trial_id", "lr", "scale", "warmup_ratio"]
    plain = [_row(trial_id="a")]
    assert markdown_table(plain).splitlines()[0] == "| " + " | ".join(c for c in TABLE_COLUMNS if c != "checkpoint") + " |"
    rows = [_row(trial_id="a", params={"warmup_ratio": 0.0, "max_steps": None}),
            _row(trial_id="b", params={"warmup_ratio": 0.2, "max_steps": 5})]
    csv_path, md_path = write_table(rows, tmp_path, grid_keys=["warmup_ratio", "max_steps"])
    with csv_path.open(encoding="utf-8") as f:
        table = list(csv.DictReader(f))
    assert list(table[0])[:5] == ["trial_id", "lr", "scale", "warmup_ratio", "max_steps"]
    assert [(r["warmup_ratio"], r["max_steps"]) for r in table] == [("0.0", ""), ("0.2", "5")]
    assert md_path.read_text(encoding="utf-8").startswith("| trial_id | lr | scale | warmup_ratio | max_steps | train_rows")


def test_asha_savings_counts_each_trials_own_epochs():
    rows = [_row(trial_id="a", epochs_run=2, params={"epochs": 2}),
            _row(trial_id="b", epochs_run=1, outcome="early_stopped", params={"epochs": 4})]
    s = asha_savings(rows, epochs=4)
    assert (s["trial_epochs_run"], s["trial_epochs_full_grid"], s["trial_epochs_saved"]) == (3, 6, 3)
    assert s["epochs_per_trial"] == [2, 4] and s["train_rows_full_grid"] == 6 * 200
    # A trial not started yet counts the grid's largest epochs.
    assert asha_savings(rows, epochs=4, expected_trials=3)["trial_epochs_full_grid"] == 10
    assert asha_savings([_row()], epochs=2)["epochs_per_trial"] == 2


def test_job_grid_flag_and_yaml(tmp_path, tune_job):
    job = tune_job
    args = job.build_parser().parse_args(["--lrs", "1e-4", "--grid", "warmup_ratio=0,0.1", "epochs=2,3",
                                          "--grid", "model=tiny", "--epochs", "5"])
    assert job.sweep_config_from_args(args).grid == {"warmup_ratio": [0.0, 0.1], "epochs": [2, 3], "model": ["tiny"]}
    # grid: in the sweep YAML; a flag replaces the YAML's values for its key only.
    sweep_yaml = tmp_path / "sweep.yaml"
    sweep_yaml.write_text("grid:\n  warmup_ratio: [0.0, 0.2]\n  weight_decay: [0, 0.01]\n", encoding="utf-8")
    args = job.build_parser().parse_args(["--sweep-config", str(sweep_yaml), "--grid", "weight_decay=0.1"])
    assert job.sweep_config_from_args(args).grid == {"warmup_ratio": [0.0, 0.2], "weight_decay": [0.1]}
    args = job.build_parser().parse_args(["--sweep-config", str(sweep_yaml)])
    assert job.sweep_config_from_args(args).grid == {"warmup_ratio": [0.0, 0.2], "weight_decay": [0.0, 0.01]}
    args = job.build_parser().parse_args(["--grid", "epochs=2,x"])
    with pytest.raises(SweepError, match="epochs='x': epochs takes an int"):
        job.sweep_config_from_args(args)
    sweep_yaml.write_text("grid:\n  lr: [0.1]\n", encoding="utf-8")
    with pytest.raises(SweepError, match="'lr' cannot be in the grid"):
        job.sweep_config_from_args(job.build_parser().parse_args(["--sweep-config", str(sweep_yaml)]))
    # Bad settings exit with status 2 before any cluster starts.
    assert job.main(["--grid", "epochs=2,x"]) == 2


def test_local_folders_in_the_grid_become_absolute(tmp_path, monkeypatch):
    """Trials run in their own folders: a relative model (or teacher) folder must not be read from there."""
    from kosent.config import with_absolute_paths
    from kosent.sweep.config import absolute_grid

    (tmp_path / "dapt").mkdir()
    (tmp_path / "tiny").mkdir()
    monkeypatch.chdir(tmp_path)
    grid = absolute_grid({"model": ["tiny", "dapt", "klue/bert-base"], "epochs": [2]})
    assert grid == {"model": ["tiny", str(tmp_path / "dapt"), "klue/bert-base"], "epochs": [2]}
    assert with_absolute_paths(_base(model="dapt")).model == str(tmp_path / "dapt")
    if "teacher" in FIELDS:
        assert absolute_grid({"teacher": [None, "dapt"]}) == {"teacher": [None, str(tmp_path / "dapt")]}
        assert with_absolute_paths(_base(teacher="dapt")).teacher == str(tmp_path / "dapt")


def test_scaling_plot_draws_one_line_per_lr_and_grid_setting(tmp_path, monkeypatch):
    import matplotlib.figure

    from kosent import plots

    rows = [_row(trial_id=f"t{i}", scale=s, params={"pooling": p}, val_macro_f1=0.5 + i / 100)
            for i, (s, p) in enumerate([(1, "cls"), (2, "cls"), (1, "mean"), (2, "mean")])]
    shown: list[str] = []
    real_savefig = matplotlib.figure.Figure.savefig

    def savefig(fig, *args, **kwargs):  # read the legend of the real figure, then save it as usual
        shown.extend(t.get_text() for t in fig.axes[0].get_legend().get_texts())
        return real_savefig(fig, *args, **kwargs)

    monkeypatch.setattr(matplotlib.figure.Figure, "savefig", savefig)
    path = plots.plot_f1_vs_scale(rows, tmp_path / "scale.png")
    assert path.stat().st_size > 0
    assert shown == ["lr 0.001, pooling=cls", "lr 0.001, pooling=mean"]
