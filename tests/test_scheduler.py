"""Scheduler and block manager as pure Python: no model, no torch."""

from __future__ import annotations

import subprocess
import sys

import pytest

from workbench.engine.block_manager import BlockManager
from workbench.engine.sampling_params import SamplingParams
from workbench.engine.scheduler import RequestRejected, Scheduler, SchedulerConfig
from workbench.engine.sequence import Sequence, SequenceStatus
from workbench.models.tokenizer_builder import FIRST_ORDINARY_TOKEN_ID


def make(num_blocks=64, block_size=4, max_num_seqs=8, budget=32, max_len=256, chunked=True):
    bm = BlockManager(num_blocks, block_size)
    return Scheduler(SchedulerConfig(max_num_seqs, budget, max_len, chunked, (2,)), bm), bm


def seq(rid, prompt_len, max_tokens=8, arrival=0.0):
    first = FIRST_ORDINARY_TOKEN_ID
    return Sequence(str(rid), list(range(first, first + prompt_len)), prompt_len,
                    SamplingParams(max_tokens=max_tokens, temperature=0), arrival)


def run_step(sched, token=7, now=1.0):
    out = sched.schedule(now)
    sampled = [token if s.samples else None for s in out.scheduled]
    return out, sched.update(out, sampled, now)


def test_no_torch_import():
    code = ("import sys, workbench.engine.scheduler, workbench.engine.block_manager, "
            "workbench.engine.sequence; assert 'torch' not in sys.modules, 'torch imported'")
    subprocess.run([sys.executable, "-c", code], check=True)


def test_block_manager_allocate_free_refcounts():
    bm = BlockManager(10, 4)
    s = seq(0, 9)
    assert bm.blocks_needed(s, 9) == 3
    bm.allocate(s, 9)
    assert len(s.block_table) == 3 and bm.num_free_blocks == 7
    assert all(bm.ref_counts[b] == 1 for b in s.block_table)
    s.num_computed_tokens = 9
    assert bm.blocks_needed(s, 3) == 0  # block 3 has room for tokens 10..12
    assert bm.blocks_needed(s, 4) == 1
    bm.free(s)
    assert bm.num_free_blocks == 10 and s.block_table == []
    with pytest.raises(RuntimeError):
        bm.allocate(seq(1, 100), 100)
    with pytest.raises(ValueError, match="block_size"):
        BlockManager(4, 0)


def test_token_budget_and_chunked_prefill_share_a_step():
    sched, _ = make(budget=16)
    sched.add(seq(0, 10))
    out, _ = run_step(sched)
    assert [(s.seq.request_id, s.num_tokens) for s in out.scheduled] == [("0", 10)]
    sched.add(seq(1, 40))
    out, _ = run_step(sched)
    # seq 0 decodes (1 token), seq 1 gets the remaining 15 tokens as a chunk
    assert [(s.seq.request_id, s.num_tokens, s.is_decode) for s in out.scheduled] == [
        ("0", 1, True), ("1", 15, False)]
    assert not out.scheduled[1].samples
    out, _ = run_step(sched)
    assert [s.num_tokens for s in out.scheduled] == [1, 15]
    out, _ = run_step(sched)
    assert [s.num_tokens for s in out.scheduled] == [1, 10] and out.scheduled[1].samples


def test_max_num_seqs_and_fcfs():
    sched, _ = make(max_num_seqs=2, budget=100)
    for i in range(4):
        sched.add(seq(i, 5))
    out, _ = run_step(sched)
    assert [s.seq.request_id for s in out.scheduled] == ["0", "1"]
    assert [s.request_id for s in sched.waiting] == ["2", "3"]


def test_without_chunking_a_prompt_waits_for_budget():
    sched, _ = make(budget=20, chunked=False, max_len=20)
    sched.add(seq(0, 12, max_tokens=4))
    sched.add(seq(1, 12, max_tokens=4))
    out, _ = run_step(sched)
    assert [s.num_tokens for s in out.scheduled] == [12]  # 12 + 12 > 20 and no chunking
    out, _ = run_step(sched)
    assert [s.num_tokens for s in out.scheduled] == [1, 12]  # a decode + 12 fit in 20


