"""Load a local Hugging Face Llama-family checkpoint into the project's own model."""

from __future__ import annotations

import json
import os
from pathlib import Path

import torch
from safetensors import safe_open

from workbench.models.config import ModelConfig
from workbench.models.llama import LlamaForCausalLM
from workbench.models.tiny import resolve_model

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


def resolve_dtype(dtype: str, cfg: ModelConfig) -> torch.dtype:
    if dtype == "auto":
        return DTYPES.get(cfg.torch_dtype, torch.float32)
    if dtype not in DTYPES:
        raise ValueError(f"dtype: must be one of auto, {', '.join(DTYPES)}; got {dtype!r}")
    return DTYPES[dtype]


def resolve_device(device: str) -> torch.device:
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if device not in ("cpu", "cuda"):
        raise ValueError(f"device: must be one of auto, cpu, cuda; got {device!r}")
    if device == "cuda" and not torch.cuda.is_available():
        raise ValueError("device: 'cuda' was asked for but torch sees no CUDA device")
    return torch.device(device)


def _tensor_files(path: Path) -> list[Path]:
    index = path / "model.safetensors.index.json"
    if index.exists():
        shards = sorted(set(json.loads(index.read_text())["weight_map"].values()))
        return [path / s for s in shards]
    files = sorted(path.glob("*.safetensors"))
    if not files:
        raise ValueError(f"model: no *.safetensors weights in {path} (only safetensors is read)")
    return files


def _read_tensors(path: Path) -> dict[str, torch.Tensor]:
    tensors = {}
    for f in _tensor_files(path):
        with safe_open(str(f), framework="pt") as fh:
            for name in fh.keys():  # noqa: SIM118 - safe_open is not a mapping
                tensors[name] = fh.get_tensor(name)
    return tensors


def _fused_state_dict(raw: dict[str, torch.Tensor], cfg: ModelConfig) -> dict[str, torch.Tensor]:
    """HF names -> ours, concatenating q/k/v and gate/up into the fused projections."""
    sd = {"embed_tokens.weight": raw["model.embed_tokens.weight"],
          "norm.weight": raw["model.norm.weight"]}
    sd["lm_head.weight"] = sd["embed_tokens.weight"] if cfg.tie_word_embeddings else raw[
        "lm_head.weight"]
    for i in range(cfg.num_layers):
        p, o = f"model.layers.{i}.", f"layers.{i}."
        attn = p + "self_attn."
        sd[o + "self_attn.qkv_proj.weight"] = torch.cat(
            [raw[attn + f"{n}_proj.weight"] for n in "qkv"])
        if cfg.attention_bias:
            sd[o + "self_attn.qkv_proj.bias"] = torch.cat(
                [raw[attn + f"{n}_proj.bias"] for n in "qkv"])
        sd[o + "self_attn.o_proj.weight"] = raw[attn + "o_proj.weight"]
        sd[o + "mlp.gate_up_proj.weight"] = torch.cat(
            [raw[p + "mlp.gate_proj.weight"], raw[p + "mlp.up_proj.weight"]])
        sd[o + "mlp.down_proj.weight"] = raw[p + "mlp.down_proj.weight"]
        sd[o + "input_layernorm.weight"] = raw[p + "input_layernorm.weight"]
        sd[o + "post_attention_layernorm.weight"] = raw[p + "post_attention_layernorm.weight"]
    return sd


def load_model(
    model: str | os.PathLike,
    dtype: str = "auto",
    device: str = "auto",
    max_positions: int | None = None,
) -> tuple[LlamaForCausalLM, ModelConfig, Path]:
    """A preset name or a checkpoint directory -> (model in eval mode, its config, its path)."""
    path = resolve_model(model)
    cfg = ModelConfig.from_dir(path)
    torch_dtype = resolve_dtype(dtype, cfg)
    dev = resolve_device(device)
    with torch.device("meta"):
        net = LlamaForCausalLM(cfg, max_positions or cfg.max_position_embeddings)
    try:
        state = _fused_state_dict(_read_tensors(path), cfg)
    except KeyError as e:
        raise ValueError(f"model: checkpoint {path} lacks tensor {e.args[0]}") from None
    state = {k: v.to(torch_dtype) for k, v in state.items()}
    return finish_model(net, state, max_positions, dev), cfg, path


def finish_model(net: LlamaForCausalLM, state: dict[str, torch.Tensor],
                 max_positions: int | None, dev: torch.device) -> LlamaForCausalLM:
    """Load `state` (every tensor in its final dtype) into a model built on meta, tie the LM
    head, build the RoPE tables; the model in eval mode on `dev`. The GGUF loader shares it."""
    cfg = net.config
    net.load_state_dict(state, strict=True, assign=True)
    if cfg.tie_word_embeddings:
        net.lm_head.weight = net.embed_tokens.weight
    # RoPE tables are buffers built on meta; rebuild them for real on the target device.
    net.rope = type(net.rope)(cfg.head_dim, max_positions or cfg.max_position_embeddings,
                              cfg.rope_theta, cfg.rope_scaling)
    return net.to(dev).eval()


_TOKENIZER_FILES = ("tokenizer.json", "tokenizer.model", "vocab.json", "tokenizer_config.json")


def load_tokenizer(path: Path):
    """The checkpoint's tokenizer, or None when it ships none (then prompts must be token ids).

    AutoTokenizer would otherwise build an empty tokenizer from the model type and decode
    garbage."""
    if not any((Path(path) / f).exists() for f in _TOKENIZER_FILES):
        return None
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(str(path))
