"""/v1/ws on a real `workbench serve` process, driven by the `websockets` client: the same
bodies as /v1/completions and /v1/chat/completions, one message per chunk and a final one with
usage, greedy text equal to `LLMEngine.generate`; bad input an OpenAI error then a close whose
code says why; a client that leaves mid-stream aborts its request and frees its KV blocks
(workbench/server/websocket.py states the exchange)."""

from __future__ import annotations

import json

import pytest
from websockets.exceptions import ConnectionClosed
from websockets.sync.client import connect

from tests.server_helpers import delta, scrape, start_server, stop_server, wait_for
from tests.test_server_openai import MESSAGES, PROMPT, greedy
from workbench.server.chat import chat_prompt

M = "workbench:"


@pytest.fixture(scope="module")
def server(tiny_path):
    proc, url = start_server(str(tiny_path))
    yield url
    stop_server(proc)
    assert b"Traceback" not in proc.stdout.read()  # no request made the server raise


@pytest.fixture(scope="module")
def engine(tiny_engine_factory):
    return tiny_engine_factory()


def ws_url(url: str) -> str:
    return url.replace("http://", "ws://") + "/v1/ws"


def exchange(ws, request: dict | str | bytes) -> list[dict]:
    """Send one request; the messages until the one with usage (or an error), in order."""
    ws.send(request if isinstance(request, str | bytes) else json.dumps(request))
    messages = []
    while True:
        messages.append(json.loads(ws.recv(timeout=60)))
        if "error" in messages[-1] or messages[-1].get("usage") is not None:
            return messages


def closed(ws) -> tuple[int, str]:
    """Wait (bounded) for the server's close; (code, reason)."""
    with pytest.raises(ConnectionClosed):
        ws.recv(timeout=60)
    return ws.close_code, ws.close_reason


def test_completion_equals_generate_and_ends_with_usage_then_a_normal_close(server, engine):
    ref = greedy(engine, PROMPT, 12)
    with connect(ws_url(server)) as ws:
        *chunks, last = exchange(ws, {"prompt": PROMPT, "max_tokens": 12, "temperature": 0})
        assert closed(ws)[0] == 1000
    assert {c["object"] for c in chunks + [last]} == {"text_completion"}
    assert len({c["id"] for c in chunks + [last]}) == 1
    assert "".join(c["choices"][0]["text"] for c in chunks) == ref.text
    assert [c["choices"][0]["finish_reason"] for c in chunks] == (
        [None] * (len(chunks) - 1) + [ref.finish_reason])
    assert last["choices"] == [] and last["usage"] == {
        "prompt_tokens": len(ref.prompt_token_ids), "completion_tokens": len(ref.token_ids),
        "total_tokens": len(ref.prompt_token_ids) + len(ref.token_ids)}


def test_chat_equals_generate_of_the_templated_prompt(server, engine):
    ref = greedy(engine, chat_prompt(engine.tokenizer, MESSAGES), 10)
    with connect(ws_url(server)) as ws:
        # `stream: false` and no stream_options: a WebSocket streams and reports usage anyway.
        first, *chunks, last = exchange(ws, {"messages": MESSAGES, "max_completion_tokens": 10,
                                             "temperature": 0, "stream": False})
        assert closed(ws)[0] == 1000
    assert {c["object"] for c in [first, *chunks, last]} == {"chat.completion.chunk"}
    assert first["choices"][0]["delta"] == {"role": "assistant", "content": ""}
    assert "".join(c["choices"][0]["delta"]["content"] for c in chunks) == ref.text
    assert chunks[-1]["choices"][0]["finish_reason"] == ref.finish_reason
    assert last["usage"]["completion_tokens"] == len(ref.token_ids)
    assert last["usage"]["prompt_tokens"] == len(ref.prompt_token_ids)


def test_keep_open_serves_requests_one_after_another(server, engine):
    refs = [greedy(engine, p, 4) for p in ("one", "two", "three")]
    with connect(ws_url(server)) as ws:
        texts = []
        for i, prompt in enumerate(("one", "two", "three")):
            *chunks, last = exchange(ws, {"prompt": prompt, "max_tokens": 4, "temperature": 0,
                                          "keep_open": i < 2})
            texts.append("".join(c["choices"][0]["text"] for c in chunks))
            assert last["usage"]["completion_tokens"] == len(refs[i].token_ids)
        assert closed(ws)[0] == 1000  # the last request did not ask to keep it open
    assert texts == [r.text for r in refs]


