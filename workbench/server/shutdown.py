"""Graceful shutdown: on SIGTERM the server stops admitting, lets the requests in flight finish
until a deadline (`workbench serve --shutdown-timeout S`), ends the rest cleanly, and exits 0.

What uvicorn does alone falls short: it stops listening at once (a client that arrives gets a
refused connection, not an answer), closes every WebSocket at once (1012), lets HTTP responses
run until its timeout and then cancels them, so a stream just stops mid-body (no error event,
no [DONE]) and a waiting client gets a dropped connection; and it re-raises SIGTERM when done,
so the process ends by the signal (status 143), not with 0.

Here, in order:
1. draining: the signal is noticed at the server's next tick (within 0.1 s; nothing is done
   inside the signal handler itself). /health answers 503 {"status": "draining"}, so a load
   balancer stops routing here; every other request but /metrics, and every WebSocket upgrade,
   gets an OpenAI-shaped 503 (with `Connection: close`, which also ends kept-alive
   connections), counted as requests_rejected_total{reason="draining"}. The socket keeps
   listening meanwhile, so late clients get that answer rather than a refused connection.
2. the requests in flight (HTTP, or a WebSocket's current request) run on until they finish
   or the deadline; a WebSocket idle between requests is closed at once (1001).
3. at the deadline what is still running is aborted (relay.Flight.cut), which frees its KV
   blocks and counts it as an abort; its client gets a proper end: an SSE stream an error
   event (no [DONE]), a WebSocket an error message and a 1001 close, a non-streaming request
   an OpenAI-shaped 503. A request that reaches the engine after the deadline is cut at once.
4. then uvicorn's own shutdown (nothing is left to wait for; CUT_GRACE_S bounds any straggler),
   the engine thread stops, and the process exits 0.
A second signal skips the wait (uvicorn's own shutdown, then the signal ends the process).
SIGINT (Ctrl-C) drains the same way, then exits as an interrupt (the CLI's 130).
"""

from __future__ import annotations

import asyncio
import logging
import signal
import weakref
from collections.abc import Callable

import uvicorn

from workbench.server.protocol import error_response
from workbench.server.websocket import deny_handshake

log = logging.getLogger("workbench.server")

ALWAYS_OPEN = frozenset({"/health", "/metrics"})  # answered while draining, and not waited for
CUT_REASON = "server shutting down: the request was aborted at the shutdown deadline"
CUT_GRACE_S = 5.0  # after the cut, for handlers to send their clients the end
_POLL_S = 0.05


class Drain:
    """The server's draining state, shared by the middleware, the app and the server."""

    def __init__(self, on_reject: Callable[[], None]):
        self.on_reject = on_reject  # counts a refusal
        self.draining = False
        self.closing = asyncio.Event()  # set with `draining`: idle WebSockets close
        self.active = 0  # requests being handled (but ALWAYS_OPEN), WebSockets included
        self.cut_reason: str | None = None  # set at the deadline
        self._flights: weakref.WeakSet = weakref.WeakSet()  # relay.Flight, alive while read

    def track(self, flight) -> None:
        """A request the engine accepted: cut at the deadline (at once if that has passed)."""
        self._flights.add(flight)
        if self.cut_reason is not None:
            flight.cut(self.cut_reason)

    def begin(self) -> None:
        self.draining = True
        self.closing.set()

    def cut_all(self, reason: str = CUT_REASON) -> int:
        """Abort every request still running; how many there were."""
        self.cut_reason = reason
        running = [f for f in self._flights if not f.over]
        for flight in running:
            flight.cut(reason)
        return len(running)


class DrainMiddleware:
    """Refuses new requests while draining (503) and counts the ones being handled."""

    def __init__(self, app, drain: Drain):
        self.app, self.drain = app, drain

    async def __call__(self, scope, receive, send):
        if scope["type"] not in ("http", "websocket") or scope["path"] in ALWAYS_OPEN:
            return await self.app(scope, receive, send)
        if self.drain.draining:
            self.drain.on_reject()
            response = error_response(503, "server shutting down: not admitting new requests",
                                      None, "server_error")
            if scope["type"] == "websocket":
                return await deny_handshake(scope, receive, send, response)
            response.headers["Connection"] = "close"
            return await response(scope, receive, send)
        self.drain.active += 1
        try:
            await self.app(scope, receive, send)
        finally:
            self.drain.active -= 1


class DrainingServer(uvicorn.Server):
    """uvicorn's server, with the drain above run before its own shutdown."""

    def __init__(self, config: uvicorn.Config, drain: Drain, timeout_s: float):
        super().__init__(config)
        self.drain, self.timeout_s = drain, timeout_s
        self.interrupted = False  # the drain was asked for by SIGINT: exit as an interrupt
        self._asked = False
        self._task: asyncio.Task | None = None

    def handle_exit(self, sig: int, frame) -> None:
        if self._asked or self.should_exit:  # a second signal: stop waiting
            return super().handle_exit(sig, frame)
        # Only flags here: a signal handler runs between any two bytecodes of the loop.
        self.interrupted = sig == signal.SIGINT
        self._asked = True

    async def on_tick(self, counter: int) -> bool:
        if self._asked and self._task is None:
            self._task = asyncio.ensure_future(self._drain_then_exit())
        return await super().on_tick(counter)

    async def _drain_then_exit(self) -> None:
        drain, loop = self.drain, asyncio.get_running_loop()
        drain.begin()
        log.warning("draining: %d request(s) in flight get up to %.1f s", drain.active,
                    self.timeout_s)
        deadline = loop.time() + self.timeout_s
        while drain.active and loop.time() < deadline:
            await asyncio.sleep(_POLL_S)
        if drain.active:
            log.warning("shutdown deadline: aborting %d running request(s)", drain.cut_all())
            deadline = loop.time() + CUT_GRACE_S
            while drain.active and loop.time() < deadline:
                await asyncio.sleep(_POLL_S)
        self.should_exit = True
