"""Ray Serve application: the served checkpoint behind an autoscaling HTTP endpoint, with a page to try it.

One deployment, ``KosentServer``, with a FastAPI ingress:

    POST /predict   {"text": "..."} or {"texts": [...]} (+ optional "model")  -> predictions
    GET  /healthz   a tiny forward pass through the default model: 200, or 503 if it fails (never needs auth)
    GET  /model     checkpoint, metrics, label map, created_at, every multiplexed model
    GET  /stats     this replica's dynamic-batching counters (batch sizes seen)
    GET  /          a self-contained page to type sentences and see label and probability
    GET  /docs      OpenAPI docs (FastAPI default)

Texts are batched across concurrent requests with ``@serve.batch`` and scored by
:class:`kosent.predict.Predictor` (normalization and tokenization inside the replica, exactly as in
training). Several checkpoints can sit behind the endpoint (``@serve.multiplexed``): a request names one
with ``"model"`` or the ``serve_multiplexed_model_id`` header, otherwise the default answers.

The model set travels in the deployment's ``user_config``: redeploying the same app with a new manifest
(``serve deploy serve/config.yaml``) calls :meth:`KosentServer.reconfigure` on the running replicas,
which load the new checkpoint beside the old one and swap it in; requests keep being answered throughout.

Build the application with :func:`app_builder` (``serve run serve.app:app_builder manifest=...``,
``serve/config.yaml``, ``ray_jobs/deploy.py``). Every setting is a field of :class:`ServeArgs`;
docs/SERVING.md describes them.
"""

# No ``from __future__ import annotations``: FastAPI resolves the route signatures (``Request``) at run time,
# inside Serve's proxy and replicas.
import os

# Before Ray is imported: no usage reports, and a cluster started from this process stays on loopback
# (a no-op when the caller already set them, or when Ray already runs, as in Serve's replicas).
for _key, _value in (("RAY_USAGE_STATS_ENABLED", "0"), ("HF_HUB_OFFLINE", "1"), ("TOKENIZERS_PARALLELISM", "false")):
    os.environ.setdefault(_key, _value)
if not (os.environ.get("RAY_ADDRESS") or os.environ.get("KOSENT_JOIN_CLUSTER")):
    os.environ.setdefault("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")

import asyncio  # noqa: E402
import collections  # noqa: E402
import hmac  # noqa: E402
import json  # noqa: E402
import logging  # noqa: E402
import re  # noqa: E402
import statistics  # noqa: E402
import time  # noqa: E402
import weakref  # noqa: E402
from concurrent.futures import ThreadPoolExecutor  # noqa: E402
from dataclasses import dataclass, field  # noqa: E402
from pathlib import Path  # noqa: E402
from typing import Any  # noqa: E402

from fastapi import FastAPI, Request  # noqa: E402
from fastapi.exceptions import RequestValidationError  # noqa: E402
from fastapi.responses import HTMLResponse, JSONResponse  # noqa: E402
from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator  # noqa: E402
from ray import serve  # noqa: E402
from starlette.exceptions import HTTPException as StarletteHTTPException  # noqa: E402

logger = logging.getLogger("ray.serve")

REPO_ROOT = Path(__file__).resolve().parent.parent
DEFAULT_NAME = "default"
#: Models one replica keeps loaded besides the default (LRU beyond that); a decorator argument, so an
#: environment variable rather than an app arg.
MAX_MODELS_PER_REPLICA = int(os.environ.get("KOSENT_SERVE_MAX_MODELS", "3"))
HEALTH_TEXT = "정말 재미있어요"
MAX_CONCURRENT_SERVE_BATCHES = 64  # @serve.batch handlers only queue texts, so many may run at once
_MODEL_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")


# ----------------------------------------------------------------------------------------------------
# Settings
# ----------------------------------------------------------------------------------------------------


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


class ModelSet(BaseModel):
    """Which checkpoints answer: ``manifest`` or ``checkpoint`` name the default model, ``models`` maps more
    names to a manifest or checkpoint each (multiplexing); ``default_model`` answers requests naming none."""

    model_config = ConfigDict(extra="forbid")

    manifest: str | None = Field(None, description="manifest.json (or its folder) naming the checkpoint")
    checkpoint: str | None = Field(None, description="a checkpoint folder, instead of a manifest")
    models: dict[str, str] = Field(default_factory=dict, description="name -> manifest or checkpoint")
    default_model: str | None = Field(None, description="name answering requests that name no model")

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
    def _check_sources(self) -> "ModelSet":
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


class ServingConfig(ModelSet):
    """The deployment's ``user_config``: changing it reconfigures running replicas in place (hot swap)."""

    max_batch_size: int | None = Field(None, ge=1, le=1024)
    batch_wait_timeout_s: float | None = Field(None, ge=0, le=10)
    revision: str | int | None = Field(None, description="change it to reload a manifest rewritten in place")


