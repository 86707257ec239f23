"""Fit the step model's parameters to published measurements, and judge them on held-out ones.

Fitting runs each row through the simulator once, keeps the schedule it produced (which
steps ran which work, which request arrived, started and finished at which step) and then
re-times that schedule for any parameter set without simulating again (`RowTrace.metrics`):
in a closed loop or an offline batch the engine's scheduling decisions do not depend on how
long steps take, only on their order, so re-timing is exact there; open-loop rows are
re-simulated between fitting rounds. The loss is the log-ratio of predicted to published
TTFT, TPOT and output throughput (robust, soft-L1), each source weighing the same.

Validation (`validate`) is what a user reads: every row predicted by the full simulator with
parameters fitted WITHOUT the row's source (leave-one-source-out) — forecast error, not fit
error — and again without the row's GPU (leave-one-GPU-out), plus the knee of every
concurrency sweep. `write_params` stores the parameter sets fitted on all rows, with the
leave-one-source-out errors as the band every forecast prints.
"""

from __future__ import annotations

import datetime as dt
import math
from dataclasses import dataclass, replace

import numpy as np
import pandas as pd

from workbench.plan.step_cost import Efficiency
from workbench.plan.step_params import parameters_for_gpu
from workbench.sim.published_rows import (
    RowSetting,
    benchmark_metrics,
    empty_answers,
    predicted_metrics,
    row_setting,
    simulate_setting,
    step_model_for,
)

# The metrics forecasts are judged on: (published column preferred, fallback).
TARGETS = {"ttft": ("ttft_ms_mean", "ttft_ms_median"),
           "tpot": ("tpot_ms_mean", "tpot_ms_median"),
           "output_throughput": ("output_throughput",)}

# Fitted parameters: name -> (lower, upper, start). The rest of Efficiency stays at its
# default (attention MFU follows the linear layers' MFU).
BOUNDS = {
    "memory": (0.3, 1.0, 0.8),
    "compute": (0.1, 1.0, 0.6),
    "compute_half_tokens": (0.0, 4096.0, 64.0),
    "attention_memory": (0.1, 1.0, 0.6),
    "attention_compute": (0.02, 1.0, 0.4),
    "overhead_s": (0.0, 0.05, 0.003),
    "per_seq_s": (0.0, 5e-4, 2e-5),
    "stream_per_seq_s": (0.0, 5e-4, 2e-5),
    "allreduce_latency_s": (0.0, 2e-4, 1e-5),
    # HTTP + tokenization: tens of milliseconds at most; a wider bound lets it soak up
    # queueing the schedule should explain.
    "client_s": (0.0, 0.05, 0.01),
}
# What a GPU class may refine from the generic set, and how strongly it is pulled back to it.
PER_GPU = ("memory", "compute", "compute_half_tokens", "attention_memory",
           "attention_compute", "overhead_s", "per_seq_s", "stream_per_seq_s",
           "allreduce_latency_s")
PER_GPU_PULL = 0.3
MIN_ROWS_PER_GPU = 20


@dataclass
class RowTrace:
    """One row's simulated schedule, re-timed for any parameters without simulating again."""

    setting: RowSetting
    models: list            # one StepCostModel per replica
    works: list             # StepWork per replica (numpy arrays over its steps)
    ready: list             # per replica: earliest start of each step (open loop), or None
    req_arrival: np.ndarray   # global step index whose end is the arrival; -1 = fixed time
    req_arrival_s: np.ndarray  # the fixed arrival time where req_arrival is -1
    req_first: np.ndarray
    req_finish: np.ndarray
    req_output: np.ndarray    # output tokens the source counted (0: an empty answer)

    def step_ends(self, e: Efficiency) -> np.ndarray:
        """Every step's end time, replica after replica (global step index order)."""
        ends = []
        for model, work, ready in zip(self.models, self.works, self.ready, strict=True):
            dt_ = np.asarray(model.time_of(work, e), float)
            total = np.cumsum(dt_)
            if ready is not None:   # idle until the step's requests have arrived
                before = np.concatenate([[0.0], total[:-1]])
                total = total + np.maximum.accumulate(np.maximum(ready - before, 0.0))
            ends.append(total)
        return np.concatenate(ends) if ends else np.zeros(0)

    def metrics(self, e: Efficiency) -> dict:
        e = as_served(e, self.setting.through_http)
        t = self.step_ends(e)
        arrival = np.where(self.req_arrival >= 0, t[np.maximum(self.req_arrival, 0)],
                           self.req_arrival_s)
        first, finish = t[self.req_first], t[self.req_finish]
        c = e.client_s if self.setting.through_http else 0.0
        duration = finish.max() + c - arrival.min()
        return benchmark_metrics(first - arrival + c, finish - arrival + c, self.req_output,
                                 duration, medians=False)


