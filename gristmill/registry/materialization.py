"""Materialization bookkeeping in the registry database: per-store state, data intervals and jobs.

Tables live next to the catalog (same engine, same PostgreSQL schema mapping) in their own MetaData and
are created on first use, so a registry that never materializes carries none of them:

    materialization_states   (feature set, version, store) -> enabled, materialization_version
    data_intervals           (feature set, version, store, start) -> end, status: the store's Timeline
    jobs                     one row per materialization job: window, stores, status, times, costs
    schedule_runs, job_heartbeats   the scheduler's claims and liveness (``registry/schedules.py``)
    feature_statistics      the statistics of each materialized window (``registry/statistics.py``)
    principals, tokens, grants, audit_log   access control (``auth/records.py``)

Every read-modify-write runs in one transaction that first locks the store's state row (SELECT … FOR
UPDATE on PostgreSQL; BEGIN IMMEDIATE on SQLite), so concurrent writers and scheduler workers never
lose an update. Job transitions apply SPEC §3's status rules to the data intervals in the same
transaction: a created or running job marks its window ``Pending``, success ``Complete``, failure or
cancellation ``Incomplete``. A job only touches a store whose ``materialization_version`` is still the
one it started with: disabling a store drops its data and timeline, and a job from before that must not
resurrect it.

>>> records = MaterializationRecords(registry)                                  # doctest: +SKIP
>>> records.set_enabled("transactions", 1, "offline", True)                     # doctest: +SKIP
>>> job = records.create_job("transactions", 1, start=s, end=e, stores=["offline"])  # doctest: +SKIP
"""

from __future__ import annotations

import threading
import uuid
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, Final, Literal, get_args

import sqlalchemy as sa
from sqlalchemy import exc as sa_exc
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.engine import Connection, RowMapping

from gristmill import loop_bridge
from gristmill.errors import NotFoundError, RegistryError, RegistryUnavailableError
from gristmill.jobs.intervals import DataInterval, DataStatus, Timeline, naive_utc
from gristmill.registry.registry import _WRITE_OPTION, Registry, version_key
from gristmill.spec.common import LenientStrEnum

__all__ = [
    "ConflictError",
    "CostRow",
    "JobRecord",
    "JobStatus",
    "MaterializationRecords",
    "MaterializationState",
    "OnlineOutcome",
    "StoreKind",
]

StoreKind = Literal["offline", "online"]
STORE_KINDS: Final[tuple[StoreKind, ...]] = get_args(StoreKind)
CostGrouping = Literal["job", "feature_set", "store"]

_CREATE_LOCK_KEY = 0x6772_6973_6D61  # serialises concurrent "create tables" on one PostgreSQL database


class ConflictError(RegistryError):
    """A write refused because the record is not in the state it needs (job already finished, store
    disabled or re-enabled since the caller read it)."""


class JobStatus(LenientStrEnum):
    """Where a materialization job is in its life: Queued → Running → Completed | Failed | Cancelled."""

    QUEUED = "Queued"
    RUNNING = "Running"
    COMPLETED = "Completed"
    FAILED = "Failed"
    CANCELLED = "Cancelled"

    @property
    def finished(self) -> bool:
        return self in (JobStatus.COMPLETED, JobStatus.FAILED, JobStatus.CANCELLED)


# -- tables -------------------------------------------------------------------------------------------
metadata = sa.MetaData()
TIMESTAMP = sa.DateTime(timezone=True)  # wall-clock times (created, started ...), read back as aware UTC
EVENT_TIME = sa.DateTime()  # feature windows: naive UTC, like every event time
NAME = sa.String(200)
VERSION = sa.String(100)
STORE = sa.String(10)

materialization_states = sa.Table(
    "materialization_states",
    metadata,
    sa.Column("feature_set", NAME, primary_key=True),
    sa.Column("version", VERSION, primary_key=True),
    sa.Column("store", STORE, primary_key=True),
    sa.Column("enabled", sa.Boolean, nullable=False),
    sa.Column("materialization_version", sa.Integer, nullable=False),
    sa.Column("enabled_at", TIMESTAMP, nullable=True),  # null: never enabled (the first enable keeps version 1)
    sa.Column("disabled_at", TIMESTAMP, nullable=True),
    sa.Column("updated_at", TIMESTAMP, nullable=False),
)

