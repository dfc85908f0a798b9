"""Learning curves from a run's per-epoch history (the ``history`` list the training loop reports)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

# (title, train key, validation key)
CURVES = (
    ("loss", "train_loss", "val_loss"),
    ("accuracy", "train_accuracy", "val_accuracy"),
    ("macro F1", "train_macro_f1", "val_macro_f1"),
)


def plot_learning_curves(history: list[dict[str, Any]], path: str | Path, title: str | None = None) -> Path:
    """Write loss, accuracy and macro F1 per epoch, train vs validation, side by side, to ``path`` (PNG).

    A metric missing from the history (older runs have no train_macro_f1) is simply not drawn.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    epochs = [int(h.get("epoch", i + 1)) for i, h in enumerate(history)]
    fig, axes = plt.subplots(1, len(CURVES), figsize=(4.2 * len(CURVES), 3.4), constrained_layout=True)
    for ax, (name, train_key, val_key) in zip(axes, CURVES, strict=True):
        for key, label, style in ((train_key, "train", "o-"), (val_key, "validation", "s--")):
            points = [(e, h[key]) for e, h in zip(epochs, history, strict=True) if h.get(key) is not None]
            if points:
                ax.plot([p[0] for p in points], [p[1] for p in points], style, label=label)
        ax.set_title(name)
        ax.set_xlabel("epoch")
        if epochs:
            ax.set_xticks(sorted(set(epochs)))
        ax.grid(alpha=0.3)
        if ax.get_legend_handles_labels()[0]:
            ax.legend()
    if title:
        fig.suptitle(title)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path




# --------------------------------------------------------------------------------------------------
# Sweeps (kosent.sweep): rows are TrialRow-like objects with trial_id, lr, scale, val_macro_f1, outcome
# and history (per-epoch metric dicts).
# --------------------------------------------------------------------------------------------------


def _pyplot() -> Any:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _setting(r: Any) -> str:
    """A trial's learning rate and swept grid values (``TrialRow.params``), as a legend label."""
    params = getattr(r, "params", None) or {}
    return ", ".join([f"lr {r.lr:.3g}"] + [f"{k}={v}" for k, v in params.items()])


def plot_f1_vs_scale(rows: list[Any], path: str | Path, metric: str = "val_macro_f1") -> Path:
    """Best validation macro F1 of each trial against its dataset scale factor, one line per learning rate
    and grid setting (the paper's scaling result). Trials ASHA stopped early are hollow markers; failed
    trials are left out."""
    plt = _pyplot()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig, ax = plt.subplots(figsize=(6.4, 4.2), constrained_layout=True)
    by_setting: dict[str, list[Any]] = {}
    for r in rows:
        if getattr(r, metric, None) is not None and r.outcome != "failed":
            by_setting.setdefault(_setting(r), []).append(r)
    for label, group in sorted(by_setting.items(), key=lambda kv: (kv[1][0].lr, kv[0])):
        group = sorted(group, key=lambda r: r.scale)
        line = ax.plot([r.scale for r in group], [getattr(r, metric) for r in group], "-", label=label)[0]
        for r in group:
            early = r.outcome != "completed"
            ax.plot([r.scale], [getattr(r, metric)], "o", color=line.get_color(),
                    markerfacecolor="none" if early else line.get_color())
    scales = sorted({r.scale for r in rows})
    if scales:
        ax.set_xticks(scales)
    ax.set_xlabel("dataset scale factor (x train_size)")
    ax.set_ylabel(f"best {metric}")
    ax.set_title(f"{metric} vs training set size (hollow: stopped early)")
    ax.grid(alpha=0.3)
    if by_setting:
        ax.legend(fontsize="small")
    else:
        ax.text(0.5, 0.5, "no trial reported a score", ha="center", va="center", transform=ax.transAxes)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def plot_trial_curves(rows: list[Any], path: str | Path) -> Path:
    """Every trial's learning curves in one figure: validation macro F1, validation loss and training loss
    per epoch, one line per trial (labelled by lr and scale; dashed when the trial failed)."""
    plt = _pyplot()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    panels = (("val_macro_f1", "validation macro F1"), ("val_loss", "validation loss"),
              ("train_loss", "training loss"))
    fig, axes = plt.subplots(1, len(panels), figsize=(4.6 * len(panels), 3.8), constrained_layout=True)
    for ax, (key, title) in zip(axes, panels, strict=True):
        for r in rows:
            points = [(h["epoch"], h[key]) for h in r.history if h.get(key) is not None and h.get("epoch") is not None]
            if points:
                ax.plot([p[0] for p in points], [p[1] for p in points], "--" if r.outcome == "failed" else "o-",
                        label=f"{_setting(r)} x{r.scale}")
        ax.set_title(title)
        ax.set_xlabel("epoch")
        epochs = sorted({int(h["epoch"]) for r in rows for h in r.history if h.get("epoch") is not None})
        if epochs:
            ax.set_xticks(epochs)
        ax.grid(alpha=0.3)
    handles, labels = axes[0].get_legend_handles_labels()
    if handles:
        fig.legend(handles, labels, loc="outside right upper", fontsize="small")
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


