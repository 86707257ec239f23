"""How many sequences fit on a GPU (or a tensor-parallel group), and how many GPUs a model needs.

usable = GPU memory x (1 - reserve_fraction); the reserve covers activations, the CUDA context
and fragmentation (vLLM's default gpu_memory_utilization of 0.9 leaves the same 10%).
KV budget per GPU = usable - weights per GPU; sequences = KV budget // KV bytes per sequence.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

from workbench.plan.hardware import Hardware
from workbench.plan.memory import (
    canonical_precision,
    kv_dtype_for,
    kv_estimate,
    param_count,
    weight_bytes,
    weight_bytes_per_gpu,
)
from workbench.plan.models_catalog import ModelArch

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

    def as_dict(self) -> dict:
        return asdict(self)


def _usable(hw: Hardware, reserve_fraction: float) -> float:
    if not 0 <= reserve_fraction < 1:
        raise ValueError(f"reserve_fraction: must be in [0, 1), got {reserve_fraction}")
    return hw.memory_bytes * (1 - reserve_fraction)


def max_concurrent_seqs(m: ModelArch, hw: Hardware, precision: str = "bf16", context: int = 4096,
                        kv_dtype: str = "auto", tp: int = 1,
                        reserve_fraction: float = DEFAULT_RESERVE, group_size: int = 128) -> int:
    """Sequences of `context` tokens whose KV fits beside the weights (0 = none; negative never)."""
    budget = _usable(hw, reserve_fraction) - weight_bytes_per_gpu(m, precision, tp, group_size)
    per_seq = kv_estimate(m, context, kv_dtype_for(precision, kv_dtype), tp).bytes_per_request
    if budget < 0:
        return 0
    return int(budget // per_seq) if per_seq else 2**31 - 1


def min_gpus(m: ModelArch, hw: Hardware, precision: str = "bf16", context: int = 4096,
             kv_dtype: str = "auto", reserve_fraction: float = DEFAULT_RESERVE,
             group_size: int = 128) -> int | None:
    """Smallest tensor-parallel size (dividing the heads) that holds weights plus one request."""
    for tp in range(1, MAX_GPUS + 1):
        if m.num_heads % tp == 0 and max_concurrent_seqs(
                m, hw, precision, context, kv_dtype, tp, reserve_fraction, group_size) >= 1:
            return tp
    return None


def memory_plan(m: ModelArch, hw: Hardware, precision: str = "bf16", context: int | None = None,
                kv_dtype: str = "auto", tp: int = 1, reserve_fraction: float = DEFAULT_RESERVE,
                group_size: int = 128) -> MemoryPlan:
    """The whole memory picture; raises ModelDoesNotFitError (saying how many GPUs it needs)."""
    p = canonical_precision(precision)
    ctx = m.context_length if context is None else int(context)
    kvd = kv_dtype_for(p, kv_dtype)
    kv = kv_estimate(m, ctx, kvd, tp)
    w_gpu = weight_bytes_per_gpu(m, p, tp, group_size)
    usable = _usable(hw, reserve_fraction)
    seqs = max_concurrent_seqs(m, hw, p, ctx, kvd, tp, reserve_fraction, group_size)
    if seqs < 1:
        raise ModelDoesNotFitError(_does_not_fit(m, hw, p, ctx, kvd, tp, reserve_fraction,
                                                 group_size, w_gpu, usable))
    return MemoryPlan(
        model=m.name, gpu=hw.name, precision=p, kv_dtype=kvd, tp=tp, context=ctx,
        attention_kind=m.attention_kind, params_b=_params_b(m),
        weight_gb_total=weight_bytes(m, p, group_size) / 1e9, weight_gb_per_gpu=w_gpu / 1e9,
        gpu_memory_gb=hw.memory_gb, usable_gb_per_gpu=usable / 1e9,
        kv_budget_gb_per_gpu=(usable - w_gpu) / 1e9,
        kv_bytes_per_token_per_gpu=kv.bytes_per_token,
        kv_gb_per_request_per_gpu=kv.bytes_per_request / 1e9, kv_note=kv.note,
        max_concurrent_seqs=seqs)


def _params_b(m: ModelArch) -> float:
    return param_count(m) / 1e9


def _does_not_fit(m, hw, p, ctx, kvd, tp, reserve, g, w_gpu, usable) -> str:
    what = (f"its {p} weights ({w_gpu / 1e9:.1f} GB per GPU)" if w_gpu > usable
            else f"its {p} weights plus one {ctx}-token request's KV")
    msg = (f"model: {m.name} does not fit on {tp} x {hw.name}: {what} exceed the "
           f"{usable / 1e9:.1f} GB usable per GPU")
    need = min_gpus(m, hw, p, ctx, kvd, reserve, g)
    msg += (f"; at {p} it needs {need} x {hw.name} (tensor parallel)" if need
            else f"; no tensor-parallel size up to {MAX_GPUS} holds it at {p}")
    if p != "int4":
        need4 = min_gpus(m, hw, "int4", ctx, kvd if kvd != "fp32" else "bf16", reserve, g)
        if need4 == 1:
            msg += "; it fits on one at int4"
        elif need4:
            msg += f"; even at int4 it needs {need4} x {hw.name}"
    return msg
