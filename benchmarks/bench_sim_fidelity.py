"""Simulator fidelity: real engine vs simulator on scenarios NOT used for fitting.

    python benchmarks/bench_sim_fidelity.py [--model tiny] [--repeats 1] [--profile-each]
                                            [--cases "shared system prompt" ...]

1. Profile the model with the designed sweep and fit the step model (the only fitting data).
2. For each scenario below, run the real engine and the simulator with the same seed.
3. Print the relative error of p50/p90 TTFT, TPOT, E2E and of request throughput, the real and
   simulated step counts, how far the fit is off on the real run's own steps (its busy time:
   step-model error and machine drift, apart from how the simulator schedules), the median
   absolute errors, and how much faster than real time the simulator ran.

With --repeats N, steps 1-2 run N times (a fresh profile and fit each time, so the fit's own
noise counts too); every figure printed at the end is a median over the repeats: per scenario,
the median of the real and simulated values and of the relative errors; overall, the median
absolute error over scenarios and p50/p90 of those per-scenario medians. Each real run also
reports how busy the rest of the machine was while it ran (`other load`, in cores, from
/proc/stat): on a shared machine a repeat that ran beside other work measures the machine.
That figure misses a virtual machine's neighbours: on the 2-core build machine the same steps
ran up to ~20% slower from one minute to the next with no other load visible. --profile-each
profiles again right before every scenario, so the fit and the run it predicts are minutes
closer; "the fit on the real run's own steps" says how much of an error is that drift, and
the last figures re-run the simulator with the fit brought to each run's own level (they read
the run, so they are a diagnostic of the simulator's scheduling, not a forecast).
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from dataclasses import replace
from pathlib import Path

import pandas as pd

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from workbench.fit.from_runs import fit_from_runs  # noqa: E402
from workbench.fit.profile import profile_model  # noqa: E402
from workbench.sim.compare import compare_runs  # noqa: E402
from workbench.sim.simulator import simulate_scenario  # noqa: E402
from workbench.traffic import load_run, load_scenario  # noqa: E402
from workbench.traffic.run_scenario import run_scenario  # noqa: E402

# (label, scenario file, overrides): different rates, burstiness, length mixes, a shared-prefix
# one, and one whose small KV pool forces preemption.
CASES = [
    ("chat @6/s", "chat.yaml", ["arrival.rate=6"]),
    ("bursty agents (gamma 0.3)", "bursty-agents.yaml", []),
    ("shared system prompt", "shared-system-prompt.yaml", []),
    ("RAG long prompts, chunked", "rag-long-prompt.yaml", []),
    ("chat, tight KV pool (preemption)", "chat.yaml",
     ["arrival.rate=8", "target.engine.num_kv_blocks=40", "target.engine.block_size=16"]),
]
TARGETS = (("ttft", 0.10), ("tpot", 0.05), ("e2e", 0.05))
FMT = {"real": "{:.4f}".format, "sim": "{:.4f}".format, "error": "{:+.1%}".format}


class OtherLoad:
    """CPU the rest of the machine used over an interval, in cores: all CPUs' busy time
    (/proc/stat) less this process's own. None where /proc/stat is missing."""

    def __enter__(self):
        self._start = self._sample()
        return self

    def __exit__(self, *exc):
        end = self._sample()
        self.cores = None
        if self._start and end:
            (busy0, own0, t0), (busy1, own1, t1) = self._start, end
            self.cores = max(0.0, ((busy1 - busy0) - (own1 - own0)) / max(t1 - t0, 1e-9))

    @staticmethod
    def _sample():
        try:
            fields = Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]
        except OSError:
            return None
        ticks = os.sysconf("SC_CLK_TCK")
        user, nice, system, _idle, _iowait, irq, softirq = (int(v) for v in fields[:7])
        t = os.times()
        return ((user + nice + system + irq + softirq) / ticks, t.user + t.system,
                time.perf_counter())


