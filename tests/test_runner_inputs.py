"""The runner's vectorized input preparation against the per-token construction it replaced.

`reference_prepare` is the engine's former `ModelRunner.prepare`, kept here verbatim in what it
computes (one Python iteration per token for positions and cache slots, one list per decode
table): randomized steps of decodes, first chunks, later chunks, cached prefixes and sliding
windows must give identical inputs, slots, tables, masks and sample rows.
"""

from __future__ import annotations

import random

import pytest
import torch

from workbench.engine import EngineConfig, LLMEngine
from workbench.engine.sampling_params import SamplingParams
from workbench.engine.scheduler import ScheduledSeq
from workbench.engine.sequence import Sequence


def reference_prepare(scheduled, block_size: int, window: int | None):
    decodes = [i for i, s in enumerate(scheduled) if s.num_tokens == 1]
    prefills = [i for i, s in enumerate(scheduled) if s.num_tokens > 1]
    input_ids, positions, slots, sample_rows, sample_entries, chunks = [], [], [], [], [], []
    bs = block_size
    for i in decodes + prefills:
        sch = scheduled[i]
        seq, n = sch.seq, sch.num_tokens
        start = seq.num_computed_tokens
        table = seq.block_table
        if n > 1:
            ctx = start + n
            if start == 0 and not (window is not None and ctx > window):
                chunks.append((len(input_ids), n, ctx, None, None))
            else:
                q_pos = torch.arange(start, ctx).unsqueeze(1)
                k_pos = torch.arange(ctx).unsqueeze(0)
                mask = k_pos <= q_pos
                if window is not None:
                    mask &= k_pos > q_pos - window
                blocks = (torch.tensor(table[: -(-ctx // bs)]).clamp_(min=0)
                          if start > 0 else None)
                chunks.append((len(input_ids), n, ctx, blocks, mask))
        input_ids.extend(seq.token_ids[start : start + n])
        positions.extend(range(start, start + n))
        slots.extend(table[p // bs] * bs + p % bs for p in range(start, start + n))
        if sch.samples:
            sample_rows.append(len(input_ids) - 1)
            sample_entries.append(i)
    tables = mask = None
    if decodes:
        seqs = [scheduled[i].seq for i in decodes]
        ctx = [s.num_computed_tokens + 1 for s in seqs]
        width = -(-max(ctx) // bs)
        tables = torch.tensor([s.block_table[:width] + [0] * (width - len(s.block_table[:width]))
                               for s in seqs]).clamp_(min=0)
        key_pos = torch.arange(width * bs)
        ctx_t = torch.tensor(ctx).unsqueeze(1)
        mask = key_pos < ctx_t
        if window is not None:
            mask &= key_pos >= ctx_t - window
        mask = mask[:, None, None, :]
    return (torch.tensor(input_ids), torch.tensor(positions), torch.tensor(slots), tables, mask,
            chunks, torch.tensor(sample_rows, dtype=torch.long), sample_entries)


def random_step(rng: random.Random, block_size: int, window: int | None,
                num_blocks: int = 4096) -> list[ScheduledSeq]:
    """A step of 1-24 sequences: decodes, first prefill chunks, later chunks (after a chunk or
    a prefix-cache hit), some that sample and some mid-prefill; with a window, tables whose
    early entries were released (-1)."""
    free = list(range(1, num_blocks))
    rng.shuffle(free)
    scheduled = []
    for k in range(rng.randint(1, 24)):
        kind = rng.choice(["decode", "first chunk", "later chunk"])
        computed = 0 if kind == "first chunk" else rng.randint(1, 700)
        n = 1 if kind == "decode" else rng.randint(2, 300)
        total = computed + n
        prompt = total if kind != "decode" else rng.randint(1, total)
        tokens = [rng.randrange(3, 4096) for _ in range(total + rng.randint(0, 5))]
        need = -(-total // block_size)
        table = [free.pop() for _ in range(need)]
        if window is not None:
            released = max(0, (computed - window) // block_size - 1)
            table[:released] = [-1] * released
        seq = Sequence(f"r{k}", tokens, prompt, SamplingParams(max_tokens=8), 0.0)
        seq.num_computed_tokens, seq.block_table = computed, table
        samples = kind == "decode" or rng.random() < 0.5
        scheduled.append(ScheduledSeq(seq, n, samples, kind == "decode"))
    rng.shuffle(scheduled)
    return scheduled


@pytest.fixture(scope="module")
def runner():
    return LLMEngine.from_pretrained("tiny", EngineConfig(dtype="float32")).runner


@pytest.mark.parametrize("window", [None, 64, 200])
@pytest.mark.parametrize("block_size", [16, 32])
def test_vectorized_prepare_equals_per_token_construction(runner, window, block_size):
    rng = random.Random(f"{window}-{block_size}")
    saved = runner.window, runner.block_size
    runner.window, runner.block_size = window, block_size
    try:
        for _ in range(40):
            scheduled = random_step(rng, block_size, window)
            ids, pos, meta, rows, entries = runner.prepare(scheduled)
            (ref_ids, ref_pos, ref_slots, ref_tables, ref_mask, ref_chunks, ref_rows,
             ref_entries) = reference_prepare(scheduled, block_size, window)
            assert torch.equal(ids, ref_ids)
            assert torch.equal(pos, ref_pos)
            assert torch.equal(meta.slot_mapping, ref_slots)
            assert torch.equal(rows, ref_rows) and entries == ref_entries
            assert meta.num_decode == (0 if ref_tables is None else len(ref_tables))
            if ref_tables is None:
                assert meta.decode_block_tables is None and meta.decode_mask is None
            else:
                assert torch.equal(meta.decode_block_tables, ref_tables)
                assert torch.equal(meta.decode_mask, ref_mask)
            assert len(meta.prefills) == len(ref_chunks)
            for chunk, (start, length, ctx, blocks, mask) in zip(meta.prefills, ref_chunks,
                                                                 strict=True):
                assert (chunk.start, chunk.length, chunk.context_len) == (start, length, ctx)
                for got, want in ((chunk.block_table, blocks), (chunk.mask, mask)):
                    assert (got is None) == (want is None)
                    if want is not None:
                        assert torch.equal(got, want)
    finally:
        runner.window, runner.block_size = saved
