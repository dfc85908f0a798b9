"""Classification metrics with the names used everywhere (``val_macro_f1``, ``test_accuracy`` ...)."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from sklearn.metrics import accuracy_score, precision_recall_fscore_support, roc_auc_score


def classification_metrics(
    labels: Sequence[int],
    probs: np.ndarray,
    label_names: Sequence[str],
    prefix: str = "",
    loss: float | None = None,
) -> dict[str, float]:
    """Accuracy, per-class precision / recall / F1, macro F1 and ROC-AUC.

    ``probs`` is ``(n, num_labels)``; predictions are the argmax. Keys are ``{prefix}accuracy``,
    ``{prefix}macro_f1``, ``{prefix}f1_<label name>`` ... so a metrics dict reads the same in logs,
    checkpoints, Tune tables and the manifest.
    """
    y = np.asarray(labels)
    probs = np.asarray(probs)
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
    if loss is not None:
        out[f"{prefix}loss"] = float(loss)
    return out
