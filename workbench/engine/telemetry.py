"""Per-step telemetry: one record per engine step (the simulator writes the same records)."""

from __future__ import annotations

from dataclasses import asdict, dataclass, fields


@dataclass(slots=True)
class StepRecord:
    step: int
    t_start: float
    t_end: float
    num_prefill_tokens: int
    num_decode_seqs: int
    num_seqs: int
    sum_context_tokens: int  # K/V tokens attended over, summed across the batch
    kv_blocks_used: int
    kv_blocks_total: int
    num_preempted: int
    num_waiting: int


STEP_COLUMNS = [f.name for f in fields(StepRecord)]


def telemetry_frame(source):
    """An engine (anything with `.telemetry`) or a list of StepRecords -> pandas DataFrame."""
    import pandas as pd

    records = getattr(source, "telemetry", source)
    return pd.DataFrame([asdict(r) for r in records], columns=STEP_COLUMNS)


def requests_frame(metrics):
    """RequestMetrics records -> pandas DataFrame with the per-request contract's columns."""
    import pandas as pd

    from workbench.engine.outputs import RequestMetrics

    cols = [f.name for f in fields(RequestMetrics)]
    return pd.DataFrame([m.as_dict() for m in metrics], columns=cols)
