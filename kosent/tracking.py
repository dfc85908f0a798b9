"""Experiment tracking in MLflow: every training run, sweep (each trial a nested run), paper job and
pretraining, with lineage from the served manifest back to the run that made its checkpoint.

Where runs go (``TrainConfig.tracking``, flag ``--tracking``):

- ``None`` (default): ``$MLFLOW_TRACKING_URI`` when set, else a local MLflow store in
  ``<storage_path>/mlruns`` beside the run folders: SQLite ``mlflow.db`` and an ``artifacts/`` folder
  (offline, nothing to start; ``mlflow ui --backend-store-uri sqlite:///runs/mlruns/mlflow.db``). A URI
  storage path (``s3://``) keeps its store in ``$KOSENT_HOME/mlruns``: SQLite needs a local file.
- ``"off"``: no tracking at all.
- anything else: a tracking URI (``http://127.0.0.1:5001`` for an ``mlflow server``, ``sqlite:///x.db``,
  ``file:///abs/mlruns``).

What a run holds: params are the config fields under the names of ``kosent.json`` (``lr``, ``train_size``:
``data`` is flattened, its field names are unique); metrics per epoch under the history's keys
(``val_macro_f1`` at step = epoch), the test metrics; artifacts (curves, evaluation report, manifest,
summary); tags for the data fingerprint, the git commit and the kosent version.

Who logs: only driver processes (the ``ray_jobs`` script, Tune's driver at the end of a sweep, the local
``kosent train``), never Ray Train workers: each run is logged once, whatever the number of workers, and
no worker node needs to reach the tracking store. A run that raises is ended ``FAILED`` with the error.

The client is ``MlflowClient`` with explicit run ids (no ``mlflow.start_run`` global state), so a driver
can keep a parent run and its trial runs open together. MLflow is imported lazily: kosent works without it
unless tracking was asked for explicitly; its telemetry is switched off before the import.
"""

from __future__ import annotations

import dataclasses
import importlib.util
import json
import logging
import os
import re
import shutil
import subprocess
import time
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from kosent.config import cache_home, to_dict
from kosent.storage import absolute, is_uri

# MLflow 3 reports usage to mlflow-telemetry.io unless one of these is set (mlflow/telemetry/utils.py,
# ``is_telemetry_disabled``); the server reads them too and then tells its UI not to report either.
os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")
os.environ.setdefault("DO_NOT_TRACK", "true")

log = logging.getLogger(__name__)

OFF = "off"
STORE_DIR = "mlruns"
STORE_DB = "mlflow.db"  # SQLite: MLflow 3's file store is in maintenance mode and refuses to start by default
DEFAULT_EXPERIMENT = "kosent"
#: The manifest's key for the lineage block: ``{"run_id", "experiment_id", "tracking_uri", ...}``.
MANIFEST_KEY = "mlflow"
REGISTRY_SCHEME = "models:/"
CHECKPOINT_ARTIFACT = "checkpoint"
# Keys Tune adds to every result; a trial's epoch rows carry them beside the training loop's history keys.
_TUNE_KEYS = frozenset({
    "timestamp", "time_this_iter_s", "time_total_s", "training_iteration", "pid", "time_since_restore",
    "iterations_since_restore", "done", "trial_id", "date", "hostname", "node_ip", "checkpoint_dir_name",
})
_PARAM_MAX = 6000  # MLflow's limit on a param value


class TrackingError(ValueError):
    """Tracking asked for but impossible (MLflow missing, server unreachable, bad registry URI)."""


# --------------------------------------------------------------------------------------------------
# Where
# --------------------------------------------------------------------------------------------------


def tracking_uri(setting: str | None, storage_path: str) -> str | None:
    """The tracking URI for a run whose folders live in ``storage_path``; None when tracking is off, or when
    MLflow is missing and no store was named (a machine with kosent's runtime packages only runs untracked)."""
    if setting is not None and setting.strip().lower() == OFF:
        return None
    if not explicitly_requested(setting) and importlib.util.find_spec("mlflow") is None:
        log.warning("tracking: MLflow is not installed; nothing is tracked")
        return None
    if setting:
        return _absolute_store(setting)
    if os.environ.get("MLFLOW_TRACKING_URI"):
        return _absolute_store(os.environ["MLFLOW_TRACKING_URI"])
    if is_uri(storage_path):
        store = cache_home() / STORE_DIR
        log.info("tracking: storage %s is not a local folder; MLflow store at %s", storage_path, store)
    else:
        store = Path(absolute(storage_path)) / STORE_DIR
    store.mkdir(parents=True, exist_ok=True)
    return f"sqlite:///{store / STORE_DB}"


