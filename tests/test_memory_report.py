"""KV pool from memory_utilization, and the report of where the engine's memory went."""

from __future__ import annotations

import json
from types import SimpleNamespace

import pytest
from typer.testing import CliRunner

from workbench.engine import EngineConfig
from workbench.engine.sizing import (
    DeviceMemory,
    ModelFacts,
    pool_rule,
    profile_batch,
    size_engine,
)
from workbench.fit.memory_model import activation_peak_bytes

MiB = 2**20
# A CPU engine whose total is a configured budget: the arithmetic does not depend on the
# machine the tests run on.
BUDGETED = dict(memory_utilization=0.5, memory_budget=128 * MiB)


def facts_with_memory(**memory) -> ModelFacts:
    """1000 bytes per token, max_model_len 100; memory as measured for a step of 200 tokens in
    4 sequences (what max_num_seqs=4, max_num_batched_tokens=200 profile)."""
    mem = dict(total_bytes=1_000_000, total_source="host", weight_bytes=200_000,
               activation_peak_bytes=50_000, activation_measured=False, activation_tokens=200,
               activation_seqs=4, other_bytes=100_000) | memory
    return ModelFacts(1000, 100, (2,), kv_budget=125_000, memory=DeviceMemory(**mem))


SMALL = dict(block_size=10, max_num_seqs=4, max_num_batched_tokens=200)


def test_pool_precedence_blocks_then_bytes_then_utilization_then_default():
    facts = facts_with_memory()
    every = dict(SMALL, num_kv_blocks=7, kv_cache_memory=200_000, memory_utilization=0.8)
    order = [("num_kv_blocks", 7), ("kv_cache_memory", 20), ("memory_utilization", 45),
             ("default", 12)]  # default: 4 x 10 blocks wanted, 125 kB budget -> 12
    for rule, blocks in order:
        cfg = EngineConfig(**every)
        assert pool_rule(cfg) == rule
        assert size_engine(cfg, facts).num_kv_blocks == blocks, rule
        every.pop(rule, None)


def test_utilization_arithmetic_by_hand():
    facts = facts_with_memory()
    # 0.8 x 1,000,000 - 200,000 weights - 50,000 activation - 100,000 other = 450,000 bytes
    # = 45 blocks of 10 tokens x 1000 bytes.
    assert size_engine(EngineConfig(**SMALL, memory_utilization=0.8), facts).num_kv_blocks == 45
    # A budget replaces the total, and others' use is outside it: 0.8 x 600,000 - 250,000.
    sized = size_engine(EngineConfig(**SMALL, memory_utilization=0.8, memory_budget=600_000),
                        facts)
    assert sized.num_kv_blocks == 23
    assert profile_batch(EngineConfig(**SMALL), 100) == [50, 50, 50, 50]
    assert profile_batch(EngineConfig(max_num_seqs=4, max_num_batched_tokens=10), 100) == [
        3, 3, 2, 2]
    assert profile_batch(EngineConfig(max_num_seqs=2, max_num_batched_tokens=512), 100) == [
        100, 100]  # a sequence is never longer than max_model_len


@pytest.mark.parametrize("share", [0, 0.0, -0.1, 1.5, True, "0.5"])
def test_memory_utilization_outside_0_1_names_the_field(share):
    with pytest.raises(ValueError, match=r"memory_utilization: must be a number in \(0, 1\]"):
        EngineConfig(memory_utilization=share)


def test_memory_budget_needs_utilization_and_bytes():
    with pytest.raises(ValueError, match="memory_budget: is the total that memory_utiliz"):
        EngineConfig(memory_budget=10**9)
    with pytest.raises(ValueError, match="memory_budget: must be an integer >= 1"):
        EngineConfig(memory_utilization=0.5, memory_budget=0)
    assert EngineConfig(memory_utilization=1).memory_utilization == 1