class ServeArgs(ModelSet):
    """Every argument of the application (``app_builder`` args, ``serve/config.yaml`` ``args:``)."""

    # dynamic batching
    max_batch_size: int = Field(16, ge=1, le=1024)
    batch_wait_timeout_s: float = Field(0.005, ge=0, le=10)
    adaptive_batch_wait: bool = Field(True, description="skip the batch wait while a request is alone in the replica")
    # limits
    max_texts: int = Field(64, ge=1, description="most texts in one request (more: 413)")
    max_text_chars: int = Field(2000, ge=1, description="longest text in characters (longer: 413)")
    request_timeout_s: float = Field(30.0, gt=0, description="replica-side limit per request (504)")
    max_ongoing_requests: int | None = Field(None, ge=1, description="default: max(32, 2 x max_batch_size)")
    max_queued_requests: int = Field(64, ge=-1, description="queued per caller; beyond: 503 at once")
    # auth
    auth_token: str | None = Field(None, description="bearer token required on /predict, /model, /stats")
    auth_token_env: str = Field("KOSENT_SERVE_TOKEN", description="env var read in the replica for the token")
    # resources and autoscaling
    num_cpus: float = Field(1.0, gt=0, description="ray_actor_options num_cpus; torch threads follow it")
    min_replicas: int = Field(1, ge=0)
    max_replicas: int = Field(2, ge=1)
    target_ongoing_requests: float = Field(8.0, gt=0)
    upscale_delay_s: float = Field(5.0, ge=0)
    downscale_delay_s: float = Field(60.0, ge=0)
    autoscaling: dict[str, Any] = Field(default_factory=dict, description="extra autoscaling_config keys")
    max_surge_percent: int = Field(100, ge=0, le=100, description="redeploys keep old replicas until new ones are up")

    @field_validator("autoscaling", mode="before")
    @classmethod
    def _parse_autoscaling(cls, value: Any) -> Any:
        return _mapping_arg(value)

    @model_validator(mode="after")
    def _check_replicas(self) -> "ServeArgs":
        if self.max_replicas < self.min_replicas:
            raise ValueError(f"max_replicas ({self.max_replicas}) < min_replicas ({self.min_replicas})")
        return self

    def ongoing_limit(self) -> int:
        return self.max_ongoing_requests or max(32, 2 * self.max_batch_size)


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
    from kosent.checkpoint import is_uri, read_checked_json
    from kosent.manifest import ManifestError, read_manifest

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
    from kosent.checkpoint import META_FILE, exists, fetch_checkpoint, is_uri, read_meta
    from kosent.manifest import MANIFEST_FILE

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


def resolve_source(source: str, fetch: bool = True) -> dict[str, Any]:
    """``{"source", "manifest" (or None), "checkpoint"}`` for a manifest file/folder or a checkpoint folder
    (a URI too: :func:`resolve_remote`)."""
    from kosent.checkpoint import META_FILE, is_uri, read_meta
    from kosent.manifest import MANIFEST_FILE, read_manifest

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
    return {name: resolve_source(src, fetch=fetch) for name, src in sources.items()}, default


def _absolute(source: str) -> str:
    return source if "://" in source else str(_find(source))


def serving_config(args: ServeArgs) -> dict[str, Any]:
    """The hot-swappable part of ``args`` as ``user_config``, paths made absolute (and checked now; a URI's
    checkpoint is only checked here, and fetched by each replica on its own node)."""
    resolve_models(args, fetch=False)
    absolute = {k: _absolute(v) for k, v in (("manifest", args.manifest), ("checkpoint", args.checkpoint)) if v}
    return ServingConfig(
        **absolute,
        models={name: _absolute(src) for name, src in args.models.items()},
        default_model=args.default_model,
        max_batch_size=args.max_batch_size,
        batch_wait_timeout_s=args.batch_wait_timeout_s,
    ).model_dump(exclude_none=True)


# ----------------------------------------------------------------------------------------------------
# Request parsing (pure functions: the rules every 4xx follows)
# ----------------------------------------------------------------------------------------------------


class ApiError(Exception):
    """A 4xx/5xx answer: ``{"error": code, "field": field, "detail": message}``."""

    def __init__(self, status: int, code: str, detail: str, field: str | None = None,
                 headers: dict[str, str] | None = None) -> None:
        super().__init__(detail)
        self.status, self.code, self.detail, self.field, self.headers = status, code, detail, field, headers

    def response(self) -> JSONResponse:
        body = {"error": self.code, "field": self.field, "detail": self.detail}
        return JSONResponse(body, status_code=self.status, headers=self.headers)


class PredictRequest(BaseModel):
    """Body of ``POST /predict`` (documentation; parsing is done by :func:`parse_predict_body`)."""

    model_config = ConfigDict(json_schema_extra={"examples": [{"text": "이 영화 정말 재미있어요"},
                                                              {"texts": ["최고의 영화", "시간 낭비"], "model": "default"}]})
    text: str | None = Field(None, description="one text (or use 'texts')")
    texts: list[str] | None = Field(None, description="several texts, answered in order")
    model: str | None = Field(None, description="a multiplexed model name; default model if omitted")


