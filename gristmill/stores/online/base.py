"""The online store interface: the latest feature values per entity key, for low-latency lookups.

Every implementation (SQLite, Redis, in-memory) is held to one conformance suite
(``tests/stores/test_online_conformance.py``). Semantics (SPEC §3 "Materialization"):

- per key keep the newest row: a write never replaces a newer event time; on equal event time the
  greater ``create_timestamp`` wins (equal both: the later write wins);
- a row expires at ``ts + ttl`` (``ttl`` = the feature set's ``temporal_join_lookback``; ``None`` = never);
  rows already expired at ``now`` are not written; reads at ``now`` return nulls for expired rows;
- reads return one row per requested key, in request order; unknown or expired keys give nulls;
- every type round-trips exactly (64-bit integers included); null feature values stay null.

``now`` is passed explicitly (an injectable clock), so expiry is testable with fixed times.

``read_stored`` returns the stored row of each key whatever ``now`` is, with its event time and expiry:
lookups "as of" a given time and the explanation of missing values are built on it. SQLite and the
in-memory store keep expired rows until a newer one replaces them (``keeps_expired_rows``); Redis deletes
a row when it expires, so it cannot show a row that expired before the current time.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import TYPE_CHECKING, Any, Protocol

from gristmill.spec.types import FeatureType

EVENT_TIMESTAMP = "event_timestamp"
CREATE_TIMESTAMP = "create_timestamp"
NEVER = 2**63 - 1          # the expiry (µs since the epoch) of rows whose table has no ttl

if TYPE_CHECKING:
    import pyarrow as pa


@dataclass(frozen=True)
class OnlineTable:
    """Identifies one feature set version's online data and describes its columns."""

    store: str                                   # feature store name
    feature_set: str
    version: str
    materialization_version: int                 # changes when online materialization is re-enabled
    keys: tuple[tuple[str, FeatureType], ...]    # index columns (name, type), in order
    features: tuple[tuple[str, FeatureType], ...]
    ttl: timedelta | None                        # temporal_join_lookback; None = never expires

    @property
    def key_names(self) -> list[str]:
        return [name for name, _ in self.keys]

    @property
    def feature_names(self) -> list[str]:
        return [name for name, _ in self.features]


@dataclass(frozen=True)
class StoredRow:
    """The row an online store holds for one key, whether or not it has expired."""

    event_micros: int                            # event time, µs since the Unix epoch (UTC)
    expires_micros: int                          # event time + ttl, µs since the epoch (``NEVER`` without ttl)
    values: dict[str, Any]

    @property
    def event_time(self) -> datetime:
        """The event time (naive UTC)."""
        return _naive(self.event_micros)

    @property
    def expires_at(self) -> datetime | None:
        """When the row expires (naive UTC); None when it never does."""
        return None if self.expires_micros >= NEVER else _naive(self.expires_micros)


def _naive(micros: int) -> datetime:
    return datetime(1970, 1, 1) + timedelta(microseconds=micros)


class OnlineStore(Protocol):
    """Latest feature values per entity key."""

    #: whether expired rows stay readable through ``read_stored`` until a newer row replaces them
    keeps_expired_rows: bool
    #: whether Spark executors may write to it in parallel (a network store); else the driver writes
    executor_writes: bool

    def write(self, table: OnlineTable, rows: pa.Table, *, now: datetime) -> int:
        """Upsert ``rows`` (key columns, ``event_timestamp`` and ``create_timestamp`` as timestamp[us] UTC,
        feature columns) under the rules above; returns how many rows were written (not skipped as
        expired or older)."""
        ...

    def read(self, table: OnlineTable, keys: Sequence[tuple[Any, ...]], *, now: datetime
             ) -> list[dict[str, Any] | None]:
        """For each key tuple (in order), the feature values as a dict, or None (unknown/expired)."""
        ...

    def read_stored(self, table: OnlineTable, keys: Sequence[tuple[Any, ...]]) -> list[StoredRow | None]:
        """For each key tuple (in order), the stored row with its event time and expiry, expired or not;
        None when the store holds no row for it (never written, a null key part, or deleted on expiry)."""
        ...

    def drop(self, table: OnlineTable) -> None:
        """Delete every row of ``table`` (all its keys)."""
        ...

    def count(self, table: OnlineTable) -> int:
        """How many keys ``table`` holds (to say what dropping it would delete)."""
        ...

    def close(self) -> None: ...
