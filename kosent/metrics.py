"""Classification metrics with the names used everywhere (``val_macro_f1``, ``test_accuracy``, ``test_ece`` ...)."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from sklearn.metrics import accuracy_score, precision_recall_fscore_support, roc_auc_score

#: The metric that picks the best run everywhere: the epoch a run keeps, the trial a sweep publishes, the
#: checkpoints Ray Train keeps, the early stop. Validation macro F1: the splits may be unbalanced (K-MHaS is).
BEST_METRIC = "val_macro_f1"
BEST_MODE = "max"

DEFAULT_BINS = 10


def is_better(score: float | None, held: float | None, mode: str = BEST_MODE) -> bool:
    """Whether an epoch scoring ``score`` replaces the best so far (``held``; None: none yet) in ``mode``.

    Strictly better, so among ties the earlier epoch stays; an epoch without the metric (None) counts as better,
    so a run that reports none keeps its latest epoch. NaN (not measured) loses to any measured score.
    """
    if score is None or held is None:
        return True
    if held != held:
        return score == score
    return score > held if mode == "max" else score < held


def epochs_since_best(scores: Sequence[float | None], mode: str = BEST_MODE) -> tuple[float | None, int]:
    """The best of per-epoch ``scores`` (as :func:`is_better` picks) and how many measured epochs came after it:
    what an early stop with ``patience`` compares, recomputed from a run's history. NaN epochs are skipped."""
    best, since = None, 0
    for score in scores:
        if score is not None and score != score:
            continue
        if is_better(score, best, mode):
            best, since = score, 0
        else:
            since += 1
    return best, since


def check_predictions(labels: Sequence[int], probs: np.ndarray, num_labels: int) -> tuple[np.ndarray, np.ndarray]:
    """``labels`` as int64 and ``probs`` as float64 ``(n, num_labels)``, or a ValueError naming the problem.

    Checked here once so that a shape mix-up (labels of one split, probabilities of another) fails with
    its cause instead of as a broadcasting error deep inside scikit-learn.
    """
    y = np.asarray(labels)
    p = np.asarray(probs, dtype=np.float64)
    if y.ndim != 1:
        raise ValueError(f"labels must be one label id per example, got an array of shape {y.shape}")
    if p.ndim != 2 or p.shape[1] != num_labels:
        raise ValueError(f"probs must have shape (n, {num_labels}) (one column per label), got {p.shape}")
    if len(y) != len(p):
        raise ValueError(f"{len(y)} labels but {len(p)} rows of probabilities: they must describe the same examples")
    if len(y) and (not np.issubdtype(y.dtype, np.integer) or y.min() < 0 or y.max() >= num_labels):
        raise ValueError(f"labels must be integers in 0..{num_labels - 1}, got values {sorted(set(y.tolist()))[:10]}")
    if len(p) and (not np.isfinite(p).all() or p.min() < -1e-6 or np.abs(p.sum(axis=1) - 1).max() > 1e-3):
        raise ValueError("probs must be finite, non-negative and sum to 1 per row (softmax outputs, not logits)")
    return y.astype(np.int64), p


@dataclass
class Calibration:
    """Reliability of the top-label confidence in ``n_bins`` equal-width bins of [0, 1].

    Bin ``m`` holds the examples whose confidence (the largest probability) lies in ``(m/M, (m+1)/M]``
    (the first bin also takes 0). ``ece`` is the expected calibration error,
    ``sum_m |B_m| / n * |accuracy(B_m) - confidence(B_m)|``; ``mce`` the largest per-bin gap.
    Empty bins have count 0 and NaN accuracy / confidence.
    """

    edges: list[float]
    counts: list[int]
    accuracy: list[float]
    confidence: list[float]
    ece: float
    mce: float

    def to_dict(self) -> dict[str, object]:
        def clean(xs: list[float]) -> list[float | None]:  # JSON has no NaN
            return [None if np.isnan(x) else round(float(x), 6) for x in xs]

        return {"n_bins": len(self.counts), "edges": [round(e, 6) for e in self.edges], "counts": self.counts,
                "accuracy": clean(self.accuracy), "confidence": clean(self.confidence),
                "ece": self.ece, "mce": self.mce}


