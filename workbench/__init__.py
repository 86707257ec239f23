"""LLM Serving Workbench: a real paged continuous-batching engine plus the tools to measure,
fit, simulate and plan LLM inference deployments."""

__version__ = "0.1.0"
