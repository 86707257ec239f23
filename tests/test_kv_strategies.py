"""The KV-strategy comparisons the benchmarks, notebook 03 and the design review show, at a
CI size: each side really ran its strategy (counts, not timings, are asserted)."""

from __future__ import annotations

from workbench import kv_strategies


def test_prefix_caching_comparison_computes_less_with_caching():
    # 8 x ~530 tokens exceed one step's 2,048: later admissions find the prefix computed.
    c = kv_strategies.prefix_caching("tiny", requests=8, prefix=512, repeats=1)
    off, on = c.table.loc["caching off"], c.table.loc["caching on"]
    assert on["prefill tokens"] < 0.75 * off["prefill tokens"]
    assert off["hit rate"] == 0 and on["hit rate"] > 0.25
    assert "mean TTFT off / on (target >= 3x)" in c.ratios and "seed 0" in c.workload


def test_preemption_comparison_runs_each_mode():
    c = kv_strategies.preemption("tiny", requests=8, pool_tokens=512, repeats=1)
    t = c.table
    assert t.loc["recompute", "recomputed"] > 0 and t.loc["recompute", "swapped"] == 0
    assert t.loc["swap", "swapped"] > 0 and t.loc["swap", "recomputed"] == 0
    assert t.loc["swap", "blocks copied"] > 0
    # Swapped sequences resume where they were: fewer tokens go through prefill again.
    assert t.loc["swap", "prefill tokens"] < t.loc["recompute", "prefill tokens"]


def test_sliding_window_holds_fewer_blocks_than_its_tokens_fill():
    c = kv_strategies.sliding_window("tiny-mistral", requests=4, pool_tokens=2048)
    row = c.table.iloc[0]
    assert row["blocks without freeing"] > row["blocks held"]
    assert row["preemptions"] == 0


def test_paging_runs_more_sequences_than_a_contiguous_reservation_in_one_budget():
    c = kv_strategies.paging("tiny", requests=8, max_model_len=512, budget_tokens=2048,
                             repeats=1)
    paged, contiguous = c.table.iloc[0], c.table.iloc[1]
    assert paged["kv blocks"] == 128 and contiguous["kv blocks"] == 4
    assert paged["max seqs"] > contiguous["max seqs"]


def test_int8_kv_holds_more_blocks_and_sequences_in_one_budget():
    c = kv_strategies.kv_precision("tiny", requests=8, budget_tokens=512, max_model_len=512,
                                   repeats=1)
    bf16, int8 = c.table.iloc[0], c.table.iloc[1]
    assert 1.8 < int8["kv blocks"] / bf16["kv blocks"] < 2.0  # scales take the rest
    assert int8["max seqs"] > bf16["max seqs"]
