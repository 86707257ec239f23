"""Architecture presets of common open models, and any local HF config.json read the same way.

Only the shapes that size memory and FLOPs are kept. Each entry names the config.json it was
copied from (the model's Hugging Face card), so every derived number traces back to a source.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, replace
from pathlib import Path

from workbench.plan.names import lookup, unknown_message


@dataclass(frozen=True, slots=True)
class ModelArch:
    name: str
    hidden_size: int
    num_layers: int
    num_heads: int
    num_kv_heads: int
    head_dim: int
    intermediate_size: int
    vocab_size: int
    context_length: int
    tie_word_embeddings: bool = False
    qkv_bias: bool = False      # Qwen2: biases on q/k/v only
    o_bias: bool = False        # Llama `attention_bias=True` also biases o_proj
    sliding_window: int | None = None
    num_experts: int = 1        # MoE: experts per layer (Mixtral: 8) ...
    experts_per_token: int = 1  # ... of which each token uses this many (Mixtral: 2)
    source: str = ""

    @property
    def attention_kind(self) -> str:
        """MHA (one KV head per query head), MQA (one KV head) or GQA (in between)."""
        if self.num_kv_heads == self.num_heads:
            return "MHA"
        return "MQA" if self.num_kv_heads == 1 else "GQA"

    @property
    def is_moe(self) -> bool:
        return self.num_experts > 1

    def with_kv_heads(self, kv_heads: int) -> ModelArch:
        """The same model with another attention layout, to compare MHA / GQA / MQA."""
        return replace(self, num_kv_heads=kv_heads, name=f"{self.name} ({kv_heads} KV heads)")


def _card(repo: str) -> str:
    return f"config.json of {repo} (Hugging Face model card)"


def _llama(name, h, layers, heads, kv, inter, vocab, ctx, repo, **kw) -> ModelArch:
    return ModelArch(name, h, layers, heads, kv, h // heads, inter, vocab, ctx,
                     source=_card(repo), **kw)


_ENTRIES = [
    _llama("llama-2-7b", 4096, 32, 32, 32, 11008, 32000, 4096, "meta-llama/Llama-2-7b-hf"),
    _llama("llama-2-13b", 5120, 40, 40, 40, 13824, 32000, 4096, "meta-llama/Llama-2-13b-hf"),
    _llama("llama-2-70b", 8192, 80, 64, 8, 28672, 32000, 4096, "meta-llama/Llama-2-70b-hf"),
    # LLaMA-1 65B: the MHA model of 70B's size, the one the often-quoted ~8-10 GB KV fits.
    _llama("llama-65b", 8192, 80, 64, 64, 22016, 32000, 2048, "huggyllama/llama-65b"),
    _llama("llama-3-8b", 4096, 32, 32, 8, 14336, 128256, 8192, "meta-llama/Meta-Llama-3-8B"),
    _llama("llama-3-70b", 8192, 80, 64, 8, 28672, 128256, 8192, "meta-llama/Meta-Llama-3-70B"),
    _llama("llama-3.1-8b", 4096, 32, 32, 8, 14336, 128256, 131072, "meta-llama/Llama-3.1-8B"),
    _llama("llama-3.1-70b", 8192, 80, 64, 8, 28672, 128256, 131072,
           "meta-llama/Llama-3.1-70B"),
    _llama("mistral-7b", 4096, 32, 32, 8, 14336, 32000, 32768, "mistralai/Mistral-7B-v0.1",
           sliding_window=4096),
    # Qwen2: 32K native context (128K with YaRN per the card); q/k/v carry biases.
    _llama("qwen2-7b", 3584, 28, 28, 4, 18944, 152064, 32768, "Qwen/Qwen2-7B", qkv_bias=True),
    _llama("qwen2-72b", 8192, 80, 64, 8, 29568, 152064, 32768, "Qwen/Qwen2-72B",
           qkv_bias=True),
    _llama("mixtral-8x7b", 4096, 32, 32, 8, 14336, 32000, 32768,
           "mistralai/Mixtral-8x7B-v0.1", num_experts=8, experts_per_token=2),
    # The models of the published measurements (workbench/plan/published/).
    _llama("llama-3.1-405b", 16384, 126, 128, 8, 53248, 128256, 131072,
           "meta-llama/Llama-3.1-405B"),
    _llama("mistral-7b-v0.3", 4096, 32, 32, 8, 14336, 32768, 32768,
           "mistralai/Mistral-7B-Instruct-v0.3"),
    # Mistral-Nemo's head_dim (128) is not hidden / heads (160).
    ModelArch("mistral-nemo-12b", 5120, 40, 32, 8, 128, 14336, 131072, 131072,
              source=_card("mistralai/Mistral-Nemo-Instruct-2407")),
    _llama("mistral-large-2407", 12288, 88, 96, 8, 28672, 32768, 131072,
           "mistralai/Mistral-Large-Instruct-2407"),
    _llama("mixtral-8x22b", 6144, 56, 48, 8, 16384, 32768, 65536,
           "mistralai/Mixtral-8x22B-v0.1", num_experts=8, experts_per_token=2),
]
MODELS: dict[str, ModelArch] = {m.name: m for m in _ENTRIES}
_ALIASES = {"llama2-7b": "llama-2-7b", "mistral": "mistral-7b", "mixtral": "mixtral-8x7b"}


def arch_from_hf_config(cfg: dict, name: str = "local", source: str = "config.json") -> ModelArch:
    """Read a Hugging Face config.json (Llama, Mistral, Qwen2, Mixtral and look-alikes)."""
    try:
        heads = int(cfg["num_attention_heads"])
        hidden = int(cfg["hidden_size"])
        layers = int(cfg["num_hidden_layers"])
        inter = int(cfg["intermediate_size"])
        vocab = int(cfg["vocab_size"])
    except KeyError as e:
        raise ValueError(f"config.{e.args[0]}: missing; a decoder config.json needs "
                         "hidden_size, num_hidden_layers, num_attention_heads, "
                         "intermediate_size and vocab_size") from None
    model_type = str(cfg.get("model_type", ""))
    arch = (cfg.get("architectures") or [""])[0]
    qwen2 = model_type == "qwen2" or arch.startswith("Qwen2")
    window = cfg.get("sliding_window")
    if qwen2 and not cfg.get("use_sliding_window", False):
        window = None
    llama_bias = bool(cfg.get("attention_bias", False))
    return ModelArch(
        name=name,
        hidden_size=hidden,
        num_layers=layers,
        num_heads=heads,
        num_kv_heads=int(cfg.get("num_key_value_heads") or heads),
        head_dim=int(cfg.get("head_dim") or hidden // heads),
        intermediate_size=inter,
        vocab_size=vocab,
        context_length=int(cfg.get("max_position_embeddings", 2048)),
        # Same default as workbench.models.config, so analytic and engine bytes agree.
        tie_word_embeddings=bool(cfg.get("tie_word_embeddings", qwen2)),
        qkv_bias=qwen2 or llama_bias,
        o_bias=llama_bias and not qwen2,
        sliding_window=int(window) if window else None,
        num_experts=int(cfg.get("num_local_experts") or cfg.get("num_experts") or 1),
        experts_per_token=int(cfg.get("num_experts_per_tok") or 1),
        source=source,
    )


def _arch_from_file(path: Path, name: str) -> ModelArch:
    """A config.json read as a ModelArch, or a ValueError that says what `model` should be."""
    what = (f"model: {name} is not a catalog name or a directory with config.json "
            f"(catalog: {', '.join(MODELS)})")
    try:
        cfg = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise ValueError(f"{what}; {path} is not a readable JSON file "
                         f"({type(e).__name__})") from None
    if not isinstance(cfg, dict):
        raise ValueError(f"{what}; {path} holds JSON but not a config object")
    try:
        return arch_from_hf_config(cfg, name=name, source=f"{path} (local)")
    except (ValueError, TypeError) as e:
        raise ValueError(f"{what}; {path} is not a decoder config.json ({e})") from None


def get_model(name_or_path: str | Path) -> ModelArch:
    """A catalog name, an embedded preset (tiny, small, ...), or a local checkpoint directory /
    config.json path."""
    name = str(name_or_path)
    path = Path(name).expanduser()
    if path.is_dir():
        if not (path / "config.json").is_file():
            raise ValueError(f"model: {name} is a directory without a config.json; give a "
                             f"catalog name ({', '.join(MODELS)}), an embedded preset or a "
                             "Hugging Face checkpoint directory")
        path = path / "config.json"
    if path.is_file():
        return _arch_from_file(path, name)
    try:
        return lookup("model", name, MODELS, _ALIASES)
    except ValueError:
        pass
    # Lazy: the embedded presets live beside the builder, which imports torch.
    from workbench.models.tiny import PRESETS, hf_config

    if name in PRESETS:
        return arch_from_hf_config(hf_config(PRESETS[name]), name=name,
                                   source=f"workbench.models.tiny.PRESETS[{name!r}]")
    raise ValueError(unknown_message("model", name, [*MODELS, *PRESETS])
                     + " or a local checkpoint directory")
