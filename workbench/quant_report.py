"""What each weight precision costs and saves on one model, measured in one run.

Per precision (`none` = the model's own dtype; int8; int4 and int4-awq at a group size; fp8):
- weight bytes, exact (model.weight_bytes(): codes, scales, zeros, AWQ factors and the layers
  that stay unquantized), the quantized layers' bytes against the same layers in fp32, and the
  analytic calculator's figure (workbench.plan.memory.weight_bytes) with its error;
- load time (LLMEngine.from_pretrained: reading, quantizing, AWQ's calibration and search);
- decode tokens/s at batch 1 and 16 (pure decode steps only, from the engine's telemetry;
  median of repeats, the precisions measured in rotation so machine noise falls on all), and
  batch 1's time per token against the weight-bandwidth bound (weight bytes / copy bandwidth);
- quality on held-out text (the stdlib files training never saw, windows of `seq_len` tokens,
  teacher-forced through the engine): perplexity, and KL(none || precision) and top-1
  agreement of the next-token distributions against the unquantized model.
"""

from __future__ import annotations

import math
import re
import statistics
import time
from dataclasses import asdict, dataclass

import torch

PRECISIONS = ("none", "int8", "int4-g32", "int4-g64", "int4-g128", "int4-awq-g64",
              "int4-awq-g128", "fp8")
_SPEC = re.compile(r"^(none|int8|fp8|int4|int4-awq)(?:-g(\d+))?$")
DEFAULT_INT4_GROUP = 128


def parse_precision(spec: str) -> tuple[str, int]:
    """'int4-g64' -> ('int4', 64); 'int8' -> ('int8', 128) (the group size is unused)."""
    m = _SPEC.match(str(spec))
    if not m or (m.group(2) and not m.group(1).startswith("int4")):
        raise ValueError(f"precisions: unknown {spec!r}; allowed: none, int8, fp8, int4-gN, "
                         f"int4-awq-gN (N the group size, e.g. {', '.join(PRECISIONS)})")
    return m.group(1), int(m.group(2) or DEFAULT_INT4_GROUP)


@dataclass(slots=True)
class PrecisionRow:
    precision: str
    quantization: str
    group_size: int | None
    kernel: str  # the matmul path of the quantized layers (quantize.kernel_names)
    weight_bytes: int
    layer_bytes: int  # the quantized projections (all of them: their model-dtype size for none)
    layer_bytes_vs_fp32: float
    analytic_weight_bytes: int
    analytic_error: float  # analytic / measured - 1
    load_s: float
    decode_tok_s_batch1: float
    decode_tok_s_batch16: float
    batch1_ms_per_token: float
    batch1_vs_bound: float  # batch 1's time per token / the weight-bandwidth bound
    perplexity: float | None
    perplexity_change: float | None  # perplexity / none's - 1
    mean_kl: float | None  # nats, against none
    top1_agreement: float | None


