"""KV cache storage formats: their names and the bytes one token takes (pure Python, no torch).

The one home of the KV bytes-per-token formula: the engine sizes its pool with it, the fit
records what the engine computed with it (so the simulator sizes replicas by it), and the
planner's analytic KV bytes (`workbench.plan.memory.kv_bytes_per_token`) call it too.

Formats (`EngineConfig.kv_cache_dtype`):
- "auto": K and V in the model's dtype (no scales).
- "int8": symmetric int8, one scale per token per KV head (absmax / 127 of that head's
  head_dim values), stored beside the cache in the model's dtype. Per-token scales follow
  K's and V's range token by token, so no calibration is needed; they cost one model-dtype
  value per head_dim int8 values.
- "fp8_e4m3": torch.float8_e4m3fn values divided by one scale per layer and KV head. The scale
  is 1.0, as in vLLM when a checkpoint ships no calibrated k/v scales: e4m3 is a floating
  format (3 mantissa bits anywhere in [2^-6, 448]), so values of order 1 need no scaling; a
  scale tensor per layer and head is kept so a calibrated one can be loaded in its place.
  Those scales are a fixed 2 x layers x KV heads fp32 values, not a per-token cost.
"""

from __future__ import annotations

KV_CACHE_DTYPES = ("auto", "int8", "fp8_e4m3")


def check_kv_cache_dtype(value) -> None:
    if value not in KV_CACHE_DTYPES:
        raise ValueError(f"kv_cache_dtype: must be one of {', '.join(KV_CACHE_DTYPES)}; "
                         f"got {value!r}")


def kv_storage_bytes(kv_cache_dtype: str, model_dtype_bytes: int) -> tuple[int, int]:
    """(bytes per K or V value, scale bytes per token per KV head) of a storage format."""
    check_kv_cache_dtype(kv_cache_dtype)
    if kv_cache_dtype == "int8":
        return 1, model_dtype_bytes  # the per-token scale is kept in the model's dtype
    if kv_cache_dtype == "fp8_e4m3":
        return 1, 0  # per-layer-and-head scales only
    return model_dtype_bytes, 0


def kv_bytes_per_token(num_layers: int, num_kv_heads: int, head_dim: int, value_bytes: int,
                       scale_bytes: int = 0) -> int:
    """K and V of every layer for one token: 2 x layers x KV heads x (head_dim x bytes per
    value + scale bytes per token and head)."""
    return 2 * num_layers * num_kv_heads * (head_dim * value_bytes + scale_bytes)
