"""Calibrate the step model on a CUDA GPU with the workbench's own engine (needs a GPU).

    python benchmarks/bench_gpu_calibration.py [--out DIR] [--layers 24]

1. Measure the GPU (copy bandwidth, bf16 matmul peak) beside its catalog entry.
2. Build a random-weight Llama-architecture checkpoint (~1.5B parameters at the defaults),
   profile it on the GPU in bf16 with the designed sweep and fit the step-time model: the
   same `workbench profile` + `workbench fit` a user runs.
3. Read the step model's whole parameter set off that fit (`calibrated_efficiency`) and print
   it beside the set fitted to published vLLM measurements for the same GPU class: the two
   engines' efficiencies, side by side.
Writes the fit and the parameters as JSON under --out.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from dataclasses import asdict
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", default=None)
    ap.add_argument("--layers", type=int, default=24)
    ap.add_argument("--hidden", type=int, default=2048)
    ap.add_argument("--catalog", default="h200", help="catalog entry of this GPU")
    ap.add_argument("--device", default="cuda", help="cuda (the point), or cpu for a dry run")
    args = ap.parse_args()
    out = Path(args.out or tempfile.mkdtemp(prefix="gpu-calibration-"))
    out.mkdir(parents=True, exist_ok=True)

    import torch

    from workbench.fit.from_runs import fit_from_runs
    from workbench.fit.profile import profile_model
    from workbench.models.tiny import ModelSpec, write_checkpoint
    from workbench.plan.hardware import get_hardware, measure_hardware
    from workbench.plan.models_catalog import get_model
    from workbench.plan.step_params import default_efficiency
    from workbench.sim.roofline_model import calibrated_efficiency

    if args.device == "cuda":
        assert torch.cuda.is_available(), "this benchmark needs a CUDA GPU"
        print(f"device: {torch.cuda.get_device_name()}, torch {torch.__version__}")
    t = time.perf_counter()
    measured = measure_hardware(device=args.device)
    catalog = get_hardware(args.catalog)
    print(f"measured in {time.perf_counter() - t:.0f} s: {measured.memory_bandwidth_gb_s:,.0f} "
          f"GB/s copy, {measured.peak_tflops.get('bf16') or 0:,.0f} bf16 TFLOPS "
          f"(catalog {catalog.name}: {catalog.memory_bandwidth_gb_s:,.0f} GB/s, "
          f"{catalog.peak_tflops['bf16']:,.0f} TFLOPS)")

    spec = ModelSpec(hidden_size=args.hidden, num_layers=args.layers, num_heads=16,
                     num_kv_heads=8, intermediate_size=4 * args.hidden,
                     max_position_embeddings=4096)
    path = out / "model"
    t = time.perf_counter()
    write_checkpoint(path, spec, seed=0)
    arch = get_model(str(path))
    from workbench.plan.memory import param_count

    print(f"checkpoint: {param_count(arch) / 1e9:.2f}B parameters, written in "
          f"{time.perf_counter() - t:.0f} s")
    t = time.perf_counter()
    run = profile_model(str(path), {"dtype": "bfloat16", "device": args.device,
                                    "max_num_seqs": 64,
                                    "max_num_batched_tokens": 2048}, out / "runs",
                        hardware=measured.name, progress=False)
    fit = fit_from_runs([run])
    fit.save(out / "fit.json")
    print(f"profiled and fitted in {time.perf_counter() - t:.0f} s: held-out step MAPE "
          f"{fit.validation['mape'] * 100:.1f}%")
    print(fit.describe())
    for name, hw in (("measured", measured), ("catalog", catalog)):
        try:
            eff = calibrated_efficiency(fit, hw, arch, "bf16")
        except ValueError as e:
            print(f"calibration against the {name} figures: {e}")
            continue
        published = default_efficiency(catalog)
        keys = ("memory", "compute", "compute_half_tokens", "attention_mbu", "attention_mfu",
                "overhead_s", "per_seq_s")
        rows = {k: (getattr(eff, k), getattr(published, k)) for k in keys}
        print(f"\nparameters against the {name} figures: this engine | fitted to published "
              f"vLLM measurements ({catalog.name})")
        for k, (a, b) in rows.items():
            print(f"  {k:>20}: {a:10.4g} | {b:10.4g}")
        (out / f"parameters-{name}.json").write_text(json.dumps(
            {"engine": asdict(eff), "published": asdict(published)}, indent=2, default=str))


if __name__ == "__main__":
    main()
