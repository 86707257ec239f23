"""The capacity view in words: every number with the arithmetic that produced it, so an
architect can check it by hand and see which input to change."""

from __future__ import annotations

from typing import TYPE_CHECKING

from workbench.plan.cost import HOURS_PER_MONTH
from workbench.plan.step_params import error_band

if TYPE_CHECKING:
    from workbench.widgets.capacity import CapacityView, Setup


def summary_rows(v: CapacityView) -> list[tuple[str, str]]:
    """(quantity, value) pairs as text rounded to what the model can claim, so a printed table
    is identical on every platform (nbval compares it)."""
    f = v.fleet
    slo = "met" if v.tpot_slo_met else "MISSED"
    return [
        ("model / GPU / precision", f"{v.model} / {v.gpu} / {v.precision}"),
        ("GPUs per replica (tensor parallel)", str(v.tp)),
        ("GPU memory (GB)", f"{v.gpu_memory_gb:.1f}"),
        ("  weights per GPU (GB)", f"{v.weights_gb:.2f}"),
        ("  KV in use at the operating batch (GB)", f"{v.kv_in_use_gb:.2f}"),
        ("  free for more KV (GB)", f"{v.kv_free_gb:.2f}"),
        ("  reserve (GB)", f"{v.reserve_gb:.2f}"),
        ("KV per sequence per GPU (MB)", f"{v.kv_mb_per_sequence:.1f}"),
        ("max concurrent sequences", str(v.max_concurrent_seqs)),
        ("operating batch", str(v.batch)),
        ("decode step (ms)", f"{v.decode_step_ms:.2f}"),
        ("prefill of one prompt (ms)", f"{v.prefill_ms:.2f}"),
        (f"TPOT (ms), SLO {v.inputs['tpot_slo_ms']:g} {slo}", f"{v.tpot_ms:.2f}"),
        ("TTFT floor, no queueing (ms)", f"{v.ttft_floor_ms:.1f}"),
        ("output tokens/s per replica", f"{v.output_tokens_per_s:,.0f}"),
        ("requests/s per replica", f"{v.requests_per_s:.2f}"),
        ("replicas", str(f.replicas)),
        ("GPUs", str(f.gpus)),
        ("achieved utilization", f"{f.utilization:.3f}"),
        ("$ per GPU-hour", f"{v.price_per_gpu_hour:.2f}"),
        ("$ per month (always on)", f"{f.monthly_cost:,.0f}"),
        ("$ per month if paying only busy time", f"{f.monthly_cost_full_use:,.0f}"),
        ("$ per 1M tokens (prompt + output)", f"{f.cost_per_million_tokens:.4f}"),
        ("$ per 1M output tokens", f"{f.cost_per_million_output_tokens:.4f}"),
    ]


