"""`workbench` command line. A user's mistake prints one line `error: ...` and exits 2."""

from __future__ import annotations

import functools
import sys
from typing import Annotated

import typer

app = typer.Typer(add_completion=False, no_args_is_help=True,
                  help="LLM Serving Workbench: run, measure and plan LLM inference.")
models_app = typer.Typer(no_args_is_help=True, help="Embedded model presets.")
app.add_typer(models_app, name="models")


def user_errors(fn):
    """Turn ValueErrors (bad input, named field) into one line on stderr and exit code 2."""

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        try:
            return fn(*args, **kwargs)
        except ValueError as e:
            typer.echo(f"error: {e}", err=True)
            raise typer.Exit(2) from None

    return wrapper


@app.command()
@user_errors
def generate(
    prompt: Annotated[str, typer.Argument(help="Prompt text.")],
    model: Annotated[str, typer.Option(help="Preset name or local HF checkpoint dir.")] = "tiny",
    max_tokens: Annotated[int, typer.Option(help="Tokens to generate.")] = 32,
    temperature: Annotated[float, typer.Option(help="0 = greedy.")] = 0.0,
    top_k: Annotated[int, typer.Option(help="0 = off.")] = 0,
    top_p: float = 1.0,
    seed: Annotated[int | None, typer.Option(help="Per-request sampling seed.")] = None,
    dtype: Annotated[str, typer.Option(help="auto | float32 | bfloat16 | float16")] = "auto",
    stream: Annotated[bool, typer.Option(help="Print tokens as they are produced.")] = True,
):
    """Generate text for PROMPT and print it."""
    from workbench.engine import EngineConfig, LLMEngine, SamplingParams

    params = SamplingParams(max_tokens=max_tokens, temperature=temperature, top_k=top_k,
                            top_p=top_p, seed=seed)
    engine = LLMEngine.from_pretrained(model, EngineConfig(dtype=dtype, max_num_seqs=1))
    if stream:
        for out in engine.stream(prompt, params):
            sys.stdout.write(out.new_text)
            sys.stdout.flush()
        sys.stdout.write("\n")
    else:
        typer.echo(engine.generate([prompt], params)[0].text)


@app.command()
@user_errors
def bench(
    model: Annotated[str, typer.Option(help="Preset or checkpoint dir.")] = "small",
    dtype: Annotated[str, typer.Option(help="float32 | bfloat16 | float16")] = "float32",
    requests: Annotated[int, typer.Option(help="Requests in the mixed workload.")] = 64,
    batch_size: Annotated[int, typer.Option(help="max_num_seqs / static batch size.")] = 16,
    repeats: Annotated[int, typer.Option(help="Runs per system; medians reported.")] = 1,
    seed: Annotated[int, typer.Option(help="Workload seed.")] = 0,
    hf: Annotated[bool, typer.Option(help="Include Hugging Face generate as a peer.")] = True,
    out: Annotated[str | None, typer.Option(help="Directory for bench.json / bench.md.")] = None,
):
    """Throughput: this engine vs static batching vs HF generate on one seeded workload."""
    from workbench.bench import run_benchmark, save

    for name, value in (("requests", requests), ("batch-size", batch_size),
                        ("repeats", repeats)):
        if value < 1:
            raise ValueError(f"{name}: must be >= 1, got {value}")
    result = run_benchmark(model, dtype, requests, batch_size, repeats, seed, include_hf=hf,
                           log=typer.echo)
    if out:
        typer.echo(f"\nresults written to {save(result, out)}")


@models_app.command("list")
def models_list():
    """List the embedded presets."""
    from workbench.models.tiny import PRESETS

    for name, spec in PRESETS.items():
        typer.echo(f"{name}\t{spec.architecture}\thidden {spec.hidden_size}, "
                   f"{spec.num_layers} layers, {spec.num_heads} heads / {spec.num_kv_heads} KV")


@models_app.command("build")
@user_errors
def models_build(names: Annotated[list[str], typer.Argument(help="Preset names.")]):
    """Build presets into the cache (once) and print their directories."""
    from workbench.models.tiny import PRESETS, resolve_model

    for name in names:
        if name not in PRESETS:
            raise ValueError(f"preset: unknown {name!r}; choose one of {', '.join(PRESETS)}")
        typer.echo(resolve_model(name))


def main() -> None:  # pragma: no cover - console entry point
    app()
