"""The published-measurement dataset: every row valid, and the coverage the forecasts claim."""

import math

import pandas as pd
import pytest

from workbench.plan.published import COLUMNS, DATASET, check_row, load_published


@pytest.fixture(scope="module")
def rows():
    return load_published()


def test_every_row_is_valid_and_sourced(rows):
    # load_published raises on any bad row; check the provenance fields here as well.
    assert rows["source"].notna().all() and rows["source_ref"].str.contains("@").all()
    assert rows["date"].notna().all()
    readme = (DATASET.parent / "README.md").read_text()
    for source in rows["source"].unique():
        assert source in readme, f"{source} has no entry (licence, how measured) in README"


def test_coverage_is_what_the_forecasts_claim(rows):
    assert len(rows) >= 150
    assert rows["source"].nunique() >= 3
    assert rows["gpu"].nunique() >= 4
    assert rows["concurrency"].min() == 1 and rows["concurrency"].max() >= 256
    context = rows["input_tokens"] + rows["output_tokens"]
    assert context.min() <= 300 and context.max() >= 8192
    # Each forecast metric has published values to be judged on.
    for metric in ("ttft_ms_mean", "tpot_ms_mean", "output_throughput"):
        assert rows[metric].notna().sum() >= 20, metric


def _good_row() -> dict:
    frame = pd.read_csv(DATASET)
    return frame.iloc[0].to_dict()


@pytest.mark.parametrize("field, value, says", [
    ("source", math.nan, "source: missing"),
    ("gpu", "tpu-v9", "gpu: 'tpu-v9' is not in the hardware catalog"),
    ("model", "acme/unknown-7b", "model: 'acme/unknown-7b' has no catalog architecture"),
    ("tp", 3, "tp: 3 does not divide gpu_count"),
    ("input_tokens", -5, "input_tokens: -5 must be a number"),
    ("output_throughput", 1e12, "output_throughput: 1000000000000.0 is outside"),
    ("date", "2019-01-01", "date: 2019-01-01 is outside"),
    ("engine", "tgi", "engine: 'tgi'; allowed: vllm"),
])
def test_a_bad_row_is_named_by_field(field, value, says):
    row = _good_row() | {field: value}
    if field == "tp":
        row["gpu_count"] = 4
    problems = check_row(7, row)
    assert any(says in p and p.startswith("row 7") for p in problems), problems


def test_the_good_row_has_no_problem():
    assert check_row(0, _good_row()) == []


def test_columns_are_the_documented_schema():
    assert tuple(pd.read_csv(DATASET, nrows=1).columns) == COLUMNS
