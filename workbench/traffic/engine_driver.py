"""Drive an in-process LLMEngine with a request schedule against its monotonic clock.

Open loop: a request is added once its arrival time has passed; its recorded arrival is the
scheduled time, so TTFT includes any wait while the engine was busy with a step (as a server's
clock would). Closed loop: `concurrency` clients each send their next request when the
previous reply completes, after `think_time_s`.
"""

from __future__ import annotations

import heapq
import time
from collections import deque

from workbench.engine import SamplingParams
from workbench.traffic.drive_result import INTERRUPT, WALL_LIMIT, DriveResult
from workbench.traffic.metrics import request_record
from workbench.traffic.workload import RequestSpec


def drive_engine(engine, specs: list[RequestSpec], temperature: float = 0.0,
                 ignore_eos: bool = True, concurrency: int | None = None,
                 think_time_s: float = 0.0, progress=None,
                 max_wall_s: float | None = None) -> DriveResult:
    clock = engine.clock
    res = DriveResult(t0=clock())
    t0 = res.t0
    closed = concurrency is not None
    queue = deque(specs if closed else sorted(specs, key=lambda s: s.arrival_s))
    ready: list[float] = [0.0] * concurrency if closed else []  # when each client is free
    by_id: dict[str, RequestSpec] = {}
    in_flight = 0

    def submit(spec: RequestSpec, at: float) -> None:
        nonlocal in_flight
        params = SamplingParams(max_tokens=spec.max_tokens, temperature=temperature,
                                ignore_eos=ignore_eos, seed=spec.index)
        rid = str(spec.index)
        engine.add_request(rid, spec.prompt_token_ids, params, priority=spec.priority,
                           arrival_time=t0 + at)
        by_id[rid] = spec
        in_flight += 1
        res.max_concurrency = max(res.max_concurrency, in_flight)

    try:
        while queue or engine.has_unfinished():
            now = clock() - t0
            if max_wall_s is not None and now > max_wall_s:
                res.stop(WALL_LIMIT)
                break
            if closed:
                while queue and ready and ready[0] <= now:
                    submit(queue.popleft(), heapq.heappop(ready))
            else:
                while queue and queue[0].arrival_s <= now:
                    spec = queue.popleft()
                    submit(spec, spec.arrival_s)
            if engine.has_unfinished():
                for out in engine.step():
                    if out.finished:
                        in_flight -= 1
                        res.records.append(_record(out, t0)
                                           | {"priority": by_id[out.request_id].priority})
                        if progress is not None:
                            progress.update(1)
                        if closed:
                            done_at = out.metrics.finish - t0 + think_time_s
                            heapq.heappush(ready, done_at)
            else:
                nxt = (ready[0] if ready else None) if closed else (
                    queue[0].arrival_s if queue else None)
                if nxt is not None:
                    time.sleep(max(0.0, min(nxt - (clock() - t0), 0.05)))
    except KeyboardInterrupt:
        res.stop(INTERRUPT)
    if res.interrupted:  # keep what finished; abort the rest so the engine is clean
        for rid in list(by_id):
            engine.abort(rid)
    return res


def _record(out, t0: float) -> dict:
    m = out.metrics
    rel = [t - t0 for t in out.token_times]
    rec = request_record(out.request_id, m.arrival - t0,
                         None if m.first_scheduled is None else m.first_scheduled - t0,
                         rel, m.finish - t0, m.prompt_tokens, m.finish_reason,
                         m.cached_prompt_tokens, m.preemptions, output_tokens=m.output_tokens)
    rec["token_times"] = rel
    return rec
