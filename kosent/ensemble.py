"""BERT + TF-IDF in one checkpoint: average the fine-tuned model's probabilities with the cheap baseline's.

The two make different mistakes (sub-word semantics vs character n-grams), so a weighted average of
their probabilities beats either alone for the price of a TF-IDF fit (seconds). The result stays one
artifact: the model's checkpoint folder, plus the TF-IDF model in ``tfidf/`` (JSON + safetensors, no
pickle) and an ``ensemble`` entry in ``kosent.json``. ``Predictor.from_checkpoint`` sees that entry and
mixes (:func:`kosent.predict.mix`, also importable from here), so the CLI, evaluation and Serve load an
ensemble exactly like any checkpoint. This module builds ensembles; scoring one needs only ``kosent.predict``.

The weight defaults to a plain average (0.5); ``tfidf_weight="auto"`` picks it on the validation split
(macro F1), never on test. The TF-IDF model is fitted on the same training split as the model (the data
fingerprints must match), so validation stays unseen by both. docs/RESULTS.md has the measured effect.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from kosent.checkpoint import META_FILE, CheckpointError, copy_checkpoint, read_meta
from kosent.data import Splits
from kosent.metrics import classification_metrics
from kosent.models.tfidf import TfidfClassifier
from kosent.predict import Predictor, mix

log = logging.getLogger(__name__)

TFIDF_DIR = "tfidf"
WEIGHTS = tuple(round(w, 2) for w in np.linspace(0.0, 1.0, 21))  # the grid searched by tfidf_weight="auto"
DEFAULT_WEIGHT = 0.5  # a plain average: on NSMC's 1,000-text validation split the searched weight is noisy


def choose_weight(p_model: np.ndarray, p_tfidf_positive: np.ndarray, labels: list[int],
                  label_names: list[str]) -> tuple[float, dict[str, float]]:
    """The TF-IDF weight with the best validation macro F1 (ties: the smaller weight), and the whole curve."""
    curve = {
        f"{w:.2f}": classification_metrics(labels, mix(p_model, p_tfidf_positive, w), label_names)["macro_f1"]
        for w in WEIGHTS
    }
    best = max(WEIGHTS, key=lambda w: (curve[f"{w:.2f}"], -w))
    return float(best), curve


def build_ensemble(checkpoint: str | Path, out: str | Path, splits: Splits,
                   tfidf_weight: float | str = DEFAULT_WEIGHT, progress: Callable[[str], None] | None = None,
                   device: str = "cpu") -> dict[str, Any]:
    """Copy ``checkpoint`` to ``out``, fit TF-IDF on ``splits.train``, pick the weight on validation, score test.

    Returns a summary with validation and test metrics of the model alone, TF-IDF alone and the ensemble.
    ``progress(message)`` gets the progress lines (default: this module's log at INFO).
    """
    progress = progress or log.info
    checkpoint, out = Path(checkpoint), Path(out)
    meta = read_meta(checkpoint)
    if meta.get("ensemble"):
        raise CheckpointError(f"{checkpoint}: already an ensemble; start from the plain model checkpoint")
    if meta["model_type"] == "tfidf":
        raise CheckpointError(f"{checkpoint}: a TF-IDF checkpoint; the ensemble adds TF-IDF to a neural model")
    if len(meta["label_names"]) != 2 or list(meta["label_names"]) != list(splits.label_names):
        raise CheckpointError(f"{checkpoint}: labels {meta['label_names']} vs data labels {splits.label_names}: "
                              "the ensemble needs the same two labels")
    if meta.get("data_fingerprint") and meta["data_fingerprint"] != splits.fingerprint:
        raise CheckpointError(
            f"{checkpoint}: trained on other splits (fingerprint {meta['data_fingerprint'][:12]} vs "
            f"{splits.fingerprint[:12]}): the weight would be chosen on texts the model may have trained on; "
            "pass the data settings the checkpoint was trained with (its kosent.json 'config.data')"
        )
    if tfidf_weight != "auto" and not 0.0 <= float(tfidf_weight) <= 1.0:
        raise ValueError(f"tfidf_weight {tfidf_weight} is not in [0, 1] (or 'auto')")
    if out.exists() and any(out.iterdir()):
        raise CheckpointError(f"{out}: exists and is not empty; choose a new folder")

    t0 = time.perf_counter()
    progress(f"fitting TF-IDF on the {len(splits.train):,} training texts")
    tfidf = TfidfClassifier().fit(list(splits.train["text"]), list(splits.train["label"]))
    fit_seconds = time.perf_counter() - t0
    model = Predictor.from_checkpoint(checkpoint, device=device)

    def scores(split: str) -> tuple[np.ndarray, np.ndarray, list[int], list[str]]:
        data = getattr(splits, split)
        texts, labels = list(data["text"]), [int(x) for x in data["label"]]
        progress(f"scoring {len(texts):,} {split} texts with the model and TF-IDF")
        return model.predict_proba(texts), tfidf.predict_proba(texts), labels, texts

    pm, pt, val_labels, _ = scores("validation")
    names = list(splits.label_names)
    weight, curve = choose_weight(pm, pt, val_labels, names)
    tfidf_weight = weight if tfidf_weight == "auto" else float(tfidf_weight)
    summary: dict[str, Any] = {"tfidf_weight": tfidf_weight, "val_macro_f1_by_tfidf_weight": curve,
                               "tfidf_fit_seconds": round(fit_seconds, 2)}
    for split, prefix in (("validation", "val_"), ("test", "test_")):
        if split == "test":
            pm, pt, labels, _ = scores("test")
        else:
            labels = val_labels
        summary[split] = {
            "model": classification_metrics(labels, pm, names, prefix=prefix),
            "tfidf": classification_metrics(labels, mix(pm, pt, 1.0), names, prefix=prefix),
            "ensemble": classification_metrics(labels, mix(pm, pt, tfidf_weight), names, prefix=prefix),
        }

    copy_checkpoint(checkpoint, out)
    tfidf.save(out / TFIDF_DIR)
    meta["ensemble"] = {"tfidf": TFIDF_DIR, "tfidf_weight": tfidf_weight, "from_checkpoint": str(checkpoint)}
    meta["metrics"] = {**meta.get("metrics", {}), **summary["validation"]["ensemble"]}
    (out / META_FILE).write_text(json.dumps(meta, indent=2, ensure_ascii=False), encoding="utf-8")
    (out / "ensemble.json").write_text(json.dumps(summary, indent=2), encoding="utf-8")
    return summary | {"checkpoint": str(out)}
