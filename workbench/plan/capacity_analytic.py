"""Analytic capacity: how many replicas of which size serve a request rate within a TPOT SLO,
in closed form (no simulation; workbench.sim.capacity is the simulated search).

The serving model is continuous batching with chunked prefill in steady state. `batch`
sequences decode one token per step; a sequence lives `output_tokens` steps, so
batch / output_tokens requests finish and as many join per step, each bringing a prefill of
`prompt_tokens`. The average step therefore carries

    batch decodes (mean context prompt + output/2) + batch x prompt / output prefill tokens

and its time, priced by workbench.plan.step_cost like any simulated step, is the time per
output token (TPOT) a request sees. A replica completes batch / (output_tokens x TPOT)
requests per second. The operating batch is the largest whose TPOT meets the SLO, whose KV
fits and that the engine's limits (max_num_seqs, max_num_batched_tokens) admit.
Tensor-parallel all-reduce time and queueing are not modelled: the simulator checks those.
"""

from __future__ import annotations

from dataclasses import dataclass

from workbench.plan.budget import (
    DEFAULT_RESERVE,
    MemoryPlan,
    max_concurrent_seqs,
    memory_plan,
    min_tp,
    tp_sizes,
)
from workbench.plan.cost import (
    DEFAULT_UTILIZATION,
    HOURS_PER_MONTH,
    cost_from_simulation,
    cost_per_million_tokens,
    monthly_cost,
    replicas_needed,
)
from workbench.plan.hardware import Hardware, get_hardware
from workbench.plan.memory import canonical_precision, kv_dtype_for, kv_estimate
from workbench.plan.models_catalog import ModelArch, get_model
from workbench.plan.names import check_positive
from workbench.plan.step_cost import (
    Batch,
    Efficiency,
    StepCost,
    StepCostModel,
    peak_flops_for,
)
from workbench.plan.step_params import efficiency_for
from workbench.plan.trees.answers import GPUS_PER_NODE

SECONDS_PER_MONTH = HOURS_PER_MONTH * 3600


