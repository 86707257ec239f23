"""Memory model of the engine: weights, KV cache and the activation peak of one step.

Weights and K/V bytes come from the planning calculators (which equal the engine's allocations).
The activation peak is the MLP's working set, the largest moment of a layer: per batched token
the residual stream, the normed input and the MLP output (3 x hidden) plus the fused gate/up
projection and the two intermediate tensors built from it (4 x intermediate), at the
activation dtype's width; plus fp32 logits for the rows that sample.
"""

from __future__ import annotations

import ctypes
import gc
import sys
from pathlib import Path


def activation_peak_bytes(hidden_size: int, intermediate_size: int, batched_tokens: int,
                          dtype_bytes: int, sampled_rows: int = 0, vocab_size: int = 0) -> int:
    per_token = (3 * hidden_size + 4 * intermediate_size) * dtype_bytes
    return batched_tokens * per_token + sampled_rows * vocab_size * 4


def _status_bytes(key: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(key):
            return int(line.split()[1]) * 1024
    raise RuntimeError(f"{key} not in /proc/self/status")


def can_measure() -> bool:
    return sys.platform.startswith("linux") and Path("/proc/self/clear_refs").exists()


def measure_step_peak(engine, batched_tokens: int, repeats: int = 3) -> int | None:
    """Peak memory above the resting state during one prefill step of `batched_tokens` tokens
    (see `measure_peak`); None where not measurable (not CPU, not Linux)."""
    if engine.device.type != "cpu" or not can_measure():
        return None
    from workbench.engine.sampling_params import SamplingParams
    from workbench.engine.scheduler import ScheduledSeq
    from workbench.engine.sequence import Sequence
    from workbench.models.tokenizer_builder import FIRST_ORDINARY_TOKEN_ID

    vocab = engine.model_config.vocab_size
    first = FIRST_ORDINARY_TOKEN_ID
    ids = [first + i % (vocab - first) for i in range(batched_tokens)]
    seq = Sequence("memory-probe", ids, len(ids), SamplingParams(max_tokens=1), 0.0)
    engine.block_manager.allocate(seq, len(ids))
    step = [ScheduledSeq(seq, len(ids), True, False)]
    try:
        return measure_peak(lambda: engine.runner.execute(step), repeats)
    finally:
        engine.block_manager.free(seq)


def measure_peak(run, repeats: int = 3) -> int:
    """Peak memory above the resting state while `run()` runs, on CPU (Linux): reset the
    process's high-water mark (/proc/self/clear_refs), run, read VmHWM. While measuring, large
    blocks are mmapped (glibc M_MMAP_THRESHOLD fixed at 64 KiB) so that memory freed by one
    run is returned and the next run's peak shows; see `restore_allocator` for afterwards."""
    libc = ctypes.CDLL("libc.so.6")
    libc.mallopt(M_MMAP_THRESHOLD, 64 * 1024)
    try:
        run()  # warm: first-touch allocations are not the step's
        peaks = []
        for _ in range(repeats):
            gc.collect()
            before = _status_bytes("VmRSS")
            Path("/proc/self/clear_refs").write_text("5")
            run()
            peaks.append(_status_bytes("VmHWM") - before)
    finally:
        restore_allocator(libc)
    # The median: one repeat that reads high (another allocation in the window) or low (a
    # block reused from memory still resident) does not set the figure.
    return sorted(peaks)[len(peaks) // 2]


# glibc mallopt parameters, and the ceilings of its dynamic thresholds on 64-bit Linux
# (DEFAULT_MMAP_THRESHOLD_MAX; the trim threshold follows at twice the mmap threshold).
M_TRIM_THRESHOLD, M_MMAP_THRESHOLD = -1, -3
MMAP_THRESHOLD_MAX = 32 * 1024 * 1024


def restore_allocator(libc) -> None:
    """Undo the 64 KiB mmap threshold for the rest of the process. Left in place, every large
    tensor of every later step is a fresh mmap whose pages fault in: prefill steps of the
    `tiny` model ran ~1.7x slower (256 tokens: 15 -> 28 ms), so a real run after a profile in
    the same process (the fidelity benchmark) was far slower than the steps the fit was
    measured on. glibc cannot return to its dynamic thresholds once one is set, so set both to
    the values the dynamic ones reach in a warmed-up process: only blocks over 32 MiB are
    mmapped, and the heap is trimmed above 64 MiB free."""
    libc.mallopt(M_MMAP_THRESHOLD, MMAP_THRESHOLD_MAX)
    libc.mallopt(M_TRIM_THRESHOLD, 2 * MMAP_THRESHOLD_MAX)
