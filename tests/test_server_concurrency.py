"""Submissions wait on asyncio futures, not threads: a burst larger than any thread pool runs
as one batch, and a non-streaming client that hangs up frees its slot like a streaming one."""

from __future__ import annotations

import asyncio
import socket
import threading
import time
from urllib.parse import urlparse

import httpx

from tests.server_helpers import scrape
from tests.test_server_worker import drain
from workbench.engine import SamplingParams
from workbench.server.app import create_app
from workbench.server.background import serve_in_thread
from workbench.server.worker import EngineWorker


def test_waiting_submissions_hold_no_pool_threads(tiny_engine_factory):
    """While the engine is busy in a step, 40 submissions wait for acceptance; the default
    executor (at most 32 threads) must still run other work meanwhile."""
    eng = tiny_engine_factory()
    gate, in_step = threading.Event(), threading.Event()
    execute = eng.runner.execute

    def gated(scheduled):
        in_step.set()
        gate.wait(120)  # bounded: never hangs the suite
        return execute(scheduled)

    eng.runner.execute = gated
    worker = EngineWorker(eng)
    worker.start()
    params = SamplingParams(max_tokens=2, temperature=0, ignore_eos=True)

    async def scenario():
        loop = asyncio.get_running_loop()
        first = await worker.submit("first", "hello", params)
        await loop.run_in_executor(None, in_step.wait, 120)
        burst = [asyncio.ensure_future(worker.submit(f"b{i}", f"hello {i}", params))
                 for i in range(40)]
        for _ in range(3):
            await asyncio.sleep(0)  # every submission is now waiting for acceptance
        assert not any(t.done() for t in burst)
        probe = loop.run_in_executor(None, gate.is_set)
        done, _ = await asyncio.wait({probe}, timeout=60)
        gate.set()
        assert probe in done and probe.result() is False, "the pool was starved by submissions"
        sinks = [first, *await asyncio.gather(*burst)]
        for sink in sinks:
            assert (await drain(sink, 120)).finish_reason == "length"

    try:
        asyncio.run(scenario())
    finally:
        gate.set()
        worker.stop()
    assert not eng.has_unfinished()


def test_a_burst_of_streams_runs_as_one_batch(tiny_engine_factory):
    n = 24
    eng = tiny_engine_factory(max_num_seqs=32)
    events: list[tuple[str, int]] = []

    async def one(client: httpx.AsyncClient, i: int) -> int:
        chunks = 0
        body = {"prompt": f"request {i} says", "max_tokens": 200, "ignore_eos": True,
                "temperature": 0, "stream": True}
        async with client.stream("POST", "/v1/completions", json=body) as r:
            assert r.status_code == 200
            async for line in r.aiter_lines():
                if line.startswith("data: {"):
                    chunks += 1
                    if chunks == 1:
                        events.append(("first", i))
        events.append(("done", i))
        return chunks

    async def burst(url: str) -> list[int]:
        limits = httpx.Limits(max_connections=None, max_keepalive_connections=None)
        async with httpx.AsyncClient(base_url=url, timeout=120, limits=limits) as client:
            return await asyncio.gather(*(one(client, i) for i in range(n)))

    with serve_in_thread(create_app(eng, "tiny")) as url:
        chunks = asyncio.run(burst(url))
    assert chunks == [200] * n
    kinds = [kind for kind, _ in events]
    assert kinds == ["first"] * n + ["done"] * n, "a stream finished before others started"
    assert max(rec.num_seqs for rec in eng.telemetry) > 6


def test_a_non_streaming_client_that_hangs_up_is_aborted(tiny_engine_factory):
    eng = tiny_engine_factory()
    max_tokens = 1500
    with serve_in_thread(create_app(eng, "tiny")) as url:
        u = urlparse(url)
        body = (b'{"prompt": "Once upon", "max_tokens": %d, "ignore_eos": true}' % max_tokens)
        with socket.create_connection((u.hostname, u.port), timeout=60) as s:
            s.sendall(b"POST /v1/completions HTTP/1.1\r\nHost: x\r\n"
                      b"Content-Type: application/json\r\nContent-Length: %d\r\n\r\n%s"
                      % (len(body), body))
            for _ in range(6000):  # bounded: until the engine has produced a few tokens
                if len(eng.telemetry) >= 3:
                    break
                time.sleep(0.01)
            assert len(eng.telemetry) >= 3
        # The client is gone; the request must end long before max_tokens.
        for _ in range(6000):
            if not eng.has_unfinished():
                break
            time.sleep(0.01)
        steps_when_idle = len(eng.telemetry)
        r = httpx.post(f"{url}/v1/completions", timeout=60, json={
            "prompt": "Hi", "max_tokens": 2, "ignore_eos": True})
        assert r.status_code == 200
        metrics = scrape(url)
    assert steps_when_idle < max_tokens, "the abandoned request ran to completion"
    # /metrics counts it as an abort, with the tokens generated before the abort took effect.
    assert metrics["workbench:request_success_total{finished_reason=abort}"] == 1
    assert metrics["workbench:request_success_total{finished_reason=length}"] == 1
    aborted_tokens = metrics["workbench:generation_tokens_total"] - 2
    assert 3 <= aborted_tokens <= steps_when_idle
