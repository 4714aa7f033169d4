"""Materialization for a ``FeatureStore``: keeping per-store state in step with a feature set's
materialization settings, and running backfill jobs (SPEC §3 "Materialization", "Backfill").

A backfill plans one job per matching data interval (``plan_backfill``), records each job in the
registry (its window turns ``Pending``), runs it in-process, and records the outcome: ``Complete`` with
rows, bytes and CPU seconds, or ``Incomplete`` with the error. Offline writes are one Delta commit, so a
failed job leaves nothing half-written there; online writes are idempotent compare-and-set upserts, so a
retry repairs whatever a failed one wrote."""

from __future__ import annotations

import logging
import shlex
import time
from collections.abc import Callable, Mapping, Sequence
from datetime import datetime, timedelta
from pathlib import Path
from typing import TYPE_CHECKING, Any

from gristmill.compute.engine import to_utc_naive
from gristmill.errors import GristmillError, SpecError, TransformationError
from gristmill.jobs.backfill import BackfillError, plan_backfill
from gristmill.jobs.intervals import DataInterval, DataStatus
from gristmill.jobs.liveness import Heartbeats, worker_name
from gristmill.jobs.materialize import materialize_window
from gristmill.jobs.notify import Notifier
from gristmill.registry.materialization import ConflictError
from gristmill.spec.featureset import FeatureSet, MaterializationSettings
from gristmill.stores.offline.delta import OfflineTable
from gristmill.stores.online.base import OnlineTable

if TYPE_CHECKING:
    from gristmill.compute.statistics import FeatureSetStatistics
    from gristmill.jobs.freshness import Freshness
    from gristmill.registry.materialization import JobRecord, MaterializationRecords
    from gristmill.store import FeatureStore

log = logging.getLogger("gristmill.jobs")

STORES = ("offline", "online")

#: the end of a failed job's error when the registered version itself is at fault (an invalid spec, failing
#: transformation code or SQL): a retry runs the same snapshotted spec and code, so only a new version helps
NEEDS_NEW_VERSION = "a retry runs the same specification and code: fix them and apply them as a new version"


def failure_message(exc: BaseException, feature_set: FeatureSet) -> str:
    """The error text a failed job records: the error, plus what to do when a retry cannot help (a
    source problem, e.g. a missing file or column, can be fixed at the source and retried)."""
    if not isinstance(exc, GristmillError):
        return f"{type(exc).__name__}: {exc}"
    if isinstance(exc, (SpecError, TransformationError)):
        return f"{exc}; {NEEDS_NEW_VERSION} of {feature_set.name}"
    return str(exc)


def retry_fails_the_same_way(job: JobRecord) -> bool:
    """Whether the job failed on its registered spec or code (see ``failure_message``)."""
    return job.status.value == "Failed" and NEEDS_NEW_VERSION in (job.error or "")


def cli_command(*args: str, store: Path | None) -> str:
    """A ``gristmill`` command line that works when pasted into a shell: quoted, with ``--store PATH``
    unless ``store`` is ``None`` (the store is the current directory)."""
    words = ["gristmill", *args, *(["--store", str(store)] if store is not None else [])]
    return " ".join(shlex.quote(word) for word in words)


def retry_command(job: JobRecord, *, store: Path | None) -> str:
    """The command that retries a failed or cancelled job's window."""
    return cli_command("backfill", job.ref, "--job-id", job.id, store=store)


