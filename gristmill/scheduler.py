"""The scheduler: runs feature sets' recurrent materialization (SPEC §3 "Recurrent schedule", §5).

A feature set version with ``materialization_settings.schedule`` and at least one enabled store gets a
job at every run of its schedule: the run at ``t`` materializes ``[t − source_delay − cadence,
t − source_delay)`` (``jobs/schedule.py``) into the enabled stores. Any number of workers (``gristmill
scheduler``, or ``Scheduler(store).run()``) may share one registry: each run is claimed in the registry
before its job is created, so no run produces two jobs and no job runs twice.

Each ``tick``:

1. fails the jobs whose worker went silent (no heartbeat for ``lease``), so their windows turn
   ``Incomplete`` instead of staying ``Pending`` forever (retry: ``backfill --job-id``);
2. finds the due runs of every scheduled feature set version: those after its last claimed run, up to
   now (the store's clock). A schedule never run before starts with its latest due run only (history is
   for ``backfill``). A worker that was down catches up on at most ``max_catch_up`` missed runs, the
   newest ones; older ones are logged and left to ``backfill``;
3. claims and runs them, oldest first, sending a heartbeat every ``heartbeat`` while a job runs.

Jobs end with notifications like every job (``jobs/notify.py``).
"""

from __future__ import annotations

import logging
import threading
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import TYPE_CHECKING

from gristmill.errors import GristmillError
from gristmill.jobs.liveness import Heartbeats, reap_stale_jobs, worker_name
from gristmill.jobs.schedule import recurrence_window, runs_between
from gristmill.registry.materialization import JobRecord
from gristmill.registry.schedules import ScheduleRecords

if TYPE_CHECKING:
    from gristmill.spec.featureset import FeatureSet
    from gristmill.store import FeatureStore

__all__ = ["DueRun", "Scheduler", "Tick"]

log = logging.getLogger("gristmill.scheduler")


@dataclass(frozen=True)
class DueRun:
    """A scheduled run that has come and has no job yet."""

    feature_set: FeatureSet
    run_at: datetime             # naive UTC
    start: datetime              # the window it materializes
    end: datetime
    stores: tuple[str, ...]


@dataclass(frozen=True)
class Tick:
    """What one pass did: jobs of dead workers it failed, and the jobs it ran (Completed or Failed)."""

    reaped: list[JobRecord]
    ran: list[JobRecord]


