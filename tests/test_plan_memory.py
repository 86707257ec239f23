"""Analytic memory, pinned with worked numbers from public model configs and spec sheets."""

from __future__ import annotations

import json
import math

import pytest

from workbench.plan.budget import ModelDoesNotFitError, max_concurrent_seqs, memory_plan, min_gpus
from workbench.plan.hardware import get_hardware
from workbench.plan.memory import (
    active_param_count,
    bits_per_weight,
    kv_bytes_per_token,
    kv_estimate,
    param_count,
    weight_bytes,
    weight_bytes_per_gpu,
)
from workbench.plan.models_catalog import MODELS, arch_from_hf_config, get_model

# Parameter counts published on the model cards / papers (independent of our formula).
PUBLISHED_PARAMS = {
    "llama-2-7b": 6.74e9, "llama-2-13b": 13.02e9, "llama-2-70b": 68.98e9,
    "llama-65b": 65.2e9,  # LLaMA paper (Touvron et al. 2023), Table 2
    "llama-3-8b": 8.03e9, "llama-3-70b": 70.55e9, "mistral-7b": 7.24e9,
    "qwen2-7b": 7.62e9, "qwen2-72b": 72.71e9, "mixtral-8x7b": 46.7e9,
}


@pytest.mark.parametrize("name", sorted(PUBLISHED_PARAMS))
def test_param_counts_match_published(name):
    assert param_count(get_model(name)) == pytest.approx(PUBLISHED_PARAMS[name], rel=0.01)


def test_mixtral_active_params_match_published():
    # Mistral AI's announcement: 46.7B total, 12.9B used per token (2 of 8 experts).
    assert active_param_count(get_model("mixtral-8x7b")) == pytest.approx(12.9e9, rel=0.01)


def test_every_catalog_entry_names_its_source():
    assert len(MODELS) >= 10
    assert all(m.source for m in MODELS.values())


def test_llama2_70b_kv_is_1_34_gb_not_the_mha_figure():
    m = get_model("llama-2-70b")
    est = kv_estimate(m, 4096, "fp16")
    # 2 (K,V) x 80 layers x 8 KV heads x 128 head dim x 2 bytes, per token.
    assert est.bytes_per_token == 2 * 80 * 8 * 128 * 2
    assert round(est.bytes_per_request / 1e9, 2) == 1.34
    assert est.attention_kind == "GQA" and "GQA" in est.note
    # The same shape with one KV head per query head: the ~10.7 GB figure, 8x more.
    assert round(est.mha_bytes_per_request / 1e9, 1) == 10.7
    assert est.mha_bytes_per_request == 8 * est.bytes_per_request


def test_mha_65b_needs_about_10_7_gb():
    est = kv_estimate(get_model("llama-65b"), 4096, "fp16")
    assert est.attention_kind == "MHA" and est.note.startswith("MHA")
    assert round(est.bytes_per_request / 1e9, 1) == 10.7


def test_mqa_and_kind_labels():
    m = get_model("llama-2-70b")
    assert m.with_kv_heads(1).attention_kind == "MQA"
    assert m.with_kv_heads(64).attention_kind == "MHA"
    assert kv_bytes_per_token(m.with_kv_heads(1), "fp16") * 8 == kv_bytes_per_token(m, "fp16")


def test_int4_group_128_is_4_25_bits_and_int8_adds_a_channel_scale():
    assert bits_per_weight("int4", group_size=128) == 4.25
    assert bits_per_weight("int4", group_size=64) == 4.5
    assert bits_per_weight("bf16") == 16 and bits_per_weight("fp32") == 32
    assert bits_per_weight("int8", in_features=4096) == 8 + 16 / 4096


def test_weight_bytes_by_precision():
    m = get_model("llama-2-7b")
    n = param_count(m)
    unquantized = 2 * m.vocab_size * m.hidden_size + (2 * m.num_layers + 1) * m.hidden_size
    linear = n - unquantized
    assert weight_bytes(m, "fp32") == 4 * n
    assert weight_bytes(m, "bf16") == weight_bytes(m, "fp16") == 2 * n
    # Block linears at 4.25 bits (all in_features divide by 128), the rest stays bf16.
    assert weight_bytes(m, "int4") == pytest.approx(linear * 4.25 / 8 + 2 * unquantized)
    assert weight_bytes(m, "int8") > linear + 2 * unquantized
    assert weight_bytes(m, "int8") < linear * 1.001 + 2 * unquantized
    with pytest.raises(ValueError, match="precision: unknown 'int3'.*int4"):
        weight_bytes(m, "int3")