class Materializer:
    """Runs and records materialization for one store."""

    def __init__(self, store: FeatureStore) -> None:
        from gristmill.registry.materialization import MaterializationRecords
        from gristmill.registry.schedules import ScheduleRecords
        from gristmill.registry.statistics import StatisticsRecords

        self.store = store
        self.records: MaterializationRecords = MaterializationRecords(store.registry)
        self.schedules = ScheduleRecords(self.records)
        self.statistics_records = StatisticsRecords(self.records)
        self.notifier = Notifier(store.name, store.config.notifications)
        #: the owner of the jobs this process creates (their heartbeats say it is alive: ``jobs/liveness.py``)
        self.worker = worker_name()

    # -- tables -----------------------------------------------------------------------------------------
    def offline_table(self, feature_set: FeatureSet, materialization_version: int | None = None) -> OfflineTable:
        spec = feature_set.spec
        version = materialization_version or self.records.state(feature_set.name, feature_set.version,
                                                                "offline").materialization_version
        return OfflineTable(feature_set=feature_set.name, version=feature_set.version,
                            materialization_version=version, keys=tuple(spec.index_column_names),
                            timestamp=spec.timestamp_column, features=tuple(spec.feature_names))

    def online_table(self, feature_set: FeatureSet, materialization_version: int | None = None) -> OnlineTable:
        spec = feature_set.spec
        version = materialization_version or self.records.state(feature_set.name, feature_set.version,
                                                                "online").materialization_version
        return OnlineTable(store=self.store.name, feature_set=feature_set.name, version=feature_set.version,
                           materialization_version=version,
                           keys=tuple((c.name, c.type) for c in spec.index_columns),
                           features=tuple((f.name, f.type) for f in spec.features),
                           ttl=spec.temporal_join_lookback.timedelta if spec.temporal_join_lookback else None)

    # -- settings ---------------------------------------------------------------------------------------
    def sync_settings(self, feature_set: FeatureSet) -> None:
        """Enable/disable stores as the feature set's materialization settings say. Disabling resets the
        store's intervals; re-enabling starts a new materialization version (old data is not used again)."""
        settings = feature_set.materialization_settings or MaterializationSettings()
        for kind, wanted in (("offline", settings.offline_enabled), ("online", settings.online_enabled)):
            state = self.records.state(feature_set.name, feature_set.version, kind)
            if state.enabled == wanted:
                continue
            if not wanted and kind == "online" and state.enabled:
                self.store.online_store.drop(self.online_table(feature_set, state.materialization_version))
            self.records.set_enabled(feature_set.name, feature_set.version, kind, wanted)
            log.info("%s: %s materialization %s", feature_set.ref, kind, "enabled" if wanted else "disabled")

    def data_held(self, feature_set: FeatureSet, kind: str) -> str | None:
        """What an enabled store holds for ``feature_set`` (None: nothing): its materialized windows and the
        rows (offline) or keys (online) in it — what disabling the store would drop."""
        state = self.records.state(feature_set.name, feature_set.version, kind)
        if not state.enabled:
            return None
        windows = self.records.timeline(feature_set.name, feature_set.version, kind).intervals(include_none=False)
        if kind == "offline":
            amount = self.store.offline_store.row_count(self.offline_table(feature_set, state.materialization_version))
            unit = "row"
        else:
            amount = self.store.online_store.count(self.online_table(feature_set, state.materialization_version))
            unit = "key"
        if not windows and not amount:
            return None
        span = f" covering [{windows[0].start:%Y-%m-%d %H:%M}, {windows[-1].end:%Y-%m-%d %H:%M})" if windows else ""
        return (f"{amount:,} {unit}{'' if amount == 1 else 's'} in {len(windows)} materialized "
                f"window{'' if len(windows) == 1 else 's'}{span}")

    def enabled_stores(self, feature_set: FeatureSet) -> list[str]:
        return [kind for kind in STORES
                if self.records.state(feature_set.name, feature_set.version, kind).enabled]

    def intervals(self, feature_set: FeatureSet) -> dict[str, list[DataInterval]]:
        return {kind: self.records.timeline(feature_set.name, feature_set.version, kind).intervals()
                for kind in STORES}

    # -- statistics and freshness -------------------------------------------------------------------------
    def statistics(self, feature_set: FeatureSet, *, store: str = "offline", start: Any = None, end: Any = None,
                   sample_rows: int | None = None, recorded_only: bool = False) -> FeatureSetStatistics:
        """The statistics of the store's materialized windows overlapping ``[start, end)``; computed from the
        source instead (bounded by ``sample_rows``, default ``DEFAULT_SAMPLE_ROWS``) when ``sample_rows`` is
        given or the store holds no window with statistics — then ``start`` and ``end`` are needed.
        ``recorded_only``: never compute; no windows (and no summary) when none are recorded."""
        from gristmill.compute.statistics import DEFAULT_SAMPLE_ROWS, FeatureSetStatistics, merge_windows
        from gristmill.registry.materialization import _store_kind

        try:
            kind = _store_kind(store)
        except GristmillError:
            raise SpecError(f"store: {store!r} is not a store; use offline or online (CLI: --online)") from None
        lo, hi = parse_window_time(start, "start"), parse_window_time(end, "end")
        if lo is not None and hi is not None and lo >= hi:
            raise SpecError(f"start ({lo}) must be before end ({hi}); the window is [start, end)")
        if sample_rows is not None and (isinstance(sample_rows, bool) or not isinstance(sample_rows, int)
                                        or sample_rows < 1):
            raise SpecError(f"sample_rows (--sample-rows): {sample_rows!r} is not a positive whole number; "
                            "pass e.g. 100000")
        windows: list[Any] = []
        if sample_rows is None:
            state = self.records.state(feature_set.name, feature_set.version, kind)
            windows = self.statistics_records.windows(feature_set.name, feature_set.version, kind,
                                                      materialization_version=state.materialization_version,
                                                      start=lo, end=hi)
        if not windows and recorded_only:
            return FeatureSetStatistics(feature_set=feature_set.name, version=feature_set.version, store=kind,
                                        windows=(), summary=None)
        if not windows:
            if lo is None or hi is None:
                raise SpecError(f"start/end (--start/--end): {feature_set.ref} has no materialized statistics in the "
                                f"{kind} store; "
                                "pass a window (start and end) to compute them from the source, bounded by "
                                f"sample_rows (default {DEFAULT_SAMPLE_ROWS:,})")
            engine = self.store.engine
            if not hasattr(engine, "statistics"):
                raise SpecError(f"the {engine.name} engine does not compute statistics from the source yet; "
                                "materialize the feature set (its jobs record them) or use the duckdb engine")
            computed = engine.statistics(feature_set.spec, lo, hi, sample_rows=sample_rows or DEFAULT_SAMPLE_ROWS,
                                         label=feature_set.ref)
            windows = [computed]
            kind_shown: str | None = None
        else:
            kind_shown = kind
        return FeatureSetStatistics(feature_set=feature_set.name, version=feature_set.version, store=kind_shown,
                                    windows=tuple(windows), summary=merge_windows(windows))

    def freshness(self, feature_set: FeatureSet, *, grace: timedelta | None = None) -> Freshness:
        """How current each store's data is against the schedule (``jobs/freshness.py``)."""
        from gristmill.jobs.freshness import Freshness, StoreFreshness, store_state
        from gristmill.jobs.schedule import cadence, next_run

        now = to_utc_naive(self.store.now(), name="now")
        settings = feature_set.materialization_settings
        schedule = settings.schedule if settings is not None else None
        allowed_age = None
        if schedule is not None:
            step = cadence(schedule)
            allowed_age = step + feature_set.spec.source_delay + (grace if grace is not None else step / 2)
        completed = self.records.list_jobs(feature_set=feature_set.name, version=feature_set.version,
                                           status="Completed", limit=200)
        found = []
        for kind in STORES:
            state = self.records.state(feature_set.name, feature_set.version, kind)
            mine = [j for j in completed if kind in j.stores
                    and j.materialization_versions.get(kind) == state.materialization_version]
            complete = [i for i in state.timeline.intervals(include_none=False)
                        if i.status == DataStatus.COMPLETE]
            newest = self.statistics_records.newest_event_time(
                feature_set.name, feature_set.version, kind, materialization_version=state.materialization_version)
            if newest is None:      # an engine without statistics: the online outcome's newest event time
                times = [j.online.newest_event_time for j in mine
                         if j.online is not None and j.online.newest_event_time is not None]
                newest = max(times) if times else None
            label, stale_after = store_state(enabled=state.enabled, newest_event_time=newest,
                                             materialized=bool(mine or complete), now=now, allowed_age=allowed_age)
            upcoming = None
            if state.enabled and schedule is not None:
                try:
                    upcoming = next_run(schedule, after=now)
                except GristmillError as exc:           # e.g. an unknown time zone
                    log.warning("%s: next run unknown: %s", feature_set.ref, exc)
            found.append(StoreFreshness(
                store=kind, state=label, newest_event_time=newest,
                materialized_until=complete[-1].end if complete else None,
                last_job_id=mine[0].id if mine else None, last_job_finished_at=mine[0].finished_at if mine else None,
                next_run=upcoming, stale_after=stale_after))
        return Freshness(feature_set=feature_set.name, version=feature_set.version, checked_at=now,
                         stores=tuple(found))

    # -- backfill ---------------------------------------------------------------------------------------
    def backfill(self, feature_set: FeatureSet, *, start: Any = None, end: Any = None,
                 data_status: Sequence[str | DataStatus] | None = None, job_id: str | None = None,
                 stores: Sequence[str] | None = None,
                 on_job: Callable[[JobRecord, int, int], None] | None = None,
                 allow_future: bool = False) -> list[JobRecord]:
        """Plan, record and run backfill jobs; returns the finished job records (Completed or Failed).

        The jobs are owned by this process: it sends their heartbeats until each ends, so if it dies
        (``kill -9``) they can be reaped (``gristmill jobs --reap``) instead of staying Running forever."""
        jobs = self.queue_backfill(feature_set, start=start, end=end, data_status=data_status, job_id=job_id,
                                   stores=stores, allow_future=allow_future)
        finished = []
        with Heartbeats(self.schedules, self.worker) as beats:
            beats.add(*(job.id for job in jobs))
            for index, job in enumerate(jobs):
                if on_job is not None:
                    on_job(job, index, len(jobs))
                finished.append(self.run(feature_set, job))
                beats.discard(job.id)
        if on_job is not None and finished:
            on_job(finished[-1], len(jobs), len(jobs))
        return finished

    def queue_backfill(self, feature_set: FeatureSet, *, start: Any = None, end: Any = None,
                       data_status: Sequence[str | DataStatus] | None = None, job_id: str | None = None,
                       stores: Sequence[str] | None = None, allow_future: bool = False) -> list[JobRecord]:
        """Plan and record backfill jobs (Queued, owned by ``self.worker``) without running them.

        A new window is checked first: it may span at most ``limits.backfill_max_span_days`` (featurestore.yaml)
        and may not end after now (the store's clock) unless ``allow_future``: event time after now holds no
        data yet, and a job over it would mark it Complete while empty."""
        enabled = self.enabled_stores(feature_set)
        if job_id is not None:
            jobs = [self.retry_job(feature_set, job_id)]
            targets = list(jobs[0].stores)
        else:
            targets = list(stores) if stores else enabled
            unknown = [s for s in targets if s not in STORES]
            if unknown:
                raise BackfillError(f"stores: unknown store(s) {', '.join(unknown)}; use offline and/or online")
            disabled = [s for s in targets if s not in enabled]
            if disabled or not targets:
                what = f"{' and '.join(disabled)} materialization is not enabled" if disabled else \
                    "no store materialization is enabled"
                raise BackfillError(f"{feature_set.ref}: {what}; set materialization_settings.offline_enabled / "
                                    "online_enabled (and apply) first")
            lo = to_utc_naive(start, name="start") if start is not None else None
            hi = to_utc_naive(end, name="end") if end is not None else None
            plan_store = "offline" if "offline" in targets else "online"
            windows = plan_backfill(self.records.timeline(feature_set.name, feature_set.version, plan_store),
                                    start=lo, end=hi, data_status=data_status)
            self._check_window(lo if lo is not None else (windows[0][0] if windows else None),
                               hi if hi is not None else (windows[-1][1] if windows else None),
                               allow_future=allow_future or hi is None)   # stored intervals were allowed once
            jobs = [self.schedules.create_job(feature_set.name, feature_set.version, start=s, end=e, stores=targets,
                                              worker=self.worker)
                    for s, e in windows]
        log.info("%s: backfill of %d window(s) into %s", feature_set.ref, len(jobs), " + ".join(targets))
        return jobs

    def _check_window(self, start: datetime | None, end: datetime | None, *, allow_future: bool) -> None:
        """A backfill window's bounds: at most ``limits.backfill_max_span_days`` wide, not after now unless
        asked."""
        if start is None or end is None:
            return
        now = to_utc_naive(self.store.now(), name="now")
        if end > now and not allow_future:
            raise BackfillError(
                f"--end {end:%Y-%m-%d %H:%M:%S} is after now ({now:%Y-%m-%d %H:%M:%S} UTC): event time after now "
                "holds no data yet, and the window would be marked Complete while empty; pass an end up to now, "
                "or --allow-future (allow_future=True) to materialize it anyway")
        most = self.store.config.limits.backfill_max_span_days
        span = end - start
        if span > timedelta(days=most):
            raise BackfillError(
                f"--start/--end: the window [{start:%Y-%m-%d %H:%M}, {end:%Y-%m-%d %H:%M}) spans {span.days:,} days; "
                f"one backfill may cover at most {most:,} days (limits.backfill_max_span_days in featurestore.yaml): "
                "split it into several backfills, or raise the limit")

    def retry_job(self, feature_set: FeatureSet, job_id: str) -> JobRecord:
        """Record (not run) the job that retries a failed or cancelled job's window, in those of its stores
        still enabled; refused when a job already covers the window. The check and the new job are atomic
        (``create_retry_job``), so concurrent retries of one job make one job."""
        previous = self.records.get_job(job_id)
        if previous.ref != feature_set.ref:
            raise BackfillError(f"job {job_id} belongs to {previous.ref}, not {feature_set.ref}")
        if not previous.status.finished or previous.status.value == "Completed":
            raise BackfillError(f"job {job_id} is {previous.status.value}; only a failed or cancelled job's "
                                "window can be retried (re-running a Complete window: backfill with "
                                "--start/--end)")
        enabled = self.enabled_stores(feature_set)
        targets = [s for s in previous.stores if s in enabled]
        if not targets:
            raise BackfillError(f"{feature_set.ref}: none of the job's stores is enabled any more")
        try:
            return self.records.create_retry_job(job_id, stores=targets, worker=self.worker)
        except ConflictError as exc:
            raise BackfillError(str(exc)) from None

    def cancel(self, job_id: str, reason: str = "cancelled by user") -> JobRecord:
        """Mark a queued or running job Cancelled (e.g. its process died); its window turns Incomplete and
        can be retried with ``backfill(..., job_id=...)``."""
        from gristmill.registry.materialization import JobStatus

        job = self.records.get_job(job_id)
        if job.status.finished:
            raise BackfillError(f"job {job_id} is already {job.status.value}; nothing to cancel")
        return self.ended(self.records.fail_job(job_id, reason, status=JobStatus.CANCELLED))

    def ended(self, job: JobRecord, feature_set: FeatureSet | None = None) -> JobRecord:
        """Send the notifications of a job that just ended (its feature set's ``notification``)."""
        if feature_set is None:
            try:
                feature_set = self.store.get_feature_set(job.feature_set, job.version)
            except GristmillError as exc:       # e.g. archived since; the job's end stands regardless
                log.warning("job %s: no notifications: %s", job.id, exc)
                return job
        self.notifier.job_ended(feature_set, job)
        return job

    def run(self, feature_set: FeatureSet, job: JobRecord) -> JobRecord:
        """Run one recorded job in this process (a job cancelled or taken before it starts is left as it is)."""
        try:
            self.records.start_job(job.id)
        except ConflictError:
            current = self.records.get_job(job.id)
            log.warning("%s: job %s not started: it is %s", feature_set.ref, job.id, current.status.value)
            return current
        cpu_started = time.process_time()
        wall_started = time.perf_counter()
        try:
            offline = online = None
            if "offline" in job.stores:
                offline = (self.store.offline_store, self.offline_table(feature_set))
            online_from_offline = False
            if "online" in job.stores:
                online = (self.store.online_store, self.online_table(feature_set))
                offline_state = self.records.state(feature_set.name, feature_set.version, "offline")
                if offline is None and offline_state.enabled and offline_state.timeline.covered(
                        job.start, job.end, DataStatus.COMPLETE):
                    offline = (self.store.offline_store, self.offline_table(feature_set))
                    online_from_offline = True
            result = materialize_window(self.store.job_engine, feature_set.spec, job.start, job.end,
                                        now=self.store.now(), label=feature_set.ref, offline=offline,
                                        online=online, online_from_offline=online_from_offline,
                                        spark_configuration=_spark_configuration(feature_set))
        except Exception as exc:
            message = failure_message(exc, feature_set)
            # the job record carries the error to the caller; the log line is for operators' files
            log.info("%s: job %s [%s, %s) failed: %s", feature_set.ref, job.id, job.start, job.end, message)
            try:
                failed = self.records.fail_job(job.id, message, cpu_seconds=time.process_time() - cpu_started)
            except ConflictError:             # it ended elsewhere meanwhile (cancelled, reaped)
                return self.records.get_job(job.id)
            return self.ended(failed, feature_set)
        log.info("%s: job %s [%s, %s) completed: %d rows read, %d written in %.2f s", feature_set.ref, job.id,
                 job.start, job.end, result.rows_read, result.rows_written, time.perf_counter() - wall_started)
        if result.online is not None and result.online.all_expired:
            log.info("%s: job %s wrote no online keys: all %d had expired (newest event %s, expired at %s)",
                        feature_set.ref, job.id, result.online.keys_expired, result.online.newest_event_time,
                        result.online.expires_at)
        try:
            finished = self.records.finish_job(job.id, rows_read=result.rows_read, rows_written=result.rows_written,
                                               bytes_written=result.bytes_written, cpu_seconds=result.cpu_seconds,
                                               online=result.online)
        except ConflictError:                 # cancelled meanwhile, or failed by a worker that thought us dead
            current = self.records.get_job(job.id)
            log.warning("%s: job %s finished its work but was already %s (%s); its status stands", feature_set.ref,
                        job.id, current.status.value, current.error)
            return current
        self._save_statistics(feature_set, finished, result.statistics)
        return self.ended(finished, feature_set)

    def _save_statistics(self, feature_set: FeatureSet, job: JobRecord, statistics: Mapping[str, Any]) -> None:
        """Record the statistics of what the job wrote (a failure to is logged: the job's data stands)."""
        if not statistics:
            return
        try:
            self.statistics_records.save(feature_set.name, feature_set.version, job_id=job.id, statistics=statistics,
                                 materialization_versions=job.materialization_versions)
        except GristmillError as exc:
            log.warning("%s: job %s: statistics not recorded: %s", feature_set.ref, job.id, exc)


def _spark_configuration(feature_set: FeatureSet) -> dict[str, Any] | None:
    settings = feature_set.materialization_settings
    return settings.spark_configuration if settings is not None else None


def parse_window_time(value: Any, name: str) -> datetime | None:
    return to_utc_naive(value, name=name) if value is not None else None
