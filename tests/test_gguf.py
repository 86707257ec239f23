"""GGUF export and import: the same weights served from a llama.cpp file and from the checkpoint.

Measured on tiny-trained (float32 engine, the 6 prompts below x 24 greedy tokens, teacher forced
at 144 positions): f32 and f16 files give the checkpoint's greedy outputs; a Q8_0 file gives the
engine's own int8 outputs (top-1 144/144; on 512 random-token positions 99.8% against the
engine's int8); a Q4_0 file agrees with the unquantized model at 141/144 positions. The engine's
own int4 at group 32 (asymmetric min/max grid, where Q4_0 is symmetric) gets 144/144 here; on the
512 random-token positions of test_quantization's workload 98.0% against Q4_0's 97.5%.
"""

from __future__ import annotations

import json
from dataclasses import replace

import numpy as np
import pytest
import torch

from workbench.engine import EngineConfig, LLMEngine, SamplingParams
from workbench.engine.kv_quality import compare_logits, teacher_forced_logits
from workbench.models.config import ModelConfig
from workbench.models.cpu_linear import OneDnnLinear
from workbench.models.gguf_io import (
    export_gguf,
    load_gguf,
    open_gguf,
    permute_for_gguf,
    rope_permutation,
    tensor_types,
    unpermute_from_gguf,
)
from workbench.models.loader import load_model, load_tokenizer
from workbench.models.quantize import Int4Linear, Int8Linear, kernel_names, projections
from workbench.models.rope import RotaryEmbedding, inverse_frequencies
from workbench.models.tiny import resolve_model

gguf = pytest.importorskip("gguf")

PROMPTS = ["import os\n", "def main(", "class Parser:\n    def __init__(self", "for i in range(",
           "héllo wörld ✓ 日本", [5, 100, 200, 300]]
GREEDY = SamplingParams(max_tokens=24, temperature=0.0, ignore_eos=True)


def engine(model, **config) -> LLMEngine:
    config = {"dtype": "float32", "device": "cpu", "num_kv_blocks": 64, **config}
    return LLMEngine.from_pretrained(str(model), EngineConfig(**config))


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    """tiny-trained exported once per type."""
    out = tmp_path_factory.mktemp("gguf")
    return {q: export_gguf("tiny-trained", out / f"tiny-trained-{q}.gguf", q)
            for q in ("f32", "f16", "q8_0", "q4_0")}


@pytest.fixture(scope="module")
def reference():
    """Greedy outputs of the checkpoint itself: unquantized and the engine's own int8."""
    return {q: [(o.token_ids, o.text) for o in engine("tiny-trained", quantization=q)
                .generate(PROMPTS, GREEDY)] for q in ("none", "int8")}


