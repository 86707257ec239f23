"""Metric computations against hand-built timelines (vLLM serving-benchmark definitions)."""

from __future__ import annotations

import math

import pandas as pd
import pytest

from workbench.traffic.metrics import (
    is_saturated,
    meets_slos,
    request_record,
    slo_percentiles,
    summarize,
)


def timeline():
    # arrival, token times, finish (= last token)
    a = request_record("a", 0.0, 0.1, [0.5, 0.7, 0.8, 1.1], 1.1, 10, "length")
    b = request_record("b", 1.0, 1.0, [1.2], 1.2, 20, "stop")  # one output token
    c = request_record("c", 2.0, 2.0, [3.0, 3.5, 4.0], 4.0, 30, "length")
    d = request_record("d", 2.5, None, [], 2.6, 5, "error")  # failed
    return [a, b, c, d]


def test_ttft_tpot_itl_by_hand():
    a, b, c, _ = timeline()
    assert a["ttft"] == pytest.approx(0.5) and a["e2e"] == pytest.approx(1.1)
    assert a["tpot"] == pytest.approx((1.1 - 0.5) / 3)
    assert a["itl_mean"] == pytest.approx((0.2 + 0.1 + 0.3) / 3)
    assert b["ttft"] == pytest.approx(0.2) and b["tpot"] is None and b["itl_mean"] is None
    assert c["tpot"] == pytest.approx(1.0 / 2) and c["output_tokens"] == 3


def test_summary_percentiles_and_throughput():
    recs = timeline()
    df = pd.DataFrame(recs)
    s = summarize(df)
    assert s["completed"] == 3 and s["failed"] == 1
    assert s["duration_s"] == pytest.approx(4.0)  # first arrival 0.0 -> last finish 4.0
    assert s["request_throughput"] == pytest.approx(3 / 4.0)
    assert s["output_throughput"] == pytest.approx(8 / 4.0)
    # TTFT values 0.5, 0.2, 1.0: numpy linear interpolation
    assert s["ttft_p50"] == pytest.approx(0.5)
    assert s["ttft_p90"] == pytest.approx(0.5 + 0.8 * (1.0 - 0.5))
    assert s["ttft_mean"] == pytest.approx((0.5 + 0.2 + 1.0) / 3)
    # TPOT: only a and c (b has one token)
    assert s["tpot_p50"] == pytest.approx((0.2 + 0.5) / 2)


def test_itl_percentiles_use_every_gap():
    recs = timeline()
    for r in recs:
        r["token_times"] = []
    recs[0]["token_times"] = [0.5, 0.7, 0.8, 1.1]
    recs[2]["token_times"] = [3.0, 3.5, 4.0]
    s = summarize(pd.DataFrame(recs))
    gaps = sorted([0.2, 0.1, 0.3, 0.5, 0.5])
    assert s["itl_p50"] == pytest.approx(gaps[2])
    assert s["itl_mean"] == pytest.approx(sum(gaps) / 5)


def test_slo_percentiles_count_completed_requests_only():
    df = pd.DataFrame(timeline())  # TTFT of completed requests: 0.5, 0.2, 1.0
    df.loc[3, "ttft"] = 100.0  # a failed request's value must not count
    p = slo_percentiles(df, {"ttft": 0.5, "tpot": 0.1}, 90)
    assert p["ttft"] == pytest.approx(0.5 + 0.8 * (1.0 - 0.5))
    assert p["tpot"] == pytest.approx(0.2 + 0.9 * (0.5 - 0.2))  # b's missing TPOT left out
    assert list(p) == ["ttft", "tpot"]
    # no completed request: NaN, which fails any `value <= limit` check
    failed = df.assign(finish_reason="error")
    assert all(math.isnan(v) for v in slo_percentiles(failed, ["ttft", "e2e"], 90).values())


def test_goodput_with_several_slos():
    df = pd.DataFrame(timeline())
    # a: ttft .5 tpot .2 e2e 1.1 | b: ttft .2 (no tpot) e2e .2 | c: ttft 1.0 tpot .5 e2e 2.0
    ok = meets_slos(df, {"ttft": 0.6, "tpot": 0.3})
    assert list(ok) == [True, True, False, False]
    ok = meets_slos(df, {"ttft": 0.6, "tpot": 0.3, "e2e": 1.0})
    assert list(ok) == [False, True, False, False]
    s = summarize(df, {"ttft": 0.6, "tpot": 0.3})
    assert s["goodput"] == pytest.approx(2 / 4.0)
    assert s["slo_attainment"] == pytest.approx(0.5)


