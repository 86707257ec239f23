"""Capacity: the calculator (plan.capacity_analytic) and `plan capacity` (the simulated search)
answer the same question alike; the search stops early when no rate can meet the SLOs and
says why; candidates are sized by the scenario's context; one GPU lacking a precision does not
abort the comparison; calibration measures this machine and hides no efficiency above 1."""

from __future__ import annotations

import json

import pytest
import yaml
from typer.testing import CliRunner

from workbench.cli import app
from workbench.fit.features import FEATURES
from workbench.fit.step_model import StepTimeModel
from workbench.plan import get_hardware, get_model
from workbench.sim import capacity as sim_capacity
from workbench.traffic.scenario import parse_scenario

MODEL = {"name": "tiny", "path": "/x/tiny", "architecture": "LlamaForCausalLM",
         "weight_bytes": 1, "kv_bytes_per_token": 1024, "max_model_len": 2048,
         "vocab_size": 4096, "eos_token_ids": [2], "num_kv_blocks": 100}
ENGINE = {"dtype": "float32", "block_size": 16, "kv_cache_dtype": "auto", "quantization": "none"}


def scenario(rate=20.0, prompt=1024, output=256, tpot=0.05, ttft=1.0, n=400, **engine):
    return parse_scenario({
        "name": "cap", "seed": 0, "arrival": {"kind": "poisson", "rate": rate},
        "target": {"kind": "engine", "model": "tiny",
                   "engine": {"max_num_seqs": 512, "max_num_batched_tokens": 8192} | engine},
        "prompt_tokens": {"dist": "fixed", "value": prompt},
        "output_tokens": {"dist": "fixed", "value": output}, "num_requests": n,
        "slo": {"ttft_s": ttft, "tpot_s": tpot, "percentile": 90}})


def write(sc, tmp_path):
    path = tmp_path / "sc.yaml"
    path.write_text(yaml.safe_dump(sc.model_dump(mode="json")))
    return str(path)


def fit(const=2e-3, per_prefill_token=1e-4, per_decode=1e-3) -> StepTimeModel:
    return StepTimeModel(dict.fromkeys(FEATURES, 0.0) | {
        "const": const, "prefill_tokens": per_prefill_token, "decode_seqs": per_decode},
        MODEL, ENGINE)


@pytest.mark.parametrize("tp", [None, 8])
def test_calculator_and_plan_capacity_give_the_same_gpus(tmp_path, tp, literature_parameters):
    # The worked number (16 GPUs) is arithmetic on the literature parameters; the agreement
    # holds for any parameters (tests/test_step_cost.py checks it with the fitted ones).
    # Llama-3-70B at 20 req/s on H100s: the calculator said 16 GPUs, `plan capacity` 8 (its
    # steps 2 ms dearer, MoE and embedding priced apart, no utilization headroom, TP fixed at
    # 1). Same step cost, headroom and TP choice now; 1,000 requests reach steady state
    # (arrivals span ~35 s, a request lives ~13 s), which the calculator's formula assumes.
    from workbench.widgets import capacity_view

    view = capacity_view("llama-3-70b", "h100-sxm", rate_rps=20.0, prompt_tokens=1024,
                         output_tokens=256, tpot_slo_ms=50, ttft_slo_ms=1000, tp=tp,
                         max_num_seqs=512, max_num_batched_tokens=8192)
    args = ["plan", "capacity", write(scenario(n=1000), tmp_path), "--hardware", "h100-sxm",
            "--model", "llama-3-70b", "--json"] + ([] if tp is None else ["--tp", str(tp)])
    res = CliRunner().invoke(app, args)
    assert res.exit_code == 0, res.output
    row = json.loads(res.output)["rows"][0]
    assert (view.tp, view.fleet.replicas, view.fleet.gpus) == (row["tp"], row["replicas"],
                                                               row["gpus"])
    assert view.fleet.gpus == 16 and view.tp == (tp or 4)
    assert "note" not in row      # long enough for steady state


def test_a_scenario_too_short_for_steady_state_is_flagged():
    from types import SimpleNamespace

    specs = [SimpleNamespace(arrival_s=t / 10) for t in range(141)]      # 14 s of arrivals
    pct = {"ttft": 0.2, "tpot": 0.045}                                  # lives 11.7 s
    note = sim_capacity._transient_note(specs, 256, pct)
    assert note.startswith("arrivals span 14 s, under two request lifetimes (12 s each)")
    assert sim_capacity._transient_note(specs, 64, pct) is None      # lives 3 s


