"""Measuring a step's memory peak must not slow the rest of the process down.

`measure_step_peak` fixes glibc's mmap threshold at 64 KiB while it measures. Left in place,
every later allocation over 64 KiB is a fresh mmap whose pages fault in one by one: prefill
steps of `tiny` ran ~1.7x slower, and the fidelity benchmark, which profiles and then runs the
real engine in one process, measured the real engine slower than the steps it had fitted.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from workbench.fit.memory_model import can_measure

PROBE = """
import json, resource, sys
from workbench.engine import LLMEngine, EngineConfig
from workbench.fit.memory_model import measure_step_peak
eng = LLMEngine.from_pretrained(sys.argv[1], EngineConfig(dtype="float32", device="cpu",
                                max_num_batched_tokens=256, num_kv_blocks=40))
assert measure_step_peak(eng, 256) > 0

def faults(n=50):  # page faults per 1 MiB buffer allocated, filled and freed
    before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    for _ in range(n):
        b = bytearray(1 << 20)
        del b
    return (resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before) / n

faults(5)
print(json.dumps({"faults_per_mib": faults()}))
"""


@pytest.mark.skipif(not can_measure(), reason="needs Linux /proc/self/clear_refs")
def test_allocator_is_restored_after_measuring(tiny_path):
    out = subprocess.run([sys.executable, "-c", PROBE, str(tiny_path)], capture_output=True,
                         text=True, check=True, env=os.environ.copy(), timeout=300)
    faults = json.loads(out.stdout.strip().splitlines()[-1])["faults_per_mib"]
    # Freed buffers are reused from the heap: no page faults. With the 64 KiB threshold still
    # set, each 1 MiB buffer is a new mapping: 256 faults (4 KiB pages).
    assert faults < 16, faults
