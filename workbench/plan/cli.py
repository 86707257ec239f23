"""`workbench plan ...`: the planning calculators as commands, each a table or --json."""

from __future__ import annotations

from typing import Annotated

import typer

from workbench.cli_errors import user_errors
from workbench.plan import cli_published, cli_trees, render
from workbench.plan.budget import DEFAULT_RESERVE
from workbench.plan.cli_options import Gpu, HardwareFile
from workbench.plan.cost import DEFAULT_UTILIZATION
from workbench.plan.memory import DEFAULT_GROUP_SIZE

plan_app = typer.Typer(help="Planning calculators: memory, roofline, cost and decision trees.",
                       no_args_is_help=True)

Json = Annotated[bool, typer.Option("--json", help="Print JSON instead of a table.")]
Model = Annotated[str, typer.Option(help="Catalog model, embedded preset or checkpoint dir.")]
Precision = Annotated[str, typer.Option(help="fp32 | bf16 | fp16 | fp8 | int8 | int4")]


def _out(as_json: bool, data, text: str) -> None:
    typer.echo(render.to_json(data) if as_json else text)


@plan_app.command()
@user_errors
def memory(model: Model = "llama-2-7b", gpu: Gpu = "h100-sxm", precision: Precision = "bf16",
           kv_dtype: Annotated[str, typer.Option(help="auto | fp32 | bf16 | fp16 | fp8 | int8")
                               ] = "auto",
           context: Annotated[int | None, typer.Option(help="Tokens per request "
                                                             "(default: model's).")] = None,
           tp: Annotated[int, typer.Option(help="Tensor-parallel GPUs.")] = 1,
           reserve: Annotated[float, typer.Option(help="Share of GPU memory held back.")
                                   ] = DEFAULT_RESERVE,
           group_size: Annotated[int, typer.Option(help="INT4 group size.")] = DEFAULT_GROUP_SIZE,
           hardware_file: HardwareFile = None, as_json: Json = False):
    """Weights, KV per request (per GPU and per replica), how many sequences fit, and the
    smallest tensor-parallel size that holds the model when it does not fit."""
    from workbench.plan.hardware import get_hardware
    from workbench.plan.models_catalog import get_model
    from workbench.plan.replica import by_precision, memory_answer

    m, hw = get_model(model), get_hardware(gpu)
    answer = memory_answer(m, hw, precision, context, kv_dtype, tp, reserve, group_size)
    others = by_precision(m, hw, answer["context"], kv_dtype, tp, reserve, group_size)
    shown = {k: v for k, v in answer.items() if k not in ("at_min_tp", "advice")}
    _out(as_json, {**answer, "by_precision": others},
         render.kv_table(shown, f"memory: {m.name} on {tp} x {hw.name}")
         + f"\n\n{answer['advice']}\n\n" + render.rows_table(others, "by weight precision:"))


@plan_app.command()
@user_errors
def roofline(model: Model = "llama-2-7b", gpu: Gpu = "h100-sxm", precision: Precision = "bf16",
             batch: Annotated[int, typer.Option(help="Decode batch size.")] = 1,
             context: Annotated[int, typer.Option(help="Cached tokens per sequence.")] = 1024,
             prompt: Annotated[int, typer.Option(help="Prompt tokens for prefill.")] = 512,
             tp: int = 1,
             hardware_file: HardwareFile = None,
             memory_efficiency: Annotated[float | None, typer.Option(
                 help="Achieved/peak bandwidth (default: fitted for the GPU).")] = None,
             compute_efficiency: Annotated[float | None, typer.Option(
                 help="Achieved/peak FLOPs (default: fitted for the GPU).")] = None,
             as_json: Json = False):
    """Prefill and decode step times on the roofline, bound and with efficiency factors."""
    from workbench.plan.hardware import get_hardware
    from workbench.plan.models_catalog import get_model
    from workbench.plan.roofline import (
        PEAK,
        critical_batch,
        decode_step,
        decode_throughput_bound,
        prefill_step,
    )
    from workbench.plan.step_params import efficiency_for

    m, hw = get_model(model), get_hardware(gpu)
    eff = efficiency_for(hw, memory_efficiency, compute_efficiency)
    rows = []
    for label, e in (("bound (peak)", PEAK), ("expected (efficiency)", eff)):
        for step in (decode_step(m, hw, batch, context, precision, tp=tp, efficiency=e),
                     prefill_step(m, hw, prompt, 1, precision, tp=tp, efficiency=e)):
            d = step.as_dict()
            rows.append({"estimate": label, "phase": d["phase"], "batch": d["batch"],
                         "time_ms": d["time_s"] * 1e3, "bound": d["bound"],
                         "tokens_per_s": d["tokens_per_s"]})
    crit = critical_batch(m, hw, context, precision, tp=tp)
    from workbench.plan.step_params import error_band

    facts: dict = {"critical_batch": crit, "max_batch_that_fits": None,
                   "decode_tokens_per_s_ceiling_per_gpu": None, "efficiency_source": eff.source,
                   "forecast_error_held_out": error_band().summary()}
    try:
        ceiling = decode_throughput_bound(m, hw, context, precision, tp=tp)
        facts |= {"max_batch_that_fits": ceiling.batch,
                  "decode_tokens_per_s_ceiling_per_gpu": ceiling.tokens_per_s / tp}
    except ValueError:  # the model does not fit: step times still inform, ceilings do not
        pass
    shown = {**facts, "critical_batch": crit or "never (KV traffic keeps decode memory-bound)"}
    _out(as_json, {"steps": rows, **facts},
         render.rows_table(rows, f"roofline: {m.name} on {tp} x {hw.name} ({precision})")
         + "\n\n" + render.kv_table(shown))


