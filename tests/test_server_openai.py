"""The server as OpenAI clients see it: the official `openai` client against `workbench serve` (a
real process on a loopback port), completions and chat, streamed and not, greedy text equal to
`LLMEngine.generate` of the same prompt; errors OpenAI-shaped; /metrics counting exactly what
clients were told (workbench/server/metrics.py states the contract)."""

from __future__ import annotations

import concurrent.futures
import json

import httpx
import openai
import pytest

from tests.server_helpers import delta, scrape, start_server, stop_server, wait_for
from workbench.engine import SamplingParams
from workbench.server.app import create_app
from workbench.server.background import serve_in_thread
from workbench.server.chat import DEFAULT_CHAT_TEMPLATE, chat_prompt

PROMPT = "The quick brown fox"
MESSAGES = [{"role": "system", "content": "You are terse."},
            {"role": "user", "content": "Name a colour."}]
M = "workbench:"


@pytest.fixture(scope="module")
def server(tiny_path):
    proc, url = start_server(str(tiny_path))
    yield url
    stop_server(proc)




@pytest.fixture(scope="module")
def engine(tiny_engine_factory):
    """The in-process engine over the same checkpoint: the reference for greedy text."""
    return tiny_engine_factory()


def greedy(engine, prompt: str, max_tokens: int):
    [out] = engine.generate([prompt], SamplingParams(max_tokens=max_tokens, temperature=0))
    return out




def test_completions_with_the_openai_client_equal_generate(client, model, engine):
    ref = greedy(engine, PROMPT, 12)
    r = client.completions.create(model=model, prompt=PROMPT, max_tokens=12, temperature=0)
    assert r.object == "text_completion" and r.model == model
    assert r.choices[0].text == ref.text and r.choices[0].finish_reason == ref.finish_reason
    assert (r.usage.prompt_tokens, r.usage.completion_tokens) == (len(ref.prompt_token_ids),
                                                                  len(ref.token_ids))
    chunks = list(client.completions.create(model=model, prompt=PROMPT, max_tokens=12,
                                            temperature=0, stream=True,
                                            stream_options={"include_usage": True}))
    *text_chunks, usage_chunk = chunks
    assert "".join(c.choices[0].text for c in text_chunks) == ref.text
    assert [c.choices[0].finish_reason for c in text_chunks] == (
        [None] * (len(text_chunks) - 1) + [ref.finish_reason])
    assert usage_chunk.choices == [] and usage_chunk.usage == r.usage


def test_chat_with_the_openai_client_equals_generate_of_the_templated_prompt(
        client, model, engine):
    prompt = chat_prompt(engine.tokenizer, MESSAGES)
    # The embedded tokenizer has no template of its own: the documented default applies.
    assert prompt == "system: You are terse.\nuser: Name a colour.\nassistant:"
    ref = greedy(engine, prompt, 10)
    r = client.chat.completions.create(model=model, messages=MESSAGES, max_tokens=10,
                                       temperature=0)
    assert r.object == "chat.completion" and r.id.startswith("chatcmpl-")
    message = r.choices[0].message
    assert (message.role, message.content) == ("assistant", ref.text)
    assert r.choices[0].finish_reason == ref.finish_reason
    assert (r.usage.prompt_tokens, r.usage.completion_tokens) == (len(ref.prompt_token_ids),
                                                                  len(ref.token_ids))

    chunks = list(client.chat.completions.create(model=model, messages=MESSAGES, max_tokens=10,
                                                 temperature=0, stream=True))
    assert {c.object for c in chunks} == {"chat.completion.chunk"}
    assert all(c.usage is None for c in chunks), "usage was not asked for"
    first, *rest = chunks
    assert (first.choices[0].delta.role, first.choices[0].delta.content) == ("assistant", "")
    assert "".join(c.choices[0].delta.content for c in rest) == ref.text
    assert [c.choices[0].finish_reason for c in chunks] == (
        [None] * (len(chunks) - 1) + [ref.finish_reason])

    chunks = list(client.chat.completions.create(
        model=model, messages=MESSAGES, max_completion_tokens=10, temperature=0, stream=True,
        stream_options={"include_usage": True}))
    assert chunks[-1].choices == [] and chunks[-1].usage == r.usage
    assert "".join(c.choices[0].delta.content for c in chunks[:-1]) == ref.text


def _assert_error(r: httpx.Response, status: int, param: str) -> None:
    assert r.status_code == status, r.text
    body = r.json()
    assert set(body) == {"error"} and set(body["error"]) == {"message", "type", "param", "code"}
    assert body["error"]["param"] == param, body
    assert body["error"]["message"].startswith(f"{param}: "), body
    assert body["error"]["type"] == "invalid_request_error"


