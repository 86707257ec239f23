"""The engine's memory at start: device total, weights, activation peak, memory used by others.

What `sizing.size_engine` carves a memory_utilization pool from, measured once before the KV
cache exists. The activation peak:
- on CUDA, when memory_utilization sizes the pool, measured as vLLM does: one profiling step
  of `sizing.profile_batch` (max_num_batched_tokens over max_num_seqs sequences) through the
  engine's own runner, peak of torch.cuda.max_memory_allocated above the resting state;
- otherwise, and always on CPU, the analytic model `fit.memory_model.activation_peak_bytes`.
  On CPU a measurement (`memory_model.measure_peak`) is neither cheap nor reliable inside
  a running process: it retunes glibc's allocator process-wide, reads the process's high-water
  mark, which any other allocation in the window moves, and needs Linux /proc. The model is
  checked against that measurement, taken in a fresh process, in tests/test_memory_model.py.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch

from workbench.engine.config import EngineConfig
from workbench.engine.sizing import (
    DeviceMemory,
    host_memory_available,
    host_memory_total,
    profile_batch,
)
from workbench.fit.memory_model import activation_peak_bytes
from workbench.models.config import ModelConfig


def measure_device_memory(model, model_config: ModelConfig, config: EngineConfig, max_len: int,
                          measure_activation: bool) -> DeviceMemory:
    """Memory facts of `model` (loaded, no KV cache yet) on its device. measure_activation:
    run the CUDA profiling step (ignored on CPU, where the activation peak is modelled)."""
    param = next(model.parameters())
    device, dtype = param.device, param.dtype
    weights = model.weight_bytes()
    lengths = profile_batch(config, max_len)
    measured = device.type == "cuda" and measure_activation
    if measured:
        activation = cuda_activation_peak(model, model_config, config, lengths)
    else:
        activation = activation_peak_bytes(
            model_config.hidden_size, model_config.intermediate_size, sum(lengths),
            dtype.itemsize, len(lengths), model_config.vocab_size)
    if device.type == "cuda":
        torch.cuda.empty_cache()  # the profiling step's cached blocks are free to the pool
        free, total = torch.cuda.mem_get_info(device)
        source = "device"
    else:
        total, free = host_memory_total(), host_memory_available()
        source = "host"
    # In use, but not by these weights: other processes, the CUDA context or the OS, this
    # process's runtime and its other tensors (another engine's KV cache: the activation peak
    # is taken above the resting state, so they must be counted here).
    other = max(total - free - weights, 0)
    return DeviceMemory(total, source, weights, activation, measured, sum(lengths), len(lengths),
                        other, free)


def cuda_activation_peak(model, model_config: ModelConfig, config: EngineConfig,
                         lengths: list[int]) -> int:
    """Peak bytes allocated above the resting state during one profiling step on CUDA (its
    scratch KV cache is part of the resting state: the real pool replaces it)."""
    device = next(model.parameters()).device
    torch.cuda.synchronize(device)
    torch.cuda.empty_cache()
    run = profile_step(model, model_config, config, lengths)
    torch.cuda.reset_peak_memory_stats(device)
    rest = torch.cuda.memory_allocated(device)
    run()
    torch.cuda.synchronize(device)
    return torch.cuda.max_memory_allocated(device) - rest


def profile_step(model, model_config: ModelConfig, config: EngineConfig,
                 lengths: list[int]) -> Callable[[], list[int | None]]:
    """One step of fresh sequences of `lengths` tokens, ready to run through the engine's own
    runner on a scratch KV cache just big enough; running it returns the sampled tokens."""
    from workbench.engine.block_manager import BlockManager
    from workbench.engine.kv_cache import allocate_kv_cache
    from workbench.engine.runner import ModelRunner
    from workbench.engine.sampling_params import SamplingParams
    from workbench.engine.scheduler import ScheduledSeq
    from workbench.engine.sequence import Sequence
    from workbench.models.tokenizer_builder import FIRST_ORDINARY_TOKEN_ID

    param = next(model.parameters())
    bs = config.block_size
    blocks = sum(math.ceil(n / bs) for n in lengths)
    caches = allocate_kv_cache(model_config, blocks, bs, param.dtype, param.device)
    manager = BlockManager(blocks, bs)
    first, vocab = FIRST_ORDINARY_TOKEN_ID, model_config.vocab_size
    step = []
    for i, n in enumerate(lengths):
        ids = [first + (i + t) % (vocab - first) for t in range(n)]
        seq = Sequence(f"memory-profile-{i}", ids, n, SamplingParams(max_tokens=1), 0.0)
        manager.allocate(seq, n)
        step.append(ScheduledSeq(seq, n, True, n == 1))
    runner = ModelRunner(model, caches, bs, config.seed)
    return lambda: runner.execute(step)