data_intervals = sa.Table(
    "data_intervals",
    metadata,
    sa.Column("feature_set", NAME, primary_key=True),
    sa.Column("version", VERSION, primary_key=True),
    sa.Column("store", STORE, primary_key=True),
    sa.Column("window_start", EVENT_TIME, primary_key=True),
    sa.Column("window_end", EVENT_TIME, nullable=False),
    sa.Column("status", sa.String(20), nullable=False),
    sa.ForeignKeyConstraint(
        ["feature_set", "version", "store"],
        ["materialization_states.feature_set", "materialization_states.version", "materialization_states.store"],
        ondelete="CASCADE",
    ),
)

jobs = sa.Table(
    "jobs",
    metadata,
    # An integer key orders jobs by creation exactly, even when two share a created_at.
    sa.Column("seq", sa.Integer, primary_key=True, autoincrement=True),
    sa.Column("id", sa.String(32), nullable=False, unique=True),
    sa.Column("feature_set", NAME, nullable=False),
    sa.Column("version", VERSION, nullable=False),
    sa.Column("window_start", EVENT_TIME, nullable=False),
    sa.Column("window_end", EVENT_TIME, nullable=False),
    # One flag per store (not a list) so "jobs and costs per store" are plain SQL filters.
    sa.Column("offline", sa.Boolean, nullable=False),
    sa.Column("online", sa.Boolean, nullable=False),
    sa.Column("status", sa.String(20), nullable=False),
    sa.Column("created_at", TIMESTAMP, nullable=False),
    sa.Column("started_at", TIMESTAMP, nullable=True),
    sa.Column("finished_at", TIMESTAMP, nullable=True),
    sa.Column("rows_read", sa.BigInteger, nullable=False),
    sa.Column("rows_written", sa.BigInteger, nullable=False),
    sa.Column("bytes_written", sa.BigInteger, nullable=False),
    sa.Column("cpu_seconds", sa.Float, nullable=False),
    sa.Column("error", sa.Text, nullable=True),
    sa.Column("materialization_versions", sa.JSON, nullable=False),
    # What reached the online store (null: the job wrote no online store, or ran before these existed):
    # keys written, keys skipped as already expired, the newest event time in the window and when a value
    # of that time expires (event time + temporal_join_lookback; null: never).
    sa.Column("online_keys_written", sa.BigInteger, nullable=True),
    sa.Column("online_keys_expired", sa.BigInteger, nullable=True),
    sa.Column("newest_event_time", EVENT_TIME, nullable=True),
    sa.Column("online_expires_at", EVENT_TIME, nullable=True),
    sa.Index("ix_jobs_feature_set", "feature_set", "version"),
    sa.Index("ix_jobs_status", "status"),
)


# -- records ------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class MaterializationState:
    """One store of one feature set version: whether it materializes, and what data it holds."""

    feature_set: str
    version: str
    store: StoreKind
    enabled: bool
    materialization_version: int
    timeline: Timeline


@dataclass(frozen=True)
class OnlineOutcome:
    """What one job did to the online store: keys written, keys skipped because their newest row in the
    window had already expired (event time + ``temporal_join_lookback`` at or before the job's clock),
    the newest event time in the window, and when a value of that time expires (None: never)."""

    keys_written: int
    keys_expired: int
    newest_event_time: datetime | None
    expires_at: datetime | None

    @property
    def all_expired(self) -> bool:
        """True when the window had keys and every one was skipped as already expired."""
        return self.keys_written == 0 and self.keys_expired > 0


@dataclass(frozen=True)
class JobRecord:
    """One materialization job of ``feature_set:version`` over ``[start, end)`` into ``stores``."""

    id: str
    feature_set: str
    version: str
    start: datetime
    end: datetime
    stores: tuple[StoreKind, ...]
    status: JobStatus
    created_at: datetime
    started_at: datetime | None
    finished_at: datetime | None
    rows_read: int
    rows_written: int
    bytes_written: int
    cpu_seconds: float
    error: str | None
    materialization_versions: Mapping[str, int] = field(default_factory=dict)
    online: OnlineOutcome | None = None       # what reached the online store (None: no online store)

    @property
    def ref(self) -> str:
        return f"{self.feature_set}:{self.version}"

    @property
    def wall_seconds(self) -> float | None:
        """Seconds from start to finish (``None`` until the job has run and finished)."""
        if self.started_at is None or self.finished_at is None:
            return None
        return (self.finished_at - self.started_at).total_seconds()


