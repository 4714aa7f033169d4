"""The DuckDB engine's implementation: private. Other code reaches an engine through the interface in
``gristmill.compute.engine`` and the table in ``gristmill.compute.engines``, never through these modules."""