@pytest.mark.parametrize("request_, code, param", [
    ('{"prompt": "x",', 4400, "body"),
    ("[1, 2]", 4400, "body"),
    (b"\xff\xfe", 4400, "body"),
    ({"prompt": "x", "keep_open": "yes"}, 4400, "keep_open"),
    ({"prompt": "x", "max_tokens": 0}, 4400, "max_tokens"),
    ({"prompt": "x", "temperature": -1}, 4400, "temperature"),
    ({}, 4400, "prompt"),
    ({"messages": []}, 4400, "messages"),
    ({"messages": [{"role": "robot", "content": "hi"}]}, 4400, "messages.0.role"),
    ({"messages": [{"role": "user", "content": "many words " * 2000}]}, 4400, "messages"),
    ({"model": "no-such-model", "prompt": "x"}, 4404, "model"),
])
def test_bad_requests_are_an_openai_error_then_a_close_naming_the_status(
        server, request_, code, param):
    before = scrape(server)
    with connect(ws_url(server)) as ws:
        [error] = exchange(ws, request_)
        close_code, reason = closed(ws)
    assert set(error) == {"error"}
    assert set(error["error"]) == {"message", "type", "param", "code"}
    assert error["error"]["param"] == param and error["error"]["message"].startswith(param)
    assert error["error"]["type"] == "invalid_request_error"
    assert close_code == code and reason and error["error"]["message"].startswith(reason)
    reason_label = "model_not_found" if code == 4404 else "invalid_request"
    after = scrape(server)
    assert delta(after, before, f"requests_rejected_total{{reason={reason_label}}}") == 1
    assert delta(after, before, "request_success_total{finished_reason=length}") == 0


def _wait_idle(server: str) -> dict[str, float]:
    return wait_for(server, lambda m: m[M + "kv_cache_usage_perc"] == 0
                    and m[M + "num_requests_running"] == m[M + "num_requests_waiting"] == 0,
                    "the aborted request's KV blocks freed")


@pytest.mark.parametrize("leave", ["close", "drop"])
def test_a_client_that_leaves_mid_stream_aborts_once_and_frees_its_kv(server, leave):
    before = _wait_idle(server)
    max_tokens = 1500
    with connect(ws_url(server)) as ws:
        ws.send(json.dumps({"prompt": PROMPT, "max_tokens": max_tokens, "ignore_eos": True}))
        read = [json.loads(ws.recv(timeout=60)) for _ in range(3)]
        running = scrape(server)
        assert running[M + "num_requests_running"] == 1
        assert running[M + "kv_cache_usage_perc"] > 0
        if leave == "close":
            ws.close()  # a close handshake
        else:
            ws.socket.close()  # the TCP connection just goes away
    abort = "request_success_total{finished_reason=abort}"
    after = wait_for(server, lambda m: delta(m, before, abort) == 1, "the abort")
    assert len(read) <= delta(after, before, "generation_tokens_total") < max_tokens
    assert delta(after, before, "e2e_request_latency_seconds_count") == 0
    idle = _wait_idle(server)
    assert delta(idle, before, abort) == 1  # counted once
    assert delta(idle, before, "request_success_total{finished_reason=length}") == 0


def test_a_second_request_mid_stream_is_refused_and_the_first_aborted(server):
    before = _wait_idle(server)
    with connect(ws_url(server)) as ws:
        ws.send(json.dumps({"prompt": PROMPT, "max_tokens": 1500, "ignore_eos": True}))
        json.loads(ws.recv(timeout=60))
        ws.send(json.dumps({"prompt": PROMPT, "max_tokens": 2}))
        messages = []
        with pytest.raises(ConnectionClosed):
            while True:
                messages.append(json.loads(ws.recv(timeout=60)))
        assert ws.close_code == 1008
    assert "one request at a time" in messages[-1]["error"]["message"]
    assert all("error" not in m for m in messages[:-1])
    abort = "request_success_total{finished_reason=abort}"
    wait_for(server, lambda m: delta(m, before, abort) == 1, "the abort")
    _wait_idle(server)


def test_a_message_over_the_request_size_limit_is_closed_1009(server):
    """--max-request-bytes (2 MB by default) bounds a WebSocket message too: the protocol's
    own answer, close 1009 (message too big), before the message is parsed."""
    with connect(ws_url(server)) as ws:
        ws.send(json.dumps({"prompt": "x" * 2_100_000, "max_tokens": 1}))
        assert closed(ws)[0] == 1009
    assert scrape(server)[f"{M}num_requests_running"] == 0
