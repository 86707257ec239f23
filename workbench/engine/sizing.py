"""EngineConfig + model facts -> scheduler limits and KV pool size: the one home of that rule.

`LLMEngine` and the simulator's replicas both call `size_engine`, so a simulated replica
schedules with exactly the limits and the pool the real engine would build. Pure Python (no
torch): the engine measures its device's memory and passes it in.

The pool, first rule that applies (`pool_rule`):
1. `num_kv_blocks` when set;
2. `kv_cache_memory` bytes / bytes per block;
3. `memory_utilization` (vLLM's gpu_memory_utilization): utilization x total memory - weights
   - activation peak - other memory (`DeviceMemory`). The total is `memory_budget` when set
   (the engine's own allowance: memory others use is outside it, other = 0), else the
   device's total (CUDA) or the host's (CPU);
4. otherwise room for every sequence at full length (max_num_seqs x max_model_len), capped
   by the memory the KV cache may take (`ModelFacts.kv_budget`): on the engine a share of
   the device's free memory; for a fitted model the pool the measured engine built (its
   machine's cap, recorded in the fit); for a roofline model the memory left after weights.

A pool given as memory (2, 3) must hold one sequence of max_model_len, or sizing raises naming
the field, as vLLM refuses to start: such a pool would reject every long request. Capping
max_model_len is how to run in less memory. A block count (1) is taken as given (as vLLM takes
num_gpu_blocks_override: small pools make preemption experiments), and the default (4) keeps a
fit's recorded pool even where that machine's was smaller; there, requests that cannot fit are
rejected at submission (`Scheduler.check_request`).

A fit records the pool, not the free memory behind it: when the profiled engine's pool was
bounded by its own max_num_seqs rather than by memory, a scenario asking for more sequences
is sized to that smaller pool (set num_kv_blocks or kv_cache_memory to say otherwise).
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass, fields
from pathlib import Path

from workbench.engine.config import EngineConfig
from workbench.engine.scheduler import SchedulerConfig

# With no explicit budget, the default pool takes at most this share of free memory.
DEFAULT_MEMORY_SHARE = 0.3
POOL_RULES = ("num_kv_blocks", "kv_cache_memory", "memory_utilization", "default")


@dataclass(frozen=True, slots=True)
class DeviceMemory:
    """What a memory_utilization pool is carved from, and what else takes that memory.

    Measured by the engine at start (`workbench.engine.memory_profile`), or read back from a
    run's recorded memory report for the simulator."""

    total_bytes: int  # the device's total memory (CUDA) or the host's (CPU)
    total_source: str  # "device" | "host"
    weight_bytes: int
    activation_peak_bytes: int  # of one step of `profile_batch` (tokens, sequences)
    activation_measured: bool  # True: a profiling step on CUDA; False: fit.memory_model
    activation_tokens: int
    activation_seqs: int
    other_bytes: int = 0  # in use, not by this engine: other processes, runtime, CUDA context
    available_bytes: int | None = None  # free when the engine was sized; None: not known

    @classmethod
    def from_record(cls, record: dict | None) -> DeviceMemory | None:
        """From a run's recorded memory report (`MemoryReport.as_dict()["memory"]`). The free
        memory of the machine that ran it says nothing about a simulation: it is dropped."""
        if not record:
            return None
        return cls(**{f.name: record[f.name] for f in fields(cls)
                      if f.name != "available_bytes"})


@dataclass(frozen=True, slots=True)
class ModelFacts:
    """What sizing needs to know about a model (and the machine it runs on)."""

    kv_bytes_per_token: int  # K and V of every layer, scales included (engine.kv_dtype)
    max_model_len: int  # the model's own limit (max_position_embeddings)
    eos_token_ids: tuple[int, ...] = ()
    kv_budget: int | None = None  # bytes the default pool may take; None = no cap known
    memory: DeviceMemory | None = None  # what memory_utilization needs; None = not known
    sliding_window: int | None = None  # Mistral-style attention window, in tokens

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
        window = model.get("sliding_window")
        return cls(per_token, int(model["max_model_len"]),
                   tuple(model.get("eos_token_ids") or ()), budget,
                   DeviceMemory.from_record((model.get("memory_report") or {}).get("memory")),
                   int(window) if window else None)


