"""The embedded checkpoints and the config reader."""

from __future__ import annotations

import hashlib

import pytest

from workbench.models.config import ModelConfig, UnsupportedModelError
from workbench.models.tiny import PRESETS, build_tiny_checkpoint, random_weights


def _digest(path):
    return hashlib.sha256((path / "model.safetensors").read_bytes()).hexdigest()


def test_tiny_checkpoint_loads_in_transformers_and_is_deterministic(tmp_path):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    a = build_tiny_checkpoint(tmp_path / "a", "tiny", seed=0)
    b = build_tiny_checkpoint(tmp_path / "b", "tiny", seed=0)
    c = build_tiny_checkpoint(tmp_path / "c", "tiny", seed=1)
    assert _digest(a) == _digest(b) != _digest(c)
    model = AutoModelForCausalLM.from_pretrained(str(a))
    assert 4e6 < sum(p.numel() for p in model.parameters()) < 6e6
    tok = AutoTokenizer.from_pretrained(str(a))
    texts = ["plain ascii", "héllo wörld", "日本語のテキスト", "emoji 🎉🚀",
             "tabs\tand\nnewlines  "]
    for text in texts:
        assert tok.decode(tok(text)["input_ids"]) == text


def test_small_preset_size():
    spec = PRESETS["small"]
    h, kv = spec.hidden_size, spec.num_kv_heads * spec.head_dim
    per_layer = (h * h * 2 + h * kv * 2  # q, o; k, v
                 + 3 * h * spec.intermediate_size  # gate, up, down
                 + 2 * h)  # two RMSNorms
    expected = spec.num_layers * per_layer + 2 * spec.vocab_size * h + h  # + embed, lm_head, norm
    n = sum(t.numel() for t in random_weights(spec, 0).values())
    assert n == expected == 56_636_160  # the README's 56.6M


def test_generation_config_eos_ids_stop_generation(tmp_path, tiny_path):
    import json
    import shutil

    from workbench.engine import EngineConfig, LLMEngine, SamplingParams

    path = shutil.copytree(tiny_path, tmp_path / "instruct")
    params = SamplingParams(max_tokens=20, temperature=0)
    cfg = EngineConfig(dtype="float32", device="cpu")
    base = LLMEngine.from_pretrained(path, cfg).generate(["def main():"], params)[0].token_ids
    # An "end of turn" token named only in generation_config.json, as instruct models do.
    k = next(i for i in range(3, 20) if base[i] not in base[:i])
    eot = base[k]
    (path / "generation_config.json").write_text(json.dumps({"eos_token_id": [2, eot]}))
    assert ModelConfig.from_dir(path).eos_token_ids == (2, eot)
    out = LLMEngine.from_pretrained(path, cfg).generate(["def main():"], params)[0]
    assert out.finish_reason == "stop" and out.token_ids == base[: k + 1]
    (path / "generation_config.json").write_text(json.dumps({"eos_token_id": eot}))
    assert ModelConfig.from_dir(path).eos_token_ids == (2, eot)
    (path / "generation_config.json").write_text(json.dumps({"max_length": 20}))
    assert ModelConfig.from_dir(path).eos_token_ids == (2,)


def test_unknown_preset(tmp_path):
    with pytest.raises(ValueError, match="preset"):
        build_tiny_checkpoint(tmp_path, "huge")


BASE = {"architectures": ["LlamaForCausalLM"], "hidden_size": 64, "intermediate_size": 128,
        "num_hidden_layers": 2, "num_attention_heads": 4, "vocab_size": 100}


def test_config_reads_both_rope_spellings():
    old = ModelConfig.from_dict({**BASE, "rope_theta": 500000.0, "rope_scaling": {
        "rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0, "high_freq_factor": 4.0,
        "original_max_position_embeddings": 8192}})
    new = ModelConfig.from_dict({**BASE, "rope_parameters": {
        "rope_type": "llama3", "rope_theta": 500000.0, "factor": 8.0, "low_freq_factor": 1.0,
        "high_freq_factor": 4.0, "original_max_position_embeddings": 8192}})
    assert old == new and old.rope_theta == 500000.0 and old.rope_scaling["factor"] == 8.0
    plain = ModelConfig.from_dict({**BASE, "rope_parameters": {"rope_type": "default",
                                                                "rope_theta": 1e6}})
    assert plain.rope_theta == 1e6 and plain.rope_scaling is None
    assert plain.num_kv_heads == 4 and plain.head_dim == 16


def test_config_rejects_unsupported_rope_and_activation():
    with pytest.raises(UnsupportedModelError, match="rope_type"):
        ModelConfig.from_dict({**BASE, "rope_scaling": {"rope_type": "yarn", "factor": 4.0}})
    with pytest.raises(UnsupportedModelError, match="hidden_act"):
        ModelConfig.from_dict({**BASE, "hidden_act": "gelu"})


def test_rope_llama3_matches_transformers():
    import torch
    from transformers import LlamaConfig
    from transformers.modeling_rope_utils import ROPE_INIT_FUNCTIONS

    from workbench.models.rope import inverse_frequencies

    scaling = {"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0,
               "high_freq_factor": 4.0, "original_max_position_embeddings": 64}
    cfg = LlamaConfig(hidden_size=64, num_attention_heads=2, rope_theta=10000.0,
                      rope_scaling=scaling, max_position_embeddings=512)
    ref, _ = ROPE_INIT_FUNCTIONS["llama3"](cfg, "cpu")
    torch.testing.assert_close(inverse_frequencies(32, 10000.0, scaling), ref)


