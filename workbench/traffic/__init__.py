"""Traffic: scenarios, arrival processes, length distributions, drivers, metrics, runs."""

from workbench.traffic.runs import Run, load_run
from workbench.traffic.scenario import Scenario, ScenarioError, load_scenario

__all__ = ["Run", "Scenario", "ScenarioError", "load_run", "load_scenario"]
