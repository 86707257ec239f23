"""The `workbench` command: real invocations through typer's runner."""

from __future__ import annotations

import json

import pytest
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
    # Useful tokens are exactly what the seeded workload asked for; how the engine compares with
    # static batching is judged by step counts in test_engine_api (never by wall time here).
    from workbench.bench import mixed_workload

    assert data["useful_tokens"] == mixed_workload(6, seed=0).useful_tokens
    assert len(data["throughput_tok_s"]) == 2  # engine and static: --no-hf leaves HF out
    assert data["decode_ms_per_token"]["roofline"] > 0
    assert data["roofline_ms"]["batch 1"] == data["decode_ms_per_token"]["roofline"]
    assert data["model_steps"]["static batching (batches of 3)"] > 0


def test_models_list():
    res = runner.invoke(app, ["models", "list"])
    assert res.exit_code == 0 and "tiny" in res.output and "small" in res.output


SCENARIO_YAML = """name: t
arrival: {kind: trace, file: %s}
target: {kind: engine, model: %s}
"""


def one_error_line(res, *words):
    assert res.exit_code == 2, (res.exit_code, res.output, res.exception)
    lines = [ln for ln in res.output.splitlines() if ln.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: "), res.output
    for w in words:
        assert w in lines[0], (w, lines[0])
    return lines[0]


def run_trace(tmp_path, trace: str, model: str = "tiny"):
    f = tmp_path / "s.yaml"
    f.write_text(SCENARIO_YAML % (trace, model))
    return runner.invoke(app, ["run", str(f), "--out", str(tmp_path / "runs"), "--no-progress"])


def test_bad_trace_files_are_one_line_exit_2(tmp_path):
    (tmp_path / "dir.csv").mkdir()
    (tmp_path / "header.csv").write_text("TIMESTAMP,ContextTokens,GeneratedTokens\n")
    (tmp_path / "words.csv").write_text("TIMESTAMP,ContextTokens,GeneratedTokens\n"
                                        "0.0,12,3\n1.0,many,4\n")
    (tmp_path / "when.csv").write_text("TIMESTAMP,ContextTokens,GeneratedTokens\n"
                                       "2023-11-16 18:17:03,12,3\nsoon,5,4\n")
    one_error_line(run_trace(tmp_path, "dir.csv"), "arrival.file", "dir.csv", "directory")
    one_error_line(run_trace(tmp_path, "header.csv"), "arrival.file", "header.csv", "no rows")
    one_error_line(run_trace(tmp_path, "words.csv"), "arrival.prompt_column", "words.csv",
                   "'many'", "line 3")
    one_error_line(run_trace(tmp_path, "when.csv"), "arrival.timestamp_column", "'soon'")


def test_a_missing_trace_is_reported_before_the_model_loads(tmp_path):
    # The model does not exist either: loading it first would report `model`, not the trace.
    res = run_trace(tmp_path, "missing.csv", model=str(tmp_path / "no-such-model"))
    one_error_line(res, "arrival.file", "missing.csv")


def test_bad_scenario_paths_are_one_line_exit_2(tmp_path):
    (tmp_path / "adir.yaml").mkdir()
    res = runner.invoke(app, ["run", str(tmp_path / "adir.yaml")])
    one_error_line(res, "adir.yaml", "directory")
    latin1 = tmp_path / "latin1.yaml"
    latin1.write_bytes("name: caf\xe9\narrival: {kind: poisson, rate: 1}\n".encode("latin-1"))
    res = runner.invoke(app, ["run", str(latin1)])
    one_error_line(res, "latin1.yaml", "UTF-8")
    listed = tmp_path / "list.yaml"
    listed.write_text("- name\n- arrival\n")
    res = runner.invoke(app, ["run", str(listed), "--set", "arrival.rate=2"])
    one_error_line(res, "list.yaml", "mapping")


def test_ctrl_c_ends_a_run_with_130_and_keeps_completed_requests(tmp_path):
    import os
    import signal
    import subprocess
    import sys
    import time

    from tests.llama_cpp_like_server import LlamaCppLikeServer
    from workbench.traffic import load_run

    with LlamaCppLikeServer(hold_from=3, accept_token_ids=True) as srv:
        f = tmp_path / "s.json"
        f.write_text(json.dumps({
            "name": "stopped", "target": {"kind": "http", "url": srv.url, "model": "m",
                                          "prompt_format": "tokens"},
            # one client: the fourth request leaves only after the third was recorded
            "arrival": {"kind": "closed_loop", "concurrency": 1},
            "prompt_tokens": {"dist": "fixed", "value": 8},
            "output_tokens": {"dist": "fixed", "value": 4}, "num_requests": 10}))
        proc = subprocess.Popen(
            [sys.executable, "-m", "workbench", "run", str(f), "--out", str(tmp_path / "runs"),
             "--no-progress"], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
            env=os.environ.copy(),
            # A test suite started in the background (CI, `make test &`) inherits an ignored
            # SIGINT, and Python then never raises KeyboardInterrupt: give the child Ctrl-C back.
            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
        deadline = time.monotonic() + 120  # a hang guard, not a speed check
        while len(srv.bodies) < 4:  # three answered, the fourth held open
            if proc.poll() is not None or time.monotonic() > deadline:
                proc.kill()
                pytest.fail(f"the run ended or hung before its fourth request: "
                            f"{proc.communicate()}")
            time.sleep(0.05)
        proc.send_signal(signal.SIGINT)
        out, err = proc.communicate(timeout=60)
    assert proc.returncode == 130, (out, err)
    assert "Traceback" not in err and "interrupted" in err, err
    run = load_run(out.strip().splitlines()[-1])
    assert run.manifest["interrupted"] and run.manifest["stopped_by"] == "interrupt"
    assert sorted(run.requests.request_id) == ["0", "1", "2"]
    assert (run.requests.finish_reason == "length").all()