# -- the q/k permutation ----------------------------------------------------------------------
def test_permutation_is_the_converters_and_turns_rotate_half_into_interleaved_rope():
    heads, head_dim, hidden, t = 3, 8, 16, 5
    w = torch.randn(heads * head_dim, hidden)
    # llama.cpp's LlamaModel.permute: per head, split rows in two halves and interleave them.
    converter = w.numpy().reshape(heads, 2, head_dim // 2, hidden).swapaxes(1, 2).reshape(w.shape)
    assert torch.equal(permute_for_gguf(w, heads), torch.from_numpy(converter))
    assert torch.equal(unpermute_from_gguf(permute_for_gguf(w, heads), heads), w)
    # Meaning: llama.cpp's interleaved RoPE (pairs 2i, 2i+1) on the permuted projection equals
    # the engine's rotate-half RoPE (pairs i, i + d/2) on the original, rows permuted.
    x, pos = torch.randn(t, hidden), torch.arange(t) * 7
    q_hf = (x @ w.T).view(t, heads, head_dim)
    q_gg = (x @ permute_for_gguf(w, heads).T).view(t, heads, head_dim)
    rope = RotaryEmbedding(head_dim, 64, 10000.0, None)
    want = rope.rotate(q_hf, rope.tables(pos, q_hf.dtype))
    angle = pos.float().unsqueeze(1) * inverse_frequencies(head_dim, 10000.0, None)  # [t, d/2]
    cos, sin = angle.cos().unsqueeze(1), angle.sin().unsqueeze(1)
    even, odd = q_gg[..., 0::2], q_gg[..., 1::2]
    got = torch.stack([even * cos - odd * sin, even * sin + odd * cos], -1).flatten(-2)
    torch.testing.assert_close(got, want[..., rope_permutation(head_dim, 1)])


# -- float round trips --------------------------------------------------------------------------
@pytest.mark.parametrize("preset,qtype", [("tiny-trained", "f32"), ("tiny-trained", "f16"),
                                          ("tiny", "f32"), ("tiny", "f16"),
                                          ("tiny-qwen2", "f32")])
def test_float_round_trip_gives_identical_greedy_outputs(preset, qtype, tmp_path, files):
    path = files[qtype] if preset == "tiny-trained" else export_gguf(
        preset, tmp_path / f"{preset}.gguf", qtype)
    want = engine(preset).generate(PROMPTS, GREEDY)
    eng = engine(path)
    assert eng.config.quantization == "none" and kernel_names(eng.model) == ["onednn"]
    got = eng.generate(PROMPTS, GREEDY)
    assert [o.token_ids for o in got] == [o.token_ids for o in want]
    assert [o.text for o in got] == [o.text for o in want]
    assert all(o.text for o in got[:-1])
    if qtype == "f32":  # every weight, the config and the tying come back exactly
        net, cfg, _ = load_gguf(path, "float32", "cpu")
        ref, ref_cfg, ref_path = load_model(preset, "float32", "cpu")
        assert cfg == replace(ModelConfig.from_dir(ref_path), torch_dtype="float32")
        for (name, a), (_, b) in zip(net.state_dict().items(), ref.state_dict().items(),
                                     strict=True):
            assert torch.equal(a, b), name
        assert (net.lm_head.weight is net.embed_tokens.weight) == cfg.tie_word_embeddings


def test_tokenizer_round_trip(files):
    original = load_tokenizer(resolve_model("tiny-trained"))
    _, _, tok = load_gguf(files["f16"], "float32", "cpu")
    for text in ["hello world", "def f(x):\n\treturn  x  # über\n", "naïve café — 日本語 🦙🚀",
                 "<|bos|>a<|eos|>", "   \n\n  trailing  ", "x" * 300]:
        ids = original(text)["input_ids"]
        assert tok(text)["input_ids"] == ids, text
        assert tok.decode(ids) == original.decode(ids)
        assert tok.decode(ids, skip_special_tokens=True) == original.decode(
            ids, skip_special_tokens=True)
    assert (tok.bos_token_id, tok.eos_token_id, tok.pad_token_id) == (
        original.bos_token_id, original.eos_token_id, original.pad_token_id)
    assert len(tok) == len(original)


# -- Q4_0 -------------------------------------------------------------------------------------
def _dequantized_file_projection(reader, names, heads):
    tensors = {t.name: t for t in reader.tensors}
    parts = []
    for name, h in zip(names, heads, strict=True):
        t = tensors[name]
        w = torch.from_numpy(np.array(gguf.quants.dequantize(t.data, t.tensor_type)))
        parts.append(w if h is None else unpermute_from_gguf(w, h))
    return torch.cat(parts)


def test_q4_0_loads_exactly_into_int4_and_serves(files, reference):
    path = files["q4_0"]
    assert tensor_types(path) == {"F32": 13, "F16": 2, "Q4_0": 42}
    eng = engine(path)
    assert (eng.config.quantization, eng.config.quantization_group_size) == ("int4", 32)
    cfg, reader = eng.model_config, open_gguf(path)
    files_parts = {"self_attn.qkv_proj": (("attn_q", cfg.num_heads),
                                          ("attn_k", cfg.num_kv_heads), ("attn_v", None)),
                   "self_attn.o_proj": (("attn_output", None),),
                   "mlp.gate_up_proj": (("ffn_gate", None), ("ffn_up", None)),
                   "mlp.down_proj": (("ffn_down", None),)}
    layers = list(projections(eng.model))
    assert len(layers) == 4 * cfg.num_layers
    for parent, attr, name in layers:
        module = getattr(parent, attr)
        assert isinstance(module, Int4Linear) and module.group_size == 32
        i, ours = int(name.split(".")[1]), name.split(".", 2)[2]
        parts = files_parts[ours]
        want = _dequantized_file_projection(reader, [f"blk.{i}.{p}.weight" for p, _ in parts],
                                            [h for _, h in parts])
        # Bit for bit: Q4_0's w = d * (q - 8) is the engine's (q - 8) * scale + zero.
        assert torch.equal(module.dequantized(torch.float32), want), name
    got = eng.generate(PROMPTS, GREEDY)
    assert all(o.text for o in got[:-1])
    # Top-1 agreement with the unquantized checkpoint, teacher forced on its greedy tokens:
    # measured 141 of 144 (97.9%); 0.95 leaves room for 4 more flips, not for a broken layout
    # (with the nibbles swapped it measured 3 of 144).
    full = engine("tiny-trained")
    prompts = [full.encode(p) for p in PROMPTS]
    forced = [ids for ids, _ in reference["none"]]
    agree = torch.cat([compare_logits(r, g)[0] for r, g in zip(
        teacher_forced_logits(full, prompts, forced),
        teacher_forced_logits(eng, prompts, forced), strict=True)])
    assert agree.float().mean() >= 0.95


def test_q4_0_cpu_kernel_reads_the_imported_codes(files):
    """bfloat16: the int4pack kernel takes the Q4_0 codes and (possibly negative) scales."""
    net, _, _ = load_gguf(files["q4_0"], "bfloat16", "cpu")
    assert net.quantization == "int4" and kernel_names(net) == ["int4pack_mm"]
    layer = net.layers[0].self_attn.qkv_proj
    x = torch.randn(3, layer.in_features, dtype=torch.bfloat16)
    want = torch.nn.functional.linear(x.float(), layer.dequantized(torch.float32))
    torch.testing.assert_close(layer(x).float(), want, rtol=2e-2, atol=8e-2)


# -- Q8_0 -------------------------------------------------------------------------------------
def test_q8_0_serves_the_engines_own_int8_outputs(files, reference):
    eng = engine(files["q8_0"])
    assert eng.config.quantization == "int8" and eng.model.quantization == "int8"
    got = eng.generate(PROMPTS, GREEDY)
    # Measured: identical on these prompts (and 99.8% top-1 on 512 random-token positions).
    assert [(o.token_ids, o.text) for o in got] == reference["int8"]
    # Why they are this close: the per-row requantization of Q8_0's blocks takes the row's
    # largest block scale (the f16 of the engine's own absmax / 127) and re-rounds each block
    # value, which lies within half a block step (<= half a row step) of the weight: the
    # codes differ from the engine's own by at most 1.
    own = engine("tiny-trained", quantization="int8").model
    diffs = []
    for (p1, a1, _), (p2, a2, _) in zip(projections(own), projections(eng.model), strict=True):
        m1, m2 = getattr(p1, a1), getattr(p2, a2)
        assert isinstance(m1, Int8Linear) and isinstance(m2, Int8Linear)
        d = (m1.weight_int8.int() - m2.weight_int8.int()).abs()
        assert d.max() <= 1
        diffs.append(d.float().mean())
        torch.testing.assert_close(m2.scale, m1.scale, rtol=2**-11, atol=0)  # f16's rounding
    assert 0 < float(torch.stack(diffs).mean()) < 0.3  # measured 0.158


# -- mixed types, llama.cpp conventions ---------------------------------------------------------
def test_mixed_file_f16_fallback_projection_loads_dense(tmp_path):
    """tiny's ffn_down rows (688) are not a multiple of 32: they fall back to F16, as llama.cpp's
    converter does; the import keeps that projection dense and quantizes the rest."""
    path = export_gguf("tiny", tmp_path / "tiny-q4.gguf", "q4_0")
    assert tensor_types(path) == {"F32": 9, "F16": 6, "Q4_0": 24}
    eng = engine(path)
    assert eng.config.quantization == "int4"
    for layer in eng.model.layers:  # dense: fp32 on CPU runs it through oneDNN
        assert isinstance(layer.mlp.down_proj, OneDnnLinear)
        assert isinstance(layer.mlp.gate_up_proj, Int4Linear)
    assert len(eng.generate(PROMPTS[:2], GREEDY)[0].token_ids) == 24


def test_file_follows_llama_cpp_conventions(files):
    reader = open_gguf(files["q8_0"])
    cfg = ModelConfig.from_dir(resolve_model("tiny-trained"))
    arch = gguf.MODEL_ARCH.LLAMA
    allowed = {gguf.TENSOR_NAMES[t].format(bid=i) + suffix for t in gguf.MODEL_TENSORS[arch]
               for i in range(cfg.num_layers) for suffix in (".weight", ".bias")}
    names = {t.name for t in reader.tensors}
    assert names <= allowed and len(names) == 2 + 9 * cfg.num_layers + 1
    for t in reader.tensors:
        if t.name.endswith("_norm.weight"):
            assert t.tensor_type == gguf.GGMLQuantizationType.F32
    field = lambda key: reader.get_field(key).contents()  # noqa: E731
    keys = gguf.Keys
    assert field(keys.General.ARCHITECTURE) == "llama"
    assert field(keys.General.FILE_TYPE) == gguf.LlamaFileType.MOSTLY_Q8_0
    expect = {keys.LLM.CONTEXT_LENGTH: cfg.max_position_embeddings,
              keys.LLM.EMBEDDING_LENGTH: cfg.hidden_size,
              keys.LLM.BLOCK_COUNT: cfg.num_layers,
              keys.LLM.FEED_FORWARD_LENGTH: cfg.intermediate_size,
              keys.LLM.VOCAB_SIZE: cfg.vocab_size,
              keys.Attention.HEAD_COUNT: cfg.num_heads,
              keys.Attention.HEAD_COUNT_KV: cfg.num_kv_heads,
              keys.Rope.DIMENSION_COUNT: cfg.head_dim}
    for key, value in expect.items():
        assert field(key.format(arch="llama")) == value, key
    tok = json.loads((resolve_model("tiny-trained") / "tokenizer.json").read_text())
    assert field(keys.Tokenizer.MODEL) == "gpt2" and field(keys.Tokenizer.PRE) == "gpt-2"
    assert len(field(keys.Tokenizer.LIST)) == cfg.vocab_size
    assert len(field(keys.Tokenizer.MERGES)) == len(tok["model"]["merges"])
    assert field(keys.Tokenizer.ADD_BOS) is False  # the tokenizer adds no BOS; llama.cpp neither


# -- bad input ----------------------------------------------------------------------------------
def _rewrite(src, dst, arch=None, drop=(), retype=None):
    """Copy a GGUF file, changing its architecture, dropping tensors or re-encoding some."""
    reader = open_gguf(src)
    writer = gguf.GGUFWriter(dst, arch or reader.get_field("general.architecture").contents())
    for name, f in reader.fields.items():
        if name.startswith("GGUF.") or name == "general.architecture":
            continue
        sub = f.types[-1] if f.types[0] == gguf.GGUFValueType.ARRAY else None
        writer.add_key_value(name, f.contents(), f.types[0], sub_type=sub)
    for t in reader.tensors:
        if t.name in drop:
            continue
        data, qtype = np.array(t.data), t.tensor_type
        if t.name in (retype or {}):
            qtype = retype[t.name]
            data = gguf.quants.quantize(gguf.quants.dequantize(t.data, t.tensor_type), qtype)
        writer.add_tensor(t.name, data, raw_dtype=qtype)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return dst


def test_bad_input_errors_name_the_field(files, tmp_path):
    types = gguf.GGMLQuantizationType
    with pytest.raises(ValueError, match=r"qtype: must be one of f32, f16, q8_0, q4_0; got 'q5_k'"):
        export_gguf("tiny-trained", tmp_path / "x.gguf", "q5_k")
    with pytest.raises(ValueError, match="sliding_window: 64 cannot be written"):
        export_gguf("tiny-mistral", tmp_path / "m.gguf", "f32")
    fake = tmp_path / "fake.gguf"
    fake.write_bytes(b"PK\x03\x04 not a gguf file")
    with pytest.raises(ValueError, match=r"model: .*fake.gguf' is not a GGUF file"):
        engine(fake)
    with pytest.raises(ValueError, match="model: GGUF file .* does not exist"):
        engine(tmp_path / "absent.gguf")
    with pytest.raises(ValueError, match="quantization: the GGUF file's projections load as "
                                         "'int4' .* but the config asks for 'int8'"):
        engine(files["q4_0"], quantization="int8")
    assert engine(files["q4_0"], quantization="int4").config.quantization_group_size == 32
    # A float file is quantized by the engine like any checkpoint.
    assert engine(files["f32"], quantization="int8").model.quantization == "int8"
    bad = _rewrite(files["q4_0"], tmp_path / "gpt2.gguf", arch="gpt2")
    with pytest.raises(ValueError, match="general.architecture: 'gpt2' is not supported; "
                                         "supported: llama, qwen2"):
        load_gguf(bad)
    bad = _rewrite(files["q4_0"], tmp_path / "q5.gguf", retype={"blk.0.attn_q.weight": types.Q5_0})
    with pytest.raises(ValueError, match="tensor blk.0.attn_q.weight: type Q5_0 is not supported "
                                         "for a block projection; supported: F32, F16, BF16, "
                                         "Q8_0, Q4_0"):
        load_gguf(bad)
    bad = _rewrite(files["q4_0"], tmp_path / "mixed.gguf",
                   retype={"blk.0.attn_k.weight": types.Q8_0})
    with pytest.raises(ValueError, match="tensor types: blk.0.attn_q.weight, blk.0.attn_k.weight, "
                                         "blk.0.attn_v.weight are fused .* got Q4_0, Q8_0, Q4_0"):
        load_gguf(bad)
    bad = _rewrite(files["q4_0"], tmp_path / "drop.gguf", drop={"blk.1.ffn_up.weight"})
    with pytest.raises(ValueError, match="tensor blk.1.ffn_up.weight: missing from"):
        load_gguf(bad)
    # Outside the projections any type gguf dequantizes loads (llama-quantize writes Q6_K there).
    ok = _rewrite(files["q4_0"], tmp_path / "q6k.gguf", retype={"output.weight": types.Q5_0})
    net, _, _ = load_gguf(ok, "float32", "cpu")
    assert net.quantization == "int4" and net.lm_head.weight.dtype == torch.float32


def test_cli_export_gguf_then_generate_from_the_file(tmp_path):
    from typer.testing import CliRunner

    from workbench.cli import app

    runner, out = CliRunner(), tmp_path / "t.gguf"
    res = runner.invoke(app, ["models", "export-gguf", "tiny-trained", str(out), "--type", "q8_0"])
    assert res.exit_code == 0, res.output
    assert res.output.startswith(f"{out}\t{out.stat().st_size} bytes\ttensors: 2 F16, 13 F32, "
                                 "42 Q8_0")
    res = runner.invoke(app, ["generate", "--model", str(out), "--max-tokens", "8", "def main("])
    assert res.exit_code == 0 and res.output.strip(), res.output
    res = runner.invoke(app, ["models", "export-gguf", "tiny-trained", str(out), "--type", "q2"])
    assert res.exit_code == 2 and res.output.startswith("error: type: must be one of"), res.output