def test_replicas_are_counted_in_one_place():
    from workbench import widgets
    from workbench.plan import capacity_analytic, cost

    assert widgets.replicas_needed is cost.replicas_needed
    assert capacity_analytic.replicas_needed is cost.replicas_needed
    assert cost.replicas_needed(10.0, 5.0, 1.0) == 2 and cost.replicas_needed(0, 5.0) == 1
    p = cost.provisioned_cost(10_000_000, 500, 0.001, 2.0, utilization=0.5)
    assert p.gpus == cost.replicas_needed(p.busy_gpu_hours, cost.HOURS_PER_MONTH, 0.5)
    # The calculator's arithmetic is the plan's; the widget module only re-exports it.
    from workbench.widgets import capacity as widget_capacity

    for name in ("Setup", "operating_batch", "auto_tp", "fleet_at_rate", "resolve"):
        assert getattr(widget_capacity, name) is getattr(capacity_analytic, name)


def count_evaluations(monkeypatch, limit=40):
    """Count simulations; fail fast (instead of looping ~1,000 times) past `limit`."""
    calls = []
    real = sim_capacity.evaluate

    def counted(*args, **kwargs):
        calls.append(args)
        if len(calls) > limit:
            raise AssertionError(f"more than {limit} simulations")
        return real(*args, **kwargs)

    monkeypatch.setattr(sim_capacity, "evaluate", counted)
    return calls


def test_no_rate_meets_the_slos_is_found_without_simulating(monkeypatch):
    # A batch-1 decode step takes 2 + 1 = 3 ms: a 2 ms TPOT SLO is out of reach at any rate.
    sc, model = scenario(rate=4.0, prompt=32, output=16, tpot=0.002, n=100), fit()
    calls = count_evaluations(monkeypatch)
    why = sim_capacity.slo_floor(sc, model)
    assert why.startswith("no rate meets the SLOs") and "tpot p90 3.0 ms" in why
    assert "batch-1 decode" in why
    assert sim_capacity.max_rate(sc, model, 1, start=1.0) == (0.0, [])
    assert sim_capacity.min_replicas(sc, model, max_replicas=64) == (None, [])
    assert calls == []


def test_max_rate_searches_below_a_start_that_is_too_high(monkeypatch):
    sc, model = scenario(rate=4.0, prompt=32, output=16, tpot=0.02, ttft=0.1, n=100), fit()
    calls = count_evaluations(monkeypatch)
    rate, curve = sim_capacity.max_rate(sc, model, 1, start=1000.0)
    assert 0 < rate < 1000 and sim_capacity.evaluate(sc, model, 1, rate=rate).met
    assert not sim_capacity.evaluate(sc, model, 1, rate=rate * 1.15).met
    assert len(calls) <= 10 + 1 + 6 + 2     # halvings + start + bisection + the checks here


def test_plan_capacity_fit_says_why_no_rate_meets_the_slos(tmp_path, monkeypatch):
    calls = count_evaluations(monkeypatch)
    fit().save(tmp_path / "f.json")
    sc = scenario(rate=4.0, prompt=32, output=16, tpot=0.002, n=100)
    res = CliRunner().invoke(app, ["plan", "capacity", write(sc, tmp_path), "--fit",
                                   str(tmp_path / "f.json")])
    assert res.exit_code == 0, res.output
    assert "no rate meets the SLOs" in res.output and "tpot p90 3.0 ms" in res.output
    assert calls == []


def test_slos_missed_with_the_most_replicas_say_which_and_by_how_much():
    sc = scenario(rate=200.0, prompt=1024, output=256, n=200)
    rows = sim_capacity.cheapest_configuration(sc, get_model("llama-3-8b"),
                                               [get_hardware("h100-sxm")], max_replicas=1)
    why = rows[0]["why"]
    assert rows[0]["replicas"] is None and "SLOs missed even with 1 replicas" in why
    assert "p90" in why and " ms > " in why and "more replicas than --max-replicas" in why


def test_candidates_are_sized_by_the_scenario_context_not_the_models():
    # Llama-3.1-8B's 131,072-token context does not fit one L4 beside the weights; a chat
    # scenario's 1,500 + 500 tokens do.
    sc = scenario(rate=0.5, prompt=1500, output=500, tpot=0.3, ttft=5.0, n=60)
    rows = sim_capacity.cheapest_configuration(sc, get_model("llama-3.1-8b"),
                                               [get_hardware("l4")], tp=1)
    assert rows[0]["context"] == 2000
    assert rows[0]["replicas"] is not None, rows[0].get("why")
    from workbench.sim.roofline_model import RooflineStepModel

    model = RooflineStepModel(get_model("llama-3.1-8b"), get_hardware("l4"), context=2000)
    assert model.model["max_model_len"] == 2000


