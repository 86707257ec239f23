"""Per-step telemetry: one record per engine step (the simulator writes the same records)."""

from __future__ import annotations

from dataclasses import dataclass, fields


@dataclass(slots=True)
class StepRecord:
    step: int
    t_start: float
    t_end: float
    num_prefill_tokens: int
    num_decode_seqs: int
    num_seqs: int
    sum_context_tokens: int  # K/V tokens attended over, summed across the batch
    kv_blocks_used: int
    kv_blocks_total: int
    num_preempted: int
    num_waiting: int
    # What a step costs depends on more than token counts; these feed the fitted step model.
    num_prefill_seqs: int = 0
    prefill_attention: int = 0  # query-key pairs of prefill chunks (causal): sum n*start + n(n+1)/2
    decode_context: int = 0  # K/V tokens read by decodes
    decode_max_context: int = 0  # decode attention is padded to the longest context
    num_cached_tokens: int = 0  # prompt tokens taken from the prefix cache by admissions
    num_preempted_swap: int = 0  # of num_preempted, swapped out (the rest are recomputed)
    num_swapped_in: int = 0  # sequences copied back from the host pool
    num_swapped: int = 0  # sequences waiting in the host pool after the step
    num_swap_blocks: int = 0  # blocks copied either way
    # Where the step's wall time went (seconds; the engine's step profiler, 0 in simulations):
    # scheduling (and swap copies), building the model's inputs, the model forward (of which
    # attention: paged_attention's calls, timed on CPU only, where kernels run synchronously),
    # sampling, and postprocessing (detokenizing, stop strings, outputs).
    phase_schedule_s: float = 0.0
    phase_prepare_s: float = 0.0
    phase_forward_s: float = 0.0
    phase_attention_s: float = 0.0
    phase_sample_s: float = 0.0
    phase_postprocess_s: float = 0.0


def step_record(step: int, t_start: float, t_end: float, sched, scheduler,
                after_update: bool = True) -> StepRecord:
    """The record of one step from the scheduler's output. After `update`, each scheduled
    sequence's num_computed_tokens already includes this step's tokens; before it (the
    simulator predicting a step's duration), they are added here. Pure Python: the simulator
    builds its records with this very function."""
    prefill_tokens = prefill_seqs = prefill_attn = 0
    decodes = dec_ctx = dec_max = 0
    context = 0
    for s in sched.scheduled:
        ctx = s.seq.num_computed_tokens + (0 if after_update else s.num_tokens)
        context += ctx
        if s.is_decode:
            decodes += 1
            dec_ctx += ctx
            dec_max = max(dec_max, ctx)
        else:
            n = s.num_tokens
            prefill_tokens += n
            prefill_seqs += 1
            prefill_attn += n * (ctx - n) + n * (n + 1) // 2
    bm = scheduler.block_manager
    return StepRecord(step, t_start, t_end, prefill_tokens, decodes, len(sched.scheduled), context,
                      bm.num_used_blocks, bm.num_blocks, len(sched.preempted),
                      scheduler.num_waiting, prefill_seqs, prefill_attn, dec_ctx, dec_max,
                      sched.cached_tokens, sched.num_swapped_out, sched.num_swapped_in,
                      scheduler.num_swapped, len(sched.swap_out) + len(sched.swap_in))


STEP_COLUMNS = [f.name for f in fields(StepRecord)]
PHASES = ("schedule", "prepare", "forward", "attention", "sample", "postprocess")


def telemetry_frame(source):
    """An engine (anything with `.telemetry`) or a list of StepRecords -> pandas DataFrame."""
    import operator

    import numpy as np
    import pandas as pd

    records = getattr(source, "telemetry", source)
    # A simulation can hold millions of steps: one float matrix, then typed columns, is far
    # faster than asdict() per record or pandas' inference over a list of tuples.
    row = operator.attrgetter(*STEP_COLUMNS)
    data = np.array([row(r) for r in records], dtype=np.float64).reshape(-1, len(STEP_COLUMNS))
    frame = pd.DataFrame(data, columns=STEP_COLUMNS)
    ints = [c for c in STEP_COLUMNS if c not in ("t_start", "t_end")
            and not c.startswith("phase_")]
    return frame.astype(dict.fromkeys(ints, "int64"))


def requests_frame(metrics):
    """RequestMetrics records -> pandas DataFrame with the per-request contract's columns:
    `records_frame` of workbench.traffic.metrics (a leaf module, the one builder of that table;
    the run store writes the same frame)."""
    from workbench.traffic.metrics import records_frame

    return records_frame([m.as_dict() for m in metrics])


def phase_profile(records) -> dict[str, float]:
    """Mean milliseconds per step of each phase over `records` (engine steps), with the
    forward split into attention and the rest ("linear & other": projections, MLP, norms,
    RoPE, LM head), the whole step and the part no phase covers."""
    records = list(records)
    if not records:
        return {}
    n = len(records)
    ms = {name: 1e3 * sum(getattr(r, f"phase_{name}_s") for r in records) / n
          for name in PHASES}
    ms["linear & other"] = ms["forward"] - ms["attention"]
    ms["step"] = 1e3 * sum(r.t_end - r.t_start for r in records) / n
    ms["unaccounted"] = ms["step"] - sum(ms[p] for p in PHASES if p != "attention")
    return ms
