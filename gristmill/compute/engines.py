"""The engines, looked up by ``engine.type`` in ``featurestore.yaml`` (as Ibis registers its backends):
each entry names the module and class lazily, so that an engine's library (pyspark) is only imported
when a store uses it."""

from __future__ import annotations

import importlib
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from gristmill.compute.engine import Engine
    from gristmill.config import EngineConfig

#: engine type -> "module:Class"; the class has ``from_config(config, *, folder, session)``
ENGINES: dict[str, str] = {
    "duckdb": "gristmill.compute.duckdb.engine:DuckDBEngine",
    "spark": "gristmill.compute.spark:SparkEngine",
}


def engine_class(kind: str) -> Any:
    """The engine class registered for ``kind``."""
    module, _, name = ENGINES[kind].partition(":")
    return getattr(importlib.import_module(module), name)


def create_engine(config: EngineConfig, *, folder: Path, session: Any = None) -> Engine:
    """The engine ``config`` describes, for the store in ``folder``; ``session`` is an existing SparkSession
    (a notebook's own), which selects the Spark engine whatever the configured type."""
    kind = "spark" if session is not None else config.type
    engine: Engine = engine_class(kind).from_config(config, folder=folder, session=session)
    return engine