def test_a_pool_given_as_memory_must_hold_one_max_model_len_sequence():
    facts = facts_with_memory()
    # 0.3 x 1 MB leaves nothing after 350 kB of weights, activation and other memory.
    with pytest.raises(ValueError, match=r"memory_utilization: 0.3 x .* leaves 0 B .* holds 0 "
                                         r"blocks = 0 tokens, but one sequence of max_model_len "
                                         r"100 tokens needs 10 blocks.*raise memory_utiliz"):
        size_engine(EngineConfig(**SMALL, memory_utilization=0.3), facts)
    # 0.41 x 1 MB leaves 60 kB = 6 blocks = 60 tokens: too few for 100, enough for 60.
    with pytest.raises(ValueError, match="holds 6 blocks = 60 tokens.*max_model_len to at "
                                         "most 60"):
        size_engine(EngineConfig(**SMALL, memory_utilization=0.41), facts)
    capped = EngineConfig(**SMALL, memory_utilization=0.41, max_model_len=60)
    assert size_engine(capped, facts).num_kv_blocks == 6
    with pytest.raises(ValueError, match="kv_cache_memory: 55000 bytes hold 5 blocks = 50 "
                                         "tokens.*at least 100000 bytes.*at most 50"):
        size_engine(EngineConfig(block_size=10, kv_cache_memory=55_000), facts)
    assert size_engine(EngineConfig(block_size=10, kv_cache_memory=55_000, max_model_len=50),
                       facts).num_kv_blocks == 5
    # A block count is taken as given; requests too long for it are rejected at submission.
    assert size_engine(EngineConfig(block_size=10, num_kv_blocks=2), facts).num_kv_blocks == 2


def test_a_budget_larger_than_free_memory_is_refused():
    facts = facts_with_memory(available_bytes=300_000)
    with pytest.raises(ValueError, match="memory_budget: the KV cache .* exceed the"):
        size_engine(EngineConfig(**SMALL, memory_utilization=1, memory_budget=900_000), facts)


def test_simulator_needs_the_recorded_memory_for_utilization():
    from workbench.sim.simulator import Replica

    unknown = SimpleNamespace(model={"kv_bytes_per_token": 1000, "max_model_len": 100,
                                     "kv_pool_bytes": 10**6}, engine={})
    with pytest.raises(ValueError, match="memory_utilization: this model's memory"):
        Replica(unknown, {"memory_utilization": 0.9})
    with pytest.raises(ValueError, match="memory_utilization: the recorded activation peak is "
                                         "for a step of 200 tokens in 4 sequences"):
        size_engine(EngineConfig(**SMALL | {"max_num_batched_tokens": 512},
                                 memory_utilization=0.8), facts_with_memory())


# -- the engine ------------------------------------------------------------------------------
def test_engine_report_adds_up_and_the_cache_is_that_big(tiny_engine_factory):
    engine = tiny_engine_factory(**BUDGETED)
    r = engine.memory_report()
    cfg = engine.model_config
    assert (r.pool_rule, r.total_source, r.total_bytes, r.other_bytes) == (
        "memory_utilization", "memory_budget", 128 * MiB, 0)
    assert r.considered_bytes == 64 * MiB
    m = r.memory
    assert m.weight_bytes == engine.model.weight_bytes()
    lengths = profile_batch(engine.config, engine.max_model_len)
    assert not m.activation_measured  # CPU: the analytic model
    assert m.activation_peak_bytes == activation_peak_bytes(
        cfg.hidden_size, cfg.intermediate_size, sum(lengths), 4, len(lengths), cfg.vocab_size)
    per_block = r.block_size * r.kv_bytes_per_token
    assert (m.weight_bytes + m.activation_peak_bytes + r.other_bytes + r.kv_cache_bytes
            + r.left_bytes) == r.considered_bytes
    assert 0 <= r.left_bytes < per_block  # the pool took every whole block there was
    assert r.kv_cache_bytes == r.num_blocks * r.block_size * r.kv_bytes_per_token
    assert r.max_concurrent_tokens == r.num_blocks * r.block_size
    assert r.max_concurrency == r.max_concurrent_tokens / engine.max_model_len
    # The engine allocated exactly that: every K and V tensor has num_blocks blocks, and their
    # bytes are the report's KV cache bytes.
    assert r.num_blocks == engine.num_kv_blocks == engine.block_manager.num_blocks
    assert {k.shape[0] for pair in engine.kv_caches for k in pair} == {r.num_blocks}
    assert sum(t.numel() * t.element_size() for pair in engine.kv_caches for t in pair) == (
        r.kv_cache_bytes)
    text = str(r)
    assert "memory_budget (128.00 MiB) x memory_utilization (0.5) = 64.00 MiB" in text
    assert f"maximum concurrent tokens: {r.max_concurrent_tokens:,}" in text
    record = json.loads(json.dumps(r.as_dict()))
    assert record["num_blocks"] == r.num_blocks and record["left_bytes"] == r.left_bytes


