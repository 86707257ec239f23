"""Discrete-event simulation: the engine's own scheduler and block manager on a virtual clock."""

from workbench.sim.simulator import Simulator, simulate_scenario

__all__ = ["Simulator", "simulate_scenario"]
