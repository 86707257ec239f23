"""The step model's parameters per GPU class, fitted to published measurements, and the error
those parameters showed on measurements held out of their fit.

`workbench/plan/published/step_params.yaml` is written by `workbench plan fit-published`
(workbench.sim.published_fit) from the dataset in the same folder; it holds a `generic` set
(all GPUs) and one set per GPU class with enough rows, plus the leave-one-source-out error of
each forecast metric. Hardware without a set of its own borrows the sets fitted on GPUs of the
same architecture (`architecture` in the hardware catalog: an A100 80GB the A100 40GB's, an
H200 the H100's and GH200's, averaged), else gets the generic one: its efficiencies are shares
of its own spec-sheet peaks, and the same kernels on the same chip generation reach similar
shares.
"""

from __future__ import annotations

from dataclasses import dataclass, fields
from functools import cache
from pathlib import Path

import yaml

from workbench.plan.step_cost import Efficiency

PARAMS_FILE = Path(__file__).parent / "published" / "step_params.yaml"
PARAMETER_NAMES = tuple(f.name for f in fields(Efficiency) if f.name != "source")


@dataclass(frozen=True)
class ErrorBand:
    """Median absolute relative error of forecasts on held-out published measurements."""

    tpot: float
    ttft: float
    output_throughput: float
    how: str

    def text(self, metric: str) -> str:
        return f"±{getattr(self, metric) * 100:.0f}% on held-out published measurements"

    def summary(self) -> str:
        """"TPOT ±25%, TTFT ±70%, throughput ±36%": what every forecast for hardware not at
        hand carries (median absolute error, leave-one-source-out)."""
        return (f"TPOT ±{self.tpot:.0%}, TTFT ±{self.ttft:.0%}, "
                f"throughput ±{self.output_throughput:.0%}")


def efficiency_from_dict(values: dict, source: str) -> Efficiency:
    unknown = set(values) - set(PARAMETER_NAMES)
    if unknown:
        raise ValueError(f"step parameters: unknown {sorted(unknown)}; allowed: "
                         f"{', '.join(PARAMETER_NAMES)}")
    return Efficiency(**values, source=source)


@cache
def _load(path: Path = PARAMS_FILE) -> dict:
    if not path.exists():
        raise ValueError(f"step parameters: {path} is missing; run `workbench plan "
                         "fit-published` to fit them to the published dataset")
    return yaml.safe_load(path.read_text())


def fitted_sets() -> dict[str, Efficiency]:
    """{"generic": ..., "<gpu>": ...}: every parameter set the file holds."""
    data = _load()
    how = data.get("how", "")
    out = {"generic": efficiency_from_dict(data["generic"], f"fitted to published "
                                                            f"measurements, all GPUs ({how})")}
    for gpu, values in (data.get("gpus") or {}).items():
        out[gpu] = efficiency_from_dict(values, f"fitted to published measurements on "
                                                f"{gpu} ({how})")
    return out


def default_efficiency(hw) -> Efficiency:
    """The parameters a forecast for `hw` (a Hardware or its name) uses by default."""
    sets = fitted_sets()
    per_gpu = {k: v for k, v in sets.items() if k != "generic"}
    return parameters_for_gpu(getattr(hw, "name", hw), sets["generic"], per_gpu)


def parameters_for_gpu(gpu: str, generic: Efficiency, per_gpu: dict[str, Efficiency]
                       ) -> Efficiency:
    """`gpu`'s own set, else the mean of the sets of GPUs of its architecture, else generic."""
    from dataclasses import replace

    if gpu in per_gpu:
        return per_gpu[gpu]
    arch = _architecture(gpu)
    kin = [per_gpu[k] for k in sorted(per_gpu) if arch and _architecture(k) == arch]
    if not kin:
        return generic
    mean = {n: sum(getattr(e, n) for e in kin) / len(kin) for n in PARAMETER_NAMES
            if all(isinstance(getattr(e, n), float | int) for e in kin)}
    names = ", ".join(k for k in sorted(per_gpu) if _architecture(k) == arch)
    return replace(kin[0], **mean, source=f"fitted on {names} (same architecture, {arch}); "
                                          f"{gpu} has no set of its own")


def _architecture(gpu: str) -> str:
    from workbench.plan.hardware import get_hardware

    try:
        return get_hardware(gpu).architecture
    except ValueError:
        return ""


def error_band() -> ErrorBand:
    b = _load()["error_band"]
    return ErrorBand(b["tpot"], b["ttft"], b["output_throughput"], b["how"])


def efficiency_for(hw, memory: float | None = None, compute: float | None = None
                   ) -> Efficiency:
    """The fitted parameters for `hw`, with the user's MBU / MFU where given."""
    from dataclasses import replace

    base = default_efficiency(hw)
    if memory is None and compute is None:
        return base
    return replace(base, memory=base.memory if memory is None else memory,
                   compute=base.compute if compute is None else compute,
                   source=f"MBU/MFU given by the user; the rest {base.source}")


# The parameters that are shares of a chip's peaks carry from one machine to another; the
# fixed costs (per step, per sequence, per all-reduce, client) belong to the machine.
SHARES = ("memory", "compute", "compute_half_tokens", "attention_memory", "attention_compute")


def on_hardware(calibrated: Efficiency | None, hw) -> Efficiency:
    """The parameters for `hw` when a calibration measured another machine: its shares of the
    peaks, `hw`'s own fitted fixed costs. None: `hw`'s fitted set."""
    from dataclasses import replace

    base = default_efficiency(hw)
    if calibrated is None:
        return base
    return replace(base, **{n: getattr(calibrated, n) for n in SHARES},
                   source=f"shares of peak {calibrated.source}; fixed costs {base.source}")


def validation_tables() -> dict:
    """The held-out error tables stored with the parameters ({} before the first fit):
    {"leave-one-source-out, by GPU": {group: {metric: error, "rows": n}}, ..., "knees": ...}."""
    return _load().get("validation") or {}