# --------------------------------------------------------------------------------------------------
# Evaluation (kosent.evaluate, ray_jobs/paper.py): several models may share one figure, keyed by name.
# --------------------------------------------------------------------------------------------------


def _colour(k: int) -> str:
    """Label k's colour, the same in every evaluation figure (matplotlib's tab10)."""
    palette = ("#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd", "#8c564b", "#e377c2", "#7f7f7f")
    return palette[k % len(palette)]


def _grid(n: int, width: float, height: float) -> tuple[Any, list[Any]]:
    plt = _pyplot()
    cols = min(n, 4)
    rows = -(-n // cols)
    fig, axes = plt.subplots(rows, cols, figsize=(width * cols, height * rows), constrained_layout=True, squeeze=False)
    flat = list(axes.ravel())
    for ax in flat[n:]:
        ax.set_visible(False)
    return fig, flat[:n]


def _save(fig: Any, path: str | Path) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    _pyplot().close(fig)
    return path


def plot_confusion_matrices(items: dict[str, tuple[Any, list[str]]], path: str | Path) -> Path:
    """One panel per name: the ``[true, predicted]`` count matrix, each cell with its count and its share of
    the true class (the row), shaded by that share so an imbalanced test set still reads at a glance."""
    import numpy as np

    fig, axes = _grid(len(items), 3.6, 3.3)
    for ax, (name, (matrix, label_names)) in zip(axes, items.items(), strict=True):
        m = np.asarray(matrix, dtype=float)
        share = m / np.maximum(m.sum(axis=1, keepdims=True), 1)
        ax.imshow(share, cmap="Blues", vmin=0, vmax=1)
        for i in range(m.shape[0]):
            for j in range(m.shape[1]):
                ax.text(j, i, f"{int(m[i, j])}\n{share[i, j]:.1%}", ha="center", va="center",
                        color="white" if share[i, j] > 0.6 else "black", fontsize=9)
        ticks = range(len(label_names))
        ax.set_xticks(ticks, label_names)
        ax.set_yticks(ticks, label_names)
        ax.set_xlabel("predicted")
        ax.set_ylabel("true")
        ax.set_title(name, fontsize=10)
    return _save(fig, path)


def plot_roc_curves(items: dict[str, tuple[Any, Any]], path: str | Path) -> Path:
    """ROC curves of binary classifiers in one axes: ``{name: (labels, probability of label 1)}``."""
    from sklearn.metrics import roc_auc_score, roc_curve

    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(5.2, 4.6), constrained_layout=True)
    for name, (labels, scores) in items.items():
        fpr, tpr, _ = roc_curve(labels, scores)
        ax.plot(fpr, tpr, label=f"{name} (AUC {roc_auc_score(labels, scores):.3f})")
    ax.plot([0, 1], [0, 1], ":", color="grey", label="chance")
    ax.set_xlabel("false positive rate")
    ax.set_ylabel("true positive rate")
    ax.set_title("ROC curve")
    ax.grid(alpha=0.3)
    ax.legend(fontsize="small", loc="lower right")
    return _save(fig, path)


def plot_reliability(items: dict[str, Any], path: str | Path) -> Path:
    """Reliability diagram: accuracy against mean confidence per bin (``kosent.metrics.Calibration``), the
    diagonal being perfect calibration, with ECE in the legend; below it how many predictions fall in each
    bin. One model: bars; several: one line each."""
    import numpy as np

    plt = _pyplot()
    fig, (ax, hist) = plt.subplots(2, 1, figsize=(5.2, 5.8), height_ratios=(3, 1), sharex=True,
                                   constrained_layout=True)
    single = len(items) == 1
    for k, (name, cal) in enumerate(items.items()):
        edges = np.asarray(cal.edges)
        centres, width = (edges[:-1] + edges[1:]) / 2, edges[1] - edges[0]
        acc, conf, counts = np.asarray(cal.accuracy), np.asarray(cal.confidence), np.asarray(cal.counts)
        filled = counts > 0
        label = f"{name} (ECE {cal.ece:.3f})"
        if single:
            ax.bar(centres[filled], acc[filled], width=width * 0.95, color=_colour(k), alpha=0.75,
                   edgecolor="black", label=label)
            ax.plot(conf[filled], acc[filled], "o", color="black", markersize=3, label="mean confidence per bin")
            hist.bar(centres, counts, width=width * 0.95, color=_colour(k), alpha=0.75)
        else:
            ax.plot(conf[filled], acc[filled], "o-", color=_colour(k), label=label)
            hist.step(edges, np.append(counts, counts[-1]), where="post", color=_colour(k))
    ax.plot([0, 1], [0, 1], ":", color="grey", label="perfectly calibrated")
    ax.set_xlim(0, 1)
    ax.set_ylim(0, 1)
    ax.set_ylabel("accuracy")
    ax.set_title("reliability (top-label confidence)")
    ax.grid(alpha=0.3)
    ax.legend(fontsize="small", loc="upper left")
    hist.set_xlabel("confidence")
    hist.set_ylabel("predictions")
    hist.grid(alpha=0.3)
    return _save(fig, path)


