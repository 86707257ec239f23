"""Admission on real servers (workbench/server/admission.py): prompts tokenized off the engine
thread, the request-size limit (413), per-key rate limits (429), the bounded admission queue
(503) and request timeouts (504 / an in-stream error). Every refusal is OpenAI-shaped and
counted in /metrics; assertions count events, never time them."""

from __future__ import annotations

import json
import threading

import httpx
import openai
import pytest

from tests.server_helpers import scrape, start_server, stop_server, wait_for
from tests.test_server_openai import MESSAGES
from workbench.engine import SamplingParams
from workbench.server.admission import Limits
from workbench.server.app import create_app
from workbench.server.background import serve_in_thread

M = "workbench:"
LONG = {"prompt": "Once upon a time", "max_tokens": 1900, "ignore_eos": True,
        "temperature": 0}


def served(url: str, key: str = "x") -> str:
    """The name the server lists its model under."""
    r = httpx.get(f"{url}/v1/models", headers={"Authorization": f"Bearer {key}"}, timeout=30)
    return r.json()["data"][0]["id"]


def rejected(samples: dict, reason: str) -> float:
    return samples[f"{M}requests_rejected_total{{reason={reason}}}"]


def assert_error(r: httpx.Response, status: int, kind: str, code: str | None,
                 param: str | None = None) -> dict:
    assert r.status_code == status, r.text
    error = r.json()["error"]
    assert set(error) == {"message", "type", "param", "code"}
    assert (error["type"], error["code"], error["param"]) == (kind, code, param), error
    return error


class Stream:
    """A streamed completion read on its own thread, counting its chunks."""

    def __init__(self, url: str, body: dict, headers: dict | None = None):
        self.chunks, self.lines, self.status = 0, [], None
        self.started, self.done = threading.Event(), threading.Event()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, args=(url, body, headers),
                                        daemon=True)
        self._thread.start()

    def _run(self, url, body, headers):
        try:
            with httpx.stream("POST", f"{url}/v1/completions", json={**body, "stream": True},
                              headers=headers, timeout=120) as r:
                self.status = r.status_code
                for line in r.iter_lines():
                    self.lines.append(line)
                    if line.startswith("data: {") and '"error"' not in line:
                        self.chunks += 1
                        self.started.set()
                    if self._stop.is_set():
                        break  # closes the connection: the server aborts the request
        finally:
            self.started.set()
            self.done.set()

    def wait_chunks(self, n: int) -> None:
        for _ in range(1200):  # bounded
            if self.chunks >= n or self.done.is_set():
                break
            self.done.wait(0.05)
        assert self.chunks >= n, (self.chunks, self.lines[-3:])

    def close(self) -> None:
        self._stop.set()
        self._thread.join(timeout=120)


# -- tokenization off the engine thread ------------------------------------------------------
@pytest.fixture(scope="module")
def server(tiny_path):
    proc, url = start_server(str(tiny_path))
    yield url
    stop_server(proc)


def test_a_huge_prompt_is_refused_while_other_streams_keep_going(server):
    """The prompt (1.5 MB, a few hundred thousand tokens) is tokenized off the engine thread:
    a running stream keeps receiving tokens between the huge request's sending and its 400.
    When the engine thread tokenized it, every stream stalled for that whole time."""
    stream = Stream(server, LONG)
    try:
        stream.wait_chunks(3)
        before = stream.chunks
        huge = "many words " * 140_000
        r = httpx.post(f"{server}/v1/completions", json={"prompt": huge, "max_tokens": 4},
                       timeout=120)
        during = stream.chunks - before
        error = assert_error(r, 400, "invalid_request_error", None, "prompt")
        assert error["message"].startswith("prompt: ") and "max_model_len" in error["message"]
        assert during >= 40, f"only {during} tokens streamed while the huge prompt was refused"
        r = httpx.post(f"{server}/v1/chat/completions", timeout=120, json={
            "messages": [{"role": "user", "content": huge}]})
        assert_error(r, 400, "invalid_request_error", None, "messages")
    finally:
        stream.close()


def test_greedy_text_equals_generate_for_text_and_token_id_prompts(server, tiny_engine_factory):
    engine = tiny_engine_factory()
    prompt = "The quick brown fox"
    [ref] = engine.generate([prompt], SamplingParams(max_tokens=12, temperature=0))
    client = openai.OpenAI(base_url=f"{server}/v1", api_key="x", max_retries=0, timeout=60)
    for sent in (prompt, engine.encode(prompt)):
        r = client.completions.create(model=served(server), prompt=sent, max_tokens=12,
                                      temperature=0)
        assert r.choices[0].text == ref.text
        assert r.usage.prompt_tokens == len(ref.prompt_token_ids)