def _artifact_location(uri: str) -> str | None:
    """For a local SQLite store, artifacts go beside the database (``mlruns/artifacts``), not into the
    working directory (MLflow's default, ``./mlartifacts``); a server chooses its own."""
    if not uri.startswith("sqlite:///"):
        return None
    return (Path(uri[len("sqlite:///"):]).parent / "artifacts").as_uri()


def _absolute_store(uri: str) -> str:
    """A plain path becomes an absolute ``file://`` URI (Ray jobs change their working directory)."""
    if is_uri(uri) or uri.startswith(("sqlite:", "databricks", "postgresql", "mysql", "mssql")):
        return uri
    return Path(absolute(uri)).as_uri()


def explicitly_requested(setting: str | None) -> bool:
    """Whether the user named a store (flag or environment): then a missing MLflow is an error."""
    return bool(setting and setting.strip().lower() != OFF) or bool(os.environ.get("MLFLOW_TRACKING_URI"))


def _mlflow_client(uri: str, required: bool) -> Any | None:
    try:
        from mlflow import MlflowClient
    except ImportError as e:
        if required:
            raise TrackingError(
                f"tracking to {uri} asked for, but MLflow is not installed ({e}); install kosent's "
                "dependencies (mlflow-skinny) or pass --tracking off"
            ) from e
        log.warning("tracking: MLflow is not installed (%s); this run is not tracked", e)
        return None
    return MlflowClient(tracking_uri=uri, registry_uri=os.environ.get("MLFLOW_REGISTRY_URI") or uri)


# --------------------------------------------------------------------------------------------------
# What
# --------------------------------------------------------------------------------------------------


def kosent_version() -> str:
    try:
        from importlib.metadata import version

        return version("kosent")
    except Exception:  # noqa: BLE001 - running from a checkout that is not installed
        return "unknown"


def git_commit() -> str | None:
    """The commit of the checkout kosent runs from (``-dirty`` appended with uncommitted changes), or
    ``$KOSENT_GIT_COMMIT``; None inside a submitted Ray job, whose working dir has no ``.git``."""
    if os.environ.get("KOSENT_GIT_COMMIT"):
        return os.environ["KOSENT_GIT_COMMIT"]
    root = Path(__file__).resolve().parent.parent
    if not (root / ".git").exists():
        return None
    try:
        commit = subprocess.run(["git", "-C", str(root), "rev-parse", "HEAD"], capture_output=True, text=True,
                                timeout=10, check=True).stdout.strip()
        dirty = subprocess.run(["git", "-C", str(root), "status", "--porcelain", "--untracked-files=no"],
                               capture_output=True, text=True, timeout=10, check=True).stdout.strip()
    except (OSError, subprocess.SubprocessError) as e:
        log.info("tracking: no git commit (%s)", e)
        return None
    return f"{commit}-dirty" if dirty else commit


def _param_value(value: Any) -> str:
    text = value if isinstance(value, str) else json.dumps(value, ensure_ascii=False)
    return text[:_PARAM_MAX]


def config_params(cfg: Any) -> dict[str, str]:
    """A config dataclass (or its dict) as MLflow params under the field names; ``data`` is flattened into
    its own field names (``train_size``, ``scale``): they do not clash with TrainConfig's."""
    values = to_dict(cfg) if dataclasses.is_dataclass(cfg) else dict(cfg)
    if values.get("name") is None:
        values.pop("name", None)  # a generated name is logged once the run has it (params are write-once)
    data = values.pop("data", None) or {}
    return {k: _param_value(v) for k, v in (values | data).items()}


