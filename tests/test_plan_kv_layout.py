"""Paged vs contiguous KV reservations, pinned with hand-computed numbers."""

import pandas as pd
import pytest

from workbench.plan.kv_layout import allocation_table, measured_block_utilization, reserved_tokens


def test_reservations_by_policy():
    # Two requests: 100 + 20 and 30 + 50 tokens, cap 64 new tokens, 256-token context, blocks of 16.
    r = reserved_tokens([100, 30], [20, 50], 64, max_model_len=256, block_size=16)
    assert r["tokens held"].tolist() == [120, 80]
    assert r["paged"].tolist() == [128, 80]  # 120 -> 8 blocks; 80 is exactly 5 blocks
    assert r["contiguous (prompt + max_tokens)"].tolist() == [164, 94]
    assert r["contiguous (max_model_len)"].tolist() == [256, 256]


def test_table_utilization_and_pool():
    t = allocation_table([100, 30], [20, 50], [64, 64], max_model_len=256, block_size=16,
                         kv_bytes_per_token=1000, pool_tokens=1024).set_index("policy")
    assert t.loc["tokens held", "utilization"] == 1.0
    assert t.loc["paged", "utilization"] == pytest.approx(200 / 208)
    assert t.loc["contiguous (max_model_len)", "waste"] == pytest.approx(1 - 200 / 512)
    assert t.loc["contiguous (prompt + max_tokens)", "reserved_mb"] == pytest.approx(0.258)
    assert t.loc["paged", "concurrent_requests"] == 1024 // 104
    assert t.loc["contiguous (max_model_len)", "concurrent_requests"] == 4


@pytest.mark.parametrize("kwargs, field", [
    (dict(prompt_tokens=[-1], output_tokens=[1], max_tokens=4), "prompt_tokens"),
    (dict(prompt_tokens=[1.5], output_tokens=[1], max_tokens=4), "prompt_tokens"),
    (dict(prompt_tokens=[10], output_tokens=[9], max_tokens=4), "output_tokens"),
    (dict(prompt_tokens=[250], output_tokens=[1], max_tokens=64), "max_tokens"),
])
def test_bad_input_names_the_field(kwargs, field):
    with pytest.raises(ValueError, match=field):
        reserved_tokens(max_model_len=256, **kwargs)


def test_measured_utilization_skips_idle_steps():
    steps = pd.DataFrame({"kv_blocks_used": [0, 4, 10], "sum_context_tokens": [0, 60, 150]})
    assert measured_block_utilization(steps, 16).tolist() == [60 / 64, 150 / 160]