def test_max_tokens_beyond_the_context_is_a_400_naming_it(server):
    r = httpx.post(f"{server}/v1/completions", timeout=60,
                   json={"prompt": "Hi", "max_tokens": 10**6})
    error = assert_error(r, 400, "invalid_request_error", None, "max_tokens")
    assert "exceeds max_model_len" in error["message"]


def test_chat_without_max_tokens_runs_to_the_end_of_the_context(tiny_engine_factory):
    """OpenAI's chat has no default output limit; completions keep OpenAI's 16."""
    eng = tiny_engine_factory(max_model_len=96)
    with serve_in_thread(create_app(eng, "tiny")) as url:
        chat = httpx.post(f"{url}/v1/chat/completions", timeout=120, json={
            "messages": MESSAGES, "ignore_eos": True, "temperature": 0}).json()
        plain = httpx.post(f"{url}/v1/completions", timeout=120, json={
            "prompt": "Hi", "ignore_eos": True, "temperature": 0}).json()
    usage = chat["usage"]
    assert chat["choices"][0]["finish_reason"] == "length"
    assert usage["prompt_tokens"] + usage["completion_tokens"] == 96
    assert plain["usage"]["completion_tokens"] == 16


# -- request-size limit ------------------------------------------------------------------------
def test_bodies_over_the_limit_are_413s_before_parsing(tiny_path):
    proc, url = start_server(str(tiny_path), "--max-request-bytes", "2000")
    try:
        big = json.dumps({"prompt": "x" * 3000, "max_tokens": 2}).encode()
        r = httpx.post(f"{url}/v1/completions", content=big, timeout=60,
                       headers={"content-type": "application/json"})
        error = assert_error(r, 413, "invalid_request_error", None, "body")
        assert "2000 bytes" in error["message"] and "--max-request-bytes" in error["message"]

        def chunked():  # no Content-Length: counted as it arrives
            for i in range(0, len(big), 500):
                yield big[i:i + 500]

        r = httpx.post(f"{url}/v1/completions", content=chunked(), timeout=60,
                       headers={"content-type": "application/json"})
        assert "content-length" not in r.request.headers
        assert_error(r, 413, "invalid_request_error", None, "body")
        # Many megabytes declared: refused without reading them, the answer still arrives.
        r = httpx.post(f"{url}/v1/completions", content=b" " * 8_000_000, timeout=60,
                       headers={"content-type": "application/json"})
        assert_error(r, 413, "invalid_request_error", None, "body")
        with pytest.raises(openai.APIStatusError) as e:
            openai.OpenAI(base_url=f"{url}/v1", api_key="x", max_retries=0).completions.create(
                model=served(url), prompt="y" * 3000, max_tokens=2)
        assert e.value.status_code == 413

        small = httpx.post(f"{url}/v1/completions", timeout=60, json={
            "prompt": "x" * 1000, "max_tokens": 2, "ignore_eos": True})
        assert small.status_code == 200, small.text
        chunked_ok = httpx.post(f"{url}/v1/completions", timeout=60,
                                headers={"content-type": "application/json"},
                                content=iter([b'{"prompt": "Hi", ', b'"max_tokens": 2}']))
        assert chunked_ok.status_code == 200, chunked_ok.text
        assert rejected(scrape(url), "too_large") == 4
    finally:
        stop_server(proc)


