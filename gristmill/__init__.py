"""Gristmill: a self-hostable feature store.

>>> import gristmill as gm
>>> store = gm.FeatureStore.init("my-store")                 # doctest: +SKIP

The public API is the names in ``__all__``; they are imported lazily so ``import gristmill`` stays fast
(DuckDB, pandas, SQLAlchemy and the rest load on first use).
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"

_EXPORTS: dict[str, str] = {
    "FeatureStore": "gristmill.store",
    "ApplyPlan": "gristmill.apply",
    "PlanItem": "gristmill.apply",
    "FieldChange": "gristmill.apply",
    "DataLossError": "gristmill.errors",
    "Entity": "gristmill.spec.entity",
    "FeatureSet": "gristmill.spec.featureset",
    "FeatureSetSpec": "gristmill.spec.featureset_spec",
    "FeatureRetrievalSpec": "gristmill.spec.retrieval_spec",
    "Feature": "gristmill.spec.common",
    "Column": "gristmill.spec.common",
    "Duration": "gristmill.spec.duration",
    "FeatureType": "gristmill.spec.types",
    "DuckDBEngine": "gristmill.compute.duckdb.engine",
    "FeatureFrame": "gristmill.compute.result",
    "RetrievalResult": "gristmill.compute.result",
    "GristmillError": "gristmill.errors",
    "SpecError": "gristmill.errors",
    "ConfigError": "gristmill.errors",
    "RegistryError": "gristmill.errors",
    "NotFoundError": "gristmill.errors",
    "ImmutableError": "gristmill.errors",
    "RetrievalError": "gristmill.errors",
    "SourceError": "gristmill.errors",
    "TransformationError": "gristmill.errors",
    "StoreUnavailableError": "gristmill.errors",
    "OnlineResult": "gristmill.serving",
    "OnlineStoreError": "gristmill.stores.online.encoding",
    "DataStatus": "gristmill.jobs.intervals",
    "DataInterval": "gristmill.jobs.intervals",
    "BackfillError": "gristmill.jobs.backfill",
    "JobRecord": "gristmill.registry.materialization",
    "JobStatus": "gristmill.registry.materialization",
    "MaterializationSettings": "gristmill.spec.featureset",
    "Scheduler": "gristmill.scheduler",
    "RemoteFeatureStore": "gristmill.client",
    "AccessDeniedError": "gristmill.auth.roles",
    "Model": "gristmill.spec.model",
    "FeatureSetStatistics": "gristmill.compute.statistics",
    "WindowStatistics": "gristmill.compute.statistics",
    "FeatureStatistics": "gristmill.compute.statistics",
    "HistogramBin": "gristmill.compute.statistics",
    "TopValue": "gristmill.compute.statistics",
    "Freshness": "gristmill.jobs.freshness",
    "StoreFreshness": "gristmill.jobs.freshness",
}

__all__ = sorted([*_EXPORTS, "__version__"])

if TYPE_CHECKING:
    from gristmill.apply import ApplyPlan, FieldChange, PlanItem
    from gristmill.auth.roles import AccessDeniedError
    from gristmill.client import RemoteFeatureStore
    from gristmill.compute.duckdb.engine import DuckDBEngine
    from gristmill.compute.result import FeatureFrame, RetrievalResult
    from gristmill.compute.statistics import (
        FeatureSetStatistics,
        FeatureStatistics,
        HistogramBin,
        TopValue,
        WindowStatistics,
    )
    from gristmill.errors import (
        ConfigError,
        DataLossError,
        GristmillError,
        ImmutableError,
        NotFoundError,
        RegistryError,
        RetrievalError,
        SourceError,
        SpecError,
        StoreUnavailableError,
        TransformationError,
    )
    from gristmill.jobs.backfill import BackfillError
    from gristmill.jobs.freshness import Freshness, StoreFreshness
    from gristmill.jobs.intervals import DataInterval, DataStatus
    from gristmill.registry.materialization import JobRecord, JobStatus
    from gristmill.scheduler import Scheduler
    from gristmill.serving import OnlineResult
    from gristmill.spec.common import Column, Feature
    from gristmill.spec.duration import Duration
    from gristmill.spec.entity import Entity
    from gristmill.spec.featureset import FeatureSet, MaterializationSettings
    from gristmill.spec.featureset_spec import FeatureSetSpec
    from gristmill.spec.model import Model
    from gristmill.spec.retrieval_spec import FeatureRetrievalSpec
    from gristmill.spec.types import FeatureType
    from gristmill.store import FeatureStore
    from gristmill.stores.online.encoding import OnlineStoreError


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'gristmill' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return __all__
