"""A minimal OpenAI-compatible server: POST /v1/completions and /v1/chat/completions (SSE
streaming or not), the same streamed over a WebSocket at /v1/ws, GET /v1/models, GET /health,
GET /metrics. The serving issue grows it (auth, limits, replicas).

A client's mistake is a 400 with an OpenAI-style error body naming the field, never a 500; an
engine fault is a 500 for the requests it touched and never stops the server; an engine that
cannot serve at all makes /health and every completion a fast 503. Clients see the model by
its name (preset or directory basename), never a local path.

Every request runs `admit` below and, streamed, `chunks` (the chunk objects), whichever
transport carries it: `generate` answers over HTTP (whole or SSE), websocket.py over a
WebSocket. The request formats are protocol.py, the prompt of a chat is chat.py, what a request
passes before the engine takes it (queue bound, tokenization off the engine thread, context
check, rate limits, deadline) is admission.py, the response cache is response_cache.py,
reading a request's outputs (timing, counting, aborting when the client leaves or its deadline
passes) is relay.py, draining at shutdown is shutdown.py, and /metrics is metrics.py. The
request-size limit (body_limit.py) and API keys (auth.py) are middleware in front of every
route.
"""

from __future__ import annotations

import itertools
import json
import os
import sys
import time
from collections.abc import AsyncIterator, Callable, Iterable
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.openapi.utils import get_openapi
from fastapi.responses import JSONResponse, Response
from pydantic import ValidationError
from starlette.exceptions import HTTPException as StarletteHTTPException

from workbench.server import GRACEFUL_SHUTDOWN_S, WORKBENCH_OWNER
from workbench.server.admission import Admission, Limits, Refused, timeout_message
from workbench.server.auth import ApiKeyMiddleware, bearer_token
from workbench.server.body_limit import BodyLimitMiddleware
from workbench.server.chat import chat_prompt
from workbench.server.metrics import CONTENT_TYPE, ServerMetrics
from workbench.server.protocol import (
    CHAT,
    COMPLETION,
    GENERATION_ERRORS,
    ChatCompletionRequest,
    CompletionRequest,
    Dialect,
    SamplingRequest,
    drop_validation_422,
    error_response,
    usage_of,
)
from workbench.server.relay import Flight, FlightStream
from workbench.server.response_cache import Replay, ResponseCache, cache_key
from workbench.server.shutdown import CUT_GRACE_S, Drain, DrainingServer, DrainMiddleware
from workbench.server.websocket import Opened, add_websocket_route, parse_request_message
from workbench.server.worker import EngineFailure, EngineWorker


def served_name(model: str | os.PathLike) -> str:
    """What clients call the model: the preset name, else the checkpoint directory's name."""
    from workbench.models.tiny import PRESETS

    if str(model) in PRESETS:
        return str(model)
    return Path(model).expanduser().resolve().name or "model"


def _validation_error(exc: RequestValidationError | ValidationError) -> tuple[str, str]:
    """(message, param) of the first problem in a request body pydantic refused (FastAPI's
    error for an HTTP body, pydantic's own for a WebSocket message)."""
    first = exc.errors()[0]
    loc = [p for p in first["loc"] if p != "body"]
    if first["type"] == "json_invalid":  # loc is (body, character offset)
        return (f"body: not valid JSON ({first.get('ctx', {}).get('error', first['msg'])} "
                f"at character {loc[0] if loc else 0})", "body")
    field = ".".join(str(p) for p in loc) or "body"
    message = first["msg"].removeprefix("Value error, ")
    # A validator that named its field (the engine's own checks do) names only the last part.
    message = message.removeprefix(f"{loc[-1]}: ") if loc else message
    return f"{field}: {message}", field


@dataclass(frozen=True, slots=True)
class Started:
    """A request the engine accepted: what its response envelope says, and its outputs."""

    rid: str
    created: int  # unix time, OpenAI's `created`
    flight: Flight | Replay  # Replay: a response cache hit, read the same way


