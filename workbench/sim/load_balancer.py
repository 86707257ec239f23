"""Load-balancing policies for simulated replicas (pure Python, deterministic given a seed)."""

from __future__ import annotations

import random

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
    """Lowest KV-pool occupancy, counting what waiting (and swapped-out) requests will need."""

    def __init__(self, seed: int = 0):
        pass

    def choose(self, replicas, spec) -> int:
        def load(r) -> float:
            bm = r.block_manager
            queued = sum(bm.blocks_for(s.num_tokens)
                         for s in (*r.scheduler.waiting, *r.scheduler.swapped))
            return (bm.num_used_blocks + queued) / bm.num_blocks

        return min(range(len(replicas)), key=lambda i: load(replicas[i]))


class PrefixAffinity:
    """Requests sharing a system prompt go to the same replica (so its prefix cache is warm);
    others go to the least loaded."""

    def __init__(self, seed: int = 0):
        self._fallback = LeastOutstanding()

    def choose(self, replicas, spec) -> int:
        if spec.prefix_group is not None:
            return spec.prefix_group % len(replicas)
        return self._fallback.choose(replicas, spec)


_CLASSES = dict(zip(POLICIES, (RoundRobin, Random, LeastOutstanding, LeastKV, PrefixAffinity),
                    strict=True))


def make_balancer(name: str, seed: int = 0):
    if name not in _CLASSES:
        raise ValueError(f"lb: must be one of {', '.join(POLICIES)}; got {name!r}")
    return _CLASSES[name](seed)
