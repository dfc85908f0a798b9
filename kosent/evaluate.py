"""Score a checkpoint on a labelled split."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

from kosent.metrics import classification_metrics
from kosent.predict import Predictor


def evaluate_checkpoint(
    checkpoint: str | Path, texts: list[str], labels: list[int], prefix: str = "test_"
) -> dict[str, Any]:
    """Metrics of ``checkpoint`` on ``texts``; refuses data whose label names differ from the checkpoint's."""
    t0 = time.perf_counter()
    predictor = Predictor.from_checkpoint(checkpoint)
    probs = predictor.predict_proba(texts)
    metrics = classification_metrics(labels, probs, predictor.label_names, prefix=prefix)
    metrics[f"{prefix}seconds"] = time.perf_counter() - t0
    metrics[f"{prefix}size"] = len(texts)
    return metrics