class Scheduler:
    """Runs the recurrent schedules of one feature store's feature sets.

    >>> scheduler = Scheduler(store)          # doctest: +SKIP
    >>> scheduler.tick()                      # run what is due now, once  # doctest: +SKIP
    >>> scheduler.run(poll_seconds=30)        # or keep going until stopped  # doctest: +SKIP
    """

    def __init__(self, store: FeatureStore, *, worker: str | None = None,
                 heartbeat: timedelta = timedelta(seconds=10), lease: timedelta = timedelta(minutes=2),
                 max_catch_up: int = 24) -> None:
        if lease <= heartbeat:
            raise GristmillError(f"scheduler lease ({lease}) must be longer than its heartbeat ({heartbeat}), "
                                 "or live workers would look dead")
        if max_catch_up < 1:
            raise GristmillError(f"max_catch_up must be at least 1, got {max_catch_up}")
        self.store = store
        self.worker = worker or worker_name()
        self.heartbeat = heartbeat
        self.lease = lease
        self.max_catch_up = max_catch_up
        self.schedules = ScheduleRecords(store.materializer.records)
        #: the job an interrupt (Ctrl-C, SIGTERM) cancelled while it ran, if any: a stopped worker says so
        self.interrupted_job: JobRecord | None = None

    # -- one pass -----------------------------------------------------------------------------------
    def tick(self) -> Tick:
        """Fail jobs of dead workers, then claim and run every due run."""
        reaped = self.reap()
        finished = []
        for due in self.due():
            job = self.schedules.claim(due.feature_set.name, due.feature_set.version, due.run_at, start=due.start,
                                       end=due.end, stores=due.stores, worker=self.worker)
            if job is None:
                log.info("%s: run at %s already claimed by another worker", due.feature_set.ref, due.run_at)
                continue
            log.info("%s: run at %s: job %s materializes [%s, %s) into %s", due.feature_set.ref, due.run_at,
                     job.id, due.start, due.end, " + ".join(due.stores))
            finished.append(self._run(due.feature_set, job))
        return Tick(reaped=reaped, ran=finished)

    def due(self) -> list[DueRun]:
        """The runs that have come (store clock) and have no job yet, oldest first."""
        now = self.store.now()
        due: list[DueRun] = []
        for asset in self.store.list_feature_sets():
            settings = asset.materialization_settings
            if settings is None or settings.schedule is None:
                continue
            stores = tuple(self.store.materializer.enabled_stores(asset))
            if not stores:
                continue
            last = self.schedules.last_run(asset.name, asset.version)
            try:
                feature_set = self.store.get_feature_set(asset.name, asset.version)     # with its spec
                runs = runs_between(settings.schedule, after=last, upto=now)
                missed = len(runs)
                runs = runs[-self.max_catch_up:]
                windows = [recurrence_window(settings.schedule, delay=feature_set.spec.source_delay, at=run_at)
                           for run_at in runs]
                if missed > len(runs):
                    log.warning("%s: %d scheduled runs missed since %s; running the newest %d, from %s on "
                                "(backfill the windows before it: gristmill backfill %s --end %s)",
                                feature_set.ref, missed, last, len(runs), runs[0], feature_set.ref,
                                windows[0][0].isoformat())
                for run_at, (start, end) in zip(runs, windows, strict=True):
                    due.append(DueRun(feature_set, run_at, start, end, stores))
            except GristmillError as exc:            # e.g. an unknown time zone: the others still run
                log.error("%s: schedule skipped: %s", asset.ref, exc)
        return sorted(due, key=lambda d: (d.run_at, d.feature_set.ref))

    def reap(self) -> list[JobRecord]:
        """Fail the queued or running jobs whose worker sent no heartbeat for ``lease`` (or whose worker was a
        process of this machine that has exited): ``jobs/liveness.py``."""
        return reap_stale_jobs(self.store, lease=self.lease)

    # -- forever ------------------------------------------------------------------------------------
    def run(self, *, poll_seconds: float = 30.0, stop: threading.Event | None = None,
            ticks: int | None = None) -> None:
        """Tick every ``poll_seconds`` until ``stop`` is set (or ``ticks`` passes are done)."""
        stop = stop or threading.Event()
        done = 0
        log.info("scheduler worker %s started (poll every %.0f s)", self.worker, poll_seconds)
        while not stop.is_set() and (ticks is None or done < ticks):
            try:
                self.tick()
            except GristmillError as exc:             # e.g. the registry briefly unreachable: try again later
                log.error("scheduler tick failed: %s", exc)
            done += 1
            if ticks is None or done < ticks:
                stop.wait(poll_seconds)
        log.info("scheduler worker %s stopped", self.worker)

    # -- internals ----------------------------------------------------------------------------------
    def _run(self, feature_set: FeatureSet, job: JobRecord) -> JobRecord:
        """Run a claimed job, sending heartbeats meanwhile; an interrupt cancels it (its window turns
        Incomplete) before it propagates."""
        beats = Heartbeats(self.schedules, self.worker, every=self.heartbeat)
        beats.add(job.id)
        try:
            with beats:
                return self.store.materializer.run(feature_set, job)
        except BaseException:
            try:
                self.interrupted_job = self.store.materializer.cancel(
                    job.id, f"scheduler worker {self.worker} stopped while the job ran")
            except GristmillError as exc:
                log.warning("job %s: not cancelled: %s", job.id, exc)
            raise
