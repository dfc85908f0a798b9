"""The Serve deployment ``KosentServer`` (a FastAPI ingress) and the application builder.

    POST /predict   {"text": "..."} or {"texts": [...]} (+ optional "model")  -> predictions
    GET  /healthz   a tiny forward pass through the default model: 200, or 503 if it fails (never needs auth)
    GET  /model     checkpoint, metrics, label map, created_at, every multiplexed model
    GET  /stats     this replica's counters: batches, admission, timeouts
    GET  /          a self-contained page to type sentences and see label and probability
    GET  /docs      OpenAPI docs (FastAPI default)

Texts are queued and batched across concurrent requests by :class:`kosent.serve.batching.Batcher`, which
also admits or refuses each request against its deadline, and scored by :class:`kosent.predict.Predictor`
(normalization and tokenization inside the replica, exactly as in training). Several checkpoints can sit
behind the endpoint (``@serve.multiplexed``). The model set travels in the deployment's ``user_config``:
redeploying with a new one calls :meth:`KosentServer.reconfigure` on the running replicas (hot swap).
"""

# No ``from __future__ import annotations``: FastAPI resolves the route signatures (``Request``) at run time,
# inside Serve's proxy and replicas.
import asyncio
import hmac
import logging
import os
import threading
import time
import weakref
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import HTMLResponse, JSONResponse
from ray import serve
from ray.serve.config import AutoscalingPolicy
from ray.serve.exceptions import RayServeException
from starlette.exceptions import HTTPException as StarletteHTTPException

from kosent.serve.autoscaling import CAPACITY_METRIC, OFFERED_METRIC, POLICY_PATH
from kosent.serve.batching import Batcher, BatchStats, Overloaded, Throughput
from kosent.serve.models import HEALTH_TEXT, LoadedModel, Slot, load_model, warmup_rate
from kosent.serve.page import render_page
from kosent.serve.parsing import (
    DEADLINE_HEADER,
    ApiError,
    PredictRequest,
    PredictResponse,
    parse_deadline,
    parse_predict_body,
)
from kosent.serve.ray_compat import keep_replica_grpc_on_node_ip
from kosent.serve.settings import ReplicaSettings, ServeArgs, ServingConfig, resolve_models, serving_config

logger = logging.getLogger("ray.serve")

#: Models one replica keeps loaded besides the default (LRU beyond that); a decorator argument, so an
#: environment variable rather than an app arg.
MAX_MODELS_PER_REPLICA = int(os.environ.get("KOSENT_SERVE_MAX_MODELS", "3"))

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


#: How much nicer (Linux: per thread) the forward thread is than the thread that starts it. When the CPUs
#: are contended, the replica's event loop and Serve's proxy (which answer refusals and health checks in
#: milliseconds) go before the forward pass; on idle CPUs it changes nothing. Relative, not absolute: Ray
#: starts its workers at niceness 15, so an absolute 5 would put the forward pass *ahead* of the replica's
#: own event loop, Serve's proxy and every other Ray worker on the node (and it needs root to do so).
#: With traced passes an increment of 0 (tried) slowed the model more under 20x overload: 20% against 9-14%.
FORWARD_NICENESS_INCREMENT = 4
# The GIL switch interval stays at Python's 5 ms. A shorter one (1 ms, tried) lets the event loop take the
# GIL back sooner, but the forward thread needs it after every torch op: under 20x overload the passes
# ran 25-30% slower (16-17 vs 21-25 texts/s, bench/bench_overload.py, eager passes) and refusals were no faster.


def _forward(predictor: Any, texts: list[str]) -> list[Any]:
    return predictor.predict(texts)


def _forward_thread_setup(threads: int) -> None:
    import torch

    torch.set_num_threads(threads)
    tid = threading.get_native_id()
    try:
        niceness = min(19, os.getpriority(os.PRIO_PROCESS, tid) + FORWARD_NICENESS_INCREMENT)
        os.setpriority(os.PRIO_PROCESS, tid, niceness)
    except (AttributeError, OSError) as e:  # not Linux: forward passes keep the replica's priority
        logger.info(f"kosent: forward thread keeps its priority ({e})")
        return
    logger.info(f"kosent: forward thread at niceness {niceness}")


