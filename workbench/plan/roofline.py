"""Roofline step time: a step takes the longer of moving its bytes and doing its FLOPs.

decode: every step reads all (active) weights once plus each sequence's KV -> memory-bound at
small batch; prefill: 2 x active params FLOPs per token plus causal attention -> compute-bound.
Efficiency factors scale the peaks down to what kernels achieve; replace them with the ones
measured on the engine (efficiency_from_measurement) to turn the bound into a forecast.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

from workbench.plan.hardware import Hardware
from workbench.plan.memory import (
    active_param_count,
    canonical_precision,
    kv_dtype_for,
    kv_estimate,
    weight_bytes_per_gpu,
)
from workbench.plan.models_catalog import ModelArch
from workbench.plan.names import check_positive


@dataclass(frozen=True, slots=True)
class Efficiency:
    """Achieved share of peak bandwidth (MBU) and of peak FLOPs (MFU)."""

    memory: float = 0.6
    compute: float = 0.5
    source: str = ("defaults: MBU ~0.6 for decode as reported in Databricks' 'LLM Inference "
                   "Performance Engineering: Best Practices' (2023); MFU 0.5, a conservative "
                   "figure below the ~0.76 prefill MFU in Pope et al., 'Efficiently Scaling "
                   "Transformer Inference' (2022)")

    def __post_init__(self) -> None:
        for name in ("memory", "compute"):
            value = getattr(self, name)
            if not 0 < value <= 1:
                raise ValueError(f"efficiency.{name}: must be in (0, 1], got {value}")


PEAK = Efficiency(1.0, 1.0, "the pure roofline bound: spec-sheet peaks")
DEFAULT_EFFICIENCY = Efficiency()


def efficiency_from_measurement(bound_s: float, measured_s: float) -> float:
    """Share of the roofline achieved, e.g. engine decode 9.57 ms vs an 8.03 ms bound -> 0.84."""
    check_positive(bound_s=bound_s, measured_s=measured_s)
    return min(1.0, bound_s / measured_s)


def compute_dtype(precision: str) -> str:
    """Weight-only int8 / int4 dequantize to 16-bit, so their math runs at the bf16 peak."""
    p = canonical_precision(precision)
    return {"fp32": "fp32", "fp16": "fp16", "fp8": "fp8"}.get(p, "bf16")


@dataclass(frozen=True, slots=True)
class StepTime:
    phase: str               # decode | prefill
    batch: int
    tokens: int              # tokens processed in the step
    bytes_moved: float       # per GPU
    flops: float             # per GPU
    memory_time_s: float
    compute_time_s: float

    @property
    def time_s(self) -> float:
        return max(self.memory_time_s, self.compute_time_s)

    @property
    def bound(self) -> str:
        return "memory" if self.memory_time_s >= self.compute_time_s else "compute"

    @property
    def tokens_per_s(self) -> float:
        return self.tokens / self.time_s

    def as_dict(self) -> dict:
        return {**asdict(self), "time_s": self.time_s, "bound": self.bound,
                "tokens_per_s": self.tokens_per_s}


def _expert_fraction(m: ModelArch, tokens: int) -> float:
    """Expected share of an MoE layer's experts that `tokens` tokens touch (uniform routing)."""
    if not m.is_moe:
        return 1.0
    untouched = (1 - m.experts_per_token / m.num_experts) ** tokens
    return 1 - untouched


def _weights_read(m: ModelArch, precision: str, tp: int, tokens: int, group_size: int) -> float:
    total = weight_bytes_per_gpu(m, precision, tp, group_size)
    if not m.is_moe:
        return total
    dense = weight_bytes_per_gpu(_dense_twin(m), precision, tp, group_size)
    per_expert = (total - dense) / (m.num_experts - 1)
    return dense - per_expert + per_expert * m.num_experts * _expert_fraction(m, tokens)


def _dense_twin(m: ModelArch) -> ModelArch:
    from dataclasses import replace

    return replace(m, num_experts=1, experts_per_token=1)


def _attention_flops(m: ModelArch, query_tokens: int, keys: float) -> float:
    # QK^T and AV: 2 matmuls x 2 FLOPs per multiply-add, per head and key.
    return 4 * m.num_layers * m.num_heads * m.head_dim * query_tokens * keys


def decode_step(m: ModelArch, hw: Hardware, batch: int = 1, context: int = 0,
                precision: str = "bf16", kv_dtype: str = "auto", tp: int = 1,
                efficiency: Efficiency = DEFAULT_EFFICIENCY, group_size: int = 128) -> StepTime:
    """One decode step: `batch` sequences each with `context` tokens already cached."""
    check_positive(batch=batch)
    if context < 0:
        raise ValueError(f"context: must be >= 0, got {context}")
    kv = kv_estimate(m, context, kv_dtype_for(precision, kv_dtype), tp)
    moved = _weights_read(m, precision, tp, batch, group_size) + batch * kv.bytes_per_request
    flops = (2 * active_param_count(m) * batch + _attention_flops(m, batch, kv.tokens_held)) / tp
    peak = hw.peak_flops(compute_dtype(precision))
    return StepTime("decode", batch, batch, moved, flops,
                    moved / (hw.bandwidth_bytes_s * efficiency.memory),
                    flops / (peak * efficiency.compute))


def prefill_step(m: ModelArch, hw: Hardware, prompt_tokens: int, batch: int = 1,
                 precision: str = "bf16", kv_dtype: str = "auto", tp: int = 1,
                 efficiency: Efficiency = DEFAULT_EFFICIENCY, group_size: int = 128) -> StepTime:
    """Prefill of `batch` prompts of `prompt_tokens` each: weights read once, KV written."""
    check_positive(prompt_tokens=prompt_tokens, batch=batch)
    n = prompt_tokens * batch
    kv = kv_estimate(m, prompt_tokens, kv_dtype_for(precision, kv_dtype), tp)
    moved = _weights_read(m, precision, tp, n, group_size) + batch * kv.bytes_per_request
    # Causal attention: query i attends to i keys, on average half the prompt.
    attn = _attention_flops(m, n, min(prompt_tokens, kv.tokens_held) / 2)
    flops = (2 * active_param_count(m) * n + attn) / tp
    peak = hw.peak_flops(compute_dtype(precision))
    return StepTime("prefill", batch, n, moved, flops,
                    moved / (hw.bandwidth_bytes_s * efficiency.memory),
                    flops / (peak * efficiency.compute))


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
                            efficiency: Efficiency = PEAK, batch: int | None = None) -> StepTime:
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
