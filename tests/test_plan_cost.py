"""Cost formulas, pinned with worked numbers."""

from __future__ import annotations

import math

import pytest

from workbench.plan.cost import (
    HOURS_PER_MONTH,
    Route,
    cost_from_simulation,
    cost_per_million_tokens,
    gpu_seconds_per_token,
    monthly_cost,
    provisioned_cost,
    routing_cost,
)


def test_monthly_cost_worked_example():
    # 10M requests x 500 tokens x 0.001 GPU-s/token = 5M GPU-s = 1,388.9 GPU-h at $2/h.
    cost = monthly_cost(10_000_000, 500, 0.001, 2.0)
    assert cost == pytest.approx(5_000_000 / 3600 * 2)
    assert round(cost) == 2778


def test_cost_per_million_tokens_and_utilization():
    # 1M tokens x 1 ms = 1,000 GPU-s = 0.2778 h at $2/h = $0.556.
    assert cost_per_million_tokens(0.001, 2.0) == pytest.approx(1000 / 3600 * 2)
    assert cost_per_million_tokens(0.001, 2.0, utilization=0.5) == pytest.approx(
        2 * cost_per_million_tokens(0.001, 2.0))
    assert gpu_seconds_per_token(2000.0) == 0.0005


def test_provisioned_cost_rounds_up_to_whole_gpus():
    p = provisioned_cost(10_000_000, 500, 0.001, 2.0, utilization=0.6)
    busy = 5_000_000 / 3600
    assert p.busy_gpu_hours == pytest.approx(busy)
    assert p.gpus == math.ceil(busy / (HOURS_PER_MONTH * 0.6))
    assert p.monthly_cost == pytest.approx(p.gpus * HOURS_PER_MONTH * 2.0)
    assert p.monthly_cost >= p.cost_at_full_use / 0.6


def test_cost_from_simulation_output():
    # 3 replicas of 2 GPUs for a 730-hour month at $3/GPU-h.
    assert cost_from_simulation(3, 2, 730, 3.0) == pytest.approx(3 * 2 * 730 * 3.0)


def test_routing_blended_cost():
    routes = [Route("small", 0.7, 0.0002, "basic"), Route("medium", 0.2, 0.001, "good"),
              Route("large", 0.1, 0.01, "best")]
    r = routing_cost(routes, requests_per_month=1_000_000)
    blended = 0.7 * 0.0002 + 0.2 * 0.001 + 0.1 * 0.01
    assert r.cost_per_request == pytest.approx(blended)
    assert r.monthly_cost == pytest.approx(blended * 1e6)
    assert r.share_by_quality == {"basic": 0.7, "good": 0.2, "best": 0.1}
    assert r.savings_vs["large"] == pytest.approx(1 - blended / 0.01)
    with pytest.raises(ValueError, match="routes.share: must sum to 1"):
        routing_cost(routes[:2])


@pytest.mark.parametrize("call,field", [
    (lambda: monthly_cost(-1, 500, 0.001, 2), "requests_per_month"),
    (lambda: monthly_cost(1, 500, 0.001, -2), "price_per_gpu_hour"),
    (lambda: cost_per_million_tokens(0.001, 2, utilization=0), "utilization"),
    (lambda: gpu_seconds_per_token(0), "tokens_per_s_per_gpu"),
    (lambda: cost_from_simulation(0, 1, 1, 1), "replicas"),
    (lambda: routing_cost([Route("a", 1.0, -1.0, "x")]), "routes.a.cost_per_request"),
])
def test_negative_rates_and_prices_are_rejected_by_name(call, field):
    with pytest.raises(ValueError, match=rf"^{field}: must be"):
        call()