@dataclass(frozen=True, slots=True)
class EngineSizing:
    scheduler: SchedulerConfig  # its max_model_len is the effective one
    num_kv_blocks: int
    num_swap_blocks: int = 0  # the host pool swap preemption copies blocks to


def size_engine(config: EngineConfig, facts: ModelFacts) -> EngineSizing:
    """Scheduler limits and KV pool size for `config` on a model; bad settings raise a
    ValueError naming the field."""
    max_len = effective_max_len(config, facts.max_model_len)
    if not config.enable_chunked_prefill and config.max_num_batched_tokens < max_len:
        # Without chunking a whole prompt must fit one step's budget, or it never runs.
        raise ValueError(
            f"max_num_batched_tokens: must be >= max_model_len ({max_len}) when "
            f"enable_chunked_prefill is False, got {config.max_num_batched_tokens}")
    sched = SchedulerConfig(config.max_num_seqs, config.max_num_batched_tokens, max_len,
                            config.enable_chunked_prefill, tuple(facts.eos_token_ids),
                            prefill_first=config.prefill_first,
                            enable_prefix_caching=config.enable_prefix_caching,
                            preemption_mode=config.preemption_mode,
                            sliding_window=facts.sliding_window)
    blocks = _pool_blocks(config, facts, max_len)
    return EngineSizing(sched, blocks, _swap_blocks(config, facts, blocks))


def effective_max_len(config: EngineConfig, model_max_len: int) -> int:
    """The config's max_model_len, else the model's own limit."""
    return config.max_model_len or model_max_len


def pool_rule(config: EngineConfig) -> str:
    """Which of POOL_RULES sizes the pool: the first field that is set, else "default"."""
    return next((name for name in POOL_RULES[:-1] if getattr(config, name) is not None),
                "default")


