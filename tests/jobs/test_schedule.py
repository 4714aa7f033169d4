"""Recurrent schedules (SPEC §3): run times aligned to start_time + k·cadence, windows ending at t − delay.
Acceptance scenario 17 verbatim, then table-driven cases."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from gristmill.errors import GristmillError
from gristmill.jobs import ScheduleError, cadence, next_run, recurrence_window
from gristmill.spec import Duration
from gristmill.spec.featureset import Schedule


def t(text: str) -> datetime:
    return datetime.fromisoformat(text)


def schedule(frequency: str, interval: int = 1, start: str | None = None, time_zone: str = "UTC") -> Schedule:
    return Schedule(frequency=frequency, interval=interval, start_time=t(start) if start else None,
                    time_zone=time_zone)


# -- scenario 17 ------------------------------------------------------------------------------------
def test_scenario_17_every_3_days_then_every_2_days() -> None:
    delay = timedelta(hours=3)
    every_3_days = schedule("day", 3, "2023-04-15 10:20")
    assert recurrence_window(every_3_days, delay=delay, at=t("2023-04-15 10:20")) == (
        t("2023-04-12 07:20"), t("2023-04-15 07:20"))
    assert next_run(every_3_days, after=t("2023-04-15 10:20")) == t("2023-04-18 10:20")
    assert recurrence_window(every_3_days, delay=delay, at=t("2023-04-18 10:20")) == (
        t("2023-04-15 07:20"), t("2023-04-18 07:20"))

    # Switched to every 2 days at 04-18 17:00: the new schedule realigns from its start time.
    every_2_days = schedule("day", 2, "2023-04-15 10:20")
    following = next_run(every_2_days, after=t("2023-04-18 17:00"))
    assert following == t("2023-04-19 10:20")
    assert recurrence_window(every_2_days, delay=delay, at=following) == (
        t("2023-04-17 07:20"), t("2023-04-19 07:20"))


@pytest.mark.parametrize(("delay", "expected"), [
    (timedelta(0), ("2025-04-30 04:00", "2025-05-01 04:00")),
    (timedelta(hours=2), ("2025-04-30 02:00", "2025-05-01 02:00")),
    (timedelta(hours=4), ("2025-04-30 00:00", "2025-05-01 00:00")),
])
def test_scenario_17_daily_0400_job_with_delays(delay: timedelta, expected: tuple[str, str]) -> None:
    daily = schedule("day", 1, "2025-04-01 04:00")
    assert recurrence_window(daily, delay=delay, at=t("2025-05-01 04:00")) == (t(expected[0]), t(expected[1]))


# -- run times: (schedule, after, expected next run) -------------------------------------------------
NEXT_RUN_CASES = [
    (schedule("minute", 15, "2025-01-01 00:05"), "2025-03-03 10:07", "2025-03-03 10:20"),
    (schedule("hour", 1, "2025-01-01 00:30"), "2025-03-03 10:30", "2025-03-03 11:30"),   # strictly after
    (schedule("hour", 6, "2025-01-01 01:00"), "2025-03-03 12:59", "2025-03-03 13:00"),
    (schedule("day", 1, "2025-04-01 04:00"), "2025-04-01 03:59", "2025-04-01 04:00"),
    (schedule("day", 1, "2025-04-01 04:00"), "2024-01-01 00:00", "2025-04-01 04:00"),     # before the start
    (schedule("week", 2, "2025-01-06 09:00"), "2025-01-06 09:00", "2025-01-20 09:00"),
    (schedule("week"), "2025-05-01 12:00", "2025-05-05 00:00"),                           # no start: Mondays
    (schedule("day"), "2025-05-01 12:00", "2025-05-02 00:00"),                            # no start: midnight
    (schedule("hour"), "2025-05-01 12:00", "2025-05-01 13:00"),
    # Daily in Berlin keeps 04:00 local across the switch to summer time (UTC+1 → UTC+2 on 03-30).
    (schedule("day", 1, "2025-03-28 04:00", "Europe/Berlin"), "2025-03-29 03:00", "2025-03-30 02:00"),
    (schedule("day", 1, "2025-03-28 04:00", "Europe/Berlin"), "2025-03-30 02:00", "2025-03-31 02:00"),
    # Hourly steps in absolute time whatever the zone.
    (schedule("hour", 1, "2025-03-30 00:30", "Europe/Berlin"), "2025-03-30 01:00", "2025-03-30 01:30"),
]


@pytest.mark.parametrize(("plan", "after", "expected"), NEXT_RUN_CASES)
def test_next_run(plan: Schedule, after: str, expected: str) -> None:
    assert next_run(plan, after=t(after)) == t(expected)


# -- windows: (schedule, delay, at, expected window) -------------------------------------------------
WINDOW_CASES = [
    (schedule("hour", 1, "2025-01-01 00:00"), timedelta(minutes=20), "2025-03-03 10:00",
     ("2025-03-03 08:40", "2025-03-03 09:40")),
    # A worker starting late still gets the window of the run it belongs to.
    (schedule("hour", 1, "2025-01-01 00:00"), timedelta(0), "2025-03-03 10:04:59",
     ("2025-03-03 09:00", "2025-03-03 10:00")),
    (schedule("week", 1, "2025-01-06 00:00"), timedelta(days=1), "2025-01-13 00:00",
     ("2025-01-05 00:00", "2025-01-12 00:00")),
    # The summer-time night: a 23-hour window from the previous 04:00 local to this one.
    (schedule("day", 1, "2025-03-28 04:00", "Europe/Berlin"), timedelta(0), "2025-03-30 02:00",
     ("2025-03-29 03:00", "2025-03-30 02:00")),
    (schedule("day", 1, "2025-03-28 04:00", "Europe/Berlin"), Duration(hours=1), "2025-03-31 02:00",
     ("2025-03-30 01:00", "2025-03-31 01:00")),
]


@pytest.mark.parametrize(("plan", "delay", "at", "expected"), WINDOW_CASES)
def test_recurrence_window(plan: Schedule, delay: timedelta | Duration, at: str, expected: tuple[str, str]) -> None:
    assert recurrence_window(plan, delay=delay, at=t(at)) == (t(expected[0]), t(expected[1]))


def test_aware_times_are_utc() -> None:
    aware = Schedule(frequency="day", interval=3, start_time="2023-04-15T12:20:00+02:00")
    assert next_run(aware, after=datetime(2023, 4, 15, 10, 20, tzinfo=UTC)) == t("2023-04-18 10:20")
    assert recurrence_window(aware, delay=timedelta(hours=3), at=datetime(2023, 4, 15, 10, 20, tzinfo=UTC)) == (
        t("2023-04-12 07:20"), t("2023-04-15 07:20"))


@pytest.mark.parametrize(("plan", "expected"), [
    (schedule("minute", 5), timedelta(minutes=5)), (schedule("hour", 2), timedelta(hours=2)),
    (schedule("day", 3), timedelta(days=3)), (schedule("week", 1), timedelta(weeks=1)),
])
def test_cadence(plan: Schedule, expected: timedelta) -> None:
    assert cadence(plan) == expected


BAD = [
    (lambda: next_run(schedule("day", time_zone="Mars/Olympus"), after=t("2025-01-01")), "Mars/Olympus"),
    (lambda: recurrence_window(schedule("day"), delay=timedelta(hours=-1), at=t("2025-01-01")), "negative"),
    (lambda: recurrence_window(schedule("day", 1, "2025-04-01 04:00"), delay=timedelta(0), at=t("2025-03-01")),
     "starts at 2025-04-01 04:00"),
]


@pytest.mark.parametrize(("action", "message"), BAD)
def test_bad_input_is_a_clear_error(action: object, message: str) -> None:
    with pytest.raises(ScheduleError, match=message) as raised:
        action()  # type: ignore[operator]
    assert isinstance(raised.value, GristmillError)
