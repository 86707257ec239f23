"""The server's engine thread: a failing step or request reaches the clients it touched, a dead
thread is reported and fails requests fast; nothing hangs."""

from __future__ import annotations

import asyncio
import concurrent.futures
import threading
import time

import httpx
import pytest

from workbench.engine import SamplingParams
from workbench.server.app import create_app
from workbench.server.background import serve_in_thread
from workbench.server.worker import EngineFailure, EngineUnavailable, EngineWorker


async def drain(sink: asyncio.Queue, timeout_s: float = 120.0):
    """A request's final output: read its sink until finished, each wait bounded so that a lost
    output fails the test instead of hanging it."""
    out = None
    while out is None or not out.finished:
        out = await asyncio.wait_for(sink.get(), timeout_s)
        assert not isinstance(out, EngineFailure), out.message
    return out


def test_a_failing_step_fails_requests_instead_of_hanging(tiny_engine_factory):
    eng = tiny_engine_factory()
    worker = EngineWorker(eng)
    worker.start()

    async def scenario():
        sink = await worker.submit("ok", "hello", SamplingParams(max_tokens=3, temperature=0))
        outs = [await asyncio.wait_for(sink.get(), 10) for _ in range(3)]
        assert outs[-1].finished and len(outs[-1].token_ids) == 3

        def broken(_scheduled):
            raise RuntimeError("device lost")

        eng.runner.execute = broken
        sink = await worker.submit("doomed", "hello", SamplingParams(max_tokens=3))
        failure = await asyncio.wait_for(sink.get(), 10)
        assert isinstance(failure, EngineFailure) and "device lost" in failure.message

    try:
        asyncio.run(scenario())
    finally:
        worker.stop()
    assert not eng.has_unfinished()


def test_bad_input_fails_that_request_only(tiny_engine_factory):
    """A lone surrogate that gets past the HTTP layer is the client's mistake: the engine's
    ValueError names the field (a 400, not an EngineFault's 500), and the next one is served."""
    eng = tiny_engine_factory()
    worker = EngineWorker(eng)
    worker.start()
    params = SamplingParams(max_tokens=2, temperature=0, ignore_eos=True)

    async def scenario():
        with pytest.raises(ValueError, match="^prompt: not valid Unicode text"):
            await asyncio.wait_for(worker.submit("bad", "\ud800", params), 30)
        sink = await asyncio.wait_for(worker.submit("good", "hello", params), 30)
        assert (await drain(sink, 30)).finish_reason == "length"

    try:
        asyncio.run(scenario())
        assert worker.dead is None
    finally:
        worker.stop()
    assert worker.dead is not None and not eng.has_unfinished()


def test_an_engine_fault_in_one_request_is_a_500_and_the_server_keeps_serving(
        tiny_engine_factory):
    """add_request raising something other than ValueError is the engine's fault, not the
    client's: that request gets a 500 with an OpenAI-style body, and nothing else is hurt.
    Two shapes of fault: before the engine took the request (as the tokenizer once raised
    TypeError on a lone surrogate), and after it did (so the worker must take it back)."""
    eng = tiny_engine_factory()
    real_add = eng.add_request
    # The server tokenizes (admission.py): the engine receives the prompts' token ids.
    before, after = eng.encode("fault before"), eng.encode("fault after")

    def faulty_add(request_id, prompt, params=None, **kw):
        if prompt == before:
            raise TypeError("tokenizer choked")
        rid = real_add(request_id, prompt, params, **kw)
        if prompt == after:
            raise RuntimeError("bookkeeping broke")
        return rid

    eng.add_request = faulty_add
    with serve_in_thread(create_app(eng, "tiny")) as url:
        for prompt, stream, message in [("fault before", False, "TypeError: tokenizer choked"),
                                        ("fault after", True, "RuntimeError: bookkeeping broke")]:
            r = httpx.post(f"{url}/v1/completions", timeout=60, json={
                "prompt": prompt, "max_tokens": 1500, "ignore_eos": True, "stream": stream})
            assert r.status_code == 500, r.text
            assert r.json() == {"error": {"message": f"engine failure: {message}",
                                          "type": "server_error", "param": None,
                                          "code": None}}
        ok = httpx.post(f"{url}/v1/completions", timeout=60, json={
            "prompt": "Hi", "max_tokens": 2, "ignore_eos": True, "temperature": 0})
        assert ok.status_code == 200 and ok.json()["usage"]["completion_tokens"] == 2
        health = httpx.get(f"{url}/health", timeout=30)
        assert health.status_code == 200 and health.json() == {"status": "ok"}
        # The half-added request (1500 tokens) was aborted, not left generating for nobody.
        assert not eng.has_unfinished()


def _break_engine_on(eng, flag: threading.Event) -> None:
    """The loop itself (not one step) raises: the engine thread cannot go on."""
    real = eng.has_unfinished

    def has_unfinished():
        if flag.is_set():
            raise RuntimeError("scheduler state corrupted")
        return real()

    eng.has_unfinished = has_unfinished


