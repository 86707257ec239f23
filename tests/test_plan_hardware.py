"""Hardware catalog (package data), user hardware files, and the measurement of this machine."""

from __future__ import annotations

import math
import os
import subprocess
import sys
from importlib import resources

import pytest
import yaml

from workbench.engine.sizing import host_memory_total
from workbench.plan import hardware
from workbench.plan.hardware import (
    HARDWARE_FILE_ENV,
    add_hardware_file,
    copy_bandwidth,
    get_hardware,
    hardware_catalog,
    measure_cpu,
    measure_hardware,
)

REQUIRED = ("h100-sxm", "h200", "a100-80gb", "a100-40gb", "l4", "l40s", "a10g", "cpu-local")

MY_GPU = """
hardware:
  my-rtx-4090:
    vendor: nvidia
    memory_mib: 24564
    memory_bandwidth_gb_s: 1008
    peak_tflops: {fp32: 82.6, bf16: 165.2, fp16: 165.2, fp8: 330.3}
    interconnect: pcie
    price_per_hour: 0.4
"""


@pytest.fixture(autouse=True)
def no_user_files(monkeypatch):
    """Each test starts with the packaged catalog only, whatever the caller's environment."""
    monkeypatch.delenv(HARDWARE_FILE_ENV, raising=False)
    monkeypatch.setattr(hardware, "_ADDED_FILES", [])


def _write(tmp_path, text: str, name: str = "hw.yaml"):
    path = tmp_path / name
    path.write_text(text)
    return path


def test_catalog_ships_as_package_data_with_sources():
    text = resources.files("workbench.plan").joinpath("hardware.yaml").read_text()
    raw = yaml.safe_load(text)["hardware"]
    cat = hardware_catalog()
    assert set(REQUIRED) <= set(raw) == set(cat)
    for hw in cat.values():
        assert hw.source and hw.price_per_hour > 0 and hw.memory_bytes > 0
        assert hw.memory_bandwidth_gb_s > 0 and hw.peak_tflops.get("bf16")
    assert "measured" in cat["cpu-local"].source
    # Every GPU states its memory in MiB (nvidia-smi's unit), never an ambiguous "GB".
    assert all("memory_mib" in d for d in raw.values() if d["vendor"] == "nvidia")
    assert not any("memory_gb" in d for d in raw.values())


def test_gpu_memory_is_binary_as_nvidia_smi_reports_it():
    # nvidia-smi --query-gpu=memory.total: H100 SXM 81559 MiB, A100 80GB 81920 MiB, L4 23034
    # MiB. A spec sheet's "80 GB" read as 80e9 bytes understates the H100 by 6.9%.
    h100 = get_hardware("h100-sxm")
    assert h100.memory_bytes == 81559 * 2**20 == 85_520_809_984
    assert h100.memory_gb == pytest.approx(85.52, abs=0.01)
    assert get_hardware("a100-80gb").memory_gib == 80
    assert get_hardware("l4").memory_bytes == 23034 * 2**20


def test_spec_sheet_figures():
    h100, a100 = get_hardware("h100-sxm"), get_hardware("a100-80gb")
    assert h100.memory_bandwidth_gb_s == 3350 and h100.bandwidth_bytes_s == 3.35e12
    assert h100.peak_flops("bf16") == pytest.approx(989e12, rel=0.001)
    assert h100.peak_flops("fp8") == pytest.approx(2 * h100.peak_flops("bf16"), rel=0.001)
    assert (a100.memory_bandwidth_gb_s, a100.peak_tflops["bf16"]) == (2039, 312)
    assert get_hardware("h200").memory_bandwidth_gb_s == 4800
    assert a100.peak_tflops["fp8"] is None  # Ampere has no FP8 tensor cores
    assert get_hardware("l4").peak_tflops["fp8"] and get_hardware("l40s").peak_tflops["fp8"]


