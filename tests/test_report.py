"""The design-review report: its words and tables (unit), `workbench report --smoke` end to end,
and the HTML rendered in real headless Chromium."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from workbench import figures
from workbench import report_text as rt
from workbench.report import ReportError, render_report
from workbench.traffic import load_scenario
from workbench.traffic.scenario import parse_scenario

ROOT = Path(__file__).resolve().parent.parent
CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
# Offline, as root, no first-run noise (see FIELD-NOTES).
FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
         "--disable-component-update", "--disable-sync", "--no-first-run", "--disable-quic",
         "--virtual-time-budget=20000"]
DICT_REPR = re.compile(r"\{'\w+': ")


def _scenario(**changes):
    data = {"name": "t", "arrival": {"kind": "poisson", "rate": 2},
            "prompt_tokens": {"dist": "fixed", "value": 64},
            "output_tokens": {"dist": "fixed", "value": 8}, "num_requests": 10,
            "slo": {"ttft_s": 0.5, "tpot_s": 0.05, "percentile": 90}} | changes
    return parse_scenario(data)


# ---- words and tables ---------------------------------------------------------------------

def test_chat_scenario_summary_reads_as_a_sentence():
    sc = load_scenario(ROOT / "scenarios" / "chat.yaml")
    assert rt.scenario_summary(sc) == (
        "**chat** — 60 requests sent to the in-process engine serving model `tiny` (up to 16 "
        "sequences and 2,048 tokens per step, KV blocks of 16 tokens), as Poisson arrivals at "
        "4 req/s. Prompts: lognormal, median 128 tokens (8–1,024); outputs: uniform, 16–128 "
        "tokens. Target: TTFT ≤ 500 ms, TPOT ≤ 50 ms and E2E ≤ 10,000 ms for 90% of requests.")


@pytest.mark.parametrize("spec, words", [
    ({"dist": "uniform", "low": 16, "high": 128}, "uniform, 16–128 tokens"),
    ({"dist": "uniform", "low": 16, "high": 128, "max": 100},
     "uniform, 16–128 tokens (at most 100)"),
    ({"dist": "lognormal", "median": 256, "sigma": 0.6, "min": 8, "max": 2048},
     "lognormal, median 256 tokens (8–2,048)"),
    ({"dist": "lognormal", "median": 24, "sigma": 0.7, "min": 2}, "lognormal, median 24 tokens "
                                                                  "(at least 2)"),
    ({"dist": "normal", "mean": 96, "std": 24, "min": 32, "max": 160},
     "normal, mean 96 ± 24 tokens (32–160)"),
    ({"dist": "fixed", "value": 64}, "fixed at 64 tokens"),
    ({"dist": "empirical", "values": [3, 5, 8]}, "empirical, 3 observed lengths"),
])
def test_lengths_in_words_omit_defaulted_bounds(spec, words):
    sc = _scenario(output_tokens=spec)
    assert rt.describe_lengths(sc.output_tokens) == words


@pytest.mark.parametrize("path", sorted((ROOT / "scenarios").glob("*.yaml")), ids=lambda p: p.stem)
def test_scenario_table_has_words_not_structures(path):
    sc = load_scenario(path)
    table = rt.scenario_table(sc)
    assert list(table.columns) == ["setting", "value"]
    text = table.to_string()
    assert not DICT_REPR.search(text) and "{" not in text and "[" not in text
    assert "1000000" not in text and "1,000,000" not in text  # the defaulted clip
    assert "None" not in text


@pytest.mark.parametrize("seconds, text", [
    (0.0395, "39.5 ms"), (1.3345, "1,334 ms"), (0.00791, "7.91 ms"), (0.0004, "0.4 ms"),
    (0.05, "50 ms"), (1e-7, "< 0.01 ms"), (0.5, "500 ms"), (float("nan"), "n/a"), (None, "n/a")])
def test_latencies_are_milliseconds_rounded_to_their_size(seconds, text):
    assert rt.format_ms(seconds) == text


def test_simulator_caveat_only_when_it_misses():
    frame = pd.DataFrame({"metric": ["ttft_p50", "ttft_p90", "request_throughput"],
                          "real": [1.0, 2.0, 3.0], "sim": [0.9, 0.2, 9.0],
                          "error": [-0.1, -0.9, 2.0]})
    assert rt.simulation_caveat(frame).startswith(
        "**Caution:** the simulator misses the measured TTFT p90 by 90%")
    assert rt.simulation_caveat(frame.iloc[[0, 2]]) == ""  # throughput alone does not warn


@pytest.mark.parametrize("spec, words", [
    ({"kind": "poisson", "rate": 4.0}, "Poisson arrivals at 4 req/s"),
    ({"kind": "gamma", "rate": 6, "burstiness": 0.3},
     "gamma arrivals at 6 req/s, burstiness 0.3 (burstier than Poisson)"),
    ({"kind": "closed_loop", "concurrency": 8, "think_time_s": 0.5},
     "a closed loop of 8 concurrent clients, 0.5 s think time"),
    ({"kind": "piecewise", "segments": [{"duration_s": 10, "rate": 1},
                                        {"duration_s": 20, "rate": 8}]},
     "time-varying Poisson arrivals, 1–8 req/s over 2 segments of 30 s in all, repeating"),
])
def test_arrivals_in_words(spec, words):
    assert rt.describe_arrival(_scenario(arrival=spec).arrival) == words


def test_trace_replay_in_words():
    sc = load_scenario(ROOT / "scenarios" / "azure-conv-replay.yaml")
    assert rt.describe_arrival(sc.arrival) == (
        "a replay of the trace traces/azure-llm-2023-conv.csv (30 s from 0 s); prompt lengths "
        "scaled x0.1 and capped at 1,024 tokens; output lengths scaled x0.25 and capped at 256 "
        "tokens")


def test_fit_terms_carry_units():
    table = rt.fit_table({"const": 3.6e-3, "prefill_tokens": 4.9e-5, "decode_context": 0.0})
    assert table["cost"].tolist() == ["3.6 ms", "49 µs", "0"]
    assert table["unit"][0] == "per step (fixed cost)"


def test_slo_verdict_at_the_slo_percentile():
    sc = _scenario()
    n = 10
    requests = pd.DataFrame({"finish_reason": ["length"] * n,
                             "ttft": np.linspace(0.1, 1.0, n),      # p90 = 0.91 s > 0.5 s
                             "tpot": np.full(n, 0.02), "e2e": np.full(n, 1.0)})
    v = rt.slo_verdict(sc, requests, simulated=requests.assign(ttft=0.2))
    assert v.columns.tolist() == ["metric", "target", "measured p90", "verdict", "simulated p90"]
    assert v.to_dict("records")[0] == {"metric": "TTFT (time to first token)",
                                       "target": "≤ 500 ms", "measured p90": "910 ms",
                                       "verdict": "FAIL", "simulated p90": "200 ms"}
    assert v["verdict"].tolist() == ["FAIL", "pass"]  # no E2E SLO: no E2E row
    # aborted requests do not count towards the measured percentile
    aborted = requests.assign(finish_reason=["abort"] * 5 + ["length"] * 5)
    assert rt.slo_verdict(sc, aborted)["measured p90"][0] == "960 ms"


def test_rejected_hardware_says_why_in_words():
    sc = _scenario()
    rows = [{"hardware": "l40s", "precision": "bf16", "tp": 1, "price_per_gpu_hour": 1.5,
             "replicas": 2, "cost_per_hour": 3.0, "cost_per_month": 2190.0,
             "percentiles": {"ttft": 0.1234, "tpot": 0.0123}},
            {"hardware": "l4", "precision": "bf16", "tp": 1, "price_per_gpu_hour": 0.8,
             "replicas": None, "why": "SLOs missed even with 8 replicas"}]
    table = rt.hardware_table(rows, sc)
    assert table["verdict"].tolist() == ["cheapest", "ruled out"]
    assert table.loc[0, "TTFT p90"] == "123 ms" and table.loc[1, "TTFT p90"] == "–"
    assert table.loc[0, "$ per month"] == "$2,190"
    assert not table.isna().any().any()
    assert rt.rejected_options(rows) == ("- **L4** is ruled out: SLOs missed even with 8 "
                                         "replicas.")


def test_decisions_give_reasons_and_alternatives():
    from workbench.plan import recommend

    d = recommend("framework", {"use": "production", "hardware_vendor": "nvidia",
                                "latency": "standard", "concurrency": "high",
                                "hf_integration": "not_needed"})
    text = rt.decision_text(d, "serving framework")
    assert text.startswith("**vLLM** is the recommended serving framework: built for high")
    assert "Alternatives worth a look: SGLang, TGI." in text
    path = rt.decision_path(d)
    assert path.columns.tolist() == ["question", "answer", "why it matters"]
    assert path["why it matters"].str.len().min() > 5 and "not needed" in path["answer"].tolist()


def test_framework_concurrency_comes_from_the_run_by_littles_law():
    given = {"use": "production", "hardware_vendor": "nvidia", "latency": "standard",
             "hf_integration": "not_needed"}
    sc = _scenario()  # Poisson at 2 req/s
    # 2 req/s x 3 s mean E2E = 6 in flight: high; x 1.5 s = 3: low (the median is not used)
    answers, facts = rt.run_framework_answers(sc, {"e2e_mean": 3.0, "e2e_p50": 1.0}, given)
    assert answers == given | {"concurrency": "high"} and facts["requests_in_flight"] == 6
    assert rt.in_flight_text(facts) == ("Requests in flight (Little's law): 2 req/s x 3,000 ms "
                                        "mean E2E ≈ 6, more than 4: high concurrency.")
    answers, facts = rt.run_framework_answers(sc, {"e2e_mean": 1.5}, given)
    assert answers["concurrency"] == "low" and "at most 4: low" in rt.in_flight_text(facts)
    # no single rate (closed loop): the measured offered rate
    closed = _scenario(arrival={"kind": "closed_loop", "concurrency": 8})
    _, facts = rt.run_framework_answers(closed, {"e2e_mean": 2.0,
                                                 "offered_request_rate": 4.0}, given)
    assert facts["requests_in_flight"] == 8
    with pytest.raises(ValueError, match="^concurrency: derived"):
        rt.run_framework_answers(sc, {"e2e_mean": 1.0}, given | {"concurrency": "high"})
    with pytest.raises(ValueError, match="^concurrency: needs"):
        rt.run_framework_answers(sc, {"e2e_mean": float("nan")}, given)
    from workbench.plan import recommend

    assert recommend("framework", answers).recommendation  # a complete answer set


def test_capacity_sentence():
    assert rt.capacity_text(1, 32, 4.0, 12.345) == (
        "Simulated on the measured engine: **1 replica** meets every SLO at the scenario's "
        "4 req/s; one replica stays within the SLOs up to about **12.3 req/s**.")
    assert "**more than 32 replicas** would be needed to meet" in rt.capacity_text(None, 32, 4,
                                                                                   1.0)


def _figures():
    rng = np.random.default_rng(0)
    req = pd.DataFrame({"ttft": rng.random(20), "tpot": rng.random(20) / 10,
                        "e2e": rng.random(20) * 5, "output_tokens": rng.integers(1, 64, 20),
                        "finish": rng.random(20), "arrival": np.zeros(20)})
    steps = pd.DataFrame({"t_start": np.arange(10.0), "t_end": np.arange(10.0) + 0.5,
                          "num_seqs": np.arange(10), "kv_blocks_used": np.arange(10),
                          "kv_blocks_total": np.full(10, 64), "num_waiting": np.zeros(10)})
    sweep = pd.DataFrame({"rate": [1.0, 2, 4], "request_throughput": [1.0, 2, 3],
                          "goodput": [1.0, 1.5, 1], "ttft_p90": [0.1, 0.2, 0.9],
                          "saturated": [False, False, True]})

    class Fit:
        def predict(self, s):
            return (s["t_end"] - s["t_start"]).to_numpy() * 1.1

    class Ev:
        def __init__(self, rate, goodput, met):
            self.rate, self.goodput, self.met = rate, goodput, met

    return {
        "latency_cdfs": figures.latency_cdfs({"a": req, "b": req}, slos={"ttft": 0.5},
                                             percentile=90),
        "engine_timeline": figures.engine_timeline(steps),
        "step_residuals": figures.step_residuals(Fit(), steps),
        "throughput_latency": figures.throughput_latency(sweep),
        "goodput_curve": figures.goodput_curve([Ev(1, 1, True), Ev(8, 2, False)],
                                               target_rate=4),
        "bar": figures.bar(["L4", "H100"], [1, 2], "cost", "$ per month", xaxis_title="GPU"),
        "completion_order": figures.completion_order({"static": req, "continuous": req}),
        "sweep_goodput": figures.sweep_goodput(sweep),
    }


@pytest.mark.parametrize("name", list(_figures()))
def test_every_figure_labels_its_axes_and_has_a_legend(name):
    fig = _figures()[name]
    layout = fig.to_plotly_json()["layout"]
    used = {(t.xaxis or "x", t.yaxis or "y") for t in fig.data}
    for ax, ay in used:
        for key in (ax.replace("x", "xaxis"), ay.replace("y", "yaxis")):
            title = (layout.get(key, {}).get("title") or {}).get("text")
            # shared axes are titled once (the bottom or the left panel)
            if not title and layout.get(key, {}).get("matches"):
                continue
            assert title, f"{name}: {key} has no title"
    assert layout.get("showlegend") is True, f"{name}: no legend"
    shown = [t.name for t in fig.data if t.showlegend is not False]
    assert shown and all(shown), f"{name}: legend entries without names"


def test_goodput_curve_legend_explains_the_colours():
    names = [t.name for t in _figures()["goodput_curve"].data]
    assert "meets every SLO" in names and "misses an SLO" in names
    assert any("scenario's rate" in n for n in names)


def test_latency_axes_say_ms():
    layout = _figures()["latency_cdfs"].to_plotly_json()["layout"]
    assert layout["xaxis"]["title"]["text"] == "TTFT (ms)"


# ---- the rendered report ------------------------------------------------------------------

@pytest.fixture(scope="module")
def report(tmp_path_factory):
    out = tmp_path_factory.mktemp("reports")
    html = render_report(ROOT / "scenarios" / "chat.yaml", out, smoke=True, progress=False)
    return html


def _output_text(executed: Path) -> str:
    """Everything the executed notebook displays except the figures' embedded plotly.js."""
    parts = []
    for cell in json.loads(executed.read_text())["cells"]:
        for out in cell.get("outputs", []):
            for mime, data in out.get("data", {}).items():
                text = "".join(data) if isinstance(data, list) else str(data)
                if mime.startswith("text/") and "plotly" not in text.lower():
                    parts.append(text)
            parts.append("".join(out.get("text", "")))
    return "\n".join(parts)


