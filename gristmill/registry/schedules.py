"""Scheduler bookkeeping in the registry database: which scheduled runs were claimed, and which worker is
alive while it runs a job.

    schedule_runs    (feature set, version, run time) -> job id, worker: at most one job per scheduled run
    job_heartbeats   job id -> worker, last heartbeat: a running job whose worker went silent is failed

Many ``gristmill scheduler`` workers may share one registry. Claiming a run inserts its row and creates
the job in one transaction; the primary key makes every other worker's claim of the same run fail, so no
scheduled run ever produces two jobs. Tables are created with the materialization tables (same
``MetaData``), on first use.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

import sqlalchemy as sa
from sqlalchemy import exc as sa_exc

from gristmill.jobs.intervals import naive_utc
from gristmill.registry.materialization import (
    EVENT_TIME,
    NAME,
    TIMESTAMP,
    VERSION,
    JobRecord,
    JobStatus,
    MaterializationRecords,
    StoreKind,
    _aware_utc,
    _job,
    _now,
    insert_job,
    jobs,
    metadata,
)

__all__ = ["ScheduleRecords", "ScheduledRun", "StaleJob"]

WORKER = sa.String(200)

schedule_runs = sa.Table(
    "schedule_runs",
    metadata,
    sa.Column("feature_set", NAME, primary_key=True),
    sa.Column("version", VERSION, primary_key=True),
    sa.Column("run_at", EVENT_TIME, primary_key=True),       # the run's aligned time, naive UTC
    sa.Column("job_id", sa.String(32), nullable=False),
    sa.Column("worker", WORKER, nullable=False),
    sa.Column("claimed_at", TIMESTAMP, nullable=False),
)

job_heartbeats = sa.Table(
    "job_heartbeats",
    metadata,
    sa.Column("job_id", sa.String(32), primary_key=True),
    sa.Column("worker", WORKER, nullable=False),
    sa.Column("heartbeat_at", TIMESTAMP, nullable=False),
)


@dataclass(frozen=True)
class ScheduledRun:
    """A claimed run of a feature set version's schedule, and the job that materializes it."""

    feature_set: str
    version: str
    run_at: datetime
    job_id: str
    worker: str


@dataclass(frozen=True)
class StaleJob:
    """A running job whose worker stopped sending heartbeats."""

    job: JobRecord
    worker: str
    heartbeat_at: datetime


