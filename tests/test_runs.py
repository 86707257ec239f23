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
from workbench.traffic.run_scenario import run_scenario
from workbench.traffic.run_store import write_run
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


def test_a_profiles_max_model_len_does_not_limit_a_simulated_scenario(tiny_engine_factory):
    """A profile run with max_model_len=64 records the model's own limit, so a scenario that
    sets no max_model_len simulates with the limit the engine would use: its 120-token
    requests are served, not rejected."""
    from workbench.fit.features import FEATURES
    from workbench.fit.from_runs import describe_fit_target
    from workbench.fit.step_model import StepTimeModel
    from workbench.sim.simulator import simulate_requests
    from workbench.traffic.run_scenario import describe_engine

    profiled = tiny_engine_factory(max_model_len=64, max_num_seqs=4)
    target = describe_engine(profiled, "tiny")  # what a profile's manifest records
    assert target["effective_max_model_len"] == 64
    assert target["max_model_len"] == profiled.model_config.max_position_embeddings > 120
    model, engine = describe_fit_target(target)  # what fit_from_runs keeps of it
    fit = StepTimeModel(dict.fromkeys(FEATURES, 0.0) | {"const": 1e-3}, model, engine)
    sc = parse_scenario({"name": "long", "arrival": {"kind": "constant", "rate": 10.0},
                         "prompt_tokens": {"dist": "fixed", "value": 100},
                         "output_tokens": {"dist": "fixed", "value": 20}, "num_requests": 3,
                         "target": {"kind": "engine", "model": "tiny",
                                    "engine": {"max_num_seqs": 4}}})
    reqs, sim, _, _ = simulate_requests(sc, fit)
    assert sim.replicas[0].max_model_len == profiled.model_config.max_position_embeddings
    assert reqs["finish_reason"].tolist() == ["length"] * 3
    assert reqs["output_tokens"].tolist() == [20] * 3


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


def test_secrets_never_reach_the_manifest(tmp_path):
    from tests.llama_cpp_like_server import LlamaCppLikeServer

    secret = "sk-live-0123456789abcdef"
    with LlamaCppLikeServer(accept_token_ids=True) as srv:
        sc = parse_scenario({**SCENARIO, "num_requests": 2, "target": {
            "kind": "http", "url": srv.url, "model": "m", "api_key": secret,
            "prompt_format": "tokens"}})
        path = run_scenario(sc, tmp_path, progress=False, log=lambda m: None)
    assert srv.authorization == [f"Bearer {secret}"] * 2  # the key was used...
    for f in path.iterdir():  # ...and is nowhere in the run's files
        assert secret.encode() not in f.read_bytes(), f.name
    assert load_run(path).manifest["scenario"]["target"]["api_key"] == "<redacted>"


def test_the_manifest_builder_redacts_at_any_depth():
    from workbench.traffic.run_store import build_manifest

    m = build_manifest("r", "real", "now", scenario={"target": {
        "url": "http://user:pw@127.0.0.1:9/v1", "api_key": "k1", "api_key_env": "MY_KEY"}},
        extra=[{"Authorization": "Bearer k2"}], hardware=None)
    text = json.dumps(m)
    assert "k1" not in text and "k2" not in text and "pw" not in text
    assert m["scenario"]["target"]["url"] == "http://<redacted>@127.0.0.1:9/v1"
    assert m["scenario"]["target"]["api_key_env"] == "MY_KEY"  # a name, not a secret
    assert m["package_version"] and "git_revision" in m


def test_one_home_for_drive_results_and_run_manifests():
    from pathlib import Path

    from workbench.sim import simulator
    from workbench.traffic import drive_result, engine_driver, http_driver

    assert (engine_driver.DriveResult is http_driver.DriveResult is simulator.DriveResult
            is drive_result.DriveResult)
    root = Path(__file__).resolve().parent.parent / "workbench"
    writers = [p.relative_to(root).as_posix() for p in root.rglob("*.py")
               if p.name != "run_store.py"
               and any(s in p.read_text() for s in ("write_run(", "environment()"))]
    assert writers == [], "run manifests are built only by traffic/run_store.py"


def test_nothing_reaches_outside_the_repository():
    from pathlib import Path

    root = Path(__file__).resolve().parent.parent
    outside = ".." + "/shared"
    hits = [p.relative_to(root).as_posix() for d in ("scenarios", "tests", "workbench")
            for p in (root / d).rglob("*") if p.is_file() and p.suffix in (
                ".py", ".yaml", ".yml", ".md", ".json", ".csv", ".txt")
            and outside in p.read_text(errors="replace")]
    assert hits == []
