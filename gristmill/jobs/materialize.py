"""Materializing one feature window ``[start, end)`` of one feature set version into the offline store
and/or the online store (SPEC §3 "Materialization"), on the engine the job runs on: it computes,
de-duplicates (key, ts) by the tie rule, stamps ``create_timestamp`` when absent and writes."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime
from typing import TYPE_CHECKING, Any

from gristmill.compute.planning import declared_schema

if TYPE_CHECKING:
    from gristmill.compute.statistics import WindowStatistics
    from gristmill.registry.materialization import OnlineOutcome
    from gristmill.spec.featureset_spec import FeatureSetSpec
    from gristmill.stores.offline.delta import DeltaOfflineStore, OfflineTable
    from gristmill.stores.online.base import OnlineStore, OnlineTable

__all__ = ["MaterializationResult", "declared_schema", "materialize_window"]


@dataclass(frozen=True)
class MaterializationResult:
    rows_read: int
    rows_written: int
    bytes_written: int
    cpu_seconds: float
    online: OnlineOutcome | None = None         # what reached the online store (None: not written)
    #: per store written ("offline", "online"): the statistics of the rows it got (``compute/statistics.py``);
    #: an engine that computes none leaves it empty
    statistics: Mapping[str, WindowStatistics] = field(default_factory=dict)


def materialize_window(engine: Any, spec: FeatureSetSpec, start: datetime, end: datetime, *, now: datetime,
                       label: str, offline: tuple[DeltaOfflineStore, OfflineTable] | None = None,
                       online: tuple[OnlineStore, OnlineTable] | None = None,
                       online_from_offline: bool = False,
                       spark_configuration: dict[str, Any] | None = None) -> MaterializationResult:
    """Compute ``[start, end)`` with ``engine`` and write it to the given stores.

    With ``online_from_offline`` the online rows are read from the offline store (a Complete window)
    instead of being recomputed from source. ``spark_configuration`` is the asset's Spark settings (applied
    by the Spark engine where it can; see ``gristmill.compute.spark.jobs``)."""
    result: MaterializationResult = engine.materialize(spec, start, end, now=now, label=label, offline=offline,
                                                       online=online, online_from_offline=online_from_offline,
                                                       spark_configuration=spark_configuration)
    return result