def test_report_is_self_contained(report):
    text = report.read_text()
    # plotly.js is embedded (its source is megabytes), not loaded from a CDN
    assert len(text) > 3_000_000 and "Plotly.newPlot" in text
    assert not re.search(r'<script[^>]+src="https?://[^"]*plot\.ly', text)
    assert "<h1" in text and "Design review" in text
    assert "from workbench" not in text  # code cells are hidden
    assert (report.parent / "chat.ipynb").exists()  # the executed notebook is kept


def test_report_reads_as_words_with_units(report):
    shown = _output_text(report.parent / "chat.ipynb")
    assert not DICT_REPR.search(shown), DICT_REPR.search(shown)
    assert "1000000" not in shown and "1,000,000" not in shown
    assert "Prompts: lognormal, median 128 tokens (8–1,024); outputs: uniform, 16–128 tokens" \
        in shown
    # latencies carry units and no 4-decimal seconds
    assert re.search(r"\d ms<", shown) and not re.search(r">\d+\.\d{4}<", shown)
    html = report.read_text()
    for heading in ("What was asked", "SLO verdict", "Latency percentiles",
                    "Recommended configuration", "Framework and precision"):
        assert f">{heading}<" in html, f"section {heading!r} missing"


@pytest.mark.skipif(CHROMIUM is None, reason="chromium not installed (make test installs "
                                            "Debian's chromium when run as root)")
