"""What a drive loop returns: the in-process engine driver, the HTTP driver and the simulator
all fill this one shape, so the run store and the metrics read them alike."""

from __future__ import annotations

from dataclasses import dataclass, field

INTERRUPT = "interrupt"  # Ctrl-C: the CLI exits 130, keeping what completed
WALL_LIMIT = "wall_limit"  # the run's own time bound


@dataclass(slots=True)
class DriveResult:
    records: list[dict] = field(default_factory=list)  # per-request, times from run start
    t0: float = 0.0  # run start on the driver's clock
    interrupted: bool = False  # stopped before every request completed
    stopped_by: str | None = None  # INTERRUPT | WALL_LIMIT when interrupted
    max_concurrency: int = 0  # most requests in flight at once
    placement: dict = field(default_factory=dict)  # request id -> replica (simulated clusters)
    warnings: list[str] = field(default_factory=list)  # what the driver found wrong, one line each

    def stop(self, reason: str) -> None:
        self.interrupted = True
        self.stopped_by = self.stopped_by or reason
