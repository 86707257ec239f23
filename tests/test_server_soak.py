"""Soak: 64 concurrent streaming clients against `workbench serve --model tiny` (a real process
on a loopback port) for a fixed time, each looping requests; a quarter of them leave every
stream after a few chunks. More clients than --max-num-seqs, so requests queue.

Checked afterwards:
- no response other than 200 (in particular no 5xx), and the server still healthy;
- every stream read to the end is well formed: each `data:` line is a JSON chunk of the
  right object with the request's id, exactly one finish_reason and on the last choice chunk,
  the usage chunk (no choices) after it exactly when include_usage was asked, `[DONE]` last;
  one chunk per output token, `length` means max_tokens tokens;
- the engine is clean: no request running or waiting and KV usage 0 (a bounded wait);
- /metrics counts what the clients saw (workbench/server/metrics.py states the contract):
  finished requests by reason (stop, length, and one abort per stream its client left, no
  error), prompt tokens exactly, generation tokens exactly for completed streams plus, for
  the left streams, at least the chunks their clients read and less than their max_tokens;
  TTFT once per request, E2E once per completed request; no request refused.

Bounded: LOAD_S seconds of load, then each client finishes the request it is in; the left
streams ask for long outputs (so they are surely running when left) that the abort ends.
"""

from __future__ import annotations

import asyncio
import json
import random
import time
from dataclasses import dataclass, field

import httpx

from tests.server_helpers import delta, scrape, start_server, stop_server, wait_for

CLIENTS = 64
LEAVERS = CLIENTS // 4  # clients that leave each stream after a few chunks
MAX_NUM_SEQS = 32  # `workbench serve`'s default: half the clients queue
LOAD_S = 15.0  # clients start no new request after this
SEED = 15
M = "workbench:"
LEAVER_MAX_TOKENS = 1500  # far more than a leaver reads: its request is running when it leaves
VOCAB = 4096  # the tiny model's; token-id prompts are drawn below it


@dataclass
class Tally:
    """What the clients saw, summed over all of them."""

    statuses: dict[int, int] = field(default_factory=dict)
    finish: dict[str, int] = field(default_factory=dict)  # completed streams by finish_reason
    prompt_tokens: int = 0  # of completed streams (usage, or the token-id prompt sent)
    completion_tokens: int = 0  # of completed streams
    completed: int = 0
    left: int = 0  # streams a client left
    left_prompt_tokens: int = 0
    left_chunks: int = 0  # token chunks read from streams before leaving them
    left_max_tokens: int = 0
    max_waiting: float = 0.0  # the most requests /metrics showed waiting during the load


def _chunks(lines: list[str]) -> list[dict]:
    """The JSON chunks of a whole SSE body, asserting `[DONE]` comes last and only once."""
    data = [line[len("data: "):] for line in lines if line.startswith("data: ")]
    assert all(not line or line.startswith("data: ") for line in lines), lines[:5]
    assert data and data[-1] == "[DONE]" and data.count("[DONE]") == 1, data[-3:]
    return [json.loads(d) for d in data[:-1]]


def check_stream(chunks: list[dict], chat: bool, include_usage: bool, max_tokens: int
                 ) -> tuple[str, int, int]:
    """Asserts a completed stream is well formed; (finish_reason, prompt, completion tokens)
    where the usage chunk gives the counts (else prompt tokens are -1, completion tokens the
    chunks)."""
    obj = "chat.completion.chunk" if chat else "text_completion"
    assert chunks and len({c["id"] for c in chunks}) == 1, chunks[:2]
    assert all(c["object"] == obj for c in chunks), chunks[:2]
    usage = None
    if include_usage:
        *chunks, last = chunks
        assert last["choices"] == [] and last["usage"] is not None, last
        usage = last["usage"]
        assert usage["total_tokens"] == usage["prompt_tokens"] + usage["completion_tokens"]
    assert all(c["usage"] is None and len(c["choices"]) == 1 for c in chunks), chunks[-2:]
    reasons = [c["choices"][0]["finish_reason"] for c in chunks]
    assert reasons[-1] in ("stop", "length") and reasons[:-1] == [None] * (len(reasons) - 1), \
        reasons
    if chat:  # the first chunk names the role and carries no token
        first, *chunks = chunks
        assert first["choices"][0]["delta"] == {"role": "assistant", "content": ""}, first
        assert all(set(c["choices"][0]["delta"]) == {"content"} for c in chunks), chunks[:2]
    tokens = len(chunks)  # one chunk per output token
    if usage is not None:
        assert usage["completion_tokens"] == tokens, (usage, tokens)
    # `stop` may come on the max_tokens-th token too (EOS is checked before the length).
    assert 1 <= tokens <= max_tokens and (reasons[-1] != "length" or tokens == max_tokens), \
        (reasons[-1], tokens, max_tokens)
    return reasons[-1], usage["prompt_tokens"] if usage else -1, tokens


