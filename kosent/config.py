"""Configuration: dataclasses whose defaults work offline on a 2-core machine.

Every configuration in kosent (``TrainConfig``, ``DataConfig``, ``PretrainConfig``, ``SweepConfig``,
``PaperConfig``, ``ServeArgs``) is declared the same way: a pydantic dataclass with ``extra="forbid"``
(:data:`config_dataclass`), each field a ``Field(default, description=...)``. Why this one mechanism: the training
code relies on the dataclass protocol (``dataclasses.replace``, ``fields``, ``asdict``), and values that
arrive as text (YAML, flags, ``serve run key=value``, a Serve config file) need checking and converting,
which pydantic does from the same declaration. The flags of every entry point are generated from it
(:func:`add_config_args`), the description being the flag's help.

One name per concept: the field names here are the CLI flags (``--train-size`` -> ``train_size``),
the YAML keys and the keys stored in a checkpoint's ``kosent.json``.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import time
import types
import typing
from collections.abc import Iterable
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import ConfigDict, Field, ValidationError
from pydantic.dataclasses import dataclass

from kosent.storage import is_uri

#: How every config dataclass is declared (``@config_dataclass``): a pydantic dataclass on which unknown fields
#: are errors (a typo in YAML is not ignored).
config_dataclass = dataclass(config=ConfigDict(extra="forbid"))

# The repository sits beside ``shared/`` (``../shared/data``); users point KOSENT_DATA elsewhere.
_REPO_ROOT = Path(__file__).resolve().parent.parent


def data_home() -> Path:
    """Folder holding the NSMC and K-MHaS files (``nsmc/ratings_train.txt`` ...)."""
    return Path(os.environ.get("KOSENT_DATA", _REPO_ROOT.parent / "shared" / "data"))


def utc_now() -> str:
    """The time now in UTC, ISO 8601 with a ``Z`` (``2026-12-02T13:45:07Z``): every timestamp kosent writes."""
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())


def cache_home() -> Path:
    """Where converted models and downloaded data are cached (``KOSENT_HOME``, else ~/.cache/kosent)."""
    return Path(os.environ.get("KOSENT_HOME", Path.home() / ".cache" / "kosent"))


@config_dataclass
class DataConfig:
    """Which data, and how it is split.

    ``source`` is ``nsmc``, ``kmhas``, a local file (.csv/.tsv/.txt/.jsonl/.parquet), a Hugging Face
    dataset id written ``hf:<id>``, or an ``http(s)://`` URL (verified against ``sha256``).
    Splits follow the paper: ``test_size`` and ``val_size`` rows are carved out once; the training set
    is ``train_size * scale`` rows of the rest, and larger scales contain the smaller ones.
    """

    source: str = Field("nsmc", description="the dataset: nsmc, kmhas, a .csv/.tsv/.txt/.jsonl/.parquet file (a "
                        "path or an s3:// URI), hf:<dataset id>, or an http(s):// URL (checked against --sha256)")
    path: str | None = Field(None, description="a file (kmhas: a folder) or s3:// URI to read instead of the "
                             "source's default location (nsmc and kmhas read from $KOSENT_DATA)")
    text_column: str = Field("text", description="column holding the text in a table source")
    label_column: str = Field("label", description="column holding the label in a table source")
    label_map: dict[str, int] | None = Field(None, description="label value -> class id, as JSON or KEY=ID pairs "
                                             "(default: 0/1, or the source's own labels)")
    sha256: str | None = Field(None, description="expected SHA-256 of a downloaded file; a mismatch stops the run")
    train_size: int = Field(10_000, ge=1, description="training rows at scale 1 (the paper's 10,000)")
    val_size: int = Field(1_000, ge=1, description="validation rows: they pick the best epoch and the best trial")
    test_size: int = Field(5_000, ge=1, description="test rows, scored once at the end (the paper's 5,000)")
    scale: int = Field(1, ge=1, description="training rows = train_size x scale; larger scales contain the "
                       "smaller ones, validation and test rows stay the same")
    split_seed: int = Field(42, description="seed of the split only: reseeding training (--seed) keeps the splits")


@config_dataclass
class TrainConfig:
    """How one model is trained; the same fields drive the in-process loop and every Ray worker.

    ``model`` is a Hugging Face hub id, a local folder, or a kosent alias: ``e5-small-ko`` (the offline
    multilingual-e5-small with its vocabulary pruned to Korean), ``e5-small`` (full vocabulary),
    ``gemma-ko`` (EmbeddingGemma-300M with its vocabulary pruned to Korean),
    ``tiny`` (random tiny BERT, for tests), ``rnn`` / ``birnn`` (GRU baselines on the same tokenizer).
    """

    model: str = Field("e5-small-ko", description="the encoder to fine-tune: e5-small-ko, e5-small, gemma-ko, tiny, "
                       "rnn, birnn, tfidf, a Hugging Face id or a local model folder")
    max_length: int = Field(128, ge=8, description="tokens per text; longer texts are cut")
    batch_size: int = Field(32, ge=1, description="training texts per optimizer step (per worker)")
    eval_batch_size: int = Field(64, ge=1, description="texts per forward pass when scoring")
    epochs: int = Field(2, ge=1, description="passes over the training rows")
    lr: float = Field(5e-5, gt=0, description="peak learning rate (AdamW, linear warm-up then decay)")
    weight_decay: float = Field(0.01, ge=0, description="AdamW weight decay")
    warmup_ratio: float = Field(0.1, ge=0, le=1, description="share of the steps spent warming the learning rate up")
    max_grad_norm: float = Field(1.0, gt=0, description="gradients are clipped to this norm")
    patience: int = Field(2, ge=1, description="epochs without a better val_macro_f1 before training stops early")
    max_steps: int | None = Field(None, ge=1, description="stop after this many optimizer steps (quick runs, tests)")
    seed: int = Field(42, description="seed of the model's initialisation, dropout and batch order")
    threads: int | None = Field(None, ge=1, description="torch CPU threads (default: the CPUs Ray gives the worker)")
    # Lower layers hold general language knowledge that a small labelled set should disturb less (ELECTRA,
    # ULMFiT's discriminative learning rates).
    layer_decay: float = Field(1.0, gt=0, le=1, description="layer-wise learning-rate decay: encoder layer k of L "
                               "trains at lr x layer_decay^(L+1-k), the head at lr; 1.0 turns it off")
    pooling: str | None = Field(None, description="what the classifier reads: cls (the first token through the "
                                "pooler) or mean (the mean of the last layer over real tokens, how e5 and EmbeddingGemma "
                                "embed sentences); default: the model's own (mean for gemma-ko, else cls)")
    # A small labelled set moves a large encoder's lower parts little; freezing them saves their gradients,
    # AdamW state and (below the lowest trainable layer) the backward pass: bench/bench_gemma.py.
    freeze_embeddings: bool = Field(False, description="keep the token embeddings as pretrained (for gemma-ko most "
                                    "of its parameters)")
    frozen_layers: int = Field(0, ge=0, description="keep the embeddings and the lowest N encoder layers as "
                               "pretrained: no backward pass below layer N")
    lora_rank: int = Field(0, ge=0, description="LoRA: train rank-R adapters on the linear layers of the encoder "
                           "layers above --frozen-layers, the pretrained weights frozen, the head in full; "
                           "checkpoints hold the merged weights (0: off, train the weights themselves)")
    lora_alpha: float = Field(16.0, gt=0, description="LoRA scale: the adapters' update is multiplied by alpha / rank")
    teacher: str | None = Field(None, description="distillation: a checkpoint whose probabilities on "
                                "--unlabelled-size unlabelled texts become soft targets trained on alongside the labels")
    unlabelled_size: int | None = Field(20000, ge=0, description="unlabelled texts of the source a --teacher scores "
                                        "(never a train, validation or test text)")
    score_on: Literal["auto", "cluster", "driver"] = Field(
        "auto", description="where a Ray run scores its test split and a --teacher's texts: cluster (Ray Data "
        "actors, one per worker with its CPUs and GPU share), driver (the job's own process), or auto: cluster "
        "when the run uses GPUs or the cluster has several nodes, else driver (on one CPU node the actors' "
        "start-up only adds time)")
    num_workers: int = Field(1, ge=1, description="Ray Train workers (data-parallel; each holds a copy of the model)")
    # A worker tokenizes what it holds: at 20M rows a whole shard is gigabytes of token ids, a buffer is not.
    buffer_rows: int = Field(200_000, ge=1, description="training rows a Ray Train worker reads, tokenizes and "
                             "holds at once: a larger shard streams through in chunks of this many rows, each "
                             "shuffled and length-bucketed on its own; a shard that fits is batched whole")
    use_gpu: bool = Field(False, description="give each Ray Train worker a GPU share (--gpus-per-worker)")
    gpus_per_worker: float = Field(1.0, gt=0, le=1, description="GPU share of a worker with --use-gpu: 1, or a "
                                   "fraction (0.25) so several runs share one GPU (Tune trials, the paper's jobs)")
    cpus_per_worker: float = Field(1.0, gt=0, description="CPUs reserved for each Ray Train worker")
    max_failures: int = Field(0, ge=-1, description="worker-group restarts Ray Train allows (from the last "
                              "checkpoint) before the run fails; -1: no limit")
    keep_checkpoints: int = Field(2, ge=1, description="epoch checkpoints kept, the best by val_macro_f1")
    storage_path: str = Field("runs", description="folder or URI (s3://bucket/runs) where a run's folder is made")
    name: str | None = Field(None, description="the run's folder under --storage-path (default: kosent-<UTC time>-<id>)")
    resume: bool = Field(False, description="continue the run --name from its latest checkpoint")
    tracking: str | None = Field(None, description="MLflow tracking: a tracking URI, off, or unset for "
                                 "$MLFLOW_TRACKING_URI else a local SQLite store in <storage-path>/mlruns")
    data: DataConfig = Field(default_factory=DataConfig, description="which data and how it is split")


def changed_fields(cfg: TrainConfig, names: Iterable[str]) -> list[str]:
    """``"name value"`` for each of ``names`` that ``cfg`` sets away from TrainConfig's default: what a caller
    that has no use for those settings names when it refuses them."""
    defaults = TrainConfig()
    return [f"{name} {getattr(cfg, name)!r}" for name in names if getattr(cfg, name) != getattr(defaults, name)]


#: TrainConfig fields only fine-tuning a classifier reads: masked-LM pretraining has no flag for them and
#: refuses them (from YAML or Python) rather than ignore them.
CLASSIFIER_ONLY = ("pooling", "freeze_embeddings", "frozen_layers", "lora_rank", "lora_alpha", "teacher", "score_on",
                   "buffer_rows")


@config_dataclass
class PretrainConfig(TrainConfig):
    """Domain-adaptive masked-LM pretraining (``ray_jobs/pretrain.py``, ``kosent.pretrain``).

    The TrainConfig fields mean the same here (``model`` is the encoder to adapt); ``data`` names the
    labelled dataset and split settings of the later fine-tuning: its validation and test texts are kept
    out of the corpus. ``unlabelled_size`` caps the corpus (0 or None: every remaining text).
    """

    epochs: int = Field(1, ge=1, description="passes over the unlabelled corpus")
    max_length: int = Field(64, ge=8, description="tokens per text; longer texts are cut")
    storage_path: str = Field("runs/pretrain", description="folder or URI where the adapted encoder's run is made")
    mlm_probability: float = Field(0.15, gt=0, lt=1, description="share of tokens masked for the masked-LM loss")
    unlabelled_size: int | None = Field(20000, ge=0, description="distinct texts of the source to pretrain "
                                        "on, labels unread (never a validation or test text; 0: all of them)")
    holdout_size: int = Field(500, ge=1, description="corpus texts held out to measure masked-LM loss")
    patience: int = Field(2, ge=1, description="epochs without a lower val_mlm_loss before pretraining stops early")
    keep_checkpoints: int = Field(2, ge=1, description="epoch checkpoints kept, the best by val_mlm_loss (the "
                                  "model folder written is the best)")
    # e5 ships without a masked-LM head: gradients from a random head would otherwise pull the encoder off course
    # (docs/IMPROVING.md). The decoder is tied to the word embeddings, so only the head's transform and bias learn.
    head_warmup_ratio: float = Field(0.3, ge=0, le=1, description="share of the steps that train the masked-LM "
                                     "head alone, the encoder frozen")

    def __post_init__(self) -> None:
        given = changed_fields(self, CLASSIFIER_ONLY)
        if given:
            raise ValueError(f"{', '.join(given)}: settings of fine-tuning a classifier, not of masked-LM "
                             "pretraining (leave them unset)")


def absolute_local(value: Any, keep: Iterable[str] = ()) -> Any:
    """``value`` as an absolute path when it names an existing local file or folder; anything else (a URI, a hub
    id, a name in ``keep`` such as a model alias, a path that does not exist) as given. Ray workers and Tune
    trials do not share the driver's working directory: every local path they get goes through here."""
    if not isinstance(value, str) or value in set(keep) or is_uri(value) or not Path(value).expanduser().exists():
        return value
    return str(Path(value).expanduser().resolve())