def create_app(engine, model_name: str | None = None, aliases: Iterable[str] = (),
               api_keys: frozenset[str] = frozenset(), limits: Limits | None = None,
               response_cache: int = 0) -> FastAPI:
    """`model_name` is what /v1/models lists; requests may also name the model by an alias
    (e.g. the path it was loaded from), which is accepted but never echoed. With `api_keys`,
    every route but /health needs one of them (server/auth.py). `limits`: request size, queue
    bound, rate limits, timeout (server/admission.py; the defaults limit only the size).
    `response_cache` > 0 keeps that many greedy answers for identical requests
    (server/response_cache.py)."""
    limits = limits or Limits()
    worker = EngineWorker(engine)
    # Read and written on the event loop only (admit, and Flight's reads): no lock.
    cache = ResponseCache(response_cache) if response_cache else None
    metrics = ServerMetrics(worker, cache)
    admission = Admission(engine, worker, limits)
    tokenizer = engine.tokenizer  # read once, before the engine thread starts (see chat.py)
    model_name = model_name or served_name(engine.model_path or "model")
    accepted = {model_name, *aliases}
    paths = sorted({a for a in accepted if os.sep in a}, key=len, reverse=True)
    ids = itertools.count()

    def redact(text: str) -> str:  # exception messages may carry the checkpoint path
        for p in paths:
            text = text.replace(p, model_name)
        return text

    def reject(reason: str, status: int, message: str, param: str | None = None,
               kind: str = "invalid_request_error", code: str | None = None,
               headers: dict[str, str] | None = None) -> JSONResponse:
        metrics.rejected(reason)
        return error_response(status, redact(message), param, kind, code, headers)

    def engine_failure(message: str) -> JSONResponse:
        return error_response(500, f"engine failure: {redact(message)}", None, "server_error")

    @asynccontextmanager
    async def lifespan(_app):
        worker.start()
        yield
        worker.stop()
        admission.close()

    app = FastAPI(title="workbench", lifespan=lifespan)
    app.state.worker = worker
    app.state.metrics = metrics
    app.state.drain = drain = Drain(on_reject=lambda: metrics.rejected("draining"))
    # The last added runs first: keys, then the size limit (a request without a key is
    # refused before its body is read), then the drain (a client without a key is told so).
    app.add_middleware(DrainMiddleware, drain=drain)
    app.add_middleware(BodyLimitMiddleware, max_bytes=limits.max_request_bytes,
                       on_reject=lambda: metrics.rejected("too_large"))
    app.add_middleware(ApiKeyMiddleware, keys=frozenset(api_keys),
                       on_reject=lambda: metrics.rejected("unauthorized"))

    @app.exception_handler(RequestValidationError)
    async def _bad_request(_req, exc: RequestValidationError):
        message, param = _validation_error(exc)
        return reject("invalid_request", 400, message, param)

    @app.exception_handler(StarletteHTTPException)
    async def _http_error(_req, exc: StarletteHTTPException):
        response = error_response(exc.status_code, str(exc.detail), None)
        response.headers.update(exc.headers or {})  # e.g. a 405's Allow (RFC 9110 needs it)
        return response

    @app.get("/health")
    async def health():
        if (reason := worker.dead) is not None:
            return JSONResponse(status_code=503, content={"status": "error",
                                                          "reason": redact(reason)})
        if drain.draining:  # load balancers: route elsewhere (server/shutdown.py)
            return JSONResponse(status_code=503, content={"status": "draining"})
        return {"status": "ok"}

    @app.get("/metrics")
    async def prometheus_metrics():
        return Response(metrics.exposition(), media_type=CONTENT_TYPE)

    @app.get("/v1/models")
    async def models():
        return {"object": "list", "data": [{"id": model_name, "object": "model",
                                            "owned_by": WORKBENCH_OWNER}]}

    def prompt_of(body: SamplingRequest, dialect: Dialect) -> Callable[[], str | list[int]]:
        if dialect.chat:
            return lambda: chat_prompt(tokenizer, [m.model_dump() for m in body.messages])
        return lambda: body.prompt

    @app.post("/v1/completions", responses=GENERATION_ERRORS)
    async def completions(body: CompletionRequest, request: Request):
        return await generate(body, request, COMPLETION)

    @app.post("/v1/chat/completions", responses=GENERATION_ERRORS)
    async def chat_completions(body: ChatCompletionRequest, request: Request):
        return await generate(body, request, CHAT)

    def client_of(scope) -> str:
        """Whom the rate limits count against: the API key when keys are configured (the
        middleware has checked it), else the client's address."""
        if api_keys:
            return "key:" + (bearer_token(scope) or "")
        client = scope.get("client")
        return "addr:" + (client[0] if client else "unknown")

    async def admit(body: SamplingRequest, dialect: Dialect, scope) -> Started | JSONResponse:
        """Admit a request (HTTP or WebSocket; admission.py): started, or the refusal as an
        OpenAI error response. A greedy request answered before is answered from the
        response cache once its prompt is tokenized (keyed by its token ids)."""
        arrival = time.monotonic()
        if body.model is not None and body.model not in accepted:
            return reject("model_not_found", 404, f"model: {body.model!r} is not served here; "
                                                  f"available: {model_name!r}", "model")
        rid = f"{dialect.id_prefix}-{next(ids)}"
        key = None

        def lookup(prompt_ids: list[int], params) -> object | None:
            nonlocal key
            key = None if cache is None else cache_key(model_name, prompt_ids, params)
            if key is None:
                return None
            hit = cache.get(key)
            metrics.response_cache_lookup(hit is not None)
            return hit

        try:
            ticket = await admission.admit(rid, body, prompt_of(body, dialect),
                                           dialect.prompt_field, client_of(scope), lookup)
        except Refused as r:
            return reject(r.reason, r.status, r.message, r.param, r.kind, r.code, r.headers)
        if ticket.hit is not None:  # answered without the engine
            return Started(rid, int(time.time()), Replay(ticket.hit, metrics.answered))
        store = None if key is None else lambda out: cache.put(key, out)
        flight = Flight(worker, rid, ticket.sink, metrics, arrival, ticket.deadline,
                        ticket.on_end, store)
        drain.track(flight)  # cut at the shutdown deadline
        return Started(rid, int(time.time()), flight)

    def cut(flight: Flight, out) -> bool:
        """Whether `out` ends a request the server aborted (Flight.cut: its deadline, or the
        shutdown's): an error to its client, not an answer with finish_reason "abort"."""
        return out.finished and out.finish_reason == "abort" and flight.cut_reason is not None

    def cut_error(flight: Flight) -> dict:
        if flight.timed_out:
            message, code = timeout_message(limits.request_timeout_s or 0), "timeout"
        else:
            message, code = flight.cut_reason, None
        return {"error": {"message": message, "type": "server_error", "param": None,
                          "code": code}}

    def envelope(s: Started, obj: str, choices: list, usage: dict | None) -> dict:
        return {"id": s.rid, "object": obj, "created": s.created, "model": model_name,
                "choices": choices, "usage": usage}

    async def chunks(s: Started, dialect: Dialect, include_usage: bool) -> AsyncIterator[dict]:
        """A streamed answer as OpenAI's chunk objects, for SSE and WebSocket alike. A request
        that fails mid-stream ends with one {"error": ...} object instead (the status line
        is long sent, so the error travels in the stream, as OpenAI and vLLM do)."""
        if dialect.chat:  # OpenAI's first chat chunk names the role, before any token
            yield envelope(s, dialect.chunk_object, [dialect.delta("", None, role=True)], None)
        out = None
        while not s.flight.over:
            out = await s.flight.next()
            if isinstance(out, EngineFailure):
                yield {"error": {"message": f"engine failure: {redact(out.message)}",
                                 "type": "server_error", "param": None, "code": None}}
                return
            if cut(s.flight, out):
                if out.new_text:  # text the abort released is still the client's
                    yield envelope(s, dialect.chunk_object, [dialect.delta(out.new_text, None)],
                                   None)
                yield cut_error(s.flight)
                return
            finish = out.finish_reason if out.finished else None
            yield envelope(s, dialect.chunk_object, [dialect.delta(out.new_text, finish)], None)
        if include_usage:
            yield envelope(s, dialect.chunk_object, [], usage_of(out))

    async def generate(body: SamplingRequest, request: Request, dialect: Dialect):
        """Answer whole or as SSE chunks."""
        started = await admit(body, dialect, request.scope)
        if isinstance(started, JSONResponse):
            return started
        flight = started.flight
        if not body.stream:
            out = await flight.final_unless_gone(request.receive)
            if out is None:
                return Response(status_code=499)  # nobody is left to read it
            if isinstance(out, EngineFailure):
                return engine_failure(out.message)
            if cut(flight, out):  # what it generated is dropped, as with any error status
                status = 504 if flight.timed_out else 503
                return JSONResponse(status_code=status, content=cut_error(flight))
            return envelope(started, dialect.object,
                            [dialect.choice(out.text, out.finish_reason)], usage_of(out))

        async def events():
            # An error ends the stream as an error event (OpenAI's clients raise it as an
            # APIError; a finish reason would pass for a normal end), then [DONE] for plain SSE
            # readers, as vLLM ends its streams.
            async for chunk in chunks(started, dialect, body.include_usage):
                yield f"data: {json.dumps(chunk)}\n\n"
            yield "data: [DONE]\n\n"

        return FlightStream(flight, events(), media_type="text/event-stream")

    async def open_websocket_request(text: str | bytes, scope) -> Opened:
        """One request message of /v1/ws (websocket.py): refused, or started and streaming."""
        try:
            message = parse_request_message(text)
            body_type = ChatCompletionRequest if message.dialect.chat else CompletionRequest
            body = body_type.model_validate(message.body)
        except ValidationError as e:
            return reject("invalid_request", 400, *_validation_error(e))
        except ValueError as e:  # parse_request_message names the field
            return reject("invalid_request", 400, str(e), str(e).partition(":")[0])
        started = await admit(body, message.dialect, scope)
        if isinstance(started, JSONResponse):
            return started
        return started.flight, chunks(started, message.dialect, True), message.keep_open

    add_websocket_route(app, open_websocket_request, drain.closing)

    def openapi() -> dict:
        if app.openapi_schema is None:
            app.openapi_schema = drop_validation_422(get_openapi(
                title=app.title, version=app.version, routes=app.routes))
        return app.openapi_schema

    app.openapi = openapi

    return app


