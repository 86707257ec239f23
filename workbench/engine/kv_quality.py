"""How much a quantized KV cache changes a model's next-token predictions, on the engine's code.

Method. A seeded workload of prompts runs through an engine with full-precision KV
(kv_cache_dtype "auto": the model's dtype); its greedy continuation of every prompt is the
reference text. That text is then fed to an engine with full-precision KV and to one with the
quantized KV (teacher forcing): at each position both predict the next token from the same
history, so one early divergence cannot cascade into the rest of a sequence. Every step is the
engine's own: its scheduler (continuous batching, chunked prefill, prefix caching as
configured), block manager, `ModelRunner.logits` and paged attention over the KV format under
test; only the sampled token is replaced by the forced one.

Reported over every forced position: top-1 agreement (the two argmaxes are the same token) and
the mean KL(full || quantized) of the next-token distributions, in nats.

The noise floor: the same comparison with full-precision KV on both sides but another step
budget (so other prompt chunks and batch shapes). In fp32 it is ~0; in bf16 the logits
themselves are rounded to 2^-4 at a magnitude of ~10, ties between the top two tokens are
common, and the floor is ~1% of positions: quantized KV cannot be judged finer than that.
"""

from __future__ import annotations

import random
from dataclasses import asdict, dataclass

import torch

from workbench.engine.config import EngineConfig
from workbench.engine.sampling_params import SamplingParams
from workbench.engine.sequence import Sequence
from workbench.models.tokenizer_builder import FIRST_ORDINARY_TOKEN_ID


@dataclass(frozen=True, slots=True)
class KVQuality:
    model: str
    dtype: str  # the model's (and the reference KV's) dtype
    kv_cache_dtype: str
    step_budget: int  # the tested engine's max_num_batched_tokens
    kv_bytes_per_token: int
    reference_kv_bytes_per_token: int
    positions: int  # forced positions compared
    top1_agreement: float
    mean_kl: float  # nats
    max_kl: float
    # The widest reference top-1 minus top-2 logit gap at a position whose argmax changed
    # (0 when none did): how near a tie the changed predictions were.
    max_flipped_margin: float

    def as_dict(self) -> dict:
        return asdict(self)


def quality_workload(vocab_size: int, seed: int = 0, num_prompts: int = 16,
                     prompt_tokens: tuple[int, int] = (16, 192)) -> list[list[int]]:
    """Prompts of random ordinary token ids, lengths uniform in `prompt_tokens`."""
    rng = random.Random(seed)
    return [[rng.randrange(FIRST_ORDINARY_TOKEN_ID, vocab_size)
             for _ in range(rng.randint(*prompt_tokens))] for _ in range(num_prompts)]


def teacher_forced_logits(engine, prompts: list[list[int]],
                          forced: list[list[int]]) -> list[torch.Tensor]:
    """Next-token logits [len(forced[i]), vocab] of each prompt followed by its forced tokens:
    row j predicts forced[i][j]. Drives the engine's scheduler and runner step by step,
    bypassing `step` (no detokenizing, no telemetry)."""
    ids = []
    for i, (prompt, tokens) in enumerate(zip(prompts, forced, strict=True)):
        params = SamplingParams(max_tokens=len(tokens), temperature=0.0, ignore_eos=True)
        seq = Sequence(f"forced-{i}", engine.encode(prompt), len(prompt), params,
                       engine.clock())
        engine.scheduler.add(seq)
        ids.append(seq.request_id)
    want = dict(zip(ids, forced, strict=True))
    rows: dict[str, dict[int, torch.Tensor]] = {rid: {} for rid in ids}
    scheduler = engine.scheduler
    while scheduler.has_unfinished():
        now = engine.clock()
        sched = scheduler.schedule(now)
        entries, logits = engine.runner.logits(sched.scheduled)
        tokens: list[int | None] = [None] * len(sched.scheduled)
        for row, i in enumerate(entries):
            seq = sched.scheduled[i].seq
            position = len(seq.output_token_ids)  # keyed: a recomputed sequence samples on
            rows[seq.request_id][position] = logits[row]
            tokens[i] = want[seq.request_id][position]
        scheduler.update(sched, tokens, now)
    return [torch.stack([rows[rid][j] for j in range(len(want[rid]))]) for rid in ids]


