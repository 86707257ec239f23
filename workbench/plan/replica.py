"""A tensor-parallel replica's memory: the whole answer `workbench plan memory` gives, whether
or not the model fits at the TP asked, and the same by weight precision.

Sizing, the smallest TP (`min_tp`) and the fits / does-not-fit sentence are
workbench.plan.budget's (usable = GPU memory x (1 - reserve); KV room = usable - weights per
GPU; TP sizes divide the attention heads); this module adds the whole replica's figures.
"""

from __future__ import annotations

from workbench.plan.budget import (  # noqa: F401  (min_tp re-exported: callers import it here)
    DEFAULT_RESERVE,
    fit_advice,
    max_concurrent_seqs,
    memory_fit,
    min_tp,
)
from workbench.plan.hardware import Hardware
from workbench.plan.memory import DEFAULT_GROUP_SIZE, check_group_size, kv_dtype_for, weight_bytes
from workbench.plan.models_catalog import ModelArch

PRECISIONS = ("bf16", "fp8", "int8", "int4")


def memory_answer(m: ModelArch, hw: Hardware, precision: str = "bf16",
                  context: int | None = None, kv_dtype: str = "auto", tp: int = 1,
                  reserve_fraction: float = DEFAULT_RESERVE,
                  group_size: int = DEFAULT_GROUP_SIZE) -> dict:
    """Weights, KV per request (per GPU and for the whole replica of `tp` GPUs), how many
    sequences fit, and the smallest TP that holds the model: an answer even when it does not
    fit at `tp` (then `fits` is False and `advice` says which TP does)."""
    check_group_size(group_size)
    plan = memory_fit(m, hw, precision, context, kv_dtype, tp, reserve_fraction, group_size)
    advice = fit_advice(m, hw, plan, reserve_fraction, group_size)
    return {
        "model": plan.model, "gpu": plan.gpu, "precision": plan.precision,
        "kv_dtype": plan.kv_dtype, "tp": tp, "context": plan.context,
        "attention_kind": plan.attention_kind, "params_b": plan.params_b,
        "gpu_memory_gb": hw.memory_gb, "gpu_memory_gib": hw.memory_gib,
        "usable_gb_per_gpu": plan.usable_gb_per_gpu,
        "weight_gb_total": plan.weight_gb_total,
        "weight_gb_per_gpu": plan.weight_gb_per_gpu,
        "kv_budget_gb_per_gpu": plan.kv_budget_gb_per_gpu,
        "kv_bytes_per_token": plan.kv_bytes_per_token_per_gpu * tp,
        "kv_bytes_per_token_per_gpu": plan.kv_bytes_per_token_per_gpu,
        "kv_gb_per_request": plan.kv_gb_per_request_per_gpu * tp,
        "kv_gb_per_request_per_gpu": plan.kv_gb_per_request_per_gpu,
        "kv_note": plan.kv_note,
        "fits": plan.fits, "max_concurrent_seqs": plan.max_concurrent_seqs,
        "min_tp": advice.min_tp,
        "at_min_tp": None if advice.at_min_tp is None else advice.at_min_tp.as_dict(),
        "advice": advice.text,
    }


def by_precision(m: ModelArch, hw: Hardware, context: int, kv_dtype: str = "auto", tp: int = 1,
                 reserve_fraction: float = DEFAULT_RESERVE,
                 group_size: int = DEFAULT_GROUP_SIZE,
                 precisions: tuple[str, ...] = PRECISIONS) -> list[dict]:
    """Per weight precision: total weight GB, sequences that fit at `tp`, and the smallest TP
    that holds the weights plus one request."""
    rows = []
    for p in precisions:
        kvd = kv_dtype_for(p, kv_dtype)
        rows.append({
            "precision": p, "weights_gb": weight_bytes(m, p, group_size) / 1e9,
            "max_seqs": max_concurrent_seqs(m, hw, p, context, kvd, tp, reserve_fraction,
                                            group_size),
            "min_tp": min_tp(m, hw, p, max(context, 1), 1, kvd, reserve_fraction, group_size)})
    return rows
