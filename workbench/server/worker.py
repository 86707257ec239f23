"""Runs the engine on its own thread and hands each request's outputs to asyncio consumers.

The engine is not thread-safe: only this thread touches it. HTTP handlers submit and abort
through a queue and never block a thread while they wait: acceptance comes back as an asyncio
future and outputs through each request's asyncio.Queue, both completed on the server's loop
with `call_soon_threadsafe` (one call per loop per step, however many streams advanced).

Readers on other threads (GET /metrics, the admission queue) see the engine only through
`stats`, a frozen snapshot the engine thread replaces after every step and every batch of
submissions: swapping one reference is atomic, so a reader gets one consistent snapshot
without a lock. Acceptances are settled only after the snapshot that includes them is
published, so a request is never in neither place: the admission queue counts it as its own
until acceptance, and in `stats.waiting` from then on.

Fault containment: a request that makes `add_request` raise fails that request only (a
ValueError is the client's mistake, anything else an engine fault); a step that raises fails
the requests in flight and the loop goes on. Should the thread end anyway, `dead` says why,
every waiting client is told, and later submissions fail at once with `EngineUnavailable`.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import queue
import threading
from collections import defaultdict
from dataclasses import dataclass

log = logging.getLogger("workbench.server")

# Engine step records a server keeps (LLMEngine.telemetry grows by one per step); None = all
# (benchmarks/bench_served.py reads them all).
TELEMETRY_KEPT: int | None = 50_000


@dataclass(slots=True)
class EngineFailure:
    """Delivered instead of an output when the engine's step raised: a server fault (500)."""

    message: str


@dataclass(frozen=True, slots=True)
class EngineStats:
    """The engine's state as /metrics shows it; counters are totals since the thread started."""

    running: int = 0
    waiting: int = 0  # queued, or preempted and waiting to resume
    kv_blocks_used: int = 0
    kv_blocks_total: int = 0
    prefix_cache_queries: int = 0  # prompt tokens looked up in the prefix cache at admission
    prefix_cache_hits: int = 0  # of those, found cached
    preemptions: int = 0
    # KV blocks the waiting and swapped-out requests will need: the least-kv balancer of a
    # gateway in front of replicas compares (used + queued) / total, as the simulator's does.
    kv_blocks_queued: int = 0


class EngineUnavailable(RuntimeError):
    """The engine thread is not running (never started, stopped or died): a 503."""


class EngineFault(RuntimeError):
    """The engine raised something other than a ValueError while accepting a request: a 500."""


@dataclass(slots=True)
class _Submit:
    request_id: str
    prompt: object
    params: object
    sink: asyncio.Queue
    loop: asyncio.AbstractEventLoop
    accepted: asyncio.Future


def _post(loop: asyncio.AbstractEventLoop, fn, *args) -> None:
    """call_soon_threadsafe that tolerates a loop already closed (its clients are gone)."""
    with contextlib.suppress(RuntimeError):
        loop.call_soon_threadsafe(fn, *args)


def _settle(fut: asyncio.Future, result=None, error: BaseException | None = None) -> None:
    """Runs on the future's loop; a client that went away has cancelled it already."""
    if fut.done():
        return
    if error is not None:
        fut.set_exception(error)
    else:
        fut.set_result(result)


def _put_all(items: list) -> None:
    for sink, item in items:
        sink.put_nowait(item)


