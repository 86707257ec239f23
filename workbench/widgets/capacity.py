"""Capacity and cost of serving one model at a request rate, as pure functions over
workbench.plan: memory per GPU, the batch that meets a TPOT SLO, replicas, $ per month and
$ per 1M tokens. The calculator widget and notebook 05 only display what these return.

The serving model is continuous batching in steady state. `batch` sequences decode one token
per step; a sequence lives `output_tokens` steps, so batch / output_tokens requests finish and
as many join per step, each bringing a prefill of `prompt_tokens`. One step cycle therefore
lasts

    T(batch) = decode_step(batch).time_s + batch / output_tokens * prefill_step(prompt).time_s

which is the time per output token a request sees, and a replica completes
batch / (output_tokens * T) requests per second. Adding the two step times is conservative:
chunked prefill overlaps part of the prefill's compute with the decode's weight reads.
The operating batch is the largest one whose T meets the TPOT SLO and whose KV fits. Step
times are the roofline's (workbench.plan.roofline) scaled by the efficiency factors;
tensor-parallel all-reduce time is not modelled.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace

from workbench.plan.budget import (
    DEFAULT_RESERVE,
    max_concurrent_seqs,
    memory_plan,
    min_gpus,
)
from workbench.plan.cost import (
    HOURS_PER_MONTH,
    cost_from_simulation,
    cost_per_million_tokens,
    monthly_cost,
)
from workbench.plan.hardware import Hardware, get_hardware
from workbench.plan.memory import canonical_precision, kv_dtype_for, kv_estimate
from workbench.plan.models_catalog import ModelArch, get_model
from workbench.plan.names import check_positive
from workbench.plan.roofline import (
    DEFAULT_EFFICIENCY,
    Efficiency,
    compute_dtype,
    decode_step,
    prefill_step,
)
from workbench.plan.trees.answers import GPUS_PER_NODE
from workbench.widgets.capacity_text import explain, summary_rows

SECONDS_PER_MONTH = HOURS_PER_MONTH * 3600


@dataclass(frozen=True, slots=True)
class Setup:
    """Catalog entries and checked inputs: what every step-time evaluation needs."""

    model: ModelArch
    hw: Hardware
    precision: str
    kv_dtype: str
    efficiency: Efficiency
    prompt_tokens: int
    output_tokens: int
    reserve_fraction: float

    @property
    def sequence_tokens(self) -> int:
        """Tokens a request holds at its end: its KV peak."""
        return self.prompt_tokens + self.output_tokens

    @property
    def decode_context(self) -> int:
        """Mean cached tokens over a request's decode steps."""
        return self.prompt_tokens + self.output_tokens // 2

    def cycle(self, batch: int, tp: int) -> tuple[float, float, float]:
        """(decode step, one prompt's prefill, decode step + its share of prefills), seconds."""
        decode = decode_step(self.model, self.hw, batch, self.decode_context, self.precision,
                             self.kv_dtype, tp, self.efficiency).time_s
        prefill = self.prefill(tp)
        return decode, prefill, decode + batch / self.output_tokens * prefill

    def requests_per_s(self, batch: int, tp: int) -> float:
        """One replica's completions: batch / (output_tokens x step cycle)."""
        return batch / (self.output_tokens * self.cycle(batch, tp)[2])

    def prefill(self, tp: int) -> float:
        return prefill_step(self.model, self.hw, self.prompt_tokens, 1, self.precision,
                            self.kv_dtype, tp, self.efficiency).time_s

    def max_seqs(self, tp: int) -> int:
        return max_concurrent_seqs(self.model, self.hw, self.precision, self.sequence_tokens,
                                   self.kv_dtype, tp, self.reserve_fraction)


@dataclass(frozen=True, slots=True)
class Fleet:
    """Replicas for a rate and what they cost."""

    rate_rps: float
    replicas: int
    gpus: int
    utilization: float                    # achieved busy share: rate / fleet capacity
    monthly_cost: float                   # always-on: GPUs x 730 h x price
    monthly_cost_full_use: float          # pay only for busy GPU-seconds: the lower bound
    gpu_seconds_per_token: float          # prompt + output tokens
    cost_per_million_tokens: float        # at the achieved utilization
    cost_per_million_output_tokens: float


