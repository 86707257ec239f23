"""Load-balancing policies (pure Python, deterministic given a seed), shared by the simulator's
replicas (workbench/sim/simulator.py) and the real gateway in front of replica processes
(workbench/server/gateway.py): one implementation, so a simulated policy is the policy served.

A policy reads only what both kinds of replica expose:
- `replica.outstanding`: requests routed to it and not yet finished (queued or running);
- `replica.kv_load`: share of its KV pool in use plus what its waiting requests will need;
and of the request (`spec`) only `spec.prefix_group`: a hashable key naming the prompt prefix
it shares with others (the simulator: the scenario's system-prompt index; the gateway: a hash
of the first KV block of the prompt), or None.
"""

from __future__ import annotations

import random
from collections import OrderedDict

POLICIES = ("round-robin", "random", "least-outstanding", "least-kv", "prefix-affinity")


class RoundRobin:
    def __init__(self, seed: int = 0):
        self._next = 0

    def choose(self, replicas, spec) -> int:
        i = self._next % len(replicas)
        self._next += 1
        return i


class Random:
    def __init__(self, seed: int = 0):
        self._rng = random.Random(seed)

    def choose(self, replicas, spec) -> int:
        return self._rng.randrange(len(replicas))


class LeastOutstanding:
    """Fewest requests queued or running; ties go to the lowest index."""

    def __init__(self, seed: int = 0):
        pass

    def choose(self, replicas, spec) -> int:
        return min(range(len(replicas)), key=lambda i: replicas[i].outstanding)


class LeastKV:
    """Lowest KV-pool occupancy, counting what waiting (and swapped-out) requests will need;
    ties go to the lowest index."""

    def __init__(self, seed: int = 0):
        pass

    def choose(self, replicas, spec) -> int:
        return min(range(len(replicas)), key=lambda i: replicas[i].kv_load)


class PrefixAffinity:
    """Requests sharing a prompt prefix go to the same replica (so its prefix cache is warm);
    others go to the least outstanding.

    A prefix counts as shared from its second sighting: the first request with a key goes to
    the least outstanding replica (a gateway cannot tell a shared prefix from a unique prompt
    until it recurs, and unique prompts should balance by load), and at the second the key
    gets the next ordinal, which places it: ordinal % replicas, so shared prefixes spread
    evenly over the replicas in the order they turn out to be shared. Both tables are bounded
    (least recently used keys forgotten), since a gateway sees an unbounded stream of keys."""

    MAX_KEYS = 65536

    def __init__(self, seed: int = 0):
        self._fallback = LeastOutstanding()
        self._seen: OrderedDict = OrderedDict()  # keys seen once
        self._placed: OrderedDict = OrderedDict()  # shared keys -> ordinal
        self._ordinals = 0

    def choose(self, replicas, spec) -> int:
        key = spec.prefix_group
        if key is None:
            return self._fallback.choose(replicas, spec)
        if key in self._placed:
            self._placed.move_to_end(key)
            return self._placed[key] % len(replicas)
        if key not in self._seen:
            _remember(self._seen, key, None, self.MAX_KEYS)
            return self._fallback.choose(replicas, spec)
        del self._seen[key]
        _remember(self._placed, key, self._ordinals, self.MAX_KEYS)
        self._ordinals += 1
        return self._placed[key] % len(replicas)


def _remember(table: OrderedDict, key, value, limit: int) -> None:
    table[key] = value
    if len(table) > limit:
        table.popitem(last=False)


_CLASSES = dict(zip(POLICIES, (RoundRobin, Random, LeastOutstanding, LeastKV, PrefixAffinity),
                    strict=True))


def make_balancer(name: str, seed: int = 0):
    if name not in _CLASSES:
        raise ValueError(f"lb: must be one of {', '.join(POLICIES)}; got {name!r}")
    return _CLASSES[name](seed)