def as_served(e: Efficiency, through_http: bool) -> Efficiency:
    """An offline batch pays neither the HTTP client's latency nor per-token streaming."""
    return e if through_http else replace(e, client_s=0.0, stream_per_seq_s=0.0)


def trace_row(row, e: Efficiency) -> RowTrace:
    """Simulate `row` with `e` once and keep its schedule."""
    s = row_setting(row)
    e = as_served(e, s.through_http)
    sim, result = simulate_setting(s, e)
    models, works, ready, ends, offsets = [], [], [], [], []
    n = 0
    for rep in sim.replicas:
        tel = rep.telemetry
        cost = step_model_for(s, e).cost
        col = {f: np.array([getattr(r, f) for r in tel], float) for f in (
            "num_prefill_tokens", "num_prefill_seqs", "prefill_attention", "num_decode_seqs",
            "decode_context", "t_start", "t_end")}
        models.append(cost)
        works.append(cost.work(col["num_prefill_tokens"], col["num_prefill_seqs"],
                               col["prefill_attention"], col["num_decode_seqs"],
                               col["decode_context"]))
        # Open loop: a step may wait for its requests; its start in the simulation says when.
        prev_end = np.concatenate([[0.0], col["t_end"][:-1]])
        waited = col["t_start"] > prev_end + 1e-12
        ready.append(np.where(waited, col["t_start"], 0.0) if waited.any() else None)
        ends.append(col["t_end"])
        offsets.append(n)
        n += len(tel)
    # Times -> global step indices: a token at the end of its replica's step; a closed-loop
    # arrival at the end of whichever step freed its client.
    index = {(k, t): off + i for k, (end, off) in enumerate(zip(ends, offsets, strict=True))
             for i, t in enumerate(end)}
    all_ends = {t: i for (_, t), i in index.items()}
    recs = result.records
    arrival = np.array([all_ends.get(r["arrival"], -1) if r["arrival"] > 0 else -1
                        for r in recs])
    first = np.array([index[(r["replica"], r["token_times"][0])] for r in recs])
    finish = np.array([index[(r["replica"], r["token_times"][-1])] for r in recs])
    empty = empty_answers(s)[[int(r["request_id"]) for r in recs]]
    return RowTrace(s, models, works, ready, arrival,
                    np.array([r["arrival"] for r in recs], float), first, finish,
                    np.where(empty, 0.0, [r["output_tokens"] for r in recs]))


def published_targets(frame: pd.DataFrame) -> pd.DataFrame:
    """Per row, the published value of each forecast metric (NaN where not measured)."""
    out = pd.DataFrame(index=frame.index)
    for metric, columns in TARGETS.items():
        value = pd.Series(np.nan, index=frame.index)
        for c in reversed(columns):
            value = frame[c].where(frame[c].notna(), value)
        out[metric] = value
    # Offline batches measure a whole batch, not its first token: no client, no TTFT.
    return out


def _efficiency(base: Efficiency, names, x) -> Efficiency:
    return replace(base, **{n: float(v) for n, v in zip(names, x, strict=True)})


def _residuals(traces, targets, weights, e_of_row) -> np.ndarray:
    res = []
    for trace, target, w in zip(traces, targets, weights, strict=True):
        got = trace.metrics(e_of_row(trace))
        for metric, want in target.items():
            key = {"ttft": "ttft_ms_mean", "tpot": "tpot_ms_mean"}.get(metric, metric)
            pred = got[key]
            res.append(w * math.log(max(pred, 1e-12) / want) if np.isfinite(pred) else w * 5)
    return np.asarray(res)


def _targets_of(frame: pd.DataFrame) -> list[dict]:
    pub = published_targets(frame)
    return [{m: float(v) for m, v in row.items() if np.isfinite(v)}
            for _, row in pub.iterrows()]


def _weights(frame: pd.DataFrame, targets: list[dict]) -> list[float]:
    """Each source weighs the same; within it, each row's metrics share the row's weight."""
    per_source = frame["source"].map(frame["source"].value_counts())
    return [1 / math.sqrt(n * max(len(t), 1)) for n, t in zip(per_source, targets,
                                                              strict=True)]