def test_host_memory_arithmetic_on_cpu(tiny_engine_factory, monkeypatch):
    """Without a budget the total is the host's and what others use is subtracted."""
    from workbench.engine import memory_profile

    monkeypatch.setattr(memory_profile, "host_memory_total", lambda: 1024 * MiB)
    monkeypatch.setattr(memory_profile, "host_memory_available", lambda: 900 * MiB)
    r = tiny_engine_factory(memory_utilization=0.25).memory_report()
    m = r.memory
    assert (r.total_bytes, r.total_source, m.available_bytes) == (1024 * MiB, "host", 900 * MiB)
    assert r.other_bytes == 124 * MiB - m.weight_bytes  # used, less this engine's weights
    assert 0 <= r.left_bytes < r.block_size * r.kv_bytes_per_token
    assert r.kv_cache_bytes + r.left_bytes == (
        256 * MiB - m.weight_bytes - m.activation_peak_bytes - r.other_bytes)
    monkeypatch.setattr(memory_profile, "host_memory_available", lambda: 20 * MiB)
    with pytest.raises(ValueError, match="memory_budget: the KV cache"):
        tiny_engine_factory(**BUDGETED)


def test_engine_refuses_a_budget_too_small_for_one_sequence(tiny_engine_factory):
    with pytest.raises(ValueError, match=r"memory_utilization: 0.5 x 64.00 MiB \(memory_budget"
                                         r"\).*needs 128 blocks of 16 tokens"):
        tiny_engine_factory(memory_utilization=0.5, memory_budget=64 * MiB)


def test_the_profiling_step_runs_through_the_runner(tiny_engine_factory, monkeypatch):
    """The CUDA profiling step, run here on CPU: one token sampled per sequence, and the peak
    taken above the state with the scratch KV cache allocated (CUDA counters faked)."""
    import torch

    from workbench.engine.memory_profile import cuda_activation_peak, profile_step

    engine = tiny_engine_factory(num_kv_blocks=1)
    for cfg in (EngineConfig(max_num_seqs=4, max_num_batched_tokens=66),
                EngineConfig(max_num_seqs=4, max_num_batched_tokens=3)):  # 1-token sequences
        lengths = profile_batch(cfg, 2048)
        tokens = profile_step(engine.model, engine.model_config, cfg, lengths)()
        assert len(tokens) == len(lengths) and all(isinstance(t, int) for t in tokens)
    counters = iter([1000, 1500])  # allocated at rest, then the step's peak
    for name in ("synchronize", "empty_cache", "reset_peak_memory_stats"):
        monkeypatch.setattr(torch.cuda, name, lambda *a: None)
    monkeypatch.setattr(torch.cuda, "memory_allocated", lambda *a: next(counters))
    monkeypatch.setattr(torch.cuda, "max_memory_allocated", lambda *a: next(counters))
    assert cuda_activation_peak(engine.model, engine.model_config, cfg, lengths) == 500


def test_run_records_carry_the_report_and_the_simulator_sizes_from_it(tiny_engine_factory,
                                                                      monkeypatch):
    from workbench.engine import memory_profile
    from workbench.fit.from_runs import describe_fit_target
    from workbench.sim.simulator import Replica
    from workbench.traffic.run_scenario import describe_engine

    monkeypatch.setattr(memory_profile, "host_memory_total", lambda: 1024 * MiB)
    monkeypatch.setattr(memory_profile, "host_memory_available", lambda: 900 * MiB)
    for config in (BUDGETED, dict(memory_utilization=0.25)):  # the budget's total, the host's
        engine = tiny_engine_factory(**config)
        target = json.loads(json.dumps(describe_engine(engine, "tiny")))  # as a manifest
        assert target["memory_report"]["num_blocks"] == engine.num_kv_blocks
        model, eng = describe_fit_target(target)
        replica = Replica(SimpleNamespace(model=model, engine=eng, inter_step_gap_s=0.0),
                          EngineConfig(device="cpu", **config))
        assert replica.block_manager.num_blocks == engine.num_kv_blocks


def test_memory_command_prints_the_report(tiny_path):
    from workbench.cli import app

    args = ["memory", "--model", str(tiny_path), "--set", "memory_utilization=0.5",
            "--set", f"memory_budget={128 * MiB}"]
    res = CliRunner().invoke(app, args)
    assert res.exit_code == 0, res.output
    assert res.output.startswith("memory on cpu: memory_budget (128.00 MiB)")
    assert "maximum concurrency for 2,048 tokens per request" in res.output
    res = CliRunner().invoke(app, [*args, "--json"])
    assert json.loads(res.output)["pool_rule"] == "memory_utilization"
    res = CliRunner().invoke(app, ["memory", "--model", str(tiny_path),
                                   "--set", "memory_utilization=1.5"])
    assert res.exit_code == 2 and res.output.startswith("error: memory_utilization: ")
