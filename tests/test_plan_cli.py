"""`plan` subcommands through typer's runner: the numbers they print follow from the catalog
and the formulas, --json carries the same fields, and user errors are one `error:` line."""

from __future__ import annotations

import json

import pytest
from typer.testing import CliRunner

from workbench.plan import hardware
from workbench.plan.budget import max_concurrent_seqs
from workbench.plan.cli import plan_app
from workbench.plan.cost import monthly_cost
from workbench.plan.hardware import HARDWARE_FILE_ENV, get_hardware
from workbench.plan.memory import kv_estimate, param_count, weight_bytes
from workbench.plan.models_catalog import get_model
from workbench.plan.replica import min_tp

runner = CliRunner()

COMMANDS = {
    "memory": ["memory", "--model", "llama-2-70b", "--gpu", "h100-sxm", "--tp", "4",
               "--context", "4096"],
    "roofline": ["roofline", "--model", "llama-2-7b", "--gpu", "h100-sxm"],
    "cost": ["cost", "--requests-per-month", "1e7", "--tokens-per-request", "500",
             "--gpu-seconds-per-token", "0.001", "--price", "2"],
    "framework": ["framework", "--use", "production", "--hardware-vendor", "nvidia",
                  "--latency", "lowest", "--ops-complexity", "high", "--multi-model", "no"],
    "quantization": ["quantization", "--model", "llama-2-70b", "--gpu", "l4"],
    "parallelism": ["parallelism", "--model", "llama-2-70b", "--gpu", "a100-80gb"],
    "caching": ["caching", "--shared-prefix-fraction", "0.5"],
}
M70, H100 = get_model("llama-2-70b"), get_hardware("h100-sxm")


@pytest.fixture(autouse=True)
def no_user_files(monkeypatch):
    monkeypatch.delenv(HARDWARE_FILE_ENV, raising=False)
    monkeypatch.setattr(hardware, "_ADDED_FILES", [])


def _json(args: list[str]) -> dict:
    res = runner.invoke(plan_app, [*args, "--json"])
    assert res.exit_code == 0, res.output
    return json.loads(res.output)


def _error_line(args: list[str]) -> str:
    res = runner.invoke(plan_app, args)
    assert res.exit_code == 2, res.output
    lines = [ln for ln in res.output.splitlines() if ln.strip()]
    assert len(lines) == 1, res.output
    return lines[0]


@pytest.mark.parametrize("name", sorted(COMMANDS))
def test_every_command_prints_a_table_and_json(name):
    res = runner.invoke(plan_app, COMMANDS[name])
    assert res.exit_code == 0, res.output
    data = _json(COMMANDS[name])
    # The table shows what the JSON says: the recommendation of a tree, the model of the rest.
    shown = data.get("recommendation") or data.get("model")
    assert shown is None or shown in res.output


def test_memory_numbers_follow_from_the_catalog():
    m = get_model("llama-3-8b")
    data = _json(["memory", "--model", "llama-3-8b", "--context", "8192"])
    # 2 (K, V) x 32 layers x 8 KV heads x 128 dims x 2 bytes (bf16).
    assert data["kv_bytes_per_token"] == data["kv_bytes_per_token_per_gpu"] == 131072
    assert data["kv_gb_per_request"] == pytest.approx(131072 * 8192 / 1e9)
    assert data["weight_gb_total"] == pytest.approx(weight_bytes(m, "bf16") / 1e9)
    assert data["weight_gb_total"] == pytest.approx(16.06, abs=0.01)
    assert data["params_b"] == pytest.approx(param_count(m) / 1e9)
    assert data["gpu_memory_gb"] == pytest.approx(81559 * 2**20 / 1e9)
    assert data["max_concurrent_seqs"] == max_concurrent_seqs(m, H100, "bf16", 8192)
    assert data["fits"] is True and data["min_tp"] == 1 and data["at_min_tp"] is None
    assert [r["precision"] for r in data["by_precision"]] == ["bf16", "fp8", "int8", "int4"]
    int4 = data["by_precision"][3]
    assert int4["weights_gb"] == pytest.approx(weight_bytes(m, "int4") / 1e9)
    assert int4["max_seqs"] == max_concurrent_seqs(m, H100, "int4", 8192)
    text = runner.invoke(plan_app, ["memory", "--model", "llama-3-8b", "--context",
                                    "8192"]).output
    assert "131072" in text and "16.06" in text
    assert f"fits: {data['max_concurrent_seqs']} sequences of 8192 tokens" in text


