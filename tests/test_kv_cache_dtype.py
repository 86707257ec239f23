"""Quantized KV caches (int8 per token and head, fp8_e4m3 per layer and head): the scale
rules, what the pool holds at one byte budget, the engine paths (chunked prefill, prefix
caching, preemption) and the predictions they change, against full-precision KV."""

from __future__ import annotations

import random

import pytest
import torch

from workbench.engine import EngineConfig, SamplingParams
from workbench.engine.kv_cache import (
    FP8_MAX,
    allocate_kv_cache,
    dequantize_fp8,
    dequantize_int8,
    quantize_fp8,
    quantize_int8,
)
from workbench.engine.telemetry import telemetry_frame
from workbench.models.config import ModelConfig

QUANTIZED = ["int8", "fp8_e4m3"]


# -- the field --------------------------------------------------------------------------------
def test_unknown_kv_cache_dtype_names_the_field_and_the_choices(tmp_path):
    from typer.testing import CliRunner

    from workbench.cli import app
    from workbench.traffic.scenario import Scenario

    message = "kv_cache_dtype: must be one of auto, int8, fp8_e4m3; got 'int4'"
    with pytest.raises(ValueError, match=message):
        EngineConfig(kv_cache_dtype="int4")
    with pytest.raises(ValueError, match=message):
        EngineConfig.from_dict({"kv_cache_dtype": "int4"})
    with pytest.raises(ValueError, match=message):  # a scenario's target.engine
        Scenario.model_validate({"name": "s", "arrival": {"kind": "constant", "rate": 1.0},
                                 "num_requests": 2, "target": {
                                     "kind": "engine", "model": "tiny",
                                     "engine": {"kv_cache_dtype": "int4"}}})
    res = CliRunner().invoke(app, ["profile", "--model", "tiny", "--set", "kv_cache_dtype=int4",
                                   "--out", str(tmp_path)])
    assert res.exit_code == 2 and res.output.strip() == f"error: {message}", res.output
    assert EngineConfig().kv_cache_dtype == "auto"


# -- the scale rules ----------------------------------------------------------------------------
def _vectors(dtype=torch.float32) -> torch.Tensor:
    """[tokens, heads, 64] with ranges from 1e-3 to 1e3 per vector, and one all-zero vector."""
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(64, 4, 64, generator=gen) * torch.logspace(-3, 3, 64)[:, None, None]
    x[0, 0] = 0
    return x.to(dtype)


@pytest.mark.parametrize("scale_dtype", [torch.float32, torch.bfloat16, torch.float16])
def test_int8_round_trip_error_is_at_most_half_a_step(scale_dtype):
    x = _vectors()
    q, scale = quantize_int8(x, scale_dtype)
    assert q.dtype == torch.int8 and scale.dtype == scale_dtype and scale.shape == x.shape[:2]
    assert q.abs().max() <= 127
    err = (x - dequantize_int8(q, scale, torch.float32)).abs()
    bound = scale.float().unsqueeze(-1) / 2 * (1 + 1e-6)
    assert (err <= bound).all(), float((err - bound).max())
    assert err[0, 0].max() == 0  # a zero vector stays zero
    # The step is absmax / 127 (rounded to the scale's dtype): not coarser than it must be.
    absmax = x.abs().amax(-1)
    assert torch.allclose(scale.float(), absmax / 127, rtol=2**-8)


def test_fp8_round_trip_error_follows_e4m3_precision_and_saturates():
    # Ranges from 1e-3 to ~4 (a unit scale's intended range), subnormals included.
    gen = torch.Generator().manual_seed(1)
    x = torch.randn(32, 4, 64, generator=gen) * torch.logspace(-3, 0, 32)[:, None, None]
    scale = torch.tensor([1.0, 0.5, 2.0, 1.0])
    q = quantize_fp8(x, scale)
    assert q.dtype == torch.float8_e4m3fn
    err = (x - dequantize_fp8(q, scale, torch.float32)).abs()
    s = scale[None, :, None]
    # 3 mantissa bits: half an ulp is 2^-4 relative in the normal range, 2^-10 x scale below.
    assert (err <= torch.maximum(x.abs() * 2**-4, s * 2**-10) * (1 + 1e-6)).all()
    big = torch.tensor([[[1e4, -1e4, 447.0]]])
    back = dequantize_fp8(quantize_fp8(big, torch.ones(1)), torch.ones(1), torch.float32)
    assert back.tolist() == [[[FP8_MAX, -FP8_MAX, 448.0]]]  # saturated, never NaN


