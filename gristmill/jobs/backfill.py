"""Backfill planning: which windows to materialize, from a store's data intervals (SPEC §3 "Backfill").

Pure logic: ``plan_backfill`` reads a ``Timeline`` and returns job windows; creating the jobs and
marking them ``Pending`` is the caller's (``MaterializationRecords.create_job``).
"""

from __future__ import annotations

from collections.abc import Iterable
from datetime import datetime

from gristmill.errors import GristmillError
from gristmill.jobs.intervals import DataStatus, Timeline, naive_utc

__all__ = ["BackfillError", "plan_backfill"]

# Statuses a backfill may select; Pending is never one of them (a job is already writing there).
_SELECTABLE = (DataStatus.NONE, DataStatus.INCOMPLETE, DataStatus.COMPLETE)


class BackfillError(GristmillError, ValueError):
    """A backfill request that cannot be planned as asked (missing or reversed window, bad status)."""


def plan_backfill(
    timeline: Timeline,
    *,
    start: datetime | None = None,
    end: datetime | None = None,
    data_status: Iterable[DataStatus | str] | None = None,
) -> list[tuple[datetime, datetime]]:
    """One job window per data interval of a wanted status, clipped to ``[start, end)``.

    - ``data_status``: the statuses to (re)materialize, case-insensitive; ``None`` or empty means all.
      ``Pending`` intervals are always skipped, even when asked for: a job is already writing them.
    - With a window (either bound given; the other defaults to the stored extent), the gaps inside it
      are ``None`` intervals and are candidates; without one, only stored intervals are.
    - A first backfill (nothing stored yet) needs both ``start`` and ``end``.

    Windows are naive UTC and in time order. Re-running a ``Complete`` window is allowed: the job
    recomputes and replaces it.

    >>> from datetime import datetime as dt
    >>> timeline = Timeline().set(dt(2025, 4, 2), dt(2025, 4, 3), "Incomplete")
    >>> plan_backfill(timeline, start=dt(2025, 4, 1), end=dt(2025, 4, 4), data_status=["incomplete"])
    [(datetime.datetime(2025, 4, 2, 0, 0), datetime.datetime(2025, 4, 3, 0, 0))]
    """
    wanted = _wanted_statuses(data_status)
    low = naive_utc(start, name="start") if start is not None else None
    high = naive_utc(end, name="end") if end is not None else None
    if not timeline and (low is None or high is None):
        raise BackfillError("nothing has been materialized yet, so a first backfill needs a window: "
                            "pass both --start and --end (start= and end= in Python)")
    if low is not None and high is not None and low >= high:
        raise BackfillError(f"backfill window [{low}, {high}) is empty: --start must be before --end")
    windowed = low is not None or high is not None
    low = low if low is not None else timeline.start
    high = high if high is not None else timeline.end
    if low is None or high is None or low >= high:
        # Only one bound was given and it lies beyond the stored intervals.
        raise BackfillError(f"backfill window [{low or 'first interval'}, {high or 'last interval'}) is "
                            "empty: the given bound lies outside the materialized intervals; "
                            "pass both --start and --end")
    return [(interval.start, interval.end)
            for interval in timeline.intervals(low, high, include_none=windowed)
            if interval.status in wanted]


def _wanted_statuses(data_status: Iterable[DataStatus | str] | None) -> frozenset[DataStatus]:
    if isinstance(data_status, str | DataStatus):
        data_status = [data_status]  # one status passed bare: do not iterate over its letters
    given = list(data_status or [])
    if not given:
        return frozenset(_SELECTABLE)
    wanted: set[DataStatus] = set()
    for value in given:
        try:
            wanted.add(DataStatus(value))
        except ValueError:
            valid = ", ".join(s.value for s in DataStatus)
            raise BackfillError(f"data status {value!r} is not one of {valid}") from None
    return frozenset(wanted & set(_SELECTABLE))
