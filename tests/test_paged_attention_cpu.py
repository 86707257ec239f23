"""The C++ decode-attention kernel (attention_backend="cpu-kernel") against the SDPA path.

The kernel is compiled on first use (~30 s once per machine, cached by torch afterwards).
"""

from __future__ import annotations

import random

import pytest
import torch
import torch.nn.functional as F

from workbench.engine import EngineConfig, LLMEngine, SamplingParams
from workbench.models import paged_attention_cpu


@pytest.fixture(scope="module")
def kernel():
    try:
        return paged_attention_cpu.load_kernel()
    except RuntimeError as e:  # no compiler on this machine: the backend is unavailable
        pytest.skip(str(e))


def reference(q, k_pool, v_pool, tables, ctx, first):
    """Gather every sequence's blocks, mask padding and what precedes `first`, SDPA."""
    b, w = tables.shape
    kvh, d = k_pool.shape[2], k_pool.shape[3]
    keys = k_pool.index_select(0, tables.reshape(-1)).view(b, -1, kvh, d).transpose(1, 2)
    vals = v_pool.index_select(0, tables.reshape(-1)).view(b, -1, kvh, d).transpose(1, 2)
    pos = torch.arange(keys.shape[2])
    mask = (pos < ctx.unsqueeze(1)) & (pos >= first.unsqueeze(1))
    return F.scaled_dot_product_attention(q.unsqueeze(2), keys, vals, attn_mask=mask[:, None, None],
                                          enable_gqa=True).squeeze(2)


@pytest.mark.parametrize("heads,kv_heads,block_size", [(12, 4, 16), (4, 4, 8), (8, 1, 32)])
def test_kernel_equals_gather_and_sdpa(kernel, heads, kv_heads, block_size):
    gen = torch.Generator().manual_seed(heads * 100 + kv_heads)
    num_blocks, d = 1000, 64
    k_pool = torch.randn(num_blocks, block_size, kv_heads, d, generator=gen)
    v_pool = torch.randn(num_blocks, block_size, kv_heads, d, generator=gen)
    for trial in range(6):
        b = [1, 3, 16][trial % 3]
        ctx = torch.randint(1, 400, (b,), generator=gen)
        width = int(-(-ctx.max() // block_size))
        tables = torch.randperm(num_blocks, generator=gen)[: b * width].view(b, width)
        window = trial >= 3  # sliding window: attend only to the last 50 positions
        first = (ctx - 50).clamp(min=0) if window else torch.zeros_like(ctx)
        q = torch.randn(b, heads, d, generator=gen)
        got = paged_attention_cpu.decode_attention(q, k_pool, v_pool, tables, ctx, first)
        torch.testing.assert_close(got, reference(q, k_pool, v_pool, tables, ctx, first),
                                   rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("preset", ["tiny-mistral", "tiny-qwen2"])
def test_engine_outputs_equal_with_either_backend(kernel, preset):
    """Greedy outputs with the kernel equal the SDPA backend's (which the correctness tests
    hold token-exact to transformers), through chunked prefill, a 64-token sliding window
    (tiny-mistral) and preemption (a pool too small for every sequence at once)."""
    rng = random.Random(preset)
    prompts = [[rng.randrange(3, 4000) for _ in range(rng.randint(5, 120))] for _ in range(10)]
    params = SamplingParams(max_tokens=60, temperature=0, ignore_eos=True)
    outputs, preempted = {}, {}
    for backend in ("sdpa", "cpu-kernel"):
        engine = LLMEngine.from_pretrained(preset, EngineConfig(
            dtype="float32", attention_backend=backend, max_num_seqs=8,
            max_num_batched_tokens=48, num_kv_blocks=40))
        outputs[backend] = [o.token_ids for o in engine.generate(prompts, params)]
        preempted[backend] = sum(r.num_preempted for r in engine.telemetry)
    assert outputs["cpu-kernel"] == outputs["sdpa"]
    assert preempted["sdpa"] > 0  # the pool was tight enough to exercise preemption


@pytest.mark.parametrize("field,value", [("dtype", "bfloat16"), ("kv_cache_dtype", "int8"),
                                         ("device", "cuda")])
def test_cpu_kernel_refuses_what_it_cannot_run(field, value):
    with pytest.raises(ValueError, match=f"attention_backend: cpu-kernel needs {field}"):
        EngineConfig(attention_backend="cpu-kernel", **{field: value})


def test_unknown_backend_names_the_choices():
    with pytest.raises(ValueError, match="attention_backend: must be one of sdpa, cpu-kernel"):
        EngineConfig(attention_backend="flash")