class PredictionOut(BaseModel):
    text: str
    label: str
    probability: float = Field(description="probability of the positive label (id 1)")
    scores: dict[str, float]


class PredictResponse(BaseModel):
    predictions: list[PredictionOut]
    model: str


def parse_predict_body(raw: bytes, content_type: str | None, max_texts: int,
                       max_text_chars: int) -> tuple[list[str], str | None]:
    """(texts, model name or None) from a request body, or an :class:`ApiError` naming the field."""
    from kosent.text import normalize

    media = (content_type or "").split(";")[0].strip().lower()
    if media != "application/json" and not (media.startswith("application/") and media.endswith("+json")):
        raise ApiError(415, "unsupported_media_type",
                       f"send JSON with 'Content-Type: application/json' (got {content_type or 'no Content-Type'})",
                       "Content-Type")
    limit = max_texts * max_text_chars * 4 + 65536
    if len(raw) > limit:
        raise ApiError(413, "body_too_large", f"request body is {len(raw)} bytes; the limit is {limit}", "body")
    try:
        doc = json.loads(raw.decode("utf-8"))
    except UnicodeDecodeError as e:
        raise ApiError(400, "malformed_json", f"body is not UTF-8 ({e.reason} at byte {e.start})", "body") from e
    except json.JSONDecodeError as e:
        raise ApiError(400, "malformed_json", f"body is not valid JSON: {e.msg} at line {e.lineno} column {e.colno}",
                       "body") from e
    if not isinstance(doc, dict):
        raise ApiError(422, "invalid_body", f'body must be a JSON object like {{"text": "..."}}, got {type(doc).__name__}',
                       "body")
    unknown = sorted(set(doc) - {"text", "texts", "model"})
    if unknown:
        raise ApiError(422, "unknown_field", f"unknown field(s) {', '.join(unknown)}; allowed: text, texts, model",
                       unknown[0])
    if ("text" in doc) == ("texts" in doc):
        raise ApiError(422, "missing_text" if "text" not in doc else "conflicting_fields",
                       "give exactly one of 'text' (a string) or 'texts' (a list of strings)", "text")
    if "text" in doc:
        texts, names = [doc["text"]], ["text"]
    else:
        texts = doc["texts"]
        if not isinstance(texts, list):
            raise ApiError(422, "invalid_type", f"'texts' must be a list of strings, got {type(texts).__name__}", "texts")
        if not texts:
            raise ApiError(422, "empty_list", "'texts' is empty; send at least one text", "texts")
        if len(texts) > max_texts:
            raise ApiError(413, "too_many_texts", f"{len(texts)} texts in one request; the limit is {max_texts}", "texts")
        names = [f"texts[{i}]" for i in range(len(texts))]
    for name, value in zip(names, texts, strict=True):
        if not isinstance(value, str):
            raise ApiError(422, "invalid_type", f"'{name}' must be a string, got {type(value).__name__}", name)
        if len(value) > max_text_chars:
            raise ApiError(413, "text_too_long", f"'{name}' has {len(value)} characters; the limit is {max_text_chars} "
                           "(texts under the limit are truncated to the model's max_length tokens)", name)
        if not normalize(value):
            raise ApiError(422, "empty_text", f"'{name}' is empty (or only whitespace)", name)
    model = doc.get("model")
    if model is not None and (not isinstance(model, str) or not model):
        raise ApiError(422, "invalid_type", "'model' must be a non-empty string naming a model", "model")
    return texts, model


# ----------------------------------------------------------------------------------------------------
# The page
# ----------------------------------------------------------------------------------------------------

