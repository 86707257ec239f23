"""The capacity calculator's view: what workbench.plan.capacity_analytic computes for one set
of inputs, gathered for display (table, explanation, figures). No arithmetic lives here: the
serving model, operating batch, auto tensor parallelism, replica counting and cost are the
plan's; those names are re-exported for notebooks and tests.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

from workbench.plan.budget import DEFAULT_RESERVE
from workbench.plan.capacity_analytic import (  # noqa: F401  (re-exported)
    Fleet,
    OperatingPoint,
    Setup,
    auto_tp,
    fleet_at_rate,
    operating_batch,
    operating_point,
    resolve,
)
from workbench.plan.cost import DEFAULT_UTILIZATION, replicas_needed  # noqa: F401
from workbench.plan.names import check_positive
from workbench.widgets.capacity_text import explain, summary_rows


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
    prefill_share: float                  # steps carrying prefill per step (>= 1: all do)
    prefill_step_tokens: float            # prefill tokens such a step carries
    prefill_step_ms: float                # its time: decodes + that prefill
    step_bound: str                       # memory | compute: that step's roofline side
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


def setup_of(view: CapacityView) -> Setup:
    """The Setup a view was computed from, to evaluate variants of it."""
    return _setup(view.inputs)


def _setup(i: dict) -> Setup:
    """The plan's Setup for a calculator's inputs (capacity_view's arguments)."""
    return resolve(i["model"], i["gpu"], i["precision"], i["prompt_tokens"], i["output_tokens"],
                   i["kv_dtype"], i["reserve_fraction"], i["memory_efficiency"],
                   i["compute_efficiency"], i["price_per_hour"],
                   max_num_seqs=i["max_num_seqs"],
                   max_num_batched_tokens=i["max_num_batched_tokens"])


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
                  memory_efficiency: float | None = None,
                  compute_efficiency: float | None = None,
                  price_per_hour: float | None = None,
                  utilization: float = DEFAULT_UTILIZATION, max_num_seqs: int | None = None,
                  max_num_batched_tokens: int | None = None) -> CapacityView:
    """Everything the capacity calculator shows, for one set of inputs.

    context: the longest request the deployment admits (max_model_len); one must fit.
    tp: GPUs per replica, None = auto_tp. utilization: target average busy share of the
    replicas, the headroom kept for bursts. price_per_hour: None = the catalog's price.
    memory_efficiency / compute_efficiency: MBU / MFU, None = fitted for the GPU.
    max_num_seqs / max_num_batched_tokens: the engine's batch limits (a scenario's
    target.engine), None = only memory and the SLO limit the batch.
    """
    inputs = dict(locals())
    check_positive(context=context, rate_rps=rate_rps, tpot_slo_ms=tpot_slo_ms,
                   ttft_slo_ms=ttft_slo_ms)
    setup = _setup(inputs)
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
    op = operating_point(setup, tp, slo_s, context,
                         None if ttft_slo_ms is None else ttft_slo_ms / 1e3)
    at = op.at
    view = CapacityView(
        inputs=inputs, model=m.name, gpu=hw.name, precision=setup.precision,
        kv_dtype=setup.kv_dtype, tp=tp, tp_reason=tp_reason,
        gpu_memory_gb=hw.memory_gb, weights_gb=op.memory.weight_gb_per_gpu,
        kv_in_use_gb=op.kv_in_use_gb, kv_free_gb=op.kv_free_gb, reserve_gb=op.reserve_gb,
        kv_mb_per_sequence=op.kv_gb_per_sequence * 1e3,
        max_concurrent_seqs=op.max_concurrent_seqs,
        batch=at.batch, decode_step_ms=at.decode_step_s * 1e3, prefill_ms=at.prefill_s * 1e3,
        tpot_ms=at.tpot_s * 1e3, tpot_slo_met=op.tpot_slo_met,
        ttft_floor_ms=at.ttft_floor_s * 1e3, ttft_slo_met=op.ttft_slo_met,
        prefill_share=op.prefill_share, prefill_step_tokens=op.prefill_step_tokens,
        prefill_step_ms=op.prefill_step.time_s * 1e3, step_bound=op.prefill_step.bound,
        output_tokens_per_s=at.output_tokens_per_s,
        requests_per_s=at.requests_per_s, price_per_gpu_hour=hw.price_per_hour,
        fleet=fleet_at_rate(at.requests_per_s, tp, hw.price_per_hour, rate_rps, utilization,
                            setup.sequence_tokens, output_tokens),
        explanation="")
    return replace(view, explanation=explain(view, setup))

