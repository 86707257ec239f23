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


@pytest.fixture(scope="module")
def literature_parameters():
    """Step-model parameters pinned to the literature figures (MBU 0.6, MFU 0.5, no fixed or
    per-sequence cost) for a module of tests that check arithmetic, so a refit of the
    published dataset (workbench/plan/published/step_params.yaml) does not move their worked
    numbers. Module-scoped: module-scoped fixtures computed under it keep its parameters."""
    from workbench.plan import step_params
    from workbench.plan.step_cost import LITERATURE_EFFICIENCY

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(step_params, "fitted_sets", lambda: {"generic": LITERATURE_EFFICIENCY})
        yield LITERATURE_EFFICIENCY


@pytest.fixture(scope="module")
def client(server):
    """The official openai client on the module's `server` fixture (a base URL)."""
    import openai

    with openai.OpenAI(base_url=f"{server}/v1", api_key="x", max_retries=0, timeout=60) as c:
        yield c


@pytest.fixture(scope="module")
def model(client) -> str:
    """The one model the module's server lists."""
    [served] = client.models.list().data
    return served.id
