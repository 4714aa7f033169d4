"""The engine interface: what every compute engine (DuckDB now, Spark later) offers, and the request
objects passed to it."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any, Protocol

from gristmill.compute.planning import AggregationMode
from gristmill.errors import RetrievalError
from gristmill.spec.refs import VersionRef

__all__ = ["AggregationMode", "Engine", "FeatureSetRequest", "MaterializedData", "to_utc_naive"]

if TYPE_CHECKING:
    from gristmill.compute.result import FeatureFrame, RetrievalResult
    from gristmill.compute.statistics import WindowStatistics
    from gristmill.spec.featureset_spec import FeatureSetSpec


@dataclass(frozen=True)
class FeatureSetRequest:
    """The features wanted from one feature set version, with their output column names."""

    label: str                             # e.g. "transactions:1", or "risk_store/scores:2" for another store's
    spec: FeatureSetSpec
    outputs: tuple[tuple[str, str], ...]   # (feature name, output column name)
    position: tuple[int, ...] = ()         # index of each output in the user's request (column order)
    materialized: MaterializedData | None = None  # offline data to read where its interval is Complete
    store: str | None = None               # the feature store holding it (None: the one asked)

    @property
    def feature_set(self) -> VersionRef:
        """(name, version) of the feature set within its store."""
        return VersionRef.parse_qualified(self.label, what="label")[1]

    def __post_init__(self) -> None:
        if not self.position:
            object.__setattr__(self, "position", tuple(range(len(self.outputs))))


@dataclass(frozen=True)
class MaterializedData:
    """Where a feature set version's materialized offline rows are, and which windows are Complete."""

    store: Any                                   # DeltaOfflineStore
    table: Any                                   # OfflineTable
    complete: tuple[tuple[datetime, datetime], ...]
    strict: bool = False                         # refuse to compute from source outside Complete windows


class Engine(Protocol):
    """A compute engine: computes feature sets and answers point-in-time retrievals."""

    name: str

    def compute(self, spec: FeatureSetSpec, start: datetime | str | None, end: datetime | str | None,
                *, label: str = ...) -> FeatureFrame: ...

    def retrieve(self, requests: list[FeatureSetRequest], observations: Any, timestamp_column: str, *,
                 as_known_at: bool = False, aggregation_mode: str = "per_event") -> RetrievalResult: ...

    def check(self, spec: FeatureSetSpec, *, sample_rows: int, window: tuple[datetime, datetime] | None,
              label: str = ..., memory_limit: str | None = None, started: Any = None) -> int: ...

    def statistics(self, spec: FeatureSetSpec, start: datetime, end: datetime, *, sample_rows: int,
                   label: str = ...) -> WindowStatistics: ...


def default_engine() -> Engine:
    from gristmill.compute.duckdb.engine import DuckDBEngine

    return DuckDBEngine()


def to_utc_naive(value: datetime | str | Any, *, name: str) -> datetime:
    """Parse a time argument (datetime, ISO string, pandas Timestamp); naive values are UTC."""
    if isinstance(value, str):
        try:
            value = datetime.fromisoformat(value.strip().replace("Z", "+00:00"))
        except ValueError:
            raise RetrievalError(f"{name}: '{value}' is not an ISO date or time (e.g. 2024-01-01 or "
                                 "2024-01-01T06:00:00)") from None
    elif hasattr(value, "to_pydatetime"):
        value = value.to_pydatetime()
    elif not isinstance(value, datetime):
        if hasattr(value, "year") and hasattr(value, "month"):  # a date
            value = datetime(value.year, value.month, value.day)
        else:
            raise RetrievalError(f"{name}: expected a datetime or ISO string, got {type(value).__name__}")
    if value.tzinfo is not None:
        try:
            value = value.astimezone(UTC).replace(tzinfo=None)
        except OverflowError:
            raise RetrievalError(f"{name}: {value.isoformat()} is outside the years 1 to 9999 in UTC") from None
    return value