@pytest.mark.parametrize("path", ["/v1/completions", "/v1/chat/completions"])
def test_malformed_json_and_unknown_models_are_openai_errors(server, path):
    r = httpx.post(f"{server}{path}", content=b'{"prompt": "x",', timeout=30,
                   headers={"content-type": "application/json"})
    _assert_error(r, 400, "body")
    body = {"model": "no-such-model", "prompt": "x", "messages": MESSAGES}
    _assert_error(httpx.post(f"{server}{path}", json=body, timeout=30), 404, "model")


@pytest.mark.parametrize("body, param", [
    ({}, "messages"),
    ({"messages": []}, "messages"),
    ({"messages": "hello"}, "messages"),
    ({"messages": [{"role": "robot", "content": "hi"}]}, "messages.0.role"),
    ({"messages": [{"content": "hi"}]}, "messages.0.role"),
    ({"messages": [MESSAGES[1], {"role": "user", "content": ["hi"]}]}, "messages.1.content"),
    ({"messages": [{"role": "user", "content": None}]}, "messages.0.content"),
    ({"messages": [{"role": "user", "content": "\ud800"}]}, "messages.0.content"),
    ({"messages": MESSAGES, "n": 2}, "n"),
    ({"messages": MESSAGES, "max_tokens": 3, "max_completion_tokens": 4},
     "max_completion_tokens"),
    ({"messages": MESSAGES, "max_tokens": 10**6}, "max_tokens"),
    ({"messages": [{"role": "user", "content": "many words " * 2000}]}, "messages"),
    ({"messages": MESSAGES, "temperature": -1}, "temperature"),
])
def test_bad_chat_requests_are_400s_naming_the_field(server, body, param):
    raw = json.dumps(body).encode()  # ensure_ascii: a lone surrogate travels as an escape
    r = httpx.post(f"{server}/v1/chat/completions", content=raw, timeout=30,
                   headers={"content-type": "application/json"})
    _assert_error(r, 400, param)


def test_the_openai_client_raises_its_own_error_types(client, model):
    with pytest.raises(openai.NotFoundError) as e:
        client.chat.completions.create(model="no-such-model", messages=MESSAGES)
    assert e.value.body["param"] == "model"
    with pytest.raises(openai.BadRequestError) as e:
        client.chat.completions.create(model=model, messages=[{"role": "robot", "content": "x"}])
    assert e.value.body["param"] == "messages.0.role"


def test_metrics_count_what_clients_saw(server, client, model, engine):
    before = scrape(server)
    chat = chat_prompt(engine.tokenizer, MESSAGES)
    stop_at = greedy(engine, chat, 8).token_ids[2]  # a token greedy chat output reaches
    usages = []
    r = client.completions.create(model=model, prompt=PROMPT, max_tokens=8, temperature=0)
    usages.append(r.usage)
    *_, last = client.completions.create(model=model, prompt=PROMPT, max_tokens=6,
                                         temperature=0, stream=True,
                                         stream_options={"include_usage": True})
    usages.append(last.usage)
    r = client.chat.completions.create(model=model, messages=MESSAGES, max_tokens=8,
                                       temperature=0, extra_body={"stop_token_ids": [stop_at]})
    assert r.choices[0].finish_reason == "stop"
    usages.append(r.usage)
    *_, last = client.chat.completions.create(model=model, messages=MESSAGES, max_tokens=6,
                                              temperature=0, stream=True,
                                              stream_options={"include_usage": True})
    usages.append(last.usage)
    done = scrape(server)
    completion_tokens = [u.completion_tokens for u in usages]
    assert delta(done, before, "generation_tokens_total") == sum(completion_tokens)
    assert delta(done, before, "prompt_tokens_total") == sum(u.prompt_tokens for u in usages)
    assert delta(done, before, "request_success_total{finished_reason=length}") == 3
    assert delta(done, before, "request_success_total{finished_reason=stop}") == 1
    assert delta(done, before, "request_success_total{finished_reason=abort}") == 0
    assert delta(done, before, "time_to_first_token_seconds_count") == 4
    assert delta(done, before, "inter_token_latency_seconds_count") == sum(
        c - 1 for c in completion_tokens)
    assert delta(done, before, "e2e_request_latency_seconds_count") == 4
    assert done[M + "num_requests_running"] == 0 and done[M + "kv_cache_usage_perc"] == 0

    # A stream its client leaves after three chunks: while it runs it shows in the gauges;
    # then it counts as an abort, with at least the three tokens its client read.
    max_tokens, read = 1500, 0
    with httpx.stream("POST", f"{server}/v1/completions", timeout=60, json={
            "prompt": PROMPT, "max_tokens": max_tokens, "ignore_eos": True,
            "stream": True}) as s:
        for line in s.iter_lines():
            read += line.startswith("data: {")
            if read == 3:
                running = scrape(server)
                break  # closes the connection (httpx closes it with the line iterator)
    assert running[M + "num_requests_running"] == 1 and running[M + "kv_cache_usage_perc"] > 0
    abort = "request_success_total{finished_reason=abort}"
    after = wait_for(server, lambda m: delta(m, done, abort) == 1, "the abort")
    aborted_tokens = delta(after, done, "generation_tokens_total")
    assert read <= aborted_tokens < max_tokens, aborted_tokens
    assert delta(after, done, "prompt_tokens_total") == usages[0].prompt_tokens
    assert delta(after, done, "time_to_first_token_seconds_count") == 1
    assert delta(after, done, "e2e_request_latency_seconds_count") == 0
    # Its KV blocks are free again and nothing is left running.
    wait_for(server, lambda m: m[M + "kv_cache_usage_perc"] == 0
             and m[M + "num_requests_running"] == m[M + "num_requests_waiting"] == 0,
             "the aborted request's KV blocks freed")

    # Refusals count by reason, and only there.
    httpx.post(f"{server}/v1/chat/completions", json={"messages": []}, timeout=30)
    httpx.post(f"{server}/v1/completions", json={"model": "x", "prompt": "x"}, timeout=30)
    refused = scrape(server)
    assert delta(refused, after, "requests_rejected_total{reason=invalid_request}") == 1
    assert delta(refused, after, "requests_rejected_total{reason=model_not_found}") == 1
    assert delta(refused, after, "request_success_total{finished_reason=length}") == 0

    # The same long prompt twice: the second finds its full blocks in the prefix cache.
    long_prompt = " ".join(["prefix caching pays off on repeated prompts"] * 8)
    for _ in range(2):
        client.completions.create(model=model, prompt=long_prompt, max_tokens=1)
    cached = scrape(server)
    hits = delta(cached, refused, "prefix_cache_hits_total")
    assert hits >= 16 and delta(cached, refused, "prefix_cache_queries_total") > hits