@dataclass(frozen=True, slots=True)
class BatchPoint:
    """One replica at a batch: what Setup.cycle prices, and the throughput it implies."""

    batch: int
    decode_step_s: float          # a decode-only step
    prefill_s: float              # one prompt's prefill alone
    tpot_s: float                 # the mean step: the time per output token
    output_tokens_per_s: float    # batch / TPOT
    requests_per_s: float         # batch / (output_tokens x TPOT)
    ttft_floor_s: float           # prefill + one step + the client's HTTP/tokenization

    @property
    def prefill_per_step_s(self) -> float:
        """What the joining prompts' prefill adds to the mean step: TPOT - decode-only step."""
        return self.tpot_s - self.decode_step_s


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
    reserve_fraction: float = DEFAULT_RESERVE
    overhead_s: float = 0.0                    # setup_for: the efficiency's, unless given
    max_num_seqs: int | None = None            # engine limits; None = only memory limits
    max_num_batched_tokens: int | None = None

    @property
    def sequence_tokens(self) -> int:
        """Tokens a request holds at its end: its KV peak."""
        return self.prompt_tokens + self.output_tokens

    @property
    def decode_context(self) -> int:
        """Mean cached tokens over a request's decode steps."""
        return self.prompt_tokens + self.output_tokens // 2

    def step_model(self, tp: int) -> StepCostModel:
        return StepCostModel(self.model, self.hw, self.precision, self.kv_dtype, tp,
                             self.efficiency, self.overhead_s)

    def chunk_tokens(self, batch: int) -> float:
        """Prefill tokens a step carries when it carries a prompt: the whole prompt, or what
        the token budget leaves beside the batch's decodes (chunked prefill)."""
        if self.max_num_batched_tokens is None:
            return self.prompt_tokens
        return max(1, min(self.prompt_tokens, self.max_num_batched_tokens - batch))

    def prefill_share(self, batch: int) -> float:
        """Steps per step that carry a prefill chunk: batch / output prompts join per step,
        each needing prompt / chunk chunk-steps (above 1: every step carries prefill)."""
        return batch * self.prompt_tokens / self.output_tokens / self.chunk_tokens(batch)

    def steady_batch(self, batch: int) -> Batch:
        """The average step at `batch` sequences: their decodes and the prefills joining."""
        joining = batch / self.output_tokens
        n = self.prompt_tokens
        return Batch(num_prefill_tokens=joining * n, num_prefill_seqs=joining,
                     prefill_attention=joining * n * (n + 1) / 2, num_decode_seqs=batch,
                     decode_context=batch * self.decode_context,
                     decode_max_context=self.sequence_tokens)

    def chunk_batch(self, batch: int) -> Batch:
        """A step carrying one prefill chunk beside the decodes; a chunk of c tokens of an
        n-token prompt averages c (n + 1) / 2 query-key pairs (n (n + 1) / 2 over n / c)."""
        c, n = self.chunk_tokens(batch), self.prompt_tokens
        return Batch(num_prefill_tokens=c, num_prefill_seqs=1,
                     prefill_attention=c * (n + 1) / 2, num_decode_seqs=batch,
                     decode_context=batch * self.decode_context,
                     decode_max_context=self.sequence_tokens)

    def cycle(self, batch: int, tp: int) -> tuple[float, float, float]:
        """(decode-only step, one prompt's prefill alone, the mean step = TPOT), seconds.

        A share p of steps carries a prefill chunk, the rest only decode, so the mean step is
        (1 - p) x decode-only + p x with-chunk: averaging the step TIMES, not the batches,
        because a step costs the max of its bytes and FLOPs (the mean of maxima exceeds the
        max of means). With p >= 1 every step carries prefill and the average step is priced.
        """
        model = self.step_model(tp)
        decode = model.seconds(Batch.decode(batch, self.decode_context))
        share = self.prefill_share(batch)
        if share >= 1:
            tpot = model.seconds(self.steady_batch(batch))
        else:
            tpot = (1 - share) * decode + share * model.seconds(self.chunk_batch(batch))
        return decode, model.seconds(Batch.prefill(self.prompt_tokens)), tpot

    def at_batch(self, batch: int, tp: int) -> BatchPoint:
        """One replica of `tp` GPUs running `batch` sequences: its step times and throughput."""
        decode, prefill, tpot = self.cycle(batch, tp)
        return BatchPoint(batch=batch, decode_step_s=decode, prefill_s=prefill, tpot_s=tpot,
                          output_tokens_per_s=batch / tpot,
                          requests_per_s=batch / (self.output_tokens * tpot),
                          ttft_floor_s=prefill + tpot + self.efficiency.client_s)

    def requests_per_s(self, batch: int, tp: int) -> float:
        """One replica's completions: batch / (output_tokens x TPOT)."""
        return self.at_batch(batch, tp).requests_per_s

    def max_seqs(self, tp: int) -> int:
        """Sequences of prompt + output tokens whose KV fits."""
        return max_concurrent_seqs(self.model, self.hw, self.precision, self.sequence_tokens,
                                   self.kv_dtype, tp, self.reserve_fraction)

    def batch_limit(self, tp: int) -> int:
        """The largest batch memory and the engine's limits admit (0: not one fits)."""
        top = self.max_seqs(tp)
        if self.max_num_seqs is not None:
            top = min(top, self.max_num_seqs)
        if self.max_num_batched_tokens is not None:
            # Each step's decodes plus its share of prefill tokens fit the token budget.
            per_seq = 1 + self.prompt_tokens / self.output_tokens
            top = min(top, int(self.max_num_batched_tokens // per_seq))
        return top


def resolve(model: str, gpu: str, precision: str, prompt_tokens: int, output_tokens: int,
            kv_dtype: str = "auto", reserve_fraction: float = DEFAULT_RESERVE,
            memory_efficiency: float | None = None,
            compute_efficiency: float | None = None,
            price_per_hour: float | None = None,
            overhead_s: float | None = None, max_num_seqs: int | None = None,
            max_num_batched_tokens: int | None = None) -> Setup:
    """Look up the catalogs and check the inputs, naming the field at fault."""
    check_positive(prompt_tokens=prompt_tokens, output_tokens=output_tokens,
                   max_num_seqs=max_num_seqs, max_num_batched_tokens=max_num_batched_tokens)
    m, hw = get_model(model), get_hardware(gpu, price_per_hour)
    return setup_for(m, hw, precision, int(prompt_tokens), int(output_tokens), kv_dtype,
                     reserve_fraction, efficiency_for(hw, memory_efficiency, compute_efficiency),
                     overhead_s, max_num_seqs, max_num_batched_tokens)


def setup_for(m: ModelArch, hw: Hardware, precision: str, prompt_tokens: int,
              output_tokens: int, kv_dtype: str = "auto",
              reserve_fraction: float = DEFAULT_RESERVE,
              efficiency: Efficiency | None = None,
              overhead_s: float | None = None, max_num_seqs: int | None = None,
              max_num_batched_tokens: int | None = None) -> Setup:
    """A Setup from catalog entries; a ValueError names a precision the GPU cannot run."""
    p = canonical_precision(precision)
    try:
        peak_flops_for(hw, p)
    except ValueError as e:
        raise ValueError(f"precision: {hw.name} cannot run {p} ({e})") from None
    efficiency = efficiency or efficiency_for(hw)
    overhead_s = efficiency.overhead_s if overhead_s is None else overhead_s
    return Setup(m, hw, p, kv_dtype_for(p, kv_dtype), efficiency, prompt_tokens,
                 output_tokens, reserve_fraction, overhead_s, max_num_seqs,
                 max_num_batched_tokens)


def operating_batch(setup: Setup, tp: int, tpot_slo_s: float) -> tuple[int, bool]:
    """Largest admitted batch whose steady step meets the SLO; (1, False) if none does.

    TPOT grows with the batch (more KV read, more prefill tokens per step), so a binary
    search over [1, batch_limit] finds it.
    """
    top = setup.batch_limit(tp)
    if top < 1 or setup.cycle(1, tp)[2] > tpot_slo_s:
        return 1, False
    lo, hi = 1, top                      # invariant: lo meets the SLO
    while lo < hi:
        mid = (lo + hi + 1) // 2
        lo, hi = (mid, hi) if setup.cycle(mid, tp)[2] <= tpot_slo_s else (lo, mid - 1)
    return lo, True


def auto_tp(setup: Setup, context: int, tpot_slo_s: float, rate_rps: float,
            utilization: float = DEFAULT_UTILIZATION) -> tuple[int, str]:
    """GPUs per replica: of the tensor-parallel sizes within one node that hold a
    `context`-token request and meet the TPOT SLO, the one needing the fewest GPUs in all at
    this rate (ties: the smaller size, fewer all-reduces); the fewest that fit if none meets
    the SLO."""
    m, hw = setup.model, setup.hw
    fit = min_tp(m, hw, setup.precision, context, 1, setup.kv_dtype, setup.reserve_fraction)
    if fit is None:  # memory_plan raises the error that says what would fit instead
        memory_plan(m, hw, setup.precision, context, setup.kv_dtype, 1, setup.reserve_fraction)
        raise AssertionError("unreachable: memory_plan raises when nothing fits")
    best: tuple[int, int] | None = None   # (GPUs in all, tp)
    for tp in tp_sizes(m, GPUS_PER_NODE, start=fit):
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


@dataclass(frozen=True, slots=True)
class OperatingPoint:
    """One replica of `tp` GPUs at its operating batch: step times, throughput, the step that
    carries prefill, and one GPU's memory split into weights, KV in use, KV free and reserve
    (the four sum to the GPU's memory). What the capacity calculator shows, computed here."""

    tp: int
    memory: MemoryPlan                  # at the deployment's context (max_model_len)
    at: BatchPoint                      # at the operating batch
    tpot_slo_met: bool
    ttft_slo_met: bool | None           # None: no TTFT SLO given
    max_concurrent_seqs: int            # sequences of prompt + output tokens that fit
    kv_gb_per_sequence: float           # per GPU, at a sequence's peak (prompt + output)
    kv_in_use_gb: float                 # batch x that
    kv_free_gb: float                   # KV budget the operating batch leaves unused
    reserve_gb: float                   # activations, CUDA context, fragmentation
    prefill_share: float                # steps carrying prefill per step (>= 1: all do)
    prefill_step_tokens: float          # prefill tokens such a step carries
    prefill_step: StepCost              # such a step: one chunk beside the decodes, or
                                        # (every step carrying some) the average step

    @property
    def batch(self) -> int:
        return self.at.batch


def operating_point(setup: Setup, tp: int, tpot_slo_s: float, context: int,
                    ttft_slo_s: float | None = None) -> OperatingPoint:
    """The operating batch of a replica of `tp` GPUs and everything that follows from it.

    Raises ModelDoesNotFitError (saying how many GPUs would do) when one `context`-token
    request does not fit beside the weights at this tp."""
    m, hw = setup.model, setup.hw
    plan = memory_plan(m, hw, setup.precision, context, setup.kv_dtype, tp,
                       setup.reserve_fraction)
    batch, met = operating_batch(setup, tp, tpot_slo_s)
    at = setup.at_batch(batch, tp)
    share = setup.prefill_share(batch)
    carrying = setup.chunk_batch(batch) if share < 1 else setup.steady_batch(batch)
    per_seq = kv_estimate(m, setup.sequence_tokens, setup.kv_dtype, tp).bytes_per_request / 1e9
    return OperatingPoint(
        tp=tp, memory=plan, at=at, tpot_slo_met=met,
        ttft_slo_met=None if ttft_slo_s is None else at.ttft_floor_s <= ttft_slo_s,
        max_concurrent_seqs=setup.max_seqs(tp), kv_gb_per_sequence=per_seq,
        kv_in_use_gb=batch * per_seq, kv_free_gb=plan.kv_budget_gb_per_gpu - batch * per_seq,
        reserve_gb=hw.memory_gb - plan.usable_gb_per_gpu, prefill_share=share,
        prefill_step_tokens=carrying.num_prefill_tokens,
        prefill_step=setup.step_model(tp).cost(carrying))


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


def fleet_at_rate(requests_per_s_per_replica: float, gpus_per_replica: int,
                  price_per_gpu_hour: float, rate_rps: float, utilization: float,
                  tokens_per_request: int, output_tokens: int) -> Fleet:
    """Replicas = ceil(rate / (per-replica requests/s x target utilization)), and their cost.

    Tokens are prompt + output (`tokens_per_request`); output tokens get their own $ per 1M.
    """
    check_positive(rate_rps=rate_rps)
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