_PAGE = """<!doctype html>
<html lang="ko">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>kosent: 한국어 감성 분류</title>
<style>
  body { font-family: system-ui, "Noto Sans KR", "NanumGothic", "Apple SD Gothic Neo", "Malgun Gothic", sans-serif; max-width: 46rem; margin: 2rem auto; padding: 0 1rem;
         color: #1d1d1f; }
  h1 { font-size: 1.4rem; margin-bottom: .2rem; }
  p.hint { color: #555; margin-top: 0; }
  textarea { width: 100%; box-sizing: border-box; font: inherit; padding: .6rem; min-height: 7rem; }
  .row { display: flex; gap: .6rem; align-items: center; margin: .6rem 0; flex-wrap: wrap; }
  button { font: inherit; padding: .45rem 1.2rem; cursor: pointer; }
  input, select { font: inherit; padding: .3rem; }
  table { border-collapse: collapse; width: 100%; margin-top: 1rem; }
  th, td { text-align: left; padding: .4rem .5rem; border-bottom: 1px solid #ddd; vertical-align: top; }
  td.prob { font-variant-numeric: tabular-nums; white-space: nowrap; }
  .bar { height: .5rem; background: #eee; border-radius: .25rem; min-width: 6rem; }
  .bar > span { display: block; height: 100%; border-radius: .25rem; background: #2e7d32; }
  .negative { color: #b71c1c; } .positive { color: #2e7d32; }
  #status { min-height: 1.2rem; color: #555; } #status.error { color: #b71c1c; }
</style>
</head>
<body>
<h1>kosent &mdash; 한국어 감성 분류</h1>
<p class="hint">문장을 한 줄에 하나씩 입력하세요. One sentence per line; model: <b id="model-name">__DEFAULT__</b></p>
<textarea id="texts" placeholder="이 영화 정말 재미있어요&#10;시간이 아까운 영화">이 영화 정말 재미있어요</textarea>
<div class="row">
  <button id="predict" type="button">분석하기 (Predict)</button>
  <label>model <select id="model">__OPTIONS__</select></label>
  <label id="token-label" __TOKEN_HIDDEN__>token <input id="token" type="password" size="18" autocomplete="off"></label>
</div>
<div id="status" role="status"></div>
<table id="results" hidden>
  <thead><tr><th>문장 (text)</th><th>결과 (label)</th><th>긍정 확률 (probability)</th></tr></thead>
  <tbody></tbody>
</table>
<script>
const ROOT = __ROOT__;
const $ = (id) => document.getElementById(id);
async function run() {
  const texts = $("texts").value.split("\\n").map((t) => t.trim()).filter((t) => t.length > 0);
  const status = $("status");
  status.className = "";
  if (texts.length === 0) { status.textContent = "문장을 입력하세요 (type a sentence)"; return; }
  status.textContent = "분석 중... (working)";
  const headers = { "Content-Type": "application/json" };
  const token = $("token").value.trim();
  if (token) headers["Authorization"] = "Bearer " + token;
  const t0 = performance.now();
  try {
    const resp = await fetch(ROOT + "/predict", { method: "POST", headers,
      body: JSON.stringify({ texts, model: $("model").value }) });
    const body = await resp.json();
    if (!resp.ok) throw new Error(resp.status + " " + (body.detail || body.error || resp.statusText));
    const tbody = $("results").querySelector("tbody");
    tbody.replaceChildren();
    for (const p of body.predictions) {
      const tr = document.createElement("tr");
      tr.className = "result";
      const text = document.createElement("td"); text.textContent = p.text;
      const label = document.createElement("td"); label.textContent = p.label;
      label.className = "label " + p.label;
      const prob = document.createElement("td"); prob.className = "prob";
      const pct = (p.probability * 100).toFixed(1);
      prob.innerHTML = '<span class="value"></span><div class="bar"><span></span></div>';
      prob.querySelector(".value").textContent = p.probability.toFixed(4) + " (" + pct + "%)";
      prob.querySelector(".bar > span").style.width = pct + "%";
      tr.append(text, label, prob);
      tbody.append(tr);
    }
    $("results").hidden = false;
    $("model-name").textContent = body.model;
    status.textContent = body.predictions.length + "개 문장, " + Math.round(performance.now() - t0) + " ms";
  } catch (err) {
    status.className = "error";
    status.textContent = "오류 (error): " + err.message;
  }
}
$("predict").addEventListener("click", run);
$("texts").addEventListener("keydown", (e) => { if (e.key === "Enter" && (e.ctrlKey || e.metaKey)) run(); });
</script>
</body>
</html>
"""


def _html_escape(text: str) -> str:
    return text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;").replace('"', "&quot;")


def render_page(root: str, default: str, names: list[str], auth: bool) -> str:
    options = "".join(
        f'<option value="{_html_escape(n)}"{" selected" if n == default else ""}>{_html_escape(n)}</option>'
        for n in names
    )
    return (
        _PAGE.replace("__ROOT__", json.dumps(root).replace("<", "\\u003c"))
        .replace("__DEFAULT__", _html_escape(default))
        .replace("__OPTIONS__", options)
        .replace("__TOKEN_HIDDEN__", "" if auth else "hidden")
    )


# ----------------------------------------------------------------------------------------------------
# The replica
# ----------------------------------------------------------------------------------------------------


@dataclass
class LoadedModel:
    name: str
    checkpoint: str
    manifest: str | None
    predictor: Any
    manifest_doc: dict[str, Any] | None
    loaded_at: float = field(default_factory=time.time)
    checkpoint_uri: str | None = None  # where a checkpoint on object storage was fetched from

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
            "max_length": self.predictor.max_length,
            "loaded_at": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(self.loaded_at)) + "Z",
        }
        if self.checkpoint_uri:
            out["checkpoint_uri"] = self.checkpoint_uri
        if self.manifest_doc:
            out["val_metrics"] = self.manifest_doc.get("val_metrics", {})
            out["test_metrics"] = self.manifest_doc.get("test_metrics", {})
            out["manifest_created_at"] = self.manifest_doc.get("created_at")
        return out