def history_metrics(row: dict[str, Any]) -> dict[str, float]:
    """One epoch row under the training loop's history keys: numbers only, Tune's bookkeeping dropped."""
    return {k: float(v) for k, v in row.items()
            if k not in _TUNE_KEYS and "/" not in k and isinstance(v, (int, float)) and not isinstance(v, bool)}


def base_tags(kind: str, fingerprint: str | None = None) -> dict[str, str]:
    tags = {"kosent.kind": kind, "kosent.version": kosent_version()}
    commit = git_commit()
    if commit:
        tags["mlflow.source.git.commit"] = commit
        tags["kosent.git_commit"] = commit
    if fingerprint:
        tags["kosent.data_fingerprint"] = fingerprint
    return tags


# --------------------------------------------------------------------------------------------------
# A run
# --------------------------------------------------------------------------------------------------


@dataclasses.dataclass
class Run:
    """One MLflow run, logged through the client by id. Every method is safe to call more than once."""

    client: Any
    run_id: str
    experiment_id: str
    uri: str
    parent_run_id: str | None = None
    ended: bool = False
    #: When the work ended, for runs recorded after the fact (a sweep's trials); None: when ``end`` is called.
    end_time_ms: int | None = None

    def log_params(self, params: dict[str, Any]) -> None:
        from mlflow.entities import Param

        items = [Param(k, _param_value(v)) for k, v in params.items()]
        for i in range(0, len(items), 100):  # MLflow's batch limit on params
            self.client.log_batch(self.run_id, params=items[i:i + 100])

    def log_metrics(self, metrics: dict[str, float], step: int | None = None, timestamp_ms: int | None = None) -> None:
        from mlflow.entities import Metric

        now = timestamp_ms or int(time.time() * 1000)
        items = [Metric(k, float(v), now, int(step or 0)) for k, v in metrics.items()]
        for i in range(0, len(items), 1000):
            self.client.log_batch(self.run_id, metrics=items[i:i + 1000])

    def log_history(self, history: Iterable[dict[str, Any]]) -> None:
        """Each epoch's metrics at step = its epoch number (the keys of the history), timed when the epoch
        was reported where the row says (Tune's ``timestamp``), so charts against wall time are true."""
        for i, row in enumerate(history):
            metrics = history_metrics(row)
            when = int(row["timestamp"] * 1000) if isinstance(row.get("timestamp"), (int, float)) else None
            self.log_metrics(metrics, step=int(metrics.get("epoch", i + 1)), timestamp_ms=when)

    def set_tags(self, tags: dict[str, Any]) -> None:
        from mlflow.entities import RunTag

        self.client.log_batch(self.run_id, tags=[RunTag(k, str(v)[:_PARAM_MAX]) for k, v in tags.items()
                                                 if v is not None])

    def set_name(self, name: str) -> None:
        self.client.update_run(self.run_id, name=name)

    def log_artifact(self, path: str | Path | None, artifact_path: str | None = None) -> None:
        """A file or a folder (its contents under ``artifact_path``); a path that does not exist is skipped."""
        if path is None or not Path(path).exists():
            return
        if Path(path).is_dir():
            self.client.log_artifacts(self.run_id, str(path), artifact_path)
        else:
            self.client.log_artifact(self.run_id, str(path), artifact_path)

    def lineage(self) -> dict[str, Any]:
        """What a manifest records about the run that made its checkpoint."""
        doc = {"run_id": self.run_id, "experiment_id": self.experiment_id, "tracking_uri": self.uri}
        return doc | ({"parent_run_id": self.parent_run_id} if self.parent_run_id else {})

    def end(self, status: str = "FINISHED", error: str | None = None) -> None:
        if self.ended:
            return
        if error:
            self.set_tags({"kosent.error": error})
        self.client.set_terminated(self.run_id, status=status, end_time=self.end_time_ms)
        self.ended = True


