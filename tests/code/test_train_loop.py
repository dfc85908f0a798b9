"""The training loop on a few hundred real NSMC reviews, in-process (no cluster)."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from kosent import batches
from kosent.config import DataConfig, TrainConfig
from kosent.data import make_splits
from kosent.models import load_model_and_tokenizer
from kosent.predict import Predictor
from kosent.train import Session, evaluate_encoded, fit_local, seed_everything

SMALL = DataConfig(train_size=320, val_size=200, test_size=200)


@pytest.fixture(scope="module")
def splits(nsmc_path):
    return make_splits(SMALL)


@pytest.mark.timeout(300)
def test_short_e5_run_lowers_validation_loss(splits, tmp_path):
    cfg = TrainConfig(model="e5-small-ko", epochs=2, batch_size=16, lr=2e-4, max_length=48, data=SMALL)
    # The same seed gives the same initial classification head: score it before training.
    seed_everything(cfg.seed)
    model, tokenizer = load_model_and_tokenizer(cfg.model, splits.label_names)
    val = batches.encode(tokenizer, splits.validation["text"], splits.validation["label"], cfg.max_length)
    before = evaluate_encoded(model, val, splits.label_names, cfg, tokenizer.pad_token_id, Session(out_dir=tmp_path))

    result = fit_local(cfg, splits, out_dir=tmp_path)
    after = result.history[-1]
    assert after["val_loss"] < before["val_loss"] - 0.01, (before["val_loss"], after["val_loss"])
    assert after["val_accuracy"] > 0.6
    meta = json.loads((result.checkpoint / "kosent.json").read_text())
    assert meta["data_fingerprint"] == splits.fingerprint
    assert meta["metrics"]["val_macro_f1"] == pytest.approx(after["val_macro_f1"])


@pytest.mark.parametrize("model", ["tiny", "birnn"])
@pytest.mark.timeout(180)
def test_every_kind_of_model_trains_through_the_same_loop(splits, tmp_path, model):
    cfg = TrainConfig(model=model, epochs=2, batch_size=32, lr=2e-3, max_length=64, data=SMALL)
    result = fit_local(cfg, splits, out_dir=tmp_path)
    assert [h["epoch"] for h in result.history] == [1, 2]
    assert result.history[-1]["train_loss"] < result.history[0]["train_loss"]
    # Only the best and the last epoch stay on disk.
    assert len(list(tmp_path.glob("epoch_*"))) <= 2
    preds = Predictor.from_checkpoint(result.checkpoint).predict(["재밌다", "별로"])
    assert {p.label for p in preds} <= {"negative", "positive"}


def test_diverging_learning_rate_raises_a_clear_error(splits, tmp_path):
    cfg = TrainConfig(model="tiny", epochs=1, lr=1e8, max_grad_norm=1e12, batch_size=32, data=SMALL)
    with pytest.raises(FloatingPointError, match="diverged"):
        fit_local(cfg, splits, out_dir=tmp_path)


def test_tfidf_baseline_is_a_checkpoint_like_the_others(splits, tmp_path):
    result = fit_local(TrainConfig(model="tfidf", data=SMALL), splits, out_dir=tmp_path)
    assert result.metrics["val_accuracy"] > 0.6
    assert not list(result.checkpoint.glob("*.pkl"))
    preds = Predictor.from_checkpoint(result.checkpoint).predict(["최고의 영화 강추", "돈 아깝다 최악"])
    assert [p.label for p in preds] == ["positive", "negative"]

    out = subprocess.run(
        [sys.executable, "-m", "kosent.cli", "predict", str(result.checkpoint), "정말 재밌어요"],
        capture_output=True, text=True, timeout=120,
    )
    assert out.returncode == 0, out.stderr
    row = json.loads(out.stdout.splitlines()[0])
    assert row["text"] == "정말 재밌어요" and set(row["scores"]) == {"negative", "positive"}


def test_cli_reports_a_missing_data_file_without_a_traceback(tmp_path):
    out = subprocess.run(
        [sys.executable, "-m", "kosent.cli", "data", "--source", str(tmp_path / "nope.tsv")],
        capture_output=True, text=True, timeout=120,
    )
    assert out.returncode == 2
    assert "nope.tsv" in out.stderr and "Traceback" not in out.stderr