def listen_socket(host: str, port: int, allow_zero: bool = False):
    """Bind (not yet listen) before the model loads: a bad host or port is a one-line user
    error at once, and the port stays ours while the model loads. `allow_zero` lets port 0
    pick a free port (in-process servers); `workbench serve` refuses it, since a user could
    not tell where the server went. The bound port is `sock.getsockname()[1]`."""
    import errno
    import socket

    low = 0 if allow_zero else 1
    if isinstance(port, bool) or not isinstance(port, int) or not low <= port <= 65535:
        raise ValueError(f"port: must be in {low}..65535, got {port!r}")
    if not host or not host.strip():
        raise ValueError("host: must be an IP address or host name, got an empty string")
    try:
        family, kind, proto, _, addr = socket.getaddrinfo(
            host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)[0]
    except (socket.gaierror, UnicodeError) as e:
        raise ValueError(f"host: cannot resolve {host!r} ({e})") from None
    sock = socket.socket(family, kind, proto)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind(addr)
    except OSError as e:
        sock.close()
        if e.errno in (errno.EADDRINUSE, errno.EACCES):
            raise ValueError(f"port: cannot listen on {host}:{port}: {e.strerror}") from None
        raise ValueError(f"host: cannot listen on {host}:{port}: {e.strerror}") from None
    sock.set_inheritable(True)
    return sock