def test_a_dead_engine_thread_fails_requests_fast(tiny_engine_factory):
    eng = tiny_engine_factory()
    broken = threading.Event()
    _break_engine_on(eng, broken)
    worker = EngineWorker(eng)
    assert worker.dead == "engine not started"
    worker.start()
    params = SamplingParams(max_tokens=1000, temperature=0, ignore_eos=True)

    async def scenario():
        sink = await worker.submit("inflight", "hello", params)
        await asyncio.wait_for(sink.get(), 30)
        broken.set()
        while True:  # the in-flight request is told, not left waiting
            out = await asyncio.wait_for(sink.get(), 30)
            if isinstance(out, EngineFailure):
                break
            assert not out.finished
        assert "scheduler state corrupted" in out.message
        assert "scheduler state corrupted" in worker.dead
        with pytest.raises(EngineUnavailable, match="scheduler state corrupted"):
            await asyncio.wait_for(worker.submit("later", "hello", params), 30)

    try:
        asyncio.run(scenario())
    finally:
        worker.stop()


def test_a_dead_engine_shows_in_health_and_http_fails_fast(tiny_engine_factory):
    eng = tiny_engine_factory()
    broken = threading.Event()
    _break_engine_on(eng, broken)
    app = create_app(eng, "tiny")
    with serve_in_thread(app) as url:
        ok = httpx.post(f"{url}/v1/completions", timeout=60, json={
            "prompt": "Hi", "max_tokens": 2, "ignore_eos": True})
        assert ok.status_code == 200 and httpx.get(f"{url}/health", timeout=30).status_code == 200
        with concurrent.futures.ThreadPoolExecutor(1) as pool:
            inflight = pool.submit(httpx.post, f"{url}/v1/completions", timeout=60, json={
                "prompt": "Once", "max_tokens": 1500, "ignore_eos": True})
            for _ in range(6000):  # bounded: until the request is being generated
                if len(eng.telemetry) >= 4:
                    break
                time.sleep(0.01)
            broken.set()
            r = inflight.result()
        assert r.status_code == 500 and "scheduler state corrupted" in r.json()["error"]["message"]
        health = httpx.get(f"{url}/health", timeout=30)
        assert health.status_code == 503 and "scheduler state corrupted" in health.json()["reason"]
        for stream in (False, True):
            r = httpx.post(f"{url}/v1/completions", timeout=30, json={
                "prompt": "Hi", "max_tokens": 2, "stream": stream})
            assert r.status_code == 503 and r.json()["error"]["type"] == "server_error"
    # leaving the block stopped the server (the SIGTERM path): it did not hang


def test_a_long_running_worker_keeps_a_bounded_telemetry_and_counts_every_preemption(
        tiny_engine_factory, monkeypatch):
    """Step records are trimmed to the latest TELEMETRY_KEPT (a server runs for weeks); the
    preemption counter comes from the scheduler, so trimming loses none of them."""
    from workbench.server import worker as worker_module

    monkeypatch.setattr(worker_module, "TELEMETRY_KEPT", 10)
    eng = tiny_engine_factory(num_kv_blocks=12, block_size=16, max_num_seqs=8)
    worker = EngineWorker(eng)
    worker.start()
    params = SamplingParams(max_tokens=60, temperature=0, ignore_eos=True)

    async def scenario():
        sinks = [await worker.submit(f"r{i}", list(range(5, 45)), params) for i in range(6)]
        return [await drain(s) for s in sinks]

    try:
        outs = asyncio.run(scenario())
        deadline = time.monotonic() + 30
        while worker.stats.running + worker.stats.waiting and time.monotonic() < deadline:
            time.sleep(0.01)
    finally:
        worker.stop()
    assert all(len(o.token_ids) == 60 for o in outs)
    assert 0 < len(eng.telemetry) <= 20  # 60+ steps ran
    preempted = sum(o.metrics.preemptions for o in outs)
    assert preempted > 0, "the pool was not small enough to preempt"
    assert worker.stats.preemptions == preempted == eng.scheduler.num_preemptions


def test_the_engine_thread_runs_with_the_torch_threads_set_where_the_server_was_built(
        tiny_engine_factory, monkeypatch):
    """OpenMP keeps the thread count per thread: a fresh thread ran matmuls on every core
    after torch.set_num_threads(1) in the main thread (cpu/wall 1.96 vs 1.0), so two
    `--replica-threads 1` replicas each took both cores. The engine thread sets it again."""
    import torch

    calls = []
    monkeypatch.setattr(torch, "get_num_threads", lambda: 3)  # what the server was built with
    monkeypatch.setattr(torch, "set_num_threads",
                        lambda n: calls.append((threading.current_thread().name, n)))
    worker = EngineWorker(tiny_engine_factory())
    worker.start()
    worker.stop()
    assert calls == [("engine", 3)]
