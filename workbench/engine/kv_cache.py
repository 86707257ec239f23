"""The K/V tensors behind the block manager's pages, and how many blocks fit a budget."""

from __future__ import annotations

import os

import torch

from workbench.models.config import ModelConfig

# With no explicit budget, the pool holds every running sequence at full length, capped at
# this share of free memory (as vLLM's gpu_memory_utilization caps what it takes).
_DEFAULT_MEMORY_SHARE = 0.3


def bytes_per_block(cfg: ModelConfig, block_size: int, dtype: torch.dtype) -> int:
    return block_size * cfg.kv_bytes_per_token(torch.tensor([], dtype=dtype).element_size())


def _free_memory(device: torch.device) -> int:
    if device.type == "cuda":
        return torch.cuda.mem_get_info(device)[0]
    return os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")


def num_blocks_for(
    cfg: ModelConfig,
    block_size: int,
    dtype: torch.dtype,
    device: torch.device,
    num_kv_blocks: int | None,
    kv_cache_memory: int | None,
    max_num_seqs: int,
    max_model_len: int,
) -> int:
    if num_kv_blocks is not None:
        return num_kv_blocks
    per_block = bytes_per_block(cfg, block_size, dtype)
    if kv_cache_memory is not None:
        blocks = kv_cache_memory // per_block
        if blocks < 1:
            raise ValueError(f"kv_cache_memory: {kv_cache_memory} bytes holds no block "
                             f"(one block of {block_size} tokens needs {per_block} bytes)")
        return blocks
    wanted = max_num_seqs * -(-max_model_len // block_size)
    cap = int(_free_memory(device) * _DEFAULT_MEMORY_SHARE) // per_block
    return max(1, min(wanted, cap))


def allocate_kv_cache(cfg: ModelConfig, num_blocks: int, block_size: int, dtype, device):
    """One (K, V) pair per layer, each [num_blocks, block_size, kv_heads, head_dim]."""
    shape = (num_blocks, block_size, cfg.num_kv_heads, cfg.head_dim)
    return [
        (torch.zeros(shape, dtype=dtype, device=device), torch.zeros(shape, dtype=dtype,
                                                                     device=device))
        for _ in range(cfg.num_layers)
    ]
