"""Graceful shutdown of a real `workbench serve` process (workbench/server/shutdown.py): after
SIGTERM it stops admitting (503s, /health "draining", also on a kept-alive connection and for
WebSocket upgrades), lets the request in flight finish, and exits 0; at the deadline, what still
runs is ended cleanly: an SSE error event, a WebSocket error and a 1001 close, a 503."""

from __future__ import annotations

import json
import signal
import threading

import httpx
import pytest
from websockets.exceptions import ConnectionClosed, InvalidStatus
from websockets.sync.client import connect

from tests.server_helpers import kill_server, scrape, start_server, wait_until
from tests.test_server_openai import PROMPT

LONG = {"prompt": PROMPT, "max_tokens": 1500, "ignore_eos": True, "temperature": 0}


def sse_stream(url: str, started: threading.Event, result: dict) -> None:
    """POST a streamed completion; result: its chunks, the error event, [DONE] seen."""
    result.update(chunks=[], error=None, done=False)
    with httpx.stream("POST", f"{url}/v1/completions", json={**LONG, "stream": True},
                      timeout=300) as s:
        for line in s.iter_lines():
            if line == "data: [DONE]":
                result["done"] = True
            elif line.startswith("data: "):
                event = json.loads(line[6:])
                if "error" in event:
                    result["error"] = event["error"]
                else:
                    result["chunks"].append(event["choices"][0])
                started.set()


def until_draining(url: str) -> None:
    """Wait (bounded) until the server has noticed the signal."""
    wait_until(lambda: httpx.get(f"{url}/health", timeout=10).status_code == 503,
               "the server started draining")


def exited(proc) -> tuple[int, bytes]:
    code = proc.wait(timeout=120)  # TimeoutExpired (a failure) if it does not exit
    return code, proc.stdout.read()


def test_sigterm_refuses_new_requests_finishes_the_running_one_and_exits_0(tiny_path):
    proc, url = start_server(str(tiny_path), "--shutdown-timeout", "300")
    try:
        kept_alive = httpx.Client(base_url=url, timeout=30)
        assert kept_alive.get("/v1/models").status_code == 200  # opens the connection
        started, result = threading.Event(), {}
        stream = threading.Thread(target=sse_stream, args=(url, started, result), daemon=True)
        stream.start()
        assert started.wait(120)
        proc.send_signal(signal.SIGTERM)
        until_draining(url)
        assert httpx.get(f"{url}/health", timeout=10).json() == {"status": "draining"}
        for r in (httpx.post(f"{url}/v1/completions", json={"prompt": "x"}, timeout=30),
                  kept_alive.post("/v1/chat/completions", json={"messages": []})):
            assert r.status_code == 503, r.text
            assert r.json()["error"]["type"] == "server_error"
            assert "shutting down" in r.json()["error"]["message"]
            assert r.headers["connection"] == "close"
        with pytest.raises(InvalidStatus) as e:
            connect(url.replace("http://", "ws://") + "/v1/ws")
        assert e.value.response.status_code == 503
        draining = scrape(url)  # /metrics stays open
        assert draining["workbench:requests_rejected_total{reason=draining}"] == 3
        assert draining["workbench:num_requests_running"] == 1  # the stream goes on
        stream.join(timeout=300)
        assert result["done"] and result["error"] is None
        *_, last = result["chunks"]  # one token per chunk, all of them, and the end
        assert len(result["chunks"]) == LONG["max_tokens"] and last["finish_reason"] == "length"
        code, output = exited(proc)
        assert code == 0, output.decode()[-2000:]
        assert b"Traceback" not in output
    finally:
        kill_server(proc)


def test_at_the_deadline_running_requests_are_ended_cleanly(tiny_path):
    proc, url = start_server(str(tiny_path), "--shutdown-timeout", "0")
    try:
        sse_started, sse = threading.Event(), {}
        threads = [threading.Thread(target=sse_stream, args=(url, sse_started, sse),
                                    daemon=True)]
        whole = {}

        def non_streaming():
            whole["response"] = httpx.post(f"{url}/v1/completions", json=LONG, timeout=300)

        threads.append(threading.Thread(target=non_streaming, daemon=True))
        for t in threads:
            t.start()
        with connect(url.replace("http://", "ws://") + "/v1/ws") as ws:
            ws.send(json.dumps(LONG))
            ws_messages = [json.loads(ws.recv(timeout=120))]
            assert sse_started.wait(120)
            wait_until(lambda: scrape(url)["workbench:num_requests_running"] >= 3,
                       "all three requests in the engine before the signal", 120)
            proc.send_signal(signal.SIGTERM)
            with pytest.raises(ConnectionClosed):
                while True:
                    ws_messages.append(json.loads(ws.recv(timeout=120)))
            assert ws.close_code == 1001
        assert "shutdown deadline" in ws_messages[-1]["error"]["message"]
        assert all("error" not in m for m in ws_messages[:-1])
        for t in threads:
            t.join(timeout=120)
        # an error event, then [DONE] as vLLM ends a failed stream
        assert "shutdown deadline" in sse["error"]["message"] and sse["done"]
        r = whole["response"]
        assert r.status_code == 503 and "shutdown deadline" in r.json()["error"]["message"]
        code, output = exited(proc)
        assert code == 0, output.decode()[-2000:]
        assert b"Traceback" not in output
    finally:
        kill_server(proc)
