"""The paper plan's settings and its results document, without a cluster."""

from __future__ import annotations

from pathlib import Path

import pytest

from kosent.paper import PaperConfig, PaperError, PaperResult, Record
from kosent.paper_report import BEGIN, END, render, write_block

INFO = {"cpu": "Test CPU", "cores": 2, "memory_gib": 8.0, "gpus": [], "python": "3.11", "torch": "2", "ray": "2",
        "transformers": "5", "load_average": [1.0, 1.0, 1.0], "ray_cluster": {"nodes": 1, "cpus": 2.0, "gpus": 0.0}}


@pytest.mark.parametrize(("change", "match"), [
    ({"experiments": ["baseline"]}, "experiments must be some of"),
    ({"scales": [0, 1]}, "scales must be distinct integers >= 1"),
    ({"scales": [1, 1]}, "scales must be distinct"),
    ({"kmhas_negative_fraction": 1.0}, r"kmhas_negative_fraction must be in \[0.5, 1\)"),
    ({"models": ["rnn", "rnn"]}, "models lists a model twice"),
    ({"max_points": 5}, "max_points must be at least 10"),
    ({"val_size": 0}, "val_size must be at least 1"),
    ({"lrs": {"rnn": -1.0}}, "learning rates must be positive"),
    ({"storage_path": "s3://bucket/runs"}, "URIs are not supported"),
    ({"frozen_layers": {"gemma-ko": 12}}, "give a transformer model this job trains"),  # not in any list
    ({"frozen_layers": {"rnn": 1}}, "give a transformer model"),
    ({"models": ["gemma-ko"], "frozen_layers": {"gemma-ko": -1}}, "a count >= 0"),
])
def test_bad_settings_name_the_setting(change, match):
    with pytest.raises(PaperError, match=match):
        PaperConfig(**change).validate()


def test_defaults_are_the_paper_and_smaller_runs_say_why():
    assert PaperConfig().reduced() == []
    PaperConfig().validate()
    why = PaperConfig(train_size=1000, test_size=1000, max_steps=20, scales=[1, 2], kmhas_epochs=1).reduced()
    assert len(why) == 5 and "train_size 1,000 (paper 10,000)" in why
    cfg = PaperConfig(models=["tfidf", "rnn", "e5-small-ko", "tiny"], lrs={"rnn": 1e-3})
    assert cfg.embedding_models() == ["e5-small-ko", "tiny"]
    assert cfg.lr("rnn") == 1e-3 and cfg.lr("e5-small-ko") == 5e-5 and cfg.lr("klue/bert-base") == 5e-5
    gemma = PaperConfig(models=["tfidf", "gemma-ko"], scale_models=["tfidf"], kmhas_models=["tfidf"],
                        frozen_layers={"gemma-ko": 12})
    gemma.validate()
    data = gemma.data()
    assert gemma.train_config("gemma-ko", data, Path("runs"), "g", 2).frozen_layers == 12
    assert gemma.train_config("tfidf", data, Path("runs"), "t", 2).frozen_layers == 0


def test_block_replaces_only_its_markers(tmp_path):
    md = tmp_path / "RESULTS.md"
    write_block(md, f"{BEGIN}\nfirst\n{END}\n")
    assert md.read_text().startswith("# Results\n\n" + BEGIN)
    md.write_text(f"# Title\n\nintro by hand\n\n{BEGIN}\nold\n{END}\n\n## Measured earlier\nkept 0.8436\n")
    write_block(md, f"{BEGIN}\nnew\n{END}\n")
    text = md.read_text()
    assert "old" not in text and "new" in text
    assert text.startswith("# Title\n\nintro by hand\n\n") and text.endswith("## Measured earlier\nkept 0.8436\n")

    plain = tmp_path / "plain.md"
    plain.write_text("# Results\nhand-written table\n")
    write_block(plain, f"{BEGIN}\nnew\n{END}\n")
    lines = plain.read_text().splitlines()
    assert lines[0] == "# Results" and lines[2] == BEGIN and lines[-1] == "hand-written table"

    broken = tmp_path / "broken.md"
    broken.write_text(f"# R\n{BEGIN}\nno end\n")
    with pytest.raises(ValueError, match="exactly one pair of markers"):
        write_block(broken, f"{BEGIN}\nx\n{END}\n")


def _record(experiment, variant, model, scale=1, error="", names=("negative", "positive")):
    metrics = {} if error else {"test_accuracy": 0.8, "test_macro_f1": 0.79, "test_roc_auc": 0.88, "test_ece": 0.03}
    for n in names:
        if not error:
            metrics[f"test_f1_{n}"] = 0.7
    return Record(experiment, variant, model, scale, 100 * scale, 50, {names[0]: 40, names[1]: 10}, list(names),
                  metrics=metrics, epochs_run=1, steps=5, train_seconds=61.0, error=error)


def test_rendered_tables_have_a_cell_for_every_column(tmp_path):
    records = [
        _record("baselines", "nsmc", "tfidf"), _record("baselines", "nsmc", "rnn", error="FloatingPointError: nan | x"),
        *[_record("scale", f"x{s}", "tfidf", scale=s) for s in (1, 2, 3)],
        _record("scale", "x1", "e5-small-ko", error="TrialFailed: boom"),
        _record("kmhas", "as_is", "tfidf", names=("hate", "not_hate")),
        _record("kmhas", "resampled", "tfidf", error="DataError: too few", names=("hate", "not_hate")),
    ]
    cfg = PaperConfig(train_size=100, test_size=50, scales=[1, 2, 3], max_steps=5)
    result = PaperResult(config=cfg, root=Path("/runs/x"), records=records, evaluations={}, seconds=125.0)
    text = render(result, INFO, "python ray_jobs/paper.py --train-size 100", {}, tmp_path)
    assert text.startswith(BEGIN) and text.rstrip().endswith(END)
    assert "**Reduced run on CPU**" in text and "Test CPU, 2 cores" in text and "2 min 5 s" in text
    assert "0.81" in text and "0.9656" in text and "0.31" in text  # the paper's figures, side by side
    assert "FloatingPointError: nan \\| x" in text
    assert "Linear fit: tfidf" in text
    tables: list[list[str]] = []
    for line in text.splitlines():
        if line.startswith("|"):
            tables[-1].append(line) if tables and tables[-1] else tables.append([line])
        elif tables and tables[-1]:
            tables.append([])
    tables = [t for t in tables if t]
    assert len(tables) == 4  # baselines, scale, K-MHaS, runs
    for table in tables:
        widths = {line.replace("\\|", "").count("|") for line in table}
        assert len(widths) == 1, table