def start_run(
    setting: str | None,
    storage_path: str,
    *,
    kind: str,
    name: str | None = None,
    params: dict[str, Any] | None = None,
    fingerprint: str | None = None,
    tags: dict[str, Any] | None = None,
    parent: Run | None = None,
    experiment: str | None = None,
    start_time_ms: int | None = None,
) -> Run | None:
    """Create a run (status RUNNING) in ``experiment`` (default ``$MLFLOW_EXPERIMENT_NAME`` or "kosent"),
    or return None when tracking is off or MLflow is missing and was not asked for explicitly.

    Raises :class:`TrackingError` when the store cannot be reached: a run that asked for tracking stops
    before it trains, not after."""
    uri = parent.uri if parent is not None else tracking_uri(setting, storage_path)
    if uri is None:
        return None
    client = parent.client if parent is not None else _mlflow_client(uri, explicitly_requested(setting))
    if client is None:
        return None
    experiment = experiment or os.environ.get("MLFLOW_EXPERIMENT_NAME") or DEFAULT_EXPERIMENT
    try:
        if parent is not None:
            experiment_id = parent.experiment_id
        else:
            found = client.get_experiment_by_name(experiment)
            experiment_id = found.experiment_id if found is not None else client.create_experiment(
                experiment, artifact_location=_artifact_location(uri))
        all_tags = base_tags(kind, fingerprint) | {k: str(v) for k, v in (tags or {}).items() if v is not None}
        if parent is not None:
            all_tags["mlflow.parentRunId"] = parent.run_id
        created = client.create_run(experiment_id, run_name=name, tags=all_tags, start_time=start_time_ms)
    except Exception as e:  # MlflowException, requests' ConnectionError, OSError ...
        raise TrackingError(f"tracking store {uri} not usable: {type(e).__name__}: {e} "
                            "(start the server, fix --tracking / $MLFLOW_TRACKING_URI, or pass --tracking off)") from e
    run = Run(client=client, run_id=created.info.run_id, experiment_id=experiment_id, uri=uri,
              parent_run_id=parent.run_id if parent is not None else None)
    if params:
        run.log_params(params)
    if parent is None:
        log.info("tracking: run %s in experiment '%s' at %s", run.run_id, experiment, uri)
    return run


@contextmanager
def tracked(run: Run | None, finish: bool = True) -> Iterator[Run | None]:
    """End ``run`` FINISHED when the block completes (unless ``finish`` is False: more is logged later),
    FAILED (with the error as a tag) when it raises, KILLED on Ctrl+C; a None run (tracking off) passes through."""
    if run is None:
        yield None
        return
    try:
        yield run
    except KeyboardInterrupt:
        run.end("KILLED", error="KeyboardInterrupt")
        raise
    except BaseException as e:
        run.end("FAILED", error=f"{type(e).__name__}: {e}"[:2000])
        raise
    else:
        if finish:
            run.end("FINISHED")


def safely(what: str, fn: Any, *args: Any, **kwargs: Any) -> Any:
    """Call a logging step whose failure must not cost the run's files on disk: log the error and go on."""
    try:
        return fn(*args, **kwargs)
    except Exception:
        log.exception("tracking: could not %s", what)
        return None


# --------------------------------------------------------------------------------------------------
# Sweeps: the sweep a parent run, each trial a nested run
# --------------------------------------------------------------------------------------------------

# Tune's trial status -> how the trial's MLflow run ends; early stopping by ASHA is KILLED with its outcome tag.
_OUTCOME_STATUS = {"completed": "FINISHED", "early_stopped": "KILLED", "failed": "FAILED", "unfinished": "KILLED"}


def track_trials(parent: Run, rows: Iterable[Any], trial_config: Any) -> dict[str, Run]:
    """A run nested in ``parent`` per trial row (``kosent.sweep.TrialRow``): params are the trial's TrainConfig
    (``trial_config(row)``, a dict), metrics its epoch history, its outcome and error as tags. Returns trial
    id -> run; :func:`finish_sweep` ends them once the best one has its test metrics and manifest."""
    runs: dict[str, Run] = {}
    for row in rows:
        # Trials are recorded when the sweep ends; their runs carry the times the trials really ran.
        last = row.history[-1] if row.history else {}
        start_ms = end_ms = None
        if isinstance(last.get("timestamp"), (int, float)) and isinstance(last.get("time_total_s"), (int, float)):
            end_ms = int(last["timestamp"] * 1000)
            start_ms = end_ms - int(last["time_total_s"] * 1000)
        run = start_run(None, "", kind="trial", name=f"{row.trial_id} lr={row.lr:.3g} scale={row.scale}",
                        params=config_params(trial_config(row)), parent=parent, start_time_ms=start_ms,
                        fingerprint=trial_fingerprint(row.run_dir),
                        tags={"kosent.trial_id": row.trial_id, "kosent.outcome": row.outcome,
                              "kosent.trial_path": row.path, "kosent.checkpoint": row.checkpoint,
                              "kosent.best_epoch": row.best_epoch})
        assert run is not None  # a parent exists, so tracking is on
        run.end_time_ms = end_ms
        run.log_history(row.history)
        runs[row.trial_id] = run
    return runs


