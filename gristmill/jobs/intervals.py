"""Data intervals: per feature set version and store, which parts of event time hold what data.

A ``Timeline`` partitions event time into half-open intervals ``[start, end)`` with a ``DataStatus``.
Only ``Pending``, ``Incomplete`` and ``Complete`` intervals are stored; every gap is implicitly ``None``
(nothing materialized), so an empty timeline means "never materialized" and needs no rows.
Times are naive UTC datetimes (aware ones are converted), like every event time in Gristmill.

>>> from datetime import datetime as dt
>>> timeline = Timeline().set(dt(2025, 4, 1), dt(2025, 4, 3), "Complete").set(dt(2025, 4, 2), dt(2025, 4, 4), "Pending")
>>> [(i.start.day, i.end.day, str(i.status)) for i in timeline]
[(1, 2, 'Complete'), (2, 4, 'Pending')]
"""

from __future__ import annotations

import bisect
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from gristmill.errors import GristmillError
from gristmill.spec.common import LenientStrEnum

__all__ = ["DataInterval", "DataStatus", "IntervalError", "Timeline"]


class IntervalError(GristmillError, ValueError):
    """An interval that is empty or reversed, or intervals that overlap."""


class DataStatus(LenientStrEnum):
    """What a store holds for an interval of event time (SPEC §1 "data interval").

    Parsing is case-insensitive (``DataStatus("complete")``), as for every enum value users type.
    """

    NONE = "None"
    PENDING = "Pending"
    INCOMPLETE = "Incomplete"
    COMPLETE = "Complete"


def naive_utc(value: datetime, *, name: str = "time") -> datetime:
    """``value`` as a naive UTC datetime: aware values are converted, naive ones are taken as UTC."""
    if not isinstance(value, datetime):
        raise IntervalError(f"{name} must be a datetime, got {type(value).__name__}")
    return value.astimezone(UTC).replace(tzinfo=None) if value.tzinfo is not None else value


@dataclass(frozen=True)
class DataInterval:
    """The half-open interval ``[start, end)`` of event time holding data of ``status``."""

    start: datetime
    end: datetime
    status: DataStatus

    def __post_init__(self) -> None:
        # Normalise here so every interval compares and sorts the same way, whatever the caller passed.
        object.__setattr__(self, "start", naive_utc(self.start, name="start"))
        object.__setattr__(self, "end", naive_utc(self.end, name="end"))
        object.__setattr__(self, "status", _status(self.status))
        if self.start >= self.end:
            raise IntervalError(f"interval [{self.start}, {self.end}) is empty: start must be before end")


