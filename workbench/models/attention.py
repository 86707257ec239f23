"""Attention over a paged KV cache for one flattened batch of decode tokens and prefill chunks.

The runner lays the batch out as [decode tokens..., prefill chunk 1..., prefill chunk 2...].
Decode tokens are attended in one batched SDPA call over their gathered blocks (padding masked
out), or, with attention_backend="cpu-kernel", by a C++ kernel reading the pool in place;
each prefill chunk gets its own SDPA call, since chunks differ in length. Gathers go into
buffers allocated once per step and reused by every layer.

The layer's cache (engine.kv_cache) owns the storage format: `write` stores new K/V
(quantizing them for int8 / fp8) and `gather` returns blocks in the model's dtype. A prefill
chunk that attends only to itself uses the K/V as `write` reads them back, i.e. dequantized
when the cache is quantized (vLLM attends such chunks over the fresh, unquantized K/V): then
a prompt's logits do not depend on how it was chunked, preempted or found in the prefix
cache, since every query sees the same stored K/V.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F


@dataclass(slots=True)
class PrefillChunk:
    start: int  # offset of the chunk in the flat batch
    length: int  # query tokens in this chunk
    context_len: int  # tokens in cache after this step, including the chunk
    block_table: torch.Tensor | None  # blocks to gather; None when the chunk is the whole context
    mask: torch.Tensor | None  # [length, context_len] bool, True = attend; None = plain causal


@dataclass(slots=True)
class AttentionMetadata:
    slot_mapping: torch.Tensor  # [T] cache slot of each token's new K/V
    num_decode: int
    decode_block_tables: torch.Tensor | None  # [B, max_blocks]
    decode_mask: torch.Tensor | None  # [B, 1, 1, max_blocks * block_size]
    prefills: list[PrefillChunk]
    buffers: dict = field(default_factory=dict)  # per-step gather buffers shared by layers
    # The C++ decode kernel (attention_backend="cpu-kernel") and its (context lengths, first
    # attended positions) [num_decode] each; None: decode rows gather and use SDPA.
    decode_kernel: object = None
    decode_context: tuple | None = None
    attention_s: float = 0.0  # wall time in paged_attention this step (CPU: kernels are sync)


def paged_attention(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    kv_cache,
    meta: AttentionMetadata,
) -> torch.Tensor:
    """q: [T, H, D]; k, v: [T, KVH, D]; kv_cache: one layer's pages, shape [num_blocks,
    block_size, KVH, D] -> [T, H, D]."""
    started = time.perf_counter()
    num_blocks, block_size, kv_heads, head_dim = kv_cache.shape
    k, v = kv_cache.write(meta.slot_mapping, k, v)
    out = torch.empty_like(q)

    b = meta.num_decode
    if b and meta.decode_kernel is not None:
        out[:b] = meta.decode_kernel(q[:b], kv_cache.k, kv_cache.v, meta.decode_block_tables,
                                     *meta.decode_context)
    elif b:
        tables = meta.decode_block_tables
        keys, values = kv_cache.gather(tables.reshape(-1), meta.buffers, "decode")
        keys = keys.view(b, -1, kv_heads, head_dim).transpose(1, 2)
        values = values.view(b, -1, kv_heads, head_dim).transpose(1, 2)
        dec = F.scaled_dot_product_attention(
            q[:b].unsqueeze(2), keys, values, attn_mask=meta.decode_mask, enable_gqa=True
        )
        out[:b] = dec.squeeze(2)

    for i, chunk in enumerate(meta.prefills):
        s, n = chunk.start, chunk.length
        qc = q[s : s + n].transpose(0, 1).unsqueeze(0)
        if chunk.block_table is None:
            kc, vc = k[s : s + n], v[s : s + n]
        else:
            kc, vc = kv_cache.gather(chunk.block_table, meta.buffers, i)
            kc = kc.view(-1, kv_heads, head_dim)[: chunk.context_len]
            vc = vc.view(-1, kv_heads, head_dim)[: chunk.context_len]
        kc = kc.transpose(0, 1).unsqueeze(0)
        vc = vc.transpose(0, 1).unsqueeze(0)
        res = F.scaled_dot_product_attention(
            qc, kc, vc, attn_mask=chunk.mask, is_causal=chunk.mask is None, enable_gqa=True
        )
        out[s : s + n] = res.squeeze(0).transpose(0, 1)
    meta.attention_s += time.perf_counter() - started
    return out

