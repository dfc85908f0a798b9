"""The Serve application's contact points with Ray: fail here, loudly, when a Ray upgrade breaks one.

- the one private API patched (``kosent/serve/ray_compat.py``): the replica's gRPC server address;
- the public APIs the application relies on: the custom autoscaling metrics hook and policy, the
  request-based default policy, ``get_replica_context``, ``@serve.multiplexed``.
"""

from __future__ import annotations

import importlib
import inspect

import ray
from ray import serve

from kosent.serve import ray_compat
from kosent.serve.autoscaling import POLICY_PATH, demand_policy


def test_ray_is_the_version_the_workaround_was_written_for():
    # A new Ray may have fixed the bind address (drop the patch) or moved it (fix the patch): look again.
    assert ray.__version__ == "2.60.0", "re-check kosent/serve/ray_compat.py against this Ray"


def test_the_patched_function_exists_and_the_replica_binds_all_interfaces_through_it():
    module = importlib.import_module(ray_compat.PATCHED_MODULE)
    target = getattr(module, ray_compat.PATCHED_FUNCTION)
    assert callable(target)
    assert list(inspect.signature(target).parameters)[:2] == ["server", "address"]
    source = inspect.getsource(module)
    assert f'{ray_compat.PATCHED_FUNCTION}(self._server, "[::]:0")' in source, (
        "the replica no longer binds its gRPC server through this call: the patch would do nothing")


def test_the_patch_rewrites_only_the_all_interfaces_address(monkeypatch):
    module = importlib.import_module(ray_compat.PATCHED_MODULE)
    seen: list[str] = []

    def original(server, address):  # stands in for grpc's add_insecure_port
        seen.append(address)
        return 1234

    monkeypatch.setattr(module, ray_compat.PATCHED_FUNCTION, original)
    monkeypatch.setattr(ray.util, "get_node_ip_address", lambda: "127.0.0.1")
    ray_compat.keep_replica_grpc_on_node_ip()
    patched = getattr(module, ray_compat.PATCHED_FUNCTION)
    assert patched(None, "[::]:0") == 1234 and patched(None, "10.0.0.1:5") == 1234
    assert seen == ["127.0.0.1:0", "10.0.0.1:5"]
    ray_compat.keep_replica_grpc_on_node_ip()  # idempotent: patched once
    assert getattr(module, ray_compat.PATCHED_FUNCTION) is patched


def test_public_apis_the_application_uses_exist():
    from ray.serve.autoscaling_policy import replica_queue_length_autoscaling_policy
    from ray.serve.config import AutoscalingConfig, AutoscalingContext, AutoscalingPolicy

    assert callable(replica_queue_length_autoscaling_policy)
    assert "aggregated_metrics" in dir(AutoscalingContext)
    config = AutoscalingConfig(min_replicas=1, max_replicas=2, policy=AutoscalingPolicy(policy_function=POLICY_PATH))
    assert config.policy.get_policy().__qualname__ == demand_policy.__qualname__  # cloudpickled by Serve
    assert callable(serve.get_replica_context) and callable(serve.multiplexed)
    replica_source = inspect.getsource(importlib.import_module("ray.serve._private.replica"))
    assert '"record_autoscaling_stats"' in replica_source, "Serve no longer calls record_autoscaling_stats"
