"""Step-model fitting and the simulator (the real scheduler on a virtual clock)."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from workbench.fit.features import FEATURES
from workbench.fit.step_model import (
    BLOCK_STEPS,
    StepTimeModel,
    fit_step_model,
    holdout_split,
    load_fit,
)
from workbench.sim.simulator import Simulator, check_fit_matches, simulate_scenario
from workbench.traffic import load_run
from workbench.traffic.scenario import parse_scenario
from workbench.traffic.workload import RequestSpec, build_requests

MODEL = {"name": "tiny", "path": "/x/tiny", "architecture": "LlamaForCausalLM",
         "weight_bytes": 1, "kv_bytes_per_token": 1024, "max_model_len": 2048,
         "vocab_size": 4096, "eos_token_ids": [2], "num_kv_blocks": 100}
ENGINE = {"dtype": "float32", "block_size": 16, "kv_cache_dtype": "auto", "quantization": "none"}


def const_model(seconds: float) -> StepTimeModel:
    coef = dict.fromkeys(FEATURES, 0.0) | {"const": seconds}
    return StepTimeModel(coef, MODEL, ENGINE)


def synthetic_steps(n=400, seed=0, noise=0.02):
    rng = np.random.default_rng(seed)
    d = pd.DataFrame({
        "num_prefill_tokens": rng.integers(0, 512, n), "num_prefill_seqs": rng.integers(0, 3, n),
        "num_decode_seqs": rng.integers(0, 32, n)})
    d["prefill_attention"] = d.num_prefill_tokens * rng.integers(1, 600, n)
    d["decode_max_context"] = rng.integers(1, 1024, n)
    d["decode_context"] = (d.num_decode_seqs * d.decode_max_context * rng.uniform(0.3, 1, n)
                           ).astype(int)
    truth = {"const": 1e-3, "prefill_tokens": 2e-5, "prefill_attention": 3e-8,
             "prefill_seqs": 2e-4, "decode_seqs": 5e-5, "decode_context": 2e-7,
             "decode_padded_context": 1e-7}
    d["t_start"], d["t_end"] = 0.0, 0.0
    coef = dict.fromkeys(FEATURES, 0.0) | truth
    y = StepTimeModel(coef, MODEL, ENGINE).predict(d)
    y = y * (1 + noise * rng.standard_normal(n))
    d["t_start"] = np.arange(n) * 1.0
    d["t_end"] = d["t_start"] + y
    return d, truth


def test_fit_recovers_known_costs(tmp_path):
    steps, truth = synthetic_steps()
    fit = fit_step_model(steps, MODEL, ENGINE, "test-box")
    for name, value in truth.items():
        assert fit.coefficients[name] == pytest.approx(value, rel=0.15), name
    assert fit.validation["mape"] < 0.03 and fit.validation["r2"] > 0.98
    # the alternative family is scored on the same held-out steps
    assert 0 < fit.validation["alternatives"]["gradient-boosting"]["mape"] < 1
    again = load_fit(fit.save(tmp_path / "f.json"))
    assert again.coefficients == fit.coefficients and again.hardware == "test-box"
    with pytest.raises(ValueError, match="steps: .* too few"):
        fit_step_model(steps.head(5), MODEL, ENGINE)
    with pytest.raises(ValueError, match="fit"):
        load_fit(tmp_path / "missing.json")


def test_held_out_steps_are_whole_cases_or_runs():
    # Steps of one profile case are near-identical: holding out single steps at random would
    # score the fit on near-copies of its training rows.
    steps, _ = synthetic_steps(n=400)
    steps["case"] = np.arange(400) // 10  # 40 cases of 10 steps, over two runs
    steps["run"] = np.arange(400) // 200
    train, test, by = holdout_split(steps, 0.2, seed=0)
    key = list(zip(steps.run, steps.case, strict=True))
    assert by == "run+case" and not {key[i] for i in train} & {key[i] for i in test}
    assert sorted([*train, *test]) == list(range(400)) and 80 <= len(test) < 90
    runs = steps.drop(columns="case").assign(run=np.arange(400) // 50)
    train, test, by = holdout_split(runs, 0.2, seed=1)
    assert by == "run" and not set(runs.run.iloc[train]) & set(runs.run.iloc[test])
    bare = steps.drop(columns=["case", "run"])  # a single real run: blocks of steps
    train, test, by = holdout_split(bare, 0.2, seed=2)
    blocks = np.arange(400) // BLOCK_STEPS
    assert not set(blocks[train]) & set(blocks[test]) and len(test) >= 80
    assert fit_step_model(steps, MODEL, ENGINE).validation["split_by"] == "run+case"
    train, test, by = holdout_split(bare.head(20), 0.2)  # short: blocks of 2
    assert by == "blocks of 2 steps" and len(train) and len(test) and not (
        set(np.asarray(train) // 2) & set(np.asarray(test) // 2))


def test_a_profile_and_a_traffic_run_fit_together():
    # `workbench fit profile-run traffic-run`: the traffic run's steps carry no case; they are
    # held out in blocks of consecutive steps, not as one group, and not dropped.
    steps, _ = synthetic_steps(n=400)
    steps["run"] = np.where(np.arange(400) < 200, "profile", "traffic")
    steps["case"] = np.where(steps["run"] == "profile", np.arange(400) // 10, np.nan)
    train, test, by = holdout_split(steps, 0.2, seed=0)
    assert by == "run+case" and sorted([*train, *test]) == list(range(400))
    traffic = np.flatnonzero(steps["run"] == "traffic")
    block = {i: i // BLOCK_STEPS for i in traffic}  # consecutive steps stay together
    held = {block[i] for i in test if i in block}
    kept = {block[i] for i in train if i in block}
    assert held and kept and not held & kept
    assert fit_step_model(steps, MODEL, ENGINE).validation["n_test"] == len(test)


def test_simulated_timeline_by_hand():
    # 10 ms per step, whatever runs: a 10-token prompt prefills in one step, then 4 decodes.
    sim = Simulator(const_model(0.010), {"max_num_seqs": 4})
    res = sim.run([RequestSpec(0, 0.0, list(range(3, 13)), 5),
                   RequestSpec(1, 0.025, list(range(3, 8)), 2)])
    a, b = sorted(res.records, key=lambda r: r["request_id"])
    assert a["ttft"] == pytest.approx(0.010) and a["e2e"] == pytest.approx(0.050)
    assert a["tpot"] == pytest.approx(0.010) and a["output_tokens"] == 5
    # b arrives at 25 ms, during the step that ends at 30 ms; it is admitted at 30 ms
    assert b["first_scheduled"] == pytest.approx(0.030) and b["ttft"] == pytest.approx(0.015)
    assert len(sim.telemetry) == 5


def test_simulator_runs_the_real_scheduler_with_preemption(tmp_path):
    sc = parse_scenario({
        "name": "tight", "seed": 1, "arrival": {"kind": "constant", "rate": 1000.0},
        "target": {"kind": "engine", "model": "tiny",
                   "engine": {"block_size": 4, "num_kv_blocks": 60, "max_num_seqs": 8}},
        "prompt_tokens": {"dist": "uniform", "low": 20, "high": 40},
        "output_tokens": {"dist": "uniform", "low": 20, "high": 40}, "num_requests": 24})
    fit = StepTimeModel(dict.fromkeys(FEATURES, 0.0) | {"const": 1e-3, "decode_seqs": 1e-4},
                        MODEL, ENGINE)
    run = load_run(simulate_scenario(sc, fit, tmp_path, log=lambda m: None))
    assert run.manifest["kind"] == "simulated" and len(run.requests) == 24
    assert run.steps.num_preempted.sum() > 0 and run.requests.preemptions.sum() > 0
    assert (run.steps.kv_blocks_used <= 60).all()
    expected = {str(s.index): s for s in build_requests(sc, 4096)}
    for _, r in run.requests.iterrows():
        assert r.output_tokens == expected[r.request_id].max_tokens


def test_fit_for_another_model_is_refused(tmp_path):
    fit = const_model(0.01)
    target = parse_scenario({"name": "x", "arrival": {"kind": "poisson", "rate": 1},
                             "target": {"kind": "engine", "model": "small",
                                        "engine": {"dtype": "bfloat16"}},
                             "prompt_tokens": {"dist": "fixed", "value": 4},
                             "output_tokens": {"dist": "fixed", "value": 4},
                             "num_requests": 2}).target
    with pytest.raises(ValueError, match="model: the fit is for 'tiny'.*engine.dtype"):
        check_fit_matches(fit, target, allow_mismatch=False)
    warnings = []
    check_fit_matches(fit, target, allow_mismatch=True, log=warnings.append)
    assert len(warnings) == 2 and all(w.startswith("warning: ") for w in warnings)


def test_fit_of_another_kv_cache_dtype_is_refused():
    """A fit prices steps and sizes the pool for the KV format it measured; spellings of the
    planner ("fp8", "bf16") and of EngineConfig ("fp8_e4m3", "auto") name the same formats."""
    from types import SimpleNamespace

    def target(kv):
        return SimpleNamespace(model="tiny", engine={"kv_cache_dtype": kv})

    def fit_with(kv):
        return StepTimeModel(const_model(0.01).coefficients, MODEL, ENGINE | {
            "kv_cache_dtype": kv})

    with pytest.raises(ValueError, match="engine.kv_cache_dtype: the fit was measured with "
                                         "'auto', the scenario asks for 'int8'"):
        check_fit_matches(const_model(0.01), target("int8"), allow_mismatch=False)
    int8_fit = fit_with("int8")
    with pytest.raises(ValueError, match="kv_cache_dtype"):
        check_fit_matches(int8_fit, target("auto"), allow_mismatch=False)
    check_fit_matches(int8_fit, target("int8"), allow_mismatch=False)
    for have, want in [("fp8", "fp8_e4m3"), ("bf16", "auto"), ("int8", "int8")]:
        check_fit_matches(fit_with(have), target(want), allow_mismatch=False)


def test_profile_fit_simulate_end_to_end(tmp_path, tiny_path):
    from typer.testing import CliRunner

    from workbench.cli import app

    runner = CliRunner()
    res = runner.invoke(app, ["profile", "--model", str(tiny_path), "--set", "max_num_seqs=4",
                              "--set", "max_num_batched_tokens=256", "--out", str(tmp_path),
                              "--no-progress"])
    assert res.exit_code == 0, res.output
    prof = load_run(res.output.strip().splitlines()[-1])
    assert prof.manifest["kind"] == "profile" and len(prof.steps) > 50
    assert {"prefill_attention", "decode_max_context"} <= set(prof.steps.columns)
    mem = prof.manifest["memory"]
    assert mem["weight_bytes"] > 0 and mem["activation_bytes_per_token"] > 0
    assert set(mem["activation_peak_model"]) == {"256"}  # max_num_batched_tokens=256
    res = runner.invoke(app, ["fit", str(prof.path), "-o", str(tmp_path / "f.json")])
    assert res.exit_code == 0 and "held-out" in res.output, res.output
    assert load_fit(tmp_path / "f.json").model["memory"] == mem
    assert load_fit(tmp_path / "f.json").validation["split_by"] == "run+case"
    f = tmp_path / "s.yaml"
    f.write_text(f"name: s\ntarget: {{kind: engine, model: {tiny_path}}}\n"
                 "arrival: {kind: poisson, rate: 5}\nprompt_tokens: {dist: fixed, value: 30}\n"
                 "output_tokens: {dist: fixed, value: 5}\nnum_requests: 20\n")
    res = runner.invoke(app, ["simulate", str(f), "--fit", str(tmp_path / "f.json"), "--out",
                              str(tmp_path)])
    assert res.exit_code == 0, res.output
    sim = load_run(res.output.strip().splitlines()[-1])
    assert len(sim.requests) == 20 and list(sim.requests.columns)[:14] == list(
        prof.requests.columns)[:14]
    res = runner.invoke(app, ["simulate", str(f), "--fit", str(tmp_path / "f.json"), "--tp", "2",
                              "--replicas", "2", "--lb", "least-kv", "--out", str(tmp_path)])
    assert res.exit_code == 0, res.output
    tp = load_run(res.output.strip().splitlines()[-1])
    assert tp.manifest["extrapolated"] and tp.manifest["tensor_parallel"] == 2
    assert set(tp.requests.replica) == {0, 1} and set(tp.steps.replica) == {0, 1}
    res = runner.invoke(app, ["simulate", str(f), "--fit", str(tmp_path / "f.json"),
                              "--set", "target.model=small"])
    assert res.exit_code == 2 and "error: model: the fit is for" in res.output


def _capacity_case():
    from workbench.traffic.scenario import parse_scenario

    sc = parse_scenario({
        "name": "cap", "seed": 2, "arrival": {"kind": "poisson", "rate": 60.0},
        "target": {"kind": "engine", "model": "tiny", "engine": {"max_num_seqs": 8}},
        "prompt_tokens": {"dist": "uniform", "low": 16, "high": 64},
        "output_tokens": {"dist": "uniform", "low": 8, "high": 24}, "num_requests": 300,
        "slo": {"ttft_s": 0.06, "tpot_s": 0.02, "percentile": 90}})
    fit = StepTimeModel(dict.fromkeys(FEATURES, 0.0) | {
        "const": 2e-3, "prefill_tokens": 1e-4, "decode_seqs": 1e-3}, MODEL, ENGINE)
    return sc, fit


def test_capacity_search_agrees_with_brute_force():
    from workbench.sim.capacity import brute_force_min_replicas, evaluate, max_rate, min_replicas

    sc, fit = _capacity_case()
    for lb in ("round-robin", "least-outstanding"):
        n, tried = min_replicas(sc, fit, lb, max_replicas=16)
        assert n == brute_force_min_replicas(sc, fit, lb, max_replicas=16)
        assert n is not None and n > 1  # the case is meant to need a cluster
        assert not evaluate(sc, fit, n - 1, lb).met and evaluate(sc, fit, n, lb).met
    rate, curve = max_rate(sc, fit, replicas=2)
    assert evaluate(sc, fit, 2, rate=rate).met
    assert not evaluate(sc, fit, 2, rate=rate * 1.15).met
    assert rate > 0 and len(curve) >= 3


def test_bad_load_balancer_name():
    sc, fit = _capacity_case()
    with pytest.raises(ValueError, match="lb: must be one of"):
        Simulator(fit, {}, replicas=2, lb="fastest")


def test_plan_capacity_cli(tmp_path, monkeypatch):
    from typer.testing import CliRunner

    from workbench.cli import app
    from workbench.plan import hardware

    sc, fit = _capacity_case()
    fit.save(tmp_path / "f.json")
    f = tmp_path / "cap.yaml"
    import yaml

    f.write_text(yaml.safe_dump(sc.model_dump(mode="json")))
    res = CliRunner().invoke(app, ["plan", "capacity", str(f), "--fit", str(tmp_path / "f.json"),
                                   "--max-replicas", "16"])
    assert res.exit_code == 0, res.output
    assert "replicas needed:" in res.output and "one replica sustains" in res.output
    res = CliRunner().invoke(app, ["plan", "capacity", str(f), "--fit", str(tmp_path / "f.json"),
                                   "--lb", "nearest"])
    assert res.exit_code == 2 and "error: lb: must be one of" in res.output
    # --calibrate measures this machine; pinned here to figures the synthetic fit is slower
    # than, so the test does not depend on how busy the machine is.
    measured = hardware.get_hardware("cpu-local")
    monkeypatch.setattr(hardware, "measure_hardware", lambda **kw: measured)
    res = CliRunner().invoke(app, ["plan", "capacity", str(f), "--hardware", "h100-sxm,a10g",
                                   "--model", "llama-3-8b", "--calibrate", str(tmp_path / "f.json"),
                                   "--set", "num_requests=100", "--max-replicas", "8"])
    assert res.exit_code == 0, res.output
    assert "calibrated on this machine" in res.output and "h100-sxm" in res.output
    res = CliRunner().invoke(app, ["plan", "capacity", str(f)])
    assert res.exit_code == 2 and "error: fit: give either" in res.output


def test_tensor_parallel_scaling_by_hand():
    from types import SimpleNamespace

    from workbench.sim.parallelism import Link, ParallelStepModel

    model = MODEL | {"hidden_size": 4096, "num_layers": 32}
    base = StepTimeModel(dict.fromkeys(FEATURES, 0.0) | {"const": 1e-3, "decode_seqs": 1e-4},
                         model, ENGINE)
    link = Link(bandwidth_bytes_s=100e9, latency_s=5e-6)
    r = SimpleNamespace(num_prefill_tokens=0, prefill_attention=0, num_prefill_seqs=0,
                        num_decode_seqs=8, decode_context=0, decode_max_context=0)
    assert ParallelStepModel(base, 1, 1, link).predict_record(r) == pytest.approx(1.8e-3)
    tp2 = ParallelStepModel(base, 2, 1, link).predict_record(r)
    # compute halves; 2 all-reduces x 32 layers of 8 tokens x 4096 x 2 bytes, ring over 2
    ring = 2 * (1 / 2) * 8 * 4096 * 2 / 100e9 + 2 * 1 * 5e-6
    assert tp2 == pytest.approx(1e-3 + 0.8e-3 / 2 + 64 * ring)
    pp4 = ParallelStepModel(base, 1, 4, link).predict_record(r)
    assert pp4 == pytest.approx(1.8e-3 + 3 * (8 * 4096 * 2 / 100e9 + 5e-6))
    with pytest.raises(ValueError, match="tensor_parallel_size"):
        ParallelStepModel(base, 0)
    sim = Simulator(ParallelStepModel(base, 2, 1, link), {"max_num_seqs": 4})
    res = sim.run([RequestSpec(0, 0.0, list(range(3, 13)), 3)])
    assert len(res.records) == 1


def test_roofline_step_model_matches_the_planning_roofline():
    from types import SimpleNamespace

    from workbench.plan import PEAK, decode_step, get_hardware, get_model, prefill_step
    from workbench.sim.roofline_model import RooflineStepModel

    arch, h100 = get_model("llama-2-7b"), get_hardware("h100-sxm")
    model = RooflineStepModel(arch, h100, "bf16", efficiency=PEAK)
    one = SimpleNamespace(num_prefill_tokens=0, prefill_attention=0, num_prefill_seqs=0,
                          num_decode_seqs=1, decode_context=1024, decode_max_context=1024)
    expected = decode_step(arch, h100, 1, 1024, "bf16", efficiency=PEAK).time_s
    assert model.predict_record(one) == pytest.approx(expected, rel=0.01)
    assert 0.0039 < model.predict_record(one) < 0.0045  # ~4 ms: 13.5 GB at 3.35 TB/s + KV
    fill = SimpleNamespace(num_prefill_tokens=2048, prefill_attention=2048 * 2049 // 2,
                           num_prefill_seqs=1, num_decode_seqs=0, decode_context=0,
                           decode_max_context=0)
    expected = prefill_step(arch, h100, 2048, 1, "bf16", efficiency=PEAK).time_s
    assert model.predict_record(fill) == pytest.approx(expected, rel=0.02)


def test_cheapest_configuration_across_hardware():
    from workbench.plan import get_hardware, get_model
    from workbench.sim.capacity import cheapest_configuration
    from workbench.traffic.scenario import parse_scenario

    sc = parse_scenario({
        "name": "h", "seed": 0, "arrival": {"kind": "poisson", "rate": 10.0},
        "target": {"kind": "engine", "model": "tiny", "engine": {"max_num_seqs": 64}},
        "prompt_tokens": {"dist": "uniform", "low": 100, "high": 400},
        "output_tokens": {"dist": "uniform", "low": 20, "high": 100}, "num_requests": 150,
        "slo": {"ttft_s": 1.0, "tpot_s": 0.06, "percentile": 90}})
    gpus = [get_hardware(n) for n in ("l4", "h100-sxm", "a100-80gb")]
    rows = cheapest_configuration(sc, get_model("llama-3-8b"), gpus, max_replicas=8)
    costs = [r["cost_per_hour"] for r in rows if r["replicas"]]
    assert costs == sorted(costs) and len(costs) >= 2
    for r in rows:
        if r["replicas"]:
            assert r["cost_per_hour"] == pytest.approx(
                r["replicas"] * r["tp"] * r["price_per_gpu_hour"])
            assert r["gpus"] == r["replicas"] * r["tp"]
    big = cheapest_configuration(sc, get_model("llama-2-70b"), [get_hardware("l4")], tp=1)
    assert big[0]["replicas"] is None and "L4" in big[0]["why"].upper()
    # Auto TP finds 8 L4s that hold it, and says at once why no replica count helps.
    big = cheapest_configuration(sc, get_model("llama-2-70b"), [get_hardware("l4")])
    assert big[0]["tp"] == 8 and big[0]["replicas"] is None
    assert big[0]["why"].startswith("no rate meets the SLOs") and "tpot p90" in big[0]["why"]


def test_prefix_affinity_beats_round_robin_with_a_real_prefix_cache():
    """Four system prompts on four replicas: affinity keeps each prompt's blocks warm on one
    replica, round-robin makes every replica compute every prompt; the simulator runs the
    engine's own block manager, so the difference is in the cache hits and the TTFT."""
    from workbench.sim.simulator import simulate_requests

    sc = parse_scenario({
        "name": "four-prompts", "seed": 3,
        "target": {"kind": "engine", "model": "tiny", "engine": {"max_num_seqs": 16}},
        "arrival": {"kind": "poisson", "rate": 40.0},
        "prompt_tokens": {"dist": "uniform", "low": 600, "high": 700},
        "output_tokens": {"dist": "uniform", "low": 8, "high": 16},
        "shared_prefix": {"fraction": 1.0, "count": 4, "tokens": 512},
        "num_requests": 120})
    coef = dict.fromkeys(FEATURES, 0.0) | {"const": 2e-3, "prefill_tokens": 5e-5,
                                            "decode_seqs": 1e-4}
    model = StepTimeModel(coef, MODEL, ENGINE)
    result = {}
    for lb in ("round-robin", "prefix-affinity"):
        requests, sim, _, _ = simulate_requests(sc, model, replicas=4, lb=lb)
        hits = sum(r.block_manager.hit_tokens for r in sim.replicas)
        result[lb] = (requests.ttft.mean(), hits, requests.cached_prompt_tokens.sum())
    (rr_ttft, rr_hits, rr_cached), (pa_ttft, pa_hits, pa_cached) = (
        result["round-robin"], result["prefix-affinity"])
    assert pa_hits > rr_hits and pa_cached > rr_cached
    assert pa_ttft < 0.9 * rr_ttft, result


