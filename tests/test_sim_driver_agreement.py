"""The simulator interleaves arrivals and steps exactly as the engine driver does.

The real `drive_engine` loop drives a stand-in engine that has the engine's interface and its
real Scheduler and BlockManager, on a virtual clock where every step takes a constant time (and
sleeping advances the clock, so an idle wait ends exactly when asked). The simulator, given a
constant step model, must then produce the same steps (start times and batch composition) and
the same per-request times: arrivals admitted at the same step boundaries, an idle engine
woken at the arrival, the inter-step gap where the driver has it, closed-loop clients sent
when the previous reply is done plus think time. Any drift between the two loops (admitting
arrivals that land during a step before it ends, batching arrivals differently, a gap before
instead of after a step) shows up here as a different step sequence.
"""

from __future__ import annotations

import itertools
from types import SimpleNamespace

import pytest

from workbench.engine.block_manager import BlockManager
from workbench.engine.config import EngineConfig
from workbench.engine.outputs import RequestMetrics
from workbench.engine.scheduler import Scheduler
from workbench.engine.sequence import Sequence
from workbench.engine.sizing import ModelFacts, size_engine
from workbench.fit.features import FEATURES
from workbench.fit.step_model import StepTimeModel
from workbench.models.tokenizer_builder import FIRST_ORDINARY_TOKEN_ID
from workbench.sim.simulator import Simulator
from workbench.traffic import engine_driver
from workbench.traffic.workload import RequestSpec

MODEL = {"name": "fake", "path": "/x/fake", "architecture": "LlamaForCausalLM",
         "weight_bytes": 1, "kv_bytes_per_token": 1024, "max_model_len": 2048,
         "vocab_size": 4096, "eos_token_ids": [2], "num_kv_blocks": 64}
ENGINE = {"dtype": "float32", "block_size": 16, "kv_cache_dtype": "auto", "quantization": "none"}
CONFIG = {"max_num_seqs": 3, "max_num_batched_tokens": 48}  # queueing and chunked prefill


def constant_model(step_s: float, gap_s: float) -> StepTimeModel:
    return StepTimeModel(dict.fromkeys(FEATURES, 0.0) | {"const": step_s}, MODEL, ENGINE,
                         inter_step_gap_s=gap_s)


class VirtualEngine:
    """LLMEngine's driver-facing interface on a virtual clock: the real scheduler decides each
    step, a step lasts `step_s`, and `gap_s` passes after it (the driver loop's own time)."""

    def __init__(self, step_model: StepTimeModel, config: dict):
        sizing = size_engine(EngineConfig.from_dict(config),
                             ModelFacts.from_step_model(step_model))
        self.scheduler = Scheduler(sizing.scheduler,
                                   BlockManager(sizing.num_kv_blocks, config.get("block_size", 16)))
        eos = set(sizing.scheduler.eos_token_ids)
        self._token = next(t for t in itertools.count(FIRST_ORDINARY_TOKEN_ID) if t not in eos)
        self.step_s, self.gap_s = step_model.coefficients["const"], step_model.inter_step_gap_s
        self.t = 0.0
        self.steps: list[tuple] = []
        self._live: dict[str, Sequence] = {}

    def clock(self) -> float:
        return self.t

    def sleep(self, seconds: float) -> None:
        self.t += seconds

    def add_request(self, request_id, prompt, params, priority=0, arrival_time=0.0):
        seq = Sequence(str(request_id), list(prompt), len(prompt), params, arrival_time,
                       priority)
        self.scheduler.add(seq)
        self._live[seq.request_id] = seq

    def has_unfinished(self) -> bool:
        return self.scheduler.has_unfinished()

    def abort(self, request_id):
        seq = self._live.pop(request_id, None)
        if seq is not None:
            self.scheduler.finish(seq, "abort", self.t)

    def step(self):
        t_start = self.t
        out = self.scheduler.schedule(t_start)
        if out.is_empty:
            return []
        t_end = t_start + self.step_s
        self.scheduler.update(out, [self._token if s.samples else None for s in out.scheduled],
                              t_end)
        self.steps.append((t_start, out.num_prefill_tokens, out.num_decode_seqs))
        self.t = t_end + self.gap_s
        return [SimpleNamespace(request_id=s.seq.request_id, finished=s.seq.is_finished,
                                metrics=RequestMetrics.of(s.seq), token_times=s.seq.token_times)
                for s in out.scheduled if s.samples]


