"""What a straight line through the profiled steps misses, and the sweep that measures it: the
small-batch factors and the fixed cost of a step that runs decodes beside a prefill chunk."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest

from workbench.fit.features import FEATURES
from workbench.fit.profile import DENSE_BATCHES, profile_plan
from workbench.fit.step_model import StepTimeModel, fit_step_model, load_fit

MODEL = {"name": "tiny", "path": "/x/tiny", "architecture": "LlamaForCausalLM",
         "weight_bytes": 1, "kv_bytes_per_token": 1024, "max_model_len": 2048,
         "vocab_size": 4096, "eos_token_ids": [2], "num_kv_blocks": 100}
ENGINE = {"dtype": "float32", "block_size": 16, "kv_cache_dtype": "auto", "quantization": "none"}
TRUTH = {"const": 3e-3, "prefill_tokens": 4e-5, "prefill_attention": 6e-8,
         "prefill_seqs": 1e-4, "decode_seqs": 1e-4, "decode_context": 1e-7,
         "decode_padded_context": 4e-7, "mixed_step": 1.5e-3}
# What a 2-core CPU showed for `tiny` and `small`: odd small batches slower than a line says.
FACTORS = {1: 0.85, 2: 1.1, 3: 1.3, 5: 1.1, 7: 1.25}


def steps_with_factors(n=1500, seed=0, noise=0.02):
    rng = np.random.default_rng(seed)
    decodes = rng.integers(1, 33, n)
    prefill = np.where(rng.random(n) < 0.3, rng.integers(32, 1024, n), 0)
    decodes = np.where((prefill > 0) & (rng.random(n) < 0.3), 0, decodes)  # prefill alone
    d = pd.DataFrame({"num_prefill_tokens": prefill, "num_prefill_seqs": (prefill > 0) * 1,
                      "num_decode_seqs": decodes})
    d["prefill_attention"] = d.num_prefill_tokens * rng.integers(1, 600, n)
    d["decode_max_context"] = rng.integers(16, 1024, n)
    d["decode_context"] = (d.num_decode_seqs * d.decode_max_context * rng.uniform(0.3, 1, n)
                           ).astype(int)
    linear = StepTimeModel(dict.fromkeys(FEATURES, 0.0) | TRUTH, MODEL, ENGINE).predict(d)
    rows = (d.num_prefill_tokens + d.num_decode_seqs).to_numpy()
    factor = np.array([FACTORS.get(int(m), 1.0) for m in rows])
    y = linear * factor * (1 + noise * rng.standard_normal(n))
    d["t_start"] = np.arange(n) * 1.0
    d["t_end"] = d["t_start"] + y
    return d


def test_fit_recovers_small_batch_factors(tmp_path):
    steps = steps_with_factors()
    fit = fit_step_model(steps, MODEL, ENGINE)
    # Each small size's steps are predicted right, and the factors carry the shape across row
    # counts (the line keeps the level): relative to a size without one, about the true factor.
    rows = (steps.num_prefill_tokens + steps.num_decode_seqs).to_numpy()
    ratio = fit.predict(steps) / (steps.t_end - steps.t_start)
    for m in range(1, 17):
        assert np.median(ratio[rows == m]) == pytest.approx(1.0, abs=0.03), m
        assert fit.row_factors[m] / fit.row_factors[4] == pytest.approx(
            FACTORS.get(m, 1.0), rel=0.08), m
    for name in ("prefill_tokens", "mixed_step"):
        assert fit.coefficients[name] == pytest.approx(TRUTH[name], rel=0.1), name
    assert np.median(ratio[rows > 16]) == pytest.approx(1.0, abs=0.03)
    assert fit.validation["mape"] < 0.04
    assert "small-batch factors" in fit.describe()
    # The simulator's per-step call and the vectorised one agree, factor included.
    d = steps_with_factors(n=200, seed=1)
    rows = [r for r in d.itertuples()]
    assert [fit.predict_record(r) for r in rows] == pytest.approx(list(fit.predict(d)))
    again = load_fit(fit.save(tmp_path / "f.json"))
    assert again.row_factors == fit.row_factors
    assert again.predict_record(rows[0]) == pytest.approx(fit.predict_record(rows[0]))


def test_a_line_alone_misses_small_batches():
    # The reason for the factors: without them the best line is off by 10-25% on exactly the
    # batch sizes interactive traffic runs.
    d = steps_with_factors()
    truth = d.t_end - d.t_start
    line = StepTimeModel(dict.fromkeys(FEATURES, 0.0) | TRUTH, MODEL, ENGINE).predict(d)
    three = (d.num_decode_seqs == 3) & (d.num_prefill_tokens == 0)
    assert np.median(line[three] / truth[three]) < 0.8
    fit = fit_step_model(d, MODEL, ENGINE)
    assert np.median(fit.predict(d[three]) / truth[three]) == pytest.approx(1.0, abs=0.03)


def test_mixed_step_cost_applies_only_to_steps_with_both():
    coef = dict.fromkeys(FEATURES, 0.0) | {"const": 1e-3, "mixed_step": 2e-3}
    model = StepTimeModel(coef, MODEL, ENGINE)
    d = pd.DataFrame({"num_prefill_tokens": [0, 100, 100], "num_decode_seqs": [3, 0, 3],
                      "num_prefill_seqs": [0, 1, 1], "prefill_attention": [0, 5050, 5050],
                      "decode_context": [300, 0, 300], "decode_max_context": [100, 0, 100]})
    assert list(model.predict(d)) == pytest.approx([1e-3, 1e-3, 3e-3])
    assert [model.predict_record(r) for r in d.itertuples()] == pytest.approx([1e-3, 1e-3, 3e-3])


def test_fit_saved_before_factors_loads_as_a_line(tmp_path):
    coef = {f: 0.0 for f in FEATURES if f != "mixed_step"} | {"const": 1e-3, "decode_seqs": 1e-4}
    data = {"kind": "step-time-model", "coefficients": coef, "model": MODEL, "engine": ENGINE}
    (tmp_path / "old.json").write_text(json.dumps(data))
    old = load_fit(tmp_path / "old.json")
    assert old.row_factors == []
    d = steps_with_factors(n=10)
    assert old.predict(d) == pytest.approx(1e-3 + 1e-4 * d.num_decode_seqs.to_numpy())


def test_profile_covers_every_small_batch_spread_over_the_sweep():
    plan = profile_plan(32, 2048, 2048)
    decode_cases = [i for i, c in enumerate(plan) if not c.get("prefill")]
    sizes = {plan[i]["decodes"] for i in decode_cases}
    assert set(range(1, DENSE_BATCHES + 1)) | {32} == sizes
    for b in (1, 3, 7, 16):  # each size's cases are spread out, not run back to back
        where = [i for i in decode_cases if plan[i]["decodes"] == b]
        assert len(where) >= 4 and min(np.diff(where)) > 1, b
    assert {c["decodes"] for c in profile_plan(4, 256, 2048) if not c.get("prefill")} == {
        1, 2, 3, 4}
    mixed = [c for c in plan if c.get("prefill") and c["decodes"]]
    assert len(mixed) >= 15 and all(c["prefills"] >= 2 for c in mixed)
