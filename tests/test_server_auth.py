"""API keys on a real `workbench serve` process: with keys configured every route but /health
needs `Authorization: Bearer <key>`; refusals are OpenAI-shaped 401s, counted in /metrics."""

from __future__ import annotations

import httpx
import openai
import pytest
from server_helpers import scrape, start_server, stop_server

from workbench.server.auth import load_api_keys

KEYS = ("key-from-file-1", "key-from-file-2")
ENV_KEY = "key-from-env"


@pytest.fixture(scope="module")
def server(tiny_path, tmp_path_factory):
    key_file = tmp_path_factory.mktemp("keys") / "keys.txt"
    key_file.write_text(f"# team keys\n{KEYS[0]}\n\n{KEYS[1]}  # second\n")
    proc, url = start_server(str(tiny_path), "--api-key-file", str(key_file),
                             env={"WORKBENCH_API_KEYS": ENV_KEY})
    yield url
    stop_server(proc)


def auth(key: str) -> dict:
    return {"Authorization": f"Bearer {key}"}


def scrape_with_key(url: str) -> dict[str, float]:
    return scrape(url, headers=auth(KEYS[0]))


def test_health_is_open_and_everything_else_needs_a_key(server):
    assert httpx.get(f"{server}/health", timeout=30).status_code == 200
    for method, path in (("GET", "/v1/models"), ("GET", "/metrics"), ("GET", "/openapi.json"),
                         ("POST", "/v1/completions"), ("POST", "/v1/chat/completions"),
                         ("GET", "/no-such-route")):
        r = httpx.request(method, f"{server}{path}", json={}, timeout=30)
        assert r.status_code == 401, (path, r.status_code, r.text)
        assert r.headers["www-authenticate"] == "Bearer"
        assert r.json()["error"]["type"] == "authentication_error"
        assert "Authorization: Bearer" in r.json()["error"]["message"]


@pytest.mark.parametrize("header", ["Bearer wrong-key", "Basic " + KEYS[0], KEYS[0],
                                    f"Bearer {KEYS[0]}x", "Bearer"])
def test_wrong_keys_are_refused(server, header):
    r = httpx.get(f"{server}/v1/models", headers={"Authorization": header}, timeout=30)
    assert r.status_code == 401 and r.json()["error"]["message"] == "invalid API key"


def test_every_configured_key_works_with_the_official_client(server):
    for key in (*KEYS, ENV_KEY):
        client = openai.OpenAI(base_url=f"{server}/v1", api_key=key, max_retries=0)
        name = client.models.list().data[0].id
        out = client.completions.create(model=name, prompt="def f(x):", max_tokens=4,
                                        temperature=0)
        assert out.usage.completion_tokens == 4
    with pytest.raises(openai.AuthenticationError):
        openai.OpenAI(base_url=f"{server}/v1", api_key="nope", max_retries=0).models.list()


def test_refusals_are_counted(server):
    before = scrape_with_key(server)["workbench:requests_rejected_total{reason=unauthorized}"]
    for _ in range(3):
        assert httpx.get(f"{server}/v1/models", timeout=30).status_code == 401
    after = scrape_with_key(server)["workbench:requests_rejected_total{reason=unauthorized}"]
    assert after - before == 3



def test_key_sources_are_validated(tmp_path):
    empty = tmp_path / "empty.txt"
    empty.write_text("# nothing\n\n")
    with pytest.raises(ValueError, match="api-key-file: .* holds no key"):
        load_api_keys(empty, environ={})
    with pytest.raises(ValueError, match="api-key-file: cannot read"):
        load_api_keys(tmp_path / "missing.txt", environ={})
    assert load_api_keys(None, environ={}) == frozenset()
    assert load_api_keys(None, environ={"WORKBENCH_API_KEYS": " a, b ,,"}) == {"a", "b"}


def test_websockets_are_refused_at_the_handshake_without_a_key(server):
    """The upgrade request is refused with the same OpenAI-shaped 401 (the socket never opens);
    a key in the Authorization header or, for browsers, as OpenAI's key subprotocol works."""
    import json

    from websockets.exceptions import InvalidStatus
    from websockets.sync.client import connect

    ws_url = server.replace("http://", "ws://") + "/v1/ws"
    before = scrape_with_key(server)["workbench:requests_rejected_total{reason=unauthorized}"]
    for kwargs in ({}, {"additional_headers": auth("wrong-key")},
                   {"subprotocols": ["workbench", "openai-insecure-api-key.wrong-key"]}):
        with pytest.raises(InvalidStatus) as e:
            connect(ws_url, **kwargs)
        assert e.value.response.status_code == 401
        error = json.loads(e.value.response.body)["error"]
        assert error["type"] == "authentication_error", error
    after = scrape_with_key(server)["workbench:requests_rejected_total{reason=unauthorized}"]
    assert after - before == 3

    request = json.dumps({"prompt": "def f(x):", "max_tokens": 3, "ignore_eos": True})
    for kwargs, subprotocol in (
            ({"additional_headers": auth(KEYS[1])}, None),
            ({"subprotocols": ["workbench", f"openai-insecure-api-key.{ENV_KEY}"]}, "workbench")):
        with connect(ws_url, **kwargs) as ws:
            assert ws.subprotocol == subprotocol
            ws.send(request)
            messages = [json.loads(ws.recv(timeout=60)) for _ in range(4)]
        assert messages[-1]["usage"]["completion_tokens"] == 3, messages
