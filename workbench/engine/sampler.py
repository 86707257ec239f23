"""Token sampling: greedy, temperature, top-k, top-p, with optional per-request seeds.

Random draws use the exponential-race trick (argmax of p / Exp(1) is a draw from p), which lets
each row use its own generator. A seeded request's generator is re-seeded from (seed, position)
at every token, so its tokens do not depend on batch composition or on a preemption.
"""

from __future__ import annotations

import torch

from workbench.engine.sampling_params import SamplingParams


def sample(
    logits: torch.Tensor,
    params: list[SamplingParams],
    positions: list[int],
    generator: torch.Generator,
) -> list[int]:
    """logits: [S, V] float32; positions: index of the token being sampled in its sequence."""
    if all(p.greedy for p in params):
        return logits.argmax(dim=-1).tolist()
    tokens = logits.argmax(dim=-1)
    rows = [i for i, p in enumerate(params) if not p.greedy]
    sub = logits[rows]
    temps = torch.tensor([params[i].temperature for i in rows], device=sub.device)
    sub = sub / temps.unsqueeze(1)
    sub = _top_k(sub, [params[i].top_k for i in rows])
    sub = _top_p(sub, [params[i].top_p for i in rows])
    probs = sub.softmax(dim=-1)
    noise = torch.empty_like(probs)
    for j, i in enumerate(rows):
        p = params[i]
        gen = generator
        if p.seed is not None:
            gen = torch.Generator(device=probs.device).manual_seed(
                (p.seed * 1_000_003 + positions[i]) % (1 << 63))
        noise[j].exponential_(generator=gen)
    tokens[rows] = (probs / noise).argmax(dim=-1)
    return tokens.tolist()


def _top_k(logits: torch.Tensor, ks: list[int]) -> torch.Tensor:
    vocab = logits.shape[-1]
    ks_eff = [k if 0 < k < vocab else vocab for k in ks]
    if all(k == vocab for k in ks_eff):
        return logits
    kmax = max(ks_eff)
    top = logits.topk(kmax, dim=-1).values
    kth = top.gather(1, torch.tensor(ks_eff, device=logits.device).unsqueeze(1) - 1)
    return logits.masked_fill(logits < kth, float("-inf"))


def _top_p(logits: torch.Tensor, ps: list[float]) -> torch.Tensor:
    if all(p >= 1.0 for p in ps):
        return logits
    sorted_logits, order = logits.sort(dim=-1, descending=True)
    cum = sorted_logits.softmax(dim=-1).cumsum(dim=-1)
    p = torch.tensor(ps, device=logits.device).unsqueeze(1)
    # Drop a token once the mass before it already reaches p; the top token always stays.
    drop = (cum - sorted_logits.softmax(dim=-1)) >= p
    drop[:, 0] = False  # also when p underflows float32 to 0 (top_p=1e-320 is valid input)
    sorted_logits = sorted_logits.masked_fill(drop, float("-inf"))
    return torch.empty_like(logits).scatter_(1, order, sorted_logits)