def with_absolute_paths(cfg: TrainConfig) -> TrainConfig:
    """``cfg`` with its local paths absolute (:func:`absolute_local`): the model folder (an alias such as ``tiny``
    wins over a ./tiny/ folder), the teacher checkpoint, the data file."""
    from kosent.models import ALIASES

    data = dataclasses.replace(cfg.data, path=absolute_local(cfg.data.path),
                               source=absolute_local(cfg.data.source, keep=("nsmc", "kmhas")))
    return dataclasses.replace(cfg, model=absolute_local(cfg.model, keep=ALIASES),
                               teacher=absolute_local(cfg.teacher, keep=ALIASES), data=data)


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
    try:
        return cls(**kwargs)
    except ValidationError as e:
        raise ValueError(f"{cls.__name__}: {describe_errors(e)}") from None


def describe_errors(error: ValidationError) -> str:
    """A refused config in one line per problem, naming the field and the value: ``train_size=0: Input should be
    greater than or equal to 1`` (pydantic's own text adds error types and a web link)."""
    problems = []
    for e in error.errors():
        where = ".".join(str(part) for part in e["loc"])
        message = e["msg"].removeprefix("Value error, ")
        problems.append(f"{where}={e['input']!r}: {message}" if where else message)
    return "; ".join(problems)


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


