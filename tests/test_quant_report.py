"""`workbench quant-report` on the trained tiny model (smoke sizes), and the precision table
the planner and the design review read from it (measured) or from the memory model
(analytic)."""

from __future__ import annotations

import pytest
from typer.testing import CliRunner

from workbench.cli import app
from workbench.precision_table import precision_table, table_text
from workbench.quant_report import format_table, load_table, quant_report, save_table

PRECISIONS = ["none", "int8", "int4-g64", "int4-awq-g64", "fp8"]


@pytest.fixture(scope="module")
def report():
    return quant_report("tiny-trained", precisions=PRECISIONS, repeats=1, windows=2,
                        seq_len=48, log=lambda _: None)


def test_quant_report_measures_every_precision(report, tmp_path):
    frame = report
    assert list(frame.index) == PRECISIONS
    assert frame.loc["none", "top1_agreement"] == 1.0 and frame.loc["none", "mean_kl"] == 0
    assert (frame.perplexity > 1).all() and (frame.decode_tok_s_batch1 > 0).all()
    assert (frame.decode_tok_s_batch16 > 0).all() and (frame.batch1_vs_bound > 0).all()
    # The analytic calculator within 1% of the bytes the engine holds.
    assert (frame.analytic_error.abs() < 0.01).all()
    assert frame.loc["int8", "layer_bytes_vs_fp32"] <= 0.27
    assert frame.loc["int4-g64", "layer_bytes_vs_fp32"] <= 0.16
    assert frame.loc["int4-g64", "kernel"] == "int4pack_mm"  # bf16: the kernel's dtype
    assert frame.loc["fp8", "kernel"] == "dequantize"
    assert frame.loc["int8", "top1_agreement"] >= 0.95
    again = load_table(save_table(frame, tmp_path / "t.json"))
    assert again.attrs["model"] == "tiny-trained" and list(again.index) == list(frame.index)
    assert "| int4-awq-g64 | int4pack_mm |" in format_table(again)


def test_precision_table_is_measured_where_the_model_was_measured(report, tmp_path):
    analytic = precision_table("tiny-trained", directory=tmp_path)
    assert analytic.attrs["source"].startswith("analytic for tiny-trained")
    assert analytic["perplexity_change"].isna().all()
    save_table(report, tmp_path / "tiny-trained-bfloat16.json")
    measured = precision_table("tiny-trained", directory=tmp_path)
    assert measured.attrs["source"].startswith("measured on tiny-trained (bfloat16)")
    assert list(measured.index) == PRECISIONS
    assert measured.loc["none", "decode_speedup_b1"] == 1.0
    for label in ("none", "int8"):  # the two sources agree on bytes (the analytic is bf16)
        assert measured.loc[label, "weight_mb"] == pytest.approx(
            analytic.loc[label, "weight_mb"], rel=0.01)
    assert "measured on tiny-trained" in table_text(measured)


def test_quant_report_cli_saves_a_table_the_planner_reads(tmp_path):
    runner = CliRunner()
    out = tmp_path / "tiny-trained-bfloat16.json"
    result = runner.invoke(app, ["quant-report", "--model", "tiny-trained", "--precisions",
                                 "none,int4-g64", "--repeats", "1", "--windows", "1",
                                 "--seq-len", "32", "--out", str(out)])
    assert result.exit_code == 0, result.output
    assert "| int4-g64 | int4pack_mm |" in result.output and out.is_file()
    plan = runner.invoke(app, ["plan", "quantization", "--model", "tiny-trained",
                               "--measured-dir", str(tmp_path)])
    assert plan.exit_code == 0, plan.output
    assert "measured on tiny-trained (bfloat16)" in plan.output
    bad = runner.invoke(app, ["quant-report", "--precisions", "none,int3"])
    assert bad.exit_code == 2 and "precisions: unknown 'int3'" in bad.output
