"""A step-latency model fitted with non-negative least squares on relative error.

Coefficients stay non-negative so each reads as a cost (seconds per unit of a feature); rows
are weighted by 1/time so the fit minimises relative error, which is what percentiles of TTFT
and TPOT are sensitive to. The weights are 1/predicted time, refined over a few rounds, not
1/measured time: weighting by the measurement gives a step that happened to run slow less say
than one that ran fast, so the fit came out below the steps' mean (by 2-11% of a profile's own
busy time on the shared 2-core CPU), and a latency is a sum of steps, so the simulator ran fast
by as much. Weighted by the prediction the fit is unbiased; Huber weights on the relative
residuals keep a few stalled steps (another process took the CPU) from pulling it up.
Validation is on held-out steps: whole profile cases or runs (see `holdout_split`), never
neighbours of training steps.

Small batches get a measured factor on top (`row_factors`): a step of few rows (batched tokens)
does not cost what a straight line through the batch sizes says. The matmuls' kernels and
threading change with the row count, so on a 2-core CPU `tiny` decoded 1 sequence in ~3.0 ms,
3 in ~5.2 ms and 4 in ~4.4 ms, and `small` ran 3 and 7 rows 40% and 35% above the line through
its other sizes; a line misses small batches by 10-40%, and they are most of the steps of
interactive traffic. Each factor is the median ratio of
measured to linear time over the profiled steps of exactly that many rows, scaled so that the
factors average 1 over those steps: they give the shape across row counts, and the line keeps
the level (else the two trade level against each other from one round of the fit to the next).
"""

from __future__ import annotations

import datetime as dt
import json
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
from scipy.optimize import nnls

from workbench.fit.features import FEATURES, feature_matrix


@dataclass
class StepTimeModel:
    coefficients: dict[str, float]
    model: dict  # name, path, architecture, weight bytes, KV bytes per token, max_model_len
    engine: dict  # dtype, block_size, kv_cache_dtype, quantization, device
    hardware: str | None = None
    inter_step_gap_s: float = 0.0  # idle time between back-to-back steps (driver loop)
    validation: dict = field(default_factory=dict)
    # Factor on the linear time of a step of `i` batched tokens (prefill tokens + decodes),
    # for i < len(row_factors); 1 beyond. Empty in fits made before it existed.
    row_factors: list[float] = field(default_factory=list)
    family: str = "linear-nnls"
    sources: list[str] = field(default_factory=list)
    created: str = ""

    def __post_init__(self) -> None:
        self._coef = [self.coefficients.get(f, 0.0) for f in FEATURES]
        self._factors = list(self.row_factors)

    def predict_record(self, r) -> float:
        """One step's seconds; written out by hand because the simulator calls it per step."""
        c = self._coef
        t = (c[0] + c[1] * r.num_prefill_tokens + c[2] * r.prefill_attention
             + c[3] * r.num_prefill_seqs + c[4] * r.num_decode_seqs
             + c[5] * r.decode_context + c[6] * r.num_decode_seqs * r.decode_max_context
             + (c[7] if r.num_decode_seqs and r.num_prefill_tokens else 0.0))
        rows = r.num_prefill_tokens + r.num_decode_seqs
        return t * self._factors[rows] if rows < len(self._factors) else t

    def predict(self, steps) -> np.ndarray:
        x = feature_matrix(steps)
        return (x @ np.asarray(self._coef)) * _factor_of(_rows(steps), self._factors)

    def save(self, path: str | Path) -> Path:
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(".tmp")
        tmp.write_text(json.dumps({"kind": "step-time-model", **asdict(self)}, indent=2))
        tmp.replace(path)
        return path

    def describe(self) -> str:
        units = {"const": "s/step", "prefill_tokens": "s/token", "prefill_attention": "s/pair",
                 "prefill_seqs": "s/chunk", "decode_seqs": "s/seq",
                 "decode_context": "s/KV token", "decode_padded_context": "s/padded KV token",
                 "mixed_step": "s/step of decodes and prefill"}
        lines = [f"{name:>22}: {self.coefficients.get(name, 0.0):.3e} {units[name]}"
                 for name in FEATURES]
        if self.row_factors:
            lines.append(f"{'small-batch factors':>22}: " + " ".join(
                f"{m}:{f:.2f}" for m, f in enumerate(self.row_factors) if m and f != 1.0)
                + " (batched tokens: x linear time)")
        v = self.validation
        if v:
            whole = f", whole {v['split_by']}" if "split_by" in v else ""
            lines.append(f"held-out: R² {v['r2']:.3f}, MAPE {v['mape'] * 100:.1f}% "
                         f"({v['n_test']} of {v['n_train'] + v['n_test']} steps{whole})")
            for name, alt in v.get("alternatives", {}).items():
                lines.append(f"  vs {name}: R² {alt['r2']:.3f}, MAPE {alt['mape'] * 100:.1f}%")
        return "\n".join(lines)