class ScheduleRecords:
    """Scheduled-run claims and job heartbeats, next to a registry's ``MaterializationRecords``."""

    def __init__(self, records: MaterializationRecords) -> None:
        self.records = records

    def claim(self, name: str, version: str | int, run_at: datetime, *, start: datetime, end: datetime,
              stores: Iterable[StoreKind | str], worker: str) -> JobRecord | None:
        """Create the job of one scheduled run, unless another worker already did (then None).

        The claim and the job (its window marked ``Pending``) are one transaction, and the worker's first
        heartbeat is recorded with them, so the job is never unowned."""
        run_at = naive_utc(run_at, name="run_at")
        key = {"feature_set": name, "version": str(version), "run_at": run_at}
        try:
            with self.records._transaction(write=True) as conn:
                taken = conn.execute(sa.select(schedule_runs.c.job_id).where(
                    *(schedule_runs.c[k] == v for k, v in key.items()))).first()
                if taken is not None:
                    return None
                job_id = insert_job(conn, name, version, start=start, end=end, stores=stores)
                conn.execute(sa.insert(schedule_runs).values(**key, job_id=job_id, worker=worker, claimed_at=_now()))
                conn.execute(sa.insert(job_heartbeats).values(job_id=job_id, worker=worker,
                                                              heartbeat_at=_db_now(conn)))
                return _job(conn.execute(sa.select(jobs).where(jobs.c.id == job_id)).mappings().one())
        except sa_exc.IntegrityError:      # PostgreSQL: a concurrent worker inserted the same run first
            return None

    def create_job(self, name: str, version: str | int, *, start: datetime, end: datetime,
                   stores: Iterable[StoreKind | str], worker: str) -> JobRecord:
        """Record a queued job owned by ``worker`` (its window marked ``Pending``), with the worker's first
        heartbeat in the same transaction: a job is never unowned, so a dead owner's jobs can be reaped."""
        with self.records._transaction(write=True) as conn:
            job_id = insert_job(conn, name, version, start=start, end=end, stores=stores)
            conn.execute(sa.insert(job_heartbeats).values(job_id=job_id, worker=worker, heartbeat_at=_db_now(conn)))
            return _job(conn.execute(sa.select(jobs).where(jobs.c.id == job_id)).mappings().one())

    def last_run(self, name: str, version: str | int) -> datetime | None:
        """The latest claimed run time of ``name:version`` (naive UTC), or None."""
        with self.records._transaction() as conn:
            value = conn.execute(sa.select(sa.func.max(schedule_runs.c.run_at)).where(
                schedule_runs.c.feature_set == name, schedule_runs.c.version == str(version))).scalar()
        return naive_utc(value) if value is not None else None

    def runs(self, name: str, version: str | int, *, limit: int = 100) -> list[ScheduledRun]:
        """Claimed runs of ``name:version``, newest first."""
        with self.records._transaction() as conn:
            rows = conn.execute(sa.select(schedule_runs).where(
                schedule_runs.c.feature_set == name, schedule_runs.c.version == str(version))
                .order_by(schedule_runs.c.run_at.desc()).limit(max(limit, 0))).mappings().all()
        return [ScheduledRun(r["feature_set"], r["version"], naive_utc(r["run_at"]), r["job_id"], r["worker"])
                for r in rows]

    def heartbeat(self, job_id: str, worker: str) -> None:
        """Record that ``worker`` is still running ``job_id`` (on the database's clock, so workers on machines
        whose clocks differ still agree on who went silent)."""
        with self.records._transaction(write=True) as conn:
            now = _db_now(conn)
            updated = conn.execute(sa.update(job_heartbeats).where(job_heartbeats.c.job_id == job_id)
                                   .values(worker=worker, heartbeat_at=now)).rowcount
            if not updated:
                conn.execute(sa.insert(job_heartbeats).values(job_id=job_id, worker=worker, heartbeat_at=now))

    def stale(self, *, silent_for: timedelta) -> list[StaleJob]:
        """Queued or running jobs whose worker has sent no heartbeat for ``silent_for``."""
        with self.records._transaction() as conn:
            rows = conn.execute(self._stale_query(conn, silent_for)).mappings().all()
        return [StaleJob(_job(r), r["worker"], _aware_utc(r["heartbeat_at"])) for r in rows]

    def still_stale(self, conn: sa.Connection, job_id: str, *, silent_for: timedelta) -> bool:
        """Whether ``job_id``'s worker is still silent, inside the caller's transaction: its heartbeat row is
        locked (PostgreSQL; SQLite serialises writers anyway), so a heartbeat cannot land in between."""
        beat = sa.select(job_heartbeats.c.heartbeat_at).where(job_heartbeats.c.job_id == job_id)
        at = conn.execute(beat.with_for_update() if conn.dialect.name == "postgresql" else beat).scalar()
        return at is not None and _aware_utc(at) < _db_now(conn) - silent_for

    def still_owned_by(self, conn: sa.Connection, job_id: str, worker: str) -> bool:
        """Whether ``job_id``'s heartbeat row still names ``worker``, inside the caller's transaction (locked
        on PostgreSQL, as in ``still_stale``)."""
        owner = sa.select(job_heartbeats.c.worker).where(job_heartbeats.c.job_id == job_id)
        return conn.execute(owner.with_for_update() if conn.dialect.name == "postgresql" else owner).scalar() == worker

    @staticmethod
    def _stale_query(conn: sa.Connection, silent_for: timedelta) -> sa.Select[Any]:
        return (sa.select(jobs, job_heartbeats.c.worker, job_heartbeats.c.heartbeat_at)
                .join(job_heartbeats, job_heartbeats.c.job_id == jobs.c.id)
                .where(jobs.c.status.in_([JobStatus.QUEUED.value, JobStatus.RUNNING.value]),
                       job_heartbeats.c.heartbeat_at < _db_now(conn) - silent_for))


def _db_now(conn: sa.Connection) -> datetime:
    """The database server's time on PostgreSQL (one clock for all workers); this machine's on SQLite (whose
    workers share this machine anyway)."""
    if conn.dialect.name == "postgresql":
        return _aware_utc(conn.execute(sa.select(sa.func.clock_timestamp())).scalar_one())
    return _now()
