"""OpenAI-compatible HTTP serving around the engine (the seed of `workbench serve`).

Kept free of imports: clients (the HTTP load driver) and the CLI read the constants below
without pulling in fastapi or torch."""

# `owned_by` at GET /v1/models of this project's servers (the real one and the stub); the HTTP
# driver recognises a server that takes token-id prompts by it.
WORKBENCH_OWNER = "workbench"

# Seconds the requests in flight get after SIGTERM before they are aborted (server/shutdown.py;
# `workbench serve --shutdown-timeout`). Here so the CLI shows the default without fastapi.
GRACEFUL_SHUTDOWN_S = 5.0