def profile_and_fit(model: str, out: Path):
    t = time.perf_counter()
    prof = profile_model(model, {"max_num_seqs": 32}, out, progress=False)
    fit = fit_from_runs([prof])
    print(f"model {model}: profiled {len(load_run(prof).steps)} steps in "
          f"{time.perf_counter() - t:.0f} s; held-out step MAPE "
          f"{fit.validation['mape'] * 100:.1f}%, R² {fit.validation['r2']:.3f}", flush=True)
    return fit


def one_repeat(model: str, out: Path, profile_each: bool):
    """Profile, fit, and run every case once on the engine and in the simulator: (the last
    fit, one result per case). With `profile_each`, a fresh profile precedes every case."""
    fit = None
    results = []
    for label, name, overrides in CASES:
        if fit is None or profile_each:
            fit = profile_and_fit(model, out)
        sc = load_scenario(ROOT / "scenarios" / name, overrides + [f"target.model={model}"])
        with OtherLoad() as load:
            real = run_scenario(sc, out, progress=False)
        t = time.perf_counter()
        sim = simulate_scenario(sc, fit, out, log=lambda m: None)
        sim_wall = time.perf_counter() - t
        real_run, sim_run = load_run(real), load_run(sim)
        table = compare_runs(real_run, sim_run)
        steps = real_run.steps
        res = {"label": label, "table": table, "requests": len(real_run.requests),
               "seed": sc.seed, "other_load": load.cores,
               "speed": real_run.manifest["summary"]["duration_s"] / sim_wall,
               "steps_real": len(real_run.steps), "steps_sim": len(sim_run.steps),
               "preempt_real": int(real_run.requests.preemptions.sum()),
               "preempt_sim": int(sim_run.requests.preemptions.sum()),
               # The fit on this run's own steps: what the step model alone misses (machine
               # drift since the profile included), apart from how the simulator schedules.
               "replay": fit.predict(steps).sum() / (steps.t_end - steps.t_start).sum() - 1}
        # A diagnostic, not a forecast (it reads the run): the simulator with the fit brought
        # to the real run's own level, so what is left is how the simulator schedules.
        level = replace(fit, coefficients={k: v / (1 + res["replay"])
                                           for k, v in fit.coefficients.items()})
        res["table_level"] = compare_runs(real_run, load_run(
            simulate_scenario(sc, level, out, log=lambda m: None)))
        results.append(res)
        err = table.set_index("metric")["error"]
        print(f"  {label}: steps real {res['steps_real']}, sim {res['steps_sim']}; fit on "
              f"the real steps {res['replay']:+.1%}; "
              + ", ".join(f"{m} {err[m]:+.1%}" for m in ("ttft_p50", "tpot_p50", "e2e_p50"))
              + _load_note(load.cores), flush=True)
    return fit, results


def _load_note(cores) -> str:
    return "" if cores is None else f"; other load {cores:.2f} cores"