@pytest.mark.parametrize("dtype", ["float32", "bfloat16"])
def test_rope_rotation_equals_transformers_bit_for_bit(dtype):
    """The engine rotates q and k heads together with a sign-folded sin; transformers' own
    apply_rotary_pos_emb on the same cos/sin must give identical bits."""
    import torch
    from transformers.models.llama.modeling_llama import apply_rotary_pos_emb

    from workbench.models.rope import RotaryEmbedding

    dt = getattr(torch, dtype)
    rope = RotaryEmbedding(64, 4096, 10000.0, None)
    gen = torch.Generator().manual_seed(0)
    positions = torch.randint(0, 4096, (37,), generator=gen)
    q = torch.randn(37, 12, 64, generator=gen).to(dt)
    k = torch.randn(37, 4, 64, generator=gen).to(dt)
    got = rope.rotate(torch.cat([q, k], 1), rope.tables(positions, dt))
    freqs = torch.outer(positions.float(), rope.cos.new_tensor(
        1.0 / (10000.0 ** (torch.arange(0, 64, 2, dtype=torch.int64).float() / 64))))
    emb = torch.cat((freqs, freqs), -1)
    want_q, want_k = apply_rotary_pos_emb(  # transformers' layout: [batch, heads, T, D]
        q.transpose(0, 1)[None], k.transpose(0, 1)[None], emb.cos().to(dt)[None],
        emb.sin().to(dt)[None])
    assert torch.equal(got[:, :12], want_q[0].transpose(0, 1))
    assert torch.equal(got[:, 12:], want_k[0].transpose(0, 1))


def test_loads_a_checkpoint_written_by_transformers(tmp_path):
    """transformers 5 writes `rope_parameters` and `dtype`; the loader must read what HF saves."""
    import torch
    from transformers import Qwen2Config, Qwen2ForCausalLM

    from tests.hf_reference import hf_greedy, random_workload
    from workbench.engine import EngineConfig, LLMEngine, SamplingParams

    torch.manual_seed(0)
    cfg = Qwen2Config(hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                      num_attention_heads=4, num_key_value_heads=2, vocab_size=512,
                      max_position_embeddings=256, tie_word_embeddings=True,
                      rope_theta=10000.0)
    model = Qwen2ForCausalLM(cfg)
    with torch.no_grad():  # HF's 0.02-std init gives near-tied logits; spread them
        model.model.embed_tokens.weight.mul_(50)
    model.save_pretrained(tmp_path)
    prompts, outputs = random_workload(1, 4, 512, prompt_range=(4, 30), output_range=(4, 12))
    refs = hf_greedy(tmp_path, prompts, outputs)
    eng = LLMEngine.from_pretrained(tmp_path, EngineConfig(dtype="float32", device="cpu",
                                                           max_num_seqs=4))
    got = eng.generate(prompts, [SamplingParams(max_tokens=n, temperature=0) for n in outputs])
    assert [o.token_ids for o in got] == refs
    assert eng.tokenizer is None  # none saved: token-id prompts only, a clear error for text
    with pytest.raises(ValueError, match="prompt: this checkpoint has no tokenizer"):
        eng.add_request("t", "text", SamplingParams())


def test_bfloat16_engine_matches_transformers_in_bfloat16(tiny_path):
    """Every greedy token the bf16 engine picks (batched, chunked, preempted) is transformers'
    bf16 argmax on the same context, up to bf16 rounding.

    Token-exact comparison of two free-running generations is not a fair test in bf16: logits
    carry 8 significant bits (spacing 0.0625-0.125 at the tiny model's logit sizes, 8-32),
    and transformers' own bf16 top-2 logits tie exactly in most 20-token runs, so which
    token wins a tie depends on summation order, and the runs diverge from there on. Teacher
    forcing instead scores each engine token on the engine's own context."""
    import torch
    from transformers import AutoModelForCausalLM

    from tests.hf_reference import random_workload
    from workbench.engine import EngineConfig, LLMEngine, SamplingParams, telemetry_frame

    eng = LLMEngine.from_pretrained(tiny_path, EngineConfig(
        dtype="bfloat16", device="cpu", block_size=4, num_kv_blocks=60,
        max_num_batched_tokens=64))
    assert eng.kv_caches[0].k.dtype == torch.bfloat16
    assert eng.model.embed_tokens.weight.dtype == torch.bfloat16
    prompts, outputs = random_workload(5, 16, 4096, output_range=(16, 32))
    got = eng.generate(prompts, [SamplingParams(max_tokens=n, temperature=0) for n in outputs])
    assert telemetry_frame(eng).num_preempted.sum() > 0
    hf = AutoModelForCausalLM.from_pretrained(str(tiny_path), dtype=torch.bfloat16).eval()
    exact = total = 0
    with torch.inference_mode():
        for ids, out in zip(prompts, got, strict=True):
            logits = hf(torch.tensor([ids + out.token_ids])).logits[0, len(ids) - 1 : -1].float()
            top = logits.max(dim=1).values
            chosen = logits.gather(1, torch.tensor(out.token_ids)[:, None])[:, 0]
            ulp = 2.0 ** (torch.floor(torch.log2(top.abs())) - 7)  # bf16 spacing at the top
            assert (top - chosen <= 2 * ulp).all(), (ids, out.token_ids)
            exact += int((chosen == top).sum())
            total += len(out.token_ids)
    assert exact >= 0.95 * total  # off the argmax only at near-ties
