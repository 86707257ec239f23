"""A tensor-parallel replica's memory: the smallest TP that holds a target batch, and the whole
answer `workbench plan memory` gives, whether or not the model fits at the TP asked.

Sizing follows workbench.plan.budget (usable = GPU memory x (1 - reserve); KV room = usable -
weights per GPU); TP sizes must divide the attention heads, as vLLM and TensorRT-LLM split
heads evenly across GPUs (vLLM distributed serving docs).
"""

from __future__ import annotations

from workbench.plan.budget import (
    DEFAULT_RESERVE,
    MAX_GPUS,
    _usable,
    max_concurrent_seqs,
    memory_plan,
)
from workbench.plan.hardware import Hardware
from workbench.plan.memory import (
    canonical_precision,
    check_group_size,
    kv_dtype_for,
    kv_estimate,
    param_count,
    weight_bytes,
    weight_bytes_per_gpu,
)
from workbench.plan.models_catalog import ModelArch
from workbench.plan.names import check_positive

PRECISIONS = ("bf16", "fp8", "int8", "int4")


def min_tp(m: ModelArch, hw: Hardware, precision: str = "bf16", context: int = 4096,
           concurrency: int = 1, kv_dtype: str = "auto",
           reserve_fraction: float = DEFAULT_RESERVE, group_size: int = 128,
           max_gpus: int = MAX_GPUS) -> int | None:
    """Smallest tensor-parallel size (dividing the heads) whose GPUs hold the weights plus the
    KV of `concurrency` sequences of `context` tokens; None if none up to `max_gpus` does."""
    check_positive(concurrency=concurrency, context=context)
    for tp in range(1, max_gpus + 1):
        if m.num_heads % tp == 0 and max_concurrent_seqs(
                m, hw, precision, context, kv_dtype, tp, reserve_fraction,
                group_size) >= concurrency:
            return tp
    return None


def memory_answer(m: ModelArch, hw: Hardware, precision: str = "bf16",
                  context: int | None = None, kv_dtype: str = "auto", tp: int = 1,
                  reserve_fraction: float = DEFAULT_RESERVE, group_size: int = 128) -> dict:
    """Weights, KV per request (per GPU and for the whole replica of `tp` GPUs), how many
    sequences fit, and the smallest TP that holds the model: an answer even when it does not
    fit at `tp` (then `fits` is False and `advice` says which TP does)."""
    check_group_size(group_size)
    p = canonical_precision(precision)
    ctx = m.context_length if context is None else int(context)
    kvd = kv_dtype_for(p, kv_dtype)
    kv = kv_estimate(m, ctx, kvd, tp)
    usable = _usable(hw, reserve_fraction)
    w_gpu = weight_bytes_per_gpu(m, p, tp, group_size)
    seqs = max_concurrent_seqs(m, hw, p, ctx, kvd, tp, reserve_fraction, group_size)
    need = min_tp(m, hw, p, max(ctx, 1), 1, kvd, reserve_fraction, group_size)
    out = {
        "model": m.name, "gpu": hw.name, "precision": p, "kv_dtype": kvd, "tp": tp,
        "context": ctx, "attention_kind": m.attention_kind, "params_b": param_count(m) / 1e9,
        "gpu_memory_gb": hw.memory_gb, "gpu_memory_gib": hw.memory_gib,
        "usable_gb_per_gpu": usable / 1e9,
        "weight_gb_total": weight_bytes(m, p, group_size) / 1e9,
        "weight_gb_per_gpu": w_gpu / 1e9,
        "kv_budget_gb_per_gpu": (usable - w_gpu) / 1e9,
        "kv_bytes_per_token": kv.bytes_per_token * tp,
        "kv_bytes_per_token_per_gpu": kv.bytes_per_token,
        "kv_gb_per_request": kv.bytes_per_request_replica / 1e9,
        "kv_gb_per_request_per_gpu": kv.bytes_per_request / 1e9,
        "kv_note": kv.note,
        "fits": seqs >= 1, "max_concurrent_seqs": seqs, "min_tp": need,
        "at_min_tp": None,
    }
    if seqs < 1 and need is not None:
        out["at_min_tp"] = memory_plan(m, hw, p, ctx, kvd, need, reserve_fraction,
                                       group_size).as_dict()
    out["advice"] = _advice(out, hw, reserve_fraction)
    return out


def _advice(a: dict, hw: Hardware, reserve: float) -> str:
    where = f"{a['tp']} x {hw.name}"
    if a["fits"]:
        return (f"fits: {a['max_concurrent_seqs']} sequences of {a['context']} tokens on "
                f"{where} ({a['weight_gb_per_gpu']:.1f} GB of weights and "
                f"{a['kv_gb_per_request_per_gpu']:.3g} GB of KV per request on each GPU)")
    usable = f"{a['usable_gb_per_gpu']:.1f} GB usable per {hw.name} (reserve {reserve:.0%})"
    if a["weight_gb_per_gpu"] > a["usable_gb_per_gpu"]:
        what = (f"does not fit on {where}: its {a['precision']} weights "
                f"({a['weight_gb_per_gpu']:.1f} GB per GPU) exceed the {usable}")
        needs = "the weights need"
    else:
        what = (f"does not fit on {where}: its {a['precision']} weights fit, but not one "
                f"{a['context']}-token request's KV ({a['kv_gb_per_request_per_gpu']:.3g} GB "
                f"per GPU) beside them in the {usable}")
        needs = "it needs"
    if a["min_tp"] is None:
        return (f"{what}; no tensor-parallel size up to {MAX_GPUS} holds it at "
                f"{a['precision']}: use a lower precision or a shorter context")
    at = a["at_min_tp"]
    return (f"{what}; {needs} TP={a['min_tp']}, the smallest tensor-parallel size that holds "
            f"the weights plus one {a['context']}-token request: at TP={a['min_tp']} each GPU "
            f"holds {at['weight_gb_per_gpu']:.1f} GB of weights and "
            f"{at['kv_gb_per_request_per_gpu']:.3g} GB of KV per request, and "
            f"{at['max_concurrent_seqs']} sequences fit")


def by_precision(m: ModelArch, hw: Hardware, context: int, kv_dtype: str = "auto", tp: int = 1,
                 reserve_fraction: float = DEFAULT_RESERVE, group_size: int = 128,
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