def fit_parameters(frame: pd.DataFrame, traces: list[RowTrace],
                   start: Efficiency | None = None) -> tuple[Efficiency, dict[str, Efficiency]]:
    """(generic parameters, {gpu: parameters}) fitted to `frame`'s rows (their traces)."""
    from scipy.optimize import least_squares

    targets = _targets_of(frame)
    weights = _weights(frame, targets)
    base = start or Efficiency(**{n: b[2] for n, b in BOUNDS.items()})
    names = list(BOUNDS)
    lo = np.array([BOUNDS[n][0] for n in names])
    hi = np.array([BOUNDS[n][1] for n in names])
    x0 = np.clip([getattr(base, n) for n in names], lo + 1e-9, hi - 1e-9)
    def residuals(x):
        e = _efficiency(base, names, x)
        return _residuals(traces, targets, weights, lambda _t: e)

    fit = least_squares(residuals, x0, bounds=(lo, hi), loss="soft_l1", f_scale=0.1,
                        x_scale="jac", max_nfev=200)
    generic = replace(_efficiency(base, names, fit.x), source="fitted")
    per_gpu = {}
    gpus = frame["gpu"].to_numpy()
    for gpu in sorted(set(gpus)):
        rows = np.flatnonzero(gpus == gpu)
        if len(rows) < MIN_ROWS_PER_GPU:
            continue
        sub_t = [traces[i] for i in rows]
        sub_y = [targets[i] for i in rows]
        sub_w = [weights[i] for i in rows]
        idx = [names.index(n) for n in PER_GPU]
        g0 = np.array([getattr(generic, n) for n in PER_GPU])
        # The pull is relative to the generic value, or to a twentieth of the parameter's
        # range where the generic value is ~0 (else a GPU could never leave a zero).
        scale = np.maximum(np.abs(g0), 0.05 * (hi[idx] - lo[idx]))

        def res(x, sub_t=sub_t, sub_y=sub_y, sub_w=sub_w, g0=g0, scale=scale):
            e = _efficiency(generic, PER_GPU, x)
            r = _residuals(sub_t, sub_y, sub_w, lambda _t: e)
            pull = PER_GPU_PULL * (x - g0) / scale * max(sub_w)
            return np.concatenate([r, pull])

        g = least_squares(res, np.clip(g0, lo[idx] + 1e-9, hi[idx] - 1e-9),
                          bounds=(lo[idx], hi[idx]), loss="soft_l1", f_scale=0.1,
                          x_scale="jac", max_nfev=100)
        per_gpu[gpu] = replace(_efficiency(generic, PER_GPU, g.x), source="fitted")
    return generic, per_gpu


START = Efficiency(**{n: b[2] for n, b in BOUNDS.items()}, source="fit start")


def trace_all(frame: pd.DataFrame, e: Efficiency = START, log=None) -> list[RowTrace]:
    traces = []
    for i, row in enumerate(frame.to_dict("records")):
        traces.append(trace_row(row, e))
        if log and (i + 1) % 200 == 0:
            log(f"  simulated {i + 1} of {len(frame)} rows")
    return traces


def _open_loop(trace: RowTrace) -> bool:
    """Rows whose schedule depends on step times (arrivals at a rate, not at step ends)."""
    s = trace.setting
    return s.concurrency is None and not math.isinf(s.rate)


def fit_frame(frame: pd.DataFrame, traces: list[RowTrace], rounds: int = 2):
    """Fit on `frame` by re-timing its rows' schedules; open-loop rows, whose schedule
    depends on step times, are simulated again with each round's parameters."""
    generic, per_gpu = fit_parameters(frame, traces, START)
    for _ in range(rounds - 1):
        rows = frame.to_dict("records")
        traces = [trace_row(rows[i], parameters_for_gpu(rows[i]["gpu"], generic, per_gpu))
                  if _open_loop(t) else t for i, t in enumerate(traces)]
        generic, per_gpu = fit_parameters(frame, traces, generic)
    return generic, per_gpu


def predict_frame(frame: pd.DataFrame, traces: list[RowTrace], generic: Efficiency,
                  per_gpu: dict) -> pd.DataFrame:
    """Every row's metrics with its GPU's parameters: its simulated schedule re-timed (exact
    for closed loops and offline batches, whose schedule does not depend on step times);
    open-loop rows simulated again from scratch."""
    rows = []
    for row, trace in zip(frame.to_dict("records"), traces, strict=True):
        e = parameters_for_gpu(row["gpu"], generic, per_gpu)
        if _open_loop(trace):
            s = trace.setting
            _, result = simulate_setting(s, as_served(e, s.through_http))
            rows.append(predicted_metrics(result.records, e.client_s if s.through_http else 0,
                                          empty_answers(s)))
        else:
            rows.append(trace.metrics(e))
    return pd.DataFrame(rows, index=frame.index)


