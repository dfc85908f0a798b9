"""The Ray Serve application, installed with kosent: ``serve run kosent.serve:app_builder manifest=...``.

- :mod:`kosent.serve.settings`: ``ServeArgs`` (every setting), the hot-swappable model set, resolving sources
- :mod:`kosent.serve.parsing`: the request body and headers -> texts, model, deadline, or an ``ApiError``
- :mod:`kosent.serve.batching`: the replica's text queue, forward loop and deadline-aware admission
- :mod:`kosent.serve.autoscaling`: the policy that scales on offered load, refused requests included
- :mod:`kosent.serve.models`, :mod:`kosent.serve.page` (``page.html``), :mod:`kosent.serve.ray_compat`
- :mod:`kosent.serve.deployment`: ``KosentServer`` and ``build`` / ``app_builder``

Importing this package sets what must be set before Ray starts in this process (no usage reports, a
cluster started here stays on loopback); ``settings`` and ``parsing`` import no Ray at all.
"""

import os

# Before Ray is imported: no usage reports, and a cluster started from this process stays on loopback
# (a no-op when the caller already set them, or when Ray already runs, as in Serve's replicas).
for _key, _value in (("RAY_USAGE_STATS_ENABLED", "0"), ("HF_HUB_OFFLINE", "1"), ("TOKENIZERS_PARALLELISM", "false")):
    os.environ.setdefault(_key, _value)
if not (os.environ.get("RAY_ADDRESS") or os.environ.get("KOSENT_JOIN_CLUSTER")):
    os.environ.setdefault("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")

from kosent.serve.deployment import KosentServer, app_builder, build  # noqa: E402
from kosent.serve.settings import ServeArgs, ServingConfig, resolve_models, resolve_source, serving_config  # noqa: E402

__all__ = ["KosentServer", "ServeArgs", "ServingConfig", "app_builder", "build", "resolve_models", "resolve_source",
           "serving_config"]