def test_a_gpu_without_the_precision_is_skipped_with_the_reason(tmp_path):
    sc = scenario(rate=2.0, prompt=512, output=128, n=60)
    # fp8 weights on an A100 run weight-only at the bf16 peak (vLLM's Marlin path); a chip
    # with no fp16 path at all (this CPU's entry) cannot serve fp16 and says why.
    rows = sim_capacity.cheapest_configuration(
        sc, get_model("llama-3-8b"), [get_hardware("a100-80gb"), get_hardware("h100-sxm"),
                                      get_hardware("cpu-local")], precision="fp8")
    assert all(r["replicas"] for r in rows if r["hardware"] != "cpu-local"), rows
    rows = sim_capacity.cheapest_configuration(
        sc, get_model("llama-3-8b"), [get_hardware("cpu-local"), get_hardware("h100-sxm")],
        precision="fp16")
    by = {r["hardware"]: r for r in rows}
    assert by["h100-sxm"]["replicas"] >= 1
    assert by["cpu-local"]["replicas"] is None
    assert by["cpu-local"]["why"].startswith("precision: cpu-local cannot run fp16")
    res = CliRunner().invoke(app, ["plan", "capacity", write(sc, tmp_path), "--hardware",
                                   "cpu-local,h100-sxm", "--model", "llama-3-8b",
                                   "--precision", "fp16"])
    assert res.exit_code == 0, res.output
    assert "cpu-local: -  (precision: cpu-local cannot run fp16" in res.output


def test_calibration_measures_this_machine_and_rejects_efficiency_above_one(monkeypatch):
    from dataclasses import replace

    from workbench.plan import hardware
    from workbench.plan.step_cost import PEAK, StepCostModel
    from workbench.sim.roofline_model import (
        CALIBRATION_DECODE,
        CALIBRATION_PREFILL,
        calibrated_efficiency,
    )

    arch = get_model("tiny")
    box = replace(get_hardware("cpu-local"), name="measured-box")
    monkeypatch.setattr(hardware, "measure_hardware", lambda **kw: box)
    bound = StepCostModel(arch, box, "fp32", efficiency=PEAK)
    decode_bound = bound.cost(CALIBRATION_DECODE).memory_time_s
    prefill_bound = bound.cost(CALIBRATION_PREFILL).compute_time_s
    # A fit twice as slow as the bounds: MBU = MFU = 0.5, measured on the box at hand.
    slow = fit(const=0.0, per_prefill_token=2 * prefill_bound / 512,
               per_decode=2 * decode_bound)
    eff = calibrated_efficiency(slow, None, arch, "fp32")
    assert "raw MBU 0.500, MFU 0.500" in eff.source and "measured-box" in eff.source
    # The calibration is the whole parameter set of the published-data fit, and with it the
    # step model follows the fit's step times (a fit is linear, the model a roofline: this
    # synthetic fit's cost per decoded sequence is pure per-sequence cost, which the roofline
    # can only approximate).
    import statistics

    from workbench.plan.step_params import PARAMETER_NAMES
    from workbench.sim.roofline_model import calibration_batches

    assert all(getattr(eff, n) is not None for n in PARAMETER_NAMES)
    model = StepCostModel(arch, box, "fp32", efficiency=eff)
    misses = [abs(model.seconds(b) / slow.predict_record(b) - 1)
              for b in calibration_batches(2048)]
    assert statistics.median(misses) < 0.2, misses
    # Twice as fast as the bound: the figures are wrong for that machine. Say so.
    fast = fit(const=0.0, per_prefill_token=prefill_bound / 512 / 2,
               per_decode=decode_bound / 2)
    with pytest.raises(ValueError, match=r"^calibrate: .*MBU 2\.00 > 1"):
        calibrated_efficiency(fast, box, arch, "fp32")


def test_engine_limits_cap_the_calculators_batch_as_they_cap_the_simulators():
    from workbench.widgets import capacity_view

    free = capacity_view("llama-3-8b", "h100-sxm", rate_rps=20.0)
    capped = capacity_view("llama-3-8b", "h100-sxm", rate_rps=20.0, max_num_seqs=64)
    assert free.batch > 64 and capped.batch == 64
    assert "max_num_seqs / max_num_batched_tokens admit no more" in capped.explanation
    # 1,024-token prompts per 256 outputs: each sequence brings 4 prefill tokens per step.
    tokens = capacity_view("llama-3-8b", "h100-sxm", rate_rps=20.0, max_num_batched_tokens=500)
    assert tokens.batch == 100
    with pytest.raises(ValueError, match="^max_num_seqs: must be > 0"):
        capacity_view(max_num_seqs=-1)


