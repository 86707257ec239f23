"""The activation-peak model against the engine's measured step memory."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from workbench.fit.memory_model import activation_peak_bytes, can_measure

# A fresh process: the measurement changes the allocator's mmap threshold process-wide, and a
# heap shaped by other tests would blur the peak.
PROBE = """
import json, sys
from workbench.engine import LLMEngine, EngineConfig
from workbench.fit.memory_model import measure_step_peak
eng = LLMEngine.from_pretrained(sys.argv[1], EngineConfig(dtype="float32", device="cpu",
                                max_num_batched_tokens=2048, num_kv_blocks=160))
print(json.dumps({t: measure_step_peak(eng, t) for t in (1024, 2048)}))
"""


@pytest.mark.skipif(not can_measure(), reason="needs Linux /proc/self/clear_refs")
def test_activation_peak_matches_measurement(tiny_path):
    from workbench.models.config import ModelConfig

    out = subprocess.run([sys.executable, "-c", PROBE, str(tiny_path)], capture_output=True,
                         text=True, check=True, env=os.environ.copy(), timeout=300)
    measured = json.loads(out.stdout.strip().splitlines()[-1])
    cfg = ModelConfig.from_dir(tiny_path)
    for tokens, peak in measured.items():
        model = activation_peak_bytes(cfg.hidden_size, cfg.intermediate_size, int(tokens), 4, 1,
                                      cfg.vocab_size)
        assert peak == pytest.approx(model, rel=0.05), tokens


def test_activation_formula_by_hand():
    # small preset: hidden 768, intermediate 2048, fp32: (3*768 + 4*2048) * 4 B per token
    assert activation_peak_bytes(768, 2048, 1000, 4) == 1000 * 10496 * 4
    assert activation_peak_bytes(768, 2048, 0, 4, sampled_rows=2, vocab_size=4096) == 2 * 4096 * 4