def test_tied_embeddings_count_once():
    tied = arch_from_hf_config({**_config("llama-2-7b"), "tie_word_embeddings": True})
    untied = get_model("llama-2-7b")
    assert param_count(untied) - param_count(tied) == untied.vocab_size * untied.hidden_size


def test_tensor_parallel_shards_weights_and_kv_heads():
    m = get_model("llama-2-70b")
    assert weight_bytes_per_gpu(m, "bf16", 4) == pytest.approx(weight_bytes(m, "bf16") / 4,
                                                               rel=1e-4)
    assert kv_bytes_per_token(m, "fp16", tp=4) * 4 == kv_bytes_per_token(m, "fp16")
    # 16 GPUs > 8 KV heads: each GPU still holds a whole KV head (replicated).
    assert kv_bytes_per_token(m, "fp16", tp=16) == kv_bytes_per_token(m, "fp16", tp=8)
    with pytest.raises(ValueError, match="tp: must be >= 1 and divide"):
        kv_bytes_per_token(m, "fp16", tp=3)


def test_sliding_window_caps_kv_and_quantized_kv_halves_it():
    m = get_model("mistral-7b")
    full = kv_estimate(m, 32768, "fp16")
    assert full.tokens_held == m.sliding_window == 4096
    assert full.bytes_per_request == kv_estimate(m, 4096, "fp16").bytes_per_request
    assert kv_estimate(m, 2048, "fp8").bytes_per_request * 2 == kv_estimate(
        m, 2048, "bf16").bytes_per_request
    with pytest.raises(ValueError, match="kv_dtype: unknown 'int2'"):
        kv_estimate(m, 10, "int2")