# -- rate limits ---------------------------------------------------------------------------
def test_rate_limits_per_key(tiny_path, tiny_engine_factory):
    keys = ("key-a", "key-b", "key-c")
    tpm, prompt = 400, "The quick brown fox"
    proc, url = start_server(str(tiny_path), "--rate-limit-rpm", "3", "--rate-limit-tpm",
                             str(tpm), env={"WORKBENCH_API_KEYS": ",".join(keys)})

    def post(key: str, **body) -> httpx.Response:
        return httpx.post(f"{url}/v1/completions", timeout=120,
                          headers={"Authorization": f"Bearer {key}"},
                          json={"prompt": prompt, "temperature": 0, **body})

    try:
        # Requests per minute: three, then a 429 saying when to come back.
        for _ in range(3):
            assert post(keys[0], max_tokens=2).status_code == 200
        r = post(keys[0], max_tokens=2)
        error = assert_error(r, 429, "requests", "rate_limit_exceeded")
        assert 1 <= int(r.headers["retry-after"]) <= 20  # one request refills in 20 s
        client = openai.OpenAI(base_url=f"{url}/v1", api_key=keys[0], max_retries=0)
        with pytest.raises(openai.RateLimitError):
            client.completions.create(model=served(url, keys[0]), prompt=prompt, max_tokens=2)
        # Other keys have their own buckets. More tokens than a minute's allowance never fit.
        r = post(keys[1], max_tokens=tpm)
        error = assert_error(r, 429, "tokens", "rate_limit_exceeded")
        assert "too large" in error["message"] and "retry-after" not in r.headers
        assert r.headers["x-should-retry"] == "false"
        # Tokens: prompt + max_tokens are reserved, the unused part given back at the end.
        # A request stopped after a few tokens leaves room for a second big one...
        engine = tiny_engine_factory()
        [ref] = engine.generate([prompt], SamplingParams(max_tokens=3, temperature=0))
        n_prompt, big = len(ref.prompt_token_ids), tpm - 100
        r = post(keys[2], max_tokens=big, stop_token_ids=[ref.token_ids[2]])
        assert r.status_code == 200 and r.json()["usage"]["completion_tokens"] <= 3
        r = post(keys[2], max_tokens=big, ignore_eos=True)  # ...which uses all it reserved
        assert r.status_code == 200, r.text
        r = post(keys[2], max_tokens=big)
        assert_error(r, 429, "tokens", "rate_limit_exceeded")
        # Left: tpm - 2 (n_prompt + big) + (big - 3) at most; short of n_prompt + big minus
        # that, refilled at tpm / 60 per second.
        short = (n_prompt + big) - (tpm - 2 * (n_prompt + big) + big - 3)
        assert 1 <= int(r.headers["retry-after"]) <= -(-short * 60 // tpm)
        assert rejected(scrape(url, headers={"Authorization": f"Bearer {keys[1]}"}),
                        "rate_limited") == 4
    finally:
        stop_server(proc)


def test_rate_limits_count_per_address_without_keys(tiny_path):
    proc, url = start_server(str(tiny_path), "--rate-limit-rpm", "1")
    try:
        body = {"prompt": "Hi", "max_tokens": 1}
        assert httpx.post(f"{url}/v1/completions", json=body, timeout=60).status_code == 200
        r = httpx.post(f"{url}/v1/completions", json=body, timeout=60)
        assert_error(r, 429, "requests", "rate_limit_exceeded")
        assert int(r.headers["retry-after"]) >= 1
    finally:
        stop_server(proc)


# -- the admission queue -------------------------------------------------------------------
def test_a_full_queue_is_a_503_with_retry_after(tiny_path):
    proc, url = start_server(str(tiny_path), "--max-num-seqs", "1", "--max-queued", "1")
    running = waiting = None
    try:
        running = Stream(url, LONG)
        running.wait_chunks(1)
        waiting = Stream(url, LONG)  # the engine runs one at a time: this one waits
        wait_for(url, lambda m: m[M + "num_requests_waiting"] == 1, "one request waiting")
        r = httpx.post(f"{url}/v1/completions", json={"prompt": "Hi", "max_tokens": 2},
                       timeout=60)
        error = assert_error(r, 503, "server_error", "overloaded")
        assert "--max-queued" in error["message"] and int(r.headers["retry-after"]) >= 1
        assert rejected(scrape(url), "queue_full") == 1
        assert waiting.chunks == 0, "the waiting request ran beside the running one"
        # The running one leaves: the waiting one runs, and the queue has room again.
        running.close()
        waiting.wait_chunks(1)
        with httpx.stream("POST", f"{url}/v1/completions", timeout=60,
                          json={**LONG, "stream": True}) as s:
            assert s.status_code == 200
        assert rejected(scrape(url), "queue_full") == 1
    finally:
        for s in (running, waiting):
            if s is not None:
                s.close()
        stop_server(proc)


# -- request timeouts ----------------------------------------------------------------------
def test_requests_past_their_timeout_are_aborted(tiny_path):
    """--request-timeout 0.5 against 1900-token generations (far longer on any machine
    this runs on): a 504 for a whole answer, an error event then [DONE] for a stream; their KV
    blocks are freed and /metrics counts them as finished_reason timeout."""
    proc, url = start_server(str(tiny_path), "--request-timeout", "0.5")
    try:
        r = httpx.post(f"{url}/v1/completions", json=LONG, timeout=120)
        error = assert_error(r, 504, "server_error", "timeout")
        assert "--request-timeout" in error["message"]

        stream = Stream(url, LONG)
        stream.done.wait(120)
        assert stream.status == 200
        data = [line.removeprefix("data: ") for line in stream.lines if line]
        assert data[-1] == "[DONE]"
        assert json.loads(data[-2])["error"]["code"] == "timeout"
        assert all("choices" in json.loads(d) for d in data[:-2])
        assert stream.chunks < LONG["max_tokens"]

        client = openai.OpenAI(base_url=f"{url}/v1", api_key="x", max_retries=0, timeout=120)
        with pytest.raises(openai.APIError, match="timed out"):
            for _ in client.chat.completions.create(
                    model=served(url), messages=MESSAGES, max_tokens=1900, stream=True,
                    extra_body={"ignore_eos": True}):
                pass
        ok = client.completions.create(model=served(url), prompt="Hi", max_tokens=2)
        assert ok.choices[0].finish_reason == "length"

        m = wait_for(url, lambda m: m[M + "request_success_total{finished_reason=timeout}"] == 3
                     and m[M + "kv_cache_usage_perc"] == 0
                     and m[M + "num_requests_running"] == 0, "three timeouts, KV freed")
        assert m[M + "request_success_total{finished_reason=abort}"] == 0
        assert m[M + "request_success_total{finished_reason=length}"] == 1
    finally:
        stop_server(proc)


# -- flags ---------------------------------------------------------------------------------
@pytest.mark.parametrize("args, message", [
    (["--max-request-bytes", "0"], "error: max-request-bytes: "),
    (["--max-queued", "0"], "error: max-queued: "),
    (["--rate-limit-rpm", "0"], "error: rate-limit-rpm: "),
    (["--rate-limit-tpm", "-5"], "error: rate-limit-tpm: "),
    (["--request-timeout", "0"], "error: request-timeout: "),
    (["--request-timeout", "nan"], "error: request-timeout: "),
])
def test_bad_limits_are_one_line_errors_naming_the_flag(args, message):
    from tests.test_server_process import _serve_args

    r = _serve_args(*args)
    assert r.returncode == 2, r.stderr
    assert r.stderr.startswith(message) and len(r.stderr.strip().splitlines()) == 1, r.stderr


def test_a_deadline_that_passes_before_the_engine_took_the_request_is_a_504(
        tiny_engine_factory):
    """Tokenizing is held (gated) past the deadline: the client gets a 504 at the deadline
    and the engine never sees the request."""
    eng = tiny_engine_factory()
    gate, entered = threading.Event(), threading.Event()
    encode = eng.encode

    def held(prompt):
        entered.set()
        gate.wait(120)  # bounded: never hangs the suite
        return encode(prompt)

    eng.encode = held
    app = create_app(eng, "tiny", limits=Limits(request_timeout_s=0.2))
    try:
        with serve_in_thread(app) as url:
            r = httpx.post(f"{url}/v1/completions", json={"prompt": "Hi", "max_tokens": 2},
                           timeout=60)
            assert entered.is_set()
            assert_error(r, 504, "server_error", "timeout")
            gate.set()
            samples = scrape(url)
    finally:
        gate.set()
    assert rejected(samples, "timeout") == 1
    assert samples[M + "request_success_total{finished_reason=timeout}"] == 0
    assert not eng.telemetry and not eng.has_unfinished()


def test_a_tokenizer_fault_is_a_500_and_the_server_keeps_serving(tiny_engine_factory):
    eng = tiny_engine_factory()
    encode = eng.encode

    def faulty(prompt):
        if prompt == "choke":
            raise TypeError("tokenizer choked")
        return encode(prompt)

    eng.encode = faulty
    with serve_in_thread(create_app(eng, "tiny")) as url:
        r = httpx.post(f"{url}/v1/completions", json={"prompt": "choke"}, timeout=60)
        error = assert_error(r, 500, "server_error", None)
        assert error["message"] == "engine failure: TypeError: tokenizer choked"
        ok = httpx.post(f"{url}/v1/completions", json={"prompt": "Hi", "max_tokens": 2},
                        timeout=60)
        assert ok.status_code == 200
        assert rejected(scrape(url), "engine_fault") == 1
