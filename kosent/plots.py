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
# Sweeps (kosent.tune): rows are TrialRow-like objects with trial_id, lr, scale, val_macro_f1, outcome
# and history (per-epoch metric dicts).
# --------------------------------------------------------------------------------------------------


def _pyplot() -> Any:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def plot_f1_vs_scale(rows: list[Any], path: str | Path, metric: str = "val_macro_f1") -> Path:
    """Best validation macro F1 of each trial against its dataset scale factor, one line per learning rate
    (the paper's scaling result). Trials ASHA stopped early are hollow markers; failed trials are left out."""
    plt = _pyplot()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig, ax = plt.subplots(figsize=(6.4, 4.2), constrained_layout=True)
    by_lr: dict[str, list[Any]] = {}
    for r in rows:
        if getattr(r, metric, None) is not None and r.outcome != "failed":
            by_lr.setdefault(f"{r.lr:.3g}", []).append(r)
    for lr, group in sorted(by_lr.items(), key=lambda kv: float(kv[0])):
        group = sorted(group, key=lambda r: r.scale)
        line = ax.plot([r.scale for r in group], [getattr(r, metric) for r in group], "-", label=f"lr {lr}")[0]
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
    if by_lr:
        ax.legend()
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
                        label=f"lr {r.lr:.3g} x{r.scale}")
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


__all__ = ["plot_f1_vs_scale", "plot_learning_curves", "plot_trial_curves"]
