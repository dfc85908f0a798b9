"""Kept for old import paths (``serve.app:app_builder``): the application lives in :mod:`kosent.serve`,
which installs with kosent. New configs use ``import_path: kosent.serve:app_builder``."""

from kosent.serve import (
           KosentServer,
           ServeArgs,
           ServingConfig,
           app_builder,
           build,
           resolve_models,
           resolve_source,
)
from kosent.serve.ray_compat import keep_replica_grpc_on_node_ip
from kosent.serve.settings import _read_manifest, serving_config

__all__ = ["KosentServer", "ServeArgs", "ServingConfig", "_read_manifest", "app_builder", "build",
           "keep_replica_grpc_on_node_ip", "resolve_models", "resolve_source", "serving_config"]