def _median(values):
    values = [v for v in values if v is not None]
    return statistics.median(values) if values else None


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", default="tiny")
    ap.add_argument("--out", default=None)
    ap.add_argument("--repeats", type=int, default=1,
                    help="profile+fit+run everything this many times; print medians")
    ap.add_argument("--cases", nargs="+", metavar="TEXT",
                    help="run only the scenarios whose label contains one of these")
    ap.add_argument("--profile-each", action="store_true",
                    help="profile and fit again before every scenario: the shared machine's "
                         "speed drifts by up to ~20%% over minutes, and a fit taken minutes "
                         "before a run measures that drift as much as the simulator")
    ap.add_argument("--big", type=int, default=100_000,
                    help="requests in the speed check (0: skip it)")
    args = ap.parse_args()
    if args.repeats < 1:
        ap.error("--repeats: must be >= 1")
    if args.cases:
        CASES[:] = [c for c in CASES if any(t in c[0] for t in args.cases)]
        if not CASES:
            ap.error("--cases: no scenario label contains " + ", ".join(args.cases))
    out = Path(args.out or tempfile.mkdtemp(prefix="fidelity-"))

    repeats = []
    for r in range(args.repeats):
        print(f"repeat {r + 1} of {args.repeats}:", flush=True)
        fit, results = one_repeat(args.model, out, args.profile_each)
        repeats.append(results)

    tables, speed = [], []
    for i, (label, _, _) in enumerate(CASES):
        runs = [rep[i] for rep in repeats]
        per_repeat = pd.concat([run["table"].assign(repeat=k) for k, run in enumerate(runs)])
        table = per_repeat.groupby("metric", sort=False)[["real", "sim", "error"]].median()
        table = table.reset_index().assign(scenario=label)
        speed += [run["speed"] for run in runs]
        first = runs[0]
        med = f"median over {len(runs)} repeats, " if len(runs) > 1 else ""
        print(f"\n{label}: {first['requests']} requests, seed {first['seed']}, {med}"
              f"steps real {_median([x['steps_real'] for x in runs]):.0f}, simulated "
              f"{_median([x['steps_sim'] for x in runs]):.0f}; real preemptions "
              f"{_median([x['preempt_real'] for x in runs]):.0f}, simulated "
              f"{_median([x['preempt_sim'] for x in runs]):.0f}; the fit on the real run's "
              f"own steps predicts {_median([x['replay'] for x in runs]):+.1%} of their busy "
              "time; simulator "
              f"{_median([x['speed'] for x in runs]):.0f}x faster than real time"
              + _load_note(_median([x['other_load'] for x in runs])))
        print(table.drop(columns="scenario").to_string(index=False, formatters=FMT))
        tables.append(table)

    allr = pd.concat(tables)
    allr["abs"] = allr["error"].abs()
    over = " of the medians over repeats" if args.repeats > 1 else ""
    print(f"\nmedian absolute error over scenarios and p50/p90{over}:")
    for metric, target in TARGETS:
        med = allr[allr.metric.str.startswith(metric)]["abs"].median()
        print(f"  {metric.upper():5s} {med:6.1%}  (target <= {target:.0%})")
    level = pd.concat([x["table_level"] for rep in repeats for x in rep])
    level["abs"] = level["error"].abs()
    print("  with the fit brought to each real run's own busy time (a diagnostic that reads "
          "the run, not a forecast: what is left is the simulator's scheduling): "
          + ", ".join(f"{m.upper()} {level[level.metric.str.startswith(m)]['abs'].median():.1%}"
                      for m, _ in TARGETS))
    if args.repeats > 1:
        per = []
        for rep in repeats:
            t = pd.concat([x["table"] for x in rep])
            t["abs"] = t["error"].abs()
            per.append(" / ".join(f"{t[t.metric.str.startswith(m)]['abs'].median():.1%}"
                                  for m, _ in TARGETS))
        print("  each repeat's TTFT / TPOT / E2E: " + "; ".join(per))
    thr = allr[allr.metric == "request_throughput"]["abs"]
    print(f"  request throughput: max {thr.max():.1%}, median {thr.median():.1%} "
          "(target within 3%)")
    print(f"  simulator speed: median {statistics.median(speed):.0f}x real time "
          f"(min {min(speed):.0f}x; target >= 200x)")

    if args.big <= 0:
        return
    sc = load_scenario(ROOT / "scenarios" / "chat.yaml",
                       [f"target.model={args.model}", f"num_requests={args.big}"])
    t = time.perf_counter()
    big = load_run(simulate_scenario(sc, fit, out, log=lambda m: None))
    wall = time.perf_counter() - t
    print(f"  {args.big:,} chat requests ({len(big.steps):,} steps, "
          f"{big.manifest['summary']['duration_s']:,.0f} s simulated) in {wall:.1f} s wall, "
          "including writing the run (target < 60 s)")


if __name__ == "__main__":
    main()
