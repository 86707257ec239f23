"""A step-time model for hardware that is not at hand, from the roofline (an EXTRAPOLATION).

Each simulated step is priced by workbench.plan.step_cost, the same function the planning
calculators use, so a simulation and an analytic plan disagree only where their models of the
traffic differ, never in what a step costs. The efficiencies default to published values;
`calibrated_efficiency` replaces them with the ones a fit measured on the machine at hand.
It plugs into the simulator in place of a fitted model (same `predict_record`).
"""

from __future__ import annotations

from workbench.plan.budget import DEFAULT_RESERVE, memory_plan
from workbench.plan.hardware import Hardware
from workbench.plan.models_catalog import ModelArch
from workbench.plan.step_cost import (
    DEFAULT_EFFICIENCY,
    DEFAULT_STEP_OVERHEAD_S,
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
                 efficiency: Efficiency = DEFAULT_EFFICIENCY,
                 step_overhead_s: float = DEFAULT_STEP_OVERHEAD_S,
                 reserve_fraction: float = DEFAULT_RESERVE, context: int | None = None):
        """context: the longest request the deployment admits (its max_model_len); one must
        fit beside the weights. None = the model's full trained context."""
        self.cost = StepCostModel(arch, hw, precision, kv_dtype, tp, efficiency,
                                  step_overhead_s)
        p, kvd = self.cost.precision, self.cost.kv_dtype
        self.arch, self.hw, self.precision, self.tp = arch, hw, p, tp
        self.efficiency, self.step_overhead_s = efficiency, step_overhead_s
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
    return Efficiency(mbu, mfu, f"measured by the engine on {local_hw.name} "
                                f"({fit.model.get('name')}, fit {fit.created or 'unsaved'}); "
                                f"raw MBU {mbu:.3f}, MFU {mfu:.3f}")

