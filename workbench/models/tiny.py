"""The embedded default models: Hugging Face-format checkpoints built offline, deterministically.

Weights are random (seeded) but scaled so activations stay O(1) and logits are well spread: a
greedy argmax then has clear margins, which makes token-for-token comparisons with Hugging Face
robust to float rounding. `resolve_model` turns a preset name or a directory into a path and
builds presets once into a cache.
"""

from __future__ import annotations

import json
import math
import os
import shutil
import tempfile
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

import torch
from safetensors.torch import save_file

from workbench.models.tokenizer_builder import BOS_ID, EOS_ID, PAD_ID, train_tokenizer

TOKENIZER_VOCAB = 4096
_BUILD_VERSION = 1  # bump when the builder's output changes, so caches are rebuilt


@dataclass(frozen=True)
class ModelSpec:
    """Architecture of a random checkpoint; `extra` lands verbatim in config.json."""

    architecture: str = "LlamaForCausalLM"
    hidden_size: int = 256
    num_layers: int = 4
    num_heads: int = 8
    num_kv_heads: int = 4
    intermediate_size: int = 688
    vocab_size: int = TOKENIZER_VOCAB
    max_position_embeddings: int = 2048
    tie_word_embeddings: bool = False
    attention_bias: bool = False
    rope_theta: float = 10000.0
    extra: dict = field(default_factory=dict)

    @property
    def head_dim(self) -> int:
        return self.hidden_size // self.num_heads


PRESETS: dict[str, ModelSpec] = {
    # ~5M parameters: the model tests use.
    "tiny": ModelSpec(),
    # ~57M parameters: the model benchmarks use.
    "small": ModelSpec(hidden_size=768, num_layers=8, num_heads=12, num_kv_heads=4,
                       intermediate_size=2048, max_position_embeddings=4096),
    # Family variants, so Mistral (sliding window) and Qwen2 (qkv bias, tied) paths are covered.
    "tiny-mistral": ModelSpec(architecture="MistralForCausalLM", extra={"sliding_window": 64}),
    "tiny-qwen2": ModelSpec(architecture="Qwen2ForCausalLM", tie_word_embeddings=True,
                            attention_bias=True, rope_theta=1_000_000.0,
                            extra={"use_sliding_window": False}),
    # Trained, not random: shipped in workbench/models/trained/ (see workbench.models.train).
    # ~6.8M parameters: the target.
    "tiny-trained": ModelSpec(hidden_size=256, num_layers=6, num_heads=4, num_kv_heads=2,
                              intermediate_size=768, extra={"torch_dtype": "bfloat16"}),
    # ~0.9M parameters, same tokenizer: a draft model for speculative decoding.
    "tiny-draft": ModelSpec(hidden_size=128, num_layers=2, num_heads=2, num_kv_heads=1,
                            intermediate_size=384, tie_word_embeddings=True,
                            extra={"torch_dtype": "bfloat16"}),
}
# Presets whose weights ship inside the package (trained once; never built at run time).
TRAINED_DIR = Path(__file__).resolve().parent / "trained"
TRAINED_PRESETS = ("tiny-trained", "tiny-draft")

_MODEL_TYPES = {
    "LlamaForCausalLM": "llama",
    "MistralForCausalLM": "mistral",
    "Qwen2ForCausalLM": "qwen2",
}


def hf_config(spec: ModelSpec) -> dict:
    """config.json in the key style most published checkpoints use (rope_theta, rope_scaling)."""
    cfg = {
        "architectures": [spec.architecture],
        "model_type": _MODEL_TYPES[spec.architecture],
        "hidden_size": spec.hidden_size,
        "intermediate_size": spec.intermediate_size,
        "num_hidden_layers": spec.num_layers,
        "num_attention_heads": spec.num_heads,
        "num_key_value_heads": spec.num_kv_heads,
        "head_dim": spec.head_dim,
        "hidden_act": "silu",
        "max_position_embeddings": spec.max_position_embeddings,
        "rms_norm_eps": 1e-5,
        "rope_theta": spec.rope_theta,
        "vocab_size": spec.vocab_size,
        "tie_word_embeddings": spec.tie_word_embeddings,
        "bos_token_id": BOS_ID,
        "eos_token_id": EOS_ID,
        "pad_token_id": PAD_ID,
        "torch_dtype": "float32",
    }
    if spec.architecture == "LlamaForCausalLM":
        cfg["attention_bias"] = spec.attention_bias
    cfg.update(spec.extra)
    return cfg


