"""OpenAI-compatible HTTP serving around the engine (the seed of `workbench serve`).

Kept free of imports: clients (the HTTP load driver) read the constant below without pulling
in fastapi or torch."""

# `owned_by` at GET /v1/models of this project's servers (the real one and the stub); the HTTP
# driver recognises a server that takes token-id prompts by it.
WORKBENCH_OWNER = "workbench"
