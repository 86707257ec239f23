"""`workbench serve` as a real process, probed the way a hostile client would: undecodable text
is a 400 and the server keeps serving, clients never see local paths, bad arguments are one
`error:` line, and SIGTERM ends the process in every state."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import threading

import httpx
import pytest

from tests.server_helpers import kill_server, start_server, stop_server

LONE_SURROGATE = b'{"prompt": "\\ud800", "max_tokens": 2}'


@pytest.fixture(scope="module")
def server(tiny_path):
    proc, url = start_server(str(tiny_path))
    yield url, str(tiny_path)
    stop_server(proc)


def _post_raw(url: str, raw: bytes) -> httpx.Response:
    return httpx.post(f"{url}/v1/completions", content=raw,
                      headers={"content-type": "application/json"}, timeout=60)


def test_lone_surrogate_is_a_400_and_the_server_keeps_serving(server):
    url, _ = server
    r = _post_raw(url, LONE_SURROGATE)
    assert r.status_code == 400, r.text
    assert r.json()["error"]["param"] == "prompt"
    r = _post_raw(url, b'{"prompt": "hi", "stop": ["\\udfff"], "max_tokens": 2}')
    assert r.status_code == 400 and r.json()["error"]["param"] == "stop", r.text
    # A proper pair written as two escapes is one character, not a mistake.
    r = _post_raw(url, b'{"prompt": "\\ud83d\\ude00", "max_tokens": 2, "temperature": 0}')
    assert r.status_code == 200, r.text
    # The engine thread survived: the next requests complete, streamed and not.
    r = httpx.post(f"{url}/v1/completions", json={"prompt": "Hello", "max_tokens": 4,
                                                 "temperature": 0, "ignore_eos": True},
                   timeout=60)
    assert r.status_code == 200 and r.json()["usage"]["completion_tokens"] == 4
    with httpx.stream("POST", f"{url}/v1/completions", timeout=60, json={
            "prompt": "Hello", "max_tokens": 3, "stream": True, "ignore_eos": True}) as s:
        lines = [line for line in s.iter_lines() if line.startswith("data:")]
    assert lines[-1] == "data: [DONE]" and len(lines) == 4
    assert httpx.get(f"{url}/health", timeout=10).json() == {"status": "ok"}


def test_clients_never_see_local_paths(server):
    url, path = server
    name = os.path.basename(path)
    seen = []
    r = httpx.get(f"{url}/v1/models", timeout=10)
    assert [m["id"] for m in r.json()["data"]] == [name]
    seen.append(r)
    r = httpx.post(f"{url}/v1/completions", json={"model": "other", "prompt": "x"}, timeout=10)
    assert r.status_code == 404 and repr(name) in r.json()["error"]["message"]
    seen.append(r)
    seen.append(httpx.get(f"{url}/no/such/route", timeout=10))
    assert seen[-1].status_code == 404
    for model in (name, path):  # the directory a client was told about still works
        r = httpx.post(f"{url}/v1/completions", timeout=60, json={
            "model": model, "prompt": "Hi", "max_tokens": 2, "temperature": 0})
        assert r.status_code == 200 and r.json()["model"] == name
        seen.append(r)
    for r in seen:
        assert path not in r.text and os.path.dirname(path) not in r.text, r.text


def test_sigterm_stops_the_server_mid_stream(tiny_path):
    proc, url = start_server(str(tiny_path))
    try:
        assert _post_raw(url, LONE_SURROGATE).status_code == 400
        first_chunk = threading.Event()
        ended = []

        def stream():
            try:
                with httpx.stream("POST", f"{url}/v1/completions", timeout=120, json={
                        "prompt": "Once", "max_tokens": 1500, "ignore_eos": True,
                        "stream": True}) as s:
                    for line in s.iter_lines():
                        if line.startswith("data: {"):
                            json.loads(line[6:])
                            first_chunk.set()
            except httpx.HTTPError as e:
                ended.append(e)
            finally:
                first_chunk.set()
                ended.append("ended")

        client = threading.Thread(target=stream, daemon=True)
        client.start()
        assert first_chunk.wait(120)
        proc.send_signal(signal.SIGTERM)
        # Raises TimeoutExpired (fails the test) if SIGTERM is ignored; a graceful stop is a 0.
        assert proc.wait(timeout=90) == 0
        client.join(timeout=30)
        assert ended and ended[-1] == "ended"
        assert b"Traceback" not in proc.stdout.read()
    finally:
        kill_server(proc)


def _serve_args(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "workbench", "serve", *args],
                          capture_output=True, text=True, timeout=300, env=os.environ.copy())


@pytest.mark.parametrize("args, message", [
    (["--port", "-1"], "error: port: must be in 1..65535"),
    (["--port", "0"], "error: port: must be in 1..65535"),
    (["--port", "65536"], "error: port: must be in 1..65535"),
    (["--host", ""], "error: host: "),
    (["--host", "no-such-host.invalid"], "error: host: "),
    (["--max-num-seqs", "0"], "error: max_num_seqs: "),
    (["--block-size", "-4"], "error: block_size: "),
    (["--num-kv-blocks", "0"], "error: num_kv_blocks: "),
    (["--dtype", "float8"], "error: dtype: "),
    (["--model", "no-such-model"], "error: model: "),
    (["--response-cache", "-1"], "error: response-cache: "),
    (["--shutdown-timeout", "-1"], "error: shutdown-timeout: "),
])
def test_serve_rejects_bad_arguments_in_one_line(args, message):
    r = _serve_args(*args)
    assert r.returncode == 2, r.stderr
    assert r.stderr.startswith(message) and len(r.stderr.strip().splitlines()) == 1, r.stderr


def test_serve_on_a_port_in_use_is_one_line():
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        r = _serve_args("--port", str(busy.getsockname()[1]))
    assert r.returncode == 2 and r.stderr.startswith("error: port: "), r.stderr
    assert len(r.stderr.strip().splitlines()) == 1
