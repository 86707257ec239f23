"""`plan` subcommands through typer's runner: tables, --json, and one-line user errors."""

from __future__ import annotations

import json

import pytest
from typer.testing import CliRunner

from workbench.plan.budget import min_gpus
from workbench.plan.cli import plan_app
from workbench.plan.cost import monthly_cost
from workbench.plan.hardware import get_hardware
from workbench.plan.memory import kv_estimate
from workbench.plan.models_catalog import get_model

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


@pytest.mark.parametrize("name", sorted(COMMANDS))
def test_table_and_json(name):
    res = runner.invoke(plan_app, COMMANDS[name])
    assert res.exit_code == 0, res.output
    assert len(res.output.splitlines()) >= 3
    res = runner.invoke(plan_app, [*COMMANDS[name], "--json"])
    assert res.exit_code == 0, res.output
    assert isinstance(json.loads(res.output), dict)


def test_json_carries_the_formula_results():
    data = json.loads(runner.invoke(plan_app, [*COMMANDS["cost"], "--json"]).output)
    assert data["monthly_cost_full_use"] == pytest.approx(monthly_cost(1e7, 500, 0.001, 2))
    data = json.loads(runner.invoke(plan_app, [*COMMANDS["memory"], "--json"]).output)
    est = kv_estimate(get_model("llama-2-70b"), 4096, "bf16", tp=4)
    assert data["kv_gb_per_request_per_gpu"] == pytest.approx(est.bytes_per_request / 1e9)
    assert data["attention_kind"] == "GQA"
    data = json.loads(runner.invoke(plan_app, [*COMMANDS["framework"], "--json"]).output)
    assert data["recommendation"] == "TensorRT-LLM" and len(data["path"]) == 5
    res = runner.invoke(plan_app, ["framework", "--matrix"])
    assert res.exit_code == 0 and "TensorRT-LLM" in res.output and "paged_attention" in res.output


@pytest.mark.parametrize("args,field", [
    (["memory", "--gpu", "h1000"], "gpu"),
    (["memory", "--model", "llama-2-75b"], "model"),
    (["memory", "--model", "llama-2-70b", "--gpu", "l4", "--precision", "int4"], "model"),
    (["memory", "--precision", "int3"], "precision"),
    (["cost", "--gpu-seconds-per-token", "0.001", "--price", "-2"], "price_per_gpu_hour"),
    (["cost", "--requests-per-month", "-5", "--gpu-seconds-per-token", "0.001", "--price", "2"],
     "requests_per_month"),
    (["framework", "--use", "production"], "hardware_vendor"),
    (["quantization", "--quality", "meh"], "quality"),
    (["quantization", "--model", "llama-2-70b", "--gpu", "l4", "--quality", "meh"], "quality"),
    (["roofline", "--batch", "0"], "batch"),
])
def test_user_errors_are_one_line_exit_2(args, field):
    res = runner.invoke(plan_app, args)
    assert res.exit_code == 2, res.output
    lines = [ln for ln in res.output.splitlines() if ln.strip()]
    assert len(lines) == 1 and lines[0].startswith(f"error: {field}"), res.output


def test_does_not_fit_error_says_how_many_gpus():
    res = runner.invoke(plan_app, ["memory", "--model", "llama-2-70b", "--gpu", "l4",
                                   "--precision", "int4"])
    need = min_gpus(get_model("llama-2-70b"), get_hardware("l4"), "int4", 4096)
    assert f"needs {need} x l4" in res.output


def test_cost_with_model_routing():
    res = runner.invoke(plan_app, [*COMMANDS["cost"], "--route", "small:0.8:0.001:basic",
                                   "--route", "large:0.2:0.01:best", "--json"])
    assert res.exit_code == 0, res.output
    routing = json.loads(res.output)["routing"]
    assert routing["cost_per_request"] == pytest.approx(0.8 * 0.001 + 0.2 * 0.01)
    res = runner.invoke(plan_app, [*COMMANDS["cost"], "--route", "small:0.8"])
    assert res.exit_code == 2 and res.output.startswith("error: route")


def test_importing_plan_does_not_import_torch():
    import subprocess
    import sys

    code = ("import sys, workbench.plan, workbench.plan.cli; "
            "print('torch' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"
