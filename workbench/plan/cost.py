"""Cost: GPU-seconds x price, provisioned capacity at a utilization, simulator output, routing.

monthly cost = requests/month x tokens/request x GPU-seconds/token x $/GPU-hour / 3600
(10M requests x 500 tokens x 0.001 s x $2/h = $2,777.78).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from workbench.plan.names import check_non_negative, check_positive

HOURS_PER_MONTH = 730.0  # 8,760 h / 12, the convention of cloud price sheets
# Target average busy share of always-on capacity: the headroom kept for bursts and for rate
# forecasts that run short. One default for the calculator, `plan cost` and `plan capacity`.
DEFAULT_UTILIZATION = 0.7


def monthly_cost(requests_per_month: float, tokens_per_request: float,
                 gpu_seconds_per_token: float, price_per_gpu_hour: float) -> float:
    """Dollars per month when every GPU-second is busy (pay only for work done)."""
    check_non_negative(requests_per_month=requests_per_month,
                       tokens_per_request=tokens_per_request,
                       gpu_seconds_per_token=gpu_seconds_per_token,
                       price_per_gpu_hour=price_per_gpu_hour)
    return (requests_per_month * tokens_per_request * gpu_seconds_per_token
            * price_per_gpu_hour / 3600)


def gpu_seconds_per_token(tokens_per_s_per_gpu: float) -> float:
    """The reciprocal of a measured or roofline per-GPU throughput."""
    check_positive(tokens_per_s_per_gpu=tokens_per_s_per_gpu)
    return 1.0 / tokens_per_s_per_gpu


def cost_per_million_tokens(gpu_seconds_per_token: float, price_per_gpu_hour: float,
                            utilization: float = 1.0) -> float:
    """$ per 1M tokens; idle capacity (utilization < 1) is paid for too."""
    check_non_negative(gpu_seconds_per_token=gpu_seconds_per_token,
                       price_per_gpu_hour=price_per_gpu_hour)
    _check_utilization(utilization)
    return 1e6 * gpu_seconds_per_token * price_per_gpu_hour / 3600 / utilization


def _check_utilization(utilization: float) -> None:
    if not 0 < utilization <= 1:
        raise ValueError(f"utilization: must be in (0, 1], got {utilization}")


def replicas_needed(demand: float, capacity_per_replica: float,
                    utilization: float = DEFAULT_UTILIZATION) -> int:
    """ceil(demand / (one replica's capacity x target utilization)), at least one.

    Any consistent units: requests/s against requests/s per replica, or busy GPU-hours
    against hours per GPU. The one place replicas (or always-on GPUs) are counted."""
    check_non_negative(demand=demand)
    check_positive(capacity_per_replica=capacity_per_replica)
    _check_utilization(utilization)
    # The epsilon keeps float noise in an exact ratio (2.0000000001) from buying a replica.
    return max(1, math.ceil(demand / (capacity_per_replica * utilization) - 1e-9))


@dataclass(frozen=True, slots=True)
class ProvisionedCost:
    busy_gpu_hours: float       # work to do
    gpus: int                   # whole GPUs kept running all month at the target utilization
    monthly_cost: float         # gpus x hours x price
    cost_at_full_use: float     # the pay-per-work figure, for comparison
    utilization: float


def provisioned_cost(requests_per_month: float, tokens_per_request: float,
                     gpu_seconds_per_token: float, price_per_gpu_hour: float,
                     utilization: float = DEFAULT_UTILIZATION,
                     hours_per_month: float = HOURS_PER_MONTH
                     ) -> ProvisionedCost:
    """Cost of always-on GPUs sized so average busy share = `utilization`."""
    _check_utilization(utilization)
    check_positive(hours_per_month=hours_per_month)
    full = monthly_cost(requests_per_month, tokens_per_request, gpu_seconds_per_token,
                        price_per_gpu_hour)
    busy_hours = requests_per_month * tokens_per_request * gpu_seconds_per_token / 3600
    gpus = replicas_needed(busy_hours, hours_per_month, utilization)
    return ProvisionedCost(busy_hours, gpus, gpus * hours_per_month * price_per_gpu_hour, full,
                           utilization)


def cost_from_simulation(replicas: int, gpus_per_replica: int, hours: float,
                         price_per_gpu_hour: float) -> float:
    """What a simulated deployment costs: replicas x GPUs each x hours x price."""
    check_positive(replicas=replicas, gpus_per_replica=gpus_per_replica)
    check_non_negative(hours=hours, price_per_gpu_hour=price_per_gpu_hour)
    return replicas * gpus_per_replica * hours * price_per_gpu_hour


@dataclass(frozen=True, slots=True)
class Route:
    name: str
    share: float               # fraction of requests sent to this model
    cost_per_request: float    # $
    quality: str               # a label: e.g. "basic", "good", "best"


@dataclass(frozen=True, slots=True)
class RoutingCost:
    cost_per_request: float
    monthly_cost: float
    share_by_quality: dict[str, float]
    savings_vs: dict[str, float]   # blended vs sending everything to each model, as a fraction


def routing_cost(routes: list[Route], requests_per_month: float = 0.0) -> RoutingCost:
    """Blended cost per request of a traffic split across small / medium / large models."""
    if not routes:
        raise ValueError("routes: need at least one model")
    check_non_negative(requests_per_month=requests_per_month)
    for r in routes:
        check_non_negative(**{f"routes.{r.name}.share": r.share,
                              f"routes.{r.name}.cost_per_request": r.cost_per_request})
    total = sum(r.share for r in routes)
    if abs(total - 1) > 1e-6:
        raise ValueError(f"routes.share: must sum to 1, got {total:g}")
    blended = sum(r.share * r.cost_per_request for r in routes)
    quality: dict[str, float] = {}
    for r in routes:
        quality[r.quality] = quality.get(r.quality, 0.0) + r.share
    savings = {r.name: (1 - blended / r.cost_per_request) if r.cost_per_request else 0.0
               for r in routes}
    return RoutingCost(blended, blended * requests_per_month, quality, savings)