# --------------------------------------------------------------------------------------------------
# Flags: one per field, generated from the declaration (the description is the help line)
# --------------------------------------------------------------------------------------------------


def _hint(cls: type, name: str) -> Any:
    """The field's type with ``None`` taken out of an optional one (``int | None`` -> ``int``)."""
    hint = typing.get_type_hints(cls)[name]
    if typing.get_origin(hint) in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(hint) if a is not type(None)]
        if len(args) == 1:
            return args[0]
    return hint


def _scalar(kind: Any) -> Any:
    """An argparse ``type`` for a simple field type (strings pass through)."""
    return kind if kind in (int, float, str) else str


def _mapping_item(value_kind: Any) -> Any:
    """Parses one ``KEY=VALUE`` (or a JSON object) given to a mapping flag, the value as ``value_kind``."""

    def parse(text: str) -> dict[str, Any]:
        if text.lstrip().startswith("{"):
            try:
                found = json.loads(text)
            except json.JSONDecodeError as e:
                raise argparse.ArgumentTypeError(f"not a JSON object: {e}") from None
            if not isinstance(found, dict):
                raise argparse.ArgumentTypeError(f"not a JSON object: {text!r}")
            return found
        key, sep, value = text.partition("=")
        if not sep or not key.strip():
            raise argparse.ArgumentTypeError(f"expected KEY=VALUE, got {text!r}")
        if value_kind in (int, float):
            try:
                return {key.strip(): value_kind(value)}
            except ValueError:
                raise argparse.ArgumentTypeError(f"{key}: {value!r} is not {value_kind.__name__}") from None
        if value_kind is str:
            return {key.strip(): value}
        try:  # Any: a JSON scalar (2, 0.5, true) or else the text itself
            return {key.strip(): json.loads(value)}
        except json.JSONDecodeError:
            return {key.strip(): value}

    return parse