async def completer(client: httpx.AsyncClient, rng: random.Random, deadline: float,
                    tally: Tally) -> None:
    """Streams to the end: completions with token-id prompts (their length known without
    usage) or chat; include_usage on most, sampled, some with stop tokens or EOS (stop early)."""
    while time.monotonic() < deadline:
        chat = rng.random() < 0.3
        include_usage = chat or rng.random() < 0.75  # a chat prompt's length needs usage
        max_tokens = rng.randint(4, 40)
        body = {"max_tokens": max_tokens, "temperature": 0.8, "seed": rng.randrange(1 << 30),
                "ignore_eos": rng.random() < 0.5, "stream": True}
        if include_usage:
            body["stream_options"] = {"include_usage": True}
        if rng.random() < 0.5:  # so that many streams end with `stop` (EOS alone is rare)
            body["stop_token_ids"] = [rng.randrange(10, VOCAB) for _ in range(64)]
        if chat:
            body["messages"] = [{"role": "user", "content": f"soak {rng.random()} " * 3}]
            prompt_len = -1
        else:
            prompt_len = rng.randint(4, 64)
            body["prompt"] = [rng.randrange(10, VOCAB) for _ in range(prompt_len)]
        path = "/v1/chat/completions" if chat else "/v1/completions"
        async with client.stream("POST", path, json=body) as r:
            tally.statuses[r.status_code] = tally.statuses.get(r.status_code, 0) + 1
            if r.status_code != 200:
                await r.aread()
                continue
            lines = [line async for line in r.aiter_lines()]
        reason, prompt_tokens, tokens = check_stream(_chunks(lines), chat, include_usage,
                                                     max_tokens)
        if prompt_len >= 0:
            assert prompt_tokens in (-1, prompt_len), (prompt_tokens, prompt_len)
            prompt_tokens = prompt_len
        tally.finish[reason] = tally.finish.get(reason, 0) + 1
        tally.prompt_tokens += prompt_tokens
        tally.completion_tokens += tokens
        tally.completed += 1


async def leaver(client: httpx.AsyncClient, rng: random.Random, deadline: float,
                 tally: Tally) -> None:
    """Leaves each stream after 1-5 token chunks: closing the response closes the connection
    (its body is unread), which the server must notice and abort."""
    while time.monotonic() < deadline:
        prompt_len, read = rng.randint(4, 64), rng.randint(1, 5)
        body = {"prompt": [rng.randrange(10, VOCAB) for _ in range(prompt_len)],
                "max_tokens": LEAVER_MAX_TOKENS, "ignore_eos": True, "stream": True,
                "stream_options": {"include_usage": True}}
        got = 0
        async with client.stream("POST", "/v1/completions", json=body) as r:
            tally.statuses[r.status_code] = tally.statuses.get(r.status_code, 0) + 1
            if r.status_code != 200:
                await r.aread()
                continue
            async for line in r.aiter_lines():
                if line.startswith("data: {"):
                    chunk = json.loads(line[len("data: "):])
                    assert chunk["choices"][0]["finish_reason"] is None, chunk
                    got += 1
                    if got == read:
                        break
        assert got == read, "the stream ended before its client left it"
        tally.left += 1
        tally.left_prompt_tokens += prompt_len
        tally.left_chunks += got
        tally.left_max_tokens += LEAVER_MAX_TOKENS


async def watch(client: httpx.AsyncClient, deadline: float, tally: Tally) -> None:
    """Samples the waiting gauge during the load (the test needs requests to have queued)."""
    while time.monotonic() < deadline:
        r = await client.get("/metrics")
        for line in r.text.splitlines():
            if line.startswith(M + "num_requests_waiting "):
                tally.max_waiting = max(tally.max_waiting, float(line.split()[1]))
        await asyncio.sleep(0.5)


async def load(url: str) -> Tally:
    tally = Tally()
    deadline = time.monotonic() + LOAD_S
    limits = httpx.Limits(max_connections=None, max_keepalive_connections=None)
    async with httpx.AsyncClient(base_url=url, timeout=120, limits=limits) as client:
        tasks = [leaver(client, random.Random(SEED * 1000 + i), deadline, tally)
                 for i in range(LEAVERS)]
        tasks += [completer(client, random.Random(SEED * 1000 + i), deadline, tally)
                  for i in range(LEAVERS, CLIENTS)]
        await asyncio.gather(watch(client, deadline, tally), *tasks)
    return tally




def test_64_streaming_clients_a_quarter_leaving_mid_stream(tiny_path):
    proc, url = start_server(str(tiny_path), "--max-num-seqs", str(MAX_NUM_SEQS))
    try:
        before = scrape(url)
        tally = asyncio.run(load(url))
        assert set(tally.statuses) == {200}, f"responses by status: {tally.statuses}"
        assert tally.left >= LEAVERS and tally.completed >= CLIENTS - LEAVERS, tally
        assert tally.max_waiting > 0, "no request ever queued: the soak did not load the server"

        # An abort is counted when the engine thread has taken it, a moment after the client
        # left; then nothing may be running, waiting or holding KV blocks.
        abort = "request_success_total{finished_reason=abort}"
        after = wait_for(url, lambda m: delta(m, before, abort) >= tally.left
                         and m[M + "num_requests_running"] == 0
                         and m[M + "num_requests_waiting"] == 0
                         and m[M + "kv_cache_usage_perc"] == 0,
                         f"{tally.left} aborts and an idle engine with every KV block free")
        assert httpx.get(f"{url}/health", timeout=30).status_code == 200
    finally:
        stop_server(proc)

    def success(reason: str) -> float:
        return delta(after, before, f"request_success_total{{finished_reason={reason}}}")

    assert success("abort") == tally.left
    assert success("stop") == tally.finish.get("stop", 0)
    assert success("length") == tally.finish.get("length", 0)
    assert success("error") == 0
    assert delta(after, before, "prompt_tokens_total") == (tally.prompt_tokens
                                                           + tally.left_prompt_tokens)
    left_generated = delta(after, before, "generation_tokens_total") - tally.completion_tokens
    assert tally.left_chunks <= left_generated < tally.left_max_tokens, (left_generated, tally)
    requests = tally.completed + tally.left
    assert delta(after, before, "time_to_first_token_seconds_count") == requests
    assert delta(after, before, "e2e_request_latency_seconds_count") == tally.completed
    assert sum(v for k, v in after.items()
               if k.startswith(M + "requests_rejected_total{")) == sum(
        v for k, v in before.items() if k.startswith(M + "requests_rejected_total{"))
