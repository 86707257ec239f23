"""Metric computations against hand-built timelines (vLLM serving-benchmark definitions)."""

from __future__ import annotations

import math

import pandas as pd
import pytest

from workbench.traffic.metrics import is_saturated, meets_slos, request_record, summarize


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
