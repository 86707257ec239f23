"""Generation throughput benchmark: this engine vs the static baseline vs Hugging Face generate.

One seeded mixed workload, all requests arriving at once, greedy with ignore_eos. Only each
request's own output tokens count as useful: tokens a padded batch generates past a request's
length are waste, not throughput. Batch-1 decode latency is compared with Hugging Face's and
with the memory-bandwidth bound (weight bytes / measured copy bandwidth).
"""

from __future__ import annotations

import json
import random
import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch

from workbench.engine import EngineConfig, LLMEngine, SamplingParams
from workbench.engine.static import StaticBatcher
from workbench.engine.telemetry import phase_profile
from workbench.models.tokenizer_builder import FIRST_ORDINARY_TOKEN_ID


@dataclass(frozen=True)
class Workload:
    prompts: list[list[int]]
    outputs: list[int]
    seed: int

    @property
    def useful_tokens(self) -> int:
        return sum(self.outputs)

    def describe(self) -> str:
        p = [len(x) for x in self.prompts]
        return (f"{len(p)} requests, prompt tokens {min(p)}-{max(p)} "
                f"(mean {statistics.mean(p):.0f}),"
                f" output tokens {min(self.outputs)}-{max(self.outputs)} "
                f"(mean {statistics.mean(self.outputs):.0f}), all arriving at t=0, greedy, "
                f"ignore_eos, seed {self.seed}")


def mixed_workload(num_requests: int = 64, prompt_range=(16, 512), output_range=(16, 256),
                   seed: int = 0, vocab: int = 4096) -> Workload:
    rng = random.Random(seed)
    prompts = [[rng.randrange(FIRST_ORDINARY_TOKEN_ID, vocab)
                for _ in range(rng.randint(*prompt_range))]
               for _ in range(num_requests)]
    outputs = [rng.randint(*output_range) for _ in range(num_requests)]
    return Workload(prompts, outputs, seed)


def parse_range(field: str, text: str) -> tuple[int, int]:
    """'16-512' -> (16, 512); both >= 1, MIN <= MAX."""
    try:
        lo, hi = (int(x) for x in str(text).split("-"))
    except ValueError:
        raise ValueError(f"{field}: must be MIN-MAX token counts, e.g. 16-512; got "
                         f"{text!r}") from None
    if not 1 <= lo <= hi:
        raise ValueError(f"{field}: needs 1 <= MIN <= MAX, got {text!r}")
    return lo, hi


def _params(w: Workload) -> list[SamplingParams]:
    return [SamplingParams(max_tokens=n, temperature=0.0, ignore_eos=True) for n in w.outputs]


def _timed(fn: Callable[[], object]) -> float:
    t = time.perf_counter()
    fn()
    return time.perf_counter() - t


def run_engine(engine: LLMEngine, w: Workload) -> tuple[float, int]:
    """(seconds, model steps) of one pass."""
    engine.reset_prefix_cache()  # every pass computes its prompts: no hits from the last one
    first = len(engine.telemetry)
    seconds = _timed(lambda: engine.generate(w.prompts, _params(w)))
    return seconds, len(engine.telemetry) - first


def run_static(engine: LLMEngine, w: Workload, batch_size: int) -> tuple[float, int]:
    """(seconds, model steps) of one pass."""
    engine.reset_prefix_cache()
    batcher = StaticBatcher(engine, batch_size)
    return _timed(lambda: batcher.generate(w.prompts, _params(w))), batcher.num_steps


def run_hf(hf_model, w: Workload, batch_size: int, pad_id: int = 0) -> tuple[float, None]:
    """(seconds, None: no model steps to count) of HF generate in padded batches of
    `batch_size` (left padding), each batch generating as many tokens as its longest member
    needs."""

    def go():
        for s in range(0, len(w.prompts), batch_size):
            prompts, outs = w.prompts[s : s + batch_size], w.outputs[s : s + batch_size]
            width = max(map(len, prompts))
            ids = torch.tensor([[pad_id] * (width - len(p)) + p for p in prompts])
            mask = torch.tensor([[0] * (width - len(p)) + [1] * len(p) for p in prompts])
            n = max(outs)
            with torch.inference_mode():
                hf_model.generate(ids, attention_mask=mask, max_new_tokens=n, min_new_tokens=n,
                                  do_sample=False, pad_token_id=pad_id)

    return _timed(go), None


