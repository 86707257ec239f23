"""How many sequences fit on a GPU (or a tensor-parallel group), and how many GPUs a model needs.

usable = GPU memory x (1 - reserve_fraction); the reserve covers activations, the CUDA context
and fragmentation (vLLM's default gpu_memory_utilization of 0.9 leaves the same 10%).
KV budget per GPU = usable - weights per GPU; sequences = KV budget // KV bytes per sequence.
Tensor-parallel sizes must divide the attention heads, as vLLM and TensorRT-LLM split heads
evenly across GPUs (vLLM distributed serving docs); `min_tp` is the smallest that holds a
target batch, and `fit_advice` the one sentence saying whether, and where, a model fits.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import asdict, dataclass

from workbench.plan.hardware import Hardware
from workbench.plan.memory import (
    DEFAULT_GROUP_SIZE,
    canonical_precision,
    kv_dtype_for,
    kv_estimate,
    param_count,
    weight_bytes,
    weight_bytes_per_gpu,
)
from workbench.plan.models_catalog import ModelArch
from workbench.plan.names import check_positive

DEFAULT_RESERVE = 0.10
MAX_GPUS = 64


class ModelDoesNotFitError(ValueError):
    """Weights (plus one request's KV) exceed the GPUs' usable memory."""


@dataclass(frozen=True, slots=True)
class MemoryPlan:
    model: str
    gpu: str
    precision: str
    kv_dtype: str
    tp: int
    context: int
    attention_kind: str
    params_b: float
    weight_gb_total: float
    weight_gb_per_gpu: float
    gpu_memory_gb: float
    usable_gb_per_gpu: float
    kv_budget_gb_per_gpu: float
    kv_bytes_per_token_per_gpu: int
    kv_gb_per_request_per_gpu: float
    kv_note: str
    max_concurrent_seqs: int

    @property
    def fits(self) -> bool:
        """The weights plus one request's KV fit on each GPU."""
        return self.max_concurrent_seqs >= 1

    def as_dict(self) -> dict:
        return asdict(self)


def usable_bytes(hw: Hardware, reserve_fraction: float) -> float:
    """GPU memory x (1 - reserve_fraction): what weights and KV may take."""
    if not 0 <= reserve_fraction < 1:
        raise ValueError(f"reserve_fraction: must be in [0, 1), got {reserve_fraction}")
    return hw.memory_bytes * (1 - reserve_fraction)


def max_concurrent_seqs(m: ModelArch, hw: Hardware, precision: str = "bf16", context: int = 4096,
                        kv_dtype: str = "auto", tp: int = 1,
                        reserve_fraction: float = DEFAULT_RESERVE,
                        group_size: int = DEFAULT_GROUP_SIZE) -> int:
    """Sequences of `context` tokens whose KV fits beside the weights (0 = none; negative never)."""
    budget = (usable_bytes(hw, reserve_fraction)
              - weight_bytes_per_gpu(m, precision, tp, group_size))
    per_seq = kv_estimate(m, context, kv_dtype_for(precision, kv_dtype), tp).bytes_per_request
    if budget < 0:
        return 0
    return int(budget // per_seq) if per_seq else 2**31 - 1


def tp_sizes(m: ModelArch, max_tp: int = MAX_GPUS, start: int = 1) -> Iterator[int]:
    """Tensor-parallel sizes from `start` to `max_tp` that divide the attention heads."""
    return (tp for tp in range(max(start, 1), max_tp + 1) if m.num_heads % tp == 0)


def min_tp(m: ModelArch, hw: Hardware, precision: str = "bf16", context: int = 4096,
           concurrency: int = 1, kv_dtype: str = "auto",
           reserve_fraction: float = DEFAULT_RESERVE, group_size: int = DEFAULT_GROUP_SIZE,
           max_gpus: int = MAX_GPUS) -> int | None:
    """Smallest tensor-parallel size (dividing the heads) whose GPUs hold the weights plus the
    KV of `concurrency` sequences of `context` tokens; None if none up to `max_gpus` does."""
    check_positive(concurrency=concurrency, context=context)
    return next((tp for tp in tp_sizes(m, max_gpus) if max_concurrent_seqs(
        m, hw, precision, context, kv_dtype, tp, reserve_fraction, group_size) >= concurrency),
        None)


def min_gpus(m: ModelArch, hw: Hardware, precision: str = "bf16", context: int = 4096,
             kv_dtype: str = "auto", reserve_fraction: float = DEFAULT_RESERVE,
             group_size: int = DEFAULT_GROUP_SIZE) -> int | None:
    """min_tp for one request (the name, and argument order, notebook 03 uses)."""
    return min_tp(m, hw, precision, context, 1, kv_dtype, reserve_fraction, group_size)


def memory_fit(m: ModelArch, hw: Hardware, precision: str = "bf16", context: int | None = None,
               kv_dtype: str = "auto", tp: int = 1, reserve_fraction: float = DEFAULT_RESERVE,
               group_size: int = DEFAULT_GROUP_SIZE) -> MemoryPlan:
    """The whole memory picture at `tp`, whether or not the model fits (then `fits` is False
    and max_concurrent_seqs 0): memory_plan's core, for answers that must not raise."""
    p = canonical_precision(precision)
    ctx = m.context_length if context is None else int(context)
    kvd = kv_dtype_for(p, kv_dtype)
    kv = kv_estimate(m, ctx, kvd, tp)
    w_gpu = weight_bytes_per_gpu(m, p, tp, group_size)
    usable = usable_bytes(hw, reserve_fraction)
    return MemoryPlan(
        model=m.name, gpu=hw.name, precision=p, kv_dtype=kvd, tp=tp, context=ctx,
        attention_kind=m.attention_kind, params_b=param_count(m) / 1e9,
        weight_gb_total=weight_bytes(m, p, group_size) / 1e9, weight_gb_per_gpu=w_gpu / 1e9,
        gpu_memory_gb=hw.memory_gb, usable_gb_per_gpu=usable / 1e9,
        kv_budget_gb_per_gpu=(usable - w_gpu) / 1e9,
        kv_bytes_per_token_per_gpu=kv.bytes_per_token,
        kv_gb_per_request_per_gpu=kv.bytes_per_request / 1e9, kv_note=kv.note,
        max_concurrent_seqs=max_concurrent_seqs(m, hw, p, ctx, kvd, tp, reserve_fraction,
                                                group_size))


def memory_plan(m: ModelArch, hw: Hardware, precision: str = "bf16", context: int | None = None,
                kv_dtype: str = "auto", tp: int = 1, reserve_fraction: float = DEFAULT_RESERVE,
                group_size: int = DEFAULT_GROUP_SIZE) -> MemoryPlan:
    """The whole memory picture; raises ModelDoesNotFitError (saying how many GPUs it needs)."""
    plan = memory_fit(m, hw, precision, context, kv_dtype, tp, reserve_fraction, group_size)
    if not plan.fits:
        raise ModelDoesNotFitError(
            "model: " + fit_advice(m, hw, plan, reserve_fraction, group_size).text)
    return plan


@dataclass(frozen=True, slots=True)
class FitAdvice:
    """Whether a plan fits, the smallest TP that holds the weights plus one request, the plan
    at that TP (when the asked one does not fit) and the sentence saying so."""

    min_tp: int | None
    at_min_tp: MemoryPlan | None
    text: str


def fit_advice(m: ModelArch, hw: Hardware, plan: MemoryPlan,
               reserve_fraction: float = DEFAULT_RESERVE,
               group_size: int = DEFAULT_GROUP_SIZE) -> FitAdvice:
    """The one "fits / does not fit" message of a MemoryPlan (memory_plan's error and
    `plan memory`'s advice both), with the smallest TP and what each GPU holds there."""
    p, ctx, kvd = plan.precision, plan.context, plan.kv_dtype
    need = min_tp(m, hw, p, max(ctx, 1), 1, kvd, reserve_fraction, group_size)
    where = f"{plan.tp} x {hw.name}"
    if plan.fits:
        return FitAdvice(need, None, (
            f"fits: {plan.max_concurrent_seqs} sequences of {ctx} tokens on {where} "
            f"({plan.weight_gb_per_gpu:.1f} GB of weights and "
            f"{plan.kv_gb_per_request_per_gpu:.3g} GB of KV per request on each GPU)"))
    usable = (f"{plan.usable_gb_per_gpu:.1f} GB usable per {hw.name} "
              f"(reserve {reserve_fraction:.0%})")
    if plan.weight_gb_per_gpu > plan.usable_gb_per_gpu:
        text = (f"{m.name} does not fit on {where}: its {p} weights "
                f"({plan.weight_gb_per_gpu:.1f} GB per GPU) exceed the {usable}")
    else:
        text = (f"{m.name} does not fit on {where}: its {p} weights fit, but not one "
                f"{ctx}-token request's KV ({plan.kv_gb_per_request_per_gpu:.3g} GB per GPU) "
                f"beside them in the {usable}")
    at = None
    if need is None:
        text += (f"; no tensor-parallel size up to {MAX_GPUS} holds it at {p}: use a lower "
                 "precision or a shorter context")
    else:
        at = memory_fit(m, hw, p, ctx, kvd, need, reserve_fraction, group_size)
        text += (f"; at {p} it needs {need} x {hw.name} (TP={need}, the smallest "
                 f"tensor-parallel size that holds the weights plus one {ctx}-token request): "
                 f"each GPU then holds {at.weight_gb_per_gpu:.1f} GB of weights and "
                 f"{at.kv_gb_per_request_per_gpu:.3g} GB of KV per request, and "
                 f"{at.max_concurrent_seqs} sequences fit")
    if p != "int4":
        need4 = min_tp(m, hw, "int4", max(ctx, 1), 1, kvd if kvd != "fp32" else "bf16",
                       reserve_fraction, group_size)
        if need4 == 1:
            text += "; it fits on one at int4"
        elif need4:
            text += f"; even at int4 it needs {need4} x {hw.name}"
    return FitAdvice(need, at, text)