def never_met(percentiles):
    """An evaluate that misses at every rate, with these percentiles (no simulation)."""
    def evaluate(scenario, fit, replicas, lb="least-outstanding", rate=None):
        return sim_capacity.Evaluation(replicas, rate, False, dict(percentiles), 0.0)
    return evaluate


def test_max_rate_that_finds_no_rate_says_down_to_which_and_which_slo(monkeypatch):
    # The floor passes (a request alone meets a 20 ms TPOT), but every simulated rate misses.
    sc, model = scenario(rate=4.0, prompt=32, output=16, tpot=0.02, ttft=0.1, n=100), fit()
    assert sim_capacity.slo_floor(sc, model) is None
    monkeypatch.setattr(sim_capacity, "evaluate", never_met({"ttft": 0.05, "tpot": 0.03}))
    rate, curve = sim_capacity.max_rate(sc, model, 1, start=1.0, max_halvings=3)
    assert rate == 0.0 and min(e.rate for e in curve) == 0.125
    why = sim_capacity.no_rate_met(rate, curve, sc)
    assert why == ("no rate down to 0.125 req/s meets the SLOs: at that rate "
                   "tpot p90 30.0 ms > 20 ms")
    assert sim_capacity.no_rate_met(0.0, [], sc) is None     # slo_floor's case
    assert sim_capacity.no_rate_met(2.0, curve, sc) is None


def test_plan_capacity_fit_prints_the_reason_instead_of_zero_req_s(tmp_path, monkeypatch):
    monkeypatch.setattr(sim_capacity, "evaluate", never_met({"ttft": 0.05, "tpot": 0.03}))
    fit().save(tmp_path / "f.json")
    sc = scenario(rate=4.0, prompt=32, output=16, tpot=0.02, ttft=0.1, n=100)
    args = ["plan", "capacity", write(sc, tmp_path), "--fit", str(tmp_path / "f.json"),
            "--max-replicas", "2"]
    res = CliRunner().invoke(app, args)
    assert res.exit_code == 0, res.output
    assert "req/s within the SLOs" not in res.output
    assert "one replica: no rate down to" in res.output and "tpot p90 30.0 ms > 20 ms" in res.output
    data = json.loads(CliRunner().invoke(app, args + ["--json"]).output)
    assert data["max_rate_one_replica"] == 0.0
    assert data["max_rate_one_replica_why"].startswith("no rate down to")


def test_plan_capacity_hardware_takes_a_hardware_file(tmp_path, monkeypatch):
    from workbench.plan import hardware

    monkeypatch.setattr(hardware, "_ADDED_FILES", [])   # the file is added for the process
    # A 0.1 GiB GPU holds no Llama-3-8B at any TP up to 64: the row says so, no simulation.
    path = tmp_path / "mine.yaml"
    path.write_text("hardware:\n  tiny-gpu:\n    vendor: nvidia\n    memory_gib: 0.1\n"
                    "    memory_bandwidth_gb_s: 100\n    peak_tflops: {bf16: 10}\n")
    sc = write(scenario(rate=1.0, prompt=64, output=16, n=20), tmp_path)
    args = ["plan", "capacity", sc, "--hardware", "tiny-gpu", "--model", "llama-3-8b"]
    res = CliRunner().invoke(app, args)
    assert res.exit_code == 2 and "unknown 'tiny-gpu'" in res.output
    res = CliRunner().invoke(app, args + ["--hardware-file", str(path)])
    assert res.exit_code == 0, res.output
    assert "tiny-gpu: -  (model: llama-3-8b does not fit on 1 x tiny-gpu" in res.output


def test_a_forecast_adds_the_clients_latency_to_ttft_and_e2e():
    from dataclasses import replace

    from workbench.plan.step_params import default_efficiency
    from workbench.sim.roofline_model import RooflineStepModel

    sc = scenario(rate=2.0, prompt=256, output=32, n=20)
    hw, arch = get_hardware("h100-sxm"), get_model("llama-3-8b")
    base = replace(default_efficiency(hw), client_s=0.0)
    quiet = sim_capacity.evaluate(sc, RooflineStepModel(arch, hw, efficiency=base), 1)
    slow = sim_capacity.evaluate(sc, RooflineStepModel(
        arch, hw, efficiency=replace(base, client_s=0.25)), 1)
    assert slow.percentiles["ttft"] == pytest.approx(quiet.percentiles["ttft"] + 0.25)
    assert slow.percentiles["tpot"] == pytest.approx(quiet.percentiles["tpot"])