@dataclass(frozen=True, slots=True)
class CapacityView:
    inputs: dict                          # the arguments of capacity_view, to re-run variants
    model: str
    gpu: str
    precision: str
    kv_dtype: str
    tp: int                               # GPUs per replica (tensor parallel)
    tp_reason: str
    # Memory of one GPU, GB (decimal); the four parts sum to gpu_memory_gb.
    gpu_memory_gb: float
    weights_gb: float
    kv_in_use_gb: float                   # KV of `batch` sequences at their peak length
    kv_free_gb: float                     # usable memory the operating batch leaves unused
    reserve_gb: float                     # activations, CUDA context, fragmentation
    kv_mb_per_sequence: float
    max_concurrent_seqs: int              # sequences of prompt + output tokens that fit
    # One replica at the operating batch.
    batch: int
    decode_step_ms: float
    prefill_ms: float
    tpot_ms: float
    tpot_slo_met: bool
    ttft_floor_ms: float                  # prefill + one step, before any queueing
    ttft_slo_met: bool | None
    decode_bound: str                     # memory | compute
    output_tokens_per_s: float
    requests_per_s: float
    price_per_gpu_hour: float
    fleet: Fleet
    explanation: str

    @property
    def memory_breakdown(self) -> dict[str, float]:
        return {"weights": self.weights_gb, "KV in use": self.kv_in_use_gb,
                "KV free": self.kv_free_gb, "reserve": self.reserve_gb}

    def rows(self) -> list[tuple[str, str]]:
        """(quantity, value) pairs, rounded for print: deterministic across platforms."""
        return summary_rows(self)

    def table(self):
        import pandas as pd

        return pd.DataFrame(self.rows(), columns=["quantity", "value"]).set_index("quantity")


def resolve(model: str, gpu: str, precision: str, prompt_tokens: int, output_tokens: int,
            kv_dtype: str = "auto", reserve_fraction: float = DEFAULT_RESERVE,
            memory_efficiency: float = DEFAULT_EFFICIENCY.memory,
            compute_efficiency: float = DEFAULT_EFFICIENCY.compute,
            price_per_hour: float | None = None) -> Setup:
    """Look up the catalogs and check the inputs, naming the field at fault."""
    check_positive(prompt_tokens=prompt_tokens, output_tokens=output_tokens)
    m, hw = get_model(model), get_hardware(gpu, price_per_hour)
    p = canonical_precision(precision)
    if not hw.peak_tflops.get(compute_dtype(p)):
        have = [k for k, v in hw.peak_tflops.items() if v]
        raise ValueError(f"precision: {hw.name} has no {compute_dtype(p)} tensor cores for "
                         f"{p}; its peaks: {', '.join(have)}")
    if (memory_efficiency, compute_efficiency) == (DEFAULT_EFFICIENCY.memory,
                                                   DEFAULT_EFFICIENCY.compute):
        eff = DEFAULT_EFFICIENCY
    else:
        eff = Efficiency(memory_efficiency, compute_efficiency, "given by the user")
    return Setup(m, hw, p, kv_dtype_for(p, kv_dtype), eff, int(prompt_tokens),
                 int(output_tokens), reserve_fraction)


def setup_of(view: CapacityView) -> Setup:
    """The Setup a view was computed from, to evaluate variants of it."""
    i = view.inputs
    return resolve(i["model"], i["gpu"], i["precision"], i["prompt_tokens"], i["output_tokens"],
                   i["kv_dtype"], i["reserve_fraction"], i["memory_efficiency"],
                   i["compute_efficiency"], i["price_per_hour"])


def operating_batch(setup: Setup, tp: int, tpot_slo_s: float) -> tuple[int, bool]:
    """Largest batch that fits and whose step cycle meets the SLO; (1, False) if none does.

    The cycle time grows with the batch (more KV read, more prefills per step), so a binary
    search over [1, max sequences] finds it.
    """
    top = setup.max_seqs(tp)
    if top < 1 or setup.cycle(1, tp)[2] > tpot_slo_s:
        return 1, False
    lo, hi = 1, top                      # invariant: lo meets the SLO
    while lo < hi:
        mid = (lo + hi + 1) // 2
        lo, hi = (mid, hi) if setup.cycle(mid, tp)[2] <= tpot_slo_s else (lo, mid - 1)
    return lo, True