def compare_logits(reference: torch.Tensor, other: torch.Tensor) -> tuple[torch.Tensor,
                                                                          torch.Tensor]:
    """Per row: whether the argmaxes agree, and KL(reference || other) in nats (rounding can
    leave a KL of ~0 a hair below zero: it is clamped there)."""
    ref_log, other_log = reference.float().log_softmax(-1), other.float().log_softmax(-1)
    kl = (ref_log.exp() * (ref_log - other_log)).sum(-1).clamp_min(0.0)
    return reference.argmax(-1) == other.argmax(-1), kl


NOISE_FLOOR = ("auto", 64)  # full-precision KV, 64-token steps: other chunks, same KV


def measure_kv_quality(model: str = "tiny", kv_cache_dtype: str = "int8", dtype: str = "auto",
                       **kwargs) -> KVQuality:
    """Top-1 agreement and KL of `kv_cache_dtype` against full-precision KV (see the module);
    keyword arguments as `compare_kv_dtypes`."""
    return compare_kv_dtypes(model, [kv_cache_dtype], dtype, **kwargs)[0]


def compare_kv_dtypes(model: str = "tiny", tested: list = ("int8", "fp8_e4m3"),
                      dtype: str = "auto", seed: int = 0, num_prompts: int = 16,
                      new_tokens: int = 32, block_size: int = 16,
                      max_num_batched_tokens: int = 512, device: str = "cpu",
                      loaded=None) -> list[KVQuality]:
    """One KVQuality per entry of `tested` against one full-precision reference.

    An entry is a kv_cache_dtype, or a (kv_cache_dtype, max_num_batched_tokens) pair to test
    another step budget too (`NOISE_FLOOR` measures the model dtype's own noise).
    The workload: `num_prompts` seeded prompts of 16-192 tokens, `new_tokens` forced tokens
    each, all submitted at once; the reference's 512-token step budget chunks the longer
    prompts. `loaded`: a (model, config, tokenizer, path) from `load_model` to reuse."""
    from workbench.engine.engine import LLMEngine
    from workbench.models.loader import load_model, load_tokenizer

    if loaded is None:
        net, cfg, path = load_model(model, dtype, device)
        loaded = (net, cfg, load_tokenizer(path), path)
    net, cfg, tok, path = loaded
    prompts = quality_workload(cfg.vocab_size, seed, num_prompts)
    blocks = sum(-(-(len(p) + new_tokens) // block_size) for p in prompts) + 1

    def engine(kv: str, budget: int = max_num_batched_tokens):
        return LLMEngine(net, cfg, tok, EngineConfig(
            dtype=dtype, device=device, block_size=block_size, num_kv_blocks=blocks,
            max_num_seqs=num_prompts, max_num_batched_tokens=budget,
            kv_cache_dtype=kv, seed=seed), path)

    greedy = SamplingParams(max_tokens=new_tokens, temperature=0.0, ignore_eos=True)
    forced = [o.token_ids for o in engine("auto").generate(prompts, greedy)]
    full = engine("auto")
    reference = torch.cat(teacher_forced_logits(full, prompts, forced))
    top2 = reference.topk(2, dim=-1).values
    margins = top2[:, 0] - top2[:, 1]
    results = []
    for entry in tested:
        kv, budget = (entry, max_num_batched_tokens) if isinstance(entry, str) else entry
        other = engine(kv, budget)
        same, kl = compare_logits(reference,
                                  torch.cat(teacher_forced_logits(other, prompts, forced)))
        results.append(KVQuality(
            str(model), str(full.dtype).replace("torch.", ""), kv, budget,
            other.kv_bytes_per_token, full.kv_bytes_per_token, same.numel(),
            float(same.float().mean()), float(kl.mean()), float(kl.max()),
            float(margins[~same].max()) if not same.all() else 0.0))
    return results
