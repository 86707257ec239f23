"""Per-client rate limits: token buckets on requests per minute and tokens per minute
(`--rate-limit-rpm`, `--rate-limit-tpm`; both off by default), refused as 429s by the caller.

A bucket holds one minute's allowance and refills continuously at limit/60 per second, the
way OpenAI describes its own limits: a client may spend a minute's allowance at once, then
goes at the rate. A request takes 1 from its request bucket and, from its token bucket, its
prompt tokens plus its max_tokens: what it may at most cost, reserved when it is admitted,
since what its output costs is known only when it ends. Then the unused part is given back
(`refund`), as gateways that count tokens do, so a client is charged what it used, prompt
included. Both buckets are taken together or not at all: a request refused for tokens does
not spend a request.

A request that needs more tokens than its bucket ever holds could wait forever: it is refused
at once with `retry_after_s = None` (OpenAI answers such a "Request too large ... on tokens per
min" with a 429 as well; the server adds `x-should-retry: false`, which OpenAI's clients obey).

Clients are told apart by their API key when keys are configured, else by their address (the
caller decides). The buckets live in this process's memory, so each replica limits on its own;
a full bucket behaves as a missing one, so full buckets are dropped when the table grows. Not
thread-safe: the server calls it from its event loop only.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import dataclass

MAX_CLIENTS = 10_000  # tracked clients before full buckets are dropped (memory bound)


@dataclass(slots=True)
class TokenBucket:
    capacity: float
    rate: float  # refill per second
    level: float
    stamp: float  # clock time `level` was last brought up to date

    @classmethod
    def per_minute(cls, limit: int, now: float) -> TokenBucket:
        return cls(float(limit), limit / 60.0, float(limit), now)

    def refill(self, now: float) -> None:
        self.level = min(self.capacity, self.level + (now - self.stamp) * self.rate)
        self.stamp = now

    def wait_s(self, amount: float) -> float:
        """Seconds until `amount` is available (0: now); call after `refill`."""
        return max(0.0, amount - self.level) / self.rate

    @property
    def full(self) -> bool:
        return self.level >= self.capacity


@dataclass(frozen=True, slots=True)
class Refusal:
    """Why a request may not run now, in OpenAI's terms."""

    kind: str  # "requests" or "tokens": which limit (OpenAI's error `type`)
    message: str
    retry_after_s: int | None  # whole seconds until it would pass; None: it never will


class RateLimiter:
    def __init__(self, rpm: int | None, tpm: int | None,
                 clock: Callable[[], float] = time.monotonic, max_clients: int = MAX_CLIENTS):
        self.rpm, self.tpm, self.clock, self.max_clients = rpm, tpm, clock, max_clients
        # client -> {"requests": bucket, "tokens": bucket}, only the limits that are set
        self._buckets: dict[str, dict[str, TokenBucket]] = {}

    def _limits(self) -> dict[str, int]:
        return {k: v for k, v in (("requests", self.rpm), ("tokens", self.tpm)) if v}

    def _buckets_of(self, client: str, now: float) -> dict[str, TokenBucket]:
        buckets = self._buckets.get(client)
        if buckets is None:
            if len(self._buckets) >= self.max_clients:
                self._drop_full(now)
            buckets = {k: TokenBucket.per_minute(v, now) for k, v in self._limits().items()}
            self._buckets[client] = buckets
        for b in buckets.values():
            b.refill(now)
        return buckets

    def _drop_full(self, now: float) -> None:
        for client in list(self._buckets):
            buckets = self._buckets[client]
            for b in buckets.values():
                b.refill(now)
            if all(b.full for b in buckets.values()):
                del self._buckets[client]

    def acquire(self, client: str, tokens: int) -> Refusal | None:
        """Take 1 request and `tokens` tokens for `client`; None when taken, else why not
        (and nothing is taken)."""
        now = self.clock()
        buckets = self._buckets_of(client, now)
        need = {"requests": 1, "tokens": tokens}
        if "tokens" in buckets and tokens > buckets["tokens"].capacity:
            return Refusal("tokens", f"request too large for the tokens per minute limit: "
                           f"prompt + max_tokens = {tokens} tokens, but the limit is "
                           f"{self.tpm} per minute; reduce the prompt or max_tokens", None)
        waits = {k: b.wait_s(need[k]) for k, b in buckets.items()}
        if any(waits.values()):
            kind = max(waits, key=waits.get)
            b = buckets[kind]
            retry = max(1, math.ceil(waits[kind]))
            name = "requests per minute (RPM)" if kind == "requests" else \
                "tokens per minute (TPM)"
            return Refusal(kind, f"rate limit reached on {name}: limit {int(b.capacity)}, "
                                 f"available {int(b.level)}, requested {need[kind]}; "
                                 f"try again in {retry}s", retry)
        for k, b in buckets.items():
            b.level -= need[k]
        return None

    def refund(self, client: str, tokens: int) -> None:
        """Give back reserved tokens a request did not use."""
        buckets = self._buckets.get(client)
        if buckets and "tokens" in buckets and tokens > 0:
            b = buckets["tokens"]
            b.refill(self.clock())
            b.level = min(b.capacity, b.level + tokens)