# Cached tokens the decode rooflines are priced at: the decode measurements run 32-token
# prompts with 64-128 new tokens; at this size K/V reads are <1% of the weight reads.
DECODE_CONTEXT = 64


def decode_steps(engine: LLMEngine, batch: int, prompt_tokens: int = 32, n: int = 64,
                 seed: int = 0) -> list:
    """The telemetry of the pure decode steps at `batch` sequences of one seeded run
    (`batch` prompts of `prompt_tokens` tokens, `n` new tokens each)."""
    w = mixed_workload(batch, (prompt_tokens, prompt_tokens), (n, n), seed,
                       engine.model_config.vocab_size)
    first = len(engine.telemetry)
    engine.generate(w.prompts, _params(w))
    return [r for r in engine.telemetry[first:]
            if r.num_prefill_tokens == 0 and r.num_decode_seqs == batch]


def decode_profile(engine: LLMEngine, batch: int, prompt_tokens: int = 32, n: int = 64,
                   seed: int = 0) -> dict[str, float]:
    """Phase profile (ms per step) of pure decode steps at `batch` sequences."""
    return phase_profile(decode_steps(engine, batch, prompt_tokens, n, seed))


def engine_decode_latency(engine: LLMEngine, prompt: list[int], n: int) -> float:
    """Seconds per output token at batch 1, from the engine's own token timestamps."""
    out = engine.generate([prompt], SamplingParams(max_tokens=n, temperature=0, ignore_eos=True))
    times = out[0].metrics
    return (times.finish - times.first_token) / (n - 1)


def hf_decode_latency(hf_model, prompt: list[int], n: int) -> float:
    ids = torch.tensor([prompt])

    def gen(k):
        with torch.inference_mode():
            hf_model.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=k,
                              min_new_tokens=k, do_sample=False, pad_token_id=0)

    return (_timed(lambda: gen(n)) - _timed(lambda: gen(1))) / (n - 1)


