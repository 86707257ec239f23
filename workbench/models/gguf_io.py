"""GGUF (llama.cpp's file format) export and import, so one set of weights serves in both.

Export (`export_gguf`) writes what llama.cpp's `convert_hf_to_gguf.py` writes for a Llama-family
Hugging Face checkpoint: the `llama` architecture (Llama; Mistral without a sliding window) or
`qwen2`, llama.cpp's metadata keys and tensor names (taken from the `gguf` package's constants),
the q/k rows of `llama` permuted for llama.cpp's interleaved RoPE, and the byte-level BPE
tokenizer as `tokenizer.ggml.model = "gpt2"` with pre-tokenizer "gpt-2" (the name llama.cpp
needs for a freshly trained BPE; it runs the GPT-2 split regex, which is what the Hugging Face
ByteLevel pre-tokenizer runs). Tensor types by `qtype`:
- norms and every 1-D tensor (biases): F32, always (llama.cpp's converter does the same).
- the decoder layers' projections (attn_q/k/v/output, ffn_gate/up/down): F32, F16, Q8_0 or
  Q4_0 as asked. A row length that is not a multiple of 32 cannot be blocked: that tensor falls
  back to F16, as the converter's does (the `tiny` preset's ffn_down, 688 wide).
- token_embd and output: F32 for "f32", else F16. Kept out of Q8_0/Q4_0 on purpose: the
  engine never quantizes them (a lookup and the LM head, whose error lands on the logits), so a
  Q8_0 file holds the same choices as the engine's own int8 path. llama-quantize keeps `output`
  at higher precision too (Q6_K); Q8_0/Q4_0 embeddings in other files still import.

Import (`load_gguf`) reads a GGUF with `gguf.GGUFReader` into this engine's model, fusing q/k/v
and gate/up as the safetensors loader does:
- F32 / F16 / BF16 tensors load as floats in the model's dtype.
- Q4_0 projections load exactly into `Int4Linear` with group size 32: Q4_0 stores per block of
  32 an f16 scale d and codes q in 0..15 with w = d * (q - 8), which is the engine's
  w = (q - 8) * scale + zero with scale = d, zero = 0. Exact when scales are held in float32 or
  float16 (bfloat16 would round d). The model's `quantization` is "int4".
- Q8_0 projections (w = d * q per block of 32) go into the engine's per-output-channel
  `Int8Linear`: the block values are dequantized and quantized again per row, a second
  rounding (at most half a per-row step, on top of Q8_0's own). The model's `quantization` is
  "int8".
- embeddings, output and norms may be any type `gguf.quants` dequantizes (e.g. a Q6_K output
  from llama-quantize); they load as floats.
- dtype "auto" is float32: every GGUF type read here is exact in float32.
The tokenizer is rebuilt from the metadata as a `PreTrainedTokenizerFast` (byte-level BPE), so
text prompts work and ids equal the original tokenizer's.
"""

from __future__ import annotations

import json
import os
import tempfile
from collections import Counter
from pathlib import Path

import numpy as np
import torch
from torch import nn

from workbench.models.config import ModelConfig
from workbench.models.llama import LlamaForCausalLM
from workbench.models.loader import (
    _read_tensors,
    finish_model,
    resolve_device,
    resolve_dtype,
)
from workbench.models.quantize import Int4Linear, Int8Linear
from workbench.models.tiny import resolve_model

QTYPES = ("f32", "f16", "q8_0", "q4_0")
BLOCK = 32  # elements per Q8_0 / Q4_0 block, along a row (the input features)
Q4_0_BYTES = 2 + BLOCK // 2  # f16 scale, then 16 bytes of two codes each
# GGUF architecture <-> Hugging Face architecture. Mistral is written as llama, as llama.cpp's
# converter does (only without a sliding window: llama has none).
EXPORT_ARCHS = {"LlamaForCausalLM": "llama", "MistralForCausalLM": "llama",
                "Qwen2ForCausalLM": "qwen2"}
