"""The request-size limit (`workbench serve --max-request-bytes`): a body larger than the limit
is refused with an OpenAI-shaped 413 before anything parses it.

The default, 2,000,000 bytes: room for a prompt far beyond any context the engine serves, and
no more (vLLM sets no limit). A declared Content-Length over the limit is refused before a byte
of the body is read; a chunked body (no length declared) is counted as it arrives and refused
once it passes the limit, so neither can make the server hold more than the limit.

ASGI middleware, like auth.py and for the same reason: it covers every route, and the request's
`receive` channel keeps working after it. The body is read here in full (every route that has
one parses all of it anyway) and handed to the app as one message; after that, `receive` is
the server's own, so the non-streaming handler still hears the client hang up.
"""

from __future__ import annotations

from collections.abc import Callable

from workbench.server.protocol import error_response

DEFAULT_MAX_REQUEST_BYTES = 2_000_000


class BodyLimitMiddleware:
    """Refuses HTTP bodies over `max_bytes` (413); `on_reject` counts them."""

    def __init__(self, app, max_bytes: int, on_reject: Callable[[], None]):
        self.app, self.max_bytes, self.on_reject = app, max_bytes, on_reject

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        declared = next((v for k, v in scope["headers"] if k == b"content-length"), None)
        if declared is not None and declared.isdigit() and int(declared) > self.max_bytes:
            return await self._refuse(scope, receive, send, f"{int(declared)} bytes: ")
        chunks, size = [], 0
        while True:
            message = await receive()
            if message["type"] != "http.request":  # the client left mid-body: nobody to answer
                return
            chunk = message.get("body", b"")
            size += len(chunk)
            if size > self.max_bytes:
                return await self._refuse(scope, receive, send, "")
            chunks.append(chunk)
            if not message.get("more_body", False):
                break
        body = b"".join(chunks)
        replayed = False

        async def replay():
            nonlocal replayed
            if not replayed:
                replayed = True
                return {"type": "http.request", "body": body, "more_body": False}
            return await receive()  # after the body: the disconnect, when it comes

        await self.app(scope, replay, send)

    async def _refuse(self, scope, receive, send, size: str) -> None:
        self.on_reject()
        response = error_response(
            413, f"body: {size}over this server's limit of {self.max_bytes} bytes "
                 "(workbench serve --max-request-bytes)", "body")
        await response(scope, receive, send)
