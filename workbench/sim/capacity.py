"""Capacity search on the simulator: the fewest replicas that meet the SLOs at a rate, and the
highest rate a configuration sustains.

Both searches assume monotonicity (more replicas never hurt, more load never helps), exponential
then binary search; `brute_force_min_replicas` checks that assumption on small cases.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from workbench.plan.cost import HOURS_PER_MONTH
from workbench.sim.simulator import simulate_requests
from workbench.traffic.metrics import meets_slos
from workbench.traffic.sweep import with_rate


@dataclass(slots=True)
class Evaluation:
    replicas: int
    rate: float | None
    met: bool
    percentiles: dict  # metric -> value at the scenario's SLO percentile
    goodput: float


def evaluate(scenario, fit, replicas: int, lb: str = "least-outstanding",
             rate: float | None = None) -> Evaluation:
    sc = with_rate(scenario, rate) if rate is not None else scenario
    requests, _, _, _ = simulate_requests(sc, fit, replicas, lb)
    q = sc.slo.percentile
    ok = requests["finish_reason"].isin(["stop", "length"])
    pct = {m: float(np.percentile(requests.loc[ok, m].dropna(), q))
           if requests.loc[ok, m].notna().any() else 0.0 for m in sc.slos}
    met = bool(ok.all()) and all(pct[m] <= limit for m, limit in sc.slos.items())
    span = requests["finish"].max() - requests["arrival"].min()
    goodput = float(meets_slos(requests, sc.slos).sum() / span) if span > 0 else 0.0
    return Evaluation(replicas, rate, met, pct, goodput)


def _require_slos(scenario) -> None:
    if not scenario.slos:
        raise ValueError("slo: capacity search needs at least one of ttft_s, tpot_s, e2e_s")


def min_replicas(scenario, fit, lb: str = "least-outstanding", max_replicas: int = 64,
                 rate: float | None = None) -> tuple[int | None, list[Evaluation]]:
    """Fewest replicas meeting every SLO (None if even max_replicas do not)."""
    _require_slos(scenario)
    tried: dict[int, Evaluation] = {}

    def ok(n: int) -> bool:
        if n not in tried:
            tried[n] = evaluate(scenario, fit, n, lb, rate)
        return tried[n].met

    hi = 1
    while not ok(hi):
        if hi >= max_replicas:
            return None, sorted(tried.values(), key=lambda e: e.replicas)
        hi = min(hi * 2, max_replicas)
    lo = hi // 2 + 1 if hi > 1 else 1
    while lo < hi:
        mid = (lo + hi) // 2
        if ok(mid):
            hi = mid
        else:
            lo = mid + 1
    return hi, sorted(tried.values(), key=lambda e: e.replicas)


def brute_force_min_replicas(scenario, fit, lb: str = "least-outstanding",
                             max_replicas: int = 8, rate: float | None = None) -> int | None:
    for n in range(1, max_replicas + 1):
        if evaluate(scenario, fit, n, lb, rate).met:
            return n
    return None


def max_rate(scenario, fit, replicas: int = 1, lb: str = "least-outstanding",
             start: float = 1.0, rel_tol: float = 0.05,
             max_doublings: int = 16) -> tuple[float, list[Evaluation]]:
    """Highest request rate (to rel_tol) at which the configuration meets every SLO."""
    _require_slos(scenario)
    curve: list[Evaluation] = []

    def ok(rate: float) -> bool:
        curve.append(evaluate(scenario, fit, replicas, lb, rate))
        return curve[-1].met

    lo, hi = 0.0, start
    for _ in range(max_doublings):
        if not ok(hi):
            break
        lo, hi = hi, hi * 2
    else:
        return lo, curve
    while hi - lo > rel_tol * hi:
        mid = (lo + hi) / 2
        if ok(mid):
            lo = mid
        else:
            hi = mid
    return lo, sorted(curve, key=lambda e: e.rate)


def cheapest_configuration(scenario, arch, hardware: list, precision: str = "bf16",
                           tp: int = 1, lb: str = "least-outstanding", max_replicas: int = 64,
                           efficiency=None, step_overhead_s: float = 0.002) -> list[dict]:
    """For each hardware candidate: a roofline step model (an extrapolation), the fewest
    replicas meeting the SLOs, and the hourly / monthly cost; cheapest first. Candidates the
    model does not fit on come back with the reason instead of a count."""
    from workbench.plan.budget import ModelDoesNotFitError
    from workbench.plan.cost import cost_from_simulation
    from workbench.plan.roofline import DEFAULT_EFFICIENCY
    from workbench.sim.roofline_model import RooflineStepModel

    rows = []
    for hw in hardware:
        row = {"hardware": hw.name, "precision": precision, "tp": tp,
               "price_per_gpu_hour": hw.price_per_hour}
        try:
            model = RooflineStepModel(arch, hw, precision, tp=tp,
                                      efficiency=efficiency or DEFAULT_EFFICIENCY,
                                      step_overhead_s=step_overhead_s)
        except ModelDoesNotFitError as e:
            rows.append(row | {"replicas": None, "why": str(e)})
            continue
        n, tried = min_replicas(scenario, model, lb, max_replicas)
        row["replicas"] = n
        if n is None:
            row["why"] = f"SLOs missed even with {max_replicas} replicas"
        else:
            hourly = cost_from_simulation(n, tp, 1.0, hw.price_per_hour)
            row |= {"cost_per_hour": hourly, "cost_per_month": hourly * HOURS_PER_MONTH,
                    "percentiles": tried[[e.replicas for e in tried].index(n)].percentiles}
        rows.append(row)
    return sorted(rows, key=lambda r: r.get("cost_per_hour", float("inf")))

