"""One replica on a virtual clock. The engine's real `Scheduler` and `BlockManager` decide every
step (chunked prefill, preemption, admission: whatever they implement); the fitted step model
says how long each step takes; no model runs. Output has the same shape as a real run.
"""

from __future__ import annotations

import gc
import heapq
import itertools
from collections import deque

from workbench.engine.block_manager import BlockManager
from workbench.engine.config import EngineConfig
from workbench.engine.sampling_params import SamplingParams
from workbench.engine.scheduler import Scheduler
from workbench.engine.sequence import Sequence
from workbench.engine.sizing import ModelFacts, size_engine
from workbench.engine.telemetry import step_record
from workbench.models.tokenizer_builder import FIRST_ORDINARY_TOKEN_ID
from workbench.traffic.drive_result import DriveResult
from workbench.traffic.metrics import request_record


class Replica:
    """One engine replica on the virtual clock: its own scheduler, pool and step telemetry."""

    def __init__(self, step_model, engine_config: dict | EngineConfig, index: int = 0):
        cfg = (engine_config if isinstance(engine_config, EngineConfig)
               else EngineConfig.from_dict(engine_config))
        self.index = index
        self.step_model = step_model
        # The same rule the engine sizes itself with; a fit's recorded pool caps the default.
        sizing = size_engine(cfg, ModelFacts.from_step_model(step_model))
        self.max_model_len = sizing.scheduler.max_model_len
        self.block_manager = BlockManager(sizing.num_kv_blocks, cfg.block_size,
                                          sizing.num_swap_blocks)
        self.scheduler = Scheduler(sizing.scheduler, self.block_manager)
        # The simulator needs no real tokens, only ones that never end a request early.
        eos = set(sizing.scheduler.eos_token_ids)
        self._token = next(t for t in itertools.count(FIRST_ORDINARY_TOKEN_ID) if t not in eos)
        self.telemetry: list = []
        self.now = 0.0  # when this replica can start its next step
        self._gap = step_model.inter_step_gap_s

    @property
    def outstanding(self) -> int:
        sched = self.scheduler
        return len(sched.running) + len(sched.waiting) + len(sched.swapped)

    @property
    def kv_load(self) -> float:
        """Share of the KV pool in use plus what waiting and swapped-out requests will need
        (what the least-kv balancer compares; a real replica publishes the same figure)."""
        bm = self.block_manager
        queued = sum(bm.blocks_for(s.num_tokens)
                     for s in (*self.scheduler.waiting, *self.scheduler.swapped))
        return (bm.num_used_blocks + queued) / bm.num_blocks

    def admit(self, seq: Sequence) -> None:
        if not self.scheduler.has_unfinished():
            self.now = max(self.now, seq.arrival)  # an idle replica wakes at the arrival
        self.scheduler.add(seq)

    def step(self) -> list[Sequence]:
        """Run one step starting at self.now; return the sequences that finished in it."""
        sched = self.scheduler
        now = self.now
        out = sched.schedule(now)
        if out.is_empty:  # cannot happen with a valid pool; never spin
            raise RuntimeError("scheduler made no progress")
        # Features come from the batch before update; the pool's state after it.
        rec = step_record(len(self.telemetry), now, now, out, sched, after_update=False)
        t_end = now + max(self.step_model.predict_record(rec), 0.0)
        finished = sched.update(out, [self._token if s.samples else None for s in out.scheduled],
                                t_end)
        rec.t_end = t_end
        rec.kv_blocks_used = self.block_manager.num_used_blocks
        self.telemetry.append(rec)
        self.now = t_end + self._gap
        return finished


