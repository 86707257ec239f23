"""The least-busy proxy that puts several llama.cpp instances behind one URL (llama-cpp-python
has no parallel slots), here over two stand-ins for llama.cpp's server: no extra needed."""

from __future__ import annotations

import sys
from pathlib import Path

from tests.llama_cpp_like_server import LlamaCppLikeServer
from workbench.peers import LocalServer, free_port
from workbench.traffic import load_run
from workbench.traffic.run_scenario import run_scenario
from workbench.traffic.scenario import parse_scenario


def test_the_proxy_spreads_streams_over_instances_and_passes_them_through(tmp_path: Path):
    with LlamaCppLikeServer(token_delay_s=0.02) as a, LlamaCppLikeServer(token_delay_s=0.02) as b:
        port = free_port()
        cmd = [sys.executable, "-m", "workbench.peers_proxy", "--port", str(port), a.url, b.url]
        with LocalServer(cmd, port, "/v1/models", tmp_path / "proxy.log") as proxy:
            data = {"name": "pool", "seed": 0,
                    "target": {"kind": "http", "url": proxy.url, "model": "m",
                               "tokenizer": "tiny", "extra_body": {"logit_bias": {"2": -1e9}}},
                    "arrival": {"kind": "closed_loop", "concurrency": 2},
                    "prompt_tokens": {"dist": "fixed", "value": 8},
                    "output_tokens": {"dist": "fixed", "value": 6}, "num_requests": 8}
            run = load_run(run_scenario(parse_scenario(data), tmp_path / "runs",
                                        progress=False, log=[].append))
    assert run.manifest["summary"]["completed"] == 8, list(run.requests.error)
    assert (run.requests.token_times.map(len) == 6).all()  # every streamed token came through
    # both instances serve (exact shares depend on when a finished stream is counted done)
    assert len(a.bodies) + len(b.bodies) == 8 and min(len(a.bodies), len(b.bodies)) >= 2
    assert all(body["logit_bias"] == {"2": -1e9} for body in a.bodies + b.bodies)
