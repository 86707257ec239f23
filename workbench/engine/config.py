"""Engine configuration: what a user sets, validated with errors that name the field."""

from __future__ import annotations

from dataclasses import dataclass

from workbench.engine.kv_dtype import check_kv_cache_dtype

PREEMPTION_MODES = ("recompute", "swap")
# Weight-only quantization of the decoder layers (workbench.models.quantize applies it).
# none | int8 (per channel) | int4 (group-wise) | int4-awq (activation-aware int4) | fp8.
QUANTIZATIONS = ("none", "int8", "int4", "int4-awq", "fp8")


@dataclass(slots=True)
class EngineConfig:
    dtype: str = "auto"  # auto | float32 | bfloat16 | float16
    device: str = "auto"  # auto | cpu | cuda
    block_size: int = 16
    # The KV pool, first that is set (workbench.engine.sizing): a block count, bytes for K/V
    # of all layers, or a share of the memory (vLLM's gpu_memory_utilization); else room for
    # max_num_seqs full-length sequences within a default share of free memory.
    num_kv_blocks: int | None = None
    kv_cache_memory: int | None = None
    memory_utilization: float | None = None  # share in (0, 1] of the total below
    # Bytes memory_utilization takes a share of. Default: the device's total memory (CUDA) or
    # the host's (CPU), less what others use of it; a budget is the engine's own, all of it.
    memory_budget: int | None = None
    max_num_seqs: int = 32
    max_num_batched_tokens: int = 2048
    max_model_len: int | None = None  # None = the model's max_position_embeddings
    enable_chunked_prefill: bool = True
    # vLLM V0 without chunked prefill: steps of new prompts only, before decodes resume.
    prefill_first: bool = False
    # Reuse the K/V of prompt prefixes computed before (vLLM's default since V1).
    enable_prefix_caching: bool = True
    # What happens to a sequence preempted when the pool runs out: "recompute" (free its
    # blocks, recompute prompt + output later) or "swap" (copy its blocks to host memory and
    # back; recompute when the host pool is full).
    preemption_mode: str = "recompute"
    swap_space: int | None = None  # bytes of host memory for swapped K/V; None = the pool's size
    seed: int = 0  # for requests that sample without a seed of their own
    # How K/V are stored: auto (the model's dtype) | int8 | fp8_e4m3 (see engine.kv_dtype).
    kv_cache_dtype: str = "auto"
    quantization: str = "none"  # one of QUANTIZATIONS
    # Input channels per int4 scale/zero group (AWQ's and GPTQ's default: 128); must divide
    # every quantized layer's input width. Ignored by the other formats.
    quantization_group_size: int = 128
    # CPU fp32: projections and LM head run through oneDNN with weights converted once at
    # load (workbench.models.cpu_linear; 1.1-2x faster than F.linear measured). Applied by
    # LLMEngine.from_pretrained; a model passed to LLMEngine is left as it is.
    onednn_linear: bool = True
    # How decode rows attend: "sdpa" (gather each sequence's blocks, padded to the longest
    # context, then scaled_dot_product_attention) or "cpu-kernel" (fp32 on CPU, "auto" KV: a
    # C++ kernel reads the paged pool directly; compiled on first use, workbench.models.
    # paged_attention_cpu). Prefill chunks always use SDPA.
    attention_backend: str = "sdpa"

    def __post_init__(self) -> None:
        for name in ("block_size", "max_num_seqs", "max_num_batched_tokens",
                     "quantization_group_size"):
            _positive_int(name, getattr(self, name))
        for name in ("num_kv_blocks", "kv_cache_memory", "memory_budget", "max_model_len",
                     "swap_space"):
            if getattr(self, name) is not None:
                _positive_int(name, getattr(self, name))
        share = self.memory_utilization
        if share is not None and (isinstance(share, bool) or not isinstance(share, int | float)
                                  or not 0 < share <= 1):
            raise ValueError(f"memory_utilization: must be a number in (0, 1], the share of "
                             f"the memory the engine may use (e.g. 0.9); got {share!r}")
        if self.memory_budget is not None and share is None:
            # A budget alone would be silently ignored: the default pool does not use it.
            raise ValueError("memory_budget: is the total that memory_utilization takes a "
                             "share of; set memory_utilization too (e.g. 0.9, or 1.0 for all "
                             "of the budget)")
        if self.dtype not in ("auto", "float32", "bfloat16", "float16"):
            raise ValueError(f"dtype: must be one of auto, float32, bfloat16, float16; "
                             f"got {self.dtype!r}")
        if self.device not in ("auto", "cpu", "cuda"):
            raise ValueError(f"device: must be one of auto, cpu, cuda; got {self.device!r}")
        if self.preemption_mode not in PREEMPTION_MODES:
            raise ValueError(f"preemption_mode: must be one of {', '.join(PREEMPTION_MODES)}; "
                             f"got {self.preemption_mode!r}")
        for name in ("onednn_linear", "enable_chunked_prefill", "enable_prefix_caching",
                     "prefill_first"):
            if not isinstance(getattr(self, name), bool):
                raise ValueError(f"{name}: must be true or false, got {getattr(self, name)!r}")
        check_kv_cache_dtype(self.kv_cache_dtype)
        check_quantization(self.quantization)
        if self.attention_backend not in ATTENTION_BACKENDS:
            raise ValueError(f"attention_backend: must be one of {', '.join(ATTENTION_BACKENDS)};"
                             f" got {self.attention_backend!r}")
        if self.attention_backend == "cpu-kernel":
            for name, allowed in (("device", ("auto", "cpu")), ("dtype", ("auto", "float32")),
                                  ("kv_cache_dtype", ("auto",))):
                if getattr(self, name) not in allowed:
                    raise ValueError(f"attention_backend: cpu-kernel needs {name} "
                                     f"{' or '.join(allowed)}, got {getattr(self, name)!r}; "
                                     f"use attention_backend='sdpa'")

    @classmethod
    def from_dict(cls, values: dict) -> EngineConfig:
        unknown = set(values) - set(cls.__slots__)
        if unknown:
            raise ValueError(f"unknown field(s) {', '.join(sorted(unknown))}; allowed: "
                             + ", ".join(cls.__slots__))
        return cls(**values)


ATTENTION_BACKENDS = ("sdpa", "cpu-kernel")


def check_quantization(value) -> None:
    if value not in QUANTIZATIONS:
        raise ValueError(f"quantization: must be one of {', '.join(QUANTIZATIONS)}; "
                         f"got {value!r}")


def _positive_int(name: str, value) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f"{name}: must be an integer >= 1, got {value!r}")