def random_weights(spec: ModelSpec, seed: int) -> dict[str, torch.Tensor]:
    """HF Llama-family tensor names with seeded, variance-preserving random values."""
    gen = torch.Generator().manual_seed(seed)

    def normal(*shape: int, std: float) -> torch.Tensor:
        return torch.randn(*shape, generator=gen) * std

    h, d, inter = spec.hidden_size, spec.head_dim, spec.intermediate_size
    residual_std = 1.0 / math.sqrt(2 * spec.num_layers)  # keeps the residual stream O(1)
    w: dict[str, torch.Tensor] = {"model.embed_tokens.weight": normal(spec.vocab_size, h, std=1.0)}
    for i in range(spec.num_layers):
        p = f"model.layers.{i}."
        w[p + "input_layernorm.weight"] = 1.0 + normal(h, std=0.1)
        w[p + "post_attention_layernorm.weight"] = 1.0 + normal(h, std=0.1)
        for name, out in (("q", spec.num_heads * d), ("k", spec.num_kv_heads * d),
                          ("v", spec.num_kv_heads * d)):
            w[p + f"self_attn.{name}_proj.weight"] = normal(out, h, std=h**-0.5)
            if spec.attention_bias:
                w[p + f"self_attn.{name}_proj.bias"] = normal(out, std=0.1)
        w[p + "self_attn.o_proj.weight"] = normal(h, spec.num_heads * d,
                                                  std=residual_std * (spec.num_heads * d) ** -0.5)
        w[p + "mlp.gate_proj.weight"] = normal(inter, h, std=h**-0.5)
        w[p + "mlp.up_proj.weight"] = normal(inter, h, std=h**-0.5)
        w[p + "mlp.down_proj.weight"] = normal(h, inter, std=residual_std * inter**-0.5)
    w["model.norm.weight"] = 1.0 + normal(h, std=0.1)
    if not spec.tie_word_embeddings:
        # Logit std ~4: peaked enough that greedy ties are vanishingly rare.
        w["lm_head.weight"] = normal(spec.vocab_size, h, std=4.0 * h**-0.5)
    return {k: v.contiguous() for k, v in w.items()}


def cache_root() -> Path:
    return Path(os.environ.get("WORKBENCH_CACHE", Path.home() / ".cache" / "workbench"))


def _tokenizer_dir() -> Path:
    """Train the shared tokenizer once per machine (about 3 s) and reuse it."""
    target = cache_root() / f"tokenizer-bpe{TOKENIZER_VOCAB}-v{_BUILD_VERSION}"
    if not (target / "tokenizer.json").exists():
        with _staging(target) as tmp:
            train_tokenizer(TOKENIZER_VOCAB, tmp, model_max_length=1 << 20)
    return target


class _staging:
    """Build into a temporary sibling directory and rename it into place: never half-written."""

    def __init__(self, target: Path):
        self.target = target

    def __enter__(self) -> Path:
        self.target.parent.mkdir(parents=True, exist_ok=True)
        self.tmp = Path(tempfile.mkdtemp(prefix=self.target.name + ".", dir=self.target.parent))
        return self.tmp

    def __exit__(self, exc_type, exc, tb) -> None:
        if exc_type is None:
            try:
                os.replace(self.tmp, self.target)
                return
            except OSError:  # another process won the race; its copy is identical
                pass
        shutil.rmtree(self.tmp, ignore_errors=True)


def write_checkpoint(path: str | os.PathLike, spec: ModelSpec, seed: int = 0) -> Path:
    """Write config.json, model.safetensors and tokenizer files for `spec` into `path`."""
    path = Path(path)
    path.mkdir(parents=True, exist_ok=True)
    if spec.vocab_size < TOKENIZER_VOCAB:
        raise ValueError(f"vocab_size: must be >= {TOKENIZER_VOCAB} (the tokenizer's), "
                         f"got {spec.vocab_size}")
    (path / "config.json").write_text(json.dumps(hf_config(spec), indent=2))
    save_file(random_weights(spec, seed), str(path / "model.safetensors"),
              metadata={"format": "pt"})
    for f in _tokenizer_dir().iterdir():
        shutil.copy(f, path / f.name)
    (path / "workbench-spec.json").write_text(json.dumps({"seed": seed, **asdict(spec)}))
    return path


def build_tiny_checkpoint(path: str | os.PathLike, preset: str = "tiny", seed: int = 0) -> Path:
    """Build the named preset into `path` (a Hugging Face-format directory) and return it."""
    if preset not in PRESETS:
        raise ValueError(f"preset: unknown {preset!r}; choose one of {', '.join(PRESETS)}")
    if preset in TRAINED_PRESETS:
        raise ValueError(f"preset: {preset!r} is trained, not built: it ships in {TRAINED_DIR}")
    return write_checkpoint(path, PRESETS[preset], seed)


def resolve_model(model: str | os.PathLike, seed: int = 0) -> Path:
    """A preset name or a local checkpoint directory -> a directory; presets are built once."""
    if str(model) in TRAINED_PRESETS:
        shipped = TRAINED_DIR / str(model)
        if not (shipped / "model.safetensors").exists():
            raise ModelNotFoundError(
                f"model: the trained preset {str(model)!r} is missing from {shipped}; "
                "remake it with `workbench models train`")
        return shipped
    if str(model) in PRESETS:
        target = cache_root() / "models" / f"{model}-seed{seed}-v{_BUILD_VERSION}"
        if not (target / "model.safetensors").exists():
            with _staging(target) as tmp:
                build_tiny_checkpoint(tmp, str(model), seed)
        return target
    path = Path(model).expanduser()
    if path.is_dir() and (path / "config.json").exists():
        return path
    raise ModelNotFoundError(
        f"model: {str(model)!r} is neither a preset ({', '.join(PRESETS)}) nor a local "
        "checkpoint directory with a config.json"
    )


class ModelNotFoundError(ValueError):
    """The model argument names no preset and no local checkpoint."""


def spec_with(preset: str, **changes) -> ModelSpec:
    """A preset with some fields changed, e.g. for tests of other shapes."""
    return replace(PRESETS[preset], **changes)