def test_price_override_and_bad_input():
    assert get_hardware("h100", price_per_hour=2.5).price_per_hour == 2.5
    with pytest.raises(ValueError, match="price_per_hour: must be >= 0"):
        get_hardware("h100", price_per_hour=-1)
    with pytest.raises(ValueError, match=r"gpu: unknown 'h1000'; did you mean .*h100-sxm"):
        get_hardware("h1000")


def test_measure_cpu_gives_finite_rates_and_the_host_memory():
    hw = measure_cpu(budget_s=0.4)
    assert hw.name == "cpu-local" and hw.vendor == "cpu"
    # Measured rates depend on the machine and its load: only that they are real figures.
    assert 0 < hw.memory_bandwidth_gb_s < math.inf and 0 < hw.peak_tflops["fp32"] < math.inf
    assert hw.memory_bytes == host_memory_total() > 2**28 and "measured" in hw.source
    with pytest.raises(ValueError, match="device: unknown 'tpu'; allowed: auto, cpu, cuda"):
        measure_hardware(device="tpu")


def test_copy_bandwidth_counts_each_byte_read_and_written(monkeypatch):
    monkeypatch.setattr(hardware, "_best_time", lambda fn, budget_s, device="cpu": 0.5)
    assert copy_bandwidth(1000, device="cpu") == 2 * 1000 / 0.5


def test_the_engine_benchmark_uses_the_one_measurement(monkeypatch, tiny_path):
    """The benchmark's bounds come from measure_hardware (the planner's own measurement) and
    the planner's step model, not from a second bandwidth figure of its own."""
    import types
    from dataclasses import replace

    import torch

    import workbench.bench as bench

    assert not hasattr(bench, "copy_bandwidth")
    measured = replace(hardware.get_hardware("h100-sxm"), memory_bandwidth_gb_s=12.5,
                       peak_tflops={"fp32": 0.1})
    monkeypatch.setattr(hardware, "measure_hardware", lambda **_: measured)
    engine = types.SimpleNamespace(device=torch.device("cpu"), dtype=torch.float32,
                                   model_path=tiny_path)
    bounds = bench.roofline_bounds(engine, (1, 16), context=64)
    assert bounds["bandwidth_gb_s"] == 12.5 and bounds["matmul_tflops"] == 0.1
    assert 0 < bounds["batch 1"] < bounds["batch 16"]


def test_user_file_adds_hardware_every_consumer_sees(tmp_path, monkeypatch):
    path = _write(tmp_path, MY_GPU)
    monkeypatch.setenv(HARDWARE_FILE_ENV, str(path))
    hw = get_hardware("my-rtx-4090")
    assert hw.memory_bytes == 24564 * 2**20 and hw.peak_flops("bf16") == 165.2e12
    assert (hw.interconnect, hw.interconnect_gb_s, hw.price_per_hour) == ("pcie", 0.0, 0.4)
    assert str(path) in hw.source and hw.peak_tflops["int8"] is None
    assert {"my-rtx-4090", "h100-sxm"} <= set(hardware_catalog())
    # The calculators behind the widgets read the same catalog.
    from workbench.widgets.questionnaire import derived_answers

    answers, _ = derived_answers("quantization", "llama-3-8b", "my-rtx-4090")
    assert answers["fp8_hardware"] == "yes" and answers["fits_at"] == "bf16"
    monkeypatch.delenv(HARDWARE_FILE_ENV)
    with pytest.raises(ValueError, match="gpu: unknown 'my-rtx-4090'"):
        get_hardware("my-rtx-4090")


