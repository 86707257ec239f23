"""Hardware catalog (package data) and the CPU measurement."""

from __future__ import annotations

import time
from importlib import resources

import pytest
import yaml

from workbench.plan.hardware import get_hardware, hardware_catalog, measure_cpu

REQUIRED = ("h100-sxm", "h200", "a100-80gb", "a100-40gb", "l4", "l40s", "a10g", "cpu-local")


def test_catalog_ships_as_package_data_with_sources():
    text = resources.files("workbench.plan").joinpath("hardware.yaml").read_text()
    raw = yaml.safe_load(text)["hardware"]
    cat = hardware_catalog()
    assert set(REQUIRED) <= set(raw) == set(cat)
    for hw in cat.values():
        assert hw.source and hw.price_per_hour > 0 and hw.memory_gb > 0
        assert hw.memory_bandwidth_gb_s > 0 and hw.peak_tflops.get("bf16")
    assert "measured" in cat["cpu-local"].source


def test_spec_sheet_figures():
    h100, a100 = get_hardware("h100-sxm"), get_hardware("a100-80gb")
    assert (h100.memory_gb, h100.memory_bandwidth_gb_s) == (80, 3350)
    assert h100.peak_flops("bf16") == pytest.approx(989e12, rel=0.001)
    assert h100.peak_flops("fp8") == pytest.approx(2 * h100.peak_flops("bf16"), rel=0.001)
    assert (a100.memory_bandwidth_gb_s, a100.peak_tflops["bf16"]) == (2039, 312)
    assert get_hardware("h200").memory_bandwidth_gb_s == 4800
    assert a100.peak_tflops["fp8"] is None  # Ampere has no FP8 tensor cores


def test_price_override_and_bad_input():
    assert get_hardware("h100", price_per_hour=2.5).price_per_hour == 2.5
    with pytest.raises(ValueError, match="price_per_hour: must be >= 0"):
        get_hardware("h100", price_per_hour=-1)
    with pytest.raises(ValueError, match=r"gpu: unknown 'h1000'; did you mean .*h100-sxm"):
        get_hardware("h1000")


def test_measure_cpu_is_quick_and_plausible():
    import torch  # noqa: F401  (time the measurement, not the import)

    t0 = time.perf_counter()
    hw = measure_cpu(budget_s=0.6)
    assert time.perf_counter() - t0 < 2.0
    assert 0.5 < hw.memory_bandwidth_gb_s < 2000
    assert 1e-3 < hw.peak_tflops["fp32"] < 100
    assert hw.memory_gb > 0 and "measured" in hw.source
