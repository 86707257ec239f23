"""The exact-match response cache on a real `workbench serve --response-cache 2` process: an
identical greedy request is answered from it (counted as a hit, the same text and usage, no
engine work), over HTTP whole and streamed and over the WebSocket; anything that may change
the answer is a miss; sampled requests are never looked up; aborted answers are never stored;
the bound evicts the least recently used (workbench/server/response_cache.py)."""

from __future__ import annotations

import json

import httpx
import pytest
from websockets.sync.client import connect

from tests.server_helpers import delta, scrape, start_server, stop_server, wait_for
from tests.test_server_openai import MESSAGES, greedy
from workbench.engine import SamplingParams
from workbench.server.response_cache import ResponseCache, cache_key

M = "workbench:"
QUERIES, HITS = "response_cache_queries_total", "response_cache_hits_total"


@pytest.fixture(scope="module")
def server(tiny_path):
    proc, url = start_server(str(tiny_path), "--response-cache", "2")
    yield url
    stop_server(proc)




@pytest.fixture(scope="module")
def engine(tiny_engine_factory):
    return tiny_engine_factory()


def lookups(before: dict, after: dict) -> tuple[float, float]:
    return delta(after, before, QUERIES), delta(after, before, HITS)


def test_an_identical_greedy_request_is_a_hit_with_the_same_answer(server, client, model,
                                                                  engine):
    prompt = "A cached answer"
    ref = greedy(engine, prompt, 8)
    before = scrape(server)
    first = client.completions.create(model=model, prompt=prompt, max_tokens=8, temperature=0)
    stored = scrape(server)
    assert lookups(before, stored) == (1, 0)
    assert stored[M + "response_cache_entries"] >= 1
    second = client.completions.create(model=model, prompt=prompt, max_tokens=8, temperature=0)
    hit = scrape(server)
    assert lookups(stored, hit) == (1, 1)
    assert first.choices[0].text == second.choices[0].text == ref.text
    assert second.choices[0].finish_reason == ref.finish_reason
    assert second.usage == first.usage and second.usage.completion_tokens == len(ref.token_ids)
    assert second.id != first.id
    # Answered: a request served; no engine work, so no tokens or latencies counted.
    assert delta(hit, stored, f"request_success_total{{finished_reason={ref.finish_reason}}}") == 1
    for name in ("prompt_tokens_total", "generation_tokens_total",
                 "time_to_first_token_seconds_count", "e2e_request_latency_seconds_count"):
        assert delta(hit, stored, name) == 0, name

    # Streamed (SSE), the hit is one chunk with the whole text, then usage when asked.
    *chunks, usage = client.completions.create(
        model=model, prompt=prompt, max_tokens=8, temperature=0, stream=True,
        stream_options={"include_usage": True})
    assert [c.choices[0].text for c in chunks] == [ref.text]
    assert chunks[0].choices[0].finish_reason == ref.finish_reason
    assert usage.usage == first.usage
    # And over the WebSocket.
    with connect(server.replace("http://", "ws://") + "/v1/ws") as ws:
        ws.send(json.dumps({"prompt": prompt, "max_tokens": 8, "temperature": 0}))
        text_chunk, final = json.loads(ws.recv(timeout=60)), json.loads(ws.recv(timeout=60))
    assert text_chunk["choices"][0]["text"] == ref.text
    assert final["usage"] == first.usage.model_dump(exclude_none=True)
    assert lookups(hit, scrape(server)) == (2, 2)


def test_chat_hits_are_chat_shaped(server, client, model):
    kwargs = {"model": model, "messages": MESSAGES, "max_tokens": 6, "temperature": 0}
    before = scrape(server)
    first = client.chat.completions.create(**kwargs)
    second = client.chat.completions.create(**kwargs)
    chunks = list(client.chat.completions.create(**kwargs, stream=True))
    assert lookups(before, scrape(server)) == (3, 2)
    assert second.choices[0].message.content == first.choices[0].message.content
    assert second.object == "chat.completion" and second.usage == first.usage
    assert chunks[0].choices[0].delta.role == "assistant"
    assert "".join(c.choices[0].delta.content or "" for c in chunks) == (
        first.choices[0].message.content)


def test_whatever_may_change_the_answer_is_a_miss(server, client, model):
    base = {"model": model, "prompt": "Misses", "max_tokens": 5, "temperature": 0}
    client.completions.create(**base)
    before = scrape(server)
    for change in ({"max_tokens": 6}, {"stop": ["zz"]}, {"extra_body": {"ignore_eos": True}},
                   {"extra_body": {"stop_token_ids": [3]}}):
        client.completions.create(**{**base, **change})
    assert lookups(before, scrape(server)) == (4, 0)
    # Sampled requests are not even looked up; greedy ones ignore seed and top_p.
    sampled = scrape(server)
    client.completions.create(**{**base, "temperature": 0.7, "seed": 1})
    assert lookups(sampled, scrape(server)) == (0, 0)
    client.completions.create(**{**base, "extra_body": {"stop_token_ids": [3]}, "seed": 3,
                                 "top_p": 0.5})  # the last answer stored
    assert lookups(sampled, scrape(server)) == (1, 1)


def test_the_bound_evicts_the_least_recently_used(server, client, model):
    def ask(prompt: str) -> tuple[float, float]:
        before = scrape(server)
        client.completions.create(model=model, prompt=prompt, max_tokens=3, temperature=0)
        return lookups(before, scrape(server))

    assert [ask(p) for p in ("evict a", "evict b", "evict a")] == [(1, 0), (1, 0), (1, 1)]
    assert ask("evict c") == (1, 0)  # evicts b, the least recently used
    assert scrape(server)[M + "response_cache_entries"] == 2
    assert ask("evict a") == (1, 1)
    assert ask("evict b") == (1, 0)


def test_an_aborted_answer_is_not_stored(server):
    body = {"prompt": "Never stored", "max_tokens": 600, "temperature": 0, "ignore_eos": True}
    before = scrape(server)
    with httpx.stream("POST", f"{server}/v1/completions", json={**body, "stream": True},
                      timeout=60) as s:
        for line in s.iter_lines():
            if line.startswith("data: {"):
                break  # leaves: the request is aborted
    abort = "request_success_total{finished_reason=abort}"
    wait_for(server, lambda m: delta(m, before, abort) == 1, "the abort")
    r = httpx.post(f"{server}/v1/completions", json=body, timeout=120)
    assert r.status_code == 200 and r.json()["usage"]["completion_tokens"] == 600
    assert lookups(before, scrape(server)) == (2, 0)


def test_keys_and_bounds():
    greedy_params = SamplingParams(max_tokens=4, temperature=0)
    assert cache_key("m", "p", SamplingParams(max_tokens=4, temperature=0.5)) is None
    assert cache_key("m", "p", SamplingParams(max_tokens=4, temperature=0.5, top_k=1))
    assert cache_key("m", "p", greedy_params) == cache_key(
        "m", "p", SamplingParams(max_tokens=4, temperature=0, seed=7, top_p=0.3))
    assert cache_key("m", "p", greedy_params) != cache_key("n", "p", greedy_params)
    assert cache_key("m", [1, 2], greedy_params) != cache_key("m", "p", greedy_params)
    for bad in (0, -1, True):
        with pytest.raises(ValueError, match="response-cache"):
            ResponseCache(bad)