def test_report_renders_in_headless_chromium(report, tmp_path):
    dom = subprocess.run([CHROMIUM, *FLAGS, f"--user-data-dir={tmp_path / 'dom'}",
                          "--dump-dom", report.as_uri()], capture_output=True, text=True,
                         timeout=180, check=True).stdout
    # every plotly figure drew, with traces, a legend and axis titles
    plots = dom.count('class="plot-container plotly"')
    assert plots >= 5 and plots == report.read_text().count("Plotly.newPlot"), \
        f"only {plots} plotly figures rendered"
    assert len(re.findall(r'class="(?:scatter|bars?|trace)[^"]*"', dom)) > plots
    assert dom.count('class="legend"') >= plots, "a figure rendered without its legend"
    assert len(re.findall(r'class="[xy]\d*title"', dom)) >= 2 * plots
    # the SLO verdict table made it into the page as a table, one row per SLO
    verdict = re.search(r"SLO verdict.*?(<table.*?</table>)", dom, re.S)
    assert verdict, "no SLO verdict table"
    rows = re.findall(r"<tr>.*?</tr>", verdict.group(1), re.S)
    assert len(rows) == 1 + 3, rows  # header + TTFT, TPOT, E2E
    assert all(re.search(r">(pass|FAIL)<", r) for r in rows[1:])
    assert all(re.search(r"\d ms<", r) for r in rows[1:])
    shot = tmp_path / "chat-first-screen.png"
    subprocess.run([CHROMIUM, *FLAGS, f"--user-data-dir={tmp_path / 'shot'}",
                    "--window-size=1280,900", f"--screenshot={shot}", report.as_uri()],
                   capture_output=True, timeout=180, check=True)
    assert shot.stat().st_size > 10_000
    assert not list((ROOT / "reports").glob("*.png")), "test wrote into the repository"


