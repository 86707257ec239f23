"""Streaming over a WebSocket: /v1/ws takes the body of /v1/completions or /v1/chat/completions
as one JSON message and answers with the chunks an SSE stream would carry.

The exchange (one request at a time per socket):
- the client sends one JSON object (a text message; a binary one is read as UTF-8 JSON too).
  A body with `messages` is a chat completion, any other a completion: the two bodies differ
  exactly there, so no extra field is needed. `stream` and `stream_options` are ignored (a
  WebSocket always streams, and always ends with usage). One workbench field is added:
  `keep_open` (default false), below.
- the server answers one JSON message per chunk, the same objects as the SSE stream of that
  endpoint (chat's first names the role), then one final chunk with `choices: []` and `usage`
  (as `stream_options.include_usage` gives over SSE). There is no `[DONE]`: the usage message
  is the last of a request. Then it closes the socket normally (1000), unless the request said
  `"keep_open": true`: the socket then waits for the next request.
- refused or failed requests get one message `{"error": {...}}` (OpenAI's error body, naming
  the field, exactly as the HTTP endpoints would answer), then a close whose code says why:
  4000 + the HTTP status the same request would have got (4400 bad body or field, 4404
  unknown model, 4500 engine failure, 4503 engine unavailable), 1008 (policy violation) for
  a second request sent while one is still streaming, 1001 (going away) for a request the
  server aborted because it is shutting down (server/shutdown.py).
- a client that disconnects (or closes) mid-stream aborts its request, which frees its KV
  blocks at once (relay.py's Flight.abandon, the same path as an SSE client that leaves).

Refusals before the socket is open are HTTP responses to the upgrade request, sent through
ASGI's websocket.http.response extension (uvicorn has it): 401 without a valid API key
(server/auth.py; a browser, which cannot set headers on a WebSocket, may offer its key as the
subprotocol `openai-insecure-api-key.<key>` as OpenAI's Realtime API takes it) and 503 while
the server drains. The server accepts with the first subprotocol the client offered that does
not carry a key (browsers require the answer to name one they offered), else with none.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass

from fastapi import FastAPI, WebSocket
from starlette.responses import Response
from starlette.websockets import WebSocketDisconnect

from workbench.server.protocol import CHAT, COMPLETION, Dialect

PATH = "/v1/ws"
KEY_SUBPROTOCOL = "openai-insecure-api-key."  # OpenAI's Realtime API's browser convention
CLOSE_NORMAL = 1000
CLOSE_GOING_AWAY = 1001  # the server shuts down
CLOSE_POLICY = 1008  # a request while one is streaming
CLOSE_HTTP_BASE = 4000  # + the HTTP status of the same refusal (private-use range 4000-4999)
_REASON_BYTES = 123  # the most a close frame's reason may carry (RFC 6455 5.5.1)


@dataclass(frozen=True, slots=True)
class RequestMessage:
    body: dict  # the /v1/completions or /v1/chat/completions body
    dialect: Dialect
    keep_open: bool


def parse_request_message(text: str | bytes) -> RequestMessage:
    """Raises ValueError('field: problem') for a message that is no request body."""
    if isinstance(text, bytes):
        try:
            text = text.decode("utf-8")
        except UnicodeDecodeError as e:
            raise ValueError(f"body: not valid UTF-8 ({e.reason} at byte {e.start})") from None
    try:
        raw = json.loads(text)
    except json.JSONDecodeError as e:
        raise ValueError(f"body: not valid JSON ({e.msg} at character {e.pos})") from None
    if not isinstance(raw, dict):
        raise ValueError("body: must be a JSON object, the body of /v1/completions or "
                         "/v1/chat/completions")
    keep_open = raw.pop("keep_open", False)
    if not isinstance(keep_open, bool):
        raise ValueError(f"keep_open: must be true or false, got {keep_open!r}")
    return RequestMessage(raw, CHAT if "messages" in raw else COMPLETION, keep_open)


def chosen_subprotocol(offered: list[str]) -> str | None:
    return next((p for p in offered if not p.startswith(KEY_SUBPROTOCOL)), None)


async def deny_handshake(scope, receive, send, response: Response) -> None:
    """Refuse a WebSocket upgrade with an HTTP response (`response`, e.g. a 401 error body).
    A server without the websocket.http.response extension can only close before accepting,
    which its clients see as a bare 403."""
    if "websocket.http.response" in scope.get("extensions", {}):
        await response(scope, receive, send)  # Starlette prefixes the message types for it
    else:
        await send({"type": "websocket.close", "code": CLOSE_POLICY})


# What app.py's `open_websocket_request` answers a message with: the refusal, or the accepted
# request's flight (relay.Flight: .abandon(), .cut_reason) and its chunk objects.
Opened = Response | tuple[object, AsyncIterator[dict], bool]


def add_websocket_route(app: FastAPI,
                        open_request: Callable[[str | bytes, dict], Awaitable[Opened]],
                        closing: asyncio.Event | None = None) -> None:
    """`closing`, when given, is set once the server starts shutting down: a socket between
    requests is then closed (1001) instead of taking another (server/shutdown.py)."""

    @app.websocket(PATH)
    async def websocket_stream(ws: WebSocket):
        await _Session(ws, open_request, closing).run()


class _Gone(Exception):
    """The client disconnected."""


class _Session:
    def __init__(self, ws: WebSocket, open_request, closing):
        self.ws, self.open_request, self.closing = ws, open_request, closing

    async def run(self) -> None:
        ws = self.ws
        await ws.accept(subprotocol=chosen_subprotocol(ws.scope.get("subprotocols", [])))
        # The client's next message is always being awaited, also while a request streams:
        # that is how a client that leaves mid-stream is noticed before a send fails.
        incoming = asyncio.ensure_future(ws.receive())
        try:
            while True:
                message = await self._next_message(incoming)
                if message is None:  # the server shuts down while the socket is idle
                    return await self._close(CLOSE_GOING_AWAY, "server shutting down")
                if message["type"] == "websocket.disconnect":
                    return
                raw = message.get("text")
                opened = await self.open_request(message.get("bytes") if raw is None else raw,
                                                ws.scope)
                if isinstance(opened, Response):
                    return await self._fail(CLOSE_HTTP_BASE + opened.status_code,
                                            opened.body.decode())
                flight, chunks, keep_open = opened
                incoming = asyncio.ensure_future(ws.receive())
                code = await self._relay(flight, chunks, incoming)
                if code is not None:
                    return await self._close(code, "request ended early")
                if not keep_open:
                    return await self._close(CLOSE_NORMAL, "")
        except _Gone:
            return
        finally:
            incoming.cancel()

    async def _next_message(self, incoming: asyncio.Future) -> dict | None:
        """The client's next message; None once the server is shutting down."""
        if self.closing is None:
            return await incoming
        if self.closing.is_set():
            return None
        closing = asyncio.ensure_future(self.closing.wait())
        try:
            await asyncio.wait({incoming, closing}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            closing.cancel()
        return None if self.closing.is_set() else incoming.result()

    async def _relay(self, flight, chunks: AsyncIterator[dict], incoming) -> int | None:
        """Send the chunks; None when the request completed, else the close code."""
        sending = asyncio.ensure_future(self._send_all(flight, chunks))
        try:
            await asyncio.wait({sending, incoming}, return_when=asyncio.FIRST_COMPLETED)
            if sending.done():
                return sending.result()
            sending.cancel()  # the client spoke mid-stream: it left, or asked too early
            await asyncio.wait({sending})
            if incoming.result()["type"] == "websocket.disconnect":
                raise _Gone
            await self._fail(CLOSE_POLICY, json.dumps({"error": {
                "message": "one request at a time: send the next after the message with "
                           "`usage`", "type": "invalid_request_error", "param": None,
                "code": None}}))
            raise _Gone  # closed
        finally:
            flight.abandon()  # frees the request's KV blocks unless it completed

    async def _send_all(self, flight, chunks: AsyncIterator[dict]) -> int | None:
        async for chunk in chunks:
            await self._send(json.dumps(chunk))
            if "error" in chunk:
                return CLOSE_GOING_AWAY if flight.cut_reason else CLOSE_HTTP_BASE + 500
        return None

    async def _send(self, text: str) -> None:
        try:
            await self.ws.send_text(text)
        except WebSocketDisconnect:
            raise _Gone from None

    async def _fail(self, code: int, error_body: str) -> None:
        await self._send(error_body)
        reason = json.loads(error_body)["error"]["message"]
        await self._close(code, reason)

    async def _close(self, code: int, reason: str) -> None:
        # The reason is for logs; the error message before the close is the full story.
        reason = reason.encode()[:_REASON_BYTES].decode("utf-8", "ignore")
        with contextlib.suppress(WebSocketDisconnect, RuntimeError):  # the client closed first
            await self.ws.close(code, reason)
