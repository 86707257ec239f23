"""Schemathesis against `workbench serve --model tiny` (a real process on a loopback port),
generating requests from the server's own OpenAPI document (GET /openapi.json): every
operation, in schemathesis' coverage phase (boundary and schema-violating values, wrong
content types and methods, missing bodies) and fuzzing phase (hypothesis).

What must hold for every generated request: no 5xx (`not_a_server_error`: a client's mistake
is never a server error), every 4xx is an OpenAI-shaped JSON error body (`openai_error_body` in
tests/schema_hooks.py), and the document is true to the server: each status answered is one it
documents, each body matches its documented schema (the document lists the generation
endpoints' error statuses and drops FastAPI's 422, which is answered 400 as OpenAI does).

Schemathesis runs as its CLI in a subprocess: its pytest integration (`from_fixture`) needs a
pytest internal that pytest 9 removed, and the CLI is its stable interface. Bounds (this runs
in `make test`): MAX_EXAMPLES per operation in the fuzzing phase, deterministic generation so
a failure reproduces, and generated output lengths folded into a short range (schema_hooks).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import httpx
import pytest

from tests.server_helpers import start_server, stop_server

MAX_EXAMPLES = 30
OPERATIONS = 5  # GET /health, /metrics, /v1/models; POST /v1/completions, /v1/chat/completions
REPO = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="module")
def server(tiny_path):
    proc, url = start_server(str(tiny_path))
    yield url
    stop_server(proc)


def test_no_generated_request_is_a_server_error_and_4xx_are_openai_errors(server, tmp_path):
    run = subprocess.run(
        [sys.executable, "-m", "schemathesis.cli", "run", f"{server}/openapi.json",
         "--checks", "not_a_server_error,openai_error_body,status_code_conformance,"
                     "response_schema_conformance",
         "--max-examples", str(MAX_EXAMPLES), "--generation-deterministic",
         "--workers", "1", "--request-timeout", "60", "--no-color",
         "--report", "json", "--report-json-path", str(tmp_path / "report.json")],
        capture_output=True, text=True, timeout=540, cwd=tmp_path,
        env={**os.environ, "SCHEMATHESIS_HOOKS": "tests.schema_hooks",
             "PYTHONPATH": os.pathsep.join(filter(None, [str(REPO),
                                                         os.environ.get("PYTHONPATH")]))})
    output = (run.stdout + run.stderr)[-6000:]
    assert (tmp_path / "report.json").is_file(), output
    report = json.loads((tmp_path / "report.json").read_text())
    assert report["failures"] == [] and report["errors"] == [], output
    assert run.returncode == 0 and report["exit_code"] == 0, output
    # Not vacuous: every operation ran, in both phases, with many generated requests.
    assert report["operations"]["tested"] == OPERATIONS, report["operations"]
    assert report["phases"]["coverage"]["status"] == "success", report["phases"]
    assert report["phases"]["fuzzing"]["status"] == "success", report["phases"]
    assert report["test_cases"]["generated"] >= 2 * MAX_EXAMPLES, report["test_cases"]
    # Both generation endpoints served some generated requests (schemathesis' "accepted"
    # positive cases), not only refused them: the engine ran generated sampling parameters.
    for op in ("POST /v1/completions", "POST /v1/chat/completions"):
        accepted = sum(phase["accepted"] for phase in report["valid_rates"][op].values())
        assert accepted >= 5, (op, report["valid_rates"][op])


@pytest.mark.parametrize("method, path, allowed", [
    ("PUT", "/health", "GET"), ("DELETE", "/v1/models", "GET"),
    ("GET", "/v1/completions", "POST"), ("TRACE", "/v1/chat/completions", "POST")])
def test_a_wrong_method_is_a_405_naming_the_allowed_ones(server, method, path, allowed):
    """Found by schemathesis' coverage phase: the server's HTTP-error handler rewrote
    Starlette's 405 into an OpenAI error body but dropped its headers, `Allow` among them
    (RFC 9110 requires it on a 405)."""
    r = httpx.request(method, f"{server}{path}", timeout=30)
    assert r.status_code == 405, r.text
    assert r.json()["error"]["type"] == "invalid_request_error", r.text
    assert {m.strip() for m in r.headers.get("allow", "").split(",")} >= {allowed}, r.headers