def load_model(name: str, spec: dict[str, Any], batch_size: int) -> LoadedModel:
    """Load one model (blocking: call it off the event loop)."""
    from kosent.predict import Predictor

    predictor = Predictor.from_checkpoint(spec["checkpoint"], batch_size=batch_size)
    doc = _read_manifest(spec["manifest"]) if spec.get("manifest") else None
    return LoadedModel(name=name, checkpoint=spec["checkpoint"], manifest=spec.get("manifest"),
                       predictor=predictor, manifest_doc=doc, checkpoint_uri=spec.get("checkpoint_uri"))


class _Slot:
    """What the multiplexed loader caches; hot swaps replace ``model`` in place."""

    def __init__(self, model: LoadedModel) -> None:
        self.model = model


class BatchStats:
    def __init__(self) -> None:
        self.sizes: collections.Counter[int] = collections.Counter()  # texts per forward pass
        self.serve_batch_sizes: collections.Counter[int] = collections.Counter()  # texts per @serve.batch call
        self.requests = 0
        self.texts = 0
        self.timeouts = 0
        self.swaps = 0
        self.forward_seconds = 0.0
        self.handler_ms: collections.deque[float] = collections.deque(maxlen=2000)  # /predict inside the replica

    def to_dict(self) -> dict[str, Any]:
        batches = sum(self.sizes.values())
        return {
            "requests": self.requests,
            "texts": self.texts,
            "batches": batches,
            "batch_sizes": {str(k): v for k, v in sorted(self.sizes.items())},
            "max_batch_size_seen": max(self.sizes, default=0),
            "serve_batch_sizes": {str(k): v for k, v in sorted(self.serve_batch_sizes.items())},
            "mean_batch_size": (sum(k * v for k, v in self.sizes.items()) / batches) if batches else 0.0,
            "forward_seconds": round(self.forward_seconds, 4),
            "handler_ms_p50": round(statistics.median(self.handler_ms), 3) if self.handler_ms else None,
            "timeouts": self.timeouts,
            "swaps": self.swaps,
        }


def keep_replica_grpc_on_node_ip() -> None:
    """Serve 2.60 starts an inter-deployment gRPC server in every replica on ``[::]:0``: every interface, even
    though it is only used with ``RAY_SERVE_USE_GRPC_BY_DEFAULT=1``. Bind it to this node's Ray address
    instead (127.0.0.1 on a loopback-only cluster), like Ray's own worker ports. Called in the replica's
    constructor, which Serve runs before it starts that server; a Ray without the hook is left alone."""
    import ray
    from ray.serve._private import replica as replica_module

    original = getattr(replica_module, "add_port_to_grpc_server", None)
    if original is None or getattr(original, "kosent_node_ip", False):
        return
    host = ray.util.get_node_ip_address()
    host = f"[{host}]" if ":" in host else host

    def bind_node_ip(server: Any, address: str) -> int:
        if address.startswith("[::]:"):
            address = f"{host}:{address[len('[::]:'):]}"
        return original(server, address)

    bind_node_ip.kosent_node_ip = True
    replica_module.add_port_to_grpc_server = bind_node_ip


# Serve pickles the FastAPI app when @serve.ingress runs: every global a route uses must be defined above.
api = FastAPI(
    title="kosent",
    description="Korean sentiment classifier (NSMC labels) served by Ray Serve. See docs/SERVING.md.",
    version="1",
)


@api.exception_handler(ApiError)
async def _api_error(_: Request, exc: ApiError) -> JSONResponse:
    return exc.response()


@api.exception_handler(RequestValidationError)
async def _validation_error(_: Request, exc: RequestValidationError) -> JSONResponse:
    err = (exc.errors() or [{}])[0]
    where = ".".join(str(p) for p in err.get("loc", ()) if p not in ("body", "query"))
    return ApiError(422, "invalid_request", f"{where or 'request'}: {err.get('msg', 'invalid')}", where or None).response()


@api.exception_handler(StarletteHTTPException)
async def _http_error(request: Request, exc: StarletteHTTPException) -> JSONResponse:
    code = {404: "not_found", 405: "method_not_allowed"}.get(exc.status_code, "http_error")
    detail = exc.detail if exc.status_code != 404 else f"no route {request.url.path}; see /docs"
    return ApiError(exc.status_code, code, str(detail), None, getattr(exc, "headers", None)).response()


