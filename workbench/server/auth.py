"""API keys: with keys configured, every request but GET /health needs `Authorization: Bearer
<key>` (OpenAI's scheme, which its clients send), else a 401 in OpenAI's error shape; a
WebSocket upgrade too (/v1/ws), refused with the same 401 before the socket opens.

Keys come from a file (one per line; blank lines and `#` comments ignored) and/or the
WORKBENCH_API_KEYS environment variable (comma-separated), as vLLM takes `--api-key` /
VLLM_API_KEY. /health stays open so a load balancer's probe needs no secret. The check is ASGI
middleware, not a FastAPI dependency: it then covers every route (the OpenAPI document too)
and leaves the request's receive channel untouched, which the non-streaming handler watches to
notice a client that hung up.
"""

from __future__ import annotations

import hmac
import os
from collections.abc import Callable
from pathlib import Path

from workbench.server.protocol import error_response
from workbench.server.websocket import KEY_SUBPROTOCOL, deny_handshake

API_KEYS_ENV = "WORKBENCH_API_KEYS"
OPEN_PATHS = frozenset({"/health"})


def load_api_keys(key_file: str | os.PathLike | None = None,
                  environ: dict | None = None) -> frozenset[str]:
    """The keys from `key_file` and $WORKBENCH_API_KEYS; empty = no authentication."""
    keys: set[str] = set()
    if key_file is not None:
        path = Path(key_file).expanduser()
        try:
            lines = path.read_text().splitlines()
        except OSError as e:
            raise ValueError(f"api-key-file: cannot read {path}: {e.strerror}") from None
        from_file = {k for line in lines if (k := line.split("#", 1)[0].strip())}
        if not from_file:
            raise ValueError(f"api-key-file: {path} holds no key (one per line; # comments)")
        keys |= from_file
    env = (os.environ if environ is None else environ).get(API_KEYS_ENV, "")
    keys |= {k.strip() for k in env.split(",") if k.strip()}
    for key in keys:
        if any(c.isspace() for c in key) or not key.isprintable():
            raise ValueError("api keys: a key may not contain spaces or control characters")
    return frozenset(keys)


def bearer_token(scope) -> str | None:
    """The token of an `Authorization: Bearer <token>` header; None without one."""
    header = next((v for k, v in scope["headers"] if k == b"authorization"), None)
    if header is None:
        return None
    scheme, _, token = header.decode("latin-1").partition(" ")
    return token.strip() if scheme.lower() == "bearer" else None


class ApiKeyMiddleware:
    """Refuses HTTP requests and WebSocket upgrades without a configured key (401); `on_reject`
    counts them. A WebSocket may carry its key as the subprotocol
    `openai-insecure-api-key.<key>` instead (browsers cannot set headers on one; OpenAI's
    Realtime API takes it so). "Insecure" as OpenAI names it: the key is then in the page's
    JavaScript, so only a key meant for that page belongs there. Never a `?api_key=` query:
    URLs end up in access logs and browser history."""

    def __init__(self, app, keys: frozenset[str], on_reject: Callable[[], None]):
        self.app, self.keys, self.on_reject = app, keys, on_reject

    async def __call__(self, scope, receive, send):
        if (scope["type"] not in ("http", "websocket") or not self.keys
                or scope["path"] in OPEN_PATHS):
            return await self.app(scope, receive, send)
        has_header = any(k == b"authorization" for k, _ in scope["headers"])
        token = bearer_token(scope)
        if scope["type"] == "websocket" and not has_header:
            token = next((p.removeprefix(KEY_SUBPROTOCOL) for p in scope.get("subprotocols", [])
                          if p.startswith(KEY_SUBPROTOCOL)), None)
        # compare_digest against every key: the time taken says nothing about which is near.
        if token is not None and sum(
                hmac.compare_digest(token.encode(), k.encode()) for k in self.keys):
            return await self.app(scope, receive, send)
        self.on_reject()
        message = ("invalid API key" if has_header or token is not None
                   else "missing API key: send 'Authorization: Bearer <key>'")
        response = error_response(401, message, None, "authentication_error")
        response.headers["WWW-Authenticate"] = "Bearer"
        if scope["type"] == "websocket":  # refused at the handshake: the socket never opens
            return await deny_handshake(scope, receive, send, response)
        await response(scope, receive, send)