IMPORT_ARCHS = {"llama": "LlamaForCausalLM", "qwen2": "Qwen2ForCausalLM"}
# Per decoder layer: Hugging Face module -> GGUF tensor (without the "blk.N." prefix).
LAYER_TENSORS = {
    "self_attn.q_proj": "attn_q", "self_attn.k_proj": "attn_k", "self_attn.v_proj": "attn_v",
    "self_attn.o_proj": "attn_output", "mlp.gate_proj": "ffn_gate", "mlp.up_proj": "ffn_up",
    "mlp.down_proj": "ffn_down", "input_layernorm": "attn_norm",
    "post_attention_layernorm": "ffn_norm",
}
PROJECTIONS = ("attn_q", "attn_k", "attn_v", "attn_output", "ffn_gate", "ffn_up", "ffn_down")
# Our fused projections and the GGUF tensors they concatenate, in order.
FUSED = {"self_attn.qkv_proj": ("attn_q", "attn_k", "attn_v"),
         "self_attn.o_proj": ("attn_output",),
         "mlp.gate_up_proj": ("ffn_gate", "ffn_up"),
         "mlp.down_proj": ("ffn_down",)}
PROJECTION_TYPE_NAMES = ("F32", "F16", "BF16", "Q8_0", "Q4_0")


def _gguf():
    import gguf  # imported on use: the rest of the engine does not need the package

    return gguf


# -- RoPE permutation ----------------------------------------------------------------------
def rope_permutation(rows: int, heads: int) -> torch.Tensor:
    """Row order llama.cpp's converter gives q (or k) for its interleaved RoPE: GGUF row r holds
    Hugging Face row idx[r]. Within each head the rotate-half pairs (i, i + d/2) become the
    adjacent pairs (2i, 2i + 1); the same reshape/swap as the converter's LlamaModel.permute."""
    half = rows // heads // 2
    if half * 2 * heads != rows:
        raise ValueError(f"heads: {rows} rows do not split into {heads} heads of even size")
    return torch.arange(rows).reshape(heads, 2, half).transpose(1, 2).reshape(rows)


def permute_for_gguf(w: torch.Tensor, heads: int) -> torch.Tensor:
    return w[rope_permutation(w.shape[0], heads)]


def unpermute_from_gguf(w: torch.Tensor, heads: int) -> torch.Tensor:
    return w[torch.argsort(rope_permutation(w.shape[0], heads))]


# -- export --------------------------------------------------------------------------------
def export_gguf(model: str | os.PathLike, out_path: str | os.PathLike,
                qtype: str = "f32") -> Path:
    """A preset name or Hugging Face checkpoint directory -> a GGUF file llama.cpp loads; the
    path written. `qtype`: f32 | f16 | q8_0 | q4_0 for the decoder projections (see the module
    docstring for the other tensors)."""
    if qtype not in QTYPES:
        raise ValueError(f"qtype: must be one of {', '.join(QTYPES)}; got {qtype!r}")
    gguf = _gguf()
    path = resolve_model(model)
    cfg = ModelConfig.from_dir(path)
    arch = _export_arch(cfg)
    raw = _read_tensors(path)
    vocab = _bpe_vocab(path, cfg)
    out_path = Path(out_path)
    out_path.parent.mkdir(parents=True, exist_ok=True)
    file_type = {"f32": gguf.LlamaFileType.ALL_F32, "f16": gguf.LlamaFileType.MOSTLY_F16,
                 "q8_0": gguf.LlamaFileType.MOSTLY_Q8_0,
                 "q4_0": gguf.LlamaFileType.MOSTLY_Q4_0}[qtype]
    fd, tmp = tempfile.mkstemp(prefix=out_path.name + ".", dir=out_path.parent)
    os.close(fd)
    try:
        writer = gguf.GGUFWriter(tmp, arch)
        _write_metadata(writer, gguf, arch, cfg, str(model), file_type)
        _write_vocab(writer, gguf, vocab)
        for name, tensor in _gguf_tensors(raw, cfg, arch):
            data, ggml_type = _encode(gguf, name, tensor, qtype)
            writer.add_tensor(name, data, raw_dtype=ggml_type)
        writer.write_header_to_file()
        writer.write_kv_data_to_file()
        writer.write_tensors_to_file()
        writer.close()
        os.replace(tmp, out_path)  # never a half-written file under the asked name
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)
    return out_path


