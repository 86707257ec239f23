"""Where an engine's memory went: the report vLLM logs at start, as a dataclass.

Total considered (memory_utilization x total, or the whole total) = model weights + activation
peak + other memory + KV cache + what is left. Built from the same numbers `sizing.size_engine`
sized the pool with, so the report states the rule's own arithmetic. Pure Python.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

from workbench.engine.config import EngineConfig
from workbench.engine.sizing import (
    DEFAULT_MEMORY_SHARE,
    DeviceMemory,
    EngineSizing,
    ModelFacts,
    format_bytes,
    memory_total,
    pool_rule,
    room_for_kv,
)

RULE_TEXT = {
    "num_kv_blocks": "sized by num_kv_blocks",
    "kv_cache_memory": "sized by kv_cache_memory",
    "memory_utilization": "sized by memory_utilization",
    "default": f"sized by default: max_num_seqs x max_model_len, at most "
               f"{DEFAULT_MEMORY_SHARE:.0%} of free memory",
}
TOTAL_TEXT = {"device": "total device memory", "host": "total host memory",
              "memory_budget": "memory_budget"}


@dataclass(frozen=True, slots=True)
class MemoryReport:
    device: str
    pool_rule: str  # which EngineConfig field sized the pool (sizing.POOL_RULES)
    memory: DeviceMemory  # as measured (before any memory_budget)
    total_bytes: int  # memory_budget, else memory.total_bytes
    total_source: str  # "memory_budget" | "device" | "host"
    memory_utilization: float | None  # None: the report considers the whole total
    other_bytes: int  # 0 under a memory_budget (others' use is outside it)
    kv_bytes_per_token: int
    block_size: int
    num_blocks: int
    max_model_len: int
    num_swap_blocks: int = 0  # host blocks for swap preemption (host memory, not counted above)

    @property
    def share(self) -> float:
        return 1.0 if self.memory_utilization is None else self.memory_utilization

    @property
    def considered_bytes(self) -> int:
        return int(self.share * self.total_bytes)

    @property
    def kv_cache_bytes(self) -> int:
        return self.num_blocks * self.block_size * self.kv_bytes_per_token

    @property
    def max_concurrent_tokens(self) -> int:
        return self.num_blocks * self.block_size

    @property
    def max_concurrency(self) -> float:
        """Requests of max_model_len tokens the pool holds at once (vLLM's "Maximum
        concurrency ... per request")."""
        return self.max_concurrent_tokens / self.max_model_len

    @property
    def left_bytes(self) -> int:
        """Considered memory nobody takes; negative when the pool was given by hand and
        over-commits it."""
        return (room_for_kv(self.share, self.total_bytes, self.other_bytes, self.memory)
                - self.kv_cache_bytes)

    def lines(self) -> list[str]:
        m, b = self.memory, format_bytes
        share = ("" if self.memory_utilization is None
                 else f" x memory_utilization ({self.memory_utilization:g}) = "
                      f"{b(self.considered_bytes)}")
        how = "measured" if m.activation_measured else "modelled"
        return [
            f"memory on {self.device}: {TOTAL_TEXT[self.total_source]} "
            f"({b(self.total_bytes)}){share}",
            f"  model weights take {b(m.weight_bytes)}",
            f"  activation peak takes {b(m.activation_peak_bytes)} ({how} for one step of "
            f"{m.activation_tokens:,} tokens in {m.activation_seqs:,} sequences)",
            f"  other memory takes {b(self.other_bytes)} (in use, but not by this engine)",
            f"  KV cache takes {b(self.kv_cache_bytes)} ({RULE_TEXT[self.pool_rule]})",
            f"  left: {b(self.left_bytes)}",
            f"KV cache: {self.num_blocks:,} blocks x {self.block_size} tokens x "
            f"{self.kv_bytes_per_token:,} bytes per token; maximum concurrent tokens: "
            f"{self.max_concurrent_tokens:,}",
            f"maximum concurrency for {self.max_model_len:,} tokens per request: "
            f"{self.max_concurrency:.2f}x",
        ] + ([f"swap space: {self.num_swap_blocks:,} blocks of host memory "
              f"({b(self.num_swap_blocks * self.block_size * self.kv_bytes_per_token)})"]
             if self.num_swap_blocks else [])

    def __str__(self) -> str:
        return "\n".join(self.lines())

    def as_dict(self) -> dict:
        """For run records: the fields (the measured `memory` nested, what
        `DeviceMemory.from_record` reads back) and the derived figures."""
        return asdict(self) | {
            "considered_bytes": self.considered_bytes, "kv_cache_bytes": self.kv_cache_bytes,
            "max_concurrent_tokens": self.max_concurrent_tokens,
            "max_concurrency": self.max_concurrency, "left_bytes": self.left_bytes}


def report_from_record(record: dict) -> MemoryReport:
    """A report back from `as_dict()` (a run manifest's `target.memory_report`)."""
    fields = {k: v for k, v in record.items() if k in MemoryReport.__slots__}
    return MemoryReport(**fields | {"memory": DeviceMemory.from_record(record["memory"])})


def memory_report(config: EngineConfig, facts: ModelFacts, sizing: EngineSizing,
                  device: str) -> MemoryReport:
    """The report for a pool `size_engine(config, facts)` sized; facts.memory must be known."""
    if facts.memory is None:
        raise ValueError("memory: this model's memory was not measured; no report")
    total, other, source = memory_total(config, facts.memory)
    return MemoryReport(device, pool_rule(config), facts.memory, total, source,
                        config.memory_utilization, other, facts.kv_bytes_per_token,
                        config.block_size, sizing.num_kv_blocks, sizing.scheduler.max_model_len,
                        sizing.num_swap_blocks)
