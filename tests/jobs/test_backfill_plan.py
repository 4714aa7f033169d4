"""Backfill planning (SPEC §3 "Backfill"), with acceptance scenario 15 verbatim."""

from __future__ import annotations

from datetime import datetime

import pytest

from gristmill.errors import GristmillError
from gristmill.jobs import BackfillError, DataInterval, DataStatus, Timeline, plan_backfill

N, P, INC, C = DataStatus.NONE, DataStatus.PENDING, DataStatus.INCOMPLETE, DataStatus.COMPLETE


def t(text: str) -> datetime:
    """A naive UTC time in 2025 from ``"04-02 12:00"``."""
    return datetime.fromisoformat(f"2025-{text}")


def window(start: str, end: str) -> tuple[datetime, datetime]:
    return t(start), t(end)


# Scenario 15: offline intervals of 2025 (the None ones are gaps of the stored timeline).
SCENARIO_15 = Timeline([
    DataInterval(t("04-01 04:00"), t("04-02 04:00"), N),
    DataInterval(t("04-02 04:00"), t("04-03 04:00"), INC),
    DataInterval(t("04-03 04:00"), t("04-04 04:00"), N),
    DataInterval(t("04-04 04:00"), t("04-05 04:00"), C),
    DataInterval(t("04-05 04:00"), t("04-06 04:00"), N),
])


def test_scenario_15_windowed_backfill_by_status() -> None:
    jobs = plan_backfill(SCENARIO_15, start=t("04-02 12:00"), end=t("04-04 12:00"),
                         data_status=["Complete", "Incomplete"])
    assert jobs == [window("04-02 12:00", "04-03 04:00"), window("04-04 04:00", "04-04 12:00")]

    # The jobs run (Pending) and succeed (Complete).
    after = SCENARIO_15
    for start, end in jobs:
        after = after.set(start, end, P)
    for start, end in jobs:
        after = after.set(start, end, C)
    assert [(i.start, i.end, i.status) for i in after.intervals(t("04-01 04:00"), t("04-06 04:00"))] == [
        (t("04-01 04:00"), t("04-02 04:00"), N),
        (t("04-02 04:00"), t("04-02 12:00"), INC),
        (t("04-02 12:00"), t("04-03 04:00"), C),
        (t("04-03 04:00"), t("04-04 04:00"), N),
        (t("04-04 04:00"), t("04-05 04:00"), C),
        (t("04-05 04:00"), t("04-06 04:00"), N),
    ]


def test_scenario_15_without_a_window() -> None:
    jobs = plan_backfill(SCENARIO_15, data_status=[C, INC])
    assert jobs == [window("04-02 04:00", "04-03 04:00"), window("04-04 04:00", "04-05 04:00")]


def test_scenario_15_first_backfill_needs_both_ends() -> None:
    for bounds in ({}, {"start": t("04-01 00:00")}, {"end": t("04-02 00:00")}):
        with pytest.raises(BackfillError, match="pass both --start and --end") as raised:
            plan_backfill(Timeline(), **bounds)
        assert isinstance(raised.value, GristmillError) and isinstance(raised.value, ValueError)
    assert plan_backfill(Timeline(), start=t("04-01 00:00"), end=t("04-02 00:00")) == [
        window("04-01 00:00", "04-02 00:00")]


def test_scenario_15_pending_intervals_are_skipped() -> None:
    running = SCENARIO_15.set(t("04-03 04:00"), t("04-04 04:00"), P)
    for data_status in (None, ["Pending"], ["pending", "None", "Incomplete", "Complete"]):
        jobs = plan_backfill(running, start=t("04-01 04:00"), end=t("04-06 04:00"), data_status=data_status)
        assert all(start >= t("04-04 04:00") or end <= t("04-03 04:00") for start, end in jobs), data_status
    assert plan_backfill(running, data_status=["Pending"]) == []


# (stored spans as (start, end, status), start, end, data_status, expected job windows)
PLAN_CASES = [
    # data_status None means every status, so the None gaps inside a window count too (one job each)
    ("all statuses in a window", None, "04-01 00:00", "04-07 00:00", None,
     [("04-01 00:00", "04-02 04:00"), ("04-02 04:00", "04-03 04:00"), ("04-03 04:00", "04-04 04:00"),
      ("04-04 04:00", "04-05 04:00"), ("04-05 04:00", "04-07 00:00")]),
    ("only None gaps", None, "04-02 12:00", "04-05 00:00", ["None"], [("04-03 04:00", "04-04 04:00")]),
    ("without a window, stored intervals only", None, None, None, None,
     [("04-02 04:00", "04-03 04:00"), ("04-04 04:00", "04-05 04:00")]),
    ("without a window, None matches nothing", None, None, None, ["none"], []),
    ("empty status list means all", None, None, None, [], [("04-02 04:00", "04-03 04:00"),
                                                            ("04-04 04:00", "04-05 04:00")]),
    ("one status passed bare", None, None, None, "complete", [("04-04 04:00", "04-05 04:00")]),
    ("start only: up to the last stored end", None, "04-04 00:00", None, None,
     [("04-04 00:00", "04-04 04:00"), ("04-04 04:00", "04-05 04:00")]),
    ("end only: from the first stored start", None, None, "04-03 00:00", ["Incomplete"],
     [("04-02 04:00", "04-03 00:00")]),
    ("window inside one interval", None, "04-04 06:00", "04-04 07:00", ["Complete"],
     [("04-04 06:00", "04-04 07:00")]),
    ("adjacent intervals of different statuses stay separate jobs",
     [("04-01 00:00", "04-02 00:00", INC), ("04-02 00:00", "04-03 00:00", C)], None, None, None,
     [("04-01 00:00", "04-02 00:00"), ("04-02 00:00", "04-03 00:00")]),
    ("window beyond every stored interval", None, "05-01 00:00", "05-02 00:00", None,
     [("05-01 00:00", "05-02 00:00")]),
]


@pytest.mark.parametrize(("stored", "start", "end", "data_status", "expected"),
                         [case[1:] for case in PLAN_CASES], ids=[case[0] for case in PLAN_CASES])
def test_plan(stored: list[tuple[str, str, DataStatus]] | None, start: str | None, end: str | None,
              data_status: list[str] | str | None, expected: list[tuple[str, str]]) -> None:
    timeline = SCENARIO_15 if stored is None else Timeline(DataInterval(t(a), t(b), s) for a, b, s in stored)
    jobs = plan_backfill(timeline, start=t(start) if start else None, end=t(end) if end else None,
                         data_status=data_status)
    assert jobs == [window(a, b) for a, b in expected]


BAD_REQUESTS = [
    ({"start": t("04-03 00:00"), "end": t("04-03 00:00")}, "empty: --start must be before --end"),
    ({"start": t("04-04 00:00"), "end": t("04-03 00:00")}, "empty: --start must be before --end"),
    ({"start": t("04-07 00:00")}, "outside the materialized intervals; pass both --start and --end"),
    ({"end": t("03-01 00:00")}, "outside the materialized intervals"),
    ({"data_status": ["Complete", "Done"]}, "'Done' is not one of None, Pending, Incomplete, Complete"),
]


@pytest.mark.parametrize(("arguments", "message"), BAD_REQUESTS)
def test_bad_requests(arguments: dict[str, object], message: str) -> None:
    with pytest.raises(BackfillError, match=message):
        plan_backfill(SCENARIO_15, **arguments)  # type: ignore[arg-type]