def finish_sweep(
    parent: Run,
    runs: dict[str, Run],
    rows: Iterable[Any],
    folder: Path,
    *,
    best_trial_id: str | None,
    test_metrics: dict[str, float],
    interrupted: bool,
) -> None:
    """The sweep's table, plots, ASHA report and manifest on the parent run; the best trial's test metrics,
    curves and manifest on its own run; every trial run ended by its outcome (ASHA's stop is KILLED)."""
    from kosent.manifest import MANIFEST_FILE

    rows = list(rows)
    best = runs.get(best_trial_id) if best_trial_id else None
    for name in ("trials.csv", "trials.md", "asha.json", "sweep.json", MANIFEST_FILE):
        parent.log_artifact(folder / name)
    parent.log_artifact(folder / "plots", "plots")
    if best is not None:
        row = next(r for r in rows if r.trial_id == best_trial_id)
        parent.set_tags({"kosent.best_trial_id": best_trial_id, "kosent.best_run_id": best.run_id,
                         "kosent.checkpoint": row.checkpoint})
        parent.log_metrics({k: v for k, v in row.val_metrics.items() if k != "epoch"} | test_metrics)
        best.set_tags({"kosent.best": "true"})
        best.log_metrics(test_metrics, step=int(row.best_epoch or 0))
        best.log_artifact(folder / MANIFEST_FILE)
        best.log_artifact(folder / "plots" / "trials" / f"{best_trial_id}.png")
    for row in rows:
        run = runs.get(row.trial_id)
        if run is not None:
            run.end(_OUTCOME_STATUS.get(row.outcome, "FINISHED"), error=row.error or None)
    if interrupted:
        parent.end("KILLED", error="interrupted: unfinished trials (resume the sweep)")


def trial_fingerprint(run_dir: str | Path) -> str | None:
    """The data fingerprint a trial recorded in its Train run's ``kosent_trial.json`` (local folders only)."""
    path = Path(run_dir) / "kosent_trial.json"
    return json.loads(path.read_text(encoding="utf-8")).get("fingerprint") if path.is_file() else None


def track_records(parent: Run, records: Iterable[Any]) -> dict[str, Run]:
    """The paper job's runs (``kosent.paper.Record``), each nested in ``parent``: the TrainConfig from its
    checkpoint's ``kosent.json`` as params, its epoch history, test metrics and evaluation report (metrics,
    figures, errors) as artifacts; a failed one ends FAILED with its error."""
    from kosent.checkpoint import read_meta

    runs: dict[str, Run] = {}
    for rec in records:
        meta: dict[str, Any] = {}
        if rec.checkpoint and Path(rec.checkpoint).exists():
            meta = read_meta(rec.checkpoint)
        params = config_params(meta["config"]) if meta.get("config") else {
            "model": rec.model, "scale": rec.scale, "train_size": rec.train_rows}
        name = f"{rec.experiment}/{rec.variant}/{rec.model}" + (f" x{rec.scale}" if rec.scale != 1 else "")
        run = start_run(None, "", kind="paper-run", name=name, params=params, parent=parent,
                        fingerprint=meta.get("data_fingerprint"),
                        tags={"kosent.experiment": rec.experiment, "kosent.variant": rec.variant,
                              "kosent.checkpoint": rec.checkpoint or None})
        assert run is not None
        run.log_history(rec.history)
        if rec.metrics:
            run.log_metrics({k: v for k, v in rec.metrics.items() if isinstance(v, (int, float))},
                            step=int(rec.epochs_run or 0))
        if rec.report_dir:
            run.log_artifact(rec.report_dir, "evaluation")
        run.end("FAILED" if rec.error else "FINISHED", error=rec.error or None)
        runs[name] = run
    return runs