def run_benchmark(model: str = "small", dtype: str = "float32", num_requests: int = 64,
                  batch_size: int = 16, repeats: int = 1, seed: int = 0,
                  include_hf: bool = True, log: Callable[[str], None] = print,
                  prompt_range: tuple[int, int] = (16, 512),
                  output_range: tuple[int, int] = (16, 256), profile: bool = False,
                  attention_backend: str = "sdpa") -> dict:
    """Each repeat runs every system once, in rotation (machine noise falls on all); the
    engine goes first, so its first pass is the first work after start-up (no warm-up):
    reported beside the median of the later passes."""
    from transformers import AutoModelForCausalLM

    engine = LLMEngine.from_pretrained(model, EngineConfig(
        dtype=dtype, max_num_seqs=batch_size, attention_backend=attention_backend))
    w = mixed_workload(num_requests, prompt_range, output_range, seed,
                       engine.model_config.vocab_size)
    log(f"workload: {w.describe()}")
    log(f"model: {model} ({engine.model.weight_bytes() / 1e6:.0f} MB of weights, {dtype}), "
        f"attention backend {attention_backend}, "
        f"torch threads: {torch.get_num_threads()}, repeats: {repeats} (medians reported)")
    hf = None
    if include_hf:
        hf = AutoModelForCausalLM.from_pretrained(str(engine.model_path),
                                                  dtype=getattr(torch, dtype)).eval()
    engine_name = f"workbench engine (continuous, max_num_seqs={batch_size})"
    contestants = {
        engine_name: lambda: run_engine(engine, w),
        f"static batching (batches of {batch_size})": lambda: run_static(engine, w, batch_size),
    }
    if hf is not None:
        contestants[f"HF generate (padded batches of {batch_size})"] = lambda: run_hf(
            hf, w, batch_size)
    runs: dict[str, list[float]] = {name: [] for name in contestants}
    model_steps: dict[str, int] = {}
    mixed_steps = []
    for r in range(repeats):
        for name, fn in contestants.items():
            first = len(engine.telemetry)
            took, steps = fn()
            runs[name].append(took)
            if steps is not None:  # the engine and static batching count theirs
                model_steps[name] = steps
            if name == engine_name:
                mixed_steps = engine.telemetry[first:]
        log(f"  repeat {r + 1}/{repeats}: "
            + ", ".join(f"{name.split(' (')[0]} {v[-1]:.1f} s" for name, v in runs.items()))
    seconds = {name: statistics.median(v) for name, v in runs.items()}
    for name, v in runs.items():
        log(f"  {name}: {seconds[name]:.1f} s ({', '.join(f'{x:.1f}' for x in v)})")
    engine_runs = runs[engine_name]

    prompt = w.prompts[0][:32]
    n_decode = 128
    eng_tpot = statistics.median(engine_decode_latency(engine, prompt, n_decode)
                                 for _ in range(max(3, repeats)))
    hf_tpot = (statistics.median(hf_decode_latency(hf, prompt, n_decode)
                                 for _ in range(max(3, repeats))) if hf is not None else None)
    roofline = roofline_bounds(engine, (1, batch_size), context=DECODE_CONTEXT)

    names = list(seconds)
    result = {
        "model": model, "dtype": dtype, "seed": seed, "attention_backend": attention_backend,
        "workload": w.describe(),
        "useful_tokens": w.useful_tokens, "repeats": repeats,
        "throughput_tok_s": {k: w.useful_tokens / v for k, v in seconds.items()},
        "seconds": seconds,
        "engine_vs_static": seconds[names[1]] / seconds[names[0]],
        "engine_vs_hf": seconds[names[2]] / seconds[names[0]] if hf is not None else None,
        "decode_ms_per_token": {"engine": eng_tpot * 1e3,
                                "hf": hf_tpot * 1e3 if hf_tpot else None,
                                "roofline": roofline["batch 1"]},
        "roofline_ms": roofline,
        "model_steps": model_steps,
        "engine_mean_sequences_per_step": statistics.mean(
            r.num_decode_seqs + r.num_prefill_seqs for r in mixed_steps),
        "engine_first_pass_tok_s": w.useful_tokens / engine_runs[0],
        "engine_later_passes_tok_s": (w.useful_tokens / statistics.median(engine_runs[1:])
                                      if len(engine_runs) > 1 else None),
    }
    if profile:
        result["profile_ms_per_step"] = {"batch 1": decode_profile(engine, 1, seed=seed),
                                         f"batch {batch_size}": decode_profile(
                                             engine, batch_size, seed=seed),
                                         "mixed": phase_profile(mixed_steps)}
    log("")
    log(format_table(result))
    return result


