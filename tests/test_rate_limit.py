"""The token buckets of workbench/server/rate_limit.py, on an injected clock (no sleeps)."""

from __future__ import annotations

import pytest

from workbench.server.rate_limit import RateLimiter, TokenBucket


class Clock:
    def __init__(self):
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def test_requests_per_minute_burst_then_refill():
    clock = Clock()
    rl = RateLimiter(rpm=3, tpm=None, clock=clock)
    assert [rl.acquire("a", 10**9) for _ in range(3)] == [None] * 3  # tokens are not limited
    refusal = rl.acquire("a", 1)
    assert refusal.kind == "requests" and refusal.retry_after_s == 20  # 1 request / 20 s
    assert "requests per minute" in refusal.message
    clock.now += 19.5
    assert rl.acquire("a", 1).retry_after_s == 1  # 0.5 s left: whole seconds, rounded up
    clock.now += 0.5
    assert rl.acquire("a", 1) is None
    assert rl.acquire("b", 1) is None, "another client has its own bucket"


def test_tokens_per_minute_and_retry_after_is_the_ceiling():
    clock = Clock()
    rl = RateLimiter(rpm=None, tpm=600, clock=clock)  # 10 tokens per second
    assert rl.acquire("a", 550) is None
    refusal = rl.acquire("a", 100)  # 50 left, 50 short: 5 s
    assert (refusal.kind, refusal.retry_after_s) == ("tokens", 5)
    clock.now += 4.99
    assert rl.acquire("a", 100).retry_after_s == 1
    clock.now += 0.01
    assert rl.acquire("a", 100) is None


def test_both_buckets_or_neither():
    clock = Clock()
    rl = RateLimiter(rpm=2, tpm=100, clock=clock)
    assert rl.acquire("a", 90) is None
    refusal = rl.acquire("a", 20)  # a request is left, tokens are not
    assert refusal.kind == "tokens"
    assert rl.acquire("a", 10) is None, "the refused request took no request from its bucket"
    refusal = rl.acquire("a", 0)
    assert refusal.kind == "requests", "two requests spent: the request bucket is empty now"
    # The wait is the longer of the two: 1 request refills in 30 s.
    assert refusal.retry_after_s == 30


def test_a_request_larger_than_the_bucket_never_fits():
    rl = RateLimiter(rpm=None, tpm=100, clock=Clock())
    refusal = rl.acquire("a", 101)
    assert refusal.kind == "tokens" and refusal.retry_after_s is None
    assert "too large" in refusal.message and "100" in refusal.message
    assert rl.acquire("a", 100) is None, "the refusal took nothing"


def test_refund_gives_back_up_to_the_capacity():
    clock = Clock()
    rl = RateLimiter(rpm=None, tpm=100, clock=clock)
    assert rl.acquire("a", 80) is None  # reserved 80, used 30: 50 come back
    rl.refund("a", 50)
    assert rl.acquire("a", 70) is None
    assert rl.acquire("a", 1) is not None
    rl.refund("a", 10**6)  # never above the capacity
    assert rl.acquire("a", 100) is None and rl.acquire("a", 1) is not None
    rl.refund("nobody", 10)  # a client without buckets: nothing to give back to


def test_full_buckets_are_dropped_when_the_table_grows():
    clock = Clock()
    rl = RateLimiter(rpm=60, tpm=None, clock=clock, max_clients=2)
    assert rl.acquire("a", 1) is None and rl.acquire("b", 1) is None
    clock.now += 0.5  # neither is full yet (1 request per second)
    assert rl.acquire("c", 1) is None
    assert set(rl._buckets) == {"a", "b", "c"}
    clock.now += 1.0  # a, b and c are full again
    assert rl.acquire("d", 1) is None
    assert set(rl._buckets) == {"d"}


@pytest.mark.parametrize("amount, level, wait", [(5, 10, 0.0), (15, 10, 2.5), (10, 10, 0.0)])
def test_bucket_wait(amount, level, wait):
    b = TokenBucket(capacity=20, rate=2.0, level=level, stamp=0.0)
    assert b.wait_s(amount) == wait