@dataclass(frozen=True)
class CostRow:
    """Aggregated cost of jobs for one group of ``cost_summary``; fields outside the grouping are None."""

    jobs: int
    cpu_seconds: float
    rows_read: int
    rows_written: int
    bytes_written: int
    job_id: str | None = None
    feature_set: str | None = None
    version: str | None = None
    store: StoreKind | None = None


@dataclass(frozen=True)
class _StoreKey:
    feature_set: str
    version: str
    store: StoreKind

    def where(self, table: sa.Table) -> sa.ColumnElement[bool]:
        return sa.and_(table.c.feature_set == self.feature_set, table.c.version == self.version,
                       table.c.store == self.store)

    @property
    def label(self) -> str:
        return f"{self.store} store of {self.feature_set}:{self.version}"


# -- the API ------------------------------------------------------------------------------------------
class MaterializationRecords:
    """Materialization states, data intervals and jobs, kept in a ``Registry``'s database.

    Stateless apart from the registry: any number of instances (threads, processes, scheduler workers)
    may share one database.
    """

    def __init__(self, registry: Registry) -> None:
        self._registry = registry
        self._ready = False
        self._ready_lock = threading.Lock()

    # -- states and timelines -----------------------------------------------------------------------
    def state(self, name: str, version: str | int, store: StoreKind | str) -> MaterializationState:
        """The state of one store; a store never configured is disabled, version 1, nothing stored."""
        key = _key(name, version, store)
        with self._transaction() as conn:
            row = conn.execute(sa.select(materialization_states).where(key.where(materialization_states))
                               ).mappings().one_or_none()
            return _state(key, row, _load_timeline(conn, key))

    def timeline(self, name: str, version: str | int, store: StoreKind | str) -> Timeline:
        """The data intervals of one store."""
        return self.state(name, version, store).timeline

    def set_enabled(self, name: str, version: str | int, store: StoreKind | str,
                    enabled: bool) -> MaterializationState:
        """Turn materialization into one store on or off.

        Disabling empties the timeline (the store's data is no longer maintained, so nothing in it
        may count as ``Complete``). Enabling a store that was enabled before bumps its
        ``materialization_version``, which fences off jobs started under the old one.
        """
        key = _key(name, version, store)
        with self._transaction(write=True) as conn:
            row = _lock_state(conn, key)
            values: dict[str, Any] = {}
            if enabled and not row["enabled"]:
                was_enabled_before = row["enabled_at"] is not None
                values = {"enabled": True, "enabled_at": _now(),
                          "materialization_version": row["materialization_version"] + int(was_enabled_before)}
            elif not enabled and row["enabled"]:
                values = {"enabled": False, "disabled_at": _now()}
                conn.execute(sa.delete(data_intervals).where(key.where(data_intervals)))
            if values:
                conn.execute(sa.update(materialization_states).where(key.where(materialization_states))
                             .values(**values, updated_at=_now()))
            row = _lock_state(conn, key)
            return _state(key, row, _load_timeline(conn, key))

    def set_status(self, name: str, version: str | int, store: StoreKind | str, start: datetime,
                   end: datetime, status: DataStatus | str, *,
                   materialization_version: int | None = None) -> MaterializationState:
        """Set ``[start, end)`` of one store's timeline to ``status`` (``None`` clears it).

        Refused (``ConflictError``) when the store is disabled, or when ``materialization_version`` is
        given and is no longer the store's: the caller's data belongs to a materialization that has
        since been dropped.
        """
        key = _key(name, version, store)
        interval = DataInterval(start, end, status)
        with self._transaction(write=True) as conn:
            row = _lock_state(conn, key)
            _check_current(key, row, materialization_version)
            timeline = _load_timeline(conn, key).set(interval.start, interval.end, interval.status)
            _save_timeline(conn, key, timeline)
            return _state(key, row, timeline)

    # -- jobs ---------------------------------------------------------------------------------------
    def create_job(self, name: str, version: str | int, *, start: datetime, end: datetime,
                   stores: Iterable[StoreKind | str]) -> JobRecord:
        """Record a queued job over ``[start, end)`` and mark that window ``Pending`` in each store.

        Every store must be enabled; the job remembers each store's ``materialization_version``.
        """
        with self._transaction(write=True) as conn:
            return _job(self._job_row(conn, insert_job(conn, name, version, start=start, end=end, stores=stores)))

    def create_retry_job(self, job_id: str, *, stores: Iterable[StoreKind | str], worker: str | None = None
                         ) -> JobRecord:
        """Record a queued job over the window of the failed or cancelled job ``job_id``, unless a job already
        covers it: one queued or running over any part of it, or one created since that completed it.

        The check and the new job are one transaction that first locks the window's store rows (as a
        scheduler's claim does), so concurrent retries of one job create exactly one job; the others get
        ``ConflictError`` naming the job that covers the window."""
        kinds = _store_kinds(stores)
        with self._transaction(write=True) as conn:
            original = self._job_row(conn, job_id)
            name, version = original["feature_set"], original["version"]
            for kind in kinds:                                   # STORE_KINDS order, as every writer locks
                _lock_state(conn, _key(name, version, kind))
            status = JobStatus(original["status"])
            if status not in (JobStatus.FAILED, JobStatus.CANCELLED):
                raise ConflictError(f"job {job_id} is {status.value}; only a failed or cancelled job is retried")
            start, end = original["window_start"], original["window_end"]
            covering = conn.execute(
                sa.select(jobs.c.id, jobs.c.status).where(
                    jobs.c.feature_set == name, jobs.c.version == version,
                    jobs.c.window_start < end, jobs.c.window_end > start,
                    sa.or_(jobs.c.status.in_([JobStatus.QUEUED.value, JobStatus.RUNNING.value]),
                           sa.and_(jobs.c.seq > original["seq"], jobs.c.status == JobStatus.COMPLETED.value)))
                .order_by(jobs.c.seq.desc())).first()
            if covering is not None:
                raise ConflictError(f"job {covering.id} is already {covering.status.lower()} over the window of job "
                                    f"{job_id}; nothing to retry (wait for it, or look at its result)")
            new_id = insert_job(conn, name, version, start=start, end=end, stores=kinds)
            if worker is not None:                       # owned from the start, so a dead owner's job is reaped
                from gristmill.registry.schedules import _db_now, job_heartbeats

                conn.execute(sa.insert(job_heartbeats).values(job_id=new_id, worker=worker,
                                                              heartbeat_at=_db_now(conn)))
            return _job(self._job_row(conn, new_id))

    def start_job(self, job_id: str) -> JobRecord:
        """Queued → Running. Only one caller wins: the others get ``ConflictError`` (no job runs twice)."""
        return self._transition(job_id, to=JobStatus.RUNNING, allowed_from=(JobStatus.QUEUED,),
                                mark=DataStatus.PENDING, values={"started_at": _now()})

    def finish_job(self, job_id: str, *, rows_read: int, rows_written: int, bytes_written: int,
                   cpu_seconds: float, online: OnlineOutcome | None = None) -> JobRecord:
        """Running → Completed with its costs (and ``online``: what reached the online store); the window
        becomes ``Complete`` in the job's stores."""
        metrics = _metrics(rows_read=rows_read, rows_written=rows_written, bytes_written=bytes_written,
                           cpu_seconds=cpu_seconds)
        if online is not None:
            metrics.update(online_keys_written=online.keys_written, online_keys_expired=online.keys_expired,
                           newest_event_time=online.newest_event_time, online_expires_at=online.expires_at)
        return self._transition(job_id, to=JobStatus.COMPLETED, allowed_from=(JobStatus.RUNNING,),
                                mark=DataStatus.COMPLETE, values={"finished_at": _now(), **metrics})

    def fail_job(self, job_id: str, error: str, *, cpu_seconds: float = 0.0, rows_read: int = 0,
                 rows_written: int = 0, bytes_written: int = 0,
                 status: JobStatus | str = JobStatus.FAILED,
                 only_if: Callable[[Connection], bool] | None = None) -> JobRecord:
        """Queued or Running → Failed (or Cancelled); the window becomes ``Incomplete``.

        ``only_if(conn)`` is checked inside the same transaction, after the job row is locked (e.g. "its
        worker is still silent"); when it is false nothing changes and ``ConflictError`` is raised."""
        final = JobStatus(status)
        if final not in (JobStatus.FAILED, JobStatus.CANCELLED):
            raise RegistryError(f"fail_job status must be Failed or Cancelled, not {final}")
        metrics = _metrics(rows_read=rows_read, rows_written=rows_written, bytes_written=bytes_written,
                           cpu_seconds=cpu_seconds)
        return self._transition(job_id, to=final, allowed_from=(JobStatus.QUEUED, JobStatus.RUNNING),
                                mark=DataStatus.INCOMPLETE,
                                values={"finished_at": _now(), "error": error, **metrics}, only_if=only_if)

    def get_job(self, job_id: str) -> JobRecord:
        """The job ``job_id``, or ``NotFoundError``."""
        with self._transaction() as conn:
            return _job(self._job_row(conn, job_id))

    def list_jobs(self, *, feature_set: str | None = None, version: str | int | None = None,
                  status: JobStatus | str | Iterable[JobStatus | str] | None = None,
                  limit: int = 100) -> list[JobRecord]:
        """Jobs, newest first, optionally of one feature set (version) and status(es)."""
        query = _jobs_query(feature_set=feature_set, version=version, status=status).limit(max(limit, 0))
        with self._transaction() as conn:
            return [_job(row) for row in conn.execute(query).mappings()]

    def iter_jobs(self, *, feature_set: str | None = None, version: str | int | None = None,
                  status: JobStatus | str | Iterable[JobStatus | str] | None = None,
                  page_size: int = 200) -> Iterator[JobRecord]:
        """Jobs, newest first, read ``page_size`` at a time: for callers that filter each job (e.g. by what a
        principal may read) and stop once they have enough, without loading every job."""
        query = _jobs_query(feature_set=feature_set, version=version, status=status)
        before: int | None = None
        while True:
            page = query if before is None else query.where(jobs.c.seq < before)
            with self._transaction() as conn:
                rows = conn.execute(page.limit(page_size)).mappings().all()
            yield from (_job(row) for row in rows)
            if len(rows) < page_size:
                return
            before = rows[-1]["seq"]

    def cost_summary(self, *, by: CostGrouping = "feature_set", feature_set: str | None = None,
                     version: str | int | None = None, since: datetime | None = None) -> list[CostRow]:
        """Compute seconds, rows read/written and bytes written, per job, feature set version or store.

        ``since`` keeps jobs created at or after it. Per store, a job that wrote both stores counts in
        each (its cost is not split), so the store rows can add up to more than the total.
        Jobs come newest first; feature sets by name and version; stores offline, online.
        """
        if by not in get_args(CostGrouping):
            raise RegistryError(f"cost_summary by={by!r} is not one of {', '.join(get_args(CostGrouping))}")
        filters: list[sa.ColumnElement[bool]] = []
        if feature_set is not None:
            filters.append(jobs.c.feature_set == feature_set)
        if version is not None:
            filters.append(jobs.c.version == str(version))
        if since is not None:
            filters.append(jobs.c.created_at >= _aware_utc(since))
        totals = (sa.func.count().label("jobs"), sa.func.sum(jobs.c.cpu_seconds).label("cpu_seconds"),
                  sa.func.sum(jobs.c.rows_read).label("rows_read"),
                  sa.func.sum(jobs.c.rows_written).label("rows_written"),
                  sa.func.sum(jobs.c.bytes_written).label("bytes_written"))
        with self._transaction() as conn:
            if by == "job":
                rows = conn.execute(sa.select(jobs).where(*filters).order_by(jobs.c.seq.desc())).mappings()
                return [_cost(r, jobs=1, job_id=r["id"], feature_set=r["feature_set"], version=r["version"])
                        for r in rows]
            if by == "feature_set":
                grouped = conn.execute(sa.select(jobs.c.feature_set, jobs.c.version, *totals).where(*filters)
                                       .group_by(jobs.c.feature_set, jobs.c.version)).mappings().all()
                ordered = sorted(grouped, key=lambda r: (r["feature_set"], version_key(r["version"])))
                return [_cost(r, feature_set=r["feature_set"], version=r["version"]) for r in ordered]
            result = []
            for kind in STORE_KINDS:
                row = conn.execute(sa.select(*totals).where(*filters, jobs.c[kind].is_(True))).mappings().one()
                if row["jobs"]:
                    result.append(_cost(row, store=kind))
            return result

    # -- internals ----------------------------------------------------------------------------------
    def _transition(self, job_id: str, *, to: JobStatus, allowed_from: Sequence[JobStatus], mark: DataStatus,
                    values: Mapping[str, Any], only_if: Callable[[Connection], bool] | None = None) -> JobRecord:
        """Move a job to ``to`` and apply ``mark`` to its window, atomically."""
        with self._transaction(write=True) as conn:
            row = self._job_row(conn, job_id, lock=True)
            current = JobStatus(row["status"])
            if current not in allowed_from:
                allowed = " or ".join(s.value for s in allowed_from)
                raise ConflictError(f"job {job_id} is {current.value}; it must be {allowed} to become "
                                    f"{to.value}")
            if only_if is not None and not only_if(conn):
                raise ConflictError(f"job {job_id}: the condition for becoming {to.value} no longer holds")
            conn.execute(sa.update(jobs).where(jobs.c.id == job_id).values(status=to.value, **values))
            for kind in STORE_KINDS:
                if not row[kind]:
                    continue
                key = _key(row["feature_set"], row["version"], kind)
                state = _lock_state(conn, key)
                # A store disabled or re-enabled since the job was created has dropped that data: leave it.
                if state["enabled"] and state["materialization_version"] == row["materialization_versions"][kind]:
                    timeline = _load_timeline(conn, key).set(row["window_start"], row["window_end"], mark)
                    _save_timeline(conn, key, timeline)
            return _job(self._job_row(conn, job_id))

    def _job_row(self, conn: Connection, job_id: str, *, lock: bool = False) -> RowMapping:
        query = sa.select(jobs).where(jobs.c.id == job_id)
        row = conn.execute(query.with_for_update() if lock else query).mappings().one_or_none()
        if row is None:
            raise NotFoundError(f"job '{job_id}' not found; list jobs to see their ids")
        return row

    def _ensure_tables(self) -> None:
        """Create the tables once per instance; the advisory lock keeps concurrent first uses apart."""
        # the scheduler's and access control's tables share this MetaData: importing them registers them
        import gristmill.auth.records
        import gristmill.registry.schedules
        import gristmill.registry.statistics  # noqa: F401

        with self._ready_lock:
            if self._ready:
                return
            with self._registry.engine.begin() as conn:
                if conn.dialect.name == "postgresql":
                    conn.execute(sa.select(sa.func.pg_advisory_xact_lock(_CREATE_LOCK_KEY)))
                metadata.create_all(conn)
                _add_missing_columns(conn, jobs, _ADDED_JOB_COLUMNS, schema=self._registry.schema)
                _add_missing_columns(conn, metadata.tables["audit_log"], ("count",), schema=self._registry.schema)
            self._ready = True

    @contextmanager
    def _transaction(self, *, write: bool = False) -> Iterator[Connection]:
        loop_bridge.blocking_io()                  # a database round trip: never on the server's event loop
        try:
            self._ensure_tables()
            with self._registry.engine.connect() as conn:
                if write:
                    conn.execution_options(**{_WRITE_OPTION: True})  # BEGIN IMMEDIATE on SQLite
                with conn.begin():
                    yield conn
        except (sa_exc.OperationalError, sa_exc.InterfaceError, sa_exc.ProgrammingError) as exc:
            where = self._registry.url + (f" (schema {self._registry.schema})" if self._registry.schema else "")
            reason = str(exc.orig).strip().splitlines()[0] if exc.orig is not None else str(exc)
            raise RegistryUnavailableError(f"materialization records at {where} failed: {reason}; check that the "
                                           "registry database is reachable and writable") from exc


