"""The gateway: one OpenAI-compatible endpoint in front of engine replica processes.

`workbench serve --replicas N --lb POLICY` and `workbench serve --model A --model B [--router
FILE]` run this instead of the in-process server: every model gets N replica processes
(workbench/server/replica.py, each the same app as `workbench serve` on a loopback port), and
the gateway proxies /v1/completions and /v1/chat/completions to them with httpx: whole
responses as they are, SSE streams chunk by chunk. A client that leaves closes the upstream
connection, so the replica aborts the request and frees its KV blocks at once.

Backends are {model name: [replicas]}. A request naming a model goes to that model's replicas
(404 for one not served); one naming none goes where the router says (router.py), or to the
first model. Among a model's healthy replicas the balancer picks one; the policies are the
simulator's own classes (workbench/sim/load_balancer.py), fed what they read:
- outstanding: requests the gateway routed to the replica whose response has not ended;
- kv_load: (used + queued KV blocks) / total, from the replica's GET /stats, polled every
  `poll_s` (0.25 s). Between polls it is stale; the blocks of prompts routed since the last
  poll was sent are added (token-id prompts: exact; text: 4 characters a token), so a burst
  does not all land on the replica that looked emptiest. Decode growth between polls is missed.
- prefix_group: a key of the prompt's first KV block (`block_size` token ids; for text, its
  first 4 * block_size characters; for chat, of the first message as the default chat
  template renders it), None for a prompt shorter than that (the engine caches full blocks
  only). The simulator's prefix_group is instead the scenario's system-prompt index, known
  only for requests that have one; here every prompt with a full first block has a key, and
  one seen once is treated as unique (see PrefixAffinity). They differ when two prompts share
  a first block but not a system prompt, or a system prompt is shorter than a block.

Health: the poll also notices a replica that exited or stopped answering; it gets no new
requests until it answers again. A request whose replica dies mid-way gets a 502 (whole) or an
error event in the stream (as the replica reports engine failures); a model with no healthy
replica answers 503. All errors are OpenAI-shaped. API keys are checked here; replicas listen
on 127.0.0.1 without keys.

Replica processes end with the gateway: SIGTERM when it stops (then SIGKILL after a grace
period), and the kernel's parent-death signal when it is killed (see replica.py).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from contextlib import asynccontextmanager
from dataclasses import asdict, dataclass

import httpx
from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, Response
from prometheus_client import CollectorRegistry, Counter, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.responses import StreamingResponse

from workbench.server import WORKBENCH_OWNER
from workbench.server.auth import API_KEYS_ENV, ApiKeyMiddleware
from workbench.server.body_limit import DEFAULT_MAX_REQUEST_BYTES, BodyLimitMiddleware
from workbench.server.metrics import CONTENT_TYPE, PREFIX, REJECT_REASONS
from workbench.server.protocol import error_response
from workbench.server.replica import PORT_LINE
from workbench.sim.load_balancer import make_balancer

POLL_S = 0.25  # replica /stats polling period (least-kv freshness, health)
CHARS_PER_TOKEN = 4  # text prompts: the gateway does not tokenize for balancing
START_TIMEOUT_S = 600.0
STOP_GRACE_S = 15.0  # replicas get this long after SIGTERM, then SIGKILL
_HOP_HEADERS = ("content-type", "cache-control", "retry-after", "x-should-retry")


class Replica:
    """One replica process as the balancer sees it (`outstanding`, `kv_load`) and the gateway
    uses it (url, health)."""

    def __init__(self, model: str, index: int, proc: subprocess.Popen | None, url: str,
                 block_size: int):
        self.model, self.index, self.proc, self.url = model, index, proc, url
        self.block_size = block_size
        self.outstanding = 0
        self.stats: dict = {}
        self.healthy = True
        self.reason: str | None = None  # why it is not healthy
        self.pending_blocks = 0  # prompt blocks routed since the last poll was sent

    @property
    def kv_load(self) -> float:
        s = self.stats
        total = s.get("kv_blocks_total") or 0
        if not total:
            return float(self.outstanding)  # not polled yet: fall back on the request count
        return (s["kv_blocks_used"] + s.get("kv_blocks_queued", 0) + self.pending_blocks) / total

    def label(self) -> str:
        return str(self.index)


@dataclass(slots=True)
class _Spec:
    """What a policy reads of a request (the simulator passes its RequestSpec)."""

    prefix_group: object = None


def prefix_key(body: dict, block_size: int):
    """The key of a request's first KV block (see the module docstring), or None."""
    prompt = body.get("prompt")
    if isinstance(prompt, list):
        if len(prompt) >= block_size and all(isinstance(t, int) for t in prompt[:block_size]):
            return ("ids", tuple(prompt[:block_size]))
        return None
    chars = block_size * CHARS_PER_TOKEN
    messages = body.get("messages")
    if isinstance(messages, list) and messages and isinstance(messages[0], dict):
        first = messages[0]
        prompt = f"{first.get('role')}: {first.get('content')}"  # DEFAULT_CHAT_TEMPLATE's line
    if isinstance(prompt, str) and len(prompt) >= chars:
        return ("text", prompt[:chars])
    return None


