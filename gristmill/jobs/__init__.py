"""Materialization: data intervals, backfill planning, schedules and the job runner."""