def load_fit(path: str | Path) -> StepTimeModel:
    path = Path(path)
    if not path.exists():
        raise ValueError(f"fit: {path} does not exist")
    data = json.loads(path.read_text())
    if data.pop("kind", None) != "step-time-model":
        raise ValueError(f"fit: {path} is not a step-time model file")
    return StepTimeModel(**data)


SMALL_ROWS = 16  # steps of up to this many batched tokens get a factor of their own ...
MIN_FACTOR_STEPS = 5  # ... measured on at least this many steps of exactly that size
FIT_ROUNDS = 4  # rounds of reweighting by the prediction, refitting the factors in each
HUBER_K = 1.345  # residuals beyond this many robust standard deviations weigh less (95% eff.)


def _rows(steps) -> np.ndarray:
    """Batched tokens per step: the rows of the step's matmuls."""
    import pandas as pd

    df = steps if isinstance(steps, pd.DataFrame) else pd.DataFrame(steps)
    return (df["num_prefill_tokens"] + df["num_decode_seqs"]).to_numpy(int)


def _factor_of(rows: np.ndarray, factors: list[float]) -> np.ndarray:
    f = np.ones(len(rows))
    if factors:
        small = rows < len(factors)
        f[small] = np.asarray(factors)[rows[small]]
    return f


def _row_factors(rows: np.ndarray, ratio: np.ndarray) -> list[float]:
    """Median measured/linear ratio per small row count, normalised to a mean of 1 over the
    steps they apply to; 1 where too few steps say."""
    factors = [1.0] * (SMALL_ROWS + 1)
    counts = [0] * (SMALL_ROWS + 1)
    for m in range(1, SMALL_ROWS + 1):
        sel = rows == m
        if sel.sum() >= MIN_FACTOR_STEPS:
            factors[m], counts[m] = float(np.median(ratio[sel])), int(sel.sum())
    if sum(counts):
        level = sum(f * n for f, n in zip(factors, counts, strict=True)) / sum(counts)
        factors = [f / level if n else 1.0 for f, n in zip(factors, counts, strict=True)]
    while len(factors) > 1 and factors[-1] == 1.0:
        factors.pop()
    return factors if len(factors) > 1 else []


def _fit(x: np.ndarray, y: np.ndarray, rows: np.ndarray) -> tuple[np.ndarray, list[float]]:
    """The linear coefficients and the small-batch factors, fitted in turn: the factors to the
    line's residuals, then the line to the times with each step's factor applied, weighted by
    the current prediction (the first round, with no prediction yet, by the measurement)."""
    coef = _nnls_relative(x, y, 1.0 / np.maximum(y, 1e-9))
    factors: list[float] = []
    for _ in range(FIT_ROUNDS):
        factors = _row_factors(rows, y / np.maximum(x @ coef, 1e-12))
        xf = x * _factor_of(rows, factors)[:, None]
        pred = np.maximum(xf @ coef, 1e-9)
        coef = _nnls_relative(xf, y, np.sqrt(_huber(y / pred - 1)) / pred)
    return coef, _row_factors(rows, y / np.maximum(x @ coef, 1e-12))


def _huber(r: np.ndarray) -> np.ndarray:
    """Huber weights of residuals `r`, their scale from the median absolute deviation."""
    scale = 1.4826 * np.median(np.abs(r - np.median(r))) or 1e-12
    return np.minimum(1.0, HUBER_K * scale / np.maximum(np.abs(r), 1e-12))


def _nnls_relative(x: np.ndarray, y: np.ndarray, w: np.ndarray) -> np.ndarray:
    """Non-negative least squares with rows scaled by `w` (1/time: relative error)."""
    scale = np.maximum(np.abs(x * w[:, None]).max(axis=0), 1e-30)  # conditioning
    coef, _ = nnls((x * w[:, None]) / scale, y * w)
    return coef / scale