def test_memory_answers_when_the_model_does_not_fit_and_says_which_tp_does():
    # 138 GB of bf16 weights on one 85.5 GB H100: the KV question still gets its answer.
    res = runner.invoke(plan_app, ["memory", "--model", "llama-2-70b", "--gpu", "h100",
                                   "--context", "4096"])
    assert res.exit_code == 0, res.output
    assert "its bf16 weights (138.0 GB per GPU) exceed" in res.output
    assert "it needs 2 x h100-sxm (TP=2, the smallest tensor-parallel size" in res.output
    data = _json(["memory", "--model", "llama-2-70b", "--gpu", "h100", "--context", "4096"])
    kv = kv_estimate(M70, 4096, "bf16")
    assert data["fits"] is False and data["max_concurrent_seqs"] == 0
    assert data["kv_gb_per_request"] == data["kv_gb_per_request_per_gpu"] == pytest.approx(
        kv.bytes_per_request / 1e9) == pytest.approx(1.342, abs=1e-3)
    assert data["min_tp"] == 2 == min_tp(M70, H100, "bf16", 4096)
    at = data["at_min_tp"]
    assert at["tp"] == 2 and at["max_concurrent_seqs"] == max_concurrent_seqs(
        M70, H100, "bf16", 4096, tp=2) >= 1
    assert at["kv_gb_per_request_per_gpu"] == pytest.approx(kv.bytes_per_request / 2e9)
    assert f"{at['max_concurrent_seqs']} sequences fit" in data["advice"]


def test_memory_kv_per_request_for_the_replica_and_per_gpu():
    data = _json(COMMANDS["memory"])
    est = kv_estimate(M70, 4096, "bf16", tp=4)
    assert data["kv_gb_per_request_per_gpu"] == pytest.approx(est.bytes_per_request / 1e9)
    assert data["kv_gb_per_request"] == pytest.approx(4 * est.bytes_per_request / 1e9)
    assert data["kv_bytes_per_token"] == 2 * 80 * 8 * 128 * 2
    assert data["attention_kind"] == "GQA" and data["fits"] is True


def test_other_commands_carry_the_formula_results():
    data = _json(COMMANDS["cost"])
    assert data["monthly_cost_full_use"] == pytest.approx(monthly_cost(1e7, 500, 0.001, 2))
    data = _json(COMMANDS["framework"])
    assert data["recommendation"] == "TensorRT-LLM" and len(data["path"]) == 5
    res = runner.invoke(plan_app, ["framework", "--matrix"])
    assert res.exit_code == 0 and "TensorRT-LLM" in res.output and "paged_attention" in res.output
    data = _json(COMMANDS["roofline"])
    decode = next(s for s in data["steps"] if s["phase"] == "decode")
    # Decode reads every weight once: it cannot beat weight bytes / peak bandwidth.
    floor = weight_bytes(get_model("llama-2-7b"), "bf16") / H100.bandwidth_bytes_s
    assert decode["time_ms"] / 1e3 >= floor and decode["bound"] == "memory"
    data = _json(COMMANDS["quantization"])
    assert data["recommendation"].startswith("Add GPUs")
    assert data["facts"]["gpus_needed_int4"] == min_tp(M70, get_hardware("l4"), "int4", 4096)
    data = _json(COMMANDS["parallelism"])
    assert data["facts"]["gpus_needed"] == min_tp(M70, get_hardware("a100-80gb"), "bf16", 4096)
    data = _json(["parallelism", "--model", "llama-2-70b", "--batch", "64"])
    assert data["facts"]["gpus_needed"] == min_tp(M70, H100, "bf16", 4096, 64) == 4
    assert _json(COMMANDS["caching"])["recommendation"] == "Prefix cache"


