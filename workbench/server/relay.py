"""One accepted request on its way to its client (`Flight`): its outputs are read from the
worker here and nowhere else, so this is where they are timed and counted for /metrics, and
where a request whose client left is aborted, streaming or not.

A client that leaves is noticed by the handler (a failed send, or the connection closing while
a non-streaming answer is computed); `abandon` then aborts the request, which frees its KV
blocks at once, and reads its last output in the background, so that what it generated is
counted (see workbench/server/metrics.py for what each request counts).

A request with a deadline (`--request-timeout`, admission.py) that is still running when it
passes is aborted the same way; its last output then says `timed_out`, and it counts as
finished_reason timeout. When it ends, however it ends, `on_end` hears its token counts (the
rate limiter gives back what it did not use).
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable

from starlette.responses import StreamingResponse

from workbench.server.metrics import ServerMetrics
from workbench.server.worker import EngineFailure, EngineWorker

_draining: set[asyncio.Task] = set()  # the loop keeps only weak references to tasks


class Flight:
    def __init__(self, worker: EngineWorker, request_id: str, sink: asyncio.Queue,
                 metrics: ServerMetrics, arrival: float, deadline: float | None = None,
                 on_end: Callable[[int, int], None] | None = None,
                 on_finished: Callable[[object], None] | None = None):
        self.worker, self.request_id, self.sink = worker, request_id, sink
        self.metrics, self.arrival = metrics, arrival  # arrival: time.monotonic() at the handler
        self.on_end = on_end  # (prompt tokens, output tokens), once, when it is over
        self.on_finished = on_finished  # gets the finished output (the response cache's store)
        self.over = False  # a finished output or an EngineFailure has been read
        self.cut_reason: str | None = None  # why the server aborted it (see `cut`)
        self.timed_out = False  # it ended because its deadline cut it
        self._last = None  # the latest output read
        self._last_time: float | None = None  # when the latest output with tokens was read
        self._timer = None if deadline is None else asyncio.get_running_loop().call_at(
            deadline, self.cut, "timeout")  # deadline: loop time

    async def next(self):
        """The next output (a RequestOutput), or the EngineFailure that ended the request."""
        item = await self.sink.get()
        self._count(item, connected=True)
        return item

    async def final_unless_gone(self, receive):
        """The finished output (or EngineFailure) of a non-streaming request; None when the
        client closed the connection first (the request is then abandoned). Nothing is sent
        until the end, so the connection is watched meanwhile: a client that leaves frees its
        slot now instead of when max_tokens runs out."""
        result = asyncio.ensure_future(self._final())
        gone = asyncio.ensure_future(_disconnected(receive))
        try:
            await asyncio.wait({result, gone}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            gone.cancel()
            if not result.done():
                result.cancel()  # before abandon: the cancelled read consumes no output
                self.abandon()
        return result.result() if result.done() else None

    async def _final(self):
        while True:
            item = await self.next()
            if self.over:
                return item

    def cut(self, reason: str) -> None:
        """The server ends the request ("timeout": its deadline; "shutdown": the drain's
        deadline): abort it; the handler that still reads it gets the aborted output and tells
        its client `reason`."""
        if self.over:
            return
        self.cut_reason = reason
        self.worker.abort(self.request_id)

    def abandon(self) -> None:
        """The client is gone (or the response ended early): abort the request and count it
        when its last output arrives. Does nothing once the request is over."""
        if self.over:
            return
        self.worker.abort(self.request_id)
        task = asyncio.ensure_future(self._drain())
        _draining.add(task)
        task.add_done_callback(_draining.discard)

    async def _drain(self) -> None:
        # Ends: the worker answers an abort with the finished output (or already delivered
        # one), or fails every sink if its thread ends; at server shutdown the task is cancelled.
        while not self.over:
            self._count(await self.sink.get(), connected=False)

    def _count(self, item, connected: bool) -> None:
        now, m = time.monotonic(), self.metrics
        if isinstance(item, EngineFailure):
            last = self._last
            self._end("error", len(last.prompt_token_ids) if last else 0,
                      len(last.token_ids) if last else 0)
            return
        self._last = item
        if connected and item.new_token_ids:
            if self._last_time is None:
                m.ttft.observe(now - self.arrival)
            else:
                m.itl.observe(now - self._last_time)
            self._last_time = now
        if item.finished:
            # An abort after the deadline passed is the timeout's (a client that left at the
            # same moment would have aborted it too); a request that finished first did not
            # time out.
            self.timed_out = self.cut_reason == "timeout" and item.finish_reason == "abort"
            reason = "timeout" if self.timed_out else item.finish_reason
            self._end(reason, len(item.prompt_token_ids), len(item.token_ids))
            if connected and item.finish_reason in ("stop", "length"):
                m.e2e.observe(now - self.arrival)
            if self.on_finished is not None:
                self.on_finished(item)

    def _end(self, reason: str, prompt_tokens: int, output_tokens: int) -> None:
        self.over = True
        if self._timer is not None:
            self._timer.cancel()
        self.metrics.ended(reason, prompt_tokens, output_tokens)
        if self.on_end is not None:
            self.on_end(prompt_tokens, output_tokens)


class FlightStream(StreamingResponse):
    """A streamed response that abandons its request however the response ends early: a
    failed send mid-stream, or a client gone before the first byte (when the body generator
    never starts, so a `finally` inside it would never run)."""

    def __init__(self, flight: Flight, content, **kwargs):
        super().__init__(content, **kwargs)
        self.flight = flight

    async def __call__(self, scope, receive, send) -> None:
        try:
            await super().__call__(scope, receive, send)
        finally:
            self.flight.abandon()


async def _disconnected(receive) -> None:
    """Returns when the client closes the connection (the body has been read already)."""
    while (await receive())["type"] != "http.disconnect":
        pass