class Timeline:
    """Sorted, non-overlapping data intervals; gaps are ``None``. Immutable: updates return a new one.

    Construction normalises: intervals are sorted, ``None`` intervals dropped and touching intervals of
    equal status merged, so two timelines with the same statuses everywhere compare equal.
    Overlapping input intervals are an error (use ``set`` to overwrite).
    """

    __slots__ = ("_intervals", "_starts")

    def __init__(self, intervals: Iterable[DataInterval] = ()) -> None:
        ordered = sorted((i for i in intervals if i.status is not DataStatus.NONE), key=lambda i: i.start)
        merged: list[DataInterval] = []
        for interval in ordered:
            if merged and interval.start < merged[-1].end:
                raise IntervalError(f"intervals overlap: [{merged[-1].start}, {merged[-1].end}) and "
                                    f"[{interval.start}, {interval.end})")
            if merged and merged[-1].end == interval.start and merged[-1].status is interval.status:
                merged[-1] = DataInterval(merged[-1].start, interval.end, interval.status)
            else:
                merged.append(interval)
        self._intervals: tuple[DataInterval, ...] = tuple(merged)
        self._starts: tuple[datetime, ...] = tuple(i.start for i in merged)

    # -- updates ------------------------------------------------------------------------------------
    def set(self, start: datetime, end: datetime, status: DataStatus | str) -> Timeline:
        """A copy with ``[start, end)`` set to ``status``, splitting the intervals it cuts.

        Setting ``None`` clears the window (e.g. when stored data is dropped).
        """
        window = DataInterval(start, end, status)
        kept: list[DataInterval] = []
        for interval in self._intervals:
            if interval.end <= window.start or interval.start >= window.end:
                kept.append(interval)
                continue
            if interval.start < window.start:
                kept.append(DataInterval(interval.start, window.start, interval.status))
            if interval.end > window.end:
                kept.append(DataInterval(window.end, interval.end, interval.status))
        kept.append(window)
        return Timeline(kept)

    # -- queries ------------------------------------------------------------------------------------
    def intervals(self, start: datetime | None = None, end: datetime | None = None, *,
                  include_none: bool = True) -> list[DataInterval]:
        """The intervals overlapping ``[start, end)``, clipped to it, with gaps as ``None`` intervals.

        A missing bound defaults to the first stored start / last stored end, so with no bounds the
        answer spans the stored intervals (leading and trailing ``None`` are not invented).
        """
        low = naive_utc(start, name="start") if start is not None else self.start
        high = naive_utc(end, name="end") if end is not None else self.end
        if start is not None and end is not None and low >= high:
            raise IntervalError(f"window [{low}, {high}) is empty: start must be before end")
        if low is None or high is None or low >= high:
            return []
        result: list[DataInterval] = []
        cursor = low
        for interval in self._overlapping(low, high):
            clipped_start, clipped_end = max(interval.start, low), min(interval.end, high)
            if include_none and cursor < clipped_start:
                result.append(DataInterval(cursor, clipped_start, DataStatus.NONE))
            result.append(DataInterval(clipped_start, clipped_end, interval.status))
            cursor = clipped_end
        if include_none and cursor < high:
            result.append(DataInterval(cursor, high, DataStatus.NONE))
        return result

    def status_at(self, time: datetime) -> DataStatus:
        """The status of the instant ``time`` (``None`` outside every stored interval)."""
        time = naive_utc(time)
        index = bisect.bisect_right(self._starts, time) - 1
        if index >= 0 and time < self._intervals[index].end:
            return self._intervals[index].status
        return DataStatus.NONE

    def covered(self, start: datetime, end: datetime, status: DataStatus | str) -> bool:
        """Whether every instant of ``[start, end)`` has ``status`` (e.g. read materialized data there)."""
        wanted = _status(status)
        return all(i.status is wanted for i in self.intervals(start, end))

    @property
    def start(self) -> datetime | None:
        """Start of the first stored interval (``None`` when nothing is stored)."""
        return self._intervals[0].start if self._intervals else None

    @property
    def end(self) -> datetime | None:
        """End of the last stored interval (``None`` when nothing is stored)."""
        return self._intervals[-1].end if self._intervals else None

    def _overlapping(self, low: datetime, high: datetime) -> Iterator[DataInterval]:
        first = max(bisect.bisect_right(self._starts, low) - 1, 0)
        for interval in self._intervals[first:]:
            if interval.start >= high:
                break
            if interval.end > low:
                yield interval

    # -- value-object protocol ----------------------------------------------------------------------
    def __iter__(self) -> Iterator[DataInterval]:
        """The stored (non-``None``) intervals, in order."""
        return iter(self._intervals)

    def __len__(self) -> int:
        return len(self._intervals)

    def __bool__(self) -> bool:
        return bool(self._intervals)

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Timeline) and self._intervals == other._intervals

    def __hash__(self) -> int:
        return hash(self._intervals)

    def __repr__(self) -> str:
        inner = ", ".join(f"[{i.start.isoformat(' ')}, {i.end.isoformat(' ')}) {i.status}" for i in self)
        return f"Timeline({inner})"


def _status(value: Any) -> DataStatus:
    try:
        return DataStatus(value)
    except ValueError:
        valid = ", ".join(s.value for s in DataStatus)
        raise IntervalError(f"data status {value!r} is not one of {valid}") from None