def _scores(y: np.ndarray, pred: np.ndarray) -> dict:
    ss_res = float(((y - pred) ** 2).sum())
    ss_tot = float(((y - y.mean()) ** 2).sum()) or 1e-30
    return {"r2": 1 - ss_res / ss_tot, "mape": float(np.mean(np.abs(pred - y) / y))}


def _boosted_scores(x, y, train, test, seed: int) -> dict:
    """Held-out error of a gradient-boosted tree model on the same split: a check that the
    readable linear model is not leaving accuracy on the table (it is not kept: trees neither
    read as costs nor extrapolate past the profiled batch sizes, which the simulator needs)."""
    from sklearn.ensemble import GradientBoostingRegressor

    gbm = GradientBoostingRegressor(random_state=seed, n_estimators=200, max_depth=3)
    gbm.fit(x[train], y[train])
    return _scores(y[test], gbm.predict(x[test]))


BLOCK_STEPS = 32  # held-out unit when steps carry no case or run: up to this many in a row


def holdout_split(steps, holdout: float = 0.2, seed: int = 0):
    """(train row positions, test row positions, what was split by), holding out whole groups.

    Neighbouring steps of one profile case (or one stretch of a run) are near-identical, so a
    split by random step scores the fit on near-copies of its training rows. Groups are the
    profile's `case` (within its `run`), else the `run`, else blocks of (up to) BLOCK_STEPS
    consecutive steps; groups are drawn at random until `holdout` of the steps are held out.
    Needs at least two steps."""
    import pandas as pd

    keys = [c for c in ("run", "case") if c in steps.columns]
    if keys and steps[keys].drop_duplicates().shape[0] >= 2:
        unit = steps[keys].copy()
        if "case" in unit:  # a traffic run fitted beside a profile has no cases: its blocks
            block = np.arange(len(steps)) // BLOCK_STEPS
            unit["case"] = unit["case"].astype(object).where(
                unit["case"].notna(), pd.Series([f"block {b}" for b in block], index=unit.index))
        groups = unit.groupby(keys, sort=False).ngroup().to_numpy()
        split_by = "+".join(keys)
    else:
        block = min(BLOCK_STEPS, max(1, len(steps) // 10))  # short runs: still ten groups
        groups = np.arange(len(steps)) // block
        split_by = f"blocks of {block} steps"
    labels = np.unique(groups)
    order = np.random.default_rng(seed).permutation(labels)
    sizes = np.bincount(groups)
    held, total = [], 0
    for g in order[:-1]:  # at least one group stays for training
        if total >= holdout * len(steps):
            break
        held.append(g)
        total += sizes[g]
    is_test = np.isin(groups, held)
    return np.flatnonzero(~is_test), np.flatnonzero(is_test), split_by


def fit_step_model(steps, model_info: dict, engine_info: dict, hardware: str | None = None,
                   seed: int = 0, holdout: float = 0.2,
                   sources: list[str] | None = None) -> StepTimeModel:
    """Fit on (1 - holdout) of the steps, report R² and MAPE on the rest, then refit on all."""
    y = (steps["t_end"] - steps["t_start"]).to_numpy(float)
    keep = y > 0
    steps, y = steps[keep], y[keep]
    if len(y) < 2 * len(FEATURES):
        raise ValueError(f"steps: {len(y)} steps are too few to fit {len(FEATURES)} "
                         "coefficients; profile or run more traffic")
    x = feature_matrix(steps)
    rows = _rows(steps)
    train, test, split_by = holdout_split(steps, holdout, seed)
    n_test = len(test)
    coef, factors = _fit(x[train], y[train], rows[train])
    pred = (x[test] @ coef) * _factor_of(rows[test], factors)
    validation = {**_scores(y[test], pred), "n_train": int(len(train)),
                  "n_test": int(n_test), "split_by": split_by,
                  "alternatives": {"gradient-boosting": _boosted_scores(x, y, train, test, seed)}}
    coef, factors = _fit(x, y, rows)
    gaps = (steps["t_start"].to_numpy()[1:] - steps["t_end"].to_numpy()[:-1])
    busy = gaps[(gaps >= 0) & (gaps < 0.002)]  # back-to-back steps only, not idle waits
    return StepTimeModel(
        coefficients={f: float(c) for f, c in zip(FEATURES, coef, strict=True)},
        model=model_info, engine=engine_info, hardware=hardware,
        inter_step_gap_s=float(np.median(busy)) if len(busy) else 0.0,
        validation=validation, row_factors=factors, sources=sources or [],
        created=dt.datetime.now(dt.UTC).isoformat(timespec="seconds"))
