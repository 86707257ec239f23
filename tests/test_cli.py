"""The `workbench` command: real invocations through typer's runner."""

from __future__ import annotations

import json

from typer.testing import CliRunner

from workbench.cli import app

runner = CliRunner()


def test_generate_prints_text(tiny_path):
    from workbench.engine import LLMEngine, SamplingParams

    res = runner.invoke(app, ["generate", "--model", str(tiny_path), "--max-tokens", "12",
                              "Once upon a time"])
    assert res.exit_code == 0, res.output
    expected = LLMEngine.from_pretrained(tiny_path).generate(
        ["Once upon a time"], SamplingParams(max_tokens=12, temperature=0))[0].text
    assert res.output.rstrip("\n") == expected


def test_user_errors_are_one_line_exit_2(tmp_path):
    for args, field in [
        (["generate", "--model", str(tmp_path / "missing"), "hi"], "model"),
        (["generate", "--model", "tiny", "--max-tokens", "0", "hi"], "max_tokens"),
        (["generate", "--model", "tiny", "--top-p", "2", "hi"], "top_p"),
        (["bench", "--model", "tiny", "--requests", "0"], "requests"),
        (["models", "build", "enormous"], "preset"),
    ]:
        res = runner.invoke(app, args)
        assert res.exit_code == 2, (args, res.output)
        lines = [ln for ln in res.output.splitlines() if ln.strip()]
        assert len(lines) == 1 and lines[0].startswith(f"error: {field}"), res.output


def test_bench_runs_and_writes_results(tmp_path):
    res = runner.invoke(app, ["bench", "--model", "tiny", "--requests", "6", "--batch-size", "3",
                              "--no-hf", "--out", str(tmp_path)])
    assert res.exit_code == 0, res.output
    assert "workbench engine" in res.output and "static batching" in res.output
    data = json.loads((tmp_path / "bench.json").read_text())
    assert data["useful_tokens"] > 0 and data["engine_vs_static"] > 0
    assert data["decode_ms_per_token"]["bandwidth_bound"] > 0


def test_models_list():
    res = runner.invoke(app, ["models", "list"])
    assert res.exit_code == 0 and "tiny" in res.output and "small" in res.output
