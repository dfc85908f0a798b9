"""Settings of the Serve application: which models answer (``ModelSet``, hot-swappable ``ServingConfig``) and
everything else (``ServeArgs``), plus resolving a manifest or checkpoint (local or ``s3://``) to a folder.

Declared like every kosent config (``kosent.config.config_dataclass``). No Ray import here: the settings are
validated by ``ray_jobs/deploy.py`` and the unit tests before any
cluster exists.
"""

from __future__ import annotations

import dataclasses
import json
import re
from pathlib import Path
from typing import Any

from pydantic import Field, field_validator, model_validator

from kosent.config import config_dataclass

#: Relative paths in settings are tried as given, then against the checkout (``serve deploy`` runs elsewhere).
REPO_ROOT = Path(__file__).resolve().parents[2]
DEFAULT_NAME = "default"
_MODEL_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")


def _mapping_arg(value: Any) -> Any:
    """``serve run ... models=a=/x,b=/y`` and ``models='{"a": "/x"}'`` both become a dict."""
    if not isinstance(value, str):
        return value
    text = value.strip()
    if not text:
        return {}
    if text.startswith("{"):
        return json.loads(text)
    out = {}
    for part in text.split(","):
        name, sep, path = part.partition("=")
        if not sep:
            raise ValueError(f"expected NAME=PATH pairs separated by commas, got {part!r}")
        out[name.strip()] = path.strip()
    return out


@config_dataclass
class ModelSet:
    """Which checkpoints answer: ``manifest`` or ``checkpoint`` name the default model, ``models`` maps more
    names to a manifest or checkpoint each (multiplexing); ``default_model`` answers requests naming none."""

    manifest: str | None = Field(None, description="manifest.json (or its folder) naming the checkpoint")
    checkpoint: str | None = Field(None, description="a checkpoint folder (or a registered model version, "
                                   "models:/<name>/<version> or models:/<name>@<alias>), instead of a manifest")
    models: dict[str, str] = Field(default_factory=dict, description="more models behind the endpoint, NAME=PATH "
                                   "(a manifest, checkpoint or models:/ URI each); requests choose one by name")
    default_model: str | None = Field(None, description="name answering requests that name no model")
    tracking: str | None = Field(None, description="MLflow tracking URI whose registry holds models:/ sources "
                                 "(default: $MLFLOW_TRACKING_URI, else runs/mlruns)")

    @field_validator("models", mode="before")
    @classmethod
    def _parse_models(cls, value: Any) -> Any:
        return _mapping_arg(value)

    @field_validator("models")
    @classmethod
    def _check_names(cls, value: dict[str, str]) -> dict[str, str]:
        for name in value:
            if not _MODEL_NAME.match(name):
                raise ValueError(f"model name {name!r}: use letters, digits, '.', '_' or '-' (at most 64)")
        return value

    @model_validator(mode="after")
    def _check_sources(self) -> ModelSet:
        if self.manifest and self.checkpoint:
            raise ValueError("give 'manifest' or 'checkpoint', not both")
        if not (self.manifest or self.checkpoint or self.models):
            raise ValueError("no model: give 'manifest' (runs/.../manifest.json), 'checkpoint' or 'models'")
        self.model_sources()
        return self

    def model_sources(self) -> tuple[dict[str, str], str]:
        """(name -> source path, default name)."""
        sources = dict(self.models)
        main = self.manifest or self.checkpoint
        if main:
            name = self.default_model or DEFAULT_NAME
            if name in sources and sources[name] != main:
                raise ValueError(f"model {name!r} is named both in 'models' and by 'manifest'/'checkpoint'")
            sources[name] = main
        default = self.default_model or (DEFAULT_NAME if main else next(iter(sources)))
        if default not in sources:
            raise ValueError(f"default_model {default!r} is not one of the models: {', '.join(sorted(sources))}")
        return sources, default


