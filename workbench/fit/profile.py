"""A designed profiling sweep: drive the real engine through chosen batch compositions.

Decode batches of every size up to DENSE_BATCHES, then powers of two, at several context
lengths (uniform and mixed), prefill chunks of several sizes (fresh and with prior context),
and decodes sharing a step with a prefill chunk. Every step goes through the engine's own
`step()`, so the telemetry is exactly what real runs record.
"""

from __future__ import annotations

import numpy as np

from workbench.engine import SamplingParams
from workbench.fit.step_model import SMALL_ROWS
from workbench.models.tokenizer_builder import FIRST_ORDINARY_TOKEN_ID

# Decode batches up to this size are all profiled, not only powers of two: on CPU a step's time
# is not linear in its rows at small sizes (matmul kernels and threading change with the row
# count: `tiny` decodes 3 sequences slower than 4), and served traffic runs every size. With
# powers of two only, the fit never saw the sizes scenarios mostly run (3, 5, 6, 7) and missed
# them by up to 20%.
DENSE_BATCHES = SMALL_ROWS  # the sizes the step model gives a factor of their own
MIXED_PREFILLS = 2  # prefill requests per case that decodes share steps with
ALONE_PREFILLS = 4  # prefill requests per case of prefills alone, one per step


def profile_plan(max_num_seqs: int, max_tokens_per_step: int, max_context: int) -> list[dict]:
    powers = sorted({b for b in (1, 2, 4, 8, 16, 32, 64) if b <= max_num_seqs} | {max_num_seqs})
    sizes = sorted(set(range(1, min(DENSE_BATCHES, max_num_seqs) + 1)) | set(powers))
    contexts = [c for c in (16, 64, 256, 1024) if c <= max_context // 2]
    chunks = [c for c in (16, 64, 256, 512, 1024, 2048)
              if c <= max_tokens_per_step and c < max_context - 1]
    # Batch sizes innermost: each size's cases are spread over the sweep, so a burst of load
    # on a shared machine cannot skew one size's small-batch factor. The in-between sizes run
    # at mixed context lengths only (prefilling the decoders is most of a sweep's time).
    plan = [{"decodes": b, "context": c, "spread": spread}
            for c in contexts for spread in (False, True) for b in sizes
            if spread or b in powers]
    # Prefill chunks beside decodes, the steps that carry real traffic's prefills: a chunk
    # joins in each of the first MIXED_PREFILLS steps, so the fit sees enough steps that run
    # both attention paths to price what that costs (the `mixed_step` feature).
    mixed = sorted(set(powers[:: max(1, len(powers) // 3)]) | {b for b in (2,) if b in powers})
    plan += [{"decodes": b, "context": 128, "prefill": p, "prefills": MIXED_PREFILLS}
             for b in mixed for p in chunks]
    # Prefill-only steps, several per chunk size: they are what the mixed steps' extra cost is
    # measured against, and one sample of each let one slow step move that cost by 2x.
    plan += [{"decodes": 0, "context": 0, "prefill": p, "prefills": ALONE_PREFILLS}
             for p in chunks]
    return plan


def run_profile(engine, decode_steps: int = 8, seed: int = 0, progress=None) -> list[int]:
    """Run the plan on `engine`; the steps land in `engine.telemetry`. Returns the plan case
    of every step (the fit holds out whole cases: steps within one are near-identical)."""
    rng = np.random.default_rng(seed)
    cfg = engine.config
    vocab = engine.model_config.vocab_size
    low = FIRST_ORDINARY_TOKEN_ID  # random prompts, special tokens excluded
    plan = profile_plan(cfg.max_num_seqs, cfg.max_num_batched_tokens, engine.max_model_len)
    cases: list[int] = []
    for i, case in enumerate(plan):
        first_step = len(engine.telemetry)
        ids = []
        for j in range(case["decodes"]):
            ctx = case["context"]
            if case.get("spread"):  # mixed lengths decorrelate total from padded context
                ctx = int(rng.integers(max(1, ctx // 8), ctx + 1))
            rid = f"p{i}-{j}"
            engine.add_request(rid, rng.integers(low, vocab, size=ctx).tolist(), SamplingParams(
                max_tokens=decode_steps + 2, temperature=0, ignore_eos=True))
            ids.append(rid)
        while ids and any(engine.scheduler.find(r) and engine.scheduler.find(r)
                          .num_output_tokens == 0 for r in ids):
            engine.step()  # prefill the decoders (recorded too: multi-sequence prefills)
        prefills = case.get("prefills", 1) if case.get("prefill") else 0
        for k in range(decode_steps):
            if k < prefills:  # a fresh prompt joins this step
                rid = f"p{i}-prefill{k}"
                engine.add_request(rid, rng.integers(low, vocab, size=case["prefill"]).tolist(),
                                   SamplingParams(max_tokens=1, temperature=0, ignore_eos=True))
                ids.append(rid)
            if engine.has_unfinished():
                engine.step()
        for rid in ids:
            engine.abort(rid)
        cases += [i] * (len(engine.telemetry) - first_step)
        if progress is not None:
            progress.update(1)
    return cases


def profile_model(model: str, engine_config: dict | None = None, out="runs",
                  hardware: str | None = None, seed: int = 0, progress: bool = True):
    """Profile `model` with the designed sweep and store the steps as a run directory."""
    import datetime as dt

    from workbench.engine import EngineConfig, LLMEngine, telemetry_frame
    from workbench.progress import progress_bar
    from workbench.traffic.run_scenario import describe_engine
    from workbench.traffic.run_store import records_frame, store_run

    engine = LLMEngine.from_pretrained(model, EngineConfig.from_dict(engine_config or {}))
    cfg = engine.config
    plan = profile_plan(cfg.max_num_seqs, cfg.max_num_batched_tokens, engine.max_model_len)
    bar = progress_bar(len(plan), progress, "profile", unit="case")
    started = dt.datetime.now(dt.UTC).isoformat()
    cases = run_profile(engine, seed=seed, progress=bar)
    bar.close()
    memory = _memory_section(engine)  # after the timed steps: it retunes the allocator
    steps = telemetry_frame(engine).assign(case=cases)
    t0 = steps["t_start"].min()
    steps[["t_start", "t_end"]] -= t0
    from pathlib import Path

    return store_run(out, f"profile-{Path(str(model)).name}", "profile", records_frame([]),
                     steps, started, hardware=hardware, target=describe_engine(engine, model),
                     num_cases=len(plan), memory=memory)


def _memory_section(engine) -> dict:
    """Analytic memory model of this engine, and the activation peaks measured beside it."""
    from workbench.fit.memory_model import activation_peak_bytes, measure_step_peak

    cfg = engine.model_config
    width = engine.dtype.itemsize  # activations run in the model's dtype, whatever the KV's
    sizes = [t for t in (256, 1024, 2048) if t <= engine.config.max_num_batched_tokens
             and t < engine.max_model_len]
    return {
        "weight_bytes": engine.model.weight_bytes(),
        "kv_bytes_per_token": engine.kv_bytes_per_token,
        "activation_bytes_per_token": activation_peak_bytes(
            cfg.hidden_size, cfg.intermediate_size, 1, width),
        "activation_peak_measured": {str(t): measure_step_peak(engine, t) for t in sizes},
        "activation_peak_model": {str(t): activation_peak_bytes(
            cfg.hidden_size, cfg.intermediate_size, t, width, 1, cfg.vocab_size) for t in sizes},
    }