def held_out_predictions(frame: pd.DataFrame, traces: list[RowTrace], by: str,
                         log=None) -> tuple[pd.DataFrame, dict]:
    """Predictions for every row, by the simulator, from parameters fitted without the rows
    sharing its `by` (source or gpu); a held-out GPU gets what a GPU never measured gets (the
    sets of its architecture, else the generic one). Also returns the parameters of each
    fold."""
    parts, folds = [], {}
    position = {ix: i for i, ix in enumerate(frame.index)}
    for value in sorted(frame[by].unique()):
        train, test = frame[frame[by] != value], frame[frame[by] == value]
        if log:
            log(f"fitting without {by} {value} ({len(train)} rows), predicting {len(test)}")
        generic, per_gpu = fit_frame(train, [traces[position[i]] for i in train.index])
        if by == "gpu":
            per_gpu = {}
        folds[value] = (generic, per_gpu)
        parts.append(predict_frame(test, [traces[position[i]] for i in test.index], generic,
                                   per_gpu))
    return pd.concat(parts).loc[frame.index], folds


def errors(frame: pd.DataFrame, predicted: pd.DataFrame) -> pd.DataFrame:
    """Relative error (predicted / published - 1) per row and forecast metric."""
    pub = published_targets(frame)
    pred = pd.DataFrame({"ttft": predicted["ttft_ms_mean"], "tpot": predicted["tpot_ms_mean"],
                         "output_throughput": predicted["output_throughput"]},
                        index=frame.index)
    return pred / pub - 1


BANDS = ((1, "1"), (8, "2-8"), (32, "9-32"), (128, "33-128"), (512, "129-512"),
         (math.inf, ">512"))


def concurrency_band(c) -> str:
    """Open-loop rows (no concurrency) fall in the top band: their requests pile up."""
    c = math.inf if pd.isna(c) else c
    return next(name for hi, name in BANDS if c <= hi)


def error_table(frame: pd.DataFrame, err: pd.DataFrame, by: str) -> pd.DataFrame:
    """Median absolute error per group of `by` (a column, or "band" for concurrency bands)."""
    keys = frame["concurrency"].map(concurrency_band) if by == "band" else frame[by]
    table = err.abs().groupby(keys).median()
    table["rows"] = keys.value_counts()
    if by == "band":
        table = table.reindex([name for _, name in BANDS if name in table.index])
    overall = err.abs().median().to_frame("all").T
    overall["rows"] = len(frame)
    return pd.concat([table, overall])


def knees(frame: pd.DataFrame, predicted: pd.DataFrame, share: float = 0.9) -> pd.DataFrame:
    """For every concurrency sweep (one setting, several loads): the smallest concurrency
    whose output throughput is within 10% of the sweep's maximum, published and predicted."""
    keys = ["source", "gpu", "gpu_count", "tp", "model", "weight_dtype", "mode",
            "input_tokens", "output_tokens"]
    rows = []
    for key, g in frame.groupby([frame[k].round(0) if k.endswith("tokens") else frame[k]
                                 for k in keys], sort=False):
        g = g.sort_values("concurrency")
        if g["concurrency"].nunique() < 3 or g["output_throughput"].isna().any():
            continue
        pub = g["output_throughput"].to_numpy()
        pred = predicted.loc[g.index, "output_throughput"].to_numpy()
        conc = g["concurrency"].to_numpy()
        knee_pub = conc[np.argmax(pub >= share * pub.max())]
        knee_pred = conc[np.argmax(pred >= share * pred.max())]
        rows.append(dict(zip(keys, key, strict=True)) | {
            "points": len(g), "knee_published": knee_pub, "knee_predicted": knee_pred,
            "doublings": abs(math.log2(knee_pred / knee_pub))})
    return pd.DataFrame(rows)