class _MergeMapping(argparse.Action):
    """``--flag A=1 B=2 --flag C=3``: every item merged into one dict."""

    def __call__(self, parser, namespace, values, option_string=None):
        merged = dict(getattr(namespace, self.dest, None) or {})
        for item in values:
            merged.update(item)
        setattr(namespace, self.dest, merged)


def _help(cls: type, f: dataclasses.Field) -> str:
    info = getattr(cls, "__pydantic_fields__", {}).get(f.name)
    description = (info.description if info is not None else None) or f.name.replace("_", " ")
    default = info.get_default(call_default_factory=True) if info is not None else f.default
    if isinstance(default, bool):
        return f"{description} (default: {'on' if default else 'off'})".replace("%", "%%")
    if default is None or default == {}:
        return description.replace("%", "%%")
    shown = " ".join(map(str, default)) if isinstance(default, list) else default
    return f"{description} (default: {shown})".replace("%", "%%")


def add_config_args(parser: argparse.ArgumentParser, cls: type, skip: Iterable[str] = ()) -> None:
    """One ``--flag`` per field of the config dataclass ``cls``, and of a nested config (``data``) too, each with
    its description as help. Flags not given stay absent, so YAML values are not overridden; ``skip``: fields
    whose flag the caller defines itself."""
    skip = set(skip)
    group = parser.add_argument_group(cls.__name__)
    nested = []
    for f in dataclasses.fields(cls):
        if f.name in skip:
            continue
        kind = _hint(cls, f.name)
        if dataclasses.is_dataclass(kind):
            nested.append(kind)
            continue
        flag = "--" + f.name.replace("_", "-")
        common = {"dest": f.name, "default": argparse.SUPPRESS, "help": _help(cls, f)}
        origin = typing.get_origin(kind)
        if kind is bool:
            group.add_argument(flag, action=argparse.BooleanOptionalAction, **common)
        elif origin is list:
            group.add_argument(flag, nargs="*", type=_scalar(typing.get_args(kind)[0]), metavar="VALUE", **common)
        elif origin is dict or kind is dict:
            value_kind = (typing.get_args(kind) or (str, Any))[1]
            group.add_argument(flag, nargs="+", action=_MergeMapping, type=_mapping_item(value_kind),
                               metavar="KEY=VALUE", **common)
        else:
            group.add_argument(flag, type=_scalar(kind), metavar=f.name.upper(), **common)
    for kind in nested:
        add_config_args(parser, kind, skip)