def test_preemption_takes_most_recent_and_resumes():
    # 7 blocks of 4 tokens: two 10-token prompts take 3 blocks each, the 7th stays free (the
    # admission watermark); growing to 13 tokens needs a 4th block each: only one is left.
    sched, bm = make(num_blocks=7, block_size=4, budget=64)
    a, b = seq("a", 10, max_tokens=8), seq("b", 10, max_tokens=8)
    sched.add(a)
    sched.add(b)
    run_step(sched)
    assert bm.num_free_blocks == 1
    run_step(sched)  # both decode: tokens 11 fit the 3rd block
    run_step(sched)  # token 12 fits
    out, _ = run_step(sched)  # token 13 needs a 4th block each: b (most recent) is preempted
    assert [v.request_id for v in out.preempted] == ["b"]
    assert b.status is SequenceStatus.WAITING and b.num_computed_tokens == 0 and b.preemptions == 1
    assert sched.waiting[0] is b
    tokens_at_preemption = b.num_tokens  # prompt + 3 outputs
    # b resumes by recomputing prompt + its outputs once a finishes, then samples a 4th
    while not a.is_finished:
        run_step(sched)
    out, _ = run_step(sched)
    assert out.scheduled[0].seq is b and out.scheduled[0].num_tokens == tokens_at_preemption
    assert b.num_output_tokens == 4


def test_swap_preemption_keeps_computed_tokens_and_resumes_before_new_admissions():
    # The recompute case above, with a host pool: b's 3 blocks go to host blocks and come back
    # with nothing to recompute, ahead of a request that arrived meanwhile.
    bm = BlockManager(7, 4, num_swap_blocks=3)
    sched = Scheduler(SchedulerConfig(8, 64, 256, True, (2,), preemption_mode="swap"), bm)
    a, b, c = seq("a", 10, max_tokens=8), seq("b", 10, max_tokens=8), seq("c", 4, max_tokens=2)
    sched.add(a)
    sched.add(b)
    for _ in range(3):
        run_step(sched)
    b_blocks = list(b.block_table)
    out, _ = run_step(sched)  # token 13 needs a 4th block each: b is swapped out
    assert [v.request_id for v in out.preempted] == ["b"] and out.num_swapped_out == 1
    assert [d for d, _ in out.swap_out] == b_blocks and bm.num_free_host_blocks == 0
    assert b.status is SequenceStatus.SWAPPED and b.num_computed_tokens == 12
    assert b.block_table == [] and len(b.host_table) == 3 and not sched.waiting
    sched.add(c)  # waits: swapped sequences resume first
    while not a.is_finished:
        out, _ = run_step(sched)
        assert c not in [x.seq for x in out.scheduled]
    out, _ = run_step(sched)
    assert out.num_swapped_in == 1 and b.host_table == []
    first = out.scheduled[0]
    assert first.seq is b and first.num_tokens == 1 and first.is_decode  # nothing recomputed
    assert len(out.swap_in) == 3 and bm.num_free_host_blocks == 3
    assert [x.seq for x in out.scheduled] == [b, c]  # c admitted once nothing is swapped
    while sched.has_unfinished():
        run_step(sched)
    assert b.num_output_tokens == 8 and bm.num_free_blocks == 7


def test_admission_keeps_a_watermark_of_free_blocks():
    # 10 blocks of 4: a's 16-token prompt fills 4 blocks exactly, so its first decode needs a
    # 5th. b's 24-token prompt needs the other 6: admitting it leaves nothing for a to grow
    # into, and the next step would preempt b (the most recent), wasting its prefill.
    sched, bm = make(num_blocks=10, block_size=4, budget=64)
    assert sched.watermark_blocks == 1  # ceil(0.01 x 10)
    a, b = seq("a", 16, max_tokens=8), seq("b", 24, max_tokens=8)
    sched.add(a)
    sched.add(b)
    out, _ = run_step(sched)
    assert [s.seq.request_id for s in out.scheduled] == ["a"]  # b waits: 6 + 1 > 6 free
    preempted = []
    while sched.has_unfinished():
        out, _ = run_step(sched)
        preempted += out.preempted
    assert preempted == [] and a.preemptions == b.preemptions == 0
    assert b.num_output_tokens == 8 and bm.num_free_blocks == 10


def test_watermark_never_blocks_a_lone_sequence():
    # A request that needs the whole pool still runs when nothing else does.
    sched, bm = make(num_blocks=6, block_size=4, budget=64)
    s = seq(0, 20, max_tokens=4)  # 24 tokens = all 6 blocks
    sched.add(s)
    while sched.has_unfinished():
        run_step(sched)
    assert s.num_output_tokens == 4 and s.preemptions == 0


