"""Runs the engine on its own thread and hands each request's outputs to asyncio consumers.

The engine is not thread-safe: only this thread touches it. HTTP handlers submit and abort
through a queue; outputs go back through each request's asyncio.Queue on the server's loop.
"""

from __future__ import annotations

import asyncio
import queue
import threading
from dataclasses import dataclass


@dataclass(slots=True)
class EngineFailure:
    """Delivered instead of an output when the engine's step raised: a server fault (500)."""

    message: str


@dataclass(slots=True)
class _Submit:
    request_id: str
    prompt: object
    params: object
    sink: asyncio.Queue
    loop: asyncio.AbstractEventLoop
    accepted: threading.Event
    error: list


class EngineWorker:
    def __init__(self, engine):
        self.engine = engine
        self._inbox: queue.Queue = queue.Queue()
        self._sinks: dict[str, tuple[asyncio.Queue, asyncio.AbstractEventLoop]] = {}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="engine", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        self._inbox.put(None)
        self._thread.join(timeout=10)

    async def submit(self, request_id: str, prompt, params) -> asyncio.Queue:
        """Queue a request; raises the engine's ValueError if it is rejected."""
        sink: asyncio.Queue = asyncio.Queue()
        msg = _Submit(request_id, prompt, params, sink, asyncio.get_running_loop(),
                      threading.Event(), [])
        self._inbox.put(msg)
        await asyncio.get_running_loop().run_in_executor(None, msg.accepted.wait)
        if msg.error:
            raise msg.error[0]
        return sink

    def abort(self, request_id: str) -> None:
        self._inbox.put(("abort", request_id))

    def _run(self) -> None:
        eng = self.engine
        while not self._stop.is_set():
            try:  # idle: wait for work; busy: just drain what has arrived since the last step
                item = self._inbox.get_nowait() if eng.has_unfinished() else self._inbox.get(
                    timeout=0.5)
                while True:
                    self._handle(item)
                    item = self._inbox.get_nowait()
            except queue.Empty:
                pass
            if eng.has_unfinished():
                try:
                    outs = eng.step()
                except Exception as e:  # noqa: BLE001 - a failed step must not hang clients
                    self._fail_all(e)
                    continue
                for out in outs:
                    self._deliver(out)

    def _fail_all(self, error: Exception) -> None:
        """Abort everything in flight and hand each waiting client the error."""
        for request_id, (sink, loop) in list(self._sinks.items()):
            self.engine.abort(request_id)
            loop.call_soon_threadsafe(sink.put_nowait, EngineFailure(str(error)))
        self._sinks.clear()

    def _handle(self, item) -> None:
        if item is None:
            return
        if isinstance(item, tuple):
            out = self.engine.abort(item[1])
            if out is not None:
                self._deliver(out)
            return
        try:
            self.engine.add_request(item.request_id, item.prompt, item.params)
            self._sinks[item.request_id] = (item.sink, item.loop)
        except ValueError as e:
            item.error.append(e)
        item.accepted.set()

    def _deliver(self, out) -> None:
        target = self._sinks.get(out.request_id)
        if target is None:
            return
        if out.finished:
            del self._sinks[out.request_id]
        sink, loop = target
        loop.call_soon_threadsafe(sink.put_nowait, out)