def serve(model: str, host: str = "127.0.0.1", port: int = 8000, engine_config=None,
          log_level: str = "warning", graceful_shutdown_s: float = GRACEFUL_SHUTDOWN_S,
          api_keys: frozenset[str] = frozenset(), limits: Limits | None = None,
          response_cache: int = 0) -> None:
    import uvicorn

    from workbench.engine import EngineConfig, LLMEngine

    if not graceful_shutdown_s >= 0:  # also NaN
        raise ValueError(f"shutdown-timeout: must be >= 0 seconds, got {graceful_shutdown_s}")
    if isinstance(response_cache, bool) or not isinstance(response_cache, int) \
            or response_cache < 0:
        raise ValueError(f"response-cache: must be a number of entries >= 0 (0 = off), "
                         f"got {response_cache!r}")
    sock = listen_socket(host, port)
    try:
        engine = LLMEngine.from_pretrained(model, engine_config or EngineConfig())
        print(engine.memory_report(), file=sys.stderr, flush=True)  # as vLLM logs it at start
        if api_keys:
            print(f"API keys: {len(api_keys)} configured; every route but /health needs one",
                  file=sys.stderr, flush=True)
        aliases = {str(model)}
        if engine.model_path is not None:
            aliases |= {str(engine.model_path), str(Path(engine.model_path).resolve())}
        app = create_app(engine, served_name(model), aliases, api_keys, limits, response_cache)
        # uvicorn's own graceful timeout comes after the drain, when nothing should be left.
        # A WebSocket message over the size limit is refused by the protocol: close 1009.
        config = uvicorn.Config(app, host=host, port=port, log_level=log_level,
                                timeout_graceful_shutdown=CUT_GRACE_S,
                                ws_max_size=(limits or Limits()).max_request_bytes)
        server = DrainingServer(config, app.state.drain, graceful_shutdown_s)
        server.run(sockets=[sock])
    finally:
        sock.close()
    if server.interrupted:  # Ctrl-C: drained, now end as an interrupt (the CLI's 130)
        raise KeyboardInterrupt