def test_concurrent_sequences_formula():
    m, hw = get_model("llama-2-7b"), get_hardware("h100-sxm")
    usable = 81559 * 2**20 * 0.9  # nvidia-smi's 81559 MiB, not 80e9 bytes
    kv = 2 * 32 * 32 * 128 * 2 * 4096
    expected = int((usable - weight_bytes(m, "bf16")) // kv)
    assert max_concurrent_seqs(m, hw, "bf16", 4096) == expected
    plan = memory_plan(m, hw, "bf16", 4096)
    assert plan.max_concurrent_seqs == expected and plan.attention_kind == "MHA"
    # Llama-3-8B (GQA, 8 KV heads vs 32) stores 4x fewer KV bytes per token: with slightly
    # larger weights, nearly 4x the sequences fit.
    gqa = max_concurrent_seqs(get_model("llama-3-8b"), hw, "bf16", 4096)
    assert 3.5 * expected < gqa <= 4 * expected


def test_model_that_does_not_fit_even_at_int4_says_how_many_gpus():
    m, l4 = get_model("llama-2-70b"), get_hardware("l4")
    need = min_gpus(m, l4, "int4", 4096)
    # 68.98B params at ~4.25 bits is ~37 GB; one L4 (23034 MiB) keeps 90% = 21.7 GB usable.
    assert need == math.ceil(weight_bytes(m, "int4") / (23034 * 2**20 * 0.9)) > 1
    with pytest.raises(ModelDoesNotFitError, match=rf"does not fit on 1 x l4.*needs {need} x l4"):
        memory_plan(m, l4, "int4", 4096)
    with pytest.raises(ValueError, match=rf"even at int4 it needs {need} x l4"):
        memory_plan(m, l4, "bf16", 4096)
    assert memory_plan(m, l4, "int4", 4096, tp=need).max_concurrent_seqs >= 1


def test_unknown_model_suggests_close_matches():
    with pytest.raises(ValueError, match=r"model: unknown 'llama-2-75b'; did you mean .*llama-2"):
        get_model("llama-2-75b")
    assert get_model("Llama-2 70B").name == "llama-2-70b"  # forgiving spelling


def _config(name: str) -> dict:
    m = MODELS[name]
    return {"architectures": ["LlamaForCausalLM"], "model_type": "llama",
            "hidden_size": m.hidden_size, "num_hidden_layers": m.num_layers,
            "num_attention_heads": m.num_heads, "num_key_value_heads": m.num_kv_heads,
            "intermediate_size": m.intermediate_size, "vocab_size": m.vocab_size,
            "max_position_embeddings": m.context_length}


def test_local_mixtral_config_json_reads_like_the_catalog(tmp_path):
    cfg = {**_config("mixtral-8x7b"), "architectures": ["MixtralForCausalLM"],
           "model_type": "mixtral", "num_local_experts": 8, "num_experts_per_tok": 2}
    (tmp_path / "config.json").write_text(json.dumps(cfg))
    local = get_model(tmp_path)
    assert local.num_experts == 8 and local.experts_per_token == 2
    assert param_count(local) == param_count(get_model("mixtral-8x7b"))
    with pytest.raises(ValueError, match="config.hidden_size: missing"):
        arch_from_hf_config({"num_attention_heads": 2})


@pytest.mark.parametrize("group_size", [0, -128, 1.5])
def test_int4_group_size_must_be_a_positive_whole_number(group_size):
    m = get_model("llama-2-7b")
    with pytest.raises(ValueError, match=r"^group_size: must be a whole number of weights >= 1"):
        weight_bytes(m, "int4", group_size=group_size)
    with pytest.raises(ValueError, match=r"^group_size"):
        bits_per_weight("int4", group_size=group_size)
    assert weight_bytes(m, "bf16", group_size=group_size) == 2 * param_count(m)  # unused there


def test_a_path_that_is_no_model_says_what_model_should_be(tmp_path):
    with pytest.raises(ValueError, match=r"^model: /etc/passwd is not a catalog name or a "
                                         r"directory with config\.json.*not a readable JSON"):
        get_model("/etc/passwd")
    with pytest.raises(ValueError, match=r"^model: .* is a directory without a config\.json"):
        get_model(tmp_path)
    (tmp_path / "config.json").write_text(json.dumps({"hidden_size": 8}))
    with pytest.raises(ValueError, match=r"^model: .*not a decoder config\.json "
                                         r"\(config\.num_attention_heads: missing"):
        get_model(tmp_path)


def test_kv_per_request_of_the_whole_replica():
    m = get_model("llama-2-70b")
    one, four = kv_estimate(m, 4096, "bf16"), kv_estimate(m, 4096, "bf16", tp=4)
    assert four.bytes_per_request_replica == one.bytes_per_request == 4 * four.bytes_per_request
    # 16 GPUs, 8 KV heads: each head is held twice, so the replica holds twice the model's KV.
    assert kv_estimate(m, 4096, "bf16", tp=16).bytes_per_request_replica == (
        2 * one.bytes_per_request)


def test_one_smallest_tp_and_the_tp_sizes_that_divide_the_heads():
    from workbench.plan.budget import min_tp, tp_sizes

    m, l4 = get_model("llama-2-70b"), get_hardware("l4")     # 64 heads
    assert list(tp_sizes(m, 8)) == [1, 2, 4, 8] and list(tp_sizes(m, 64, start=3)) == [
        4, 8, 16, 32, 64]
    assert list(tp_sizes(get_model("qwen2-7b"), 8)) == [1, 2, 4, 7]     # 28 heads
    for p in ("bf16", "int4"):
        assert min_gpus(m, l4, p, 4096) == min_tp(m, l4, p, 4096, 1)
    assert min_tp(m, l4, "int4", 4096, concurrency=64) > min_tp(m, l4, "int4", 4096)


def test_memory_fit_answers_without_raising_and_memory_plan_raises_its_advice():
    from workbench.plan.budget import fit_advice, memory_fit

    m, l4 = get_model("llama-2-70b"), get_hardware("l4")
    plan = memory_fit(m, l4, "int4", 4096)
    assert not plan.fits and plan.max_concurrent_seqs == 0 and plan.tp == 1
    advice = fit_advice(m, l4, plan)
    assert advice.min_tp == min_gpus(m, l4, "int4", 4096) == advice.at_min_tp.tp
    assert advice.at_min_tp.fits
    with pytest.raises(ModelDoesNotFitError) as e:
        memory_plan(m, l4, "int4", 4096)
    assert str(e.value) == "model: " + advice.text
    fits = memory_fit(m, l4, "int4", 4096, tp=advice.min_tp)
    assert fits == memory_plan(m, l4, "int4", 4096, tp=advice.min_tp)
    assert fit_advice(m, l4, fits).text.startswith("fits: ")