def auto_tp(setup: Setup, context: int, tpot_slo_s: float, rate_rps: float,
            utilization: float) -> tuple[int, str]:
    """GPUs per replica: of the tensor-parallel sizes within one node that hold a
    `context`-token request and meet the TPOT SLO, the one needing the fewest GPUs in all at
    this rate (ties: the smaller size, fewer all-reduces); the fewest that fit if none meets
    the SLO."""
    m, hw = setup.model, setup.hw
    fit = min_gpus(m, hw, setup.precision, context, setup.kv_dtype, setup.reserve_fraction)
    if fit is None:  # memory_plan raises the error that says what would fit instead
        memory_plan(m, hw, setup.precision, context, setup.kv_dtype, 1, setup.reserve_fraction)
        raise AssertionError("unreachable: memory_plan raises when nothing fits")
    best: tuple[int, int] | None = None   # (GPUs in all, tp)
    for tp in range(fit, GPUS_PER_NODE + 1):
        if m.num_heads % tp:
            continue
        batch, met = operating_batch(setup, tp, tpot_slo_s)
        if met:
            gpus = tp * replicas_needed(rate_rps, setup.requests_per_s(batch, tp), utilization)
            best = min(best or (gpus, tp), (gpus, tp))
    if best is None:
        return fit, (f"auto: the fewest that fit; no tensor-parallel size up to {GPUS_PER_NODE} "
                     "meets the TPOT SLO")
    gpus, tp = best
    if tp == fit:
        return tp, "auto: the fewest that fit, and the cheapest that meet the TPOT SLO"
    return tp, (f"auto: {fit} would fit, but {tp} per replica meet the TPOT SLO with the fewest "
                f"GPUs in all ({gpus})")


def replicas_needed(rate_rps: float, requests_per_s_per_replica: float,
                    utilization: float) -> int:
    """ceil(rate / (per-replica requests/s x target utilization)), at least one."""
    check_positive(rate_rps=rate_rps, requests_per_s_per_replica=requests_per_s_per_replica)
    if not 0 < utilization <= 1:
        raise ValueError(f"utilization: must be in (0, 1], got {utilization}")
    # The epsilon keeps float noise in an exact ratio (2.0000000001) from buying a replica.
    return max(1, math.ceil(rate_rps / (requests_per_s_per_replica * utilization) - 1e-9))


def fleet_at_rate(requests_per_s_per_replica: float, gpus_per_replica: int,
                  price_per_gpu_hour: float, rate_rps: float, utilization: float,
                  tokens_per_request: int, output_tokens: int) -> Fleet:
    """Replicas = ceil(rate / (per-replica requests/s x target utilization)), and their cost.

    Tokens are prompt + output (`tokens_per_request`); output tokens get their own $ per 1M.
    """
    per_replica, tp, price = requests_per_s_per_replica, gpus_per_replica, price_per_gpu_hour
    replicas = replicas_needed(rate_rps, per_replica, utilization)
    achieved = rate_rps / (replicas * per_replica)
    gpu_s_per_token = tp / (per_replica * tokens_per_request)
    return Fleet(
        rate_rps=rate_rps, replicas=replicas, gpus=replicas * tp, utilization=achieved,
        monthly_cost=cost_from_simulation(replicas, tp, HOURS_PER_MONTH, price),
        monthly_cost_full_use=monthly_cost(rate_rps * SECONDS_PER_MONTH, tokens_per_request,
                                           gpu_s_per_token, price),
        gpu_seconds_per_token=gpu_s_per_token,
        cost_per_million_tokens=cost_per_million_tokens(gpu_s_per_token, price, achieved),
        cost_per_million_output_tokens=cost_per_million_tokens(
            gpu_s_per_token * tokens_per_request / output_tokens, price, achieved))


def fleet_for(view: CapacityView, rate_rps: float, utilization: float | None = None) -> Fleet:
    """The same replica at another rate (or target utilization): for what-if curves."""
    i = view.inputs
    return fleet_at_rate(view.requests_per_s, view.tp, view.price_per_gpu_hour, rate_rps,
                         i["utilization"] if utilization is None else utilization,
                         i["prompt_tokens"] + i["output_tokens"], i["output_tokens"])


