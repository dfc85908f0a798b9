"""A checkpoint is a folder any Hugging Face tool can read, plus ``kosent.json`` for what HF does not know.

Layout::

    model.safetensors, config.json      save_pretrained (never pickle)
    tokenizer.json, tokenizer_config.json ...
    kosent.json                         label map, metrics, config, data fingerprint, version
    training_state/                     optional: optimizer + scheduler state for resuming (safetensors + JSON)

Loading refuses a folder without a label map or data fingerprint: a model whose labels or data are
unknown must not be served by mistake.

A checkpoint (and a manifest) may also live on object storage (``s3://bucket/runs/x/epoch_2``, ``gs://``):
multi-node runs write there. :func:`read_meta` reads ``kosent.json`` there in place, and
:func:`fetch_checkpoint` copies the folder (without ``training_state/``) into ``$KOSENT_HOME/remote`` once,
for loading. Storage itself (paths, URIs, credentials) is :mod:`kosent.storage`'s.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file
from transformers import PreTrainedModel, PreTrainedTokenizerBase

from kosent.config import cache_home, utc_now
from kosent.storage import copy_files, exists, is_uri, read_text

META_FILE = "kosent.json"
STATE_DIR = "training_state"
LORA_STATE_FILE = "lora.safetensors"  # in STATE_DIR: a LoRA run's adapters and head (kosent.models.lora)


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
        "created_at": utc_now(),
    }
    (folder / META_FILE).write_text(json.dumps(meta, indent=2, ensure_ascii=False), encoding="utf-8")


def read_meta(folder: str | Path) -> dict[str, Any]:
    """``kosent.json`` of a checkpoint (a folder, or a URI read in place), validated."""
    if is_uri(folder):
        location = f"{str(folder).rstrip('/')}/{META_FILE}"
        if not exists(location):
            raise CheckpointError(f"{folder}: no {META_FILE} there; not a kosent checkpoint (or not reachable "
                                  "with this machine's storage credentials)")
        return read_checked_json(location, ("label_names", "label2id", "data_fingerprint"), CheckpointError,
                                 "; refusing a checkpoint whose labels or data are unknown")
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


def read_checked_json(
    path: str | Path, required: tuple[str, ...], error: type[Exception], why: str = ""
) -> dict[str, Any]:
    """A JSON object whose ``required`` keys are all present and non-empty, else ``error`` naming file and key.

    Shared by ``kosent.json`` and the manifest: both are contracts that must fail loudly when incomplete.
    ``path`` may be a URI (``s3://...``).
    """
    try:
        doc = json.loads(read_text(path))
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

    import kosent.models.pooling  # registers the mean-pooling BERT with the Auto classes
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


def copy_checkpoint(source: str | Path, dest: str | Path) -> None:
    """The model, tokenizer and ``kosent.json`` of a checkpoint, without ``training_state/`` (what serving,
    an ensemble or a later stage needs); either side may be a URI."""
    copy_files(source, dest, skip=lambda rel: rel.split("/", 1)[0] == STATE_DIR)


def fetch_checkpoint(uri: str) -> Path:
    """A local copy of the checkpoint at ``uri`` (model, tokenizer, ``kosent.json``; not ``training_state/``).

    Cached under ``$KOSENT_HOME/remote/checkpoints/<name>-<key>``, the key a hash of the URI and its
    ``kosent.json``: every process on a node downloads once, and a checkpoint rewritten in place gets a new
    folder. The copy is made in a temporary folder and renamed, so a half-downloaded folder is never used.
    """
    if not is_uri(uri):
        return Path(uri)
    uri = uri.rstrip("/")
    meta = read_meta(uri)  # fails early, naming the URI, for a folder that is not a checkpoint
    key = hashlib.sha256((uri + json.dumps(meta, sort_keys=True)).encode("utf-8")).hexdigest()[:16]
    dest = cache_home() / "remote" / "checkpoints" / f"{uri.rsplit('/', 1)[-1]}-{key}"
    if (dest / META_FILE).is_file():
        return dest
    dest.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{dest.name}-", dir=dest.parent))
    try:
        copy_checkpoint(uri, staging)
        if not (staging / META_FILE).is_file():
            raise CheckpointError(f"{uri}: downloaded without {META_FILE}")
        try:
            os.rename(staging, dest)
        except OSError:  # another process on this node finished first: use its copy
            if not (dest / META_FILE).is_file():
                raise
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return dest