def plot_embedding_2d(coords: Any, labels: Any, preds: Any, label_names: list[str], path: str | Path,
                      title: str) -> Path:
    """Two scatter panels of the same 2-D points: coloured by true label, and by prediction (errors as x)."""
    import numpy as np

    plt = _pyplot()
    coords, labels, preds = np.asarray(coords), np.asarray(labels), np.asarray(preds)
    fig, axes = plt.subplots(1, 2, figsize=(10.5, 4.8), constrained_layout=True, sharex=True, sharey=True)
    wrong = preds != labels
    panels = (
        ("true label", [(f"{n} ({int((labels == k).sum())})", labels == k, k, "o") for k, n in enumerate(label_names)]),
        ("prediction", [(f"{n}{' wrong' if w else ''} ({int(((preds == k) & (wrong == w)).sum())})",
                         (preds == k) & (wrong == w), k, "x" if w else "o")
                        for k, n in enumerate(label_names) for w in (False, True)]),
    )
    for ax, (what, groups) in zip(axes, panels, strict=True):
        for name, sel, k, marker in groups:
            if sel.any():
                ax.scatter(coords[sel, 0], coords[sel, 1], s=14 if marker == "x" else 7, alpha=0.6,
                           color=_colour(k), marker=marker, label=name)
        ax.set_title(f"coloured by {what}" + (" (x: wrong)" if what == "prediction" else ""))
        ax.legend(fontsize="small", markerscale=2)
        ax.grid(alpha=0.2)
    fig.suptitle(title)
    return _save(fig, path)


def write_embedding_html(views: dict[str, Any], labels: Any, preds: Any, label_names: list[str],
                         hover: list[str], path: str | Path, title: str) -> Path:
    """One self-contained HTML page (plotly.js inlined: it opens offline) with a 3-D scatter per view
    (e.g. PCA and t-SNE) side by side, and buttons to colour the points by true label, by prediction, or
    by correct / wrong. ``hover`` is one line per point (the text, shortened)."""
    import numpy as np
    import plotly.graph_objects as go
    from plotly.subplots import make_subplots

    labels, preds = np.asarray(labels), np.asarray(preds)
    names = list(views)
    fig = make_subplots(rows=1, cols=len(names), specs=[[{"type": "scene"}] * len(names)], subplot_titles=names,
                        horizontal_spacing=0.02)
    wrong = preds != labels
    modes = {
        "true label": [(f"true {n}", labels == k, _colour(k)) for k, n in enumerate(label_names)],
        "prediction": [(f"predicted {n}", preds == k, _colour(k)) for k, n in enumerate(label_names)],
        "correct / wrong": [("correct", ~wrong, "#2ca02c"), ("wrong", wrong, "#d62728")],
    }
    hover = np.asarray(hover, dtype=object)
    visibility: dict[str, list[bool]] = {m: [] for m in modes}
    for col, view in enumerate(names, start=1):
        xyz = np.asarray(views[view])
        for mode, groups in modes.items():
            for name, sel, colour in groups:
                fig.add_trace(go.Scatter3d(
                    x=xyz[sel, 0], y=xyz[sel, 1], z=xyz[sel, 2], mode="markers", name=name,
                    legendgroup=name, showlegend=col == 1, visible=mode == "true label",
                    marker={"size": 2.5, "color": colour, "opacity": 0.75},
                    text=hover[sel], hovertemplate="%{text}<extra>" + name + "</extra>",
                ), row=1, col=col)
                for m in modes:
                    visibility[m].append(m == mode)
    buttons = [{"label": f"colour: {m}", "method": "update", "args": [{"visible": v}]} for m, v in visibility.items()]
    fig.update_layout(title=title, height=650, margin={"l": 0, "r": 0, "t": 70, "b": 0},
                      updatemenus=[{"buttons": buttons, "direction": "right", "x": 0.0, "y": 1.08,
                                    "xanchor": "left", "showactive": True}])
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.write_html(str(path), include_plotlyjs=True, full_html=True)
    return path


def plot_metric_vs_scale(series: dict[str, list[tuple[int, float]]], path: str | Path,
                         metric: str = "test_macro_f1") -> Path:
    """``metric`` against the dataset scale factor, one line per model: the paper's data-scaling result."""
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(6.2, 4.2), constrained_layout=True)
    scales: set[int] = set()
    for k, (name, points) in enumerate(series.items()):
        points = sorted(points)
        scales |= {p[0] for p in points}
        ax.plot([p[0] for p in points], [p[1] for p in points], "o-", color=_colour(k), label=name)
    if scales:
        ax.set_xticks(sorted(scales))
    ax.set_xlabel("dataset scale factor (x train_size)")
    ax.set_ylabel(metric)
    ax.set_title(f"{metric} vs training set size (same test set)")
    ax.grid(alpha=0.3)
    if series:
        ax.legend()
    return _save(fig, path)


__all__ = [
    "plot_confusion_matrices", "plot_embedding_2d", "plot_f1_vs_scale", "plot_learning_curves",
    "plot_metric_vs_scale", "plot_reliability", "plot_roc_curves", "plot_trial_curves", "write_embedding_html",
]
