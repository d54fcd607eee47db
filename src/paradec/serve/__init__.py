"""The OpenAI-compatible server: ``create_app(model, ServeConfig(...))``, run by ``paradec serve``."""
