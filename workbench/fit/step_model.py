"""A step-latency model fitted with non-negative least squares on relative error.

Coefficients stay non-negative so each reads as a cost (seconds per unit of a feature); rows
are weighted by 1/time so the fit minimises relative error, which is what percentiles of TTFT
and TPOT are sensitive to. Validation is on held-out steps: whole profile cases or runs (see
`holdout_split`), never neighbours of training steps.
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
    family: str = "linear-nnls"
    sources: list[str] = field(default_factory=list)
    created: str = ""

    def __post_init__(self) -> None:
        self._coef = [self.coefficients.get(f, 0.0) for f in FEATURES]

    def predict_record(self, r) -> float:
        """One step's seconds; written out by hand because the simulator calls it per step."""
        c = self._coef
        return (c[0] + c[1] * r.num_prefill_tokens + c[2] * r.prefill_attention
                + c[3] * r.num_prefill_seqs + c[4] * r.num_decode_seqs
                + c[5] * r.decode_context + c[6] * r.num_decode_seqs * r.decode_max_context)

    def predict(self, steps) -> np.ndarray:
        return feature_matrix(steps) @ np.asarray(self._coef)

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
                 "decode_context": "s/KV token", "decode_padded_context": "s/padded KV token"}
        lines = [f"{name:>22}: {self.coefficients[name]:.3e} {units[name]}" for name in FEATURES]
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


def _nnls_relative(x: np.ndarray, y: np.ndarray) -> np.ndarray:
    w = 1.0 / np.maximum(y, 1e-9)
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
    keys = [c for c in ("run", "case") if c in steps.columns]
    if keys and steps[keys].drop_duplicates().shape[0] >= 2:
        groups = steps.groupby(keys, sort=False).ngroup().to_numpy()
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
    train, test, split_by = holdout_split(steps, holdout, seed)
    n_test = len(test)
    coef = _nnls_relative(x[train], y[train])
    validation = {**_scores(y[test], x[test] @ coef), "n_train": int(len(train)),
                  "n_test": int(n_test), "split_by": split_by,
                  "alternatives": {"gradient-boosting": _boosted_scores(x, y, train, test, seed)}}
    coef = _nnls_relative(x, y)
    gaps = (steps["t_start"].to_numpy()[1:] - steps["t_end"].to_numpy()[:-1])
    busy = gaps[(gaps >= 0) & (gaps < 0.002)]  # back-to-back steps only, not idle waits
    return StepTimeModel(
        coefficients={f: float(c) for f, c in zip(FEATURES, coef, strict=True)},
        model=model_info, engine=engine_info, hardware=hardware,
        inter_step_gap_s=float(np.median(busy)) if len(busy) else 0.0,
        validation=validation, sources=sources or [],
        created=dt.datetime.now(dt.UTC).isoformat(timespec="seconds"))
