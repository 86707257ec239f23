"""The hardware catalog (hardware.yaml, shipped in the package) and a CPU measurement.

Peaks are dense (no 2:4 sparsity) spec-sheet figures; prices are indicative defaults that a
caller overrides. The CPU entry is measured, because no spec sheet describes a shared VM.
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass, field, replace
from functools import cache
from importlib import resources

import yaml

from workbench.plan.names import check_non_negative, lookup

COMPUTE_DTYPES = ("fp32", "bf16", "fp16", "fp8", "int8")


@dataclass(frozen=True, slots=True)
class Hardware:
    name: str
    vendor: str
    memory_gb: float
    memory_bandwidth_gb_s: float
    # Dense peak per dtype in TFLOPS (TOPS for int8); None where the chip has no such path.
    peak_tflops: dict[str, float | None] = field(default_factory=dict)
    interconnect: str = "pcie"          # nvlink | pcie | none
    interconnect_gb_s: float = 0.0
    price_per_hour: float = 0.0
    source: str = ""
    price_source: str = ""

    @property
    def memory_bytes(self) -> float:
        return self.memory_gb * 1e9

    @property
    def bandwidth_bytes_s(self) -> float:
        return self.memory_bandwidth_gb_s * 1e9

    def peak_flops(self, dtype: str) -> float:
        """FLOP/s for `dtype`; a ValueError names the dtypes this chip has."""
        value = self.peak_tflops.get(dtype)
        if not value:
            have = [k for k, v in self.peak_tflops.items() if v]
            raise ValueError(f"compute_dtype: {self.name} has no {dtype!r} peak; "
                             f"allowed: {', '.join(have)}")
        return value * 1e12

    def with_price(self, price_per_hour: float | None) -> Hardware:
        if price_per_hour is None:
            return self
        check_non_negative(price_per_hour=price_per_hour)
        return replace(self, price_per_hour=float(price_per_hour),
                       price_source="given by the user")


def _from_dict(name: str, d: dict) -> Hardware:
    peaks = {k: (float(v) if v is not None else None) for k, v in d["peak_tflops"].items()}
    return Hardware(name=name, vendor=d["vendor"], memory_gb=float(d["memory_gb"]),
                    memory_bandwidth_gb_s=float(d["memory_bandwidth_gb_s"]), peak_tflops=peaks,
                    interconnect=d["interconnect"],
                    interconnect_gb_s=float(d.get("interconnect_gb_s") or 0.0),
                    price_per_hour=float(d["price_per_hour"]), source=d["source"],
                    price_source=d.get("price_source", ""))


@cache
def hardware_catalog() -> dict[str, Hardware]:
    """Every entry of the packaged hardware.yaml, by name."""
    text = resources.files("workbench.plan").joinpath("hardware.yaml").read_text()
    raw = yaml.safe_load(text)
    return {name: _from_dict(name, d) for name, d in raw["hardware"].items()}


_ALIASES = {"h100": "h100-sxm", "a100": "a100-80gb", "cpu": "cpu-local"}


def get_hardware(name: str, price_per_hour: float | None = None) -> Hardware:
    """A catalog entry by name (close spellings accepted), with an optional price override."""
    return lookup("gpu", name, hardware_catalog(), _ALIASES).with_price(price_per_hour)


def measure_cpu(budget_s: float = 1.5, price_per_hour: float = 0.0) -> Hardware:
    """Measure this machine: copy bandwidth and fp32 / bf16 matmul rates, in about a second.

    Bandwidth counts each byte read once and written once, as workbench.bench does, so the
    roofline bound and the engine benchmark use the same yardstick.
    """
    import torch  # lazy: the catalog itself needs no torch

    n_bytes = 1 << 27
    src = torch.ones(n_bytes, dtype=torch.uint8)
    dst = torch.empty_like(src)
    bandwidth = 2 * n_bytes / _best_time(lambda: dst.copy_(src), budget_s / 3)
    peaks: dict[str, float | None] = dict.fromkeys(COMPUTE_DTYPES)
    n = 1024
    for dtype, key in ((torch.float32, "fp32"), (torch.bfloat16, "bf16")):
        a = torch.randn(n, n).to(dtype)
        b = torch.randn(n, n).to(dtype)
        peaks[key] = 2 * n**3 / _best_time(lambda a=a, b=b: a @ b, budget_s / 3) / 1e12
    pages = os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    return Hardware(
        name="cpu-local", vendor="cpu", memory_gb=round(pages / 1e9, 1),
        memory_bandwidth_gb_s=round(bandwidth / 1e9, 2), peak_tflops=peaks,
        interconnect="none", price_per_hour=price_per_hour,
        source=f"measured on the machine at hand ({os.cpu_count()} cores, "
               f"{torch.get_num_threads()} torch threads) by workbench.plan.hardware.measure_cpu",
        price_source="given by the caller")


def _best_time(fn, budget_s: float) -> float:
    """Best of repeated runs (after one warm-up) within the time budget: the least noisy."""
    fn()
    best, deadline = float("inf"), time.perf_counter() + budget_s
    while True:
        t0 = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - t0)
        if time.perf_counter() > deadline:
            return best
