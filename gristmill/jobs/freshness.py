"""Freshness: how current a feature set version's materialized data is, per store, against what its
schedule promises.

A store's state is one of (``FRESHNESS_STATES``):

* ``"disabled"`` — the store does not materialize this version;
* ``"never materialized"`` — enabled, but no job has completed into it (since it was last enabled);
* ``"not scheduled"`` — materialized, but without a schedule nothing promises newer data;
* ``"fresh"`` / ``"stale"`` — scheduled: stale when the newest materialized event time is older than
  ``now − (cadence + source_delay + grace)``. A run at ``t`` materializes up to ``t − source_delay``, so
  just before the next run (``t + cadence``) the newest data may be ``cadence + source_delay`` old; ``grace``
  (default: half a cadence) absorbs a job's run time and sparse data.

>>> store.freshness("transactions", 1).state            # doctest: +SKIP
'fresh'
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any, Final

__all__ = ["FRESHNESS_STATES", "Freshness", "StoreFreshness", "store_state"]

FRESHNESS_STATES: Final = ("stale", "never materialized", "fresh", "not scheduled", "disabled")


@dataclass(frozen=True)
class StoreFreshness:
    """One store (``offline`` or ``online``) of a feature set version.

    ``newest_event_time``: the newest event time materialized (naive UTC); ``materialized_until``: the end
    of its last Complete window; ``last_job_id``/``last_job_finished_at``: its last successful job;
    ``next_run``: the schedule's next run (None: not scheduled or disabled); ``stale_after``: when the
    newest data turns stale if no job brings newer data (None: never, unscheduled)."""

    store: str
    state: str
    newest_event_time: datetime | None = None
    materialized_until: datetime | None = None
    last_job_id: str | None = None
    last_job_finished_at: datetime | None = None
    next_run: datetime | None = None
    stale_after: datetime | None = None

    def to_dict(self) -> dict[str, Any]:
        return {key: value.isoformat() if isinstance(value, datetime) else value
                for key, value in self.__dict__.items()}


@dataclass(frozen=True)
class Freshness:
    """The freshness of a feature set version: per store, and ``state``, the worst state of its enabled
    stores (``"disabled"`` when none is enabled). ``checked_at``: the store's clock when it was asked."""

    feature_set: str
    version: str
    checked_at: datetime
    stores: tuple[StoreFreshness, ...]

    @property
    def ref(self) -> str:
        return f"{self.feature_set}:{self.version}"

    @property
    def state(self) -> str:
        states = [s.state for s in self.stores if s.state != "disabled"]
        return min(states, key=FRESHNESS_STATES.index) if states else "disabled"

    def store(self, kind: str) -> StoreFreshness:
        """One store's freshness (``KeyError`` naming the stores when there is none)."""
        for found in self.stores:
            if found.store == kind:
                return found
        raise KeyError(f"no store {kind!r}; the stores are offline and online")

    def to_dict(self) -> dict[str, Any]:
        return {"feature_set": self.feature_set, "version": self.version, "state": self.state,
                "checked_at": self.checked_at.isoformat(), "stores": [s.to_dict() for s in self.stores]}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Freshness:
        def time(value: Any) -> datetime | None:
            return datetime.fromisoformat(value) if isinstance(value, str) else value

        stores = tuple(StoreFreshness(**{k: time(v) if k in _TIMES else v for k, v in s.items()})
                       for s in data.get("stores", []))
        return cls(feature_set=data["feature_set"], version=str(data["version"]),
                   checked_at=time(data["checked_at"]) or datetime.min, stores=stores)


_TIMES: Final = frozenset({"newest_event_time", "materialized_until", "last_job_finished_at", "next_run",
                           "stale_after"})


def store_state(*, enabled: bool, newest_event_time: datetime | None, materialized: bool,
                now: datetime, allowed_age: timedelta | None) -> tuple[str, datetime | None]:
    """The state of one store and when it turns stale (``allowed_age``: cadence + source delay + grace;
    None: not scheduled)."""
    if not enabled:
        return "disabled", None
    if not materialized:
        return "never materialized", None
    if allowed_age is None:
        return "not scheduled", None
    if newest_event_time is None:        # jobs completed, but none wrote a row
        return "stale", None
    stale_after = newest_event_time + allowed_age
    return ("stale" if now > stale_after else "fresh"), stale_after