def test_framework_concurrency_from_requests_in_flight():
    base = ["framework", "--use", "production", "--hardware-vendor", "nvidia", "--latency",
            "standard", "--hf-integration", "required"]
    # 2 requests/s that take 30 s each: 60 in flight, not "low" because the rate is small.
    data = _json([*base, "--requests-per-s", "2", "--latency-s", "30"])
    assert data["recommendation"] == "TGI" and data["facts"]["requests_in_flight"] == 60
    data = _json([*base, "--requests-per-s", "20", "--latency-s", "0.1"])
    assert data["recommendation"] == "Ollama"
    assert _error_line([*base, "--requests-per-s", "2"]).startswith("error: latency_s")
    assert _error_line([*base, "--requests-per-s", "2", "--latency-s", "3", "--concurrency",
                        "low"]).startswith("error: concurrency")


@pytest.mark.parametrize("args,field", [
    (["memory", "--gpu", "h1000"], "gpu"),
    (["memory", "--model", "llama-2-75b"], "model"),
    (["memory", "--precision", "int3"], "precision"),
    (["memory", "--precision", "int4", "--group-size", "0"], "group_size"),
    (["memory", "--tp", "3", "--model", "llama-2-70b"], "tp"),
    (["memory", "--model", "/etc/passwd"],
     "model: /etc/passwd is not a catalog name or a directory with config.json"),
    (["cost", "--gpu-seconds-per-token", "0.001", "--price", "-2"], "price_per_gpu_hour"),
    (["cost", "--requests-per-month", "-5", "--gpu-seconds-per-token", "0.001", "--price", "2"],
     "requests_per_month"),
    (["framework", "--use", "production"], "hardware_vendor"),
    (["quantization", "--quality", "meh"], "quality"),
    (["quantization", "--model", "llama-2-70b", "--gpu", "l4", "--quality", "meh"], "quality"),
    (["roofline", "--batch", "0"], "batch"),
])
def test_user_errors_are_one_line_exit_2(args, field):
    assert _error_line(args).startswith(f"error: {field}")


def test_model_directory_without_config_is_named(tmp_path):
    line = _error_line(["memory", "--model", str(tmp_path)])
    assert line.startswith(f"error: model: {tmp_path} is a directory without a config.json")
    (tmp_path / "config.json").write_text("[1, 2]")
    assert "not a config object" in _error_line(["memory", "--model", str(tmp_path)])


def test_hardware_file_option_adds_a_gpu(tmp_path):
    path = tmp_path / "mine.yaml"
    path.write_text("hardware:\n  my-gpu:\n    vendor: nvidia\n    memory_gib: 48\n"
                    "    memory_bandwidth_gb_s: 960\n    peak_tflops: {bf16: 150, fp8: 300}\n")
    data = _json(["memory", "--model", "llama-3-8b", "--gpu", "my-gpu", "--hardware-file",
                  str(path)])
    assert data["gpu"] == "my-gpu" and data["gpu_memory_gib"] == 48
    assert data["usable_gb_per_gpu"] == pytest.approx(48 * 2**30 * 0.9 / 1e9)
    data = _json(["quantization", "--model", "llama-3-8b", "--gpu", "my-gpu",
                  "--hardware-file", str(path)])
    assert data["recommendation"] == "FP8 (W8A8)"
    path.write_text("hardware:\n  my-gpu:\n    vendor: nvidia\n    memory_gb: 48\n"
                    "    memory_bandwidth_gb_s: 960\n    peak_tflops: {bf16: 150}\n")
    line = _error_line(["roofline", "--gpu", "my-gpu", "--hardware-file", str(path)])
    assert line.startswith("error: hardware.my-gpu.memory_gb: ambiguous unit")


def test_importing_plan_does_not_import_torch():
    import subprocess
    import sys

    code = ("import sys, workbench.plan, workbench.plan.cli; "
            "print('torch' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"
