"""The BERT + TF-IDF ensemble: one folder, loaded by the same Predictor, mixing exactly as documented."""

from __future__ import annotations

import json

import numpy as np
import pytest
from sklearn.metrics import accuracy_score, f1_score

from kosent.checkpoint import CheckpointError, read_meta
from kosent.config import DataConfig, TrainConfig
from kosent.data import make_splits
from kosent.ensemble import build_ensemble, mix
from kosent.models.tfidf import TfidfClassifier
from kosent.predict import Predictor
from kosent.train import fit_local

SMALL = DataConfig(train_size=400, val_size=100, test_size=200)


@pytest.fixture(scope="module")
def trained(tmp_path_factory, nsmc_path):
    splits = make_splits(SMALL)
    cfg = TrainConfig(model="tiny", epochs=1, max_steps=20, batch_size=32, max_length=64, lr=1e-3, data=SMALL)
    result = fit_local(cfg, splits, out_dir=tmp_path_factory.mktemp("tiny"))
    return splits, result.checkpoint


def test_ensemble_folder_loads_and_mixes_log_odds(trained, tmp_path):
    splits, checkpoint = trained
    out = tmp_path / "ens"
    summary = build_ensemble(checkpoint, out, splits, tfidf_weight=0.5, progress=lambda _: None)

    meta = read_meta(out)
    assert meta["ensemble"]["tfidf_weight"] == 0.5
    assert (out / "tfidf" / "tfidf.safetensors").is_file() and (out / "model.safetensors").is_file()
    assert not list(out.rglob("*.pkl")) and not list(out.rglob("*.bin"))
    assert json.loads((out / "ensemble.json").read_text())["tfidf_weight"] == 0.5

    texts = list(splits.test["text"])
    labels = [int(x) for x in splits.test["label"]]
    p_model = Predictor.from_checkpoint(checkpoint).predict_proba(texts)
    p_tfidf = TfidfClassifier.load(out / "tfidf").predict_proba(texts)
    p_ens = Predictor.from_checkpoint(out).predict_proba(texts)
    # The documented formula, computed here independently: sigmoid of the averaged log-odds.
    z = 0.5 * np.log(p_model[:, 1] / p_model[:, 0]) + 0.5 * np.log(p_tfidf / (1 - p_tfidf))
    np.testing.assert_allclose(p_ens[:, 1], 1 / (1 + np.exp(-z)), atol=1e-4)
    np.testing.assert_allclose(p_ens.sum(axis=1), 1.0, atol=1e-5)

    pred = p_ens.argmax(axis=1)
    test = summary["test"]["ensemble"]
    assert test["test_accuracy"] == pytest.approx(accuracy_score(labels, pred), abs=1e-6)
    assert test["test_macro_f1"] == pytest.approx(f1_score(labels, pred, average="macro"), abs=1e-6)
    assert summary["test"]["model"]["test_accuracy"] == pytest.approx(accuracy_score(labels, p_model.argmax(1)))


def test_auto_weight_is_the_best_on_validation(trained, tmp_path):
    splits, checkpoint = trained
    summary = build_ensemble(checkpoint, tmp_path / "auto", splits, tfidf_weight="auto", progress=lambda _: None)
    curve = summary["val_macro_f1_by_tfidf_weight"]
    assert len(curve) == 21
    assert curve[f"{summary['tfidf_weight']:.2f}"] == max(curve.values())
    assert summary["validation"]["ensemble"]["val_macro_f1"] == pytest.approx(max(curve.values()))


def test_refuses_other_splits_and_existing_folders(trained, tmp_path):
    splits, checkpoint = trained
    other = make_splits(DataConfig(train_size=400, val_size=100, test_size=200, split_seed=7))
    with pytest.raises(CheckpointError, match="trained on other splits"):
        build_ensemble(checkpoint, tmp_path / "x", other, progress=lambda _: None)
    (tmp_path / "full").mkdir()
    (tmp_path / "full" / "f").write_text("keep me")
    with pytest.raises(CheckpointError, match="not empty"):
        build_ensemble(checkpoint, tmp_path / "full", splits, progress=lambda _: None)
    assert (tmp_path / "full" / "f").read_text() == "keep me"
    with pytest.raises(ValueError, match="not in \\[0, 1\\]"):
        build_ensemble(checkpoint, tmp_path / "w", splits, tfidf_weight=1.5, progress=lambda _: None)


def test_mix_endpoints_are_the_single_models():
    p_model = np.array([[0.9, 0.1], [0.2, 0.8]])
    p_tfidf = np.array([0.7, 0.4])
    np.testing.assert_allclose(mix(p_model, p_tfidf, 0.0), p_model, atol=1e-9)
    np.testing.assert_allclose(mix(p_model, p_tfidf, 1.0)[:, 1], p_tfidf, atol=1e-9)
