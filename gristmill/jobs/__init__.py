"""Materialization: data intervals, backfill planning, schedules and the job runner.

Intervals, backfill windows and schedules are pure logic, exported here; their persistence (states,
timelines, job records) lives in ``gristmill.registry.materialization``.
"""

from gristmill.jobs.backfill import BackfillError, plan_backfill
from gristmill.jobs.intervals import DataInterval, DataStatus, IntervalError, Timeline
from gristmill.jobs.schedule import ScheduleError, cadence, next_run, recurrence_window

__all__ = [
    "BackfillError",
    "DataInterval",
    "DataStatus",
    "IntervalError",
    "ScheduleError",
    "Timeline",
    "cadence",
    "next_run",
    "plan_backfill",
    "recurrence_window",
]
