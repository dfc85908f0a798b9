"""Evaluation reports on real NSMC reviews: the files, and every figure checked against scikit-learn or its
definition (ECE is recomputed here from the definition, not with kosent's code)."""

from __future__ import annotations

import json
import re
import subprocess
import sys

import numpy as np
import pytest
import torch
from sklearn.metrics import confusion_matrix, f1_score, precision_recall_fscore_support, roc_auc_score

from kosent.checkpoint import save_checkpoint
from kosent.config import DataConfig, TrainConfig, to_dict
from kosent.data import make_splits
from kosent.embeddings import forward, sample_indices
from kosent.evaluate import evaluate_report
from kosent.metrics import calibration, classification_metrics
from kosent.models import load_model_and_tokenizer
from kosent.predict import Predictor
from kosent.train import fit_local

SMALL = DataConfig(train_size=400, val_size=100, test_size=300)
PNG = b"\x89PNG\r\n\x1a\n"


def ece_by_definition(labels, probs, n_bins=10):
    """sum over bins (lo, hi] of |B|/n * |accuracy(B) - mean confidence(B)|, bin 0 also taking 0."""
    labels, probs = np.asarray(labels), np.asarray(probs, dtype=np.float64)
    conf, pred = probs.max(axis=1), probs.argmax(axis=1)
    edges = np.linspace(0, 1, n_bins + 1)
    total = 0.0
    for m in range(n_bins):
        lo, hi = edges[m], edges[m + 1]
        members = [i for i, c in enumerate(conf) if (lo < c <= hi) or (m == 0 and c == 0)]
        if members:
            acc = np.mean([pred[i] == labels[i] for i in members])
            total += len(members) / len(labels) * abs(acc - np.mean(conf[members]))
    return total


@pytest.fixture(scope="module")
def splits(nsmc_path):
    return make_splits(SMALL)


@pytest.fixture(scope="module")
def tfidf_checkpoint(splits, tmp_path_factory):
    return fit_local(TrainConfig(model="tfidf", data=SMALL), splits, out_dir=tmp_path_factory.mktemp("tfidf")).checkpoint


def _untrained(name, splits, folder):
    torch.manual_seed(0)
    model, tokenizer = load_model_and_tokenizer(name, splits.label_names)
    cfg = TrainConfig(model=name, max_length=64, data=SMALL)
    return save_checkpoint(folder, model, tokenizer, label_names=splits.label_names, metrics={},
                           config=to_dict(cfg), data_fingerprint=splits.fingerprint)


def test_ece_matches_its_definition_and_its_extremes():
    rng = np.random.default_rng(1)
    y = rng.integers(0, 3, size=500)
    logits = rng.normal(size=(500, 3)) + 2 * np.eye(3)[y]
    probs = np.exp(logits) / np.exp(logits).sum(axis=1, keepdims=True)
    for bins in (1, 5, 10, 15):
        assert calibration(y, probs, n_bins=bins).ece == pytest.approx(ece_by_definition(y, probs, bins), abs=1e-12)
    # Confidences exactly on a bin edge (0.7) go to the bin that ends there.
    edge = np.array([[0.7, 0.3], [0.3, 0.7], [0.7, 0.3]])
    assert calibration([0, 0, 0], edge).counts[6] == 3
    assert calibration([0, 0, 0], edge).ece == pytest.approx(ece_by_definition([0, 0, 0], edge))
    certain = np.array([[1.0, 0.0], [0.0, 1.0]])
    assert calibration([0, 1], certain).ece == 0.0
    assert calibration([1, 0], certain).ece == 1.0
    assert classification_metrics([0, 1], certain, ["a", "b"], prefix="test_")["test_ece"] == 0.0


