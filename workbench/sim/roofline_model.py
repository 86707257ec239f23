"""A step-time model for hardware that is not at hand, from the roofline (an EXTRAPOLATION).

Each simulated step is priced by workbench.plan.step_cost, the same function the planning
calculators use, so a simulation and an analytic plan disagree only where their models of the
traffic differ, never in what a step costs. The parameters default to those fitted to
published measurements for the GPU (workbench.plan.step_params); `calibrated_efficiency`
replaces them with the ones a fit measured on the machine at hand.
It plugs into the simulator in place of a fitted model (same `predict_record`).
"""

from __future__ import annotations

from workbench.plan.budget import DEFAULT_RESERVE, memory_plan
from workbench.plan.hardware import Hardware
from workbench.plan.models_catalog import ModelArch
from workbench.plan.step_cost import (
    PEAK,
    Batch,
    Efficiency,
    StepCostModel,
    efficiency_from_measurement,
)


class RooflineStepModel:
    extrapolated = True
    family = "roofline"

    def __init__(self, arch: ModelArch, hw: Hardware, precision: str = "bf16",
                 kv_dtype: str = "auto", tp: int = 1,
                 efficiency: Efficiency | None = None,
                 step_overhead_s: float | None = None,
                 reserve_fraction: float = DEFAULT_RESERVE, context: int | None = None):
        """context: the longest request the deployment admits (its max_model_len); one must
        fit beside the weights. None = the model's full trained context."""
        self.cost = StepCostModel(arch, hw, precision, kv_dtype, tp, efficiency,
                                  step_overhead_s)
        p, kvd = self.cost.precision, self.cost.kv_dtype
        self.arch, self.hw, self.precision, self.tp = arch, hw, p, tp
        self.efficiency, self.step_overhead_s = self.cost.efficiency, self.cost.overhead_s
        # Raises ModelDoesNotFitError when one `context`-token request does not fit.
        plan = memory_plan(arch, hw, p, context, kv_dtype, tp, reserve_fraction)
        # What the simulator reads from any step model:
        self.model = {"name": arch.name, "path": arch.name, "architecture": arch.name,
                      "hidden_size": arch.hidden_size, "num_layers": arch.num_layers,
                      "max_model_len": plan.context, "vocab_size": arch.vocab_size,
                      "eos_token_ids": [], "kv_bytes_per_token": self.cost.kv_per_token,
                      "weight_bytes": plan.weight_gb_per_gpu * 1e9,
                      "kv_pool_bytes": int(plan.kv_budget_gb_per_gpu * 1e9)}
        self.engine = {"dtype": p, "kv_cache_dtype": kvd, "quantization": p, "tp": tp}
        self.hardware = hw.name
        self.inter_step_gap_s = 0.0
        self.created, self.validation = "", {"note": "roofline extrapolation, not fitted"}

    def predict_record(self, r) -> float:
        return self.cost.seconds(r)


# The batches calibration compares: a batch-1 decode (memory-bound) and one 512-token prefill
# (compute-bound), the two regimes whose efficiencies the roofline needs.
CALIBRATION_DECODE = Batch.decode(1, 256)
CALIBRATION_PREFILL = Batch.prefill(512)