# --------------------------------------------------------------------------------------------------
# The model registry: lineage to the served model
# --------------------------------------------------------------------------------------------------


def manifest_lineage(doc: dict[str, Any]) -> dict[str, Any] | None:
    """The manifest's lineage block (``{"run_id", "experiment_id", "tracking_uri", ...}``), if any: what
    Serve's ``GET /model`` shows."""
    block = doc.get(MANIFEST_KEY)
    return dict(block) if isinstance(block, dict) and block.get("run_id") else None


def register(
    manifest: str | Path,
    name: str,
    *,
    alias: str | None = None,
    tracking: str | None = None,
) -> dict[str, Any]:
    """Register the checkpoint a manifest names as a new version of registered model ``name``.

    The checkpoint folder (without ``training_state/``) is logged as the ``checkpoint`` artifact of the run
    the manifest names (its MLflow run id), the version's source is that artifact, and its run id is the
    run: the registry then links the served model to its params, metrics and data fingerprint. ``tracking``
    overrides the manifest's tracking URI (``$MLFLOW_TRACKING_URI`` wins over the manifest's too).
    Returns ``{"name", "version", "run_id", "source", "alias", "tracking_uri", "model_uri"}``."""
    from kosent.checkpoint import copy_checkpoint
    from kosent.manifest import read_manifest

    doc = read_manifest(manifest)
    lineage = manifest_lineage(doc)
    if lineage is None:
        raise TrackingError(f"{manifest}: records no MLflow run (made with tracking off, or before tracking "
                            "existed); rerun the job with tracking on to register its checkpoint")
    uri = _absolute_store(tracking) if tracking else (os.environ.get("MLFLOW_TRACKING_URI") or lineage["tracking_uri"])
    client = _mlflow_client(uri, required=True)
    run_id = lineage["run_id"]
    try:
        run = client.get_run(run_id)
    except Exception as e:
        raise TrackingError(f"run {run_id} of {manifest} not found at {uri}: {type(e).__name__}: {e}") from e
    checkpoint = str(doc["checkpoint"])
    staging = Path(cache_home()) / "tracking" / f"register-{run_id}-{os.getpid()}"
    shutil.rmtree(staging, ignore_errors=True)
    folder = staging / CHECKPOINT_ARTIFACT
    try:
        copy_checkpoint(checkpoint, folder)
        client.log_artifacts(run_id, str(folder), CHECKPOINT_ARTIFACT)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    source = f"{run.info.artifact_uri.rstrip('/')}/{CHECKPOINT_ARTIFACT}"
    try:
        client.get_registered_model(name)
    except Exception:  # noqa: BLE001 - RESOURCE_DOES_NOT_EXIST: the first version creates it
        client.create_registered_model(name, description="kosent sentiment classifier")
    tags = {"checkpoint": checkpoint, "manifest": str(manifest), "data_fingerprint": doc.get("data_fingerprint")}
    tags |= {k: v for k, v in (doc.get("test_metrics") or {}).items() if k in ("test_accuracy", "test_macro_f1")}
    version = client.create_model_version(name, source=source, run_id=run_id,
                                          tags={k: str(v) for k, v in tags.items() if v is not None})
    version = _wait_ready(client, name, version.version)
    if alias:
        client.set_registered_model_alias(name, alias, version.version)
    log.info("registered %s version %s (run %s)%s", name, version.version, run_id, f" alias {alias}" if alias else "")
    return {"name": name, "version": str(version.version), "run_id": run_id, "source": source, "alias": alias,
            "tracking_uri": uri, "model_uri": f"{REGISTRY_SCHEME}{name}/{version.version}"}


def _wait_ready(client: Any, name: str, version: str, timeout_s: float = 60.0) -> Any:
    deadline = time.monotonic() + timeout_s
    while True:
        mv = client.get_model_version(name, version)
        if str(mv.status) in ("READY", "ModelVersionStatus.READY") or time.monotonic() > deadline:
            return mv
        time.sleep(0.5)


