"""Engine configuration: what a user sets, validated with errors that name the field."""

from __future__ import annotations

from dataclasses import dataclass

from workbench.engine.kv_dtype import check_kv_cache_dtype


@dataclass(slots=True)
class EngineConfig:
    dtype: str = "auto"  # auto | float32 | bfloat16 | float16
    device: str = "auto"  # auto | cpu | cuda
    block_size: int = 16
    num_kv_blocks: int | None = None  # explicit pool size wins over kv_cache_memory
    kv_cache_memory: int | None = None  # bytes for K/V of all layers
    max_num_seqs: int = 32
    max_num_batched_tokens: int = 2048
    max_model_len: int | None = None  # None = the model's max_position_embeddings
    enable_chunked_prefill: bool = True
    # vLLM V0 without chunked prefill: steps of new prompts only, before decodes resume.
    prefill_first: bool = False
    # Reuse the K/V of prompt prefixes computed before (vLLM's default since V1).
    enable_prefix_caching: bool = True
    seed: int = 0  # for requests that sample without a seed of their own
    # How K/V are stored: auto (the model's dtype) | int8 | fp8_e4m3 (see engine.kv_dtype).
    kv_cache_dtype: str = "auto"

    def __post_init__(self) -> None:
        for name in ("block_size", "max_num_seqs", "max_num_batched_tokens"):
            _positive_int(name, getattr(self, name))
        for name in ("num_kv_blocks", "kv_cache_memory", "max_model_len"):
            if getattr(self, name) is not None:
                _positive_int(name, getattr(self, name))
        if self.dtype not in ("auto", "float32", "bfloat16", "float16"):
            raise ValueError(f"dtype: must be one of auto, float32, bfloat16, float16; "
                             f"got {self.dtype!r}")
        if self.device not in ("auto", "cpu", "cuda"):
            raise ValueError(f"device: must be one of auto, cpu, cuda; got {self.device!r}")
        check_kv_cache_dtype(self.kv_cache_dtype)

    @classmethod
    def from_dict(cls, values: dict) -> EngineConfig:
        unknown = set(values) - set(cls.__slots__)
        if unknown:
            raise ValueError(f"unknown field(s) {', '.join(sorted(unknown))}; allowed: "
                             + ", ".join(cls.__slots__))
        return cls(**values)


def _positive_int(name: str, value) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f"{name}: must be an integer >= 1, got {value!r}")
