"""Length distributions, scenario files and their error messages, synthetic prompts."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from pydantic import TypeAdapter

from workbench.traffic.lengths import LengthDist, sample_lengths
from workbench.traffic.scenario import ScenarioError, load_scenario, parse_scenario
from workbench.traffic.workload import build_requests, token_ids_to_text

SCENARIOS = sorted((Path(__file__).resolve().parent.parent / "scenarios").glob("*.yaml"))
dist = TypeAdapter(LengthDist).validate_python


def draw(d, n=20000, seed=0, other=None, corr=0.0):
    a, b = sample_lengths(dist(d), dist(other or {"dist": "fixed", "value": 1}), n,
                          np.random.default_rng(seed), corr)
    return a, b


def test_distributions_and_clipping(tmp_path):
    u, _ = draw({"dist": "uniform", "low": 16, "high": 20})
    assert set(np.unique(u)) == {16, 17, 18, 19, 20}
    ln, _ = draw({"dist": "lognormal", "median": 200, "sigma": 0.5})
    assert np.median(ln) == pytest.approx(200, rel=0.03)
    nm, _ = draw({"dist": "normal", "mean": 100, "std": 10, "min": 95, "max": 120})
    assert nm.min() == 95 and nm.max() <= 120
    (tmp_path / "lens.txt").write_text("5\n7\n9\n")
    emp = dist({"dist": "empirical", "file": "lens.txt"})
    a, _ = sample_lengths(emp, dist({"dist": "fixed", "value": 1}), 3000,
                          np.random.default_rng(0), 0.0, tmp_path)
    assert set(np.unique(a)) == {5, 7, 9}


def test_correlated_lengths():
    p, o = draw({"dist": "uniform", "low": 10, "high": 1000}, other={
        "dist": "lognormal", "median": 50, "sigma": 0.7}, corr=0.8)
    rank = lambda x: np.argsort(np.argsort(x))  # noqa: E731
    assert np.corrcoef(rank(p), rank(o))[0, 1] > 0.7
    p0, o0 = draw({"dist": "uniform", "low": 10, "high": 1000}, other={
        "dist": "lognormal", "median": 50, "sigma": 0.7})
    assert abs(np.corrcoef(rank(p0), rank(o0))[0, 1]) < 0.05


@pytest.mark.parametrize("path", SCENARIOS, ids=[p.stem for p in SCENARIOS])
def test_shipped_scenarios_are_valid(path):
    sc = load_scenario(path)
    assert sc.name == path.stem
    if sc.arrival.kind == "trace":  # replays read the copy inside the repository
        assert (path.parent / sc.arrival.file).resolve().is_relative_to(path.parent.resolve())
    specs = build_requests(sc, 4096)
    assert specs and all(s.max_tokens >= 1 and s.prompt_token_ids for s in specs)


def test_required_scenarios_ship():
    names = {p.stem for p in SCENARIOS}
    assert {"chat", "rag-long-prompt", "batch-summarize", "bursty-agents",
            "shared-system-prompt"} <= names


def test_errors_name_file_field_and_allowed(tmp_path):
    f = tmp_path / "x.yaml"
    f.write_text("name: x\narrival: {kind: gamma, rate: 4, burstiness: -1}\n"
                 "prompt_tokens: {dist: fixed, value: 4}\n"
                 "output_tokens: {dist: uniform, low: 9, high: 3}\nnum_requests: 5\n"
                 "slo: {ttft_s: 0}\ncolour: blue\n")
    with pytest.raises(ScenarioError) as e:
        load_scenario(f)
    lines = str(e.value).splitlines()
    assert f"{f}: arrival.burstiness: must be > 0, got -1" in lines
    assert f"{f}: output_tokens: high (3) must be >= low (9)" in lines
    assert f"{f}: slo.ttft_s: must be > 0, got 0" in lines
    assert f"{f}: colour: unknown field" in lines
    assert len(lines) == 4
    f.write_text("name: x\narrival: {kind: sometimes}\nnum_requests: 1\n")
    with pytest.raises(ScenarioError, match=r"arrival.kind: must be one of 'constant', "
                                            r"'poisson', 'gamma'.*got 'sometimes'"):
        load_scenario(f)
    with pytest.raises(ScenarioError, match="no such scenario file"):
        load_scenario(tmp_path / "absent.yaml")


def test_overrides():
    sc = load_scenario(SCENARIOS[0].parent / "chat.yaml",
                       ["arrival.rate=9", "target.engine.max_num_seqs=4", "num_requests=3"])
    assert sc.arrival.rate == 9.0 and sc.target.engine["max_num_seqs"] == 4
    with pytest.raises(ScenarioError, match=r"arrival.rate: must be > 0"):
        load_scenario(SCENARIOS[0].parent / "chat.yaml", ["arrival.rate=-2"])
    with pytest.raises(ScenarioError, match="target.engine: unknown field"):
        load_scenario(SCENARIOS[0].parent / "chat.yaml", ["target.engine.max_num_seq=4"])


def test_prompts_have_exact_lengths_and_shared_prefixes():
    sc = parse_scenario({"name": "p", "seed": 3, "arrival": {"kind": "poisson", "rate": 1},
                         "prompt_tokens": {"dist": "uniform", "low": 40, "high": 90},
                         "output_tokens": {"dist": "fixed", "value": 3}, "num_requests": 400,
                         "shared_prefix": {"fraction": 0.6, "count": 3, "tokens": 32}})
    specs = build_requests(sc, 4096)
    lens = np.array([len(s.prompt_token_ids) for s in specs])
    again = build_requests(sc, 4096)
    assert [s.prompt_token_ids for s in specs] == [s.prompt_token_ids for s in again]
    assert lens.min() >= 40 and lens.max() <= 90
    grouped = [s for s in specs if s.prefix_group is not None]
    assert len(grouped) / len(specs) == pytest.approx(0.6, abs=0.06)
    prefixes = {tuple(s.prompt_token_ids[:32]) for s in grouped}
    assert len(prefixes) == 3
    assert {s.prefix_group for s in grouped} == {0, 1, 2}


def test_text_prompts_retokenize_to_length(tiny_path):
    from workbench.models.loader import load_tokenizer

    tok = load_tokenizer(tiny_path)
    rng = np.random.default_rng(0)
    hits = 0
    for n in (8, 32, 100):
        ids = rng.integers(3, 4096, size=n).tolist()
        text = token_ids_to_text(ids, tok)
        got = len(tok(text, add_special_tokens=False)["input_ids"])
        hits += got == n
        assert abs(got - n) <= 2
    assert hits >= 2