def workload() -> list[RequestSpec]:
    """Arrivals during steps, on a step boundary, in bursts, and after idle stretches; prompts
    long enough to be chunked; more requests than max_num_seqs at once."""
    arrivals = [0.0, 0.0, 0.004, 0.010, 0.0105, 0.011, 0.030, 0.031, 0.2, 0.2005, 0.31, 0.32,
                0.5, 0.5, 0.5, 0.5, 0.52, 1.7]
    lengths = [(5, 4), (60, 3), (20, 6), (7, 1), (100, 5), (12, 2), (30, 8), (3, 3), (40, 4),
               (8, 7), (16, 2), (70, 3), (9, 5), (9, 5), (50, 2), (4, 9), (25, 1), (6, 3)]
    return [RequestSpec(i, a, list(range(FIRST_ORDINARY_TOKEN_ID, FIRST_ORDINARY_TOKEN_ID + p)),
                        o) for i, (a, (p, o)) in enumerate(zip(arrivals, lengths, strict=True))]


def drive(step_model, specs, monkeypatch, **kw):
    engine = VirtualEngine(step_model, CONFIG)
    monkeypatch.setattr(engine_driver, "time", SimpleNamespace(sleep=engine.sleep))
    result = engine_driver.drive_engine(engine, specs, **kw)
    return result, engine.steps


def simulate(step_model, specs, **kw):
    sim = Simulator(step_model, CONFIG)
    result = sim.run(specs, **kw)
    steps = [(r.t_start, r.num_prefill_tokens, r.num_decode_seqs) for r in sim.telemetry]
    return result, steps


def by_request(result) -> dict:
    return {r["request_id"]: r for r in result.records}


def assert_same(driven, simulated):
    (real, real_steps), (sim, sim_steps) = driven, simulated
    assert [s[1:] for s in sim_steps] == [s[1:] for s in real_steps]  # same batches, in order
    assert [s[0] for s in sim_steps] == pytest.approx([s[0] for s in real_steps], abs=1e-9)
    a, b = by_request(real), by_request(sim)
    assert a.keys() == b.keys()
    for rid, r in a.items():
        s = b[rid]
        for key in ("arrival", "first_scheduled", "finish", "ttft", "e2e"):
            assert s[key] == pytest.approx(r[key], abs=1e-9), (rid, key)
        assert s["token_times"] == pytest.approx(r["token_times"], abs=1e-9), rid
    assert sim.max_concurrency == real.max_concurrency


@pytest.mark.parametrize("gap_s", [0.0, 0.0007])
def test_open_loop_steps_match_the_engine_driver(monkeypatch, gap_s):
    model = constant_model(0.010, gap_s)
    driven = drive(model, workload(), monkeypatch)
    simulated = simulate(model, workload())
    assert len(driven[1]) > 40  # queueing, chunking and idle stretches all happened
    assert_same(driven, simulated)


def test_closed_loop_steps_match_the_engine_driver(monkeypatch):
    model = constant_model(0.010, 0.0003)
    specs = [RequestSpec(s.index, None, s.prompt_token_ids, s.max_tokens) for s in workload()]
    kw = dict(concurrency=4, think_time_s=0.025)
    assert_same(drive(model, specs, monkeypatch, **kw), simulate(model, specs, **kw))


def test_arrival_during_a_step_waits_for_its_end(monkeypatch):
    # Hand-checkable: steps of 10 ms; request 1 arrives at 4 ms, mid-step, and is admitted at
    # the next step boundary (10 ms), never into the step already running.
    model = constant_model(0.010, 0.0)
    specs = [RequestSpec(0, 0.0, [10, 11, 12], 3), RequestSpec(1, 0.004, [10, 11], 2)]
    for result, steps in (drive(model, specs, monkeypatch), simulate(model, specs)):
        assert by_request(result)["1"]["first_scheduled"] == pytest.approx(0.010)
        assert [s[1:] for s in steps[:2]] == [(3, 0), (2, 1)]