class Simulator:
    """Replicas behind a load balancer (one replica by default), driven by a request schedule."""

    def __init__(self, step_model, engine_config: dict | EngineConfig, replicas: int = 1,
                 lb: str = "round-robin", seed: int = 0):
        from workbench.sim.load_balancer import make_balancer

        if replicas < 1:
            raise ValueError(f"replicas: must be >= 1, got {replicas}")
        self.replicas = [Replica(step_model, engine_config, i) for i in range(replicas)]
        self.balancer = make_balancer(lb, seed)

    @property
    def telemetry(self) -> list:
        return [r for rep in self.replicas for r in rep.telemetry]

    def run(self, specs, temperature: float = 0.0, ignore_eos: bool = True,
            concurrency: int | None = None, think_time_s: float = 0.0) -> DriveResult:
        # Millions of step records would make the cyclic GC rescan them over and over; the
        # loop creates no reference cycles, so collection can wait until it ends.
        gc_was_enabled = gc.isenabled()
        gc.disable()
        try:
            return self._run(specs, temperature, ignore_eos, concurrency, think_time_s)
        finally:
            if gc_was_enabled:
                gc.enable()

    def _run(self, specs, temperature, ignore_eos, concurrency, think_time_s) -> DriveResult:
        res = DriveResult(t0=0.0)
        replicas, balancer = self.replicas, self.balancer
        closed = concurrency is not None
        queue = deque(specs if closed else sorted(specs, key=lambda s: s.arrival_s))
        ready = [0.0] * concurrency if closed else []
        inf = float("inf")
        in_flight = 0
        while True:
            t_arrive = (ready[0] if ready else inf) if closed else (
                queue[0].arrival_s if queue else inf)
            if not queue:
                t_arrive = inf
            busy = [r for r in replicas if r.scheduler.has_unfinished()]
            nxt = min(busy, key=lambda r: r.now) if busy else None
            if nxt is None and t_arrive == inf:
                break
            # Arrivals first, as the engine driver does: it admits what has arrived only between
            # steps, so one that lands during a step joins the next, at its end plus the
            # driver's gap (`now`); an idle engine wakes at the arrival itself.
            # tests/test_sim_driver_agreement.py runs the real driver loop beside this one.
            if nxt is None or t_arrive <= nxt.now:
                spec = queue.popleft()
                at = heapq.heappop(ready) if closed else spec.arrival_s
                seq = Sequence(str(spec.index), list(spec.prompt_token_ids),
                               len(spec.prompt_token_ids),
                               SamplingParams(max_tokens=spec.max_tokens,
                                              temperature=temperature, ignore_eos=ignore_eos),
                               at, spec.priority)
                target = replicas[balancer.choose(replicas, spec)] if len(replicas) > 1 \
                    else replicas[0]
                target.admit(seq)
                res.placement[seq.request_id] = target.index
                in_flight += 1
                res.max_concurrency = max(res.max_concurrency, in_flight)
                continue
            for seq in nxt.step():
                in_flight -= 1
                res.records.append(request_record(
                    seq.request_id, seq.arrival, seq.first_scheduled, seq.token_times,
                    seq.finish, seq.num_prompt_tokens, seq.finish_reason,
                    seq.cached_prompt_tokens, seq.preemptions)
                    | {"token_times": seq.token_times, "replica": nxt.index,
                       "priority": seq.priority})
                if closed:
                    heapq.heappush(ready, seq.finish + think_time_s)
        return res


def simulate_requests(scenario, step_model, replicas: int = 1, lb: str = "round-robin"):
    """Simulate in memory: (requests DataFrame, the Simulator, number of requests planned)."""
    from workbench.traffic.arrivals import ClosedLoop
    from workbench.traffic.run_store import records_frame
    from workbench.traffic.workload import build_requests

    sim = Simulator(step_model, dict(scenario.target.engine), replicas, lb, scenario.seed)
    loop = scenario.arrival if isinstance(scenario.arrival, ClosedLoop) else None
    specs = build_requests(scenario, step_model.model["vocab_size"])
    result = sim.run(specs, scenario.temperature, scenario.ignore_eos,
                     loop.concurrency if loop else None, loop.think_time_s if loop else 0.0)
    records = sorted(result.records, key=lambda r: int(r["request_id"]))
    return records_frame(records), sim, len(specs), result.max_concurrency