def config_from_args(args: argparse.Namespace, cls: type = TrainConfig, yaml_path: str | None = None) -> Any:
    """Defaults < the YAML file ``yaml_path`` (default: ``--config``) < flags given on the command line. Flags of
    a nested config (``--train-size`` of ``data``) land in it."""
    path = yaml_path if yaml_path is not None else getattr(args, "config", None)
    cfg = load_yaml(path, cls) if path else cls()
    return from_dict(cls, _merge_given(to_dict(cfg), cls, vars(args)))


def _merge_given(values: dict[str, Any], cls: type, given: dict[str, Any]) -> dict[str, Any]:
    out = dict(values)
    for f in dataclasses.fields(cls):
        kind = _hint(cls, f.name)
        if dataclasses.is_dataclass(kind):
            out[f.name] = _merge_given(out.get(f.name) or {}, kind, given)
        elif f.name in given:
            out[f.name] = given[f.name]
    return out


def reject_renamed(parser: argparse.ArgumentParser, renamed: dict[str, str]) -> None:
    """Flags that were renamed fail with a message naming the new spelling (``{"--model": "--models"}``)."""

    class Renamed(argparse.Action):
        def __call__(self, parser, namespace, values, option_string=None):
            parser.error(f"{option_string} is now {renamed[option_string]}")

    for old in renamed:
        parser.add_argument(old, nargs="*", action=Renamed, help=argparse.SUPPRESS)