def test_engine_metrics_equal_the_engine_under_preemption(tiny_engine_factory):
    """A KV pool too small for the batch forces preemptions; the scraped engine counters equal
    the engine's own (read here after the server stopped, from this thread)."""
    eng = tiny_engine_factory(num_kv_blocks=12, max_num_seqs=4)
    max_tokens = 100
    with serve_in_thread(create_app(eng, "tiny")) as url:
        def one(i: int) -> dict:
            r = httpx.post(f"{url}/v1/completions", timeout=120, json={
                "prompt": f"request {i} goes first", "max_tokens": max_tokens,
                "ignore_eos": True, "temperature": 0})
            assert r.status_code == 200, r.text
            return r.json()["usage"]

        with concurrent.futures.ThreadPoolExecutor(4) as pool:
            usages = list(pool.map(one, range(4)))
        samples = scrape(url)
    preemptions = sum(r.num_preempted for r in eng.telemetry)
    assert preemptions > 0, "the pool was not small enough to preempt"
    assert samples[M + "num_preemptions_total"] == preemptions
    assert samples[M + "prefix_cache_queries_total"] == eng.block_manager.queried_tokens
    assert samples[M + "prefix_cache_hits_total"] == eng.block_manager.hit_tokens
    assert samples[M + "generation_tokens_total"] == sum(u["completion_tokens"] for u in usages)
    assert samples[M + "generation_tokens_total"] == 4 * max_tokens
    assert samples[M + "kv_cache_usage_perc"] == 0 and samples[M + "num_requests_running"] == 0


def test_a_tokenizer_s_own_chat_template_wins(engine):
    tok = engine.tokenizer
    own = "{% for m in messages %}<{{ m['role'] }}>{{ m['content'] }}{% endfor %}<assistant>"
    saved = tok.chat_template
    try:
        tok.chat_template = own
        assert chat_prompt(tok, MESSAGES) == "<system>You are terse.<user>Name a colour.<assistant>"
        tok.chat_template = "{{ raise_exception('roles must alternate') }}"
        with pytest.raises(ValueError, match="^messages: .*roles must alternate"):
            chat_prompt(tok, MESSAGES)
    finally:
        tok.chat_template = saved
    assert chat_prompt(tok, MESSAGES) == tok.apply_chat_template(
        MESSAGES, chat_template=DEFAULT_CHAT_TEMPLATE, tokenize=False, add_generation_prompt=True)
    with pytest.raises(ValueError, match="^messages: this checkpoint has no tokenizer"):
        chat_prompt(None, MESSAGES)
