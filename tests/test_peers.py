"""Against the real peers (the `peers` extra, `make peers`): the workbench's load generator
drives llama.cpp's OpenAI server as a foreign target, and guidellm drives `workbench serve`.
Outside `make test` (marker `peers`); each test skips, saying why, when its package is missing.
No timings are asserted: speed is benchmarks/bench_peers.py's business."""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys

import pytest

from tests.server_helpers import start_server, stop_server
from workbench.peers import llama_cpp_bias, llama_cpp_installed, llama_cpp_server
from workbench.traffic import load_run
from workbench.traffic.run_scenario import run_scenario
from workbench.traffic.scenario import parse_scenario

pytestmark = pytest.mark.peers

needs_llama_cpp = pytest.mark.skipif(
    not llama_cpp_installed(), reason="llama-cpp-python[server] is not installed: install the "
    "peers extra (`make peers`, which builds llama.cpp from source)")
needs_guidellm = pytest.mark.skipif(
    importlib.util.find_spec("guidellm") is None,
    reason="guidellm is not installed: install the peers extra (`make peers`)")


@pytest.fixture(scope="module")
def tiny_gguf(tmp_path_factory):
    from workbench.models.gguf_io import export_gguf

    return export_gguf("tiny", tmp_path_factory.mktemp("gguf") / "tiny-f32.gguf", "f32")


@needs_llama_cpp
def test_the_load_generator_drives_llama_cpps_server(tiny_gguf, tmp_path):
    from workbench.models.loader import load_tokenizer
    from workbench.models.tiny import resolve_model

    tok = load_tokenizer(resolve_model("tiny"))
    data = {"name": "llama-cpp", "seed": 3,
            "target": {"kind": "http", "model": str(tiny_gguf), "tokenizer": "tiny",
                       "extra_body": llama_cpp_bias(tok), "timeout_s": 300},
            "arrival": {"kind": "closed_loop", "concurrency": 3},
            "prompt_tokens": {"dist": "uniform", "low": 8, "high": 48},
            "output_tokens": {"dist": "fixed", "value": 12}, "num_requests": 6}
    notes: list[str] = []
    with llama_cpp_server(tiny_gguf, tmp_path / "llama.log", threads=2, n_ctx=512) as srv:
        data["target"]["url"] = srv.url
        run = load_run(run_scenario(parse_scenario(data), tmp_path / "runs", progress=False,
                                    log=notes.append))
    req, summary = run.requests, run.manifest["summary"]
    assert run.manifest["target"]["prompt_format"] == "text"  # found it is not a workbench
    assert summary["completed"] == 6 and summary["failed"] == 0, list(req.error)
    assert (req.finish_reason == "length").all()  # EOS kept out by the logit bias
    assert (req.output_tokens_source == "retokenized").all()  # llama.cpp streams no usage
    # 12 tokens generated; re-tokenizing their text may merge or split a few
    assert req.output_tokens.between(8, 16).all(), list(req.output_tokens)
    # one text chunk per generated token: the bias keeps out the bare bytes that stall streams
    assert (req.token_times.map(len) == 12).all(), list(req.token_times.map(len))
    assert (req.ttft > 0).all() and (req.tpot > 0).all() and (req.e2e > req.ttft).all()
    assert summary["output_throughput"] > 0 and summary["ttft_p50"] > 0
    assert not [n for n in notes if n.startswith("warning")], notes


@needs_guidellm
def test_guidellm_benchmarks_workbench_serve(tiny_path, tmp_path):
    proc, url = start_server("tiny")
    try:
        config = {"spec": {
            "backend": {"kind": "openai_http", "target": url, "model": "tiny",
                        "request_format": "/v1/completions"},
            "profile": {"kind": "concurrent", "streams": 4},
            "tokenizer": {"kind": "hf_auto", "model": str(tiny_path)},  # local: no hub
            "data": [{"kind": "synthetic_text", "prompt_tokens": 32, "output_tokens": 16}],
            "constraints": [{"kind": "max_requests", "count": 12},
                            {"kind": "max_duration", "seconds": 120}],
            "outputs": [{"kind": "json", "path": str(tmp_path / "report.json")}]}}
        (tmp_path / "scenario.json").write_text(json.dumps(config))
        res = subprocess.run(
            [sys.executable, "-m", "guidellm", "run", "-c", str(tmp_path / "scenario.json"),
             "--disable-progress"], cwd=tmp_path, capture_output=True, text=True, timeout=400,
            env={**os.environ, "HF_HUB_OFFLINE": "1"})
    finally:
        stop_server(proc)
    assert res.returncode == 0, (res.stdout + res.stderr)[-3000:]
    report = json.loads((tmp_path / "report.json").read_text())
    (bench,) = report["benchmarks"]
    totals = bench["metrics"]["request_totals"]
    assert totals["errored"] == 0 and totals["incomplete"] == 0, totals
    assert totals["successful"] == 12, totals