# -- helpers ------------------------------------------------------------------------------------------
#: columns added to ``jobs`` after its first release: a registry created before gets them on open
_ADDED_JOB_COLUMNS = ("online_keys_written", "online_keys_expired", "newest_event_time", "online_expires_at")


def _add_missing_columns(conn: Connection, table: sa.Table, names: Sequence[str], *, schema: str | None) -> None:
    """Add the nullable ``names`` of ``table`` that an existing database lacks (an additive migration)."""
    present = {column["name"] for column in sa.inspect(conn).get_columns(table.name, schema=schema)}
    preparer = conn.dialect.identifier_preparer
    qualified = (preparer.quote_schema(schema) + "." if schema else "") + preparer.quote(table.name)
    for name in names:
        if name not in present:
            kind = table.c[name].type.compile(dialect=conn.dialect)
            conn.execute(sa.text(f"ALTER TABLE {qualified} ADD COLUMN {preparer.quote(name)} {kind}"))


def _now() -> datetime:
    return datetime.now(UTC)


def _aware_utc(value: datetime) -> datetime:
    return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)


def _key(name: str, version: str | int, store: StoreKind | str) -> _StoreKey:
    return _StoreKey(name, str(version), _store_kind(store))


def _store_kind(value: str) -> StoreKind:
    kind = value.strip().lower() if isinstance(value, str) else value
    for known in STORE_KINDS:
        if kind == known:
            return known
    raise RegistryError(f"store {value!r} is not a store kind; use 'offline' or 'online'")