def _export_arch(cfg: ModelConfig) -> str:
    if cfg.architecture not in EXPORT_ARCHS:  # ModelConfig already refused the others
        raise ValueError(f"architectures: {cfg.architecture} has no GGUF export; supported: "
                         + ", ".join(EXPORT_ARCHS))
    if cfg.sliding_window is not None and cfg.sliding_window < cfg.max_position_embeddings:
        raise ValueError(f"sliding_window: {cfg.sliding_window} cannot be written: GGUF's "
                         "llama architecture attends to the whole context, so outputs past the "
                         "window would differ; export a checkpoint without one")
    if cfg.rope_scaling is not None:
        raise ValueError("rope_scaling: llama3 RoPE scaling is not exported (llama.cpp wants "
                         "it as a rope_freqs tensor); only unscaled RoPE is supported")
    if cfg.attention_bias and cfg.architecture != "Qwen2ForCausalLM":
        raise ValueError("attention_bias: q/k/v biases are only exported for Qwen2 (llama.cpp's "
                         "llama architecture has none)")
    return EXPORT_ARCHS[cfg.architecture]


def _write_metadata(writer, gguf, arch: str, cfg: ModelConfig, name: str, file_type) -> None:
    writer.add_type(gguf.GGUFType.MODEL)
    writer.add_name(Path(name).name)
    writer.add_vocab_size(cfg.vocab_size)
    writer.add_context_length(cfg.max_position_embeddings)
    writer.add_embedding_length(cfg.hidden_size)
    writer.add_block_count(cfg.num_layers)
    writer.add_feed_forward_length(cfg.intermediate_size)
    writer.add_head_count(cfg.num_heads)
    writer.add_head_count_kv(cfg.num_kv_heads)
    writer.add_key_length(cfg.head_dim)
    writer.add_value_length(cfg.head_dim)
    writer.add_rope_dimension_count(cfg.head_dim)
    writer.add_rope_freq_base(cfg.rope_theta)
    writer.add_layer_norm_rms_eps(cfg.rms_norm_eps)
    writer.add_file_type(file_type)
    writer.add_quantization_version(gguf.GGML_QUANT_VERSION)


def _gguf_tensors(raw: dict[str, torch.Tensor], cfg: ModelConfig, arch: str):
    """(GGUF name, float32 tensor in Hugging Face layout, q/k rows permuted for llama)."""
    def get(name):
        if name not in raw:
            raise ValueError(f"model: the checkpoint lacks tensor {name}")
        return raw[name].float()

    yield "token_embd.weight", get("model.embed_tokens.weight")
    for i in range(cfg.num_layers):
        for hf, ours in LAYER_TENSORS.items():
            suffixes = ["weight"] + (["bias"] if cfg.attention_bias and hf in (
                "self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj") else [])
            for suffix in suffixes:
                t = get(f"model.layers.{i}.{hf}.{suffix}")
                if arch == "llama" and ours in ("attn_q", "attn_k"):
                    t = permute_for_gguf(t, cfg.num_heads if ours == "attn_q"
                                         else cfg.num_kv_heads)
                yield f"blk.{i}.{ours}.{suffix}", t
    yield "output_norm.weight", get("model.norm.weight")
    if not cfg.tie_word_embeddings:  # tied: llama.cpp reads token_embd for the output
        yield "output.weight", get("lm_head.weight")


def _encode(gguf, name: str, t: torch.Tensor, qtype: str):
    """(numpy data, GGML type) of one tensor under the rule in the module docstring."""
    types = gguf.GGMLQuantizationType
    a = t.contiguous().numpy()
    is_projection = name.split(".")[-2] in PROJECTIONS and t.dim() == 2
    if t.dim() == 1 or name.endswith("_norm.weight") or qtype == "f32":
        return a.astype(np.float32), types.F32
    if is_projection and qtype in ("q8_0", "q4_0") and t.shape[1] % BLOCK == 0:
        ggml_type = types.Q8_0 if qtype == "q8_0" else types.Q4_0
        return gguf.quants.quantize(a, ggml_type), ggml_type
    if not np.isfinite(a.astype(np.float16)).all():
        raise ValueError(f"qtype: tensor {name} has values beyond float16's range (65504); "
                         "export it with qtype f32")
    return a.astype(np.float16), types.F16