def _prompt_blocks(body: dict, block_size: int) -> int:
    prompt = body.get("prompt")
    if isinstance(prompt, list):
        n = len(prompt)
    elif isinstance(prompt, str):
        n = len(prompt) // CHARS_PER_TOKEN
    elif isinstance(body.get("messages"), list):
        n = sum(len(str(m.get("content", ""))) for m in body["messages"]
                if isinstance(m, dict)) // CHARS_PER_TOKEN
    else:
        n = 0
    return -(-n // block_size)


class Pool:
    """A model's replicas and its balancer."""

    def __init__(self, model: str, replicas: list[Replica], lb: str, seed: int = 0):
        self.model, self.replicas = model, replicas
        self.balancer = make_balancer(lb, seed)

    def choose(self, body: dict, exclude: Replica | None = None) -> Replica | None:
        healthy = [r for r in self.replicas if r.healthy and r is not exclude]
        if not healthy:
            return None
        if len(healthy) == 1:
            return healthy[0]
        spec = _Spec(prefix_key(body, healthy[0].block_size))
        return healthy[self.balancer.choose(healthy, spec)]


class _Metrics:
    def __init__(self, pools: dict[str, Pool]):
        self.registry = r = CollectorRegistry()
        r.register(_ReplicaCollector(pools))
        self.routed = Counter(f"{PREFIX}lb_routed", "Requests the gateway sent to each replica.",
                              ["model", "replica"], registry=r)
        self.router = Counter(f"{PREFIX}router_decisions",
                              "Requests naming no model, by the model and rule the router chose.",
                              ["model", "rule"], registry=r)
        self.rejected = Counter(f"{PREFIX}requests_rejected",
                                "Requests the gateway refused before any replica took them.",
                                ["reason"], registry=r)
        self.upstream_errors = Counter(f"{PREFIX}lb_upstream_errors",
                                       "Requests whose replica failed (died, refused).",
                                       ["model", "replica"], registry=r)
        for reason in REJECT_REASONS:
            self.rejected.labels(reason)
        for pool in pools.values():
            for rep in pool.replicas:
                self.routed.labels(pool.model, rep.label())


_REPLICA_GAUGES = (  # (key, name, help) of the per-replica gauges on the gateway's /metrics
    ("outstanding", "lb_outstanding", "Requests routed to the replica, not yet ended."),
    ("healthy", "lb_replica_healthy", "1 while the replica answers its health poll."),
    ("running", "num_requests_running", "Requests in the replica's running batch (polled)."),
    ("waiting", "num_requests_waiting", "Requests waiting in the replica (polled)."),
    ("kv", "kv_cache_usage_perc", "Share of the replica's KV blocks in use (polled)."),
)


class _ReplicaCollector:
    """Each replica's engine gauges as last polled, and the gateway's own view of it."""

    def __init__(self, pools: dict[str, Pool]):
        self.pools = pools

    def collect(self):
        fams = {key: GaugeMetricFamily(PREFIX + name, doc, labels=["model", "replica"])
                for key, name, doc in _REPLICA_GAUGES}
        ended = CounterMetricFamily(f"{PREFIX}request_success",
                                    "Requests that ended in the replica, by finish reason "
                                    "(polled).", labels=["model", "replica", "finished_reason"])
        for pool in self.pools.values():
            for rep in pool.replicas:
                lab, s = [pool.model, rep.label()], rep.stats
                for reason, n in (s.get("request_success") or {}).items():
                    ended.add_metric([*lab, reason], n)
                fams["outstanding"].add_metric(lab, rep.outstanding)
                fams["healthy"].add_metric(lab, float(rep.healthy))
                fams["running"].add_metric(lab, s.get("running", 0))
                fams["waiting"].add_metric(lab, s.get("waiting", 0))
                total = s.get("kv_blocks_total") or 0
                fams["kv"].add_metric(lab, s.get("kv_blocks_used", 0) / total if total else 0.0)
        yield from fams.values()
        yield ended


class _ProxyStream(StreamingResponse):
    """An SSE stream relayed from a replica; `close` runs however the response ends (also when
    the client left before the first byte, when the body generator never starts)."""

    def __init__(self, content, close: Callable, **kwargs):
        super().__init__(content, **kwargs)
        self._close = close

    async def __call__(self, scope, receive, send) -> None:
        try:
            await super().__call__(scope, receive, send)
        finally:
            await self._close()


async def _disconnected(receive) -> None:
    while (await receive())["type"] != "http.disconnect":
        pass


def create_gateway_app(pools: dict[str, Pool], aliases: dict[str, str] | None = None,
                       router=None, api_keys: frozenset[str] = frozenset(),
                       poll_s: float = POLL_S, on_shutdown: Callable[[], None] | None = None,
                       max_request_bytes: int | None = None) -> FastAPI:
    """`pools`: {served model name: Pool}, first = default for requests naming no model;
    `aliases`: other names a request may use for a model (never echoed); `router`: a
    router.Router or None; `on_shutdown` runs after the server stopped (stops replicas)."""
    metrics = _Metrics(pools)
    names = {**(aliases or {}), **{m: m for m in pools}}
    default = next(iter(pools))
    state: dict = {}

    def reject(reason: str, status: int, message: str, param: str | None = None,
               kind: str = "invalid_request_error") -> JSONResponse:
        metrics.rejected.labels(reason).inc()
        return error_response(status, message, param, kind)

    async def poll_forever(client: httpx.AsyncClient):
        replicas = [r for p in pools.values() for r in p.replicas]
        while True:
            await asyncio.gather(*(_poll(client, r) for r in replicas))
            await asyncio.sleep(poll_s)

    @asynccontextmanager
    async def lifespan(_app):
        limits = httpx.Limits(max_connections=None, max_keepalive_connections=None)
        # No read timeout: a long generation streams for as long as it takes.
        client = httpx.AsyncClient(timeout=httpx.Timeout(None, connect=5.0), limits=limits)
        state["client"] = client
        poller = asyncio.ensure_future(poll_forever(client))
        try:
            yield
        finally:
            poller.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await poller
            await client.aclose()
            if on_shutdown is not None:
                on_shutdown()

    app = FastAPI(title="workbench-gateway", lifespan=lifespan)
    app.state.pools = pools
    app.add_middleware(BodyLimitMiddleware,
                       max_bytes=max_request_bytes or DEFAULT_MAX_REQUEST_BYTES,
                       on_reject=lambda: metrics.rejected.labels("too_large").inc())
    app.add_middleware(ApiKeyMiddleware, keys=frozenset(api_keys),
                       on_reject=lambda: metrics.rejected.labels("unauthorized").inc())

    @app.exception_handler(StarletteHTTPException)
    async def _http_error(_req, exc: StarletteHTTPException):
        return error_response(exc.status_code, str(exc.detail), None)

    @app.get("/health")
    async def health():
        models = {m: [{"replica": r.index, "healthy": r.healthy,
                       "pid": r.proc.pid if r.proc else None,
                       **({"reason": r.reason} if r.reason else {})} for r in p.replicas]
                  for m, p in pools.items()}
        down = [m for m, p in pools.items() if not any(r.healthy for r in p.replicas)]
        degraded = any(not r.healthy for p in pools.values() for r in p.replicas)
        status = "error" if down else "degraded" if degraded else "ok"
        return JSONResponse(status_code=503 if down else 200,
                            content={"status": status, "models": models})

    @app.get("/metrics")
    async def prometheus_metrics():
        return Response(generate_latest(metrics.registry), media_type=CONTENT_TYPE)

    @app.get("/v1/models")
    async def models():
        return {"object": "list", "data": [{"id": m, "object": "model",
                                            "owned_by": WORKBENCH_OWNER} for m in pools]}

    @app.post("/v1/completions")
    async def completions(request: Request):
        return await proxy(request, "/v1/completions")

    @app.post("/v1/chat/completions")
    async def chat_completions(request: Request):
        return await proxy(request, "/v1/chat/completions")

    async def proxy(request: Request, path: str):
        raw = await request.body()
        try:
            body = json.loads(raw)
        except ValueError as e:
            return reject("invalid_request", 400, f"body: not valid JSON ({e})", "body")
        if not isinstance(body, dict):
            return reject("invalid_request", 400, "body: must be a JSON object", "body")
        asked = body.get("model")
        headers = {}
        if asked is None:
            if router is not None:
                decision = router.decide(body)
                metrics.router.labels(decision.model, decision.rule).inc()
                model = decision.model
                headers = {"x-workbench-routed-to": model,
                           "x-workbench-route-rule": decision.rule}
            else:
                model = default
        elif isinstance(asked, str) and asked in names:
            model = names[asked]
        else:  # the replica would say the same; answered here, naming every model served
            return reject("model_not_found", 404, f"model: {asked!r} is not served here; "
                          f"available: {', '.join(map(repr, pools))}", "model")
        pool = pools[model]
        replica = pool.choose(body)
        if replica is None:
            return reject("unavailable", 503, f"model {model!r}: no replica is available",
                          None, "server_error")
        upstream = None
        for _attempt in range(2):  # a refused connection never reached it: try another once
            upstream = await _send(replica, path, raw, request, body)
            if not isinstance(upstream, httpx.ConnectError):
                break
            replica.healthy, replica.reason = False, f"connect failed: {upstream}"
            replica = pool.choose(body)
            if replica is None:
                break
        if replica is None:
            return reject("unavailable", 503, f"model {model!r}: no replica is available",
                          None, "server_error")
        if isinstance(upstream, Exception):
            return _bad_gateway(replica, upstream)
        headers["x-workbench-replica"] = replica.label()
        released = False

        async def close():
            nonlocal released
            if not released:
                released = True
                replica.outstanding -= 1
                await upstream.aclose()

        if not body.get("stream") or upstream.status_code != 200:
            read = asyncio.ensure_future(upstream.aread())
            gone = asyncio.ensure_future(_disconnected(request.receive))
            try:
                await asyncio.wait({read, gone}, return_when=asyncio.FIRST_COMPLETED)
            finally:
                gone.cancel()
                if not read.done():
                    read.cancel()
                await close()  # a client gone: closing the connection aborts the request
            if read.cancelled():
                return Response(status_code=499)
            if (exc := read.exception()) is not None:
                return _bad_gateway(replica, exc)
            return Response(read.result(), status_code=upstream.status_code,
                            headers=headers | _passed(upstream))

        async def chunks():
            try:
                async for chunk in upstream.aiter_raw():
                    yield chunk
            except httpx.HTTPError as e:  # headers are sent: report in-stream, then end
                metrics.upstream_errors.labels(replica.model, replica.label()).inc()
                err = {"error": {"message": f"replica {replica.index} failed: "
                                            f"{type(e).__name__}", "type": "server_error"}}
                yield f"data: {json.dumps(err)}\n\n".encode()

        return _ProxyStream(chunks(), close, status_code=200,
                            headers=headers | _passed(upstream))

    async def _send(replica: Replica, path: str, raw: bytes, request: Request, body: dict):
        client: httpx.AsyncClient = state["client"]
        metrics.routed.labels(replica.model, replica.label()).inc()
        replica.outstanding += 1
        replica.pending_blocks += _prompt_blocks(body, replica.block_size)
        req = client.build_request("POST", replica.url + path, content=raw,
                                   headers={"content-type": "application/json"})
        try:
            return await client.send(req, stream=True)
        except httpx.HTTPError as e:
            replica.outstanding -= 1
            return e

    def _bad_gateway(replica: Replica, exc: BaseException) -> JSONResponse:
        metrics.upstream_errors.labels(replica.model, replica.label()).inc()
        return error_response(502, f"replica {replica.index} of model {replica.model!r} "
                                   f"failed: {type(exc).__name__}", None, "server_error")

    return app


def _passed(upstream: httpx.Response) -> dict:
    return {k: v for k in _HOP_HEADERS if (v := upstream.headers.get(k)) is not None}


async def _poll(client: httpx.AsyncClient, r: Replica) -> None:
    if r.proc is not None and (code := r.proc.poll()) is not None:
        r.healthy, r.reason = False, f"exited with code {code}"
        return
    sent = r.pending_blocks
    try:
        resp = await client.get(f"{r.url}/stats", timeout=2.0)
        stats = resp.json()
    except (httpx.HTTPError, ValueError) as e:
        r.healthy, r.reason = False, f"not answering: {type(e).__name__}"
        return
    r.stats = stats
    r.pending_blocks = max(0, r.pending_blocks - sent)  # those are in the snapshot now
    dead = stats.get("dead")
    r.healthy, r.reason = dead is None, dead


# -- processes ---------------------------------------------------------------------------------
def start_replicas(models: dict[str, str], replicas: int, engine_config, threads: int,
                   log_level: str = "warning", limits=None, response_cache: int = 0
                   ) -> list[tuple[str, subprocess.Popen, int]]:
    """Start `replicas` processes per model ({served name: preset or dir}) and wait until each
    has loaded its model and bound its port: [(model, process, port)]. Stops them all on any
    failure (ValueError naming the model)."""
    config = json.dumps(asdict(engine_config))
    limits_json = json.dumps(asdict(limits) if limits is not None else {})
    env = {k: v for k, v in os.environ.items() if k != API_KEYS_ENV}
    procs: list[tuple[str, subprocess.Popen]] = []
    try:
        for name, src in models.items():
            for _ in range(replicas):
                procs.append((name, subprocess.Popen(
                    [sys.executable, "-m", "workbench.server.replica", "--model", src,
                     "--name", name, "--engine-config", config, "--threads", str(threads),
                     "--parent-pid", str(os.getpid()), "--log-level", log_level,
                     "--limits", limits_json, "--response-cache", str(response_cache)],
                    stdout=subprocess.PIPE, env=env, start_new_session=True)))
        out = []
        for name, proc in procs:  # they load in parallel; read each one's port line in turn
            line = proc.stdout.readline().decode().split()
            if len(line) != 2 or line[0] != PORT_LINE:
                code = proc.wait(timeout=START_TIMEOUT_S)
                raise ValueError(f"model: a replica of {name!r} exited while starting "
                                 f"(code {code}; its log is above)")
            proc.stdout.close()
            out.append((name, proc, int(line[1])))
        return out
    except BaseException:
        stop_replicas([p for _, p in procs])
        raise


def stop_replicas(procs: list[subprocess.Popen], grace_s: float = STOP_GRACE_S) -> None:
    """SIGTERM each (their graceful path), then SIGKILL what is left after `grace_s`."""
    for p in procs:
        if p.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                p.send_signal(signal.SIGTERM)
    deadline = time.monotonic() + grace_s
    for p in procs:
        try:
            p.wait(timeout=max(0.0, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            p.kill()
            p.wait()


def wait_healthy(urls: list[str], timeout_s: float = START_TIMEOUT_S) -> None:
    deadline = time.monotonic() + timeout_s
    for url in urls:
        while True:
            try:
                if httpx.get(f"{url}/health", timeout=2).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            if time.monotonic() > deadline:
                raise ValueError(f"replica at {url} did not become healthy")
            time.sleep(0.1)


def served_models(models: list[str]) -> dict[str, str]:
    """{served name: preset or dir} for the --model values; presets are built here once, so
    that replicas do not race to build the same one."""
    from workbench.models.tiny import resolve_model
    from workbench.server.app import served_name

    out: dict[str, str] = {}
    for src in models:
        resolve_model(src)  # ValueError "model: ..." for one that does not exist
        name = served_name(src)
        if name in out:
            raise ValueError(f"model: {src!r} would be served as {name!r}, as "
                             f"{out[name]!r} is; serve each model once")
        out[name] = src
    return out


def serve_gateway(models: list[str], replicas: int = 1, lb: str = "round-robin",
                  router_file: str | None = None, host: str = "127.0.0.1", port: int = 8000,
                  engine_config=None, api_keys: frozenset[str] = frozenset(),
                  threads: int = 0, log_level: str = "warning",
                  graceful_shutdown_s: float = 5.0, limits=None, response_cache: int = 0
                  ) -> None:
    """`workbench serve` with several models or replicas (see the module docstring).
    `limits` (admission.Limits, without rate limits) and `response_cache` apply per replica;
    the request-size limit also here, before a body is proxied."""
    import uvicorn

    from workbench.engine import EngineConfig
    from workbench.server.app import listen_socket

    engine_config = engine_config or EngineConfig()
    make_balancer(lb)  # a bad --lb is a one-line error before anything starts
    if replicas < 1:
        raise ValueError(f"replicas: must be >= 1, got {replicas}")
    sock = listen_socket(host, port)
    procs: list[subprocess.Popen] = []
    try:
        named = served_models(models)
        router = None
        if router_file is not None:
            from workbench.server.router import Router, load_router, load_tokenizers

            router = Router(load_router(router_file, list(named)), next(iter(named)),
                            load_tokenizers(named))
        if threads <= 0:  # share the cores: one replica's torch threads per core share
            threads = max(1, (os.cpu_count() or 1) // (replicas * len(named)))
        started = start_replicas(named, replicas, engine_config, threads, log_level, limits,
                                 response_cache)
        procs = [p for _, p, _ in started]
        wait_healthy([f"http://127.0.0.1:{port}" for _, _, port in started])
        pools = {}
        for name in named:
            reps = [Replica(name, i, proc, f"http://127.0.0.1:{p}", engine_config.block_size)
                    for i, (_, proc, p) in enumerate(x for x in started if x[0] == name)]
            pools[name] = Pool(name, reps, lb)
        aliases = {src: name for name, src in named.items()}
        print(f"gateway: {', '.join(f'{m} x{replicas}' for m in named)} "
              f"({lb}, {threads} torch thread(s) per replica)"
              + (f"; router {len(router.rules)} rules" if router else ""),
              file=sys.stderr, flush=True)
        app = create_gateway_app(pools, aliases, router, api_keys,
                                 on_shutdown=lambda: stop_replicas(procs),
                                 max_request_bytes=None if limits is None
                                 else limits.max_request_bytes)
        config = uvicorn.Config(app, host=host, port=port, log_level=log_level,
                                timeout_graceful_shutdown=graceful_shutdown_s)
        # uvicorn re-raises the SIGTERM it handled once its graceful shutdown (replicas
        # stopped by then) is over; under the default disposition that would end the process
        # with status -15 instead of 0, so SIGTERM's own handler does nothing.
        signal.signal(signal.SIGTERM, lambda *_: None)
        uvicorn.Server(config).run(sockets=[sock])
    finally:
        stop_replicas(procs)  # already stopped on a normal exit: a no-op then
        sock.close()