def _store_kinds(values: Iterable[StoreKind | str]) -> tuple[StoreKind, ...]:
    if isinstance(values, str):
        values = [values]  # one store passed bare: do not iterate over its letters
    given = {_store_kind(v) for v in values}
    if not given:
        raise RegistryError("a job needs at least one store: 'offline', 'online' or both")
    return tuple(kind for kind in STORE_KINDS if kind in given)


def _job_status(value: JobStatus | str) -> JobStatus:
    try:
        return JobStatus(value)
    except ValueError:
        valid = ", ".join(s.value for s in JobStatus)
        raise RegistryError(f"job status {value!r} is not one of {valid}") from None


def _metrics(*, rows_read: int, rows_written: int, bytes_written: int, cpu_seconds: float) -> dict[str, Any]:
    values: dict[str, Any] = {"rows_read": rows_read, "rows_written": rows_written,
                              "bytes_written": bytes_written, "cpu_seconds": float(cpu_seconds)}
    negative = [name for name, value in values.items() if value < 0]
    if negative:
        raise RegistryError(f"job metrics cannot be negative: {', '.join(negative)}")
    return values


def _jobs_query(*, feature_set: str | None, version: str | int | None,
                status: JobStatus | str | Iterable[JobStatus | str] | None) -> sa.Select[Any]:
    query = sa.select(jobs)
    if feature_set is not None:
        query = query.where(jobs.c.feature_set == feature_set)
    if version is not None:
        query = query.where(jobs.c.version == str(version))
    if status is not None:
        wanted = [status] if isinstance(status, str) else list(status)
        query = query.where(jobs.c.status.in_([_job_status(s).value for s in wanted]))
    return query.order_by(jobs.c.seq.desc())


