"""EngineConfig + model facts -> scheduler limits and KV pool size: the one home of that rule.

`LLMEngine` and the simulator's replicas both call `size_engine`, so a simulated replica
schedules with exactly the limits and the pool the real engine would build. Pure Python (no
torch): the engine measures its device's free memory and passes it in.

The pool, first rule that applies:
1. `num_kv_blocks` when set;
2. `kv_cache_memory` bytes / bytes per block;
3. otherwise room for every sequence at full length (max_num_seqs x max_model_len), capped
   by the memory the KV cache may take (`ModelFacts.kv_budget`): on the engine a share of
   the device's free memory (as vLLM's gpu_memory_utilization caps what it takes); for a
   fitted model the pool the measured engine built (its machine's cap, recorded in the fit);
   for a roofline model the memory left after weights.

A fit records the pool, not the free memory behind it: when the profiled engine's pool was
bounded by its own max_num_seqs rather than by memory, a scenario asking for more sequences
is sized to that smaller pool (set num_kv_blocks or kv_cache_memory to say otherwise).
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass
from pathlib import Path

from workbench.engine.config import EngineConfig
from workbench.engine.scheduler import SchedulerConfig

# With no explicit budget, the default pool takes at most this share of free memory.
DEFAULT_MEMORY_SHARE = 0.3


@dataclass(frozen=True, slots=True)
class ModelFacts:
    """What sizing needs to know about a model (and the machine it runs on)."""

    kv_bytes_per_token: int  # K and V of every layer, scales included (engine.kv_dtype)
    max_model_len: int  # the model's own limit (max_position_embeddings)
    eos_token_ids: tuple[int, ...] = ()
    kv_budget: int | None = None  # bytes the default pool may take; None = no cap known

    @classmethod
    def from_step_model(cls, step_model) -> ModelFacts:
        """The facts a fitted (or roofline) step model carries in its `model` / `engine` dicts."""
        model, engine = step_model.model, getattr(step_model, "engine", {}) or {}
        per_token = int(model["kv_bytes_per_token"])
        budget = model.get("kv_pool_bytes")  # a roofline model: memory left after weights
        recorded, fit_block = model.get("num_kv_blocks"), engine.get("block_size")
        if budget is None and recorded and fit_block:
            # The pool the measured engine built, as bytes, so another block size still fits it.
            budget = int(recorded) * int(fit_block) * per_token
        return cls(per_token, int(model["max_model_len"]),
                   tuple(model.get("eos_token_ids") or ()), budget)


@dataclass(frozen=True, slots=True)
class EngineSizing:
    scheduler: SchedulerConfig  # its max_model_len is the effective one
    num_kv_blocks: int


def size_engine(config: EngineConfig, facts: ModelFacts) -> EngineSizing:
    """Scheduler limits and KV pool size for `config` on a model; bad settings raise a
    ValueError naming the field."""
    max_len = config.max_model_len or facts.max_model_len
    if not config.enable_chunked_prefill and config.max_num_batched_tokens < max_len:
        # Without chunking a whole prompt must fit one step's budget, or it never runs.
        raise ValueError(
            f"max_num_batched_tokens: must be >= max_model_len ({max_len}) when "
            f"enable_chunked_prefill is False, got {config.max_num_batched_tokens}")
    sched = SchedulerConfig(config.max_num_seqs, config.max_num_batched_tokens, max_len,
                            config.enable_chunked_prefill, tuple(facts.eos_token_ids),
                            prefill_first=config.prefill_first,
                            enable_prefix_caching=config.enable_prefix_caching)
    return EngineSizing(sched, _pool_blocks(config, facts, max_len))


def uses_memory_budget(config: EngineConfig) -> bool:
    """True when the pool is the default one, capped by `ModelFacts.kv_budget` (so the engine
    need not measure free memory otherwise)."""
    return config.num_kv_blocks is None and config.kv_cache_memory is None


def _pool_blocks(config: EngineConfig, facts: ModelFacts, max_len: int) -> int:
    if config.num_kv_blocks is not None:
        return config.num_kv_blocks
    per_block = config.block_size * facts.kv_bytes_per_token
    if config.kv_cache_memory is not None:
        blocks = config.kv_cache_memory // per_block
        if blocks < 1:
            raise ValueError(f"kv_cache_memory: {config.kv_cache_memory} bytes holds no block "
                             f"(one block of {config.block_size} tokens needs {per_block} bytes)")
        return blocks
    wanted = config.max_num_seqs * math.ceil(max_len / config.block_size)
    if facts.kv_budget is None:
        return wanted
    return max(1, min(wanted, facts.kv_budget // per_block))


def default_kv_budget(free_bytes: int) -> int:
    """The bytes a default pool may take out of `free_bytes` of free device memory."""
    return int(free_bytes * DEFAULT_MEMORY_SHARE)


# -- free host memory, portably --------------------------------------------------------------
def host_memory_available() -> int:
    """Bytes of host memory available to a new allocation.

    psutil when installed (the portable answer, Windows included; ipykernel, a dependency,
    brings it); otherwise /proc/meminfo's MemAvailable (Linux; counts reclaimable page cache,
    unlike free pages); otherwise sysconf's available pages (other Unixes); otherwise
    sysconf's physical pages (macOS has no available-pages name; the default share keeps the
    pool well below the total)."""
    for probe in (_psutil_available, _meminfo_available, _sysconf_pages):
        found = probe()
        if found:
            return found
    raise ValueError("kv_cache_memory: cannot read this machine's free memory; set "
                     "kv_cache_memory (bytes) or num_kv_blocks")


def host_memory_total() -> int:
    """Bytes of host memory installed (what a machine's "memory" means in a hardware entry).

    psutil's total when installed (portable, Windows included); otherwise sysconf's physical
    pages (Linux, macOS, other Unixes)."""
    try:
        import psutil
    except ImportError:
        psutil = None
    if psutil is not None:
        return int(psutil.virtual_memory().total)
    names = getattr(os, "sysconf_names", {})
    found = _sysconf_pages({k: v for k, v in names.items() if k != "SC_AVPHYS_PAGES"})
    if found:
        return found
    raise ValueError("memory: cannot read this machine's total memory (install psutil)")


def _psutil_available() -> int | None:
    try:
        import psutil
    except ImportError:
        return None
    return int(psutil.virtual_memory().available)


def _meminfo_available(path: Path = Path("/proc/meminfo")) -> int | None:
    try:
        lines = path.read_text().splitlines()
    except OSError:
        return None
    for line in lines:
        if line.startswith("MemAvailable:"):
            return int(line.split()[1]) * 1024
    return None


def _sysconf_pages(names: dict | None = None) -> int | None:
    names = os.sysconf_names if names is None and hasattr(os, "sysconf_names") else names or {}
    if "SC_PAGE_SIZE" not in names:
        return None
    for key in ("SC_AVPHYS_PAGES", "SC_PHYS_PAGES"):
        if key in names:
            return os.sysconf(key) * os.sysconf("SC_PAGE_SIZE")
    return None
