"""OpenAI-compatible HTTP serving around the engine (the seed of `workbench serve`)."""