def insert_job(conn: Connection, name: str, version: str | int, *, start: datetime, end: datetime,
               stores: Iterable[StoreKind | str]) -> str:
    """Insert a queued job and mark its window ``Pending`` in each store, inside the caller's write
    transaction; returns the job id."""
    window = DataInterval(start, end, DataStatus.PENDING)
    kinds = _store_kinds(stores)
    versions: dict[str, int] = {}
    for key in (_key(name, version, kind) for kind in kinds):
        # always in STORE_KINDS order, so two writers never lock in opposite orders
        row = _lock_state(conn, key)
        _check_current(key, row, None)
        versions[key.store] = row["materialization_version"]
        _save_timeline(conn, key, _load_timeline(conn, key).set(window.start, window.end, window.status))
    job_id = uuid.uuid4().hex[:12]
    conn.execute(sa.insert(jobs).values(
        id=job_id, feature_set=name, version=str(version), window_start=window.start,
        window_end=window.end, offline="offline" in kinds, online="online" in kinds,
        status=JobStatus.QUEUED.value, created_at=_now(), started_at=None, finished_at=None,
        rows_read=0, rows_written=0, bytes_written=0, cpu_seconds=0.0, error=None,
        materialization_versions=versions,
    ))
    return job_id


def _lock_state(conn: Connection, key: _StoreKey) -> RowMapping:
    """The store's state row, created if missing and locked until the transaction ends."""
    insert = (postgresql.insert if conn.dialect.name == "postgresql" else sqlite.insert)(materialization_states)
    conn.execute(insert.values(feature_set=key.feature_set, version=key.version, store=key.store, enabled=False,
                               materialization_version=1, enabled_at=None, disabled_at=None, updated_at=_now())
                 .on_conflict_do_nothing())
    return conn.execute(sa.select(materialization_states).where(key.where(materialization_states))
                        .with_for_update()).mappings().one()


