"""Autoscaling that sees refused load: Serve's request-based policy, raised to what the offered texts need.

Serve's default policy scales on ongoing requests. Admission (``kosent.serve.batching``) answers the
requests it refuses within milliseconds, so they barely count as ongoing: with a short deadline a
replica refusing four fifths of its load can look as busy as one that is merely full. Each replica
therefore reports, through Serve's public custom-metrics hook (``record_autoscaling_stats``), the texts
offered to it per second (admitted or refused) and its measured capacity in texts per second; this
policy asks for at least ``offered / capacity`` replicas, and otherwise decides as Serve's own policy does.
Serve applies ``min_replicas``/``max_replicas``, the up/down-scale delays and the scaling factors around it.
"""

from __future__ import annotations

import statistics
from typing import Any

from ray.serve.autoscaling_policy import replica_queue_length_autoscaling_policy
from ray.serve.config import AutoscalingContext

#: Metric names a replica reports (``KosentServer.record_autoscaling_stats``).
OFFERED_METRIC = "offered_texts_per_s"
CAPACITY_METRIC = "capacity_texts_per_s"
#: Offered load may exceed the replicas' capacity by this factor before it asks for one more (a replica at
#: exactly its capacity is busy, not short; measurement noise should not add a replica).
DEMAND_SLACK = 1.1
#: The import path Serve is given (``AutoscalingPolicy(policy_function=...)``).
POLICY_PATH = "kosent.serve.autoscaling:demand_policy"


def replicas_for_demand(offered: dict[Any, float], capacity: dict[Any, float]) -> float:
    """Replicas the offered texts/s need at the replicas' mean measured capacity (0 without measurements)."""
    caps = [c for c in capacity.values() if c and c > 0]
    total = sum(v for v in offered.values() if v and v > 0)
    if not caps or total <= 0:
        return 0.0
    return total / (statistics.fmean(caps) * DEMAND_SLACK)


def demand_policy(ctx: AutoscalingContext) -> tuple[float, dict[str, Any]]:
    """Serve's request-based decision, or more replicas when the offered texts need them."""
    desired, state = replica_queue_length_autoscaling_policy(ctx)
    metrics = ctx.aggregated_metrics or {}
    need = replicas_for_demand(metrics.get(OFFERED_METRIC, {}), metrics.get(CAPACITY_METRIC, {}))
    return max(desired, need), state
