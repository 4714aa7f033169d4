"""Where computed features are kept: the offline store (Delta Lake) and online stores (SQLite, Redis)."""
