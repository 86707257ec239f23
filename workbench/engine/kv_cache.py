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
