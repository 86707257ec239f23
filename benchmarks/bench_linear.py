"""Per-layer matmul kernels on this machine: the numbers behind the engine's kernel choices.

    python benchmarks/bench_linear.py [--model small] [--rows 1,4,16,64,512] [--repeats 9]
                                      [--seed 0] [--threads N]

For every decoder projection shape of --model (fused qkv, o, fused gate/up, down; one seeded
random weight per layer, so a pass streams all the model's projection bytes as a decode step
does, never from cache), the time of one pass over all of them at each row count, for:

- fp32: F.linear (aten -> MKL sgemm), oneDNN over a `to_mkldnn()` weight, oneDNN over a
  weight reordered once for 64-row batches (workbench.models.cpu_linear.OneDnnLinear, what
  the engine uses for fp32 on CPU), and a batched matmul over the weight laid out as
  [out / 32, in, 32] panels (a GEMV-friendly layout: each panel is read once, contiguously;
  not used by the engine, since keeping it beside oneDNN's copy would double weight memory);
- bf16: F.linear (aten -> oneDNN), and int8 / int4 (group 64) weight-only layers through their
  CPU kernel and through the reference path (dequantize + dense), the cross-over that sets
  `kernel_max_rows` in workbench.models.quantize (group 64, or the largest that divides every
  layer's input features).

Systems run interleaved, one pass each in turn, --repeats times; medians reported with the
ratio to F.linear of the same dtype (>1 = faster) and the weight-read rate a pass reached.
The machine is shared and noisy: compare within one run, not across runs.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402
from torch import nn  # noqa: E402

from workbench.models.cpu_linear import OneDnnLinear, onednn_available  # noqa: E402
from workbench.models.quantize import Int4Linear, Int8Linear  # noqa: E402
from workbench.plan.models_catalog import get_model  # noqa: E402

PANEL = 32  # output channels per panel of the GEMV-friendly layout


def projection_shapes(model: str) -> list[tuple[int, int]]:
    """(out, in) of each decoder projection of every layer of `model`."""
    a = get_model(model)
    q, kv = a.num_heads * a.head_dim, a.num_kv_heads * a.head_dim
    per_layer = [(q + 2 * kv, a.hidden_size), (a.hidden_size, q),
                 (2 * a.intermediate_size, a.hidden_size), (a.hidden_size, a.intermediate_size)]
    return per_layer * a.num_layers


def systems(shapes, seed: int) -> dict[str, tuple[torch.dtype, list, int]]:
    """name -> (activation dtype, one callable layer per shape, bytes read per pass)."""
    gen = torch.Generator().manual_seed(seed)
    linears = [nn.Linear(i, o, bias=False) for o, i in shapes]
    for lin in linears:
        lin.weight.data = torch.randn(lin.weight.shape, generator=gen) * 0.02
    fp32_bytes = sum(o * i * 4 for o, i in shapes)
    out: dict[str, tuple[torch.dtype, list, int]] = {
        "fp32 F.linear (MKL sgemm)": (torch.float32, [lambda x, w=lin.weight: F.linear(x, w)
                                                      for lin in linears], fp32_bytes)}
    if onednn_available():
        plain = [lin.weight.detach().to_mkldnn() for lin in linears]
        out["fp32 oneDNN, to_mkldnn weight"] = (torch.float32, [
            lambda x, w=w: torch.ops.mkldnn._linear_pointwise(x, w, None, "none", [], "")
            for w in plain], fp32_bytes)
        out["fp32 oneDNN, reordered weight (engine)"] = (
            torch.float32, [OneDnnLinear(lin) for lin in linears], fp32_bytes)
    if all(o % PANEL == 0 for o, _ in shapes):
        panels = [lin.weight.detach().view(-1, PANEL, lin.in_features).transpose(1, 2)
                  .contiguous() for lin in linears]
        out[f"fp32 batched matmul, [out/{PANEL}, in, {PANEL}] panels"] = (torch.float32, [
            lambda x, w=w: torch.matmul(x, w).transpose(0, 1).reshape(x.shape[0], -1)
            for w in panels], fp32_bytes)
    bf16 = [nn.Linear(lin.in_features, lin.out_features, bias=False).to(torch.bfloat16)
            for lin in linears]
    for b, lin in zip(bf16, linears, strict=True):
        b.weight.data = lin.weight.data.to(torch.bfloat16)
    out["bf16 F.linear"] = (torch.bfloat16, bf16, fp32_bytes // 2)
    int8 = [Int8Linear(b) for b in bf16]
    group = next(g for g in (64, 32, 16, 8, 4, 2) if all(i % g == 0 for _, i in shapes))
    int4 = [Int4Linear.from_linear(b, group) for b in bf16]
    for name, layers in (("int8", int8), (f"int4 g{group}", int4)):
        nbytes = sum(m.stored_bytes() for m in layers)
        if all(m.kernel_name != "dequantize" for m in layers):  # the kernel takes the shapes
            out[f"bf16 {name} kernel"] = (torch.bfloat16, [
                lambda x, m=m: m._kernel_matmul(x) for m in layers], nbytes)
        out[f"bf16 {name} dequantize + dense"] = (torch.bfloat16, [
            lambda x, m=m: F.linear(x, m.dequantized(x.dtype)) for m in layers], nbytes)
    return out


@torch.inference_mode()
def measure(shapes, rows: list[int], repeats: int, seed: int):
    """(rows -> system -> median seconds of one pass over every projection, system -> bytes
    of weights a pass reads)."""
    table = systems(shapes, seed)
    gen = torch.Generator().manual_seed(seed + 1)
    result = {}
    for m in rows:
        inputs = {(dt, i): torch.randn(m, i, generator=gen).to(dt)
                  for dt in (torch.float32, torch.bfloat16) for i in {i for _, i in shapes}}
        times: dict[str, list[float]] = {name: [] for name in table}
        for _ in range(repeats):
            for name, (dtype, layers, _) in table.items():
                xs = [inputs[(dtype, i)] for _, i in shapes]
                t0 = time.perf_counter()
                for layer, x in zip(layers, xs, strict=True):
                    layer(x)
                times[name].append(time.perf_counter() - t0)
        result[m] = {name: statistics.median(v) for name, v in times.items()}
    return result, {name: b for name, (_, _, b) in table.items()}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--model", default="small")
    ap.add_argument("--rows", default="1,4,16,64,512")
    ap.add_argument("--repeats", type=int, default=9)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--threads", type=int, default=None)
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    rows = [int(r) for r in args.rows.split(",")]
    shapes = projection_shapes(args.model)
    print(f"model {args.model}: {len(shapes)} projections, "
          f"{sum(o * i for o, i in shapes) / 1e6:.1f}M weights; seed {args.seed}; "
          f"{torch.get_num_threads()} threads; medians of {args.repeats} interleaved passes")
    result, nbytes = measure(shapes, rows, args.repeats, args.seed)
    names = list(nbytes)
    print("\n| system (ms per pass) | " + " | ".join(f"{m} rows" for m in rows) + " |")
    print("|---|" + "---:|" * len(rows))
    for name in names:
        peer = "fp32 F.linear (MKL sgemm)" if name.startswith("fp32") else "bf16 F.linear"
        cells = []
        for m in rows:
            t = result[m][name]
            cells.append(f"{t * 1e3:.2f} ({result[m][peer] / t:.2f}x, "
                         f"{nbytes[name] / t / 1e9:.0f} GB/s)")
        print(f"| {name} | " + " | ".join(cells) + " |")
    print("\n(x: speed relative to F.linear in the same dtype; GB/s: weight bytes read per "
          "second, the bandwidth a pass reached)")


if __name__ == "__main__":
    main()