def capacity_view(model: str = "llama-3-8b", gpu: str = "h100-sxm", precision: str = "bf16",
                  context: int = 8192, rate_rps: float = 20.0, prompt_tokens: int = 1024,
                  output_tokens: int = 256, tpot_slo_ms: float = 50.0,
                  ttft_slo_ms: float | None = 1000.0, tp: int | None = None,
                  kv_dtype: str = "auto", reserve_fraction: float = DEFAULT_RESERVE,
                  memory_efficiency: float = DEFAULT_EFFICIENCY.memory,
                  compute_efficiency: float = DEFAULT_EFFICIENCY.compute,
                  price_per_hour: float | None = None, utilization: float = 0.7
                  ) -> CapacityView:
    """Everything the capacity calculator shows, for one set of inputs.

    context: the longest request the deployment admits (max_model_len); one must fit.
    tp: GPUs per replica, None = auto_tp. utilization: target average busy share of the
    replicas, the headroom kept for bursts. price_per_hour: None = the catalog's price.
    """
    inputs = dict(locals())
    check_positive(context=context, tpot_slo_ms=tpot_slo_ms, ttft_slo_ms=ttft_slo_ms)
    setup = resolve(model, gpu, precision, prompt_tokens, output_tokens, kv_dtype,
                    reserve_fraction, memory_efficiency, compute_efficiency, price_per_hour)
    m, hw = setup.model, setup.hw
    if context > m.context_length:
        raise ValueError(f"context: {m.name} was trained for at most {m.context_length} "
                         f"tokens, got {context}")
    if context < setup.sequence_tokens:
        raise ValueError(f"context: must hold prompt_tokens + output_tokens = "
                         f"{setup.sequence_tokens}, got {context}")
    slo_s = tpot_slo_ms / 1e3
    if tp is None:
        tp, tp_reason = auto_tp(setup, context, slo_s, rate_rps, utilization)
    else:
        tp_reason = "given"
    # Raises ModelDoesNotFitError (saying how many GPUs would do) for a given tp too small.
    plan = memory_plan(m, hw, setup.precision, context, setup.kv_dtype, tp, reserve_fraction)
    batch, met = operating_batch(setup, tp, slo_s)
    decode, prefill, cycle = setup.cycle(batch, tp)
    step = decode_step(m, hw, batch, setup.decode_context, setup.precision, setup.kv_dtype, tp,
                       setup.efficiency)
    per_seq = kv_estimate(m, setup.sequence_tokens, setup.kv_dtype, tp).bytes_per_request / 1e9
    requests_per_s = setup.requests_per_s(batch, tp)
    view = CapacityView(
        inputs=inputs, model=m.name, gpu=hw.name, precision=setup.precision,
        kv_dtype=setup.kv_dtype, tp=tp, tp_reason=tp_reason,
        gpu_memory_gb=hw.memory_gb, weights_gb=plan.weight_gb_per_gpu,
        kv_in_use_gb=batch * per_seq,
        kv_free_gb=plan.kv_budget_gb_per_gpu - batch * per_seq,
        reserve_gb=hw.memory_gb - plan.usable_gb_per_gpu,
        kv_mb_per_sequence=per_seq * 1e3, max_concurrent_seqs=setup.max_seqs(tp),
        batch=batch, decode_step_ms=decode * 1e3, prefill_ms=prefill * 1e3,
        tpot_ms=cycle * 1e3, tpot_slo_met=met, ttft_floor_ms=(prefill + cycle) * 1e3,
        ttft_slo_met=None if ttft_slo_ms is None else (prefill + cycle) * 1e3 <= ttft_slo_ms,
        decode_bound=step.bound, output_tokens_per_s=batch / cycle,
        requests_per_s=requests_per_s, price_per_gpu_hour=hw.price_per_hour,
        fleet=fleet_at_rate(requests_per_s, tp, hw.price_per_hour, rate_rps, utilization,
                            setup.sequence_tokens, output_tokens),
        explanation="")
    return replace(view, explanation=explain(view, setup))

