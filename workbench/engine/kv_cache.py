"""The K/V tensors behind the block manager's pages, and the free memory a default pool sizes by.

How many blocks the pool holds is decided in `sizing.size_engine`, with the simulator.
"""

from __future__ import annotations

import torch

from workbench.engine.sizing import host_memory_available
from workbench.models.config import ModelConfig


def free_memory(device: torch.device) -> int:
    if device.type == "cuda":
        return torch.cuda.mem_get_info(device)[0]
    return host_memory_available()


def allocate_kv_cache(cfg: ModelConfig, num_blocks: int, block_size: int, dtype, device):
    """One (K, V) pair per layer, each [num_blocks, block_size, kv_heads, head_dim]."""
    shape = (num_blocks, block_size, cfg.num_kv_heads, cfg.head_dim)
    return [
        (torch.zeros(shape, dtype=dtype, device=device), torch.zeros(shape, dtype=dtype,
                                                                     device=device))
        for _ in range(cfg.num_layers)
    ]