def test_rejects_what_can_never_fit():
    sched, _ = make(num_blocks=4, block_size=4, max_len=64)
    with pytest.raises(RequestRejected, match="KV blocks"):
        sched.add(seq(0, 10, max_tokens=10))  # 20 tokens > 16-token pool
    with pytest.raises(RequestRejected, match="max_model_len"):
        sched.add(seq(1, 64, max_tokens=1))
    with pytest.raises(RequestRejected, match="max_tokens"):
        sched.add(seq(2, 60, max_tokens=10))
    assert not sched.has_unfinished()


def test_stop_conditions():
    sched, _ = make()
    s = seq(0, 4, max_tokens=3)
    sched.add(s)
    run_step(sched, token=9)
    _, done = run_step(sched, token=2)  # EOS
    assert done == [s] and s.finish_reason == "stop"
    s2 = seq(1, 4, max_tokens=2)
    s2.params.ignore_eos = True
    sched.add(s2)
    run_step(sched, token=2)
    _, done = run_step(sched, token=2)
    assert done == [s2] and s2.finish_reason == "length" and s2.num_output_tokens == 2


def test_prefill_first_runs_new_prompts_in_a_step_of_their_own_as_vllm_v0_does():
    bm = BlockManager(64, 4)
    sched = Scheduler(SchedulerConfig(8, 64, 256, False, (2,), prefill_first=True), bm)
    sched.add(seq(0, 10))
    out, _ = run_step(sched)                       # the first prompt
    assert [(s.seq.request_id, s.num_tokens) for s in out.scheduled] == [("0", 10)]
    out, _ = run_step(sched)                       # nothing waits: request 0 decodes
    assert [(s.seq.request_id, s.is_decode) for s in out.scheduled] == [("0", True)]
    sched.add(seq(1, 12))
    sched.add(seq(2, 5))
    out, _ = run_step(sched)                       # prompts first, the decode waits
    assert [s.seq.request_id for s in out.scheduled] == ["1", "2"]
    assert not any(s.is_decode for s in out.scheduled)
    out, _ = run_step(sched)                       # then every running sequence decodes
    assert sorted(s.seq.request_id for s in out.scheduled) == ["0", "1", "2"]
    assert all(s.is_decode for s in out.scheduled)
    # Without it (V1, or V0 with chunked prefill) a new prompt joins the decodes' step.
    mixed, _ = make(budget=64, chunked=False)
    mixed.add(seq(0, 10))
    run_step(mixed)
    mixed.add(seq(1, 12))
    out, _ = run_step(mixed)
    assert sorted((s.seq.request_id, s.is_decode) for s in out.scheduled) == [
        ("0", True), ("1", False)]


def test_prefix_cache_shares_whole_blocks_and_evicts_least_recently_freed():
    bm = BlockManager(8, 4)
    sched = Scheduler(SchedulerConfig(4, 64, 64, True, (2,), enable_prefix_caching=True), bm)
    a = seq("a", 10)                 # blocks: [0-3] [4-7] [8-9 + output]
    sched.add(a)
    run_step(sched)
    assert bm.num_cached_blocks == 2 and a.block_keys
    b = seq("b", 9)                  # same 9 first tokens: 2 full blocks cached, 1 to compute
    sched.add(b)
    out, _ = run_step(sched)
    assert b.cached_prompt_tokens == 8 and out.cached_tokens == 8
    assert b.block_table[:2] == a.block_table[:2]
    assert all(bm.ref_counts[x] == 2 for x in a.block_table[:2])
    c = seq("c", 8)                  # all 8 tokens cached: the last block is computed again
    sched.add(c)
    run_step(sched)
    assert c.cached_prompt_tokens == 4 and c.block_table[0] == a.block_table[0]
    a_blocks = list(a.block_table)
    for s in (a, b, c):
        sched.finish(s, "abort", 2.0)
    assert bm.num_free_blocks == 8 and set(bm.ref_counts) == {0}
    # a's three full blocks (its prompt's two and [8, 9, out, out]) stay reusable while free.
    assert bm.num_cached_blocks == 3 and bm.evictions == 0
    hits = bm.hit_tokens
    d = seq("d", 30, max_tokens=2)  # a's first two blocks, then every other block of the pool
    sched.add(d)
    run_step(sched)
    assert bm.hit_tokens == hits + 8 and d.block_table[:2] == a_blocks[:2]
    assert bm.evictions == 1 and bm.num_free_blocks == 0  # a's third block was taken


