"""Simulated capacity search: the fewest replicas that meet the SLOs at a rate, and the highest
rate a configuration sustains, by running the simulator (workbench.plan.capacity_analytic is
the closed-form estimate the calculator shows; this checks it with queueing and percentiles).

Both searches assume monotonicity (more replicas never hurt, more load never helps), exponential
then binary search; `brute_force_min_replicas` checks that assumption on small cases. Before any
simulation, `slo_floor` checks the SLOs against each request served alone: when even that
misses, no rate and no replica count helps, and the search stops at once with the reason.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from workbench.plan.cost import DEFAULT_UTILIZATION, HOURS_PER_MONTH
from workbench.plan.step_cost import Batch
from workbench.sim.simulator import simulate_requests
from workbench.traffic.metrics import COMPLETED, goodput, slo_percentiles
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
    # What a client sees: the server's times plus its HTTP + tokenization latency (a model of
    # other hardware carries one; a fit of the engine at hand measured it in-process).
    client = client_latency_s(fit)
    requests = requests.assign(ttft=requests["ttft"] + client, e2e=requests["e2e"] + client)
    pct = slo_percentiles(requests, sc.slos, sc.slo.percentile)
    # NaN: no completed request has the metric. Only TPOT may be absent (one-token outputs
    # have none and pass its SLO, as in meets_slos); any other NaN misses.
    met = bool(requests["finish_reason"].isin(COMPLETED).all()) and all(
        pct[m] <= limit or (m == "tpot" and math.isnan(pct[m])) for m, limit in sc.slos.items())
    span = float(requests["finish"].max() - requests["arrival"].min())
    return Evaluation(replicas, rate, met, pct, goodput(requests, sc.slos, span) if span > 0
                      else 0.0)


def _require_slos(scenario) -> None:
    if not scenario.slos:
        raise ValueError("slo: capacity search needs at least one of ttft_s, tpot_s, e2e_s")


def _engine_config(scenario):
    from workbench.engine.config import EngineConfig

    return EngineConfig.from_dict(dict(getattr(scenario.target, "engine", None) or {}))


def request_floors(scenario, fit) -> dict[str, np.ndarray]:
    """Each request's TTFT, TPOT and E2E if it were served alone: its prompt in chunks of the
    token budget, then batch-1 decodes. Load only adds to these (queueing, bigger steps), so
    their percentiles bound what any rate or replica count can achieve from below."""
    from workbench.traffic.workload import build_requests

    cfg = _engine_config(scenario)
    chunk = cfg.max_num_batched_tokens if cfg.enable_chunked_prefill else None
    gap = fit.inter_step_gap_s
    specs = build_requests(scenario, fit.model["vocab_size"])
    ttft, tpot = [], []
    for spec in specs:
        n, start, t = len(spec.prompt_token_ids), 0, 0.0
        while start < n:
            k = n - start if chunk is None else min(chunk, n - start)
            t += gap + fit.predict_record(Batch(
                num_prefill_tokens=k, num_prefill_seqs=1,
                prefill_attention=k * start + k * (k + 1) // 2))
            start += k
        ttft.append(t)
        mid = n + spec.max_tokens // 2
        tpot.append(gap + fit.predict_record(Batch.decode(1, mid)))
    ttft_a, tpot_a = np.array(ttft) + client_latency_s(fit), np.array(tpot)
    outs = np.array([s.max_tokens for s in specs])
    e2e = ttft_a + (outs - 1) * tpot_a
    # TPOT is defined for more than one output token only (traffic.metrics).
    return {"ttft": ttft_a, "tpot": np.where(outs > 1, tpot_a, np.nan), "e2e": e2e}


def client_latency_s(step_model) -> float:
    """The client's HTTP + tokenization latency a step model carries (0 for a fit)."""
    efficiency = getattr(step_model, "efficiency", None)
    return efficiency.client_s if efficiency is not None else 0.0


def slo_floor(scenario, fit) -> str | None:
    """Why no rate can meet the SLOs (a sentence naming the SLO and the floor), or None."""
    _require_slos(scenario)
    floors, q = request_floors(scenario, fit), scenario.slo.percentile
    why = {"ttft": "its prompt's prefill alone", "tpot": "a batch-1 decode step",
           "e2e": "prefill plus batch-1 decodes"}
    for metric, limit in scenario.slos.items():
        values = floors[metric][~np.isnan(floors[metric])]
        floor = float(np.percentile(values, q)) if values.size else 0.0
        if floor > limit:
            return (f"no rate meets the SLOs: even a request served alone has {metric} "
                    f"p{q:g} {floor * 1e3:.1f} ms ({why[metric]}) > the {limit * 1e3:g} ms "
                    "SLO; a faster GPU, lower precision or more GPUs per replica would help, "
                    "more replicas would not")
    return None


