"""Paged vs contiguous KV allocation: how much of the reserved cache holds real tokens.

A contiguous allocator must reserve a sequence's largest possible length before the first
token, because the cache of one sequence is one tensor slice: either the model's whole context
(a static cache, as in FasterTransformer or a preallocated HF cache) or the request's own cap,
prompt + max_tokens (as in Orca). The answer's real length is unknown in advance, so the
difference is reserved and never used. Paged allocation (vLLM, and this engine) hands out
fixed-size blocks as tokens arrive, so a sequence wastes at most block_size - 1 slots.
Kwon et al. 2023 ("Efficient Memory Management for LLM Serving with PagedAttention", §3)
measured that only 20-38% of the KV memory of contiguous systems held tokens.

All figures are per request at the moment it holds the most tokens (its last token).
"""

from __future__ import annotations

import numpy as np
import pandas as pd

POLICIES = {
    "tokens held": "the tokens themselves (prompt + generated)",
    "paged": "whole blocks of block_size tokens, allocated as tokens arrive",
    "contiguous (prompt + max_tokens)": "the request's cap, reserved up front (Orca-style)",
    "contiguous (max_model_len)": "the model's whole context per sequence (static cache)",
}


def _positive_ints(name: str, values) -> np.ndarray:
    arr = np.atleast_1d(np.asarray(values))
    if arr.size == 0 or not np.issubdtype(arr.dtype, np.integer) or (arr < 0).any():
        raise ValueError(f"{name}: must be non-negative integers, got {values!r}")
    return arr.astype(np.int64)


def reserved_tokens(prompt_tokens, output_tokens, max_tokens, max_model_len: int,
                    block_size: int = 16) -> dict[str, np.ndarray]:
    """KV slots each request occupies under every policy of POLICIES (one array per policy)."""
    prompt = _positive_ints("prompt_tokens", prompt_tokens)
    output = _positive_ints("output_tokens", output_tokens)
    cap = np.broadcast_to(_positive_ints("max_tokens", max_tokens), prompt.shape)
    if block_size < 1:
        raise ValueError(f"block_size: must be >= 1, got {block_size}")
    held = prompt + output
    if (output > cap).any():
        raise ValueError("output_tokens: a request generated more than its max_tokens")
    if (prompt + cap > max_model_len).any():
        raise ValueError(f"max_tokens: prompt + max_tokens exceeds max_model_len "
                         f"({max_model_len}) for some requests; such requests are rejected")
    return {
        "tokens held": held,
        "paged": -(-held // block_size) * block_size,
        "contiguous (prompt + max_tokens)": prompt + cap,
        "contiguous (max_model_len)": np.full_like(held, max_model_len),
    }


def allocation_table(prompt_tokens, output_tokens, max_tokens, max_model_len: int,
                     block_size: int = 16, kv_bytes_per_token: int | None = None,
                     pool_tokens: int | None = None) -> pd.DataFrame:
    """One row per policy: slots reserved, the share holding tokens, and what a pool holds.

    `pool_tokens` (a KV pool's size in tokens) adds how many of these requests fit at once,
    on average: the pool divided by the mean reservation."""
    reserved = reserved_tokens(prompt_tokens, output_tokens, max_tokens, max_model_len,
                               block_size)
    held = reserved["tokens held"].sum()
    rows = []
    for policy, slots in reserved.items():
        row = {"policy": policy, "reserved_tokens": int(slots.sum()),
               "utilization": float(held / slots.sum()),
               "waste": float(1 - held / slots.sum())}
        if kv_bytes_per_token:
            row["reserved_mb"] = slots.sum() * kv_bytes_per_token / 1e6
        if pool_tokens:
            row["concurrent_requests"] = int(pool_tokens // slots.mean())
        rows.append(row)
    return pd.DataFrame(rows)


def measured_block_utilization(steps: pd.DataFrame, block_size: int) -> pd.Series:
    """Per engine step: K/V tokens the step attended over / block slots in use.

    An estimate, best read as a median over steps: blocks are counted after the step, so a
    sequence that finished in it adds context but no blocks (that step reads high), while
    sequences holding blocks outside the step (waiting between chunks) read low."""
    used = steps["kv_blocks_used"] * block_size
    busy = used > 0
    return (steps.loc[busy, "sum_context_tokens"] / used[busy]).rename("utilization")