def params_document(generic: Efficiency, per_gpu: dict, band: dict, rows: int,
                    sources: int) -> dict:
    from workbench.plan.step_params import PARAMETER_NAMES

    def values(e: Efficiency) -> dict:
        return {n: round(float(getattr(e, n)), 9) for n in PARAMETER_NAMES
                if getattr(e, n) is not None}

    today = dt.date.today().isoformat()
    how = (f"workbench plan fit-published, {today}: {rows} rows from {sources} sources in "
           "workbench/plan/published/measurements.csv")
    return {"how": how, "generic": values(generic),
            "gpus": {g: values(e) for g, e in sorted(per_gpu.items())},
            "error_band": {**{k: round(float(v), 3) for k, v in band.items()},
                           "how": "median absolute error on rows held out of the fit by "
                                  f"source (leave-one-source-out), {today}"}}


@dataclass
class Validation:
    """What `workbench plan validate` prints: held-out errors by source and by GPU, knees."""

    frame: pd.DataFrame
    by_source: pd.DataFrame     # predictions with the row's source held out of the fit
    by_gpu: pd.DataFrame        # predictions with the row's GPU held out of the fit
    source_errors: pd.DataFrame
    gpu_errors: pd.DataFrame
    literature_errors: pd.DataFrame  # the peer: literature parameters, no fit
    knees: pd.DataFrame
    generic: Efficiency         # fitted on every row
    per_gpu: dict

    def band(self) -> dict:
        """The error band forecasts print: leave-one-source-out median absolute errors."""
        return self.source_errors.abs().median().to_dict()

    def tables(self) -> dict[str, pd.DataFrame]:
        f = self.frame
        return {
            "leave-one-source-out, by GPU": error_table(f, self.source_errors, "gpu"),
            "leave-one-source-out, by concurrency": error_table(f, self.source_errors, "band"),
            "leave-one-source-out, by source": error_table(f, self.source_errors, "source"),
            "leave-one-GPU-out, by GPU": error_table(f, self.gpu_errors, "gpu"),
            "peer: literature parameters (MBU 0.6, MFU 0.5, no fit), by GPU":
                error_table(f, self.literature_errors, "gpu"),
        }

    def rows(self) -> pd.DataFrame:
        """Published vs predicted (source held out) for every row."""
        pub = published_targets(self.frame)
        cols = ["source", "gpu", "tp", "model", "weight_dtype", "mode", "input_tokens",
                "output_tokens", "concurrency", "request_rate"]
        out = self.frame[cols].copy()
        pred = {"ttft": "ttft_ms_mean", "tpot": "tpot_ms_mean",
                "output_throughput": "output_throughput"}
        for metric, col in pred.items():
            out[f"{metric}_published"] = pub[metric]
            out[f"{metric}_predicted"] = self.by_source[col]
            out[f"{metric}_error"] = self.source_errors[metric]
        return out


def validate(frame: pd.DataFrame, log=None) -> Validation:
    """Trace every row once, fit leave-one-source-out and leave-one-GPU-out, predict every
    row with the simulator, and fit on everything for the parameters to ship."""
    if log:
        log(f"simulating {len(frame)} rows once for their schedules")
    traces = trace_all(frame, START, log)
    by_source, _ = held_out_predictions(frame, traces, "source", log)
    by_gpu, _ = held_out_predictions(frame, traces, "gpu", log)
    generic, per_gpu = fit_frame(frame, traces)
    from workbench.plan.step_cost import LITERATURE_EFFICIENCY

    literature = predict_frame(frame, traces, LITERATURE_EFFICIENCY, {})
    return Validation(frame, by_source, by_gpu, errors(frame, by_source),
                      errors(frame, by_gpu), errors(frame, literature),
                      knees(frame, by_source), generic, per_gpu)


def write_params(v: Validation, path=None) -> None:
    import yaml

    from workbench.plan.step_params import PARAMS_FILE, _load

    doc = params_document(v.generic, v.per_gpu, v.band(), len(v.frame),
                          v.frame["source"].nunique())
    # The held-out tables travel with the parameters: reports show them without refitting.
    doc["validation"] = {
        name: {str(k): {c: (None if pd.isna(x) else round(float(x), 3))
                        for c, x in row.items()} for k, row in t.iterrows()}
        for name, t in v.tables().items()}
    k = v.knees
    doc["validation"]["knees"] = {
        "sweeps": int(len(k)), "within_one_doubling": int((k["doublings"] <= 1).sum())}
    path = path or PARAMS_FILE
    header = ("# Written by `workbench plan fit-published` (workbench.sim.published_fit): the\n"
              "# step model's parameters fitted to workbench/plan/published/measurements.csv.\n"
              "# Do not edit by hand; refit instead.\n")
    path.write_text(header + yaml.safe_dump(doc, sort_keys=False))
    _load.cache_clear()
