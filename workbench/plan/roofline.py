"""Roofline step times of the two phases, and the limits they imply.

decode: every step reads the weights once plus each sequence's KV -> memory-bound at small
batch; prefill: 2 x active params FLOPs per token plus causal attention -> compute-bound.
The terms and their sources live in workbench.plan.step_cost (the one step-cost model); this
module asks it about whole-phase batches. The parameters default to those fitted to published
measurements for the GPU (workbench.plan.step_params); PEAK gives the pure roofline.
"""

from __future__ import annotations

from dataclasses import replace

from workbench.plan.hardware import Hardware
from workbench.plan.memory import DEFAULT_GROUP_SIZE
from workbench.plan.models_catalog import ModelArch
from workbench.plan.names import check_positive
from workbench.plan.step_cost import (  # noqa: F401  (re-exported: callers import them here)
    LITERATURE_EFFICIENCY,
    PEAK,
    Batch,
    Efficiency,
    StepCost,
    StepCostModel,
    compute_dtype,
    efficiency_from_measurement,
)


def decode_step(m: ModelArch, hw: Hardware, batch: int = 1, context: int = 0,
                precision: str = "bf16", kv_dtype: str = "auto", tp: int = 1,
                efficiency: Efficiency | None = None,
                group_size: int = DEFAULT_GROUP_SIZE,
                overhead_s: float | None = None) -> StepCost:
    """One decode step: `batch` sequences each with `context` tokens already cached (a
    StepCost with phase "decode")."""
    check_positive(batch=batch)
    if context < 0:
        raise ValueError(f"context: must be >= 0, got {context}")
    model = StepCostModel(m, hw, precision, kv_dtype, tp, efficiency, overhead_s, group_size)
    return replace(model.cost(Batch.decode(batch, context)), phase="decode", batch=batch)


def prefill_step(m: ModelArch, hw: Hardware, prompt_tokens: int, batch: int = 1,
                 precision: str = "bf16", kv_dtype: str = "auto", tp: int = 1,
                 efficiency: Efficiency | None = None,
                 group_size: int = DEFAULT_GROUP_SIZE,
                 overhead_s: float | None = None) -> StepCost:
    """Prefill of `batch` prompts of `prompt_tokens` each: weights read once, KV written (a
    StepCost with phase "prefill")."""
    check_positive(prompt_tokens=prompt_tokens, batch=batch)
    model = StepCostModel(m, hw, precision, kv_dtype, tp, efficiency, overhead_s, group_size)
    return replace(model.cost(Batch.prefill(prompt_tokens, batch)), phase="prefill",
                   batch=batch)


def critical_batch(m: ModelArch, hw: Hardware, context: int = 0, precision: str = "bf16",
                   kv_dtype: str = "auto", tp: int = 1, efficiency: Efficiency = PEAK,
                   limit: int = 1 << 20) -> int | None:
    """Smallest decode batch that is compute-bound; None if KV traffic keeps it memory-bound.

    With no context this is about the ridge point (peak FLOP/s / bandwidth) x bytes per param / 2,
    ~295 for bf16 on an H100.
    """
    def compute_bound(b: int) -> bool:
        return decode_step(m, hw, b, context, precision, kv_dtype, tp,
                           efficiency).bound == "compute"

    hi = 1
    while not compute_bound(hi):
        hi *= 2
        if hi > limit:
            return None
    lo = hi // 2
    while hi - lo > 1:  # invariant: lo memory-bound (or 0), hi compute-bound
        mid = (lo + hi) // 2
        lo, hi = (lo, mid) if compute_bound(mid) else (mid, hi)
    return hi


def decode_throughput_bound(m: ModelArch, hw: Hardware, context: int = 4096,
                            precision: str = "bf16", kv_dtype: str = "auto", tp: int = 1,
                            efficiency: Efficiency = PEAK, batch: int | None = None) -> StepCost:
    """Decode at the largest batch whose KV fits (or `batch`): the tokens/s ceiling of a group.

    Divide tokens_per_s by tp for the per-GPU figure.
    """
    from workbench.plan.budget import max_concurrent_seqs

    if batch is None:
        batch = max_concurrent_seqs(m, hw, precision, context, kv_dtype, tp)
        if batch < 1:
            raise ValueError(f"context: not one {context}-token sequence of {m.name} fits on "
                             f"{tp} x {hw.name} at {precision}; see `plan memory`")
    return decode_step(m, hw, batch, context, precision, kv_dtype, tp, efficiency)
