"""Traffic: scenarios, arrival processes, length distributions, drivers, metrics, runs.

Names are loaded on first use, so that `workbench.traffic.metrics` (imported by the engine's
outputs and the simulator) brings in neither the run store nor torch.
"""

from __future__ import annotations

import importlib

_EXPORTS = {"Run": "run_store", "load_run": "run_store", "Scenario": "scenario",
            "ScenarioError": "scenario", "load_scenario": "scenario"}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str):
    if name in _EXPORTS:
        return getattr(importlib.import_module(f"workbench.traffic.{_EXPORTS[name]}"), name)
    raise AttributeError(f"module 'workbench.traffic' has no attribute {name!r}")
