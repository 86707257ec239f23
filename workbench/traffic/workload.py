"""A scenario -> the concrete, seeded list of requests a driver sends."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from workbench.models.tokenizer_builder import FIRST_ORDINARY_TOKEN_ID
from workbench.traffic.arrivals import ClosedLoop, Trace, arrival_times, trace_rows
from workbench.traffic.lengths import Empirical, sample_lengths
from workbench.traffic.scenario import Scenario, base_dir


@dataclass(slots=True)
class RequestSpec:
    index: int
    arrival_s: float | None  # None for closed loop: sent when a client is free
    prompt_token_ids: list[int]
    max_tokens: int
    prefix_group: int | None = None  # which shared system prompt, if any
    priority: int = 0  # lower runs first (the scenario's `priorities` classes)


def build_requests(scenario: Scenario, vocab_size: int) -> list[RequestSpec]:
    rng = np.random.default_rng(scenario.seed)
    base = base_dir(scenario)
    arrival = scenario.arrival
    if isinstance(arrival, Trace):
        times, prompt_lens, output_lens = trace_rows(arrival, base)
        if scenario.num_requests is not None:
            times, prompt_lens, output_lens = (a[: scenario.num_requests]
                                               for a in (times, prompt_lens, output_lens))
        if scenario.duration_s is not None:
            keep = times < scenario.duration_s
            times, prompt_lens, output_lens = times[keep], prompt_lens[keep], output_lens[keep]
    else:
        if isinstance(arrival, ClosedLoop):
            times = None
            n = scenario.num_requests
        else:
            times = arrival_times(arrival, rng, scenario.num_requests, scenario.duration_s)
            n = len(times)
        prompt_lens, output_lens = sample_lengths(
            scenario.prompt_tokens, scenario.output_tokens, n, rng, scenario.correlation, base)

    prefixes = _system_prompts(scenario, rng, vocab_size)
    sp = scenario.shared_prefix
    specs = []
    for i, (plen, olen) in enumerate(zip(prompt_lens, output_lens, strict=True)):
        group = None
        prefix: list[int] = []
        if prefixes and rng.random() < sp.fraction:
            group = int(rng.integers(sp.count))
            prefix = prefixes[group]
        body = max(1, int(plen) - len(prefix))  # the prefix is part of the prompt length
        ids = prefix + rng.integers(FIRST_ORDINARY_TOKEN_ID, vocab_size, size=body).tolist()
        specs.append(RequestSpec(i, None if times is None else float(times[i]), ids, int(olen),
                                 group))
    for spec, priority in zip(specs, _priorities(scenario, len(specs)), strict=True):
        spec.priority = priority
    return specs


def _priorities(scenario: Scenario, n: int) -> list[int]:
    """Each request's priority, drawn by the classes' shares (0 outside every class) from a
    stream of its own, so adding classes leaves every other draw of the scenario unchanged."""
    classes = scenario.priorities
    if not classes:
        return [0] * n
    edges = np.cumsum([c.share for c in classes])
    u = np.random.default_rng([scenario.seed, 1]).random(n)
    pick = np.searchsorted(edges, u, side="right")
    return [classes[k].priority if k < len(classes) else 0 for k in pick]


def check_inputs(scenario: Scenario) -> None:
    """Read the files a scenario names (trace, empirical lengths), so that a missing or
    malformed one is reported, naming its field, before any model is loaded."""
    base = base_dir(scenario)
    if isinstance(scenario.arrival, Trace):
        times, _, _ = trace_rows(scenario.arrival, base)
        if scenario.duration_s is not None and not (times < scenario.duration_s).any():
            raise ValueError(f"duration_s: no trace rows in the first {scenario.duration_s:g} s")
    for name, d in (("prompt_tokens", scenario.prompt_tokens),
                    ("output_tokens", scenario.output_tokens)):
        if isinstance(d, Empirical):
            try:
                d.resolve(base)
            except ValueError as e:
                raise ValueError(f"{name}.{e}") from None


def _system_prompts(scenario: Scenario, rng, vocab_size: int) -> list[list[int]]:
    sp = scenario.shared_prefix
    if sp.fraction == 0 or sp.tokens == 0:
        return []
    return [rng.integers(FIRST_ORDINARY_TOKEN_ID, vocab_size, size=sp.tokens).tolist()
            for _ in range(sp.count)]


def token_ids_to_text(ids: list[int], tokenizer, attempts: int = 10) -> str:
    """Text that re-tokenizes to exactly len(ids) tokens, as vLLM's random dataset does:
    decode, re-encode, then trim or extend and try again."""
    target = len(ids)
    text = tokenizer.decode(ids, skip_special_tokens=True)
    for _ in range(attempts):
        got = tokenizer(text, add_special_tokens=False)["input_ids"]
        if len(got) == target:
            return text
        got = got[:target] if len(got) > target else got + ids[: target - len(got)]
        text = tokenizer.decode(got, skip_special_tokens=True)
    return text