def test_saturation_flag():
    assert is_saturated({"request_throughput": 5.0}, 10.0)
    assert not is_saturated({"request_throughput": 9.8}, 10.0)
    assert not math.isnan(summarize(pd.DataFrame(timeline()))["e2e_p99"])


def test_a_count_without_token_times_is_no_index_error():
    # A server's usage says 3 tokens but no chunk carried text: no first token, no TTFT.
    r = request_record("x", 0.0, None, [], 1.0, 5, "length", output_tokens=3)
    assert r["output_tokens"] == 3 and r["first_token"] is None and r["ttft"] is None
    assert r["tpot"] is None and r["itl_mean"] is None and r["e2e"] == pytest.approx(1.0)


def _run(arrivals, finishes):
    return pd.DataFrame([request_record(i, a, a, [f], f, 10, "length")
                         for i, (a, f) in enumerate(zip(arrivals, finishes, strict=True))])


def test_the_drain_tail_does_not_read_as_saturation():
    # 10 requests/s for 1 s, each served in 2 s: the system keeps up, but the run lasts
    # 2.9 s, so vLLM's whole-run throughput reads 3.4 req/s.
    arrivals = [i / 10 for i in range(10)]
    kept_up = summarize(_run(arrivals, [a + 2.0 for a in arrivals]))
    assert kept_up["request_throughput"] == pytest.approx(10 / 2.9)  # vLLM's, tail included
    assert kept_up["offered_request_rate"] == pytest.approx(10.0)
    assert kept_up["sustained_request_throughput"] == pytest.approx(10.0)
    assert not is_saturated(kept_up, 10.0)
    # The same offer against a capacity of 5 requests/s: each finishes 0.2 s after the last.
    behind = summarize(_run(arrivals, [0.5 + 0.2 * i for i in range(10)]))
    assert behind["sustained_request_throughput"] == pytest.approx(5.0)
    assert is_saturated(behind, 10.0)


def test_failures_count_as_falling_behind():
    arrivals = [i / 10 for i in range(10)]
    df = _run(arrivals, [a + 0.1 for a in arrivals])
    df.loc[:2, "finish_reason"] = "error"  # 3 of 10 failed
    assert is_saturated(summarize(df), 10.0)


def test_request_metrics_columns_are_the_contract_in_one_place():
    import dataclasses

    from workbench.engine.outputs import RequestMetrics
    from workbench.traffic.metrics import REQUEST_COLUMNS, records_frame

    assert [f.name for f in dataclasses.fields(RequestMetrics)] == REQUEST_COLUMNS
    assert list(records_frame([])) == REQUEST_COLUMNS


def test_engine_requests_frame_is_the_run_store_table():
    from workbench.engine import RequestMetrics, requests_frame
    from workbench.traffic import run_store
    from workbench.traffic.metrics import records_frame

    assert run_store.records_frame is records_frame  # one builder, re-exported
    recs = timeline()
    frame = requests_frame([RequestMetrics(**r) for r in recs])
    pd.testing.assert_frame_equal(frame, records_frame(recs))
    assert list(requests_frame([])) == list(records_frame([]))


def test_engine_request_metrics_come_from_request_record():
    from workbench.engine.outputs import RequestMetrics
    from workbench.engine.sampling_params import SamplingParams
    from workbench.engine.sequence import Sequence

    seq = Sequence("7", [5, 6, 7, 8, 9, 10], 4, SamplingParams(max_tokens=2), 1.0)
    seq.first_scheduled, seq.token_times, seq.finish = 1.5, [2.0, 2.5], 2.5
    seq.finish_reason = "length"
    expected = request_record("7", 1.0, 1.5, [2.0, 2.5], 2.5, 4, "length", 0, 0,
                              output_tokens=2)
    assert RequestMetrics.of(seq).as_dict() == expected


def test_metrics_import_without_torch():
    import subprocess
    import sys

    code = ("import sys; sys.modules['torch'] = None\n"
            "import workbench.traffic.metrics, workbench.traffic.drive_result\n"
            "assert 'workbench.engine' not in sys.modules")
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         timeout=120)
    assert res.returncode == 0, res.stderr


def test_metrics_is_a_leaf_module():
    """engine.outputs imports workbench.traffic.metrics: it must pull in no other workbench
    module (nor torch or pandas), so the engine does not depend on the traffic layer above."""
    import subprocess
    import sys

    code = ("import sys; sys.modules['torch'] = None; sys.modules['pandas'] = None\n"
            "import workbench.traffic.metrics\n"
            "loaded = sorted(m for m in sys.modules if m.startswith('workbench'))\n"
            "assert loaded == ['workbench', 'workbench.traffic', 'workbench.traffic.metrics'], "
            "loaded")
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         timeout=120)
    assert res.returncode == 0, res.stderr