@pytest.mark.parametrize(("labels", "probs", "match"), [
    ([0, 1, 1], [[0.5, 0.5], [0.2, 0.8]], "3 labels but 2 rows"),
    ([0, 1], [[2.0, -1.0], [0.1, 0.3]], "sum to 1 per row"),
    ([0, 2], [[0.5, 0.5], [0.2, 0.8]], "integers in 0..1"),
    ([0, 1], [[0.2, 0.3, 0.5], [0.2, 0.3, 0.5]], r"shape \(n, 2\)"),
])
def test_bad_predictions_name_the_problem(labels, probs, match):
    with pytest.raises(ValueError, match=match):
        classification_metrics(labels, np.asarray(probs), ["negative", "positive"])


def test_bad_bin_count_is_refused():
    with pytest.raises(ValueError, match="n_bins must be a positive integer"):
        calibration([0], np.array([[0.6, 0.4]]), n_bins=0)


def test_report_on_tfidf_matches_sklearn_and_writes_every_file(splits, tfidf_checkpoint, tmp_path):
    texts, labels = list(splits.test["text"]), np.asarray(splits.test["label"])
    ev = evaluate_report(tfidf_checkpoint, texts, labels, tmp_path, label_names=splits.label_names, max_points=120,
                         n_errors=15)
    for name in ("report.json", "confusion_matrix.png", "roc_curve.png", "reliability.png", "pca_2d.png",
                 "tsne_2d.png", "errors.jsonl", "errors.md", "embeddings_3d.html"):
        assert (tmp_path / name).is_file() and (tmp_path / name).stat().st_size > 0, name
        if name.endswith(".png"):
            assert (tmp_path / name).read_bytes()[:8] == PNG, name

    # The metrics in report.json against scikit-learn on the same predictions (scored independently here).
    probs = Predictor.from_checkpoint(tfidf_checkpoint).predict_proba(texts)
    pred = probs.argmax(axis=1)
    report = json.loads((tmp_path / "report.json").read_text(encoding="utf-8"))
    m = report["metrics"]
    assert m["test_accuracy"] == pytest.approx(float((pred == labels).mean()))
    assert m["test_macro_f1"] == pytest.approx(f1_score(labels, pred, average="macro"))
    p, r, f, _ = precision_recall_fscore_support(labels, pred, labels=[0, 1], zero_division=0)
    for k, name in enumerate(splits.label_names):
        assert m[f"test_precision_{name}"] == pytest.approx(p[k])
        assert m[f"test_recall_{name}"] == pytest.approx(r[k])
        assert m[f"test_f1_{name}"] == pytest.approx(f[k])
    assert m["test_roc_auc"] == pytest.approx(roc_auc_score(labels, probs[:, 1]))
    assert m["test_ece"] == pytest.approx(ece_by_definition(labels, probs), abs=1e-6)
    assert report["calibration"]["ece"] == pytest.approx(m["test_ece"])
    assert sum(report["calibration"]["counts"]) == len(texts)
    assert report["confusion_matrix"]["counts"] == confusion_matrix(labels, pred).tolist()
    assert report["size"] == len(texts) and report["embeddings"]["points"] == 120
    assert report["class_counts"] == {n: int((labels == k).sum()) for k, n in enumerate(splits.label_names)}

    # The errors: wrong, most confident first, with their text.
    errors = [json.loads(line) for line in (tmp_path / "errors.jsonl").read_text(encoding="utf-8").splitlines()]
    assert len(errors) == min(15, int((pred != labels).sum()))
    confidences = [e["confidence"] for e in errors]
    assert confidences == sorted(confidences, reverse=True)
    assert confidences[0] == pytest.approx(probs.max(axis=1)[pred != labels].max(), abs=1e-6)
    for e in errors:
        assert e["text"] == texts[e["index"]] and e["label"] != e["predicted"]
        assert e["label"] == splits.label_names[labels[e["index"]]]
    assert errors[0]["text"].replace("|", "\\|") in (tmp_path / "errors.md").read_text(encoding="utf-8")

    # The 3-D page works offline: plotly.js is inside it, not fetched from a CDN.
    page = (tmp_path / "embeddings_3d.html").read_text(encoding="utf-8")
    assert len(page) > 1_000_000 and not re.search(r"<script[^>]*\bsrc=", page)
    assert "colour: prediction" in page and "t-SNE" in page

    summary = ev.summary()
    assert f"accuracy {m['test_accuracy']:.4f}" in summary and "most confident error" in summary


