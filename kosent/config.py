"""Configuration as plain dataclasses whose defaults work offline on a 2-core machine.

One name per concept: the field names here are the CLI flags (``--train-size`` -> ``train_size``),
the YAML keys and the keys stored in a checkpoint's ``kosent.json``.
"""

from __future__ import annotations

import dataclasses
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

# The repository sits beside ``shared/`` (``../shared/data``); users point KOSENT_DATA elsewhere.
_REPO_ROOT = Path(__file__).resolve().parent.parent


def data_home() -> Path:
    """Folder holding the NSMC and K-MHaS files (``nsmc/ratings_train.txt`` ...)."""
    return Path(os.environ.get("KOSENT_DATA", _REPO_ROOT.parent / "shared" / "data"))


def cache_home() -> Path:
    """Where converted models and downloaded data are cached (``KOSENT_HOME``, else ~/.cache/kosent)."""
    return Path(os.environ.get("KOSENT_HOME", Path.home() / ".cache" / "kosent"))


@dataclass
class DataConfig:
    """Which data, and how it is split.

    ``source`` is ``nsmc``, ``kmhas``, a local file (.csv/.tsv/.txt/.jsonl/.parquet), a Hugging Face
    dataset id written ``hf:<id>``, or an ``http(s)://`` URL (verified against ``sha256``).
    Splits follow the paper: ``test_size`` and ``val_size`` rows are carved out once; the training set
    is ``train_size * scale`` rows of the rest, and larger scales contain the smaller ones.
    """

    source: str = "nsmc"
    path: str | None = None
    text_column: str = "text"
    label_column: str = "label"
    label_map: dict[str, int] | None = None
    sha256: str | None = None
    train_size: int = 10_000
    val_size: int = 1_000
    test_size: int = 5_000
    scale: int = 1
    split_seed: int = 42  # the splits' seed, apart from the training seed: reseeding training keeps the splits


@dataclass
class TrainConfig:
    """How one model is trained; the same fields drive the in-process loop and every Ray worker.

    ``model`` is a Hugging Face hub id, a local folder, or a kosent alias: ``e5-small-ko`` (the offline
    multilingual-e5-small with its vocabulary pruned to Korean), ``e5-small`` (full vocabulary),
    ``tiny`` (random tiny BERT, for tests), ``rnn`` / ``birnn`` (GRU baselines on the same tokenizer).
    """

    model: str = "e5-small-ko"
    max_length: int = 128
    batch_size: int = 32
    eval_batch_size: int = 64
    epochs: int = 2
    lr: float = 5e-5
    weight_decay: float = 0.01
    warmup_ratio: float = 0.1
    max_grad_norm: float = 1.0
    patience: int = 2
    max_steps: int | None = None
    seed: int = 42
    threads: int | None = None
    # Layer-wise learning-rate decay: encoder layer k of L (embeddings k = 0) trains at
    # lr * layer_decay ** (L + 1 - k), the head at lr; 1.0 turns it off. Lower layers hold general
    # language knowledge that a small labelled set should disturb less (ELECTRA, ULMFiT's discriminative LR).
    layer_decay: float = 1.0
    # What the classifier reads: "cls" (the first token through BERT's pooler) or "mean" (the mean of the
    # last layer over real tokens, how e5 itself was trained to embed sentences).
    pooling: str = "cls"
    # Distillation: a checkpoint (a plain or an ensemble one) whose probabilities on ``unlabelled_size``
    # unlabelled texts of the source (never a train, validation or test text) become soft targets,
    # trained on alongside the labelled rows.
    teacher: str | None = None
    unlabelled_size: int | None = 20000
    # Ray Train
    num_workers: int = 1
    use_gpu: bool = False
    # GPUs per worker with use_gpu: 1 (a GPU each), or a fraction (0.25) so that several runs' workers share
    # one GPU (Tune trials, the paper's jobs); a small model leaves most of a large GPU idle otherwise.
    gpus_per_worker: float = 1.0
    cpus_per_worker: float = 1.0
    max_failures: int = 0
    keep_checkpoints: int = 2
    storage_path: str = "runs"
    name: str | None = None
    resume: bool = False
    # Experiment tracking (kosent.tracking): None = $MLFLOW_TRACKING_URI, else a local MLflow store (SQLite) in
    # <storage_path>/mlruns; "off" = none; anything else = a tracking URI (http://127.0.0.1:5001, sqlite:///...).
    tracking: str | None = None
    data: DataConfig = field(default_factory=DataConfig)


@dataclass
class PretrainConfig(TrainConfig):
    """Domain-adaptive masked-LM pretraining (``ray_jobs/pretrain.py``, ``kosent.pretrain``).

    The TrainConfig fields mean the same here (``model`` is the encoder to adapt); ``data`` names the
    labelled dataset and split settings of the later fine-tuning: its validation and test texts are kept
    out of the corpus. ``unlabelled_size`` caps the corpus (0 or None: every remaining text).
    """

    epochs: int = 1
    max_length: int = 64
    storage_path: str = "runs/pretrain"
    mlm_probability: float = 0.15
    holdout_size: int = 500
    # Share of the steps that train the masked-LM head alone (the encoder's gradients are dropped; the
    # decoder is tied to the word embeddings, so only the head's transform and bias learn). e5 ships without
    # that head: gradients from a random head would otherwise pull the encoder off course (docs/IMPROVING.md).
    head_warmup_ratio: float = 0.3


def to_dict(cfg: Any) -> dict[str, Any]:
    """A JSON-ready dict of a config dataclass (nested dataclasses become dicts)."""
    return dataclasses.asdict(cfg)


def from_dict(cls: type, values: dict[str, Any]) -> Any:
    """Build ``cls`` from a dict, refusing unknown keys by name so a typo in YAML is not ignored."""
    names = {f.name: f for f in dataclasses.fields(cls)}
    unknown = sorted(set(values) - set(names))
    if unknown:
        raise ValueError(f"unknown {cls.__name__} field(s): {', '.join(unknown)}; known: {', '.join(names)}")
    kwargs = dict(values)
    if "data" in kwargs and isinstance(kwargs["data"], dict) and issubclass(cls, TrainConfig):
        kwargs["data"] = from_dict(DataConfig, kwargs["data"])
    return cls(**kwargs)


def load_yaml(path: str | Path, cls: type = TrainConfig) -> Any:
    """Read a YAML file into ``cls``; a missing or malformed file is named in the error."""
    p = Path(path)
    if not p.is_file():
        raise FileNotFoundError(f"config file not found: {p}")
    try:
        values = yaml.safe_load(p.read_text(encoding="utf-8")) or {}
    except yaml.YAMLError as e:
        raise ValueError(f"{p}: not valid YAML: {e}") from e
    if not isinstance(values, dict):
        raise ValueError(f"{p}: expected a mapping of config fields at the top level")
    return from_dict(cls, values)
