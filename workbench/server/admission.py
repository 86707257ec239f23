"""Admission: what a completion request passes between its handler and the engine thread.

In this order (each refusal is OpenAI-shaped and counted in requests_rejected_total{reason}):
1. The admission queue, `--max-queued N`: a request that finds N requests already waiting is
   refused 503 (type server_error, code overloaded) with `Retry-After: 1`. Waiting means not
   yet running: admitted here but not yet taken by the engine thread (being tokenized, in its
   inbox), plus the engine's own waiting requests (queued, or preempted). Unbounded by
   default, as in vLLM: a queue bound trades latency for refusals, which is the operator's
   call. 503, not TGI's 429 for the same case: the server is overloaded, the client is not
   over any rate of its own. Reason queue_full.
2. Tokenization and the context check, on a small thread pool: neither on the event loop
   (every connection waits on it) nor on the engine thread (every running stream waits on
   it: a 1 MB prompt tokenized there froze all streams for over a second before its 400). HF
   fast tokenizers release the GIL while they encode. A chat is rendered (chat.py) there too.
   The engine then gets token ids. A prompt or max_tokens beyond the context is a 400 naming
   the field (the scheduler's own check_request, so the rule exists once); the engine thread
   repeats its checks, cheaply on ids, and stays the guard of what it takes. Here, too, a chat
   without max_tokens gets the rest of the context (protocol.py). Reason invalid_request.
3. Rate limits (`--rate-limit-rpm`, `--rate-limit-tpm`; rate_limit.py): a 429 in OpenAI's
   shape (type requests or tokens, code rate_limit_exceeded) with `Retry-After` in whole
   seconds; a request too large to ever pass gets `x-should-retry: false` instead. Reason
   rate_limited.
4. Submission to the engine thread (worker.py).

The deadline, `--request-timeout S` (off by default), runs from the handler's arrival over all
of the above and the generation. Expired during admission: a 504 (reason timeout). Expired
while the engine runs it: relay.py aborts the request (its KV blocks are freed at once), and
it ends with finished_reason timeout; a non-streaming client gets a 504, a stream an error
event (type server_error, code timeout) and then `data: [DONE]`. 504 Gateway Timeout, as
proxies answer when the server behind them (here, the engine) did not finish in time; 408 means
the client was too slow to send its request, which is not the case.
"""

from __future__ import annotations

import asyncio
import logging
import math
import os
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

from workbench.server.body_limit import DEFAULT_MAX_REQUEST_BYTES
from workbench.server.rate_limit import RateLimiter
from workbench.server.worker import EngineFault, EngineUnavailable, EngineWorker

log = logging.getLogger("workbench.server")

# Threads that tokenize: enough that one huge prompt does not hold up every small one; each
# holds one prompt's text and ids.
TOKENIZER_THREADS = min(4, os.cpu_count() or 1)
# The queue drains as requests finish, which nothing here can predict: ask for a short wait.
QUEUE_FULL_RETRY_AFTER_S = 1


class Refused(Exception):
    """A request refused before the engine took it: the handler answers it as an error."""

    def __init__(self, reason: str, status: int, message: str, param: str | None = None,
                 kind: str = "invalid_request_error", code: str | None = None,
                 headers: dict[str, str] | None = None):
        super().__init__(message)
        self.reason, self.status, self.message, self.param = reason, status, message, param
        self.kind, self.code, self.headers = kind, code, headers


@dataclass(frozen=True, slots=True)
class Limits:
    """What `workbench serve` limits; errors name the flag."""

    max_request_bytes: int = DEFAULT_MAX_REQUEST_BYTES
    max_queued: int | None = None
    rate_limit_rpm: int | None = None
    rate_limit_tpm: int | None = None
    request_timeout_s: float | None = None

    def __post_init__(self):
        for flag, value in (("max-request-bytes", self.max_request_bytes),
                            ("max-queued", self.max_queued),
                            ("rate-limit-rpm", self.rate_limit_rpm),
                            ("rate-limit-tpm", self.rate_limit_tpm)):
            if value is None and flag != "max-request-bytes":
                continue
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"{flag}: must be an integer >= 1, got {value!r}")
        t = self.request_timeout_s
        if t is not None and (isinstance(t, bool) or not isinstance(t, int | float)
                              or not math.isfinite(t) or t <= 0):
            raise ValueError(f"request-timeout: must be a number of seconds > 0, got {t!r}")


@dataclass(slots=True)
class Ticket:
    """An admitted request: what its relay (relay.Flight) needs."""

    sink: object  # the worker's asyncio.Queue of outputs
    deadline: float | None  # loop time at which it is aborted, if it still runs
    on_end: Callable[[int, int], None] | None  # (prompt, output tokens) when it ends
    hit: object = None  # the response cache's answer: then nothing was submitted