@pytest.mark.parametrize("name", ["tiny", "birnn"])
def test_embeddings_are_exactly_what_the_classifier_head_sees(splits, tmp_path, name):
    checkpoint = _untrained(name, splits, tmp_path / name)
    predictor = Predictor.from_checkpoint(checkpoint)
    texts = list(splits.test["text"])[:70]
    probs, emb = forward(predictor, texts)
    assert emb.shape[0] == len(texts) and np.isfinite(emb).all()
    np.testing.assert_allclose(probs, predictor.predict_proba(texts), atol=1e-5)
    with torch.inference_mode():
        head_probs = torch.softmax(predictor.model.classifier(torch.from_numpy(emb)), dim=-1).numpy()
    np.testing.assert_allclose(head_probs, probs, atol=1e-5)


def test_report_on_a_tiny_bert_with_few_points(splits, tmp_path):
    checkpoint = _untrained("tiny", splits, tmp_path / "ckpt")
    texts, labels = list(splits.test["text"])[:40], list(splits.test["label"])[:40]
    ev = evaluate_report(checkpoint, texts, labels, tmp_path / "out", max_points=30, n_errors=5)
    report = json.loads((tmp_path / "out" / "report.json").read_text(encoding="utf-8"))
    assert report["model"] == "tiny" and report["embeddings"]["points"] == 30
    assert report["embeddings"]["dims"] == 64  # the tiny BERT's pooled vector
    assert {"pca_2d", "tsne_2d", "embeddings_3d"} <= set(ev.files)


def test_report_refuses_other_labels_and_empty_data(splits, tfidf_checkpoint, tmp_path):
    with pytest.raises(ValueError, match=r"predicts labels \['negative', 'positive'\].*\['hate', 'not_hate'\]"):
        evaluate_report(tfidf_checkpoint, ["a"], [0], tmp_path, label_names=["hate", "not_hate"])
    with pytest.raises(ValueError, match="nothing to evaluate"):
        evaluate_report(tfidf_checkpoint, [], [], tmp_path)
    with pytest.raises(ValueError, match="2 texts but 1 labels"):
        evaluate_report(tfidf_checkpoint, ["a", "b"], [0], tmp_path)


def test_sample_indices_keep_each_label_share():
    y = np.array([0] * 700 + [1] * 300)
    idx = sample_indices(y, 100, seed=3)
    assert len(idx) == 100 and len(set(idx.tolist())) == 100
    assert (y[idx] == 0).sum() == 70
    assert sample_indices(y, 5000).tolist() == list(range(1000))
    with pytest.raises(ValueError, match="max_points"):
        sample_indices(y, 0)


def test_cli_evaluate_writes_the_report_and_prints_a_summary(tfidf_checkpoint, tmp_path):
    out = subprocess.run(
        [sys.executable, "-m", "kosent.cli", "evaluate", str(tfidf_checkpoint), "--out", str(tmp_path / "r"),
         "--max-points", "100", "--errors", "5"],
        capture_output=True, text=True, timeout=300,
    )
    assert out.returncode == 0, out.stderr
    assert "accuracy" in out.stdout and "macro F1" in out.stdout and "ECE" in out.stdout
    report = json.loads((tmp_path / "r" / "report.json").read_text(encoding="utf-8"))
    assert report["size"] == SMALL.test_size and report["data"]["source"] == "nsmc"
    assert len((tmp_path / "r" / "errors.jsonl").read_text(encoding="utf-8").splitlines()) == 5

    bad = subprocess.run(
        [sys.executable, "-m", "kosent.cli", "evaluate", str(tfidf_checkpoint), "--source", "kmhas", "--no-embeddings",
         "--out", str(tmp_path / "k")],
        capture_output=True, text=True, timeout=300,
    )
    assert bad.returncode == 2 and "Traceback" not in bad.stderr
    assert "hate" in bad.stderr and "negative" in bad.stderr