@plan_app.command()
@user_errors
def cost(requests_per_month: Annotated[float, typer.Option(help="Requests per month.")] = 1e7,
         tokens_per_request: Annotated[float, typer.Option(help="Tokens per request.")] = 500,
         gpu_seconds_per_token: Annotated[float | None, typer.Option(
             help="GPU-seconds per token (or give --tokens-per-s-per-gpu).")] = None,
         tokens_per_s_per_gpu: Annotated[float | None, typer.Option(
             help="Measured or roofline throughput per GPU.")] = None,
         price: Annotated[float | None, typer.Option(help="$ per GPU-hour (overrides --gpu).")
                          ] = None,
         gpu: Annotated[str | None, typer.Option(help="Take the price from this entry.")] = None,
         hardware_file: HardwareFile = None,
         utilization: Annotated[float, typer.Option(help="Target average busy share.")
                                ] = DEFAULT_UTILIZATION,
         route: Annotated[list[str] | None, typer.Option(
             help="Model routing: NAME:SHARE:COST_PER_REQUEST:QUALITY (repeat).")] = None,
         as_json: Json = False):
    """Monthly cost, $ per 1M tokens, and always-on cost at a target utilization."""
    from workbench.plan import cost as c
    from workbench.plan.hardware import get_hardware

    if gpu_seconds_per_token is None:
        if tokens_per_s_per_gpu is None:
            raise ValueError("gpu_seconds_per_token: give it or --tokens-per-s-per-gpu")
        gpu_seconds_per_token = c.gpu_seconds_per_token(tokens_per_s_per_gpu)
    if price is None:
        if gpu is None:
            raise ValueError("price: give --price or --gpu (to use its catalog price)")
        price = get_hardware(gpu).price_per_hour
    prov = c.provisioned_cost(requests_per_month, tokens_per_request, gpu_seconds_per_token,
                              price, utilization)
    data = {"monthly_cost_full_use": prov.cost_at_full_use,
            "cost_per_million_tokens": c.cost_per_million_tokens(gpu_seconds_per_token, price),
            "cost_per_million_tokens_at_utilization": c.cost_per_million_tokens(
                gpu_seconds_per_token, price, utilization),
            "busy_gpu_hours_per_month": prov.busy_gpu_hours,
            "gpus_always_on": prov.gpus, "monthly_cost_always_on": prov.monthly_cost,
            "utilization": utilization, "price_per_gpu_hour": price,
            "gpu_seconds_per_token": gpu_seconds_per_token}
    text = render.kv_table(data, "cost ($):")
    if route:
        r = c.routing_cost([_parse_route(x) for x in route], requests_per_month)
        data["routing"] = {"cost_per_request": r.cost_per_request,
                           "monthly_cost": r.monthly_cost,
                           "share_by_quality": r.share_by_quality, "savings_vs": r.savings_vs}
        text += "\n\n" + render.kv_table(
            {"blended cost per request": r.cost_per_request,
             "blended monthly cost": r.monthly_cost,
             **{f"share {q}": v for q, v in r.share_by_quality.items()},
             **{f"saving vs all-{n}": v for n, v in r.savings_vs.items()}}, "model routing ($):")
    _out(as_json, data, text)


def _parse_route(text: str):
    from workbench.plan.cost import Route

    parts = text.split(":")
    try:
        name, share, cost_, quality = parts
        return Route(name, float(share), float(cost_), quality)
    except ValueError:
        raise ValueError(f"route: expected NAME:SHARE:COST_PER_REQUEST:QUALITY, got {text!r}"
                         ) from None


cli_trees.register(plan_app, user_errors, _out)
cli_published.register(plan_app, user_errors, _out)