def missed_slos(evaluation: Evaluation, scenario) -> str:
    """'tpot p90 61.2 ms > 50 ms, ...': which SLOs an evaluation missed and by how much."""
    q = scenario.slo.percentile
    parts = [f"{m} p{q:g} {evaluation.percentiles[m] * 1e3:.1f} ms > {limit * 1e3:g} ms"
             for m, limit in scenario.slos.items() if evaluation.percentiles[m] > limit]
    return ", ".join(parts) or "some requests did not finish"


def no_rate_met(rate: float, curve: list[Evaluation], scenario) -> str | None:
    """Why max_rate found no rate (a sentence naming the lowest rate tried and the SLOs it
    missed), or None when it found one or simulated nothing (then slo_floor says why)."""
    if rate > 0 or not curve:
        return None
    lowest = min(curve, key=lambda e: e.rate)
    return (f"no rate down to {lowest.rate:.3g} req/s meets the SLOs: at that rate "
            f"{missed_slos(lowest, scenario)}")


def min_replicas(scenario, fit, lb: str = "least-outstanding", max_replicas: int = 64,
                 rate: float | None = None) -> tuple[int | None, list[Evaluation]]:
    """Fewest replicas meeting every SLO (None if even max_replicas do not, or if slo_floor
    says none can: then nothing is simulated)."""
    _require_slos(scenario)
    tried: dict[int, Evaluation] = {}
    if slo_floor(scenario, fit):
        return None, []

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
             start: float = 1.0, rel_tol: float = 0.05, max_doublings: int = 16,
             max_halvings: int = 10) -> tuple[float, list[Evaluation]]:
    """Highest request rate (to rel_tol) at which the configuration meets every SLO; 0.0 when
    none does: slo_floor says why when even a request alone misses (then nothing is
    simulated), no_rate_met when every halving of `start` missed. At most max_doublings +
    max_halvings + log2(1 / rel_tol) + 1 simulations."""
    _require_slos(scenario)
    if slo_floor(scenario, fit):
        return 0.0, []
    curve: list[Evaluation] = []

    def ok(rate: float) -> bool:
        curve.append(evaluate(scenario, fit, replicas, lb, rate))
        return curve[-1].met

    lo, hi = 0.0, start
    if ok(hi):
        for _ in range(max_doublings):
            lo, hi = hi, hi * 2
            if not ok(hi):
                break
        else:
            return lo, sorted(curve, key=lambda e: e.rate)
    else:
        # Below the start: halve until a rate meets the SLOs. Without this `lo` stayed 0 and
        # the bisection below never reached its tolerance (~1,000 simulations, then a crash).
        for _ in range(max_halvings):
            if ok(hi / 2):
                lo = hi / 2
                break
            hi /= 2
        else:
            return 0.0, sorted(curve, key=lambda e: e.rate)
    while hi - lo > rel_tol * hi:
        mid = (lo + hi) / 2
        if ok(mid):
            lo = mid
        else:
            hi = mid
    return lo, sorted(curve, key=lambda e: e.rate)


def scenario_context(scenario, vocab_size: int) -> int:
    """The longest request the scenario sends (prompt + output), or the engine's max_model_len
    when set: what one sequence must fit, instead of the model's full trained context."""
    from workbench.traffic.workload import build_requests

    cfg = _engine_config(scenario)
    if cfg.max_model_len:
        return cfg.max_model_len
    specs = build_requests(scenario, vocab_size)
    return max(len(s.prompt_token_ids) + s.max_tokens for s in specs)


