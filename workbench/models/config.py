"""A Llama-family checkpoint's config.json read into one plain record.

Reads both spellings of RoPE settings: the older `rope_theta` / `rope_scaling` keys most
published checkpoints use, and the `rope_parameters` dict transformers 5.x writes.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

SUPPORTED_ARCHITECTURES = ("LlamaForCausalLM", "MistralForCausalLM", "Qwen2ForCausalLM")


class UnsupportedModelError(ValueError):
    """The checkpoint's architecture (or a feature of it) is not implemented."""


@dataclass(frozen=True, slots=True)
class ModelConfig:
    architecture: str
    hidden_size: int
    intermediate_size: int
    num_layers: int
    num_heads: int
    num_kv_heads: int
    head_dim: int
    vocab_size: int
    max_position_embeddings: int
    rms_norm_eps: float
    rope_theta: float
    rope_scaling: dict | None
    tie_word_embeddings: bool
    attention_bias: bool
    sliding_window: int | None
    eos_token_ids: tuple[int, ...]
    bos_token_id: int | None
    torch_dtype: str

    @classmethod
    def from_dict(cls, cfg: dict) -> ModelConfig:
        archs = cfg.get("architectures") or []
        arch = archs[0] if archs else f"<model_type {cfg.get('model_type')!r}>"
        if arch not in SUPPORTED_ARCHITECTURES:
            raise UnsupportedModelError(
                f"architectures: {arch} is not supported; supported: "
                + ", ".join(SUPPORTED_ARCHITECTURES)
            )
        act = cfg.get("hidden_act", "silu")
        if act != "silu":
            raise UnsupportedModelError(f"hidden_act: {act!r} is not supported; supported: 'silu'")
        rope = dict(cfg.get("rope_parameters") or cfg.get("rope_scaling") or {})
        theta = float(cfg.get("rope_theta", rope.pop("rope_theta", 10000.0)))
        rope.pop("rope_theta", None)
        rope_type = rope.get("rope_type", rope.get("type", "default"))
        if rope_type not in ("default", "llama3"):
            raise UnsupportedModelError(
                f"rope_scaling.rope_type: {rope_type!r} is not supported; supported: "
                "'default', 'llama3'"
            )
        heads = cfg["num_attention_heads"]
        window = cfg.get("sliding_window")
        if arch == "Qwen2ForCausalLM" and not cfg.get("use_sliding_window", False):
            window = None
        eos_ids = _as_ids(cfg.get("eos_token_id"))
        return cls(
            architecture=arch,
            hidden_size=cfg["hidden_size"],
            intermediate_size=cfg["intermediate_size"],
            num_layers=cfg["num_hidden_layers"],
            num_heads=heads,
            num_kv_heads=cfg.get("num_key_value_heads") or heads,
            head_dim=cfg.get("head_dim") or cfg["hidden_size"] // heads,
            vocab_size=cfg["vocab_size"],
            max_position_embeddings=cfg.get("max_position_embeddings", 2048),
            rms_norm_eps=float(cfg.get("rms_norm_eps", 1e-6)),
            rope_theta=theta,
            rope_scaling=rope if rope_type == "llama3" else None,
            # Qwen2 checkpoints usually tie; Llama/Mistral default to untied.
            tie_word_embeddings=bool(cfg.get("tie_word_embeddings",
                                             arch == "Qwen2ForCausalLM")),
            attention_bias=arch == "Qwen2ForCausalLM" or bool(cfg.get("attention_bias", False)),
            sliding_window=window,
            eos_token_ids=eos_ids,
            bos_token_id=cfg.get("bos_token_id"),
            torch_dtype=str(cfg.get("torch_dtype") or cfg.get("dtype") or "float32"),
        )

    @classmethod
    def from_dir(cls, path: Path) -> ModelConfig:
        """config.json, with generation_config.json's eos_token_id merged into the EOS set:
        instruct checkpoints name their end-of-turn token only there (Llama 3's <|eot_id|>),
        and transformers' generate stops on it too."""
        cfg = json.loads((Path(path) / "config.json").read_text())
        gen_file = Path(path) / "generation_config.json"
        if gen_file.exists():
            extra = _as_ids(json.loads(gen_file.read_text()).get("eos_token_id"))
            own = _as_ids(cfg.get("eos_token_id"))
            cfg["eos_token_id"] = list(own) + [t for t in extra if t not in own]
        return cls.from_dict(cfg)

    def kv_bytes_per_token(self, dtype_bytes: int, kv_cache_dtype: str = "auto") -> int:
        """K and V of every layer for one token, scales included, when the model runs in a
        dtype of `dtype_bytes` and the cache stores `kv_cache_dtype` (see engine.kv_dtype)."""
        from workbench.engine.kv_dtype import kv_bytes_per_token, kv_storage_bytes

        return kv_bytes_per_token(self.num_layers, self.num_kv_heads, self.head_dim,
                                  *kv_storage_bytes(kv_cache_dtype, dtype_bytes))


def _as_ids(value) -> tuple[int, ...]:
    """An eos_token_id entry (an int, a list of ints, or absent) as a tuple."""
    if value is None:
        return ()
    return tuple(value) if isinstance(value, list) else (value,)
