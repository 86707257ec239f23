"""A step-time model for hardware that is not at hand, from the roofline (an EXTRAPOLATION).

A step takes the longer of moving its bytes (weights once, K/V read and written) and doing its
FLOPs (2 x active parameters per token plus attention), at the hardware's peaks scaled by
efficiency factors, plus a fixed per-step overhead. The efficiencies default to published
values; `calibrated_efficiency` replaces them with the ones a fit measured on the machine at
hand (measured time / roofline time), which is the honest way to forecast another machine.
It plugs into the simulator in place of a fitted model (same `predict_record`).
"""

from __future__ import annotations

from workbench.plan.budget import memory_plan
from workbench.plan.hardware import Hardware
from workbench.plan.memory import (
    active_param_count,
    canonical_precision,
    kv_bytes_per_token,
    kv_dtype_for,
    weight_bytes_per_gpu,
)
from workbench.plan.models_catalog import ModelArch
from workbench.plan.roofline import DEFAULT_EFFICIENCY, Efficiency, compute_dtype


class RooflineStepModel:
    extrapolated = True
    family = "roofline"

    def __init__(self, arch: ModelArch, hw: Hardware, precision: str = "bf16",
                 kv_dtype: str = "auto", tp: int = 1,
                 efficiency: Efficiency = DEFAULT_EFFICIENCY, step_overhead_s: float = 0.0,
                 reserve_fraction: float = 0.1):
        p = canonical_precision(precision)
        kvd = kv_dtype_for(p, kv_dtype)
        self.arch, self.hw, self.precision, self.tp = arch, hw, p, tp
        self.efficiency = efficiency
        self.step_overhead_s = step_overhead_s
        self.weight_bytes = weight_bytes_per_gpu(arch, p, tp)
        self.kv_per_token = kv_bytes_per_token(arch, kvd, tp)
        self.flops_per_token = 2 * active_param_count(arch) / tp
        self.flops_per_pair = 4 * arch.num_layers * arch.num_heads * arch.head_dim / tp
        self.bandwidth = hw.bandwidth_bytes_s * efficiency.memory
        self.peak = hw.peak_flops(compute_dtype(p)) * efficiency.compute
        plan = memory_plan(arch, hw, p, None, kv_dtype, tp, reserve_fraction)
        # What the simulator reads from any step model:
        self.model = {"name": arch.name, "path": arch.name, "architecture": arch.name,
                      "hidden_size": arch.hidden_size, "num_layers": arch.num_layers,
                      "max_model_len": arch.context_length, "vocab_size": arch.vocab_size,
                      "eos_token_ids": [], "kv_bytes_per_token": self.kv_per_token,
                      "weight_bytes": self.weight_bytes,
                      "kv_pool_bytes": int(plan.kv_budget_gb_per_gpu * 1e9)}
        self.engine = {"dtype": p, "kv_cache_dtype": kvd, "quantization": p, "tp": tp}
        self.hardware = hw.name
        self.inter_step_gap_s = 0.0
        self.created, self.validation = "", {"note": "roofline extrapolation, not fitted"}

    def predict_record(self, r) -> float:
        tokens = r.num_prefill_tokens + r.num_decode_seqs
        # Decodes read their cached K/V; prefill chunks write theirs.
        moved = self.weight_bytes + self.kv_per_token * (r.decode_context + r.num_prefill_tokens)
        flops = (self.flops_per_token * tokens
                 + self.flops_per_pair * (r.prefill_attention + r.decode_context))
        return self.step_overhead_s + max(moved / self.bandwidth, flops / self.peak)


def calibrated_efficiency(fit, local_hw: Hardware, local_arch: ModelArch,
                          precision: str = "fp32") -> Efficiency:
    """MBU and MFU that the engine achieved on the machine at hand, read off a fitted model:
    a batch-1 decode step (memory-bound) and a 512-token prefill (compute-bound) compared with
    the roofline of `local_hw` for the model the fit measured."""
    from types import SimpleNamespace

    p = canonical_precision(precision)
    weight = weight_bytes_per_gpu(local_arch, p, 1)
    kv = kv_bytes_per_token(local_arch, kv_dtype_for(p), 1)
    decode = SimpleNamespace(num_prefill_tokens=0, prefill_attention=0, num_prefill_seqs=0,
                             num_decode_seqs=1, decode_context=256, decode_max_context=256)
    prefill = SimpleNamespace(num_prefill_tokens=512, prefill_attention=512 * 513 // 2,
                              num_prefill_seqs=1, num_decode_seqs=0, decode_context=0,
                              decode_max_context=0)
    mem_bound = (weight + kv * 256) / local_hw.bandwidth_bytes_s
    flops = (2 * active_param_count(local_arch) * 512
             + 4 * local_arch.num_layers * local_arch.num_heads * local_arch.head_dim
             * prefill.prefill_attention)
    compute_bound = flops / local_hw.peak_flops(compute_dtype(p))
    mbu = min(1.0, mem_bound / fit.predict_record(decode))
    mfu = min(1.0, compute_bound / fit.predict_record(prefill))
    return Efficiency(mbu, mfu, f"measured by the engine on {local_hw.name} "
                                f"({fit.model.get('name')}, fit {fit.created or 'unsaved'})")