def calibrated_efficiency(fit, local_hw: Hardware | None, local_arch: ModelArch,
                          precision: str = "fp32") -> Efficiency:
    """MBU and MFU that the engine achieved on the machine at hand, read off a fitted model:
    its predicted batch-1 decode and 512-token prefill against the roofline of `local_hw`.

    local_hw: the figures of the machine the fit was measured on; None measures this machine
    (workbench.plan.hardware.measure_hardware, on the fit's device), which is right when the
    fit was made here. A packaged catalog entry describes some other machine. An efficiency
    above 1 means those figures are too low for the machine that ran the fit: it raises,
    naming the raw figure, instead of quietly capping it at 1.
    """
    if local_hw is None:
        from workbench.plan.hardware import measure_hardware

        device = fit.engine.get("device") or "auto"
        local_hw = measure_hardware(device=device if device in ("cpu", "cuda") else "auto")
    bound = StepCostModel(local_arch, local_hw, precision, efficiency=PEAK, overhead_s=0.0)
    decode, prefill = bound.cost(CALIBRATION_DECODE), bound.cost(CALIBRATION_PREFILL)
    # A Batch carries the StepRecord fields a fitted model reads.
    mbu = efficiency_from_measurement(decode.memory_time_s,
                                      fit.predict_record(CALIBRATION_DECODE))
    mfu = efficiency_from_measurement(prefill.compute_time_s,
                                      fit.predict_record(CALIBRATION_PREFILL))
    for name, value, peak in (("MBU", mbu, f"{local_hw.memory_bandwidth_gb_s:g} GB/s"),
                              ("MFU", mfu, f"{bound.peak / 1e12:g} TFLOPS")):
        if value > 1:
            raise ValueError(
                f"calibrate: the fit runs at {value:.2f}x the roofline of {local_hw.name} "
                f"({name} {value:.2f} > 1): its peak figure ({peak}) is too low for the "
                f"machine the fit ({fit.hardware or 'unknown machine'}) was measured on; "
                "measure that machine (workbench.plan.hardware.measure_hardware) or give "
                "its real figures")
    return fit_parameters_to(fit, bound, Efficiency(
        mbu, mfu, f"measured by the engine on {local_hw.name} ({fit.model.get('name')}, "
                  f"fit {fit.created or 'unsaved'}); raw MBU {mbu:.3f}, MFU {mfu:.3f}"))


def calibration_batches(max_len: int) -> list[Batch]:
    """The batches a fit is read at: decodes over batch and context, prefills over length,
    and mixed steps (chunked prefill beside decodes)."""
    ctx = [c for c in (32, 128, 512, 2048) if c < max_len] or [max_len // 2]
    fills = [n for n in (16, 64, 256, 512, 1024) if n <= max_len] or [max_len]
    out = [Batch.decode(b, c) for b in (1, 2, 4, 8, 16, 32) for c in ctx]
    out += [Batch.prefill(n) for n in fills]
    for b in (4, 16):
        chunk = Batch.prefill(fills[-1] // 2)
        out.append(Batch(chunk.num_prefill_tokens, 1, chunk.prefill_attention, b,
                         b * ctx[0], ctx[0]))
    return out


def fit_parameters_to(fit, bound: StepCostModel, start: Efficiency) -> Efficiency:
    """The step model's whole parameter set (the one fitted to published GPU measurements)
    fitted to a `workbench fit` of the engine: least squares on the log of step times over
    `calibration_batches`, starting from the raw MBU / MFU. So a calibration from the user's
    own run replaces every fitted parameter, not only the two efficiencies."""
    from dataclasses import replace

    import numpy as np
    from scipy.optimize import least_squares

    from workbench.sim.published_fit import BOUNDS

    names = [n for n in BOUNDS if n not in ("client_s", "allreduce_latency_s")]
    batches = calibration_batches(int(fit.model.get("max_model_len") or 2048))
    want = np.log([max(fit.predict_record(b), 1e-9) for b in batches])
    works = [bound.work(b.num_prefill_tokens, b.num_prefill_seqs, b.prefill_attention,
                        b.num_decode_seqs, b.decode_context) for b in batches]
    # Any machine may run far below a GPU's efficiencies: only the upper bounds carry over.
    lo = np.array([0.005 if n in ("memory", "compute", "attention_memory",
                                  "attention_compute") else BOUNDS[n][0] for n in names])
    # ... and a CPU's per-step and per-sequence costs dwarf a GPU's.
    hi = np.array([{"overhead_s": 1.0, "per_seq_s": 0.05}.get(n, BOUNDS[n][1]) for n in names])
    x0 = np.array([min(getattr(start, n) or BOUNDS[n][2], 1.0) if n in ("memory", "compute")
                   else BOUNDS[n][2] for n in names])

    def residuals(x):
        e = replace(start, **dict(zip(names, x, strict=True)))
        return np.log([bound.time_of(w, e) for w in works]) - want

    x = least_squares(residuals, np.clip(x0, lo + 1e-9, hi - 1e-9), bounds=(lo, hi)).x
    return replace(start, **{n: float(v) for n, v in zip(names, x, strict=True)},
                   client_s=0.0, allreduce_latency_s=0.0)
