"""A checkpoint is a folder any Hugging Face tool can read, plus ``kosent.json`` for what HF does not know.

Layout::

    model.safetensors, config.json      save_pretrained (never pickle)
    tokenizer.json, tokenizer_config.json ...
    kosent.json                         label map, metrics, config, data fingerprint, version
    training_state/                     optional: optimizer + scheduler state for resuming (safetensors + JSON)

Loading refuses a folder without a label map or data fingerprint: a model whose labels or data are
unknown must not be served by mistake.
"""

from __future__ import annotations

import datetime as _dt
import json
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file
from transformers import PreTrainedModel, PreTrainedTokenizerBase

META_FILE = "kosent.json"
STATE_DIR = "training_state"


class CheckpointError(ValueError):
    """A folder that is not a usable kosent checkpoint; the message names the folder and what is missing."""


def _version() -> str:
    from kosent import __version__

    return __version__


def save_checkpoint(
    folder: str | Path,
    model: PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase,
    *,
    label_names: list[str],
    metrics: dict[str, float],
    config: dict[str, Any],
    data_fingerprint: str,
) -> Path:
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(folder, safe_serialization=True)
    tokenizer.save_pretrained(folder)
    write_meta(folder, model_type=model.config.model_type, label_names=label_names, metrics=metrics,
               config=config, data_fingerprint=data_fingerprint)
    return folder


def write_meta(
    folder: Path,
    *,
    model_type: str,
    label_names: list[str],
    metrics: dict[str, float],
    config: dict[str, Any],
    data_fingerprint: str,
) -> None:
    """Write ``kosent.json``: what Hugging Face's own files do not record."""
    meta = {
        "kosent_version": _version(),
        "label_names": list(label_names),
        "label2id": {n: i for i, n in enumerate(label_names)},
        "metrics": metrics,
        "config": config,
        "data_fingerprint": data_fingerprint,
        "model_type": model_type,
        "created_at": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
    }
    (folder / META_FILE).write_text(json.dumps(meta, indent=2, ensure_ascii=False), encoding="utf-8")


def read_meta(folder: str | Path) -> dict[str, Any]:
    """``kosent.json`` of a checkpoint, validated."""
    folder = Path(folder)
    path = folder / META_FILE
    if not folder.is_dir():
        raise CheckpointError(f"{folder}: checkpoint folder does not exist")
    if not path.is_file():
        raise CheckpointError(
            f"{folder}: no {META_FILE}; not a kosent checkpoint (train one with `kosent train`, or pass a "
            "Hugging Face model folder as --model to fine-tune it)"
        )
    return read_checked_json(path, ("label_names", "label2id", "data_fingerprint"), CheckpointError,
                             "; refusing a checkpoint whose labels or data are unknown")


def read_checked_json(path: Path, required: tuple[str, ...], error: type[Exception], why: str = "") -> dict[str, Any]:
    """A JSON object whose ``required`` keys are all present and non-empty, else ``error`` naming file and key.

    Shared by ``kosent.json`` and the manifest: both are contracts that must fail loudly when incomplete.
    """
    try:
        doc = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as e:
        raise error(f"{path}: not valid JSON ({e})") from e
    for key in required:
        if not doc.get(key):
            raise error(f"{path}: missing '{key}'{why}")
    return doc


def load_checkpoint(
    folder: str | Path, device: str | torch.device = "cpu"
) -> tuple[PreTrainedModel, PreTrainedTokenizerBase, dict[str, Any]]:
    """Model (in eval mode), tokenizer and metadata of a checkpoint folder."""
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    import kosent.models.rnn  # noqa: F401  (registers the RNN with the Auto classes)

    meta = read_meta(folder)
    model = AutoModelForSequenceClassification.from_pretrained(str(folder), dtype=torch.float32).to(device)
    model.eval()
    tokenizer = AutoTokenizer.from_pretrained(str(folder))
    return model, tokenizer, meta


def save_training_state(
    folder: str | Path,
    optimizer: torch.optim.Optimizer,
    scheduler: torch.optim.lr_scheduler.LRScheduler,
    progress: dict[str, Any],
) -> None:
    """Optimizer moments as safetensors, everything else as JSON, so resuming loads no pickle."""
    folder = Path(folder) / STATE_DIR
    folder.mkdir(parents=True, exist_ok=True)
    sd = optimizer.state_dict()
    tensors = {
        f"{idx}.{key}": value.detach().cpu().contiguous()
        for idx, state in sd["state"].items()
        for key, value in state.items()
        if isinstance(value, torch.Tensor)
    }
    save_file(tensors, str(folder / "optimizer.safetensors"))
    doc = {"param_groups": sd["param_groups"], "scheduler": scheduler.state_dict(), "progress": progress}
    (folder / "state.json").write_text(json.dumps(doc, indent=2), encoding="utf-8")


def load_training_state(
    folder: str | Path,
    optimizer: torch.optim.Optimizer,
    scheduler: torch.optim.lr_scheduler.LRScheduler,
) -> dict[str, Any]:
    """Restore optimizer and scheduler in place; returns the saved ``progress`` dict."""
    folder = Path(folder) / STATE_DIR
    if not (folder / "state.json").is_file():
        raise CheckpointError(f"{folder}: no training state to resume from")
    doc = json.loads((folder / "state.json").read_text(encoding="utf-8"))
    state: dict[int, dict[str, torch.Tensor]] = {}
    for name, value in load_file(str(folder / "optimizer.safetensors")).items():
        idx, key = name.split(".", 1)
        state.setdefault(int(idx), {})[key] = value
    optimizer.load_state_dict({"state": state, "param_groups": doc["param_groups"]})
    scheduler.load_state_dict(doc["scheduler"])
    return doc["progress"]
