import os
from pathlib import Path

import pytest

# Built checkpoints are cached inside the checkout unless the user points elsewhere.
os.environ.setdefault("WORKBENCH_CACHE", str(Path(__file__).resolve().parent.parent / ".cache"))


@pytest.fixture(scope="session")
def tiny_path():
    from workbench.models.tiny import resolve_model

    return resolve_model("tiny")


@pytest.fixture(scope="session")
def tiny_engine_factory(tiny_path):
    """Engines over the tiny model share one loaded model; each gets its own KV pool."""
    from workbench.engine import EngineConfig, LLMEngine
    from workbench.models.loader import load_model, load_tokenizer

    net, cfg, path = load_model(tiny_path, "float32", "cpu")
    tok = load_tokenizer(path)

    def make(**config):
        config.setdefault("device", "cpu")
        return LLMEngine(net, cfg, tok, EngineConfig(**config), path)

    return make


@pytest.fixture(scope="session")
def shared_traces():
    """The production traces the repository carries (scenarios/traces, CC-BY 4.0)."""
    path = Path(__file__).resolve().parent.parent / "scenarios" / "traces"
    assert (path / "azure-llm-2023-conv.csv").is_file(), f"traces missing from {path}"
    return path
