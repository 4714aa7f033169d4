"""Online stores behind one small interface (``OnlineStore``): SQLite (embedded default) and Redis."""

from gristmill.stores.online.base import OnlineStore, OnlineTable

__all__ = ["OnlineStore", "OnlineTable"]