class Admission:
    def __init__(self, engine, worker: EngineWorker, limits: Limits):
        self.limits, self.worker = limits, worker
        # Both read only the tokenizer and sizes fixed at construction: safe off the engine
        # thread (see LLMEngine.encode, Scheduler.check_request).
        self._encode = engine.encode
        self._check = engine.scheduler.check_request
        self._max_tokens_total = engine.scheduler.max_request_tokens
        self._pool = ThreadPoolExecutor(TOKENIZER_THREADS, thread_name_prefix="tokenize")
        self.limiter = (RateLimiter(limits.rate_limit_rpm, limits.rate_limit_tpm)
                        if limits.rate_limit_rpm or limits.rate_limit_tpm else None)
        self.pending = 0  # admitted here, not yet taken by the engine thread

    def close(self) -> None:
        self._pool.shutdown(wait=False, cancel_futures=True)

    def waiting(self) -> int:
        """Requests not yet running: here, or waiting in the engine."""
        return self.pending + self.worker.stats.waiting

    async def admit(self, request_id: str, body, prompt: Callable[[], str | list[int]],
                    prompt_field: str, client: str,
                    lookup: Callable[[list[int], object], object | None] | None = None
                    ) -> Ticket:
        """Tokenize, check, rate-limit and submit; raises Refused. `prompt` renders the prompt
        (a ValueError names the field; "prompt" is reported as `prompt_field`), `client` is
        who the rate limits count against. `lookup(ids, params)` (the response cache, on the
        event loop) may answer the request instead: then it is neither rate-limited nor
        submitted (a cached answer costs the engine nothing)."""
        loop = asyncio.get_running_loop()
        timeout = self.limits.request_timeout_s
        deadline = None if timeout is None else loop.time() + timeout
        limit = self.limits.max_queued
        if limit is not None and self.waiting() >= limit:
            raise Refused("queue_full", 503, f"server overloaded: {limit} requests are already "
                          "waiting (workbench serve --max-queued); retry later", None,
                          "server_error", "overloaded",
                          {"Retry-After": str(QUEUE_FULL_RETRY_AFTER_S)})
        self.pending += 1  # no await since the check: the two are one step
        try:
            async with asyncio.timeout_at(deadline):
                try:
                    ids, params = await loop.run_in_executor(self._pool, self._prepare, body,
                                                             prompt)
                except ValueError as e:  # the field named; a chat's prompt is its messages
                    raise _invalid(e, prompt_field) from None
                except Exception as e:  # noqa: BLE001 - the tokenizer's fault: a 500, not a crash
                    log.exception("preparing %s failed", request_id)
                    raise Refused("engine_fault", 500, f"engine failure: {type(e).__name__}: "
                                  f"{e}", None, "server_error") from None
                if lookup is not None and (hit := lookup(ids, params)) is not None:
                    return Ticket(None, None, None, hit)
                on_end = self._take_rate(client, len(ids) + params.max_tokens)
                try:
                    sink = await self.worker.submit(request_id, ids, params)
                except BaseException:
                    if on_end is not None:
                        on_end(0, 0)  # it never ran: all of its reservation back
                    raise
        except TimeoutError:
            raise Refused("timeout", 504, timeout_message(timeout), None, "server_error",
                          "timeout") from None
        except ValueError as e:  # the engine's own check (it should agree with _prepare)
            raise _invalid(e, prompt_field) from None
        except EngineUnavailable as e:
            raise Refused("unavailable", 503, f"engine unavailable: {e}", None,
                          "server_error") from None
        except EngineFault as e:
            raise Refused("engine_fault", 500, f"engine failure: {e}", None,
                          "server_error") from None
        finally:
            self.pending -= 1
        return Ticket(sink, deadline, on_end)

    def _prepare(self, body, prompt):
        """On a pool thread: the prompt's token ids and the engine's params, checked against
        the context; ValueError naming the field."""
        ids = self._encode(prompt())
        params = body.sampling_params(room=self._max_tokens_total - len(ids))
        self._check(len(ids), params.max_tokens)
        return ids, params

    def _take_rate(self, client: str, reserve: int) -> Callable[[int, int], None] | None:
        """Take from `client`'s buckets (Refused when it may not run now); the callback that
        gives back the unused part of the reservation when the request ends."""
        if self.limiter is None:
            return None
        refusal = self.limiter.acquire(client, reserve)
        if refusal is not None:
            headers = ({"x-should-retry": "false"} if refusal.retry_after_s is None
                       else {"Retry-After": str(refusal.retry_after_s)})
            raise Refused("rate_limited", 429, refusal.message, None, refusal.kind,
                          "rate_limit_exceeded", headers)
        limiter = self.limiter

        def refund(prompt_tokens: int, output_tokens: int) -> None:
            limiter.refund(client, reserve - prompt_tokens - output_tokens)

        return refund


def timeout_message(timeout_s: float) -> str:
    return (f"request timed out: not finished after {timeout_s:g} s "
            "(workbench serve --request-timeout)")


def _invalid(e: ValueError, prompt_field: str) -> Refused:
    param, _, rest = str(e).partition(":")
    param = prompt_field if param == "prompt" else param
    return Refused("invalid_request", 400, f"{param}:{rest}", param)