def explain(v: CapacityView, s: Setup) -> str:
    f, i = v.fleet, v.inputs
    eff, out = s.efficiency, s.output_tokens
    per_step = v.batch / out
    lines = [
        f"{v.model} at {v.precision} (KV cache {v.kv_dtype}) on {v.tp} x {v.gpu} per replica "
        f"({v.tp_reason}).",
        f"Memory per GPU: {v.gpu_memory_gb:.1f} GB = weights {v.weights_gb:.2f} + KV of "
        f"{v.batch} sequences {v.kv_in_use_gb:.2f} + free {v.kv_free_gb:.2f} + reserve "
        f"{v.reserve_gb:.2f} GB ({s.reserve_fraction:.0%} held back for activations and "
        "fragmentation).",
        f"KV: {v.kv_mb_per_sequence:.1f} MB per GPU for a {s.prompt_tokens} + {out}-token "
        f"request, so {v.max_concurrent_seqs} sequences fit beside the weights.",
        f"Roofline at MBU {eff.memory:.2f} / MFU {eff.compute:.2f} "
        f"(workbench.plan.step_cost), {s.decode_context} cached tokens on average: "
        f"{v.batch} / {out} = {per_step:.3g} requests join per step. " + _tpot_sentence(v, s),
    ]
    if v.tpot_slo_met:
        if v.batch == v.max_concurrent_seqs:
            limit = "more sequences would not fit"
        elif v.batch == s.batch_limit(v.tp):
            limit = ("the engine's max_num_seqs / max_num_batched_tokens admit no more "
                     "sequences")
        else:
            limit = "one more sequence would miss the SLO"
        lines.append(f"The operating batch is {v.batch}: {limit}.")
    else:
        lines.append("The TPOT SLO is missed even at batch 1: fewer weight bytes (int8 / int4), "
                     "more GPUs per replica or a faster GPU would help; the figures below are "
                     "at batch 1.")
    lines += [
        f"One replica: {v.batch} / ({out} x {v.tpot_ms:.2f} ms) = {v.requests_per_s:.3g} "
        f"requests/s ({v.output_tokens_per_s:,.0f} output tokens/s).",
        f"At a {i['utilization']:.0%} target utilization, {f.rate_rps:g} requests/s need "
        f"ceil({f.rate_rps:g} / ({v.requests_per_s:.3g} x {i['utilization']:g})) = "
        f"{f.replicas} replicas = {f.gpus} GPUs, {f.utilization:.0%} busy on average.",
        f"Cost: {f.gpus} GPUs x {HOURS_PER_MONTH:g} h x ${v.price_per_gpu_hour:.2f} = "
        f"${f.monthly_cost:,.0f} per month; ${f.cost_per_million_tokens:.3f} per 1M tokens "
        f"(${f.cost_per_million_output_tokens:.3f} per 1M output tokens) at that utilization. "
        f"Paying only for busy GPU time would cost ${f.monthly_cost_full_use:,.0f}.",
    ]
    if v.ttft_slo_met is not None:
        verdict = "within" if v.ttft_slo_met else "already over"
        lines.append(f"TTFT floor (one prefill + one step, no queueing): {v.ttft_floor_ms:.0f} ms, "
                     f"{verdict} the {i['ttft_slo_ms']:g} ms SLO; queueing adds to it, so "
                     "check percentiles with the simulator (notebook 04).")
    lines.append(f"Step times come from the step model fitted to published vLLM measurements "
                 f"({s.efficiency.source}); on measurements held out of that fit its forecasts "
                 f"missed by {error_band().summary()} (median).")
    lines.append("Not modelled: queueing delay, bursts beyond "
                 "the utilization headroom.")
    return "\n".join(lines)


def _tpot_sentence(v: CapacityView, s: Setup) -> str:
    """How TPOT follows from the two kinds of step (see capacity_analytic.Setup.cycle)."""
    verdict = (f"{'<=' if v.tpot_slo_met else '>'} the {v.inputs['tpot_slo_ms']:g} ms SLO "
               f"(step overhead {s.overhead_s * 1e3:g} ms included).")
    if v.prefill_share >= 1:
        return (f"Every step carries prefill: {v.batch} decodes and "
                f"{v.prefill_step_tokens:,.0f} prefill tokens take {v.prefill_step_ms:.2f} ms "
                f"({v.step_bound}-bound), so TPOT = {v.tpot_ms:.2f} ms " + verdict)
    p = v.prefill_share
    return (f"Their {s.prompt_tokens}-token prompts go in chunks of "
            f"{v.prefill_step_tokens:,.0f} tokens, so a share {p:.3g} of steps carries one: "
            f"{v.batch} decodes plus a chunk take {v.prefill_step_ms:.2f} ms "
            f"({v.step_bound}-bound), decodes alone {v.decode_step_ms:.2f} ms. TPOT = "
            f"{1 - p:.3g} x {v.decode_step_ms:.2f} + {p:.3g} x {v.prefill_step_ms:.2f} = "
            f"{v.tpot_ms:.2f} ms " + verdict)