def cheapest_configuration(scenario, arch, hardware: list, precision: str = "bf16",
                           tp: int | None = None, lb: str = "least-outstanding",
                           max_replicas: int = 64, efficiency=None,
                           step_overhead_s: float | None = None,
                           utilization: float = DEFAULT_UTILIZATION) -> list[dict]:
    """For each hardware candidate: GPUs per replica (given, or chosen by the analytic
    auto_tp as the calculator does), a roofline step model (an extrapolation), the fewest
    replicas meeting the SLOs at rate / utilization (the same headroom the calculator keeps),
    and the hourly / monthly cost; cheapest first. A candidate that cannot serve (the model
    does not fit one request of the scenario's longest context, no tensor cores for the
    precision, SLOs out of reach) comes back with the reason instead of a count."""
    from workbench.plan.capacity_analytic import auto_tp, setup_for
    from workbench.plan.cost import cost_from_simulation, replicas_needed
    from workbench.sim.roofline_model import RooflineStepModel
    from workbench.traffic.workload import build_requests

    _require_slos(scenario)
    replicas_needed(1.0, 1.0, utilization)       # checks the utilization, naming it
    rate = getattr(scenario.arrival, "rate", None)
    if rate is None:
        raise ValueError("arrival.kind: capacity across hardware needs a rate (constant, "
                         f"poisson or gamma), got {scenario.arrival.kind!r}")
    # The traffic every candidate is simulated with; its requests (drawn once more at this
    # rate when the scenario runs for a duration) size the context and the analytic TP choice.
    sized = with_rate(scenario, rate / utilization)
    specs = build_requests(sized, arch.vocab_size)
    context = scenario_context(sized, arch.vocab_size)
    prompt = round(float(np.mean([len(s.prompt_token_ids) for s in specs])))
    output = round(float(np.mean([s.max_tokens for s in specs])))
    cfg = _engine_config(scenario)
    rows = []
    from workbench.plan.step_params import error_band, on_hardware

    band = error_band().summary()
    for hw in hardware:
        row = {"hardware": hw.name, "precision": precision, "tp": tp,
               "price_per_gpu_hour": hw.price_per_hour, "context": context,
               "error_band": band}
        # A calibration's shares of peak, this GPU's own fixed costs.
        hw_efficiency = on_hardware(efficiency, hw)
        try:
            size, row["tp_reason"] = (tp, "given") if tp else auto_tp(
                setup_for(arch, hw, precision, prompt, output, efficiency=hw_efficiency,
                          overhead_s=step_overhead_s, max_num_seqs=cfg.max_num_seqs,
                          max_num_batched_tokens=cfg.max_num_batched_tokens),
                context, scenario.slos.get("tpot", float("inf")), rate, utilization)
            row["tp"] = size
            model = RooflineStepModel(arch, hw, precision, tp=size, efficiency=hw_efficiency,
                                      step_overhead_s=step_overhead_s, context=context)
        except ValueError as e:   # does not fit, or no tensor cores for the precision
            rows.append(row | {"replicas": None, "why": str(e)})
            continue
        floor = slo_floor(sized, model)
        if floor:
            rows.append(row | {"replicas": None, "why": floor})
            continue
        n, tried = min_replicas(sized, model, lb, max_replicas)
        row["replicas"] = n
        if n is None:
            row["why"] = (f"SLOs missed even with {max_replicas} replicas at "
                          f"{rate / utilization:g} req/s ({rate:g} / utilization "
                          f"{utilization:g}): {missed_slos(tried[-1], scenario)}; the rate "
                          "needs more replicas than --max-replicas allows")
        else:
            hourly = cost_from_simulation(n, size, 1.0, hw.price_per_hour)
            pct = tried[[e.replicas for e in tried].index(n)].percentiles
            row |= {"gpus": n * size, "cost_per_hour": hourly,
                    "cost_per_month": hourly * HOURS_PER_MONTH, "percentiles": pct}
            note = _transient_note(specs, output, pct)
            if note:
                row["note"] = note
        rows.append(row)
    return sorted(rows, key=lambda r: r.get("cost_per_hour", float("inf")))


def _transient_note(specs, output_tokens: int, percentiles: dict) -> str | None:
    """A warning when the arrivals end before the replicas fill: the calculator's steady
    state (and a real day of traffic) is never reached, so the count may be optimistic."""
    arrivals = [s.arrival_s for s in specs if s.arrival_s is not None]
    if "tpot" not in percentiles or len(arrivals) < 2:
        return None
    life = percentiles.get("ttft", 0.0) + (output_tokens - 1) * percentiles["tpot"]
    span = max(arrivals) - min(arrivals)
    if span >= 2 * life:
        return None
    return (f"arrivals span {span:.0f} s, under two request lifetimes ({life:.0f} s each): "
            "the replicas never reach steady state, so this count may be optimistic; raise "
            "num_requests")