def _bpe_vocab(path: Path, cfg: ModelConfig) -> dict:
    """tokens, token types, merges, special ids and add-bos/eos from tokenizer.json, refusing
    a tokenizer llama.cpp's "gpt2" model with the "gpt-2" pre-tokenizer would not reproduce."""
    file = path / "tokenizer.json"
    if not file.exists():
        raise ValueError(f"tokenizer: {path} has no tokenizer.json; GGUF export writes the "
                         "vocabulary and needs a byte-level BPE tokenizer.json")
    data = json.loads(file.read_text())
    model, pre = data.get("model") or {}, data.get("pre_tokenizer") or {}
    if model.get("type") != "BPE" or pre.get("type") != "ByteLevel" or not pre.get(
            "use_regex", True) or pre.get("add_prefix_space") or data.get("normalizer"):
        raise ValueError(
            f"tokenizer: only a byte-level BPE (tokenizer.json model BPE, pre_tokenizer "
            f"ByteLevel with the GPT-2 regex, no prefix space, no normalizer) is exported as "
            f"llama.cpp's 'gpt2'/'gpt-2'; got model {model.get('type')!r}, pre_tokenizer "
            f"{pre.get('type')!r}")
    ids = dict(model["vocab"])
    added = {t["content"]: t for t in data.get("added_tokens", [])}
    ids.update({content: t["id"] for content, t in added.items()})
    if max(ids.values()) >= cfg.vocab_size:
        raise ValueError(f"vocab_size: {cfg.vocab_size} is smaller than the tokenizer's ids "
                         f"(up to {max(ids.values())})")
    gguf = _gguf()
    tokens = [f"[PAD{i}]" for i in range(cfg.vocab_size)]  # ids no token uses (converter's)
    types = [int(gguf.TokenType.UNUSED)] * cfg.vocab_size
    for content, i in ids.items():
        tokens[i] = content
        if content in added:
            types[i] = int(gguf.TokenType.CONTROL if added[content]["special"]
                           else gguf.TokenType.USER_DEFINED)
        else:
            types[i] = int(gguf.TokenType.NORMAL)
    merges = [m if isinstance(m, str) else " ".join(m) for m in model.get("merges", [])]
    # Whether encoding adds BOS / EOS: ask the tokenizer itself (its post-processor decides).
    from tokenizers import Tokenizer

    tok = Tokenizer.from_str(file.read_text())
    plain, full = tok.encode("a", add_special_tokens=False).ids, tok.encode("a").ids
    bos = cfg.bos_token_id
    eos = cfg.eos_token_ids[0] if cfg.eos_token_ids else None
    pad = json.loads((path / "config.json").read_text()).get("pad_token_id")
    return {"tokens": tokens, "types": types, "merges": merges, "bos": bos, "eos": eos,
            "eot": cfg.eos_token_ids[1] if len(cfg.eos_token_ids) > 1 else None, "pad": pad,
            "add_bos": len(full) > len(plain) and full[0] == bos,
            "add_eos": len(full) > len(plain) and full[-1] == eos}


def _write_vocab(writer, gguf, vocab: dict) -> None:
    writer.add_tokenizer_model("gpt2")
    writer.add_tokenizer_pre("gpt-2")
    writer.add_token_list(vocab["tokens"])
    writer.add_token_types(vocab["types"])
    writer.add_token_merges(vocab["merges"])
    for key, add in (("bos", writer.add_bos_token_id), ("eos", writer.add_eos_token_id),
                     ("eot", writer.add_eot_token_id), ("pad", writer.add_pad_token_id)):
        if vocab[key] is not None:
            add(vocab[key])
    writer.add_add_bos_token(vocab["add_bos"])
    writer.add_add_eos_token(vocab["add_eos"])