@pytest.mark.parametrize("seed", range(6))
@pytest.mark.parametrize("mode", ["recompute", "swap"])
def test_randomized_block_accounting_never_leaks(seed, mode):
    """Mixed lengths, shared prefixes, aborts mid-stream (waiting, running or swapped) and
    preemption of both kinds (a host pool too small for every victim, so swap falls back to
    recompute too): after every request has finished or been aborted, every block is free
    (cached ones included), every host block is back, no reference is left and the cache's two
    maps agree."""
    import random

    rng = random.Random(seed)
    bm = BlockManager(16, 4, num_swap_blocks=4 if mode == "swap" else 0)
    sched = Scheduler(SchedulerConfig(6, 24, 64, True, (2,), enable_prefix_caching=True,
                                      preemption_mode=mode), bm)
    kinds = {"swap": 0, "recompute": 0}
    prefixes = [[FIRST_ORDINARY_TOKEN_ID + rng.randrange(50) for _ in range(rng.randint(3, 13))]
                for _ in range(3)]
    live, preempted, t = [], 0, 0.0
    for i in range(80):
        if rng.random() < 0.5:
            p = rng.choice(prefixes) + [FIRST_ORDINARY_TOKEN_ID + rng.randrange(50)
                                        for _ in range(rng.randint(1, 20))]
            s = Sequence(str(i), p, len(p), SamplingParams(max_tokens=rng.randint(1, 20),
                                                          ignore_eos=True), t)
            sched.add(s)
            live.append(s)
        if live and rng.random() < 0.1:  # abort one mid-stream (waiting, running or swapped)
            victim = rng.choice([s for s in live if not s.is_finished] or live)
            sched.finish(victim, "abort", t)
        t += 1.0
        out, _ = run_step(sched, token=FIRST_ORDINARY_TOKEN_ID + rng.randrange(50), now=t)
        preempted += len(out.preempted)
        kinds["swap"] += out.num_swapped_out
        kinds["recompute"] += len(out.preempted) - out.num_swapped_out
        live_seqs = (*sched.running, *sched.waiting, *sched.swapped)
        assert sum(bm.ref_counts) == sum(len(s.block_table) for s in live_seqs)
        assert bm.num_free_host_blocks + sum(len(s.host_table) for s in live_seqs) == \
            bm.num_swap_blocks
        assert all(not s.block_table and s.host_table for s in sched.swapped)
    while sched.has_unfinished():
        t += 1.0
        run_step(sched, now=t)
    assert preempted > 0 and bm.hit_tokens > 0, "the workload should preempt and hit"
    if mode == "swap":
        assert kinds["swap"] > 0 and kinds["recompute"] > 0, kinds
    assert bm.num_free_blocks == bm.num_blocks and set(bm.ref_counts) == {0}
    assert bm.num_free_host_blocks == bm.num_swap_blocks
    assert all(bm._key_of[b] == k for k, b in bm._block_of.items())
    assert sum(k is not None for k in bm._key_of) == len(bm._block_of)


def test_priority_orders_admission_and_chooses_the_preemption_victim():
    sched, bm = make(num_blocks=10, block_size=4, max_num_seqs=2, budget=64)
    low, high, mid = seq("low", 8, 16), seq("high", 8, 16), seq("mid", 8, 16)
    low.priority, high.priority, mid.priority = 5, -1, 0
    for s in (low, high, mid):
        sched.add(s)
    assert [s.request_id for s in sched.waiting] == ["high", "mid", "low"]
    out, _ = run_step(sched)
    assert [x.seq.request_id for x in out.scheduled] == ["high", "mid"]
    late = seq("late", 8, 16)  # same level as mid, later: FCFS within a level
    sched.add(late)
    assert [s.request_id for s in sched.waiting] == ["late", "low"]
    for _ in range(40):  # decodes grow until the pool runs out: mid (lowest running) goes
        out, _ = run_step(sched)
        if out.preempted:
            break
    assert [s.request_id for s in out.preempted] == ["mid"]
    assert [s.request_id for s in sched.waiting][:2] == ["mid", "late"]  # first in its level
    for bad in (1.5, "1", True):
        s = seq("bad", 4)
        s.priority = bad
        with pytest.raises(RequestRejected, match="priority: must be an integer"):
            sched.add(s)
