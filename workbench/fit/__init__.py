"""Fitted performance models: step latency from engine telemetry, with held-out validation.

The step model (scipy, pandas) loads on first use: the engine imports this package's memory
model at start, and should not pay for the fitting stack.
"""

__all__ = ["StepTimeModel", "fit_step_model", "load_fit"]


def __getattr__(name: str):
    if name in __all__:
        from workbench.fit import step_model

        return getattr(step_model, name)
    raise AttributeError(f"module 'workbench.fit' has no attribute {name!r}")