def format_table(r: dict) -> str:
    lines = ["| system | useful output tok/s | vs HF generate |", "|---|---:|---:|"]
    tput = r["throughput_tok_s"]
    hf_name = next((k for k in tput if k.startswith("HF")), None)
    for name, tps in tput.items():
        ratio = f"{tps / tput[hf_name]:.2f}x" if hf_name else "-"
        lines.append(f"| {name} | {tps:.0f} | {ratio} |")
    lines.append("")
    lines.append(f"engine / static baseline: {r['engine_vs_static']:.2f}x;  "
                 + (f"engine / HF generate: {r['engine_vs_hf']:.2f}x" if r["engine_vs_hf"] else ""))
    if r.get("model_steps"):
        steps = list(r["model_steps"].values())
        lines.append(f"model steps per pass: engine {steps[0]} (mean "
                     f"{r['engine_mean_sequences_per_step']:.1f} sequences a step), static "
                     f"{steps[1]} (every step at the full batch: finished members keep "
                     f"computing until the batch's longest is done)")
    d = r["decode_ms_per_token"]
    hf_part = (f"HF generate {d['hf']:.2f} ms ({d['engine'] / d['hf']:.2f}x HF), "
               if d["hf"] else "")
    lines.append(f"batch-1 decode: engine {d['engine']:.2f} ms/token, {hf_part}"
                 + (f"roofline {d['roofline']:.2f} ms ({d['engine'] / d['roofline']:.1f}x)"
                    if d["roofline"] else "roofline: n/a"))
    roof = r["roofline_ms"]
    rate = roof["matmul_tflops"]
    lines.append(f"(roofline: the planner's step model at peak efficiency with this machine's "
                 f"copy bandwidth {roof['bandwidth_gb_s']:.1f} GB/s and measured matmul "
                 + (f"{rate * 1e3:.0f} GFLOP/s)" if rate else "rate: not measured for this dtype)"))
    if r.get("engine_later_passes_tok_s"):
        lines.append(f"engine first pass after start {r['engine_first_pass_tok_s']:.0f} tok/s, "
                     f"later passes {r['engine_later_passes_tok_s']:.0f} tok/s "
                     f"({r['engine_first_pass_tok_s'] / r['engine_later_passes_tok_s']:.2f}x)")
    if r.get("profile_ms_per_step"):
        lines += ["", profile_table(r["profile_ms_per_step"])]
        for name, p in r["profile_ms_per_step"].items():
            if roof.get(name):
                lines.append(f"{name} decode step {p['step']:.2f} ms vs this machine's "
                             f"roofline {roof[name]:.2f} ms ({p['step'] / roof[name]:.1f}x)")
    return "\n".join(lines)


def roofline_bounds(engine: LLMEngine, batches, context: int) -> dict:
    """This machine's roofline for a decode step of each batch size at `context` cached
    tokens (the planner's step-cost model at peak efficiency, no fixed overhead), with the
    machine's measured copy bandwidth and matmul rate (plan.hardware.measure_hardware). No
    rate measured for the model's dtype (fp16 on most CPUs): the batches' entries are None."""
    from workbench.plan.hardware import measure_hardware
    from workbench.plan.models_catalog import get_model
    from workbench.plan.roofline import PEAK, decode_step

    hw = measure_hardware(device=engine.device.type)
    precision = {torch.float32: "fp32", torch.bfloat16: "bf16", torch.float16: "fp16"}[
        engine.dtype]
    arch = get_model(engine.model_path)
    rate = hw.peak_tflops.get(precision)
    return {"bandwidth_gb_s": hw.memory_bandwidth_gb_s, "matmul_tflops": rate,
            **{f"batch {b}": decode_step(arch, hw, b, context, precision, efficiency=PEAK,
                                         overhead_s=0.0).time_s * 1e3 if rate else None
               for b in batches}}


def profile_table(profiles: dict[str, dict[str, float]]) -> str:
    """Milliseconds per step of each phase (rows) per workload (columns), with shares."""
    names = list(profiles)
    rows = ["schedule", "prepare", "forward", "attention", "linear & other", "sample",
            "postprocess", "unaccounted", "step"]
    lines = ["| phase (ms per step) | " + " | ".join(names) + " |",
             "|---|" + "---:|" * len(names)]
    for row in rows:
        cells = []
        for n in names:
            p = profiles[n]
            share = f" ({p[row] / p['step']:.0%})" if row != "step" and p.get("step") else ""
            cells.append(f"{p.get(row, 0.0):.2f}{share}")
        label = f"  {row}" if row in ("attention", "linear & other") else row
        lines.append(f"| {label} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def save(result: dict, out_dir: str | Path) -> Path:
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    path = out / "bench.json"
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(result, indent=2))
    tmp.replace(path)
    (out / "bench.md").write_text(format_table(result) + "\n")
    return path


__all__ = ["Workload", "mixed_workload", "run_benchmark", "format_table", "save"]