# -- import --------------------------------------------------------------------------------
def is_gguf_path(model) -> bool:
    return isinstance(model, str | os.PathLike) and str(model).endswith(".gguf")


def open_gguf(path: str | os.PathLike):
    """gguf.GGUFReader over `path`, with a ValueError naming the file when it is not GGUF."""
    path = Path(path)
    if not path.is_file():
        raise ValueError(f"model: GGUF file {str(path)!r} does not exist")
    with open(path, "rb") as fh:
        magic = fh.read(4)
    if magic != b"GGUF":
        raise ValueError(f"model: {str(path)!r} is not a GGUF file (it starts with {magic!r}, "
                         "not b'GGUF')")
    try:
        return _gguf().GGUFReader(path)
    except (ValueError, IndexError, OSError) as e:
        raise ValueError(f"model: {str(path)!r} is not a readable GGUF file: {e}") from None


def tensor_types(path: str | os.PathLike) -> dict[str, int]:
    """GGML type name -> number of tensors of that type in the file."""
    return dict(Counter(t.tensor_type.name for t in open_gguf(path).tensors))


_REQUIRED = object()


class _Metadata:
    def __init__(self, reader):
        self.reader = reader

    def get(self, key: str, default=_REQUIRED):
        field = self.reader.get_field(key)
        if field is None:
            if default is _REQUIRED:
                raise ValueError(f"{key}: missing from the GGUF metadata")
            return default
        return field.contents()


def load_gguf(path: str | os.PathLike, dtype: str = "auto", device: str = "auto",
              max_positions: int | None = None):
    """A GGUF file -> (model in eval mode, its ModelConfig, its tokenizer or None)."""
    reader = open_gguf(path)
    meta = _Metadata(reader)
    tensors = {t.name: t for t in reader.tensors}
    cfg = _config(meta, tensors)
    torch_dtype = resolve_dtype(dtype, cfg)
    dev = resolve_device(device)
    gguf = _gguf()

    def tensor(name: str):
        if name not in tensors:
            raise ValueError(f"tensor {name}: missing from {path} (a {cfg.architecture} GGUF "
                             "needs token_embd, output_norm and blk.N.attn_norm/attn_q/attn_k/"
                             "attn_v/attn_output/ffn_norm/ffn_gate/ffn_up/ffn_down)")
        return tensors[name]

    def as_float(name: str) -> torch.Tensor:
        t = tensor(name)
        try:
            values = gguf.quants.dequantize(t.data, t.tensor_type)
        except NotImplementedError:
            raise ValueError(f"tensor {name}: type {t.tensor_type.name} cannot be read (gguf "
                             "has no dequantizer for it)") from None
        return torch.from_numpy(np.array(values, dtype=np.float32))

    state = {"embed_tokens.weight": as_float("token_embd.weight"),
             "norm.weight": as_float("output_norm.weight")}
    # Tied: no output tensor (llama.cpp reads token_embd); finish_model re-ties the two.
    state["lm_head.weight"] = (state["embed_tokens.weight"] if cfg.tie_word_embeddings
                               else as_float("output.weight"))
    quantized: dict[str, nn.Module] = {}
    kinds = set()
    for i in range(cfg.num_layers):
        b = f"blk.{i}."
        state[f"layers.{i}.input_layernorm.weight"] = as_float(b + "attn_norm.weight")
        state[f"layers.{i}.post_attention_layernorm.weight"] = as_float(b + "ffn_norm.weight")
        for ours, parts in FUSED.items():
            names = [b + p + ".weight" for p in parts]
            heads = [_rope_heads(cfg, p) for p in parts]
            bias = None
            if ours == "self_attn.qkv_proj" and cfg.attention_bias:
                bias = torch.cat([_unpermute(as_float(b + p + ".bias"), h)
                                  for p, h in zip(parts, heads, strict=True)])
            kind, value = _projection(gguf, [tensor(n) for n in names], heads, as_float)
            prefix = f"layers.{i}.{ours}"
            if kind == "float":
                state[prefix + ".weight"] = value
                if bias is not None:
                    state[prefix + ".bias"] = bias
                continue
            kinds.add(kind)
            quantized[prefix] = _quantized_module(kind, value, bias, torch_dtype, dev)
    if len(kinds) > 1:
        raise ValueError("tensor types: the block projections mix Q8_0 and Q4_0; a file loads "
                         "with one quantized type (plus float tensors)")
    state = {k: v.to(torch_dtype) for k, v in state.items()}
    with torch.device("meta"):
        net = LlamaForCausalLM(cfg, max_positions or cfg.max_position_embeddings)
    for prefix, module in quantized.items():
        parent_name, attr = prefix.rsplit(".", 1)
        setattr(net.get_submodule(parent_name), attr, module)
        state.update({f"{prefix}.{k}": v for k, v in module.state_dict().items()})
    try:
        net = finish_model(net, state, max_positions, dev)
    except RuntimeError as e:  # a tensor whose shape disagrees with the metadata
        raise ValueError(f"tensor shapes: {path} does not match its own metadata: "
                         f"{str(e).splitlines()[-1].strip()}") from None
    net.quantization = kinds.pop() if kinds else "none"
    return net, cfg, _tokenizer(meta, cfg)


