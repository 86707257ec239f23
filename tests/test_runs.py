"""End to end: a scenario through the in-process engine and over HTTP to a real server process
on 127.0.0.1; the run store; interruption; the CLI."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time

import httpx
import pandas as pd
import pytest
from typer.testing import CliRunner

from workbench.cli import app
from workbench.traffic import load_run
from workbench.traffic.engine_driver import drive_engine
from workbench.traffic.run import run_scenario
from workbench.traffic.runs import write_run
from workbench.traffic.scenario import parse_scenario
from workbench.traffic.workload import build_requests

SCENARIO = {"name": "e2e", "seed": 7, "arrival": {"kind": "poisson", "rate": 20.0},
            "prompt_tokens": {"dist": "uniform", "low": 8, "high": 80},
            "output_tokens": {"dist": "uniform", "low": 1, "high": 24},
            "num_requests": 16, "slo": {"ttft_s": 2.0, "tpot_s": 0.5}}


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def server(tiny_path):
    port = _free_port()
    proc = subprocess.Popen(
        [sys.executable, "-m", "workbench", "serve", "--model", str(tiny_path), "--port",
         str(port), "--max-num-seqs", "16"],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, env=os.environ.copy())
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 90
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            pytest.fail(f"server exited: {proc.stdout.read().decode()[-2000:]}")
        try:
            if httpx.get(f"{url}/health", timeout=1).status_code == 200:
                break
        except httpx.HTTPError:
            time.sleep(0.3)
    else:
        proc.kill()
        pytest.fail("server did not come up in 90 s")
    yield url, str(tiny_path)
    proc.terminate()
    proc.wait(timeout=20)


def test_engine_and_http_runs_agree(server, tmp_path):
    url, model = server
    local = parse_scenario({**SCENARIO, "target": {"kind": "engine", "model": model}})
    remote = parse_scenario({**SCENARIO, "target": {"kind": "http", "url": url,
                                                    "model": model}})
    a = load_run(run_scenario(local, tmp_path, progress=False))
    b = load_run(run_scenario(remote, tmp_path, progress=False))
    assert len(a.requests) == len(b.requests) == 16
    assert (b.requests.finish_reason == "length").all(), b.requests.get("error")
    for col in ("request_id", "prompt_tokens", "output_tokens"):
        assert list(a.requests[col]) == list(b.requests[col]), col
    assert a.steps is not None and len(a.steps) > 0 and b.steps is None
    assert (b.requests.ttft > 0).all() and (b.requests.send_lateness < 0.5).all()
    for run in (a, b):
        m = run.manifest
        assert m["scenario"]["name"] == "e2e" and m["package_version"]
        assert m["summary"]["completed"] == 16 and "started" in m and "git_revision" in m


def test_server_answers_client_mistakes_with_400(server):
    url, model = server
    r = httpx.post(f"{url}/v1/completions", json={"model": model, "prompt": "hi",
                                                 "max_tokens": 0})
    assert r.status_code == 400 and "max_tokens" in r.json()["error"]["message"]
    r = httpx.post(f"{url}/v1/completions", json={"model": model, "prompt": ""})
    assert r.status_code == 400 and "prompt" in r.json()["error"]["message"]
    r = httpx.post(f"{url}/v1/completions", json={"model": model, "max_tokens": 3})
    assert r.status_code == 400 and r.json()["error"]["param"] == "prompt"
    r = httpx.post(f"{url}/v1/completions", json={"model": "other", "prompt": "x"})
    assert r.status_code == 404
    r = httpx.post(f"{url}/v1/completions", json={"model": model, "prompt": "Hello",
                                                 "max_tokens": 5, "temperature": 0})
    assert r.status_code == 200 and r.json()["usage"]["completion_tokens"] == 5


def test_interrupted_drive_keeps_what_finished(tiny_engine_factory):
    sc = parse_scenario({**SCENARIO, "arrival": {"kind": "constant", "rate": 500.0}})
    eng = tiny_engine_factory()

    class StopAfter:  # Ctrl-C arrives while the fifth request completes
        n = 0

        def update(self, k):
            self.n += k
            if self.n == 5:
                raise KeyboardInterrupt

    res = drive_engine(eng, build_requests(sc, 4096), progress=StopAfter())
    assert res.interrupted and len(res.records) == 5
    assert not eng.has_unfinished()  # the rest was aborted, the engine is clean


def test_run_store_is_atomic(tmp_path):
    class Unwritable:
        def to_parquet(self, *a, **k):
            raise OSError("disk full")

    with pytest.raises(OSError):
        write_run(tmp_path, "r1", Unwritable(), None, {})
    assert list(tmp_path.iterdir()) == []
    path = write_run(tmp_path, "r2", pd.DataFrame({"request_id": ["1"]}), None, {"x": 1})
    assert sorted(p.name for p in path.iterdir()) == ["manifest.json", "requests.parquet"]
    with pytest.raises(ValueError, match="run"):
        load_run(tmp_path / "nothing")


def test_cli_run_and_sweep(tmp_path, tiny_path):
    f = tmp_path / "s.yaml"
    f.write_text(json.dumps({**SCENARIO, "num_requests": 8,
                             "target": {"kind": "engine", "model": str(tiny_path)}}))
    runner = CliRunner()
    res = runner.invoke(app, ["run", str(f), "--set", "arrival.rate=50", "--out",
                              str(tmp_path / "runs"), "--no-progress"])
    assert res.exit_code == 0, res.output
    run = load_run(res.output.strip().splitlines()[-1])
    assert run.manifest["scenario"]["arrival"]["rate"] == 50.0 and len(run.requests) == 8
    res = runner.invoke(app, ["sweep", str(f), "--rates", "5,40", "--out",
                              str(tmp_path / "sweep")])
    assert res.exit_code == 0, res.output
    assert "saturated" in res.output and "ttft_p90 (ms)" in res.output
    res = runner.invoke(app, ["run", str(f), "--set", "arrival.burstiness=-1"])
    assert res.exit_code == 2
    assert res.output.strip().startswith("error: ") and "arrival" in res.output
