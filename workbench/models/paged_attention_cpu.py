"""The optional C++ decode-attention kernel over the paged KV pool (fp32, CPU).

`EngineConfig(attention_backend="cpu-kernel")` makes the decode rows of every step attend
through `paged_attention_cpu.cpp` instead of gathering their blocks for SDPA (the source says
why). It is compiled on first use with torch's C++ extension builder (g++, ~30 s once per
machine and source; cached afterwards under torch's extensions directory), so it stays opt-in:
the default ("sdpa") needs no compiler. Prefill chunks always use SDPA.
"""

from __future__ import annotations

import functools
import hashlib
import platform
from pathlib import Path

import torch

SOURCE = Path(__file__).with_name("paged_attention_cpu.cpp")


def _cpu_signature() -> str:
    """The build is tuned to this CPU (-march=native): a cached build must not be reused on a
    machine with other instructions, so the CPU's flags are part of its name."""
    try:
        flags = next((line for line in Path("/proc/cpuinfo").read_text().splitlines()
                      if line.startswith("flags")), "")
    except OSError:
        flags = ""
    return platform.machine() + flags


@functools.cache
def load_kernel():
    """The compiled module (builds it the first time). Raises RuntimeError with the compiler's
    complaint when the machine cannot build it."""
    from torch.utils.cpp_extension import load

    digest = hashlib.sha256(SOURCE.read_bytes() + _cpu_signature().encode()).hexdigest()[:12]
    try:
        return load(name=f"workbench_paged_attention_{digest}", sources=[str(SOURCE)],
                    extra_cflags=["-O3", "-march=native", "-fopenmp", "-fno-math-errno"],
                    extra_ldflags=["-fopenmp"], verbose=False)
    except Exception as e:  # the builder raises several types; all mean "no kernel here"
        raise RuntimeError(f"attention_backend: the cpu-kernel could not be built ({e}); "
                           f"use attention_backend='sdpa'") from e


def decode_attention(q: torch.Tensor, k_pool: torch.Tensor, v_pool: torch.Tensor,
                     block_tables: torch.Tensor, context_lens: torch.Tensor,
                     first_pos: torch.Tensor) -> torch.Tensor:
    """q [B, H, D] -> [B, H, D]: each row attends to positions first_pos..context_lens - 1 of
    its sequence, read from the pool through its block table."""
    return load_kernel().paged_decode_attention(
        q.contiguous(), k_pool, v_pool, block_tables, context_lens, first_pos,
        q.shape[-1] ** -0.5)
