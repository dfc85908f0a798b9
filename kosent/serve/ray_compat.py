"""The one place kosent touches a private Ray Serve API, because no public one exists for it.

Serve 2.60 starts an inter-deployment gRPC server in every replica on ``[::]:0`` (all interfaces), even
though it is only used with ``RAY_SERVE_USE_GRPC_BY_DEFAULT=1``, and offers no setting for its address.
:func:`keep_replica_grpc_on_node_ip` rebinds it to the node's Ray address. ``tests/code/test_serve_ray_compat.py``
fails when a Ray upgrade moves or renames what it patches, and ``tests/integration/test_serve.py`` checks
that every socket a replica listens on is loopback.
"""

from __future__ import annotations

import importlib
import logging
from typing import Any

logger = logging.getLogger(__name__)

#: What is patched: ``ray.serve._private.replica.add_port_to_grpc_server(server, address) -> port``.
PATCHED_MODULE = "ray.serve._private.replica"
PATCHED_FUNCTION = "add_port_to_grpc_server"


def keep_replica_grpc_on_node_ip() -> None:
    """Serve 2.60 starts an inter-deployment gRPC server in every replica on ``[::]:0``: every interface, even
    though it is only used with ``RAY_SERVE_USE_GRPC_BY_DEFAULT=1``. Bind it to this node's Ray address
    instead (127.0.0.1 on a loopback-only cluster), like Ray's own worker ports. Called in the replica's
    constructor, which Serve runs before it starts that server; a Ray without the hook is left alone."""
    import ray

    replica_module = importlib.import_module(PATCHED_MODULE)
    original = getattr(replica_module, PATCHED_FUNCTION, None)
    if original is None:
        logger.warning(f"{PATCHED_MODULE}.{PATCHED_FUNCTION} is gone (Ray upgraded?): the replica's gRPC server "
                       "keeps Serve's own address; see kosent/serve/ray_compat.py")
        return
    if getattr(original, "kosent_node_ip", False):
        return
    host = ray.util.get_node_ip_address()
    host = f"[{host}]" if ":" in host else host

    def bind_node_ip(server: Any, address: str) -> int:
        if address.startswith("[::]:"):
            address = f"{host}:{address[len('[::]:'):]}"
        return original(server, address)

    bind_node_ip.kosent_node_ip = True
    setattr(replica_module, PATCHED_FUNCTION, bind_node_ip)
