"""Arrival processes, checked statistically (seeded, so the checks are deterministic)."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from workbench.traffic.arrivals import (
    ClosedLoop,
    Constant,
    Gamma,
    Piecewise,
    Poisson,
    Segment,
    Trace,
    arrival_times,
    trace_rows,
)
from workbench.traffic.scenario import parse_scenario


def rng(seed=0):
    return np.random.default_rng(seed)


def test_constant_rate_is_exact():
    t = arrival_times(Constant(kind="constant", rate=5.0), rng(), num_requests=11)
    np.testing.assert_allclose(np.diff(t), 0.2)


@pytest.mark.parametrize("spec", [Poisson(kind="poisson", rate=7.0),
                                  Gamma(kind="gamma", rate=7.0, burstiness=0.5)])
def test_mean_rate_within_tolerance(spec):
    t = arrival_times(spec, rng(1), duration_s=3000.0)
    assert len(t) / 3000.0 == pytest.approx(7.0, rel=0.03)
    assert t.max() < 3000.0 and np.all(np.diff(t) >= 0)


@pytest.mark.parametrize("shape", [0.25, 1.0, 4.0])
def test_gamma_cv_is_one_over_sqrt_shape(shape):
    t = arrival_times(Gamma(kind="gamma", rate=3.0, burstiness=shape), rng(2),
                      duration_s=20000.0)
    gaps = np.diff(t)
    assert gaps.std() / gaps.mean() == pytest.approx(1 / np.sqrt(shape), rel=0.05)


def test_count_mode_spans_n_over_rate_like_vllm():
    t = arrival_times(Gamma(kind="gamma", rate=4.0, burstiness=0.5), rng(3), num_requests=200)
    assert len(t) == 200 and t[0] == 0.0
    # 200 rescaled gaps sum to 200/4 s; the last request leaves one gap before that.
    assert t[-1] < 50.0 and t[-1] > 45.0


def test_piecewise_rates_per_segment():
    spec = Piecewise(kind="piecewise", segments=[Segment(duration_s=100, rate=2.0),
                                                 Segment(duration_s=50, rate=0.0),
                                                 Segment(duration_s=100, rate=10.0)])
    t = arrival_times(spec, rng(4), duration_s=2500.0)  # 10 cycles
    phase = t % 250.0
    assert ((phase >= 100) & (phase < 150)).sum() == 0
    assert (phase < 100).sum() / 1000.0 == pytest.approx(2.0, rel=0.08)
    assert (phase >= 150).sum() / 1000.0 == pytest.approx(10.0, rel=0.05)


def test_trace_replay_reproduces_timestamps(tmp_path):
    stamps = pd.to_datetime(["2023-11-16 18:00:00.0", "2023-11-16 18:00:00.5",
                             "2023-11-16 18:00:02.25", "2023-11-16 18:00:07.0"])
    f = tmp_path / "t.csv"
    pd.DataFrame({"TIMESTAMP": stamps.astype(str), "ContextTokens": [10, 20, 30, 40],
                  "GeneratedTokens": [1, 2, 3, 4]}).to_csv(f, index=False)
    times, p, o = trace_rows(Trace(kind="trace", file=str(f)), tmp_path)
    np.testing.assert_allclose(times, [0.0, 0.5, 2.25, 7.0])
    assert list(p) == [10, 20, 30, 40] and list(o) == [1, 2, 3, 4]
    fast, p2, o2 = trace_rows(Trace(kind="trace", file="t.csv", rate_multiplier=2.0, start_s=0.5,
                                    window_s=2.0, length_scale=0.5, max_output_tokens=1),
                              tmp_path)
    np.testing.assert_allclose(fast, [0.0, 0.875])
    assert list(p2) == [10, 15] and list(o2) == [1, 1]


def test_trace_replay_of_the_azure_trace(shared_traces):
    raw = pd.read_csv(shared_traces / "azure-llm-2023-conv.csv")
    secs = pd.to_datetime(raw.TIMESTAMP)
    expected = (secs - secs.min()).dt.total_seconds().to_numpy()
    expected = np.sort(expected)[:50]
    times, _, _ = trace_rows(Trace(kind="trace", file="azure-llm-2023-conv.csv"), shared_traces)
    np.testing.assert_allclose(times[:50], expected - expected[0], atol=1e-6)


def test_trace_errors_name_the_field(tmp_path):
    (tmp_path / "x.csv").write_text("a,b\n1,2\n")
    with pytest.raises(ValueError, match="arrival.timestamp_column"):
        trace_rows(Trace(kind="trace", file="x.csv"), tmp_path)
    with pytest.raises(ValueError, match="arrival.file"):
        trace_rows(Trace(kind="trace", file="missing.csv"), tmp_path)


def test_closed_loop_never_exceeds_concurrency(tiny_engine_factory):
    from workbench.traffic.engine_driver import drive_engine
    from workbench.traffic.workload import build_requests

    sc = parse_scenario({"name": "cl", "arrival": {"kind": "closed_loop", "concurrency": 3,
                                                   "think_time_s": 0.002},
                         "prompt_tokens": {"dist": "uniform", "low": 8, "high": 64},
                         "output_tokens": {"dist": "uniform", "low": 2, "high": 12},
                         "num_requests": 24})
    assert isinstance(sc.arrival, ClosedLoop)
    eng = tiny_engine_factory()
    res = drive_engine(eng, build_requests(sc, 4096), concurrency=3, think_time_s=0.002)
    assert len(res.records) == 24 and res.max_concurrency == 3
    events = sorted([(r["arrival"], 1) for r in res.records] + [(r["finish"], -1)
                                                                 for r in res.records],
                    key=lambda e: (e[0], e[1]))
    live = np.cumsum([e[1] for e in events])
    assert live.max() <= 3


def test_the_engine_driver_runs_a_priority_class_first(tiny_engine_factory):
    # A burst on a 2-sequence engine: the real engine admits the urgent class first, and the
    # run records each request's priority.
    from workbench.traffic.engine_driver import drive_engine
    from workbench.traffic.workload import build_requests

    sc = parse_scenario({"name": "pri", "seed": 1, "arrival": {"kind": "poisson", "rate": 1.0},
                         "prompt_tokens": {"dist": "fixed", "value": 16},
                         "output_tokens": {"dist": "fixed", "value": 8},
                         "num_requests": 12, "priorities": [{"share": 0.3, "priority": -2}]})
    specs = build_requests(sc, 4096)
    for s in specs:  # one burst at t = 0: every request is queued before the first step
        s.arrival_s = 0.0
    eng = tiny_engine_factory(max_num_seqs=2)
    res = drive_engine(eng, specs)
    recs = {r["request_id"]: r for r in res.records}
    urgent = [str(s.index) for s in specs if s.priority == -2]
    rest = [str(s.index) for s in specs if s.priority == 0]
    assert urgent and rest and all(recs[i]["priority"] == -2 for i in urgent)
    assert max(recs[i]["first_token"] for i in urgent) < np.median(
        [recs[i]["first_token"] for i in rest])