@serve.deployment(name="KosentServer")
@serve.ingress(api)
class KosentServer:
    """One replica: the default model always loaded, others loaded on demand (LRU, multiplexed)."""

    def __init__(self, settings: dict[str, Any] | None = None) -> None:
        import torch

        keep_replica_grpc_on_node_ip()
        # ``settings``: ServeArgs' replica part (ServeArgs.replica_settings); the models come in user_config.
        self.args = ReplicaSettings(**(settings or {}))
        self.threads = max(1, int(round(self.args.num_cpus)))
        torch.set_num_threads(self.threads)
        # With num_gpus Ray gives the replica its GPU (CUDA_VISIBLE_DEVICES): every model loads there.
        self.device = "cuda" if self.args.num_gpus and torch.cuda.is_available() else "cpu"
        if self.args.num_gpus and self.device == "cpu":
            logger.warning(f"kosent: num_gpus {self.args.num_gpus:g} but torch sees no CUDA device: serving on CPU")
        # One thread runs forward passes (torch uses `threads` inside it); loading uses another, so a
        # hot swap never stops the current model from answering.
        self._forward_pool = ThreadPoolExecutor(1, "kosent-forward", initializer=_forward_thread_setup,
                                                initargs=(self.threads,))
        self._load_pool = ThreadPoolExecutor(1, "kosent-load", initializer=torch.set_num_threads,
                                             initargs=(self.threads,))
        self._token = self.args.auth_token or os.environ.get(self.args.auth_token_env) or None
        self.stats = BatchStats()
        self.batcher = Batcher(_forward, self._forward_pool, self.args.max_batch_size,
                               self.args.batch_wait_timeout_s, adaptive_wait=self.args.adaptive_batch_wait,
                               admission=self.args.admission, admitted_limit=self.args.admitted_limit(),
                               stats=self.stats)
        self._specs: dict[str, dict[str, Any]] = {}
        self._default: LoadedModel | None = None
        self._slots: weakref.WeakValueDictionary[str, Slot] = weakref.WeakValueDictionary()
        self._swap_lock = asyncio.Lock()
        self._revision: str | int | None = None
        try:
            self.replica = serve.get_replica_context().replica_id.unique_id
        except RayServeException:  # constructed outside Serve (a plain actor or a test)
            self.replica = f"pid-{os.getpid()}"

    # ---- model set and hot swap -------------------------------------------------------------------

    def _batch_size(self) -> int:
        return max(64, self.args.max_batch_size)

    async def _load(self, name: str, spec: dict[str, Any]) -> LoadedModel:
        """Load a model on the loading thread (never the event loop), onto this replica's device."""
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self._load_pool, load_model, name, spec, self._batch_size(), self.device,
                                          self.args.traced_forward)

    async def reconfigure(self, config: dict[str, Any]) -> None:
        """Called with ``user_config`` at start-up and whenever it changes: load the new default beside the
        current one, then swap (requests keep being answered by the old model meanwhile)."""
        cfg = ServingConfig(**config)
        loop = asyncio.get_running_loop()
        specs, default = await loop.run_in_executor(self._load_pool, resolve_models, cfg)
        batch = cfg.max_batch_size or self.args.max_batch_size
        async with self._swap_lock:
            current = self._default
            reload_all = cfg.revision != self._revision  # a manifest or checkpoint rewritten in place
            throughput = None
            if (current is None or reload_all or current.name != default
                    or current.checkpoint != specs[default]["checkpoint"]):
                fresh = await self._load(default, specs[default])
                # Seed admission's estimate with a measured pass of the new model (live passes replace it).
                rate = await loop.run_in_executor(self._load_pool, warmup_rate, fresh.predictor, batch)
                throughput = Throughput(batch)
                throughput.observe(batch, batch / rate)
            else:
                fresh = current
            # Cached multiplexed models whose checkpoint changed are reloaded before the swap too.
            for name, slot in list(self._slots.items()):
                spec = specs.get(name)
                if spec is not None and (reload_all or slot.model.checkpoint != spec["checkpoint"]):
                    slot.model = await self._load(name, spec)
            # The swap: plain assignments on the event loop, between two requests.
            self._specs, self._default, self._revision = dict(specs), fresh, cfg.revision
            if throughput is not None:
                self.batcher.throughput = throughput
            if current is not None and current is not fresh:
                self.stats.swaps += 1
                logger.info(f"kosent: swapped model {current.name}:{current.checkpoint} -> {fresh.name}:{fresh.checkpoint}")
        self.batcher.set_max_batch_size(batch)
        self.batcher.batch_wait_s = (self.args.batch_wait_timeout_s if cfg.batch_wait_timeout_s is None
                                     else cfg.batch_wait_timeout_s)

    @serve.multiplexed(max_num_models_per_replica=MAX_MODELS_PER_REPLICA)
    async def _load_named(self, name: str) -> Slot:
        slot = Slot(await self._load(name, self._specs[name]))
        self._slots[name] = slot
        return slot

    async def _model(self, name: str | None) -> LoadedModel:
        default = self._default
        if default is None:
            raise ApiError(503, "not_ready", "no model loaded yet", None, headers={"Retry-After": "5"})
        if not name or name == default.name:
            return default
        if name not in self._specs:
            raise ApiError(404, "unknown_model", f"unknown model {name!r}; known: {', '.join(sorted(self._specs))}",
                           "model")
        slot = await self._load_named(name)
        spec = self._specs.get(name)
        if spec is not None and slot.model.checkpoint != spec["checkpoint"] and not self._swap_lock.locked():
            # loaded from the previous model set while a swap was under way
            slot.model = await self._load(name, spec)
        return slot.model

    # ---- auth and autoscaling ---------------------------------------------------------------------

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

    def record_autoscaling_stats(self) -> dict[str, float]:
        """Serve's custom-metrics hook: offered and servable texts/s, read by ``kosent.serve.autoscaling``."""
        return {OFFERED_METRIC: self.batcher.offered_texts_per_s(),
                CAPACITY_METRIC: self.batcher.throughput.texts_per_s() or 0.0}

    # ---- routes -----------------------------------------------------------------------------------

    @api.post("/predict", response_model=PredictResponse,
              openapi_extra={"requestBody": {"required": True, "content": {"application/json": {
                  "schema": PredictRequest.model_json_schema()}}},
                  "parameters": [{"name": DEADLINE_HEADER, "in": "header", "required": False,
                                  "schema": {"type": "number"},
                                  "description": "seconds this request may take (at most request_timeout_s); "
                                                 "refused at once with 503 if it cannot be met"}]},
              responses={400: {"description": "malformed JSON or header"}, 401: {"description": "bearer token required"},
                         404: {"description": "unknown model"}, 413: {"description": "too many or too long texts"},
                         415: {"description": "not JSON"}, 422: {"description": "invalid field"},
                         503: {"description": "cannot be answered within the deadline now: retry after Retry-After"},
                         504: {"description": "admitted but not answered within the deadline"}})
    async def predict(self, request: Request) -> JSONResponse:
        """Label and probability for one text (``text``) or several (``texts``)."""
        t0 = time.perf_counter()
        arrived = time.monotonic()
        self._authorize(request)
        deadline_s = parse_deadline(request.headers.get(DEADLINE_HEADER), self.args.request_timeout_s)
        raw = await request.body()
        texts, body_model = parse_predict_body(raw, request.headers.get("content-type"), self.args.max_texts,
                                               self.args.max_text_chars)
        header_model = serve.get_multiplexed_model_id() or None
        if body_model and header_model and body_model != header_model:
            raise ApiError(422, "conflicting_model", f"body names model {body_model!r} but the "
                           f"serve_multiplexed_model_id header names {header_model!r}", "model")
        model = await self._model(body_model or header_model)
        try:
            self.batcher.admit(len(texts), deadline_s - (time.monotonic() - arrived))
        except Overloaded as e:
            self.stats.refused += 1
            self.stats.refusal_ms.append((time.perf_counter() - t0) * 1000)
            raise ApiError(503, "overloaded", f"{e.reason}; retry after {e.retry_after_s}s", None,
                           headers={"Retry-After": str(e.retry_after_s)}) from None
        self.stats.requests += 1
        self.stats.texts += len(texts)
        try:
            preds = await self.batcher.run(model.predictor, texts, arrived + deadline_s)
        except asyncio.TimeoutError:
            self.stats.timeouts += 1
            raise ApiError(504, "timeout", f"admitted but not answered within {deadline_s:g}s (the replica "
                           "slowed down after admitting it); retry later", None) from None
        finally:
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
                {"name": n, "checkpoint": s["checkpoint"], "manifest": s.get("manifest"),
                 "model_uri": (s.get("registered") or {}).get("model_uri"), "default": n == default,
                 "loaded": n == default or n in loaded}
                for n, s in sorted(self._specs.items())
            ],
            "replica": self.replica,
            "limits": {"max_texts": self.args.max_texts, "max_text_chars": self.args.max_text_chars,
                       "max_length_tokens": getattr(model.predictor, "max_length", None),
                       "request_timeout_s": self.args.request_timeout_s},
            "batching": {"max_batch_size": self.batcher.max_batch_size,
                         "batch_wait_timeout_s": self.batcher.batch_wait_s,
                         "adaptive_batch_wait": self.args.adaptive_batch_wait},
            "admission": self._admission(),
            "auth": bool(self._token),
        }
        return JSONResponse(out)

    def _admission(self) -> dict[str, Any]:
        rate = self.batcher.throughput.texts_per_s()
        return {"enabled": self.args.admission, "texts_per_s": round(rate, 2) if rate else None,
                "queued_texts": self.batcher.queued_texts, "admitted_requests": self.batcher.admitted_requests,
                "admitted_limit": self.batcher.admitted_limit,
                "offered_texts_per_s": round(self.batcher.offered_texts_per_s(), 2)}

    @api.get("/stats")
    async def stats_route(self, request: Request) -> JSONResponse:
        """This replica's counters: requests, texts, forward-pass sizes, refusals, timeouts."""
        self._authorize(request)
        return JSONResponse(self.stats.to_dict() | {
            "replica": self.replica, "pid": os.getpid(), "torch_threads": self.threads,
            "model": self._default.name if self._default else None,
            "max_batch_size": self.batcher.max_batch_size,
            "batch_wait_timeout_s": self.batcher.batch_wait_s,
            "admission": self._admission(),
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


def autoscaling_config(args: ServeArgs) -> dict[str, Any]:
    """Serve's ``autoscaling_config`` for ``args``: request-based, raised by offered load (refusals too)."""
    return {
        "min_replicas": args.min_replicas,
        "initial_replicas": max(1, args.min_replicas),
        "max_replicas": args.max_replicas,
        "target_ongoing_requests": args.target_ongoing_requests,
        "upscale_delay_s": args.upscale_delay_s,
        "downscale_delay_s": args.downscale_delay_s,
        "policy": AutoscalingPolicy(policy_function=POLICY_PATH),
    } | args.autoscaling


def build(args: ServeArgs) -> serve.Application:
    """The bound application for ``args`` (model sources resolved now, carried in ``user_config``)."""
    if args.ongoing_limit() < args.max_batch_size:
        logger.warning(f"max_ongoing_requests {args.ongoing_limit()} < max_batch_size {args.max_batch_size}: "
                       "single-text batches can never fill")
    settings = args.replica_settings()
    return KosentServer.options(
        user_config=serving_config(args),
        max_ongoing_requests=args.ongoing_limit(),
        max_queued_requests=args.max_queued_requests,
        autoscaling_config=autoscaling_config(args),
        ray_actor_options={"num_cpus": args.num_cpus} | ({"num_gpus": args.num_gpus} if args.num_gpus else {}),
        max_surge_percent=args.max_surge_percent,
        health_check_period_s=10,
        graceful_shutdown_timeout_s=max(20.0, args.request_timeout_s),
    ).bind(settings)


def app_builder(args: dict[str, Any]) -> serve.Application:
    """Application builder for ``serve run kosent.serve:app_builder manifest=runs/.../manifest.json`` and for
    ``import_path: kosent.serve:app_builder`` in ``serve/config.yaml``."""
    return build(ServeArgs(**(args or {})))
