"""The server's engine thread: a failing step reaches every waiting client; nothing hangs."""

from __future__ import annotations

import asyncio

from workbench.engine import SamplingParams
from workbench.server.worker import EngineFailure, EngineWorker


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
