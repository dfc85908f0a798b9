"""Score a checkpoint on a labelled split: the metrics alone, or a full report folder.

    evaluate_checkpoint(ckpt, texts, labels)          metrics dict (test_accuracy, test_macro_f1, ...)
    evaluate_report(ckpt, texts, labels, out_dir)     the same, plus files a person reads:

    report.json          every metric, the confusion matrix, the calibration bins, what was scored
    confusion_matrix.png counts and row shares
    roc_curve.png        binary models
    reliability.png      reliability diagram with the expected calibration error
    errors.jsonl / .md   the most confident wrong predictions with their text
    pca_2d.png, tsne_2d.png, embeddings_3d.html
                         the classifier's sentence embeddings (kosent.embeddings) of at most
                         ``max_points`` texts, coloured by true label and by prediction
"""

from __future__ import annotations

import html
import json
import logging
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import scipy.sparse as sp

from kosent import embeddings as emb_mod
from kosent import plots
from kosent.checkpoint import read_meta
from kosent.metrics import Calibration, calibration, check_predictions, classification_metrics, confusion
from kosent.predict import Predictor

REPORT_FILE = "report.json"
logger = logging.getLogger(__name__)


def predict_with_progress(predictor: Predictor, texts: Sequence[str], what: str = "texts",
                          pieces: int = 10, min_piece: int = 256) -> np.ndarray:
    """``predictor.predict_proba(texts)`` in about ``pieces`` pieces, logging texts/s and the ETA after each.

    Scoring a 5,000-review test split takes about a minute on two CPU cores: silence that long reads as a
    hang. Pieces of a few hundred texts keep the length-sorted batching nearly as tight as one call."""
    size = max(min_piece, -(-len(texts) // pieces))
    if len(texts) <= size:
        return predictor.predict_proba(texts)
    t0, parts = time.perf_counter(), []
    for start in range(0, len(texts), size):
        parts.append(predictor.predict_proba(texts[start:start + size]))
        done = min(len(texts), start + size)
        rate = done / max(time.perf_counter() - t0, 1e-9)
        logger.info("scoring the %s: %d/%d texts, %.0f texts/s, eta %.0f s", what, done, len(texts), rate,
                    (len(texts) - done) / rate)
    return np.concatenate(parts)


def evaluate_checkpoint(
    checkpoint: str | Path, texts: list[str], labels: list[int], prefix: str = "test_",
    score: Callable[[list[str]], np.ndarray] | None = None,
) -> dict[str, Any]:
    """Metrics of ``checkpoint`` on ``texts``; refuses data whose label names differ from the checkpoint's.

    ``score`` maps texts to the checkpoint's probabilities (``kosent.scoring.cluster_scorer`` in a Ray run);
    by default the checkpoint is loaded and scored in this process."""
    t0 = time.perf_counter()
    if score is None:
        predictor = Predictor.from_checkpoint(checkpoint)
        label_names = predictor.label_names
        probs = predict_with_progress(predictor, texts, what=f"{prefix.rstrip('_')} split")
    else:
        label_names = read_meta(checkpoint)["label_names"]
        probs = score(texts)
    metrics = classification_metrics(labels, probs, label_names, prefix=prefix)
    metrics[f"{prefix}seconds"] = time.perf_counter() - t0
    metrics[f"{prefix}size"] = len(texts)
    return metrics


@dataclass
class Evaluation:
    """What :func:`evaluate_report` computed and wrote (``files`` maps a short name to its path)."""

    out_dir: Path
    checkpoint: str
    prefix: str
    label_names: list[str]
    texts: list[str]
    labels: np.ndarray
    probs: np.ndarray
    metrics: dict[str, float]
    confusion: np.ndarray
    calibration: Calibration
    errors: list[dict[str, Any]]
    files: dict[str, Path] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)

    @property
    def preds(self) -> np.ndarray:
        return self.probs.argmax(axis=1)

    def summary(self) -> str:
        """A few lines for a terminal: headline metrics, per-class figures, the worst error, the files."""
        p, m = self.prefix, self.metrics
        head = [f"accuracy {m[p + 'accuracy']:.4f}", f"macro F1 {m[p + 'macro_f1']:.4f}"]
        if p + "roc_auc" in m:
            head.append(f"ROC-AUC {m[p + 'roc_auc']:.4f}")
        head.append(f"ECE {m[p + 'ece']:.4f}")
        lines = [f"{p.rstrip('_')}: {len(self.labels):,} texts, checkpoint {self.checkpoint}", "  " + "  ".join(head)]
        support = np.bincount(self.labels, minlength=len(self.label_names))
        width = max(len(n) for n in self.label_names)
        for k, name in enumerate(self.label_names):
            lines.append(f"  {name:<{width}}  precision {m[f'{p}precision_{name}']:.4f}  recall "
                         f"{m[f'{p}recall_{name}']:.4f}  F1 {m[f'{p}f1_{name}']:.4f}  (support {support[k]:,})")
        if self.errors:
            e = self.errors[0]
            lines.append(f"  most confident error: {e['confidence']:.3f} {e['predicted']} for a {e['label']} text: "
                         f"{_shorten(e['text'], 70)!r}")
        lines += [f"  note: {n}" for n in self.notes]
        lines.append(f"  wrote {', '.join(p.name for p in self.files.values())} to {self.out_dir}")
        return "\n".join(lines)


def _shorten(text: str, n: int) -> str:
    return text if len(text) <= n else text[: n - 1] + "…"


def most_confident_errors(texts: Sequence[str], labels: np.ndarray, probs: np.ndarray, label_names: list[str],
                          n: int) -> list[dict[str, Any]]:
    """The ``n`` wrong predictions made with the highest confidence, most confident first (ties: data order)."""
    pred = probs.argmax(axis=1)
    conf = probs.max(axis=1)
    wrong = np.flatnonzero(pred != labels)
    order = wrong[np.argsort(-conf[wrong], kind="stable")][: max(0, n)]
    return [
        {"rank": r + 1, "index": int(i), "text": texts[i], "label": label_names[int(labels[i])],
         "predicted": label_names[int(pred[i])], "confidence": round(float(conf[i]), 6),
         "scores": {name: round(float(probs[i, k]), 6) for k, name in enumerate(label_names)}}
        for r, i in enumerate(order)
    ]


def _errors_markdown(errors: list[dict[str, Any]], total_wrong: int, total: int) -> str:
    lines = [f"# Most confident errors ({len(errors)} of {total_wrong:,} wrong out of {total:,})", "",
             "| rank | confidence | true | predicted | text |", "|---|---|---|---|---|"]
    for e in errors:
        text = e["text"].replace("|", "\\|").replace("\n", " ")
        lines.append(f"| {e['rank']} | {e['confidence']:.4f} | {e['label']} | {e['predicted']} | {text} |")
    return "\n".join(lines) + "\n"


def _hover(texts: Sequence[str], labels: np.ndarray, probs: np.ndarray, label_names: list[str]) -> list[str]:
    pred = probs.argmax(axis=1)
    return [
        f"{html.escape(_shorten(t, 80))}<br>true {label_names[int(y)]}, predicted {label_names[int(k)]} "
        f"({float(p[k]):.3f})"
        for t, y, k, p in zip(texts, labels, pred, probs, strict=True)
    ]


def evaluate_report(
    checkpoint: str | Path,
    texts: Sequence[str],
    labels: Sequence[int],
    out_dir: str | Path,
    *,
    prefix: str = "test_",
    label_names: Sequence[str] | None = None,
    data: dict[str, Any] | None = None,
    embeddings: bool = True,
    max_points: int | None = 2000,
    n_errors: int = 20,
    n_bins: int = 10,
    seed: int = 42,
    device: str | None = None,
    title: str | None = None,
    progress: Callable[[str], None] | None = None,
) -> Evaluation:
    """Score ``checkpoint`` on ``texts`` and write the report folder ``out_dir`` (see the module docstring).

    ``label_names`` are the data's: a checkpoint trained on other labels is refused rather than scored.
    ``data`` (source, sizes, fingerprint ...) is stored in report.json as given. ``embeddings=False`` skips
    the PCA / t-SNE views (the slow part on a CPU); fewer than 10 texts skip them with a note.
    """
    t0 = time.perf_counter()
    texts = list(texts)
    if len(texts) != len(labels):
        raise ValueError(f"{len(texts)} texts but {len(labels)} labels: they must describe the same examples")
    if not texts:
        raise ValueError("nothing to evaluate: the split is empty (check --test-size / --split)")
    if max_points is not None and max_points < 10:
        raise ValueError(f"max_points must be at least 10 (t-SNE needs points), got {max_points}")
    if device is None:
        import torch

        device = "cuda" if torch.cuda.is_available() else "cpu"
    predictor = Predictor.from_checkpoint(checkpoint, device=device)
    names = list(predictor.label_names)
    if label_names is not None and list(label_names) != names:
        raise ValueError(f"checkpoint {checkpoint} predicts labels {names} but the data's labels are "
                         f"{list(label_names)}: score it on data with the labels it was trained on")
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    say = progress or (lambda _msg: None)

    probs, vectors = emb_mod.forward(predictor, texts, with_embeddings=embeddings, progress=say)
    y, _ = check_predictions(labels, probs, len(names))
    scored = time.perf_counter() - t0
    metrics = classification_metrics(y, probs, names, prefix=prefix)
    metrics[f"{prefix}size"] = len(texts)
    metrics[f"{prefix}seconds"] = scored
    cal = calibration(y, probs, n_bins=n_bins)
    matrix = confusion(y, probs, len(names))
    errors = most_confident_errors(texts, y, probs, names, n_errors)
    ev = Evaluation(out_dir=out, checkpoint=str(checkpoint), prefix=prefix, label_names=names, texts=texts,
                    labels=y, probs=probs, metrics=metrics, confusion=matrix, calibration=cal, errors=errors)
    name = title or Path(str(checkpoint)).parent.name + "/" + Path(str(checkpoint)).name

    ev.files["confusion_matrix"] = plots.plot_confusion_matrices({name: (matrix, names)}, out / "confusion_matrix.png")
    if len(names) == 2 and len(set(y.tolist())) == 2:
        ev.files["roc_curve"] = plots.plot_roc_curves({name: (y, probs[:, 1])}, out / "roc_curve.png")
    else:
        ev.notes.append("no ROC curve: it needs two labels, both present in the data")
    ev.files["reliability"] = plots.plot_reliability({name: cal}, out / "reliability.png")
    with (out / "errors.jsonl").open("w", encoding="utf-8") as f:
        for e in errors:
            f.write(json.dumps(e, ensure_ascii=False) + "\n")
    ev.files["errors_jsonl"] = out / "errors.jsonl"
    (out / "errors.md").write_text(_errors_markdown(errors, int((ev.preds != y).sum()), len(y)), encoding="utf-8")
    ev.files["errors_md"] = out / "errors.md"

    views: dict[str, Any] = {}
    if embeddings:
        idx = emb_mod.sample_indices(y, max_points, seed)
        if len(idx) < 10:
            ev.notes.append(f"no PCA / t-SNE views: {len(idx)} texts, at least 10 are needed")
        else:
            t1 = time.perf_counter()
            say(f"projecting {len(idx)} sentence embeddings (PCA, t-SNE 2-D and 3-D)")
            proj = emb_mod.project(vectors[idx], seed=seed, progress=say)
            sub_y, sub_pred = y[idx], ev.preds[idx]
            ev.files["pca_2d"] = plots.plot_embedding_2d(proj["pca"][:, :2], sub_y, sub_pred, names, out / "pca_2d.png",
                                                         f"PCA of sentence embeddings: {name} ({len(idx)} texts)")
            ev.files["tsne_2d"] = plots.plot_embedding_2d(proj["tsne_2d"], sub_y, sub_pred, names, out / "tsne_2d.png",
                                                          f"t-SNE of sentence embeddings: {name} ({len(idx)} texts)")
            ev.files["embeddings_3d"] = plots.write_embedding_html(
                {"PCA": proj["pca"], "t-SNE": proj["tsne_3d"]}, sub_y, sub_pred, names,
                _hover([texts[i] for i in idx], sub_y, probs[idx], names), out / "embeddings_3d.html",
                f"Sentence embeddings of {name}: {len(idx)} of {len(y):,} texts")
            views = {"points": int(len(idx)), "of": len(y), "seed": seed,
                     "vector": "TF-IDF vector (truncated SVD)" if sp.issparse(vectors)
                     else "input of the classification head",
                     "dims": int(vectors.shape[1]), "seconds": round(time.perf_counter() - t1, 2)}

    report = {
        "checkpoint": str(checkpoint),
        "model": predictor.meta.get("config", {}).get("model", predictor.meta.get("model_type")),
        "split": prefix.rstrip("_"),
        "size": len(y),
        "label_names": names,
        "class_counts": {n: int(c) for n, c in zip(names, np.bincount(y, minlength=len(names)), strict=True)},
        "metrics": metrics,
        "confusion_matrix": {"rows": "true", "columns": "predicted", "labels": names, "counts": matrix.tolist()},
        "calibration": cal.to_dict(),
        "errors": {"wrong": int((ev.preds != y).sum()), "listed": len(errors), "file": "errors.jsonl"},
        "embeddings": views or None,
        "data": data or {},
        "notes": ev.notes,
        "seconds": round(time.perf_counter() - t0, 2),
        "device": str(device),
    }
    ev.files = {"report": out / REPORT_FILE} | ev.files
    report["files"] = {k: p.name for k, p in ev.files.items()}
    (out / REPORT_FILE).write_text(json.dumps(report, indent=2, ensure_ascii=False), encoding="utf-8")
    return ev


__all__ = ["Evaluation", "evaluate_checkpoint", "evaluate_report", "most_confident_errors", "predict_with_progress"]