def _rope_heads(cfg: ModelConfig, part: str) -> int | None:
    """Heads to undo llama.cpp's q/k row permutation with (None: not permuted)."""
    if cfg.architecture != "LlamaForCausalLM":  # qwen2 is stored in Hugging Face order
        return None
    return {"attn_q": cfg.num_heads, "attn_k": cfg.num_kv_heads}.get(part)


def _unpermute(t: torch.Tensor, heads: int | None) -> torch.Tensor:
    return t if heads is None else unpermute_from_gguf(t, heads)


def _projection(gguf, parts, heads, as_float):
    """One fused projection from its GGUF parts: ("float", weight), ("int4", (codes, scales))
    or ("int8", dequantized weight). Rows are un-permuted: blocks run along rows, so moving
    whole rows moves codes and scales together."""
    types = gguf.GGMLQuantizationType
    kinds = set()
    for t in parts:
        if t.tensor_type.name not in PROJECTION_TYPE_NAMES:
            raise ValueError(f"tensor {t.name}: type {t.tensor_type.name} is not supported for "
                             f"a block projection; supported: {', '.join(PROJECTION_TYPE_NAMES)}")
        kinds.add({types.Q4_0: "int4", types.Q8_0: "int8"}.get(t.tensor_type, "float"))
    if len(kinds) > 1:
        raise ValueError(f"tensor types: {', '.join(t.name for t in parts)} are fused into one "
                         f"projection and must share a type (float, Q8_0 or Q4_0); got "
                         f"{', '.join(t.tensor_type.name for t in parts)}")
    kind = kinds.pop()
    if kind == "int4":
        decoded = [_q4_0_codes(t) for t in parts]
        codes = torch.cat([_unpermute(c, h) for (c, _), h in zip(decoded, heads, strict=True)])
        scales = torch.cat([_unpermute(d, h) for (_, d), h in zip(decoded, heads, strict=True)])
        return kind, (codes, scales)
    return kind, torch.cat([_unpermute(as_float(t.name), h)
                            for t, h in zip(parts, heads, strict=True)])


def _q4_0_codes(t) -> tuple[torch.Tensor, torch.Tensor]:
    """A Q4_0 tensor -> (codes uint8 [rows, cols] in 0..15, scales float32 [rows, cols / 32]).
    Block layout (ggml's block_q4_0): f16 d, then 16 bytes; byte j holds element j in its low
    nibble and element j + 16 in its high nibble."""
    rows = t.data.shape[0]  # the reader gives [rows, bytes per row]
    blocks = np.asarray(t.data, dtype=np.uint8).reshape(rows, -1, Q4_0_BYTES)
    d = np.ascontiguousarray(blocks[..., :2]).view(np.float16)[..., 0].astype(np.float32)
    qs = blocks[..., 2:]
    codes = np.concatenate([qs & 15, qs >> 4], axis=-1).reshape(rows, -1)
    return torch.from_numpy(codes), torch.from_numpy(d)