def test_failing_cell_is_named(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("name: bad\narrival: {kind: poisson, rate: -1}\nnum_requests: 2\n"
                   "prompt_tokens: {dist: fixed, value: 4}\n"
                   "output_tokens: {dist: fixed, value: 2}\n")
    with pytest.raises(ReportError, match=r"cell \d+ of 00-design-review.ipynb failed for "
                                          r"bad.yaml: ScenarioError: .*arrival.rate"):
        render_report(bad, tmp_path / "out", smoke=True, progress=False)
    assert (tmp_path / "out" / "bad.ipynb").exists()


def test_report_measures_a_server_at_a_url(tmp_path, monkeypatch):
    """`workbench report --target-url`: the scenario's traffic goes to a real `workbench serve`
    (with an API key, read from the named variable); the predictions stay the engine's."""
    from server_helpers import scrape, start_server, stop_server

    proc, url = start_server("tiny", env={"WORKBENCH_API_KEYS": "report-key"})
    try:
        monkeypatch.setenv("REPORT_KEY", "report-key")
        html = render_report(ROOT / "scenarios" / "chat.yaml", tmp_path, smoke=True,
                             progress=False, target_url=url, api_key_env="REPORT_KEY")
        shown = _output_text(tmp_path / "chat.ipynb")
        served = scrape(url, {"Authorization": "Bearer report-key"})
    finally:
        stop_server(proc)
    assert f"Measured at the OpenAI-compatible endpoint {url} serving `tiny`" in shown
    assert "24 of 24 requests completed" in shown
    # the server saw exactly the report's requests, all finished by length (ignore_eos)
    assert served['workbench:request_success_total{finished_reason=length}'] == 24
    assert "not visible to its clients" in shown and "no KV-cache figures" in shown
    for heading in ("SLO verdict", "What the models predict", "Recommended configuration"):
        assert f">{heading}<" in html.read_text()


def test_report_target_url_is_checked_before_the_notebook_runs(tmp_path):
    chat = ROOT / "scenarios" / "chat.yaml"
    with pytest.raises(ReportError, match="target-url: must start with http"):
        render_report(chat, tmp_path, smoke=True, progress=False, target_url="localhost:8000")
    from server_helpers import free_port

    with pytest.raises(ReportError, match="target-url: no server answers at http://127"):
        render_report(chat, tmp_path, smoke=True, progress=False,
                      target_url=f"http://127.0.0.1:{free_port()}")
    assert not (tmp_path / "chat.ipynb").exists()
