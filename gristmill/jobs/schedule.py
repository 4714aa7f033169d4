"""Recurrent materialization: when scheduled jobs run and which window each one materializes.

SPEC §3: a job at time ``t`` materializes ``[t − source_delay − cadence, t − source_delay)``, and runs
are aligned to ``start_time + k·cadence`` (cadence = ``interval`` × ``frequency``). A changed schedule
is simply a new ``Schedule``: the next run realigns to its own ``start_time`` and cadence, so
consecutive windows may overlap (or leave a gap) at the switch — exactly as the managed stores do.

Daily and weekly schedules keep their wall-clock time in the schedule's ``time_zone`` (a 04:00
Europe/Berlin job stays at 04:00 local across daylight-saving changes, and its window is then 23 or
25 hours long, from the previous run to this one); minute and hourly schedules step in absolute time.
A naive ``start_time`` is read in ``time_zone``; results are naive UTC.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta, tzinfo
from typing import Final
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from gristmill.errors import GristmillError
from gristmill.jobs.intervals import naive_utc
from gristmill.spec.duration import Duration
from gristmill.spec.featureset import Frequency, Schedule

__all__ = ["ScheduleError", "cadence", "next_run", "recurrence_window", "runs_between"]

_UNIT: Final = {
    Frequency.MINUTE: timedelta(minutes=1),
    Frequency.HOUR: timedelta(hours=1),
    Frequency.DAY: timedelta(days=1),
    Frequency.WEEK: timedelta(weeks=1),
}
# Frequencies whose runs keep their local time of day across daylight-saving changes.
_WALL_CLOCK: Final = frozenset({Frequency.DAY, Frequency.WEEK})
# Without a start_time, runs align to a Monday midnight: hourly on the hour, daily at midnight,
# weekly on Mondays (all in the schedule's time zone).
_DEFAULT_START: Final = datetime(1970, 1, 5)


class ScheduleError(GristmillError, ValueError):
    """A schedule or a schedule question that cannot be answered (unknown time zone, negative delay)."""


def cadence(schedule: Schedule) -> timedelta:
    """The nominal time between two runs: ``interval`` × one ``frequency`` unit."""
    return _UNIT[schedule.frequency] * schedule.interval


def next_run(schedule: Schedule, *, after: datetime) -> datetime:
    """The first run strictly after ``after`` (the schedule's first run if ``after`` precedes it).

    >>> from datetime import datetime as dt
    >>> every_2_days = Schedule(frequency="day", interval=2, start_time=dt(2023, 4, 15, 10, 20))
    >>> next_run(every_2_days, after=dt(2023, 4, 18, 17, 0))
    datetime.datetime(2023, 4, 19, 10, 20)
    """
    clock = _Clock(schedule)
    return clock.run(max(clock.index_at_or_before(naive_utc(after, name="after")) + 1, 0))


def runs_between(schedule: Schedule, *, after: datetime | None, upto: datetime) -> list[datetime]:
    """The runs in ``(after, upto]`` (naive UTC), oldest first; ``after=None``: only the latest run at or
    before ``upto`` (none before the schedule's first run).

    >>> from datetime import datetime as dt
    >>> hourly = Schedule(frequency="hour", start_time=dt(2024, 1, 1))
    >>> runs_between(hourly, after=dt(2024, 1, 1, 1, 30), upto=dt(2024, 1, 1, 4))
    [datetime.datetime(2024, 1, 1, 2, 0), datetime.datetime(2024, 1, 1, 3, 0), datetime.datetime(2024, 1, 1, 4, 0)]
    """
    clock = _Clock(schedule)
    last = clock.index_at_or_before(naive_utc(upto, name="upto"))
    if last < 0:
        return []
    first = last if after is None else max(clock.index_at_or_before(naive_utc(after, name="after")) + 1, 0)
    return [clock.run(index) for index in range(first, last + 1)]


def recurrence_window(schedule: Schedule, *, delay: timedelta | Duration,
                      at: datetime) -> tuple[datetime, datetime]:
    """The window ``[start, end)`` the run at ``at`` materializes: one cadence ending ``delay`` before it.

    ``delay`` is the feature set's ``source_delay``: data that arrives late is only read once it is
    there. ``at`` is taken back to the run it belongs to (the latest run at or before it), so a worker
    that starts late still materializes the aligned window.

    >>> from datetime import datetime as dt
    >>> daily = Schedule(frequency="day", start_time=dt(2025, 4, 1, 4, 0))
    >>> recurrence_window(daily, delay=timedelta(hours=2), at=dt(2025, 5, 1, 4, 0))
    (datetime.datetime(2025, 4, 30, 2, 0), datetime.datetime(2025, 5, 1, 2, 0))
    """
    lag = delay.timedelta if isinstance(delay, Duration) else delay
    if lag < timedelta(0):
        raise ScheduleError(f"delay {lag} is negative; source_delay must be zero or more")
    clock = _Clock(schedule)
    at = naive_utc(at, name="at")
    index = clock.index_at_or_before(at)
    if index < 0:
        raise ScheduleError(f"no scheduled run at or before {at}: the schedule starts at {clock.run(0)} (UTC)")
    return clock.run(index - 1) - lag, clock.run(index) - lag


class _Clock:
    """The run times of one schedule, numbered ``k = 0, 1, …`` from its start (negative before it)."""

    def __init__(self, schedule: Schedule) -> None:
        self._zone = _zone(schedule.time_zone)
        self._step = cadence(schedule)
        self._wall = schedule.frequency in _WALL_CLOCK
        start = schedule.start_time or _DEFAULT_START
        if start.tzinfo is None:
            start = start.replace(tzinfo=self._zone)
        # Wall-clock schedules count in local time; the others in UTC.
        self._origin = start.astimezone(self._zone if self._wall else UTC).replace(tzinfo=None)

    def run(self, index: int) -> datetime:
        """Run number ``index`` as naive UTC."""
        time = self._origin + index * self._step
        if self._wall:
            return time.replace(tzinfo=self._zone).astimezone(UTC).replace(tzinfo=None)
        return time

    def index_at_or_before(self, time: datetime) -> int:
        """The number of the latest run at or before ``time`` (naive UTC)."""
        local = time.replace(tzinfo=UTC).astimezone(self._zone).replace(tzinfo=None) if self._wall else time
        index = (local - self._origin) // self._step
        # The local-time estimate can be one off around daylight-saving changes; settle on exact times.
        while self.run(index) > time:
            index -= 1
        while self.run(index + 1) <= time:
            index += 1
        return index


def _zone(name: str) -> tzinfo:
    if name.strip().upper() in ("UTC", "Z", "ETC/UTC"):
        return UTC
    try:
        return ZoneInfo(name.strip())
    except (ZoneInfoNotFoundError, ValueError):
        raise ScheduleError(f"schedule time_zone {name!r} is not a known time zone; use an IANA name "
                            "such as 'UTC', 'Europe/Berlin' or 'America/New_York'") from None
