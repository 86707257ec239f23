"""The weight-precision trade-off the planner and the design review show: measured where
`workbench quant-report` measured the model, analytic (and labelled so) everywhere else.

Measured: a table `workbench quant-report` saved (fits/precision/<model>-<dtype>.json): exact
weight bytes, decode speed against the unquantized model at batch 1 and 16, perplexity change
and top-1 agreement on held-out text. Analytic: weight bytes from workbench.plan.memory (the
same formula the quant report checks within 1% of the engine's bytes), and at batch 1 the
speed-up a decode bound by weight bandwidth would get (the byte ratio: an upper bound, which
CPU kernels reach only in part, see quant-report); no speed at batch 16 and no quality: those
need a measurement.
"""

from __future__ import annotations

from pathlib import Path

import pandas as pd

from workbench.quant_report import MEASURED_DIR, load_table

COLUMNS = ("precision", "source", "weight_mb", "bytes_vs_unquantized", "decode_speedup_b1",
           "decode_speedup_b16", "perplexity_change", "top1_agreement")
ANALYTIC_PRECISIONS = ("none", "int8", "int4-g128", "fp8")


def analytic_table(arch, unquantized: str = "bf16",
                   precisions: tuple[str, ...] = ANALYTIC_PRECISIONS) -> pd.DataFrame:
    from workbench.plan.memory import weight_bytes
    from workbench.quant_report import parse_precision

    rows, base = [], weight_bytes(arch, unquantized)
    for label in precisions:
        quantization, group = parse_precision(label)
        precision = unquantized if quantization == "none" else quantization
        b = weight_bytes(arch, precision, group, unquantized=unquantized)
        rows.append({"precision": label, "source": "analytic", "weight_mb": b / 1e6,
                     "bytes_vs_unquantized": b / base, "decode_speedup_b1": base / b,
                     "decode_speedup_b16": None, "perplexity_change": None,
                     "top1_agreement": None})
    frame = pd.DataFrame(rows, columns=COLUMNS).set_index("precision")
    frame.attrs["source"] = (f"analytic for {arch.name} ({unquantized} unquantized): bytes from "
                             "the memory model, batch-1 speed-up = the byte ratio (a "
                             "bandwidth bound), quality not measured")
    return frame


def measured_table(report: pd.DataFrame, path: str = "") -> pd.DataFrame:
    """A quant report (workbench.quant_report) in the table's columns, against its first row."""
    base = report.iloc[0]
    rows = [{"precision": label, "source": "measured", "weight_mb": r.weight_bytes / 1e6,
             "bytes_vs_unquantized": r.weight_bytes / base.weight_bytes,
             "decode_speedup_b1": r.decode_tok_s_batch1 / base.decode_tok_s_batch1,
             "decode_speedup_b16": r.decode_tok_s_batch16 / base.decode_tok_s_batch16,
             "perplexity_change": r.perplexity_change, "top1_agreement": r.top1_agreement}
            for label, r in report.iterrows()]
    frame = pd.DataFrame(rows, columns=COLUMNS).set_index("precision")
    a = report.attrs
    frame.attrs["source"] = (f"measured on {a.get('model')} ({a.get('dtype')}) by "
                             f"`workbench quant-report`{' (' + path + ')' if path else ''}; "
                             f"{a.get('workload', '')}")
    return frame


def find_measured(model: str, directory: str | Path = MEASURED_DIR) -> Path | None:
    """The newest saved quant report of `model` (any dtype) under `directory`, if any."""
    found = sorted(Path(directory).glob(f"{Path(str(model)).name}-*.json"),
                   key=lambda p: p.stat().st_mtime)
    return found[-1] if found else None


def precision_table(model: str, arch=None, unquantized: str = "bf16",
                    directory: str | Path = MEASURED_DIR) -> pd.DataFrame:
    """Measured for `model` when a saved quant report exists, else analytic for `arch` (looked
    up from `model` when not given); `attrs["source"]` says which."""
    path = find_measured(model, directory)
    if path is not None:
        return measured_table(load_table(path), str(path))
    if arch is None:
        from workbench.plan.models_catalog import get_model

        arch = get_model(model)
    return analytic_table(arch, unquantized)


def table_text(frame: pd.DataFrame) -> str:
    """Plain-text table plus its source line (the CLI's)."""
    from workbench.plan.render import rows_table

    return rows_table(frame.reset_index().to_dict(orient="records"),
                      f"precision trade-off ({frame.attrs['source']}):")