class EngineWorker:
    def __init__(self, engine):
        import torch

        self.engine = engine
        # torch's thread count as set where the server was built (`--replica-threads`,
        # torch.set_num_threads): OpenMP keeps it per thread, and a new thread starts with the
        # default (all cores) whatever get_num_threads() says there, so the engine thread
        # sets it again (measured: cpu/wall 1.96 in a fresh thread after set_num_threads(1)).
        self._torch_threads = torch.get_num_threads()
        self._inbox: queue.Queue = queue.Queue()
        self._sinks: dict[str, tuple[asyncio.Queue, asyncio.AbstractEventLoop]] = {}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="engine", daemon=True)
        self._dead: str | None = None  # why the thread ended, once it has
        self.stats = EngineStats()  # replaced (never mutated) by the engine thread
        self._settles: list = []  # acceptances to tell their loops after the next _publish

    def start(self) -> None:
        self._thread.start()

    def stop(self, timeout: float = 10.0) -> None:
        self._stop.set()
        self._inbox.put(None)
        if self._thread.is_alive():
            self._thread.join(timeout=timeout)

    @property
    def dead(self) -> str | None:
        """None while the engine thread serves requests; otherwise the reason it does not."""
        if self._dead is not None:
            return self._dead
        if not self._thread.is_alive():
            return "engine thread stopped" if self._stop.is_set() else "engine not started"
        return None

    async def submit(self, request_id: str, prompt, params) -> asyncio.Queue:
        """Queue a request and wait (without holding a thread) until the engine accepted it.

        Raises the engine's ValueError for bad input, EngineFault for another exception in
        add_request, EngineUnavailable when the engine thread is not running."""
        if (reason := self.dead) is not None:
            raise EngineUnavailable(reason)
        loop = asyncio.get_running_loop()
        msg = _Submit(request_id, prompt, params, asyncio.Queue(), loop, loop.create_future())
        self._inbox.put(msg)
        # The thread marks itself dead before it drains the inbox for the last time, so a
        # message put after that drain is caught here and never waits on nobody.
        if (reason := self.dead) is not None:
            _settle(msg.accepted, error=EngineUnavailable(reason))
        try:
            await msg.accepted
        except asyncio.CancelledError:
            self.abort(request_id)  # the client left before acceptance: free the slot anyway
            raise
        return msg.sink

    def abort(self, request_id: str) -> None:
        self._inbox.put(("abort", request_id))

    # -- the engine thread --------------------------------------------------------------------
    def _run(self) -> None:
        import torch

        torch.set_num_threads(self._torch_threads)
        reason = "engine thread stopped"
        try:
            self._loop()
        except BaseException as e:  # noqa: BLE001 - record why, tell everyone, then end
            reason = f"engine thread died: {type(e).__name__}: {e}"
            log.exception("engine thread died")
        finally:
            self._dead = reason
            self._flush_settles()  # accepted ones then hear the failure through their sinks
            self._fail_everyone(reason)

    def _loop(self) -> None:
        eng = self.engine
        self._publish()
        while not self._stop.is_set():
            try:  # idle: wait for work; busy: just drain what has arrived since the last step
                item = self._inbox.get_nowait() if eng.has_unfinished() else self._inbox.get(
                    timeout=0.5)
                while True:
                    self._handle(item)
                    item = self._inbox.get_nowait()
            except queue.Empty:
                pass
            self._publish()
            self._flush_settles()
            if self._stop.is_set() or not eng.has_unfinished():
                continue
            try:
                outs = eng.step()
            except Exception as e:  # noqa: BLE001 - a failed step must not hang clients
                log.exception("engine step failed")
                self._fail_all(e)
                if eng.has_unfinished():  # aborting did not clear it: the engine is broken
                    raise RuntimeError(f"engine left in a bad state by a failed step: {e}") from e
                continue
            self._publish()
            self._deliver(outs)

    def _publish(self) -> None:
        """Replace `stats` with the engine's state now (engine thread only)."""
        eng = self.engine
        sched, bm, steps = eng.scheduler, eng.block_manager, eng.telemetry
        # A server runs for weeks: keep the latest TELEMETRY_KEPT step records, not all of them
        # (trimmed by half its size at a time, so the cost is amortized).
        if TELEMETRY_KEPT is not None and len(steps) > 2 * TELEMETRY_KEPT:
            del steps[:len(steps) - TELEMETRY_KEPT]
        queued = sum(bm.blocks_for(s.num_tokens) for s in (*sched.waiting, *sched.swapped))
        self.stats = EngineStats(len(sched.running), sched.num_waiting + sched.num_swapped,
                                 bm.num_used_blocks, bm.num_blocks, bm.queried_tokens,
                                 bm.hit_tokens, sched.num_preemptions, queued)

    def _flush_settles(self) -> None:
        for loop, fut, error in self._settles:
            _post(loop, _settle, fut, None, error)
        self._settles.clear()

    def _fail_all(self, error: Exception) -> None:
        """Abort everything in flight and hand each waiting client the error."""
        failure = EngineFailure(f"{type(error).__name__}: {error}")
        for request_id, (sink, loop) in list(self._sinks.items()):
            try:
                self.engine.abort(request_id)
            except Exception:  # noqa: BLE001 - still tell the client; has_unfinished decides
                log.exception("abort of %s failed", request_id)
            _post(loop, sink.put_nowait, failure)
        self._sinks.clear()

    def _fail_everyone(self, reason: str) -> None:
        """The thread is ending: fail requests in flight and submissions not yet handled."""
        failure = EngineFailure(reason)
        for sink, loop in self._sinks.values():
            _post(loop, sink.put_nowait, failure)
        self._sinks.clear()
        while True:
            try:
                item = self._inbox.get_nowait()
            except queue.Empty:
                return
            if isinstance(item, _Submit):
                _post(item.loop, _settle, item.accepted, None, EngineUnavailable(reason))

    def _handle(self, item) -> None:
        if item is None:
            return
        if isinstance(item, tuple):
            try:
                out = self.engine.abort(item[1])
            except Exception:  # noqa: BLE001 - a failed abort must not end the loop
                log.exception("abort of %s failed", item[1])
                return
            if out is not None:
                self._deliver([out])
            return
        error: BaseException | None = None
        try:
            self.engine.add_request(item.request_id, item.prompt, item.params)
            self._sinks[item.request_id] = (item.sink, item.loop)
        except ValueError as e:  # the client's mistake, named by the engine: a 400
            error = e
        except Exception as e:  # noqa: BLE001 - one request's fault must not end the loop
            log.exception("add_request %s failed", item.request_id)
            error = EngineFault(f"{type(e).__name__}: {e}")
            try:  # half-added? take it back
                self.engine.abort(item.request_id)
            except Exception:  # noqa: BLE001 - a broken engine shows at its next step
                log.exception("abort of half-added %s failed", item.request_id)
        self._settles.append((item.loop, item.accepted, error))

    def _deliver(self, outs) -> None:
        by_loop: dict[asyncio.AbstractEventLoop, list] = defaultdict(list)
        for out in outs:
            target = self._sinks.get(out.request_id)
            if target is None:
                continue
            if out.finished:
                del self._sinks[out.request_id]
            sink, loop = target
            by_loop[loop].append((sink, out))
        for loop, items in by_loop.items():
            _post(loop, _put_all, items)
