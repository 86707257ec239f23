"""One sizing rule (EngineConfig -> scheduler limits + KV pool) for the engine and the simulator."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from workbench.engine import EngineConfig
from workbench.engine.sizing import (
    DEFAULT_MEMORY_SHARE,
    ModelFacts,
    _meminfo_available,
    _sysconf_pages,
    default_kv_budget,
    host_memory_available,
    size_engine,
)
from workbench.fit.features import FEATURES
from workbench.fit.from_runs import describe_fit_target
from workbench.fit.step_model import StepTimeModel
from workbench.sim.simulator import Replica, Simulator
from workbench.traffic.run_scenario import describe_engine
from workbench.traffic.workload import RequestSpec

COEF = dict.fromkeys(FEATURES, 0.0) | {"const": 1e-3, "decode_seqs": 1e-4}


def fit_of(engine) -> StepTimeModel:
    """A step model whose model/engine description is what a fit of `engine`'s runs records."""
    model, eng = describe_fit_target(describe_engine(engine, "tiny"))
    return StepTimeModel(COEF, model, eng)


@pytest.mark.parametrize("config", [
    dict(num_kv_blocks=50),
    dict(kv_cache_memory=3_000_000, block_size=8, max_model_len=512),  # 91 blocks: 728 tokens
    dict(),  # the default pool: room for every sequence, capped by free memory
    dict(max_model_len=256, max_num_seqs=4, block_size=32),
    dict(enable_chunked_prefill=False, max_model_len=512, max_num_batched_tokens=512),
    dict(memory_utilization=0.5, memory_budget=128 * 2**20),
    # Quantized KV: the fit records the engine's bytes per token (scales included) and format.
    dict(kv_cache_memory=3_000_000, kv_cache_dtype="int8"),
    dict(kv_cache_dtype="fp8_e4m3"),
], ids=["blocks", "memory", "default", "max-len", "unchunked", "utilization", "int8-memory",
        "fp8-default"])
def test_simulator_sizes_replicas_like_the_engine(tiny_engine_factory, config):
    engine = tiny_engine_factory(**config)
    fit = fit_of(engine)
    assert fit.engine["kv_cache_dtype"] == engine.kv_cache_dtype
    assert fit.model["kv_bytes_per_token"] == engine.kv_bytes_per_token
    replica = Replica(fit, EngineConfig(device="cpu", **config))
    assert replica.block_manager.num_blocks == engine.num_kv_blocks
    assert replica.block_manager.block_size == engine.block_manager.block_size
    assert replica.scheduler.config == engine.scheduler.config
    assert replica.scheduler.watermark_blocks == engine.scheduler.watermark_blocks


def test_unchunked_budget_below_max_model_len_is_a_field_error_in_both(tiny_engine_factory):
    good = tiny_engine_factory(max_model_len=512)
    bad = dict(enable_chunked_prefill=False, max_model_len=512, max_num_batched_tokens=256)
    with pytest.raises(ValueError, match=r"max_num_batched_tokens: must be >= max_model_len"):
        tiny_engine_factory(**bad)
    # The simulator used to accept it and then stall ("scheduler made no progress").
    with pytest.raises(ValueError, match=r"max_num_batched_tokens: must be >= max_model_len"):
        Simulator(fit_of(good), bad)


def test_a_fits_recorded_pool_caps_the_default_pool():
    # A fit measured where memory capped the pool at 40 blocks of 16 tokens.
    model = {"name": "tiny", "kv_bytes_per_token": 4096, "max_model_len": 2048,
             "eos_token_ids": [2], "num_kv_blocks": 40}
    fit = StepTimeModel(COEF, model, {"block_size": 16})
    assert Replica(fit, {}).block_manager.num_blocks == 40  # not 32 x 2048 / 16 = 4096
    assert Replica(fit, {"block_size": 8}).block_manager.num_blocks == 80  # same bytes
    assert Replica(fit, {"max_num_seqs": 1, "max_model_len": 64}).block_manager.num_blocks == 4
    assert Replica(fit, {"num_kv_blocks": 500}).block_manager.num_blocks == 500
    # ...so a load that fills 40 blocks preempts in the simulation, as it did on that machine.
    specs = [RequestSpec(i, 0.0, list(range(3, 203)), 100) for i in range(8)]
    res = Simulator(fit, {}).run(specs)
    assert sum(r["preemptions"] for r in res.records) > 0
    assert len(res.records) == 8


def test_sizing_rule_by_hand():
    facts = ModelFacts(kv_bytes_per_token=1000, max_model_len=100, eos_token_ids=(2,))
    cfg = EngineConfig(block_size=10, max_num_seqs=3)
    assert size_engine(cfg, facts).num_kv_blocks == 30  # 3 sequences x 10 blocks
    capped = ModelFacts(1000, 100, (2,), kv_budget=125_000)
    assert size_engine(cfg, capped).num_kv_blocks == 12  # 125 kB / 10 kB per block
    sized = size_engine(EngineConfig(block_size=10, kv_cache_memory=105_000), capped)
    assert sized.num_kv_blocks == 10 and sized.scheduler.eos_token_ids == (2,)
    assert sized.scheduler.max_model_len == 100
    with pytest.raises(ValueError, match="kv_cache_memory: 5000 bytes hold 0 blocks"):
        size_engine(EngineConfig(block_size=10, kv_cache_memory=5000), facts)
    assert default_kv_budget(1000) == int(1000 * DEFAULT_MEMORY_SHARE)


def test_roofline_budget_caps_like_memory():
    from types import SimpleNamespace

    step = SimpleNamespace(model={"kv_bytes_per_token": 1000, "max_model_len": 1000,
                                  "kv_pool_bytes": 10**6}, engine={})
    assert size_engine(EngineConfig(block_size=10), ModelFacts.from_step_model(step)
                       ).num_kv_blocks == 100  # 1 MB / 10 kB, below 32 x 100 wanted


def test_free_memory_is_read_portably(tmp_path):
    assert host_memory_available() > 0
    assert _meminfo_available(tmp_path / "no-meminfo") is None  # not Linux
    # macOS's sysconf has no SC_AVPHYS_PAGES (the old code's only source); total pages serve.
    if "SC_PHYS_PAGES" in getattr(os, "sysconf_names", {}):
        assert _sysconf_pages({"SC_PAGE_SIZE": 0, "SC_PHYS_PAGES": 0}) > 0
    assert _sysconf_pages({}) is None  # Windows: no sysconf at all (psutil covers it)


def test_sizing_imports_no_torch():
    code = ("import sys, workbench.engine.sizing; "
            "assert 'torch' not in sys.modules, 'torch imported'")
    subprocess.run([sys.executable, "-c", code], check=True)