def _check_current(key: _StoreKey, row: RowMapping, materialization_version: int | None) -> None:
    if not row["enabled"]:
        raise ConflictError(f"materialization into the {key.label} is disabled; enable it "
                            f"({key.store}_enabled in materialization_settings) before materializing")
    if materialization_version is not None and materialization_version != row["materialization_version"]:
        raise ConflictError(f"the {key.label} is at materialization version {row['materialization_version']}, "
                            f"not {materialization_version}: it was disabled and re-enabled since, so this "
                            "data interval is no longer recorded")


def _load_timeline(conn: Connection, key: _StoreKey) -> Timeline:
    rows = conn.execute(sa.select(data_intervals.c.window_start, data_intervals.c.window_end,
                                  data_intervals.c.status)
                        .where(key.where(data_intervals)).order_by(data_intervals.c.window_start)).all()
    return Timeline(DataInterval(r.window_start, r.window_end, DataStatus(r.status)) for r in rows)


def _save_timeline(conn: Connection, key: _StoreKey, timeline: Timeline) -> None:
    """Replace the store's interval rows by ``timeline`` (the caller holds the state row lock)."""
    conn.execute(sa.delete(data_intervals).where(key.where(data_intervals)))
    rows = [{"feature_set": key.feature_set, "version": key.version, "store": key.store,
             "window_start": i.start, "window_end": i.end, "status": i.status.value} for i in timeline]
    if rows:
        conn.execute(sa.insert(data_intervals), rows)
    conn.execute(sa.update(materialization_states).where(key.where(materialization_states))
                 .values(updated_at=_now()))