@serve.deployment(name="KosentServer")
@serve.ingress(api)
class KosentServer:
    """One replica: the default model always loaded, others loaded on demand (LRU, multiplexed)."""

    def __init__(self, settings: dict[str, Any] | None = None) -> None:
        import torch

        keep_replica_grpc_on_node_ip()
        # ``settings`` is a validated ServeArgs dump without the model sources (those come in user_config).
        self.args = ServeArgs.model_construct(**(settings or {}))
        self.threads = max(1, int(round(self.args.num_cpus)))
        torch.set_num_threads(self.threads)
        # One thread runs forward passes (torch uses `threads` inside it); loading uses another, so a
        # hot swap never stops the current model from answering.
        self._forward_pool = ThreadPoolExecutor(1, "kosent-forward", initializer=torch.set_num_threads,
                                                initargs=(self.threads,))
        self._load_pool = ThreadPoolExecutor(1, "kosent-load", initializer=torch.set_num_threads,
                                             initargs=(self.threads,))
        self._token = self.args.auth_token or os.environ.get(self.args.auth_token_env) or None
        self.stats = BatchStats()
        self._specs: dict[str, dict[str, Any]] = {}
        self._default: LoadedModel | None = None
        self._slots: weakref.WeakValueDictionary[str, _Slot] = weakref.WeakValueDictionary()
        self._swap_lock = asyncio.Lock()
        self._revision: str | int | None = None
        self._batch_wait_s = self.args.batch_wait_timeout_s
        self._inflight = 0  # /predict requests inside this replica
        self._pending: list[tuple[Any, str, asyncio.Future]] = []  # texts waiting for a forward pass
        self._runner: asyncio.Task | None = None
        self._predict_batch.set_max_batch_size(self.args.max_batch_size)
        self._predict_batch.set_batch_wait_timeout_s(self._batch_wait_s)
        try:
            self.replica = serve.get_replica_context().replica_id.unique_id
        except Exception:
            self.replica = f"pid-{os.getpid()}"

    # ---- model set and hot swap -------------------------------------------------------------------

    def _batch_size(self) -> int:
        return max(64, self.args.max_batch_size)

    async def reconfigure(self, config: dict[str, Any]) -> None:
        """Called with ``user_config`` at start-up and whenever it changes: load the new default beside the
        current one, then swap (requests keep being answered by the old model meanwhile)."""
        cfg = ServingConfig(**config)
        loop = asyncio.get_running_loop()
        specs, default = await loop.run_in_executor(self._load_pool, resolve_models, cfg)
        async with self._swap_lock:
            current = self._default
            reload_all = cfg.revision != self._revision  # a manifest or checkpoint rewritten in place
            if (current is None or reload_all or current.name != default
                    or current.checkpoint != specs[default]["checkpoint"]):
                fresh = await loop.run_in_executor(self._load_pool, load_model, default, specs[default],
                                                   self._batch_size())
            else:
                fresh = current
            # Cached multiplexed models whose checkpoint changed are reloaded before the swap too.
            for name, slot in list(self._slots.items()):
                spec = specs.get(name)
                if spec is not None and (reload_all or slot.model.checkpoint != spec["checkpoint"]):
                    slot.model = await loop.run_in_executor(self._load_pool, load_model, name, spec,
                                                            self._batch_size())
            # The swap: plain assignments on the event loop, between two requests.
            self._specs, self._default, self._revision = dict(specs), fresh, cfg.revision
            if current is not None and current is not fresh:
                self.stats.swaps += 1
                logger.info(f"kosent: swapped model {current.name}:{current.checkpoint} -> {fresh.name}:{fresh.checkpoint}")
        self._predict_batch.set_max_batch_size(cfg.max_batch_size or self.args.max_batch_size)
        self._batch_wait_s = self.args.batch_wait_timeout_s if cfg.batch_wait_timeout_s is None else cfg.batch_wait_timeout_s
        self._predict_batch.set_batch_wait_timeout_s(self._batch_wait_s)

    @serve.multiplexed(max_num_models_per_replica=MAX_MODELS_PER_REPLICA)
    async def _load_named(self, name: str) -> _Slot:
        spec = self._specs[name]
        loop = asyncio.get_running_loop()
        model = await loop.run_in_executor(self._load_pool, load_model, name, spec, self._batch_size())
        slot = _Slot(model)
        self._slots[name] = slot
        return slot

    async def _model(self, name: str | None) -> LoadedModel:
        default = self._default
        if default is None:
            raise ApiError(503, "not_ready", "no model loaded yet", None)
        if not name or name == default.name:
            return default
        if name not in self._specs:
            raise ApiError(404, "unknown_model", f"unknown model {name!r}; known: {', '.join(sorted(self._specs))}",
                           "model")
        slot = await self._load_named(name)
        spec = self._specs.get(name)
        if spec is not None and slot.model.checkpoint != spec["checkpoint"] and not self._swap_lock.locked():
            # loaded from the previous model set while a swap was under way
            loop = asyncio.get_running_loop()
            slot.model = await loop.run_in_executor(self._load_pool, load_model, name, spec, self._batch_size())
        return slot.model

    # ---- batching ---------------------------------------------------------------------------------
    #
    # Two stages. @serve.batch gathers the texts of concurrent requests (one call per text) into batches.
    # It forms a batch as soon as its wait window closes, even while the model is still busy with the
    # previous one, so with a slow model its batches stay small. Its handler therefore only queues the
    # texts; one forward loop takes everything queued (up to max_batch_size texts) each time the model is
    # free: while a pass runs, the next batch fills up.

    @serve.batch(max_batch_size=16, batch_wait_timeout_s=0.005, max_concurrent_batches=MAX_CONCURRENT_SERVE_BATCHES)
    async def _predict_batch(self, items: list[tuple[Any, str]]) -> list[Any]:
        """Texts from concurrent requests -> their predictions (computed by :meth:`_forward_loop`)."""
        self.stats.serve_batch_sizes[len(items)] += 1
        loop = asyncio.get_running_loop()
        futures = [loop.create_future() for _ in items]
        self._pending.extend((predictor, text, fut) for (predictor, text), fut in zip(items, futures, strict=True))
        if self._runner is None or self._runner.done():
            self._runner = loop.create_task(self._forward_loop())
        return list(await asyncio.gather(*futures))

    async def _forward_loop(self) -> None:
        """Forward passes over everything queued, one pass per model, until nothing is left."""
        loop = asyncio.get_running_loop()
        while self._pending:
            limit = self._predict_batch._get_max_batch_size()
            take, self._pending = self._pending[:limit], self._pending[limit:]
            self.stats.sizes[len(take)] += 1
            groups: dict[int, tuple[Any, list[tuple[str, asyncio.Future]]]] = {}
            for predictor, text, fut in take:
                groups.setdefault(id(predictor), (predictor, []))[1].append((text, fut))
            t0 = time.perf_counter()
            for predictor, pairs in groups.values():
                try:
                    preds = await loop.run_in_executor(self._forward_pool, predictor.predict, [t for t, _ in pairs])
                except Exception as e:  # noqa: BLE001 - handed to every waiting request
                    for _, fut in pairs:
                        if not fut.done():
                            fut.set_exception(e)
                    continue
                for (_, fut), pred in zip(pairs, preds, strict=True):
                    if not fut.done():
                        fut.set_result(pred)
            self.stats.forward_seconds += time.perf_counter() - t0

    # ---- auth -------------------------------------------------------------------------------------

    def _authorize(self, request: Request) -> None:
        if not self._token:
            return
        header = request.headers.get("authorization", "")
        scheme, _, given = header.partition(" ")
        if scheme.lower() != "bearer" or not hmac.compare_digest(given.strip().encode(), self._token.encode()):
            raise ApiError(401, "unauthorized",
                           "missing or wrong bearer token: send 'Authorization: Bearer <token>'"
                           if header else "this server requires 'Authorization: Bearer <token>'",
                           "Authorization", headers={"WWW-Authenticate": "Bearer"})

    # ---- routes -----------------------------------------------------------------------------------

    @api.post("/predict", response_model=PredictResponse,
              openapi_extra={"requestBody": {"required": True, "content": {"application/json": {
                  "schema": PredictRequest.model_json_schema()}}}},
              responses={400: {"description": "malformed JSON"}, 401: {"description": "bearer token required"},
                         404: {"description": "unknown model"}, 413: {"description": "too many or too long texts"},
                         415: {"description": "not JSON"}, 422: {"description": "invalid field"},
                         503: {"description": "overloaded"}, 504: {"description": "timed out"}})
    async def predict(self, request: Request) -> JSONResponse:
        """Label and probability for one text (``text``) or several (``texts``)."""
        t0 = time.perf_counter()
        self._authorize(request)
        raw = await request.body()
        texts, body_model = parse_predict_body(raw, request.headers.get("content-type"), self.args.max_texts,
                                               self.args.max_text_chars)
        header_model = serve.get_multiplexed_model_id() or None
        if body_model and header_model and body_model != header_model:
            raise ApiError(422, "conflicting_model", f"body names model {body_model!r} but the "
                           f"serve_multiplexed_model_id header names {header_model!r}", "model")
        model = await self._model(body_model or header_model)
        self.stats.requests += 1
        self.stats.texts += len(texts)
        self._inflight += 1
        try:
            if self.args.adaptive_batch_wait:
                # Alone in the replica: nothing to wait for, so the batch goes at once (c=1 latency);
                # with company, wait up to batch_wait_timeout_s for the batch to fill. @serve.batch reads
                # the value when a batch's first text arrives.
                self._predict_batch.set_batch_wait_timeout_s(self._batch_wait_s if self._inflight > 1 else 0.0)
            calls = [self._predict_batch((model.predictor, t)) for t in texts]
            preds = await asyncio.wait_for(asyncio.gather(*calls), timeout=self.args.request_timeout_s)
        except asyncio.TimeoutError:
            self.stats.timeouts += 1
            raise ApiError(504, "timeout", f"not answered within {self.args.request_timeout_s}s; retry later",
                           None) from None
        finally:
            self._inflight -= 1
            self.stats.handler_ms.append((time.perf_counter() - t0) * 1000)
        return JSONResponse({
            "predictions": [{"text": t, **p.to_dict()} for t, p in zip(texts, preds, strict=True)],
            "model": model.name,
        })

    @api.get("/healthz")
    async def healthz(self) -> JSONResponse:
        """A tiny forward pass through the default model; 503 when it fails. Never needs a token."""
        model = self._default
        if model is None:
            return JSONResponse({"status": "loading", "model": None}, status_code=503)
        loop = asyncio.get_running_loop()
        try:
            t0 = time.perf_counter()
            preds = await asyncio.wait_for(loop.run_in_executor(self._forward_pool, model.predictor.predict,
                                                                [HEALTH_TEXT]), timeout=10)
            ms = (time.perf_counter() - t0) * 1000
            if not (len(preds) == 1 and 0.0 <= preds[0].probability <= 1.0):
                raise ValueError(f"unexpected forward output {preds!r}")
        except Exception as e:  # noqa: BLE001 - any failure means unhealthy
            return JSONResponse({"status": "error", "model": model.name, "detail": f"{type(e).__name__}: {e}"},
                                status_code=503)
        return JSONResponse({"status": "ok", "model": model.name, "forward_ms": round(ms, 2),
                             "replica": self.replica})

    @api.get("/model")
    async def describe(self, request: Request, name: str | None = None) -> JSONResponse:
        """The default model (or ``?name=``): checkpoint, metrics, label map, created_at; and every model."""
        self._authorize(request)
        if name and name not in self._specs and (self._default is None or name != self._default.name):
            raise ApiError(404, "unknown_model", f"unknown model {name!r}; known: {', '.join(sorted(self._specs))}",
                           "name")
        model = await self._model(name)
        loaded = {n for n, s in self._slots.items() if s is not None}
        default = self._default.name if self._default else None
        out = model.describe() | {
            "model": model.name,
            "default_model": default,
            "models": [
                {"name": n, "checkpoint": s["checkpoint"], "manifest": s.get("manifest"), "default": n == default,
                 "loaded": n == default or n in loaded}
                for n, s in sorted(self._specs.items())
            ],
            "replica": self.replica,
            "limits": {"max_texts": self.args.max_texts, "max_text_chars": self.args.max_text_chars,
                       "max_length_tokens": model.predictor.max_length,
                       "request_timeout_s": self.args.request_timeout_s},
            "batching": {"max_batch_size": self._predict_batch._get_max_batch_size(),
                         "batch_wait_timeout_s": self._batch_wait_s,
                         "adaptive_batch_wait": self.args.adaptive_batch_wait},
            "auth": bool(self._token),
        }
        return JSONResponse(out)

    @api.get("/stats")
    async def stats_route(self, request: Request) -> JSONResponse:
        """This replica's counters: requests, texts, batch sizes seen by ``@serve.batch``."""
        self._authorize(request)
        return JSONResponse(self.stats.to_dict() | {
            "replica": self.replica, "pid": os.getpid(), "torch_threads": self.threads,
            "model": self._default.name if self._default else None,
            "max_batch_size": self._predict_batch._get_max_batch_size(),
            "batch_wait_timeout_s": self._batch_wait_s,
        })

    @api.get("/", response_class=HTMLResponse, include_in_schema=False)
    async def page(self, request: Request) -> HTMLResponse:
        root = request.scope.get("root_path", "").rstrip("/")
        default = self._default.name if self._default else ""
        return HTMLResponse(render_page(root, default, sorted(self._specs), bool(self._token)))

    def check_health(self) -> None:
        """Serve's own periodic health check: unhealthy while no model is loaded after start-up."""
        if self._default is None:
            raise RuntimeError("no model loaded")

    def __del__(self) -> None:
        for pool in ("_forward_pool", "_load_pool"):
            if hasattr(self, pool):
                getattr(self, pool).shutdown(wait=False)


