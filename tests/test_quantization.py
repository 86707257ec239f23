"""Weight-only int8: the scale rule, the CPU kernel against the dequantize-then-matmul
reference, and the engine's predictions against the unquantized model's."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from workbench.engine import EngineConfig, LLMEngine, SamplingParams
from workbench.engine.kv_quality import compare_logits, quality_workload, teacher_forced_logits
from workbench.models.quantize import Int8Linear, quantize_int8_weight


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