def profile_batch(config: EngineConfig, max_len: int) -> list[int]:
    """Sequence lengths of the step the activation peak is taken at: max_num_batched_tokens
    shared by max_num_seqs sequences of at most max_model_len (vLLM's profiling run), so the
    logits of as many sequences as can sample in one step are in it."""
    tokens = min(config.max_num_batched_tokens, config.max_num_seqs * max_len)
    seqs = min(config.max_num_seqs, tokens)
    return [tokens // seqs + (i < tokens % seqs) for i in range(seqs)]


def memory_total(config: EngineConfig, memory: DeviceMemory) -> tuple[int, int, str]:
    """(total, other, source): the memory that memory_utilization takes a share of, and what
    others use of it."""
    if config.memory_budget is not None:
        return config.memory_budget, 0, "memory_budget"
    return memory.total_bytes, memory.other_bytes, memory.total_source


def room_for_kv(share: float, total: int, other: int, memory: DeviceMemory) -> int:
    """share x total - weights - activation peak - other: what is left for the KV cache."""
    return int(share * total) - memory.weight_bytes - memory.activation_peak_bytes - other


def _pool_blocks(config: EngineConfig, facts: ModelFacts, max_len: int) -> int:
    rule = pool_rule(config)
    if rule == "num_kv_blocks":
        return config.num_kv_blocks
    per_block = config.block_size * facts.kv_bytes_per_token
    if rule == "kv_cache_memory":
        blocks = config.kv_cache_memory // per_block
        _require_one_sequence(
            "kv_cache_memory", f"{config.kv_cache_memory} bytes hold", blocks, config, facts,
            max_len, f"raise kv_cache_memory to at least "
            f"{_blocks_for(config, max_len) * per_block} bytes")
        return blocks
    if rule == "memory_utilization":
        return _utilization_blocks(config, facts, max_len, per_block)
    wanted = config.max_num_seqs * _blocks_for(config, max_len)
    if facts.kv_budget is None:
        return wanted
    return max(1, min(wanted, facts.kv_budget // per_block))


def _swap_blocks(config: EngineConfig, facts: ModelFacts, pool_blocks: int) -> int:
    """Host blocks for swap preemption: none unless swapping; by default as many as the pool
    (vLLM sizes its host pool by swap_space bytes, 4 GiB by default: a pool's worth here)."""
    if config.preemption_mode != "swap":
        return 0
    if config.swap_space is None:
        return pool_blocks
    return config.swap_space // (config.block_size * facts.kv_bytes_per_token)


def _utilization_blocks(config: EngineConfig, facts: ModelFacts, max_len: int,
                        per_block: int) -> int:
    mem, share = facts.memory, config.memory_utilization
    if mem is None:
        raise ValueError("memory_utilization: this model's memory (total, weights, activation "
                         "peak) is not known here (a roofline model, or a fit of runs that "
                         "recorded no memory report); set kv_cache_memory (bytes) or "
                         "num_kv_blocks")
    lengths = profile_batch(config, max_len)
    if (mem.activation_tokens, mem.activation_seqs) != (sum(lengths), len(lengths)):
        raise ValueError(
            f"memory_utilization: the recorded activation peak is for a step of "
            f"{mem.activation_tokens} tokens in {mem.activation_seqs} sequences, this "
            f"configuration's largest step is {sum(lengths)} tokens in {len(lengths)}; use "
            "the recorded max_num_batched_tokens and max_num_seqs, or set kv_cache_memory "
            "(bytes) or num_kv_blocks")
    total, other, source = memory_total(config, mem)
    considered, pool = int(share * total), room_for_kv(share, total, other, mem)
    blocks = max(pool, 0) // per_block
    more = " or memory_budget" if source == "memory_budget" else ""
    _require_one_sequence(
        "memory_utilization",
        f"{share:g} x {format_bytes(total)} ({source}) = {format_bytes(considered)} leaves "
        f"{format_bytes(max(pool, 0))} for the KV cache after model weights "
        f"({format_bytes(mem.weight_bytes)}), activation peak "
        f"({format_bytes(mem.activation_peak_bytes)}) and other memory "
        f"({format_bytes(other)}), which holds", blocks, config, facts, max_len,
        f"raise memory_utilization (at most 1){more}")
    wants = blocks * per_block + mem.activation_peak_bytes
    if mem.available_bytes is not None and wants > mem.available_bytes:
        # Only a memory_budget can ask for more than is free (without one, what others use
        # is subtracted as `other`). Past free memory a CPU run swaps, a CUDA one fails later.
        raise ValueError(
            f"{'memory_budget' if more else 'memory_utilization'}: the KV cache "
            f"({format_bytes(blocks * per_block)}) and activation peak "
            f"({format_bytes(mem.activation_peak_bytes)}) asked for exceed the "
            f"{format_bytes(mem.available_bytes)} free now; lower memory_utilization{more}")
    return blocks


def _blocks_for(config: EngineConfig, tokens: int) -> int:
    return math.ceil(tokens / config.block_size)


def _require_one_sequence(field: str, holds: str, blocks: int, config: EngineConfig,
                          facts: ModelFacts, max_len: int, fix: str) -> None:
    """A pool given as memory must hold one max_model_len sequence (vLLM's startup check)."""
    need = _blocks_for(config, max_len)
    if blocks >= need:
        return
    tokens = blocks * config.block_size
    shorter = f", or set max_model_len to at most {tokens}" if tokens else ""
    raise ValueError(
        f"{field}: {holds} {blocks} blocks = {tokens} tokens, but one sequence of "
        f"max_model_len {max_len} tokens needs {need} blocks of {config.block_size} tokens "
        f"({format_bytes(need * config.block_size * facts.kv_bytes_per_token)} at "
        f"{facts.kv_bytes_per_token} bytes per token); {fix}{shorter}")


def format_bytes(n: int | float) -> str:
    """Binary units, as device memory is sold and vLLM logs it (1 GiB = 2**30 bytes)."""
    for unit, size in (("GiB", 2**30), ("MiB", 2**20), ("KiB", 2**10)):
        if abs(n) >= size:
            return f"{n / size:.2f} {unit}"
    return f"{int(n)} B"


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
