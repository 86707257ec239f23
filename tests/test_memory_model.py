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


# The step the engine's memory_utilization pool is sized by (max_num_batched_tokens over
# max_num_seqs sequences, logits for each): on CPU its activation peak is the model's.
PROFILE_PROBE = """
import json, sys
from workbench.engine import LLMEngine, EngineConfig
from workbench.engine.memory_profile import profile_step
from workbench.engine.sizing import profile_batch
from workbench.fit.memory_model import measure_peak
eng = LLMEngine.from_pretrained(sys.argv[1], EngineConfig(dtype="float32", device="cpu",
                                num_kv_blocks=1))
lengths = profile_batch(eng.config, eng.max_model_len)
peak = measure_peak(profile_step(eng.model, eng.model_config, eng.config, lengths))
print(json.dumps([sum(lengths), len(lengths), peak]))
"""


@pytest.mark.skipif(not can_measure(), reason="needs Linux /proc/self/clear_refs")
def test_activation_peak_of_the_profiling_step_matches_measurement(tiny_path):
    from workbench.models.config import ModelConfig

    out = subprocess.run([sys.executable, "-c", PROFILE_PROBE, str(tiny_path)],
                         capture_output=True, text=True, check=True, env=os.environ.copy(),
                         timeout=300)
    tokens, seqs, peak = json.loads(out.stdout.strip().splitlines()[-1])
    assert (tokens, seqs) == (2048, 32)
    cfg = ModelConfig.from_dir(tiny_path)
    model = activation_peak_bytes(cfg.hidden_size, cfg.intermediate_size, tokens, 4, seqs,
                                  cfg.vocab_size)
    assert peak == pytest.approx(model, rel=0.05)


def test_activation_formula_by_hand():
    # small preset: hidden 768, intermediate 2048, fp32: (3*768 + 4*2048) * 4 B per token
    assert activation_peak_bytes(768, 2048, 1000, 4) == 1000 * 10496 * 4
    assert activation_peak_bytes(768, 2048, 0, 4, sampled_rows=2, vocab_size=4096) == 2 * 4096 * 4