# ----------------------------------------------------------------------------------------------------
# Building the application
# ----------------------------------------------------------------------------------------------------


def build(args: ServeArgs) -> serve.Application:
    """The bound application for ``args`` (model sources resolved now, carried in ``user_config``)."""
    if args.ongoing_limit() < args.max_batch_size:
        logger.warning(f"max_ongoing_requests {args.ongoing_limit()} < max_batch_size {args.max_batch_size}: "
                       "batches can never fill (Serve sends a replica at most max_ongoing_requests at once)")
    autoscaling = {
        "min_replicas": args.min_replicas,
        "initial_replicas": max(1, args.min_replicas),
        "max_replicas": args.max_replicas,
        "target_ongoing_requests": args.target_ongoing_requests,
        "upscale_delay_s": args.upscale_delay_s,
        "downscale_delay_s": args.downscale_delay_s,
    } | args.autoscaling
    settings = args.model_dump(exclude={"manifest", "checkpoint", "models", "default_model"})
    return KosentServer.options(
        user_config=serving_config(args),
        max_ongoing_requests=args.ongoing_limit(),
        max_queued_requests=args.max_queued_requests,
        autoscaling_config=autoscaling,
        ray_actor_options={"num_cpus": args.num_cpus},
        max_surge_percent=args.max_surge_percent,
        health_check_period_s=10,
        graceful_shutdown_timeout_s=max(20.0, args.request_timeout_s),
    ).bind(settings)


def app_builder(args: dict[str, Any]) -> serve.Application:
    """Application builder for ``serve run serve.app:app_builder manifest=runs/.../manifest.json`` and for
    ``import_path: serve.app:app_builder`` in ``serve/config.yaml``."""
    return build(ServeArgs(**(args or {})))
