"""The analytic weight and KV bytes agree with the engine's real allocations (within 1%)."""

from __future__ import annotations

import pytest

from workbench.plan.memory import kv_bytes_per_token, weight_bytes
from workbench.plan.models_catalog import get_model

BLOCKS = 64


@pytest.mark.parametrize("preset,dtype,precision", [
    ("tiny", "float32", "fp32"),
    ("tiny", "bfloat16", "bf16"),
    ("tiny-qwen2", "float32", "fp32"),    # tied embeddings + q/k/v biases
    ("tiny-mistral", "float32", "fp32"),  # sliding window does not change the pool
])
def test_analytic_bytes_match_engine_allocations(preset, dtype, precision):
    from workbench.engine import EngineConfig, LLMEngine
    from workbench.models.tiny import resolve_model

    path = resolve_model(preset)
    eng = LLMEngine.from_pretrained(path, EngineConfig(dtype=dtype, device="cpu",
                                                       num_kv_blocks=BLOCKS))
    arch = get_model(path)  # read from the checkpoint's own config.json
    measured_w = eng.model.weight_bytes()
    assert weight_bytes(arch, precision) == pytest.approx(measured_w, rel=0.01)
    measured_kv = sum(t.numel() * t.element_size() for kv in eng.kv_caches for t in kv)
    block_size = eng.config.block_size
    analytic_kv = kv_bytes_per_token(arch, precision) * block_size * BLOCKS
    assert analytic_kv == pytest.approx(measured_kv, rel=0.01)
    # The preset route (no build) gives the same architecture as the checkpoint.
    assert weight_bytes(get_model(preset), precision) == weight_bytes(arch, precision)