def simulate_scenario(scenario, step_model, out="runs", allow_mismatch: bool = False,
                      log=print, replicas: int = 1, lb: str = "round-robin", tp: int = 1,
                      pp: int = 1):
    """Simulate a scenario with a fitted model; write a run directory like a real run.

    tp / pp > 1 scale the single-device fit analytically (an extrapolation, so labelled)."""
    import pandas as pd

    from workbench.engine.telemetry import telemetry_frame
    from workbench.traffic.metrics import summarize
    from workbench.traffic.run_store import store_run
    from workbench.traffic.scenario import EngineTarget

    target = scenario.target
    if not isinstance(target, EngineTarget):
        raise ValueError("target.kind: simulation needs an engine target (model + engine "
                         "config), got 'http'")
    check_fit_matches(step_model, target, allow_mismatch, log)
    fit = step_model
    if tp > 1 or pp > 1:
        from workbench.sim.parallelism import ParallelStepModel

        step_model = ParallelStepModel(fit, tp, pp)
        log(f"note: tensor_parallel={tp}, pipeline_parallel={pp} is an analytic extrapolation "
            "from a single-device fit")
    requests, sim, planned, max_conc = simulate_requests(scenario, step_model, replicas, lb)
    steps = pd.concat([telemetry_frame(r.telemetry).assign(replica=r.index)
                       for r in sim.replicas], ignore_index=True)
    return store_run(
        out, scenario.name + "-sim", "simulated", requests, steps, scenario=scenario,
        hardware=fit.hardware,
        target={"model": target.model, "engine_config": dict(target.engine),
                "num_kv_blocks": sim.replicas[0].block_manager.num_blocks},
        replicas=replicas, lb=lb, tensor_parallel=tp, pipeline_parallel=pp,
        extrapolated=tp > 1 or pp > 1,
        fit={"created": fit.created, "family": fit.family, "validation": fit.validation},
        max_concurrency=max_conc, interrupted=False, stopped_by=None,
        num_requests_planned=planned, summary=summarize(requests, scenario.slos))


def check_fit_matches(step_model, target, allow_mismatch: bool, log=print) -> None:
    """Refuse a fit measured on another model or precision than the scenario asks for."""
    from pathlib import Path

    from workbench.models.tiny import PRESETS

    fit_model = step_model.model
    problems = []
    asked = str(target.model)
    known = {fit_model.get("name"), fit_model.get("path")}
    if asked not in known and not (asked not in PRESETS and Path(asked).resolve() == Path(
            fit_model.get("path", "")).resolve()):
        problems.append(f"model: the fit is for {fit_model.get('name')!r}, the scenario asks "
                        f"for {asked!r}")
    for key in ("dtype", "kv_cache_dtype", "quantization"):  # what changes step cost
        want = target.engine.get(key)
        have = step_model.engine.get(key)
        if want is not None and have is not None and _spelled(key, want) != _spelled(
                key, have) and not (key == "dtype" and want == "auto"):
            problems.append(f"engine.{key}: the fit was measured with {have!r}, the scenario "
                            f"asks for {want!r}")
    if problems and not allow_mismatch:
        raise ValueError("; ".join(problems) + " (use --allow-mismatch to simulate anyway)")
    for p in problems:
        log(f"warning: {p}")


def _spelled(key: str, value) -> str:
    """One spelling per KV dtype: a roofline model names them as the planner does ("fp8",
    "bf16" for an unquantized cache), an engine fit as EngineConfig does ("fp8_e4m3", "auto")."""
    if key != "kv_cache_dtype":
        return str(value)
    from workbench.plan.memory import KV_BYTES, canonical_precision

    try:
        p = canonical_precision(str(value), key, KV_BYTES)
    except ValueError:
        return str(value)
    return "auto" if p in ("fp32", "bf16", "fp16") else p
