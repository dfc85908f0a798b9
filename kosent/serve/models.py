"""Loaded models inside a replica: a checkpoint's :class:`kosent.predict.Predictor` with what ``GET /model``
reports about it, and a measured warm-up that seeds the replica's throughput estimate."""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field
from typing import Any

from kosent.serve.settings import _read_manifest
from kosent.tracking import manifest_lineage

logger = logging.getLogger(__name__)

HEALTH_TEXT = "정말 재미있어요"
#: Short NSMC-like reviews for the warm-up passes (the live estimate replaces what they measure).
WARMUP_TEXTS = ("정말 재미있어요", "시간 낭비였다 다시는 안 본다", "배우들 연기가 좋았어요 추천합니다",
                "스토리가 너무 지루하고 뻔했다", "최고의 영화", "그저 그랬음 기대보다 별로")


@dataclass
class LoadedModel:
    name: str
    checkpoint: str
    manifest: str | None
    predictor: Any
    manifest_doc: dict[str, Any] | None
    loaded_at: float = field(default_factory=time.time)
    checkpoint_uri: str | None = None  # where a checkpoint on object storage was fetched from
    #: The MLflow run that made the checkpoint (the manifest's lineage block, or the registered version's
    #: model URI, name, version and run id): which run the endpoint serves, trained on what.
    lineage: dict[str, Any] | None = None
    #: Why the model runs eager although tracing was asked for (None: traced, or not asked).
    forward_note: str | None = None

    def describe(self) -> dict[str, Any]:
        meta = self.predictor.meta
        out = {
            "name": self.name,
            "checkpoint": self.checkpoint,
            "manifest": self.manifest,
            "label_names": meta["label_names"],
            "label2id": meta["label2id"],
            "metrics": meta.get("metrics", {}),
            "created_at": meta.get("created_at"),
            "model_type": meta.get("model_type"),
            "data_fingerprint": meta.get("data_fingerprint"),
            "max_length": getattr(self.predictor, "max_length", None),
            "device": str(getattr(self.predictor, "device", "cpu")),
            "forward": self.predictor.forward_mode,
            "forward_note": self.forward_note,
            "loaded_at": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(self.loaded_at)) + "Z",
        }
        if self.checkpoint_uri:
            out["checkpoint_uri"] = self.checkpoint_uri
        out["mlflow"] = self.lineage
        if self.manifest_doc:
            out["val_metrics"] = self.manifest_doc.get("val_metrics", {})
            out["test_metrics"] = self.manifest_doc.get("test_metrics", {})
            out["manifest_created_at"] = self.manifest_doc.get("created_at")
        return out


def load_model(name: str, spec: dict[str, Any], batch_size: int, device: str = "cpu",
               traced: bool = False) -> LoadedModel:
    """Load one model (blocking: call it off the event loop) onto ``device`` (the replica's GPU or the CPU);
    ``traced``: its forward passes run through a TorchScript trace where the model allows it
    (:meth:`kosent.predict.Predictor.trace`), else eager, with the reason logged and in ``GET /model``."""
    from kosent.predict import Predictor

    predictor = Predictor.from_checkpoint(spec["checkpoint"], batch_size=batch_size, device=device)
    note = predictor.trace(WARMUP_TEXTS) if traced and predictor.model is not None else None
    if note:
        logger.warning(f"kosent: model {name} runs eager, its trace was refused: {note}")
    doc = _read_manifest(spec["manifest"]) if spec.get("manifest") else None
    lineage = spec.get("registered") or (manifest_lineage(doc) if doc else None)
    return LoadedModel(name=name, checkpoint=spec["checkpoint"], manifest=spec.get("manifest"),
                       predictor=predictor, manifest_doc=doc, checkpoint_uri=spec.get("checkpoint_uri"),
                       lineage=lineage, forward_note=note)


def warmup_rate(predictor: Any, texts: int) -> float:
    """Texts/s of one forward pass of ``texts`` short reviews, after a first pass that pays one-time costs."""
    batch = [WARMUP_TEXTS[i % len(WARMUP_TEXTS)] for i in range(max(1, texts))]
    predictor.predict(batch[:2])
    t0 = time.perf_counter()
    predictor.predict(batch)
    return len(batch) / max(1e-6, time.perf_counter() - t0)


class Slot:
    """What the multiplexed loader caches; hot swaps replace ``model`` in place."""

    def __init__(self, model: LoadedModel) -> None:
        self.model = model
