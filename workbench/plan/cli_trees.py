"""`plan framework | quantization | parallelism | caching`: decision trees on the command line."""

from __future__ import annotations

from typing import Annotated

import typer

from workbench.plan import render
from workbench.plan.cli_options import Gpu, HardwareFile

Opt = typer.Option


def _show(out, as_json: bool, tree: str, answers: dict, facts: dict | None = None,
          extra: str = "", extra_data: dict | None = None) -> None:
    from workbench.plan.trees import recommend

    d = recommend(tree, {k: v for k, v in answers.items() if v is not None}).as_dict()
    data = {**d, "facts": facts or {}, **(extra_data or {})}
    out(as_json, data, render.decision_text(d, facts) + extra)


def register(app: typer.Typer, user_errors, out) -> None:
    @app.command()
    @user_errors
    def framework(
        use: Annotated[str | None, Opt(help="experiment | local | production")] = None,
        packaging: Annotated[str | None, Opt(help="app | library (local use)")] = None,
        hardware_vendor: Annotated[str | None, Opt(help="nvidia | amd | cpu")] = None,
        latency: Annotated[str | None, Opt(help="lowest | standard")] = None,
        ops_complexity: Annotated[str | None, Opt(help="low | high")] = None,
        multi_model: Annotated[str | None, Opt(help="yes | no")] = None,
        concurrency: Annotated[str | None, Opt(
            help="low | high: requests in flight (or give --requests-per-s and --latency-s)")
                               ] = None,
        requests_per_s: Annotated[float | None, Opt(
            help="Arrival rate; with --latency-s gives requests in flight (Little's law).")
                                  ] = None,
        latency_s: Annotated[float | None, Opt(
            help="Seconds a request spends in the server (queue + prefill + decode).")] = None,
        hf_integration: Annotated[str | None, Opt(help="required | not_needed")] = None,
        matrix: Annotated[bool, Opt(help="Print the framework feature matrix.")] = False,
        as_json: Annotated[bool, Opt("--json")] = False,
    ):
        """Which serving framework, and why (plus the feature matrix with --matrix)."""
        from workbench.plan.frameworks import feature_matrix

        rows = feature_matrix()
        if use is None and matrix:
            out(as_json, {"feature_matrix": rows}, render.rows_table(rows, "feature matrix:"))
            return
        answers = dict(use=use, packaging=packaging, hardware_vendor=hardware_vendor,
                       latency=latency, ops_complexity=ops_complexity, multi_model=multi_model,
                       concurrency=concurrency, hf_integration=hf_integration)
        facts = None
        if requests_per_s is not None or latency_s is not None:
            from workbench.plan.trees.answers import framework_answers

            if requests_per_s is None or latency_s is None:
                missing = "requests_per_s" if requests_per_s is None else "latency_s"
                raise ValueError(f"{missing}: give --requests-per-s and --latency-s together "
                                 "(requests in flight = rate x latency)")
            if concurrency is not None:
                raise ValueError("concurrency: give it or --requests-per-s with --latency-s, "
                                 "not both")
            derived, facts = framework_answers(requests_per_s, latency_s)
            answers |= derived
        extra = "\n\n" + render.rows_table(rows, "feature matrix:") if matrix else ""
        _show(out, as_json, "framework", answers, facts, extra=extra,
              extra_data={"feature_matrix": rows} if matrix else None)

    @app.command()
    @user_errors
    def quantization(
        model: Annotated[str, Opt(help="Catalog model, preset or checkpoint dir.")] = "llama-2-7b",
        gpu: Gpu = "h100-sxm",
        hardware_file: HardwareFile = None,
        gpus: Annotated[int, Opt(help="GPUs (tensor parallel) available.")] = 1,
        context: Annotated[int, Opt(help="Tokens per sequence.")] = 4096,
        concurrency: Annotated[int, Opt(help="Sequences that must fit at once.")] = 1,
        quality: Annotated[str, Opt(help="strict | tolerant")] = "tolerant",
        measured_dir: Annotated[str, Opt(
            help="Where `workbench quant-report` saved measured precision tables.")]
        = "fits/precision",
        as_json: Annotated[bool, Opt("--json")] = False,
    ):
        """Which precision fits the memory budget, hardware and quality tolerance, and the
        precision trade-off table (measured where quant-report measured the model)."""
        from workbench.plan.hardware import get_hardware
        from workbench.plan.models_catalog import get_model
        from workbench.plan.trees.answers import quantization_answers
        from workbench.precision_table import precision_table, table_text

        arch = get_model(model)
        answers, facts = quantization_answers(arch, get_hardware(gpu), context,
                                              concurrency, quality, gpus)
        table = precision_table(model, arch, directory=measured_dir)
        _show(out, as_json, "quantization", answers, facts, extra="\n\n" + table_text(table),
              extra_data={"precision_table": {
                  "source": table.attrs["source"],
                  "rows": table.reset_index().to_dict(orient="records")}})

    @app.command()
    @user_errors
    def parallelism(
        model: Annotated[str, Opt(help="Catalog model, preset or checkpoint dir.")] = "llama-2-70b",
        gpu: Gpu = "h100-sxm",
        hardware_file: HardwareFile = None,
        precision: Annotated[str, Opt(help="Weight precision.")] = "bf16",
        context: Annotated[int, Opt(help="Tokens per sequence.")] = 4096,
        batch: Annotated[int, Opt(help="Sequences that must fit at once.")] = 1,
        target_tokens_per_s: Annotated[float | None, Opt(help="Decode tokens/s needed.")] = None,
        target_tpot_ms: Annotated[float | None, Opt(help="Time per output token target.")
                                  ] = None,
        as_json: Annotated[bool, Opt("--json")] = False,
    ):
        """Single GPU, tensor, pipeline or data parallel, from model size and targets."""
        from workbench.plan.hardware import get_hardware
        from workbench.plan.models_catalog import get_model
        from workbench.plan.trees.answers import parallelism_answers

        tpot = None if target_tpot_ms is None else target_tpot_ms / 1e3
        answers, facts = parallelism_answers(get_model(model), get_hardware(gpu), precision,
                                             context, batch, target_tokens_per_s, tpot)
        _show(out, as_json, "parallelism", answers, facts)

    @app.command()
    @user_errors
    def caching(
        model: Annotated[str, Opt(help="Catalog model, preset or checkpoint dir.")] = "llama-2-7b",
        gpu: Gpu = "h100-sxm",
        hardware_file: HardwareFile = None,
        repeat_fraction: Annotated[float, Opt(help="Share of exact repeat requests.")] = 0.0,
        shared_prefix_fraction: Annotated[float, Opt(help="Share with a shared prefix.")] = 0.0,
        context: Annotated[int, Opt(help="Tokens per sequence.")] = 4096,
        concurrency: Annotated[int, Opt(help="Sequences that must fit at once.")] = 1,
        precision: Annotated[str, Opt(help="Weight precision.")] = "bf16",
        gpus: Annotated[int, Opt(help="GPUs per replica (tensor parallel).")] = 1,
        as_json: Annotated[bool, Opt("--json")] = False,
    ):
        """Which cache helps this workload: response, prefix, quantized KV, sliding window."""
        from workbench.plan.hardware import get_hardware
        from workbench.plan.models_catalog import get_model
        from workbench.plan.trees.answers import caching_answers

        answers, facts = caching_answers(get_model(model), get_hardware(gpu), repeat_fraction,
                                         shared_prefix_fraction, context, concurrency,
                                         precision, gpus)
        _show(out, as_json, "caching", answers, facts)