@config_dataclass
class ServingConfig(ModelSet):
    """The deployment's ``user_config``: changing it reconfigures running replicas in place (hot swap)."""

    max_batch_size: int | None = Field(None, ge=1, le=1024)
    batch_wait_timeout_s: float | None = Field(None, ge=0, le=10)
    revision: str | int | None = Field(None, description="change it to reload a manifest rewritten in place")


@config_dataclass
class ReplicaSettings:
    """Everything but the models: how a replica batches, limits, admits and scales. A replica is built with these
    (changing one restarts the replicas); the models come in ``user_config`` (changing them swaps in place)."""

    # dynamic batching
    max_batch_size: int = Field(16, ge=1, le=1024, description="most texts in one forward pass (requests are "
                                "batched together up to it)")
    batch_wait_timeout_s: float = Field(0.005, ge=0, le=10, description="seconds a batch waits for more texts "
                                        "before it runs")
    adaptive_batch_wait: bool = Field(True, description="skip the batch wait while a request is alone in the replica")
    # limits
    max_texts: int = Field(64, ge=1, description="most texts in one request (more: 413)")
    max_text_chars: int = Field(2000, ge=1, description="longest text in characters (longer: 413)")
    request_timeout_s: float = Field(30.0, gt=0, description="deadline per request; the X-Request-Timeout-S "
                                     "header may shorten it (admission refuses what cannot make it: 503)")
    admission: bool = Field(True, description="refuse at once (503 + Retry-After) a request whose estimated "
                            "wait + service time exceeds its deadline")
    traced_forward: bool = Field(True, description="run forward passes through a TorchScript trace of the model "
                                 "(no GIL held during a pass, so answering refusals does not slow it); a model "
                                 "that cannot be traced runs eager")
    max_ongoing_requests: int | None = Field(None, ge=2, description="requests a replica holds at once "
                                             "(default: max(64, 4 x max_batch_size))")
    max_queued_requests: int = Field(64, ge=-1, description="queued per caller; beyond: 503 at once")
    # auth
    auth_token: str | None = Field(None, description="bearer token required on /predict, /model, /stats")
    auth_token_env: str = Field("KOSENT_SERVE_TOKEN", description="env var read in the replica for the token")
    # resources and autoscaling
    num_cpus: float = Field(1.0, gt=0, description="ray_actor_options num_cpus; torch threads follow it")
    num_gpus: float = Field(0.0, ge=0, le=1, description="ray_actor_options num_gpus: the replica's models run on "
                            "its GPU (0.5 packs two replicas on one GPU); 0: CPU")
    min_replicas: int = Field(1, ge=0, description="replicas kept when idle")
    max_replicas: int = Field(2, ge=1, description="most replicas the autoscaler starts")
    target_ongoing_requests: float = Field(8.0, gt=0, description="requests per replica the autoscaler aims at")
    upscale_delay_s: float = Field(5.0, ge=0, description="seconds of high load before a replica is added")
    downscale_delay_s: float = Field(60.0, ge=0, description="seconds of low load before a replica is removed")
    autoscaling: dict[str, Any] = Field(default_factory=dict, description="more of Serve's autoscaling_config, "
                                        "KEY=VALUE or a JSON object (e.g. metrics_interval_s=2)")
    max_surge_percent: int = Field(100, ge=0, le=100, description="redeploys keep old replicas until new ones are up")

    @field_validator("autoscaling", mode="before")
    @classmethod
    def _parse_autoscaling(cls, value: Any) -> Any:
        return _mapping_arg(value)

    @model_validator(mode="after")
    def _check_replicas(self) -> ReplicaSettings:
        if self.max_replicas < self.min_replicas:
            raise ValueError(f"max_replicas ({self.max_replicas}) < min_replicas ({self.min_replicas})")
        return self

    def ongoing_limit(self) -> int:
        """Requests a replica holds at once (Serve's ``max_ongoing_requests``)."""
        return self.max_ongoing_requests or max(64, 4 * self.max_batch_size)

    def admitted_limit(self) -> int:
        """Admitted requests a replica holds at most: the rest of ``ongoing_limit`` stays free, so a request
        that will be refused reaches the replica (and its 503) at once instead of queueing in Serve's proxy
        behind admitted work."""
        limit = self.ongoing_limit()
        return max(1, limit - max(2, limit // 8))


@config_dataclass
class ServeArgs(ModelSet, ReplicaSettings):
    """Every argument of the application (``app_builder`` args, ``serve/config.yaml`` ``args:``, the flags of
    ``ray_jobs/deploy.py``): the models (``ModelSet``) and the replicas' settings (``ReplicaSettings``)."""

    def replica_settings(self) -> dict[str, Any]:
        """The ``ReplicaSettings`` part, as the replica's constructor takes it."""
        names = {f.name for f in dataclasses.fields(ReplicaSettings)}
        return {k: v for k, v in dataclasses.asdict(self).items() if k in names}


def _find(path: str, base: Path | None = None) -> Path:
    """A path as given if it exists, else relative to the repository (``serve deploy`` runs elsewhere)."""
    p = Path(path).expanduser()
    if p.is_absolute() or p.exists():
        return p.resolve()
    for root in (base, REPO_ROOT):
        if root is not None and (root / p).exists():
            return (root / p).resolve()
    return p.resolve()


def _read_manifest(location: str) -> dict[str, Any]:
    """A manifest file, local or on object storage (checked like ``kosent.manifest.read_manifest``)."""
    from kosent.checkpoint import read_checked_json
    from kosent.manifest import ManifestError, read_manifest
    from kosent.storage import is_uri

    if not is_uri(location):
        return read_manifest(location)
    try:
        return read_checked_json(location, ("checkpoint", "label_names", "data_fingerprint"), ManifestError)
    except FileNotFoundError as e:
        raise ManifestError(f"{location}: manifest not found (or not readable with this node's storage "
                            "credentials)") from e


def resolve_remote(source: str, fetch: bool = True) -> dict[str, Any]:
    """Like :func:`resolve_source` for a URI (``s3://...``): a manifest (``.json``, or a prefix holding
    ``manifest.json``) or a checkpoint prefix (holding ``kosent.json``). With ``fetch`` the checkpoint is
    copied to this node's cache (``kosent.checkpoint.fetch_checkpoint``) and ``checkpoint`` is that folder;
    without, only its ``kosent.json`` is checked (the builder does this; every replica fetches)."""
    from kosent.checkpoint import META_FILE, fetch_checkpoint, read_meta
    from kosent.manifest import MANIFEST_FILE
    from kosent.storage import exists, is_uri

    source = source.rstrip("/")
    manifest = None
    if source.endswith(".json"):
        manifest = source
    elif not exists(f"{source}/{META_FILE}"):
        if not exists(f"{source}/{MANIFEST_FILE}"):
            raise FileNotFoundError(f"{source}: neither a manifest.json nor a checkpoint (no {META_FILE} there)")
        manifest = f"{source}/{MANIFEST_FILE}"
    ckpt = source
    if manifest is not None:
        ckpt = str(_read_manifest(manifest)["checkpoint"])
        if not is_uri(ckpt):  # a manifest on storage naming a local folder: it must exist on this node
            ckpt = str(_find(ckpt))
    if not is_uri(ckpt):
        read_meta(ckpt)
        return {"source": source, "manifest": manifest, "checkpoint": ckpt}
    if fetch:
        local = str(fetch_checkpoint(ckpt))  # checks its kosent.json first
    else:
        read_meta(ckpt)
        local = ckpt
    return {"source": source, "manifest": manifest, "checkpoint": local, "checkpoint_uri": ckpt}


def resolve_registered(source: str, fetch: bool = True, tracking: str | None = None) -> dict[str, Any]:
    """A registered model version (``models:/<name>/<version>`` or ``@<alias>``) as a source: with ``fetch``
    its checkpoint is downloaded to this node's cache (``kosent.tracking.resolve_registered_model``);
    without, the version is only looked up (the builder does this; every replica fetches). ``registered``
    is the lineage ``GET /model`` shows: model URI, name, version and the MLflow run that made it."""
    from kosent import tracking as tr

    if fetch:
        found = tr.resolve_registered_model(source, tracking=tracking)
    else:
        mv = tr.model_version(source, tracking)
        found = {"checkpoint": source, "name": mv.name, "version": str(mv.version), "run_id": mv.run_id}
    registered = {"model_uri": source} | {k: found[k] for k in ("name", "version", "run_id")}
    return {"source": source, "manifest": None, "checkpoint": found["checkpoint"],
            "registered": registered | {"tracking_uri": tr.registry_uri(tracking)}}


def resolve_source(source: str, fetch: bool = True, tracking: str | None = None) -> dict[str, Any]:
    """``{"source", "manifest" (or None), "checkpoint"}`` for a manifest file/folder, a checkpoint folder
    (a URI too: :func:`resolve_remote`) or a registered model version (:func:`resolve_registered`, looked
    up in the registry at ``tracking``)."""
    from kosent.checkpoint import META_FILE, read_meta
    from kosent.manifest import MANIFEST_FILE, read_manifest
    from kosent.storage import is_uri
    from kosent.tracking import is_registry_uri

    if is_registry_uri(source):
        return resolve_registered(source, fetch=fetch, tracking=tracking)
    if is_uri(source):
        return resolve_remote(source, fetch=fetch)
    path = _find(source)
    if path.is_dir() and (path / META_FILE).is_file():
        read_meta(path)
        return {"source": str(path), "manifest": None, "checkpoint": str(path)}
    if path.is_file() or (path.is_dir() and (path / MANIFEST_FILE).is_file()):
        manifest = path / MANIFEST_FILE if path.is_dir() else path
        doc = read_manifest(manifest)
        ckpt = str(doc["checkpoint"])
        if is_uri(ckpt):  # a local manifest naming a checkpoint on object storage
            remote = resolve_remote(ckpt, fetch=fetch)
            return remote | {"source": str(manifest), "manifest": str(manifest)}
        ckpt_path = _find(ckpt, base=manifest.parent)
        read_meta(ckpt_path)
        return {"source": str(manifest), "manifest": str(manifest), "checkpoint": str(ckpt_path)}
    raise FileNotFoundError(
        f"{source}: neither a manifest.json nor a checkpoint folder (with kosent.json); "
        "a sweep or `kosent train` writes one under runs/"
    )


def resolve_models(models: ModelSet, fetch: bool = True) -> tuple[dict[str, dict[str, Any]], str]:
    """(name -> resolved source, default name); raises with the path and what is wrong."""
    sources, default = models.model_sources()
    return {name: resolve_source(src, fetch=fetch, tracking=models.tracking) for name, src in sources.items()}, default


def _absolute(source: str) -> str:
    from kosent.storage import is_uri
    from kosent.tracking import is_registry_uri

    return source if is_uri(source) or is_registry_uri(source) else str(_find(source))


def serving_config(args: ServeArgs) -> dict[str, Any]:
    """The hot-swappable part of ``args`` as ``user_config``, paths made absolute (and checked now; a URI's
    checkpoint is only checked here, and fetched by each replica on its own node)."""
    specs, _ = resolve_models(args, fetch=False)
    # Replicas look registered versions up themselves, perhaps on another node and without this process's
    # environment: they get the registry's URI as resolved here.
    registry = next((s["registered"]["tracking_uri"] for s in specs.values() if "registered" in s), None)
    absolute = {k: _absolute(v) for k, v in (("manifest", args.manifest), ("checkpoint", args.checkpoint)) if v}
    config = ServingConfig(
        **absolute,
        models={name: _absolute(src) for name, src in args.models.items()},
        default_model=args.default_model,
        tracking=registry,
        max_batch_size=args.max_batch_size,
        batch_wait_timeout_s=args.batch_wait_timeout_s,
    )
    return {k: v for k, v in dataclasses.asdict(config).items() if v is not None}

