"""Weight-only int8: the scale rule, the CPU kernel against the dequantize-then-matmul
reference, and the engine's predictions against the unquantized model's."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from workbench.engine import EngineConfig, LLMEngine, SamplingParams
from workbench.engine.kv_quality import compare_logits, quality_workload, teacher_forced_logits
from workbench.models.quantize import Int4Linear, Int8Linear, quantize_int8_weight


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_int8_round_trip_error_is_at_most_half_a_step_per_row(dtype):
    w = (torch.randn(96, 64) * torch.linspace(0.01, 10, 96).unsqueeze(1)).to(dtype)
    q, scale = quantize_int8_weight(w)
    assert q.dtype == torch.int8 and scale.shape == (96,) and scale.dtype == dtype
    err = (w.float() - q.float() * scale.float().unsqueeze(1)).abs()
    # Half a step, plus the rounding of the stored scale itself for 16-bit dtypes.
    slack = 0.5 + (127 * 2**-8 if dtype == torch.bfloat16 else 1e-5)
    assert (err <= scale.float().unsqueeze(1) * slack).all()


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_cpu_kernel_matches_the_dequantized_reference(dtype):
    torch.manual_seed(0)
    linear = nn.Linear(256, 384, bias=True).to(dtype)
    kernel, reference = Int8Linear(linear, kernel=True), Int8Linear(linear, kernel=False)
    assert (kernel.kernel_name, reference.kernel_name) == ("int8pack_mm", "dequantize")
    x = torch.randn(3, 256, dtype=dtype)  # few rows: the kernel's regime
    got, want = kernel(x), reference(x)
    assert got.shape == (3, 384)
    torch.testing.assert_close(got.float(), want.float(), rtol=2e-2, atol=8e-2)
    # Many rows, or fp32 activations: the dense path over the dequantized weight.
    many = torch.randn(5, 7, 256, dtype=dtype)
    torch.testing.assert_close(kernel(many), reference(many))
    assert Int8Linear(linear.float(), kernel=True).kernel_name == "dequantize"


def test_int8_engine_keeps_its_predictions_and_stores_a_quarter_of_the_bytes():
    # 16 prompts x 32 forced tokens: 512 positions (measured 99.41% agreement, mean KL 2e-4).
    full = LLMEngine.from_pretrained("tiny", EngineConfig(dtype="float32", device="cpu",
                                                          num_kv_blocks=600))
    int8 = LLMEngine.from_pretrained("tiny", EngineConfig(dtype="float32", device="cpu",
                                                          num_kv_blocks=600,
                                                          quantization="int8"))
    prompts = quality_workload(full.model_config.vocab_size, seed=0, num_prompts=16)
    forced = [o.token_ids for o in full.generate(
        prompts, SamplingParams(max_tokens=32, temperature=0.0, ignore_eos=True))]
    ref = teacher_forced_logits(full, prompts, forced)
    got = teacher_forced_logits(int8, prompts, forced)
    agree = torch.cat([compare_logits(r, g)[0] for r, g in zip(ref, got, strict=True)])
    assert agree.float().mean() >= 0.98
    # Quantized projections: 1 byte per weight + a 4-byte scale per output channel.
    layers = [m for m in int8.model.modules() if isinstance(m, Int8Linear)]
    assert len(layers) == 4 * int8.model_config.num_layers
    for m in layers:
        assert m.stored_bytes() == m.in_features * m.out_features + 4 * m.out_features
    quantized = sum(m.stored_bytes() for m in layers)
    assert quantized <= 0.26 * sum(m.in_features * m.out_features * 4 for m in layers)
    assert int8.model.weight_bytes() < full.model.weight_bytes()


def test_quantization_errors_name_the_field():
    with pytest.raises(ValueError, match="quantization: must be one of none, int8, int4, "
                                         "int4-awq, fp8; got 'int3'"):
        EngineConfig(quantization="int3")
    from workbench.models.loader import load_model, load_tokenizer

    net, cfg, path = load_model("tiny", "float32", "cpu")
    with pytest.raises(ValueError, match="quantization: the model is 'none'"):
        LLMEngine(net, cfg, load_tokenizer(path), EngineConfig(quantization="int8"), path)


# -- int4 -------------------------------------------------------------------------------------
@pytest.mark.parametrize("group_size", [32, 64, 128])
def test_int4_round_trip_error_is_at_most_half_a_step_per_group(group_size):
    from workbench.models.quantize import dequantize_int4, quantize_int4_weight

    torch.manual_seed(1)
    w = torch.randn(64, 256) * torch.linspace(0.01, 5, 256)  # input channels of every size
    codes, scale, zero = quantize_int4_weight(w, group_size)
    assert codes.dtype == torch.uint8 and int(codes.max()) <= 15
    assert scale.shape == zero.shape == (64, 256 // group_size)
    err = (dequantize_int4(codes, scale, zero, torch.float32) - w).abs()
    step = scale.repeat_interleave(group_size, dim=1)
    assert (err <= step * 0.5 + 1e-6).all()


def test_unpacking_the_kernel_layout_inverts_torchs_int4_packing():
    from workbench.models.quantize import unpack_int4_kernel_layout

    torch.manual_seed(2)
    for out_f, in_f in ((64, 64), (192, 256), (1280, 768)):
        codes = torch.randint(0, 16, (out_f, in_f), dtype=torch.int32)
        packed = torch.ops.aten._convert_weight_to_int4pack_for_cpu(codes, 1)
        assert torch.equal(unpack_int4_kernel_layout(packed), codes.to(torch.uint8))


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
@pytest.mark.parametrize("group_size", [32, 64, 128])
def test_int4_kernel_matches_the_dequantized_reference(dtype, group_size):
    torch.manual_seed(3)
    linear = nn.Linear(256, 320, bias=True).to(dtype)
    kernel = Int4Linear.from_linear(linear, group_size, kernel=True)
    reference = Int4Linear.from_linear(linear, group_size, kernel=False)
    assert (kernel.kernel_name, reference.kernel_name) == ("int4pack_mm", "dequantize")
    assert kernel.stored_bytes() == reference.stored_bytes()
    torch.testing.assert_close(kernel.dequantized(torch.float32),
                               reference.dequantized(torch.float32))
    for rows in (1, 3, 100):  # the kernel's regime, and past kernel_max_rows (dense)
        x = torch.randn(rows, 256, dtype=dtype)
        torch.testing.assert_close(kernel(x).float(), reference(x).float(), rtol=2e-2,
                                   atol=1e-1)


def test_int4_shapes_the_kernel_cannot_take_fall_back_to_the_reference():
    torch.manual_seed(4)
    for linear, group in ((nn.Linear(64, 40), 32),  # out_features not a multiple of 64
                          (nn.Linear(64, 64), 16)):  # group size outside 32..256
        layer = Int4Linear.from_linear(linear.to(torch.bfloat16), group)
        assert layer.kernel_name == "dequantize"
        x = torch.randn(2, 64, dtype=torch.bfloat16)
        torch.testing.assert_close(layer(x), F.linear(x, layer.dequantized(x.dtype),
                                                      linear.bias))
    assert Int4Linear.from_linear(nn.Linear(64, 64), 32).kernel_name == "dequantize"  # fp32


def test_a_group_size_that_does_not_divide_a_layer_names_the_field_and_the_layer():
    with pytest.raises(ValueError, match="quantization_group_size: 48 does not divide the 256 "
                                         "input features of layers.0.self_attn.qkv_proj"):
        LLMEngine.from_pretrained("tiny", EngineConfig(device="cpu", quantization="int4",
                                                       quantization_group_size=48))
    with pytest.raises(ValueError, match="quantization_group_size: must be an integer >= 1"):
        EngineConfig(quantization="int4", quantization_group_size=0)


# -- AWQ --------------------------------------------------------------------------------------
def test_awq_cuts_the_output_error_on_a_layer_with_outlier_input_channels():
    from workbench.models.awq import search_clip, search_scale

    gen = torch.Generator().manual_seed(5)
    in_f, out_f, group = 256, 128, 64
    linear = nn.Linear(in_f, out_f, bias=False)
    with torch.no_grad():
        linear.weight.copy_(torch.randn(out_f, in_f, generator=gen) * 0.05)
    channel_size = torch.ones(in_f)
    channel_size[torch.tensor([3, 70, 150, 201])] = 40.0  # planted outlier channels

    def activations(n):
        return torch.randn(n, in_f, generator=gen) * channel_size

    calibration, held_out = activations(512), activations(512)
    s, alpha = search_scale(linear.weight, calibration, group)
    assert alpha > 0  # the search chose to protect the outliers
    clip = search_clip(linear.weight * s, calibration / s, group)
    awq = Int4Linear.from_linear(linear, group, kernel=False, input_scale=1 / s, clip=clip)
    plain = Int4Linear.from_linear(linear, group, kernel=False)
    want = linear(held_out)
    awq_err = (awq(held_out) - want).pow(2).mean()
    plain_err = (plain(held_out) - want).pow(2).mean()
    assert awq_err < 0.5 * plain_err, (float(awq_err), float(plain_err))


# -- fp8 --------------------------------------------------------------------------------------
def test_fp8_weights_follow_e4m3_precision_per_channel():
    from workbench.models.quantize import Fp8Linear

    torch.manual_seed(6)
    linear = nn.Linear(128, 96).to(torch.bfloat16)
    layer = Fp8Linear(linear)
    assert layer.kernel_name == "dequantize"  # no CPU matmul reads fp8
    w = linear.weight.float()
    err = (layer.dequantized(torch.float32) - w).abs()
    # e4m3 keeps 3 mantissa bits: half a step is 1/16 of the value (normal range), plus
    # the subnormal floor of the scaled format and the bf16 scale's rounding.
    scale = layer.scale.float().unsqueeze(1)
    assert (err <= w.abs() / 16 + scale * 2**-9 + w.abs() * 2**-8).all()
    assert layer.stored_bytes() == 96 * 128 + 96 * 2


# -- the engine -------------------------------------------------------------------------------
@pytest.mark.parametrize("quantization", ["int4", "int4-awq", "fp8"])
def test_quantized_weights_through_chunking_preemption_and_int8_kv(quantization):
    """Greedy outputs under a 32-token step budget and a pool so small that sequences are
    preempted equal those of the same quantized model with room to spare (fp32: the dense
    path, deterministic across batch shapes)."""
    prompts = [list(range(10 + i, 10 + i + n)) for i, n in enumerate((40, 7, 63, 25, 90, 12))]
    params = SamplingParams(max_tokens=24, temperature=0.0, ignore_eos=True)
    common = dict(dtype="float32", device="cpu", quantization=quantization,
                  quantization_group_size=64, kv_cache_dtype="int8")
    relaxed = LLMEngine.from_pretrained("tiny-trained", EngineConfig(**common))
    pressed = LLMEngine.from_pretrained("tiny-trained", EngineConfig(
        **common, block_size=4, num_kv_blocks=40, max_num_batched_tokens=32))
    want = [o.token_ids for o in relaxed.generate(prompts, params)]
    got = [o.token_ids for o in pressed.generate(prompts, params)]
    assert got == want
    assert sum(r.num_preempted for r in pressed.telemetry) > 0
    assert max(r.num_prefill_tokens for r in pressed.telemetry) <= 32


def test_quant_report_rejects_an_unknown_precision():
    from workbench.quant_report import parse_precision

    with pytest.raises(ValueError, match="precisions: unknown 'int3'"):
        parse_precision("int3")
    with pytest.raises(ValueError, match="precisions: unknown 'int8-g64'"):
        parse_precision("int8-g64")
    assert parse_precision("int4-awq-g32") == ("int4-awq", 32)
