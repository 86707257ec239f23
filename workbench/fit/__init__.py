"""Fitted performance models: step latency from engine telemetry, with held-out validation."""

from workbench.fit.step_model import StepTimeModel, fit_step_model, load_fit

__all__ = ["StepTimeModel", "fit_step_model", "load_fit"]
