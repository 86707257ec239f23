"""Fitting the step model to published measurements: the re-timed schedule equals the
simulator, a fit recovers parameters it was generated with, knees, and the CLI."""

from __future__ import annotations

from dataclasses import replace

import pandas as pd
import pytest
from typer.testing import CliRunner

from workbench.cli import app
from workbench.plan.step_cost import Efficiency
from workbench.sim.published_fit import (
    START,
    fit_parameters,
    knees,
    trace_row,
)
from workbench.sim.published_rows import (
    empty_answers,
    predicted_metrics,
    row_setting,
    simulate_row,
    simulate_setting,
)

ROW = dict(source="s", source_ref="x@y:z", date="2024-09-01", engine="vllm",
           engine_version="0.5.4", gpu="h100-sxm", gpu_count=1, tp=1,
           model="meta-llama/Meta-Llama-3-8B", arch="llama-3-8b", weight_dtype="fp16",
           kv_dtype="auto", workload="random", input_tokens=512, output_tokens=64,
           request_rate=float("inf"), mode="online", max_model_len=2048)
TRUE = replace(START, memory=0.82, compute=0.55, overhead_s=0.004, per_seq_s=3e-5,
               client_s=0.02)


def rows(*loads) -> list[dict]:
    return [ROW | {"concurrency": c, "num_requests": n, "mode": mode}
            for c, n, mode in loads]


@pytest.mark.parametrize("load", [(4, 12, "online"), (16, 16, "offline"),
                                  (64, 64, "online")])
def test_the_retimed_schedule_is_the_simulation(load):
    row = rows(load)[0]
    for e in (START, TRUE):
        got, want = trace_row(row, START).metrics(e), simulate_row(row, e)
        for key in ("ttft_ms_mean", "tpot_ms_mean", "output_throughput"):
            assert got[key] == pytest.approx(want[key], rel=1e-9), key


def test_empty_sharegpt_answers_count_as_the_benchmark_counts_them():
    # vLLM's benchmark_serving gives an answer with no text TTFT 0 and no tokens: a ShareGPT
    # run without ignore_eos has ~20% of them, and its mean TTFT is that much lower.
    row = ROW | {"workload": "sharegpt", "input_tokens": 200, "output_tokens": 150,
                 "concurrency": 40, "num_requests": 40}
    s = row_setting(row)
    empty = empty_answers(s)
    assert s.empty_answers and 0.1 < empty.mean() < 0.3
    assert not empty_answers(row_setting(row | {"mode": "offline"})).any()
    got = simulate_row(row, TRUE)
    trace = trace_row(row, START)
    assert (trace.req_output == 0).sum() == empty.sum()
    assert trace.metrics(TRUE)["ttft_ms_mean"] == pytest.approx(got["ttft_ms_mean"], rel=1e-9)
    _, result = simulate_setting(s, TRUE)
    full = predicted_metrics(result.records, TRUE.client_s)
    assert got["ttft_ms_mean"] < full["ttft_ms_mean"] * (1 - empty.mean() / 2)
    assert got["output_throughput"] < full["output_throughput"]


def test_open_loop_rows_are_simulated_again_between_rounds():
    row = ROW | {"concurrency": float("nan"), "request_rate": 5.0, "num_requests": 30}
    trace = trace_row(row, START)
    assert trace.setting.concurrency is None and trace.setting.rate == 5.0
    # Arrivals are fixed in time, so a step may wait for its requests.
    assert any(r is not None for r in trace.ready)


def test_a_fit_recovers_the_parameters_its_measurements_were_made_with():
    frame = pd.DataFrame(rows((1, 4, "online"), (8, 16, "online"), (32, 64, "online"),
                              (16, 16, "offline"), (64, 64, "offline")))
    truth = [simulate_row(r, TRUE) for r in frame.to_dict("records")]
    frame["ttft_ms_mean"] = [t["ttft_ms_mean"] if m == "online" else None
                             for t, m in zip(truth, frame["mode"], strict=True)]
    frame["tpot_ms_mean"] = [t["tpot_ms_mean"] for t in truth]
    frame["output_throughput"] = [t["output_throughput"] for t in truth]
    for col in ("ttft_ms_median", "tpot_ms_median"):
        frame[col] = None
    traces = [trace_row(r, START) for r in frame.to_dict("records")]
    generic, _ = fit_parameters(frame, traces, START)
    for trace, want in zip(traces, truth, strict=True):
        got = trace.metrics(generic)
        assert got["output_throughput"] == pytest.approx(want["output_throughput"], rel=0.02)
        assert got["tpot_ms_mean"] == pytest.approx(want["tpot_ms_mean"], rel=0.02)
    assert isinstance(generic, Efficiency) and generic.source == "fitted"


def test_the_knee_is_the_first_load_within_ten_percent_of_the_peak():
    frame = pd.DataFrame([{**ROW, "concurrency": c, "num_requests": c, "mode": "offline",
                           "output_throughput": t}
                          for c, t in ((1, 100), (4, 380), (16, 1300), (64, 1500),
                                       (256, 1520))])
    predicted = pd.DataFrame({"output_throughput": [90, 350, 1000, 1400, 1600]},
                             index=frame.index)
    k = knees(frame, predicted).iloc[0]
    assert (k.knee_published, k.knee_predicted, k.doublings) == (64, 256, 2.0)


def test_validate_prints_held_out_errors_and_knees():
    res = CliRunner().invoke(app, ["plan", "validate", "--sample", "12"])
    assert res.exit_code == 0, res.output
    assert "leave-one-source-out, by GPU" in res.output
    assert "leave-one-GPU-out, by GPU" in res.output
    bad = CliRunner().invoke(app, ["plan", "validate", "--only", "nobody"])
    assert bad.exit_code == 2 and "only: no row has source or gpu in ['nobody']" in bad.output
