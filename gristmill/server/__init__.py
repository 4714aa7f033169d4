"""The REST server: ``create_app(store)`` (FastAPI), run by ``gristmill serve``."""