def test_add_hardware_file_and_replacing_a_packaged_entry(tmp_path):
    path = _write(tmp_path, "hardware:\n  h100-sxm:\n    vendor: nvidia\n    memory_gib: 80\n"
                            "    memory_bandwidth_gb_s: 3000\n    peak_tflops: {bf16: 900}\n"
                            "    price_per_hour: 2.1\n    source: our own measurement\n")
    add_hardware_file(path)
    h100 = get_hardware("h100")
    assert (h100.memory_bytes, h100.memory_bandwidth_gb_s, h100.price_per_hour) == (
        80 * 2**30, 3000, 2.1)
    # Edits to the file are read again.
    path.write_text(path.read_text().replace("3000", "3100.5"))
    assert get_hardware("h100").memory_bandwidth_gb_s == 3100.5


def test_env_var_reaches_a_fresh_process(tmp_path):
    """Notebook kernels and CLI runs inherit the variable and see the same entries."""
    path = _write(tmp_path, MY_GPU)
    code = ("from workbench.plan import get_hardware; "
            "print(get_hardware('my-rtx-4090').memory_bytes)")
    env = {**os.environ, HARDWARE_FILE_ENV: str(path)}
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         check=True, env=env)
    assert int(out.stdout) == 24564 * 2**20


@pytest.mark.parametrize("fields,problem", [
    ("memory_gb: 24", r"hardware\.x\.memory_gb: ambiguous unit .*memory_mib"),
    ("memory_mib: -5", r"hardware\.x\.memory_mib: must be a number > 0, got -5"),
    ("memory_mib: 1\n    memory_gib: 1", r"hardware\.x\.memory_mib: give exactly one of"),
    ("memory_mib: 24564\n    bandwith_gb_s: 9", r"hardware\.x\.bandwith_gb_s: unknown field; "
                                                r"allowed: vendor, memory_bandwidth_gb_s"),
    ("memory_mib: 1\n    interconnect: infiniband",
     r"hardware\.x\.interconnect: unknown 'infiniband'; allowed: nvlink, pcie, none"),
    ("memory_mib: 1\n    price_per_hour: cheap",
     r"hardware\.x\.price_per_hour: must be a number >= 0, got 'cheap'"),
])
def test_bad_user_file_names_the_entry_and_field(tmp_path, fields, problem):
    base = "    vendor: nvidia\n    memory_bandwidth_gb_s: 100\n    peak_tflops: {bf16: 10}\n"
    path = _write(tmp_path, f"hardware:\n  x:\n{base}    {fields}\n")
    with pytest.raises(ValueError, match=problem) as err:
        add_hardware_file(path)
    assert str(path) in str(err.value) and len(str(err.value).splitlines()) == 1


def test_bad_user_file_every_problem_on_its_own_line(tmp_path, monkeypatch):
    path = _write(tmp_path, "hardware:\n  x:\n    vendor: amd\n    memory_gib: 0\n"
                            "    peak_tflops: {bf17: 3, fp32: -1}\n")
    with pytest.raises(ValueError) as err:
        add_hardware_file(path)
    lines = str(err.value).splitlines()
    assert [ln.split(":")[0] for ln in lines] == [
        "hardware.x.memory_bandwidth_gb_s", "hardware.x.memory_gib",
        "hardware.x.peak_tflops.bf17", "hardware.x.peak_tflops.fp32"]
    # Through the environment variable, the lines also say where the file was named.
    monkeypatch.setenv(HARDWARE_FILE_ENV, str(path))
    with pytest.raises(ValueError, match=rf"\(named by \${HARDWARE_FILE_ENV}\)"):
        get_hardware("h100")


@pytest.mark.parametrize("text,problem", [
    ("- just\n- a list\n", "must be a mapping with a 'hardware:' key"),
    ("hardware: {x: [1, 2]\n", "is not valid YAML"),
    ("hardware:\n  x: 5\n", r"hardware\.x: must be a mapping of fields"),
])
def test_unreadable_user_files(tmp_path, text, problem):
    with pytest.raises(ValueError, match=problem):
        add_hardware_file(_write(tmp_path, text))
    with pytest.raises(ValueError, match="hardware_file: .*missing.yaml does not exist"):
        add_hardware_file(tmp_path / "missing.yaml")