def test_a_scenarios_priority_class_is_served_first_under_load():
    from workbench.sim.simulator import simulate_requests
    from workbench.traffic.scenario import ScenarioError

    doc = {"name": "classes", "seed": 2,
           "target": {"kind": "engine", "model": "tiny", "engine": {"max_num_seqs": 4}},
           "arrival": {"kind": "poisson", "rate": 60.0},
           "prompt_tokens": {"dist": "uniform", "low": 100, "high": 200},
           "output_tokens": {"dist": "uniform", "low": 20, "high": 40},
           "num_requests": 150, "priorities": [{"share": 0.25, "priority": -1}]}
    sc = parse_scenario(doc)
    specs = build_requests(sc, 4096)
    urgent = [s.index for s in specs if s.priority == -1]
    assert 0.15 < len(urgent) / len(specs) < 0.35
    plain = build_requests(parse_scenario({**doc, "priorities": []}), 4096)
    assert [s.prompt_token_ids for s in plain] == [s.prompt_token_ids for s in specs]
    requests, _, _, _ = simulate_requests(sc, const_model(0.01))  # overloaded: a queue forms
    assert sorted(requests.request_id[requests.priority == -1].astype(int)) == urgent
    ttft = requests.set_index(requests.request_id.astype(int)).ttft
    others = ttft.drop(urgent)
    assert ttft[urgent].mean() < 0.5 * others.mean()
    for bad, field in (([{"share": 0.5, "priority": 1.5}], "priorities.0.priority"),
                       ([{"share": 0.7, "priority": 0}, {"share": 0.6, "priority": 1}],
                        "priorities")):
        with pytest.raises(ScenarioError, match=field):
            parse_scenario({**doc, "priorities": bad})
