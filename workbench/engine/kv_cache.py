"""The K/V tensors behind the block manager's pages.

How many blocks the pool holds is decided in `sizing.size_engine`, with the simulator, from
the memory `memory_profile.measure_device_memory` reads.
"""

from __future__ import annotations

import torch

from workbench.models.config import ModelConfig


def allocate_kv_cache(cfg: ModelConfig, num_blocks: int, block_size: int, dtype, device):
    """One (K, V) pair per layer, each [num_blocks, block_size, kv_heads, head_dim]."""
    shape = (num_blocks, block_size, cfg.num_kv_heads, cfg.head_dim)
    return [
        (torch.zeros(shape, dtype=dtype, device=device), torch.zeros(shape, dtype=dtype,
                                                                     device=device))
        for _ in range(cfg.num_layers)
    ]


def allocate_swap_space(kv_caches, num_blocks: int):
    """A host-memory twin of `kv_caches` with `num_blocks` blocks, for swap preemption: every
    per-block tensor of a layer (K, V and whatever else a layer stores per block) gets one.
    Pinned when the pool is on a GPU, so the copies can run at full PCIe speed."""
    if num_blocks == 0:
        return []
    pin = kv_caches[0][0].device.type == "cuda"
    return [tuple(torch.empty((num_blocks, *t.shape[1:]), dtype=t.dtype, device="cpu",
                              pin_memory=pin) for t in layer) for layer in kv_caches]


def copy_blocks(src_caches, dst_caches, pairs: list[tuple[int, int]]) -> None:
    """Copy whole blocks (source id, destination id) between two per-layer cache lists."""
    if not pairs:
        return
    src_ids = torch.tensor([s for s, _ in pairs])
    dst_ids = torch.tensor([d for _, d in pairs])
    for src_layer, dst_layer in zip(src_caches, dst_caches, strict=True):
        for src, dst in zip(src_layer, dst_layer, strict=True):
            rows = src.index_select(0, src_ids.to(src.device))
            dst.index_copy_(0, dst_ids.to(dst.device), rows.to(dst.device))