@pytest.mark.parametrize("kv_cache_dtype", ["auto", *QUANTIZED])
def test_cache_reads_back_what_write_returned(tiny_path, kv_cache_dtype):
    """What a prefill chunk attends over (write's return) is bitwise what a later gather reads,
    so a prompt's logits do not depend on chunking or prefix-cache hits."""
    cfg = ModelConfig.from_dir(tiny_path)
    for dtype in (torch.float32, torch.bfloat16):
        layer = allocate_kv_cache(cfg, 6, 4, dtype, "cpu", kv_cache_dtype)[0]
        k, v = (torch.randn(10, cfg.num_kv_heads, cfg.head_dim).to(dtype) for _ in range(2))
        slots = torch.tensor([4, 5, 6, 7, 8, 9, 16, 17, 18, 23])  # blocks 1, 2, 4, 5
        k_back, v_back = layer.write(slots, k, v)
        got_k, got_v = layer.gather(torch.tensor([1, 2, 4, 5]), {}, "t")
        flat_k = got_k.reshape(-1, cfg.num_kv_heads, cfg.head_dim)
        flat_v = got_v.reshape(-1, cfg.num_kv_heads, cfg.head_dim)
        rows = torch.tensor([0, 1, 2, 3, 4, 5, 8, 9, 10, 15])
        assert got_k.dtype == dtype
        assert torch.equal(flat_k[rows], k_back) and torch.equal(flat_v[rows], v_back)
        if kv_cache_dtype == "auto":
            assert torch.equal(k_back, k) and torch.equal(v_back, v)
        else:
            assert not torch.equal(k_back, k)  # really stored in fewer bits
            assert torch.allclose(k_back.float(), k.float(), atol=0.1, rtol=0.1)


# -- bytes per token and the pool -------------------------------------------------------------
def _pool_bytes(engine) -> int:
    return sum(t.numel() * t.element_size() for layer in engine.kv_caches for t in layer)


def test_pool_holds_about_2x_tokens_vs_16_bit_and_4x_vs_fp32_at_one_budget(tiny_path,
                                                                           tiny_engine_factory):
    from workbench.engine import LLMEngine

    budget = 8 << 20
    fp32 = {kv: tiny_engine_factory(kv_cache_memory=budget, kv_cache_dtype=kv)
            for kv in ("auto", *QUANTIZED)}
    bf16 = {kv: LLMEngine.from_pretrained(tiny_path, EngineConfig(
        dtype="bfloat16", device="cpu", kv_cache_memory=budget, kv_cache_dtype=kv))
            for kv in ("auto", *QUANTIZED)}
    cfg = ModelConfig.from_dir(tiny_path)
    L, H, D = cfg.num_layers, cfg.num_kv_heads, cfg.head_dim
    for engines, width in ((fp32, 4), (bf16, 2)):
        # int8 values + one model-dtype scale per token and head; fp8 values only.
        assert engines["auto"].kv_bytes_per_token == 2 * L * H * D * width
        assert engines["int8"].kv_bytes_per_token == 2 * L * H * (D + width)
        assert engines["fp8_e4m3"].kv_bytes_per_token == 2 * L * H * D
        for kv, eng in engines.items():
            assert eng.kv_cache_dtype == kv
            tokens = eng.num_kv_blocks * eng.config.block_size
            bs = eng.config.block_size
            assert tokens == budget // (bs * eng.kv_bytes_per_token) * bs
            # The allocation is what the sizing counted; fp8 adds only its per-head scales.
            fixed = 2 * L * H * 4 if kv == "fp8_e4m3" else 0
            assert _pool_bytes(eng) == tokens * eng.kv_bytes_per_token + fixed
    ratio = lambda e, kv: e[kv].num_kv_blocks / e["auto"].num_kv_blocks  # noqa: E731
    # tiny's heads have 32 dims: int8 stores 32 + 2 bytes per head where bf16 stores 64.
    assert ratio(bf16, "int8") == pytest.approx(64 / 34, rel=0.01)
    assert ratio(bf16, "fp8_e4m3") == pytest.approx(2.0, rel=0.01)
    assert ratio(fp32, "int8") == pytest.approx(128 / 36, rel=0.01)
    assert ratio(fp32, "fp8_e4m3") == pytest.approx(4.0, rel=0.01)


def test_planner_kv_bytes_use_the_engine_formula(tiny_path, tiny_engine_factory):
    from workbench.plan.memory import kv_bytes_per_token
    from workbench.plan.models_catalog import get_model

    arch = get_model(tiny_path)
    fp8 = tiny_engine_factory(num_kv_blocks=4, kv_cache_dtype="fp8_e4m3")
    int8 = tiny_engine_factory(num_kv_blocks=4, kv_cache_dtype="int8")
    assert kv_bytes_per_token(arch, "fp8_e4m3") == fp8.kv_bytes_per_token
    # The planner prices GPU int8 KV under a per-tensor scale; the engine's per-token scales
    # (fp32 here: the model's dtype) are the difference, and nothing else.
    scales = 2 * arch.num_layers * arch.num_kv_heads * 4
    assert kv_bytes_per_token(arch, "int8") + scales == int8.kv_bytes_per_token