_REGISTRY_URI = re.compile(r"^models:/(?P<name>[^/@]+)(?:/(?P<version>\d+)|@(?P<alias>[^/]+))/?$")


def is_registry_uri(source: str) -> bool:
    return str(source).startswith(REGISTRY_SCHEME)


def model_version(uri: str, tracking: str | None = None) -> Any:
    """The registry's ``ModelVersion`` for ``models:/<name>/<version>`` or ``models:/<name>@<alias>``."""
    m = _REGISTRY_URI.match(str(uri))
    if not m:
        raise TrackingError(f"{uri}: not a registered model URI (models:/<name>/<version> or models:/<name>@<alias>)")
    client = _mlflow_client(registry_uri(tracking), required=True)
    try:
        if m.group("alias"):
            return client.get_model_version_by_alias(m.group("name"), m.group("alias"))
        return client.get_model_version(m.group("name"), m.group("version"))
    except Exception as e:
        raise TrackingError(f"{uri}: not found in the registry at {registry_uri(tracking)}: "
                            f"{type(e).__name__}: {e}") from e


def registry_uri(tracking: str | None = None) -> str:
    """Where ``models:/`` URIs are looked up: ``tracking`` when given, else ``$MLFLOW_REGISTRY_URI`` or
    ``$MLFLOW_TRACKING_URI``, else the default local store of runs started from this folder
    (``runs/mlruns/mlflow.db``, where ``kosent register`` puts versions of untracked-server runs)."""
    uri = tracking or os.environ.get("MLFLOW_REGISTRY_URI") or os.environ.get("MLFLOW_TRACKING_URI")
    if uri:
        return _absolute_store(uri)
    local = Path("runs").resolve() / STORE_DIR / STORE_DB
    if local.is_file():
        return f"sqlite:///{local}"
    raise TrackingError(f"a models:/ URI needs a registry and there is none here ({local} does not exist): "
                        "give the tracking URI (--tracking) or set MLFLOW_TRACKING_URI")


def resolve_registered_model(uri: str, tracking: str | None = None, dest: str | Path | None = None) -> dict[str, Any]:
    """Download the checkpoint of a registered model version into ``dest`` (default
    ``$KOSENT_HOME/registry/<name>/<version>-<run id>``, reused when already there) for Serve or ``kosent predict``.

    Returns ``{"checkpoint": local folder, "model_uri", "name", "version", "run_id", "source"}``: the lineage
    ``GET /model`` shows for a registered model."""
    from kosent.checkpoint import META_FILE

    mv = model_version(uri, tracking)
    # Keyed by the run too: version 1 of the same name in another registry is another checkpoint.
    folder = Path(dest) if dest else cache_home() / "registry" / mv.name / f"{mv.version}-{mv.run_id}"
    if not (folder / META_FILE).is_file():
        from mlflow.artifacts import download_artifacts

        tmp = folder.with_name(f".{folder.name}-{os.getpid()}")
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir(parents=True)
        local = Path(download_artifacts(artifact_uri=mv.source, dst_path=str(tmp), tracking_uri=registry_uri(tracking)))
        if not (local / META_FILE).is_file():
            raise TrackingError(f"{uri}: version {mv.version}'s files ({mv.source}) are not a kosent checkpoint")
        shutil.rmtree(folder, ignore_errors=True)
        folder.parent.mkdir(parents=True, exist_ok=True)
        local.rename(folder)
        shutil.rmtree(tmp, ignore_errors=True)
    return {"checkpoint": str(folder), "model_uri": str(uri), "name": mv.name, "version": str(mv.version),
            "run_id": mv.run_id, "source": mv.source}


__all__ = [
    "OFF", "MANIFEST_KEY", "Run", "TrackingError", "config_params", "finish_sweep", "git_commit", "history_metrics",
    "is_registry_uri", "manifest_lineage", "model_version", "register", "registry_uri", "resolve_registered_model", "safely",
    "start_run", "track_records", "track_trials", "tracked", "tracking_uri", "trial_fingerprint",
]