def calibration(labels: Sequence[int], probs: np.ndarray, n_bins: int = DEFAULT_BINS) -> Calibration:
    """Top-label calibration of ``probs`` (``(n, num_labels)``) against ``labels``; see :class:`Calibration`."""
    if isinstance(n_bins, bool) or not isinstance(n_bins, (int, np.integer)) or n_bins < 1:
        raise ValueError(f"n_bins must be a positive integer, got {n_bins!r}")
    p = np.asarray(probs)
    y, p = check_predictions(labels, p, p.shape[1] if p.ndim == 2 else -1)
    if not len(y):
        raise ValueError("calibration needs at least one example")
    conf = p.max(axis=1)
    correct = (p.argmax(axis=1) == y).astype(np.float64)
    edges = np.linspace(0.0, 1.0, n_bins + 1)
    # right=True: edges[m] < conf <= edges[m + 1]; a confidence of exactly 0 falls into the first bin.
    which = np.clip(np.digitize(conf, edges[1:-1], right=True), 0, n_bins - 1)
    counts = np.bincount(which, minlength=n_bins)
    acc = np.full(n_bins, np.nan)
    mean_conf = np.full(n_bins, np.nan)
    for m in np.flatnonzero(counts):
        acc[m] = correct[which == m].mean()
        mean_conf[m] = conf[which == m].mean()
    gaps = np.abs(acc - mean_conf)
    filled = counts > 0
    ece = float(np.sum(counts[filled] / len(y) * gaps[filled]))
    return Calibration(edges=edges.tolist(), counts=counts.astype(int).tolist(), accuracy=acc.tolist(),
                       confidence=mean_conf.tolist(), ece=ece, mce=float(gaps[filled].max()))


def classification_metrics(
    labels: Sequence[int],
    probs: np.ndarray,
    label_names: Sequence[str],
    prefix: str = "",
    loss: float | None = None,
) -> dict[str, float]:
    """Accuracy, per-class precision / recall / F1, macro F1, ROC-AUC and expected calibration error.

    ``probs`` is ``(n, num_labels)``; predictions are the argmax. Keys are ``{prefix}accuracy``,
    ``{prefix}macro_f1``, ``{prefix}f1_<label name>``, ``{prefix}ece`` ... so a metrics dict reads the same
    in logs, checkpoints, Tune tables and the manifest. ROC-AUC needs two labels, both present; ECE
    (:func:`calibration`, 10 bins) needs at least one example.
    """
    y, probs = check_predictions(labels, probs, len(label_names))
    pred = probs.argmax(axis=1)
    ks = list(range(len(label_names)))
    p, r, f, support = precision_recall_fscore_support(y, pred, labels=ks, zero_division=0)
    out: dict[str, float] = {f"{prefix}accuracy": float(accuracy_score(y, pred)), f"{prefix}macro_f1": float(f.mean())}
    for k, name in enumerate(label_names):
        out[f"{prefix}precision_{name}"] = float(p[k])
        out[f"{prefix}recall_{name}"] = float(r[k])
        out[f"{prefix}f1_{name}"] = float(f[k])
    if len(label_names) == 2 and len(set(y.tolist())) == 2:
        out[f"{prefix}roc_auc"] = float(roc_auc_score(y, probs[:, 1]))
    if len(y):
        out[f"{prefix}ece"] = calibration(y, probs).ece
    if loss is not None:
        out[f"{prefix}loss"] = float(loss)
    return out


def confusion(labels: Sequence[int], probs: np.ndarray, num_labels: int) -> np.ndarray:
    """``[true, predicted]`` counts of the argmax predictions."""
    y, p = check_predictions(labels, probs, num_labels)
    out = np.zeros((num_labels, num_labels), dtype=np.int64)
    np.add.at(out, (y, p.argmax(axis=1)), 1)
    return out


__all__ = ["Calibration", "calibration", "check_predictions", "classification_metrics", "confusion", "epochs_since_best",
           "is_better"]