# -- the engine paths ------------------------------------------------------------------------
def _shared_prefix_prompts(vocab: int, seed: int = 3):
    rng = random.Random(seed)
    prefix = [rng.randrange(4, vocab) for _ in range(40)]
    prompts = [prefix + [rng.randrange(4, vocab) for _ in range(rng.randint(1, 30))]
               for _ in range(8)]
    return prompts + [list(prompts[0])], [rng.randint(8, 24) for _ in range(9)]


CONFIGS = {
    "one chunk, no caching": dict(enable_prefix_caching=False),
    "prefix caching": dict(),
    "chunked": dict(max_num_batched_tokens=32),
    "preempt": dict(block_size=4, num_kv_blocks=40, max_num_batched_tokens=64),
    "swap": dict(block_size=4, num_kv_blocks=40, max_num_batched_tokens=64,
                 preemption_mode="swap"),
}


@pytest.mark.parametrize("kv_cache_dtype", QUANTIZED)
def test_quantized_kv_through_caching_chunking_and_preemption(tiny_engine_factory,
                                                              kv_cache_dtype):
    probe = tiny_engine_factory(num_kv_blocks=4)
    prompts, outputs = _shared_prefix_prompts(probe.model_config.vocab_size)
    params = [SamplingParams(max_tokens=n, temperature=0.0, ignore_eos=True) for n in outputs]
    tokens = {}
    for name, config in CONFIGS.items():
        eng = tiny_engine_factory(max_num_seqs=4, kv_cache_dtype=kv_cache_dtype, **config)
        got = eng.generate(prompts, params)
        assert [len(o.token_ids) for o in got] == outputs
        tokens[name] = [o.token_ids for o in got]
        steps = telemetry_frame(eng)
        if name == "prefix caching":
            assert steps.num_cached_tokens.sum() > 0
        if name == "chunked":
            assert steps.num_prefill_tokens.max() <= 32
        if name in ("preempt", "swap"):
            assert steps.num_preempted.sum() > 0, "the small pool was meant to preempt"
        if name == "swap":  # quantized blocks (and int8's per-token scales) go out and back
            assert steps.num_preempted_swap.sum() == steps.num_preempted.sum()
        assert eng.block_manager.num_free_blocks == eng.block_manager.num_blocks
    # Every query attends over the stored (quantized) K/V, so how a prompt was split into
    # chunks, found in the cache, recomputed or swapped after preemption does not change the
    # output.
    first = tokens["one chunk, no caching"]
    for name, got in tokens.items():
        assert got == first, f"{name} changed the greedy output"


# -- what it costs in predictions -------------------------------------------------------------
@pytest.fixture(scope="module")
def tiny_fp32(tiny_path):
    from workbench.models.loader import load_model, load_tokenizer

    net, cfg, path = load_model(tiny_path, "float32", "cpu")
    return net, cfg, load_tokenizer(path), path


def test_quantized_kv_keeps_99_percent_top1_agreement_on_tiny(tiny_fp32):
    from workbench.engine.kv_quality import NOISE_FLOOR, compare_kv_dtypes

    floor, *quantized = compare_kv_dtypes("tiny", [NOISE_FLOOR, *QUANTIZED], "float32",
                                          loaded=tiny_fp32)
    got = {q.kv_cache_dtype: q for q in quantized}
    assert floor.positions == 16 * 32 and floor.top1_agreement == 1.0
    assert floor.mean_kl < 1e-7  # fp32 with other chunks: the method itself adds ~nothing
    for kv, q in got.items():
        assert q.positions == floor.positions
        assert q.top1_agreement >= 0.99, (kv, q)
        assert 100 * floor.mean_kl < q.mean_kl < 1e-3, (kv, q)  # quantized, and only a little
    # Per-token int8 steps (absmax / 127) are finer than e4m3's 3 mantissa bits.
    assert got["int8"].mean_kl < got["fp8_e4m3"].mean_kl


@pytest.mark.slow
def test_quantized_kv_keeps_99_percent_top1_agreement_on_small():
    """`small` in fp32, the dtype its preset loads in (20 s on an idle 2-core machine, over a
    minute on a busy one: `pytest -m slow`). In bf16 the logits' own rounding flips ~1% of positions
    even with full-precision KV (benchmarks/bench_kv_dtype.py prints that noise floor)."""
    from workbench.engine.kv_quality import compare_kv_dtypes

    for q in compare_kv_dtypes("small", QUANTIZED, "float32"):
        assert q.positions == 16 * 32
        assert q.top1_agreement >= 0.99, q
        assert 0 < q.mean_kl < 1e-3, q