def _state(key: _StoreKey, row: RowMapping | None, timeline: Timeline) -> MaterializationState:
    return MaterializationState(
        feature_set=key.feature_set, version=key.version, store=key.store,
        enabled=bool(row["enabled"]) if row else False,
        materialization_version=row["materialization_version"] if row else 1,
        timeline=timeline,
    )


def _job(row: RowMapping) -> JobRecord:
    def aware(value: datetime | None) -> datetime | None:
        return _aware_utc(value) if value is not None else None

    return JobRecord(
        id=row["id"], feature_set=row["feature_set"], version=row["version"],
        start=naive_utc(row["window_start"]), end=naive_utc(row["window_end"]),
        stores=tuple(kind for kind in STORE_KINDS if row[kind]), status=JobStatus(row["status"]),
        created_at=_aware_utc(row["created_at"]), started_at=aware(row["started_at"]),
        finished_at=aware(row["finished_at"]), rows_read=int(row["rows_read"]),
        rows_written=int(row["rows_written"]), bytes_written=int(row["bytes_written"]),
        cpu_seconds=float(row["cpu_seconds"]), error=row["error"],
        materialization_versions=dict(row["materialization_versions"]),
        online=None if row["online_keys_written"] is None else OnlineOutcome(
            keys_written=int(row["online_keys_written"]), keys_expired=int(row["online_keys_expired"] or 0),
            newest_event_time=naive_utc(row["newest_event_time"]) if row["newest_event_time"] else None,
            expires_at=naive_utc(row["online_expires_at"]) if row["online_expires_at"] else None),
    )


def _cost(row: RowMapping, *, jobs: int | None = None, job_id: str | None = None, feature_set: str | None = None,
          version: str | None = None, store: StoreKind | None = None) -> CostRow:
    return CostRow(
        jobs=jobs if jobs is not None else int(row["jobs"]), cpu_seconds=float(row["cpu_seconds"] or 0.0),
        rows_read=int(row["rows_read"] or 0), rows_written=int(row["rows_written"] or 0),
        bytes_written=int(row["bytes_written"] or 0), job_id=job_id, feature_set=feature_set,
        version=version, store=store,
    )
