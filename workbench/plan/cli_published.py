"""`workbench plan validate` and `workbench plan fit-published`: the GPU forecasts held
against published measurements (workbench.sim.published_fit)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

Sample = Annotated[int | None, typer.Option(
    help="Validate a seeded random subset of this many rows (quicker, noisier).")]
Only = Annotated[list[str] | None, typer.Option(
    help="Keep rows whose source or GPU is this (repeat).")]
RowsCsv = Annotated[Path | None, typer.Option(
    help="Write published vs predicted for every row to this CSV.")]
ParamsFile = Annotated[Path | None, typer.Option(
    help="Where to write the parameters (default: the packaged file).")]
Json = Annotated[bool, typer.Option("--json", help="Print JSON instead of a table.")]


def register(app: typer.Typer, user_errors, out) -> None:

    @app.command()
    @user_errors
    def validate(sample: Sample = None, only: Only = None, rows_csv: RowsCsv = None,
                 as_json: Json = False):
        """Predict every published measurement with the simulator, with parameters fitted
        without the row's source (leave-one-source-out) and without its GPU
        (leave-one-GPU-out); print the median absolute errors and each sweep's knee."""
        from workbench.sim.published_fit import validate as run

        v = run(_rows(sample, only), log=lambda m: typer.echo(m, err=True))
        if rows_csv is not None:
            v.rows().to_csv(rows_csv, index=False)
        tables = v.tables()
        knees = v.knees
        text = "\n\n".join(f"{name} (median |predicted / published - 1|):\n"
                           + t.to_string(float_format=lambda x: f"{x:.3f}")
                           for name, t in tables.items())
        if len(knees):
            within = (knees["doublings"] <= 1).mean()
            text += (f"\n\nknees (concurrency reaching 90% of a sweep's peak throughput): "
                     f"{within:.0%} of {len(knees)} sweeps predicted within one doubling\n"
                     + knees.to_string(index=False))
        out(as_json, {"tables": {k: t.reset_index().to_dict("records")
                                 for k, t in tables.items()},
                      "knees": knees.to_dict("records"), "error_band": v.band()}, text)

    @app.command("fit-published")
    @user_errors
    def fit_published(params_file: ParamsFile = None):
        """Fit the step model's parameters (generic and per GPU class) to the whole published
        dataset, with the leave-one-source-out errors as the band forecasts print."""
        from workbench.sim.published_fit import validate as run
        from workbench.sim.published_fit import write_params

        v = run(_rows(None, None), log=lambda m: typer.echo(m, err=True))
        write_params(v, params_file)
        band = v.band()
        typer.echo(f"wrote {params_file or 'the packaged step_params.yaml'}: "
                   f"{len(v.per_gpu)} GPU classes + generic; held-out error band TPOT "
                   f"±{band['tpot']:.0%}, TTFT ±{band['ttft']:.0%}, output throughput "
                   f"±{band['output_throughput']:.0%}")


def _rows(sample: int | None, only: list[str] | None):
    from workbench.plan.published import load_published

    frame = load_published()
    if only:
        frame = frame[frame["source"].isin(only) | frame["gpu"].isin(only)]
        if frame.empty:
            raise ValueError(f"only: no row has source or gpu in {only}")
    if sample is not None:
        if sample < 2:
            raise ValueError(f"sample: must be >= 2, got {sample}")
        frame = frame.sample(min(sample, len(frame)), random_state=0).sort_index()
    return frame