def held_out_windows(tokenizer, windows: int, seq_len: int) -> list[list[int]]:
    """The first `windows` non-overlapping windows of the held-out stdlib stream."""
    from workbench.models.train import stdlib_files, tokenize_files

    _, held = stdlib_files()
    stream = tokenize_files(tokenizer, held).tolist()
    n = min(windows, len(stream) // seq_len)
    return [stream[i * seq_len:(i + 1) * seq_len] for i in range(n)]


def decode_rate(engine, batch: int, seed: int = 0, new_tokens: int = 64) -> float:
    """Output tokens per second over the engine's pure decode steps at `batch` sequences."""
    from workbench.bench import decode_steps

    steps = decode_steps(engine, batch, n=new_tokens, seed=seed)
    return sum(r.num_decode_seqs for r in steps) / sum(r.t_end - r.t_start for r in steps)


def _layer_bytes(model) -> tuple[int, int]:
    """(bytes of the quantized projections as stored, the same weights in fp32)."""
    from workbench.models.quantize import projections

    stored = fp32 = 0
    for parent, attr, _ in projections(model):
        layer = getattr(parent, attr)
        fp32 += layer.in_features * layer.out_features * 4
        stored += (layer.stored_bytes() if hasattr(layer, "stored_bytes")
                   else layer.weight.numel() * layer.weight.element_size())
    return stored, fp32


def _analytic_bytes(arch, quantization: str, group: int, dtype: torch.dtype) -> int:
    from workbench.plan.memory import weight_bytes

    base = {torch.float32: "fp32", torch.bfloat16: "bf16", torch.float16: "fp16"}[dtype]
    precision = base if quantization == "none" else quantization
    return weight_bytes(arch, precision, group, unquantized=base)


def quant_report(model: str = "tiny-trained", dtype: str = "auto",
                 precisions: tuple[str, ...] | list[str] = PRECISIONS, repeats: int = 3,
                 windows: int = 16, seq_len: int = 256, quality: bool = True, seed: int = 0,
                 log=print):
    """One row per precision (see the module) as a pandas DataFrame; `attrs` holds the
    workload, the seed and the copy bandwidth."""
    import pandas as pd

    from workbench.engine import EngineConfig, LLMEngine
    from workbench.engine.kv_quality import compare_logits, teacher_forced_logits
    from workbench.models.quantize import kernel_names
    from workbench.plan.hardware import copy_bandwidth
    from workbench.plan.models_catalog import get_model

    specs = [parse_precision(p) for p in precisions]
    if repeats < 1 or windows < 1 or seq_len < 2:
        raise ValueError("repeats and windows must be >= 1 and seq_len >= 2")
    batch = 16
    blocks = batch * -(-(max(seq_len, 32 + 64) + 1) // 16) + 1
    # Warm-up: the first read from disk and the tokenizer's first load are no precision's.
    LLMEngine.from_pretrained(model, EngineConfig(dtype=dtype, device="cpu", num_kv_blocks=8,
                                                  max_num_seqs=1))
    engines, load_s = {}, {}
    for label, (quantization, group) in zip(precisions, specs, strict=True):
        start = time.perf_counter()
        engines[label] = LLMEngine.from_pretrained(model, EngineConfig(
            dtype=dtype, device="cpu", num_kv_blocks=blocks, max_num_seqs=batch,
            max_num_batched_tokens=2048, quantization=quantization,
            quantization_group_size=group, seed=seed))
        load_s[label] = time.perf_counter() - start
        log(f"  loaded {label} in {load_s[label]:.1f} s")
    first = engines[precisions[0]]
    arch = get_model(first.model_path)

    for engine in engines.values():  # warm-up: the first pass pays for allocation
        decode_rate(engine, 1, seed=seed, new_tokens=8)
    rates: dict[tuple[str, int], list[float]] = {}
    for r in range(repeats):
        for label, engine in engines.items():
            for b in (1, batch):
                rates.setdefault((label, b), []).append(decode_rate(engine, b, seed=seed + r))
        log(f"  decode repeat {r + 1}/{repeats} done")
    bandwidth = copy_bandwidth(1 << 28, budget_s=0.5)

    nll, kl, top1 = {}, {}, {}
    if quality:
        texts = held_out_windows(first.tokenizer, windows, seq_len)
        prompts, forced = [t[:1] for t in texts], [t[1:] for t in texts]
        targets = torch.tensor([tok for f in forced for tok in f])
        reference = None
        for label, engine in engines.items():
            logits = torch.cat(teacher_forced_logits(engine, prompts, forced)).float()
            nll[label] = float(torch.nn.functional.cross_entropy(logits, targets))
            if reference is None:
                reference = logits
            same, divergence = compare_logits(reference, logits)
            kl[label], top1[label] = float(divergence.mean()), float(same.float().mean())
            log(f"  {label}: held-out perplexity {math.exp(nll[label]):.2f}")
        base_label = precisions[0]

    rows = []
    for label, (quantization, group) in zip(precisions, specs, strict=True):
        engine = engines[label]
        measured = engine.model.weight_bytes()
        analytic = _analytic_bytes(arch, quantization, group, engine.dtype)
        layer, layer_fp32 = _layer_bytes(engine.model)
        b1 = statistics.median(rates[(label, 1)])
        bound_ms = measured / bandwidth * 1e3
        ppl = math.exp(nll[label]) if quality else None
        rows.append(PrecisionRow(
            label, quantization, group if quantization.startswith("int4") else None,
            "+".join(kernel_names(engine.model)), measured, layer, layer / layer_fp32,
            analytic, analytic / measured - 1, load_s[label], b1,
            statistics.median(rates[(label, batch)]), 1e3 / b1, 1e3 / b1 / bound_ms, ppl,
            ppl / math.exp(nll[base_label]) - 1 if quality else None,
            kl.get(label), top1.get(label)))
    frame = pd.DataFrame([asdict(r) for r in rows]).set_index("precision")
    frame.attrs.update({
        "model": str(model), "dtype": str(first.dtype).replace("torch.", ""), "seed": seed,
        "repeats": repeats, "copy_bandwidth_gb_s": bandwidth / 1e9,
        "workload": (f"decode: {batch} (and 1) seeded prompts of 32 tokens, 64 new tokens, "
                     f"pure decode steps, median of {repeats}; quality: "
                     + (f"{len(prompts)} held-out windows of {seq_len} tokens "
                        f"({len(targets)} predictions)" if quality else "not measured")),
    })
    return frame


def format_table(frame) -> str:
    """A markdown table of the report (the README's and the CLI's)."""
    a = frame.attrs
    lines = [f"model {a['model']} ({a['dtype']}), seed {a['seed']}; {a['workload']}; "
             f"copy bandwidth {a['copy_bandwidth_gb_s']:.1f} GB/s",
             "",
             "| precision | kernel | weight MB | layers vs fp32 | analytic err | load s | "
             "decode tok/s b1 | b16 | b1 vs bound | perplexity | ppl change | KL | top-1 |",
             "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]

    def opt(v, fmt):
        return "-" if v is None or (isinstance(v, float) and math.isnan(v)) else format(v, fmt)

    for name, r in frame.iterrows():
        lines.append(
            f"| {name} | {r.kernel} | {r.weight_bytes / 1e6:.2f} | "
            f"{r.layer_bytes_vs_fp32:.3f}x | {r.analytic_error:+.2%} | {r.load_s:.2f} | "
            f"{r.decode_tok_s_batch1:.1f} | {r.decode_tok_s_batch16:.0f} | "
            f"{r.batch1_vs_bound:.1f}x | {opt(r.perplexity, '.2f')} | "
            f"{opt(r.perplexity_change, '+.2%')} | {opt(r.mean_kl, '.4f')} | "
            f"{opt(r.top1_agreement, '.2%')} |")
    return "\n".join(lines)


MEASURED_DIR = "fits/precision"


def default_table_path(model: str, dtype: str) -> str:
    from pathlib import Path

    return f"{MEASURED_DIR}/{Path(model).name}-{dtype}.json"


def save_table(frame, path) -> str:
    """The report as JSON: attrs and one record per precision (read back by `load_table`)."""
    import json
    from pathlib import Path

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    rows = frame.reset_index().to_dict(orient="records")
    path.write_text(json.dumps({"attrs": frame.attrs, "rows": rows}, indent=1, default=float))
    return str(path)


def load_table(path):
    import json
    from pathlib import Path

    import pandas as pd

    data = json.loads(Path(path).read_text())
    frame = pd.DataFrame(data["rows"]).set_index("precision")
    frame.attrs.update(data["attrs"])
    return frame