def _quantized_module(kind: str, value, bias, dtype: torch.dtype, dev: torch.device):
    bias = None if bias is None else bias.to(dtype).to(dev)
    if kind == "int4":
        codes, scales = value
        # Q4_0 is symmetric: zero 0, scale d. Scales in the model's dtype, as quantize_model
        # stores them (exact in float32/float16).
        scale = scales.to(dtype).to(dev)
        return Int4Linear(codes.to(dev), scale, torch.zeros_like(scale), BLOCK, bias)
    # Q8_0 -> per-channel int8: the second rounding the module docstring describes.
    weight = value.to(dtype).to(dev)
    with torch.device("meta"):
        linear = nn.Linear(weight.shape[1], weight.shape[0], bias=False)
    linear.weight = nn.Parameter(weight, requires_grad=False)
    linear.bias = None if bias is None else nn.Parameter(bias, requires_grad=False)
    return Int8Linear(linear)


def _config(meta: _Metadata, tensors: dict) -> ModelConfig:
    arch = meta.get("general.architecture")
    if arch not in IMPORT_ARCHS:
        raise ValueError(f"general.architecture: {arch!r} is not supported; supported: "
                         + ", ".join(IMPORT_ARCHS))
    if "rope_freqs.weight" in tensors or meta.get(f"{arch}.rope.scaling.type",
                                                  "none") not in ("none", "linear"):
        raise ValueError(f"{arch}.rope.scaling.type: scaled RoPE (rope_freqs / yarn) is not "
                         "supported; only plain RoPE")
    if meta.get(f"{arch}.rope.scaling.factor", 1.0) != 1.0:
        raise ValueError(f"{arch}.rope.scaling.factor: must be 1 (no scaling) to load here")
    heads = meta.get(f"{arch}.attention.head_count")
    hidden = meta.get(f"{arch}.embedding_length")
    head_dim = meta.get(f"{arch}.attention.key_length", hidden // heads)
    rope_dims = meta.get(f"{arch}.rope.dimension_count", head_dim)
    if rope_dims != head_dim:
        raise ValueError(f"{arch}.rope.dimension_count: {rope_dims} (partial rotary) is not "
                         f"supported; it must equal the head dim {head_dim}")
    if "token_embd.weight" not in tensors:
        raise ValueError("tensor token_embd.weight: missing from the GGUF file")
    vocab = int(tensors["token_embd.weight"].shape[1])
    if meta.get(f"{arch}.vocab_size", vocab) != vocab:
        raise ValueError(f"{arch}.vocab_size: {meta.get(f'{arch}.vocab_size')} differs from "
                         f"token_embd's {vocab} rows")
    eos = [meta.get(k, None) for k in ("tokenizer.ggml.eos_token_id",
                                       "tokenizer.ggml.eot_token_id")]
    eos = [e for i, e in enumerate(eos) if e is not None and e not in eos[:i]]
    return ModelConfig.from_dict({
        "architectures": [IMPORT_ARCHS[arch]],
        "hidden_size": hidden,
        "intermediate_size": meta.get(f"{arch}.feed_forward_length"),
        "num_hidden_layers": meta.get(f"{arch}.block_count"),
        "num_attention_heads": heads,
        "num_key_value_heads": meta.get(f"{arch}.attention.head_count_kv", heads),
        "head_dim": head_dim,
        "vocab_size": vocab,
        "max_position_embeddings": meta.get(f"{arch}.context_length"),
        "rms_norm_eps": _f32(meta.get(f"{arch}.attention.layer_norm_rms_epsilon")),
        "rope_theta": _f32(meta.get(f"{arch}.rope.freq_base", 10000.0)),
        "tie_word_embeddings": "output.weight" not in tensors,
        "attention_bias": "blk.0.attn_q.bias" in tensors,
        "use_sliding_window": False,
        "eos_token_id": eos,
        "bos_token_id": meta.get("tokenizer.ggml.bos_token_id", None),
        "torch_dtype": "float32",
    })


def _f32(value: float) -> float:
    """A float32 metadata value as the shortest decimal that is the same float32 (1e-05, not
    9.999999747378752e-06): the config then equals the checkpoint's, and float32 math is
    unchanged."""
    return float(str(np.float32(value)))


def _tokenizer(meta: _Metadata, cfg: ModelConfig):
    """The GGUF vocabulary as a Hugging Face fast tokenizer; None when the file has none."""
    model = meta.get("tokenizer.ggml.model", None)
    if model is None:
        return None
    if model != "gpt2":
        raise ValueError(f"tokenizer.ggml.model: {model!r} is not supported; supported: 'gpt2' "
                         "(byte-level BPE)")
    pre = meta.get("tokenizer.ggml.pre", "default")
    if pre != "gpt-2":
        raise ValueError(f"tokenizer.ggml.pre: {pre!r} is not supported; supported: 'gpt-2' "
                         "(the GPT-2 split regex of the ByteLevel pre-tokenizer)")
    from tokenizers import AddedToken, Tokenizer, decoders, models, pre_tokenizers, processors
    from transformers import PreTrainedTokenizerFast

    gguf = _gguf()
    tokens = meta.get("tokenizer.ggml.tokens")
    types = meta.get("tokenizer.ggml.token_type", [int(gguf.TokenType.NORMAL)] * len(tokens))
    merges = [tuple(m.split(" ", 1)) for m in meta.get("tokenizer.ggml.merges", [])]
    tok = Tokenizer(models.BPE(vocab={t: i for i, t in enumerate(tokens)}, merges=merges,
                               fuse_unk=False, byte_fallback=False))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
    tok.decoder = decoders.ByteLevel()
    control, user = int(gguf.TokenType.CONTROL), int(gguf.TokenType.USER_DEFINED)
    # Added tokens match whole before BPE runs, as in the original tokenizer.json.
    tok.add_special_tokens([AddedToken(t, special=True, normalized=False)
                            for t, k in zip(tokens, types, strict=True) if k == control])
    tok.add_tokens([AddedToken(t, special=False, normalized=False)
                    for t, k in zip(tokens, types, strict=True) if k == user])

    def token(key: str) -> str | None:
        i = meta.get(key, None)
        return None if i is None else tokens[i]

    bos, eos = token("tokenizer.ggml.bos_token_id"), token("tokenizer.ggml.eos_token_id")
    add_bos = bool(meta.get("tokenizer.ggml.add_bos_token", False)) and bos is not None
    add_eos = bool(meta.get("tokenizer.ggml.add_eos_token", False)) and eos is not None
    if add_bos or add_eos:  # llama.cpp adds them when encoding; so does this tokenizer
        added = ([bos] if add_bos else []) + ([eos] if add_eos and eos != bos else [])
        tok.post_processor = processors.TemplateProcessing(
            single=([bos] if add_bos else []) + ["$A"] + ([eos] if add_eos else []),
            special_tokens=[(t, tokens.index(t)) for t in added])
    return PreTrainedTokenizerFast(
        tokenizer_object=tok, bos_token=bos, eos_token=eos,
        pad_token=token("tokenizer.ggml.padding_token_id"),
        model_max_length=cfg.max_position_embeddings, clean_up_tokenization_spaces=False)


def engine_config_for(model: nn.Module, config):
    """The engine config a GGUF-loaded model runs under: a quantized file decides the engine's
    quantization ("int4", group size 32, for Q4_0; "int8" for Q8_0) when the config leaves it at
    "none"; asking for another one is an error. A float file takes whatever the config asks
    (the engine quantizes it as it would a safetensors checkpoint)."""
    from dataclasses import replace

    have = getattr(model, "quantization", "none")
    if have == "none":
        return config
    if config.quantization not in ("none", have):
        raise ValueError(f"quantization: the GGUF file's projections load as {have!r} "
                         f"({'Q4_0' if have == 'int4' else 'Q8_0'}) but the config asks for "
                         f"{config.quantization!r}; leave it at 'none' (the file decides) or "
                         f"set {have!r}")
    extra = {"quantization_group_size": BLOCK} if have == "int4" else {}
    return replace(config, quantization=have, **extra)
