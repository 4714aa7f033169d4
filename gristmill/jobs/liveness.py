"""Who is alive to finish a job: worker names, heartbeats, and reaping the jobs of workers that are gone.

Every job has an owner from the moment it is created: the worker (a process, named ``host:pid:random``)
that created it sends a heartbeat for it (``job_heartbeats``) while the job waits or runs. A job whose
worker went silent for a lease, or whose worker was a process of this machine that no longer exists
(``kill -9``, a crash, an out-of-memory kill), is failed by ``reap_stale_jobs``: its window turns
``Incomplete`` instead of staying ``Pending`` forever, and the error says how to retry it. The
scheduler reaps on every tick, ``gristmill serve`` at start-up, ``gristmill jobs --reap`` on demand.
"""

from __future__ import annotations

import logging
import os
import socket
import threading
import uuid
from datetime import timedelta
from typing import TYPE_CHECKING, Any

from gristmill.errors import GristmillError

if TYPE_CHECKING:
    from gristmill.registry.materialization import JobRecord
    from gristmill.registry.schedules import ScheduleRecords, StaleJob
    from gristmill.store import FeatureStore

__all__ = ["HEARTBEAT", "LEASE", "Heartbeats", "reap_stale_jobs", "worker_gone", "worker_name"]

log = logging.getLogger("gristmill.jobs")

#: how often a worker says it is alive, and how long a silent worker counts as alive (as the scheduler's)
HEARTBEAT = timedelta(seconds=10)
LEASE = timedelta(minutes=2)


def worker_name() -> str:
    """A name for this process as a job owner: ``host:pid:random`` (the random part tells apart two
    processes that had the same pid, e.g. a restarted container)."""
    return f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:6]}"


def worker_gone(worker: str) -> bool:
    """Whether ``worker`` was a process of this machine that has exited. Unknown names (other machines,
    names given with ``--worker``) and this process itself are never taken for gone: only their lease
    tells."""
    host, _, rest = worker.partition(":")
    pid_text, _, _ = rest.partition(":")
    if host != socket.gethostname() or not pid_text.isdigit():
        return False
    pid = int(pid_text)
    if pid == os.getpid() or pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    except PermissionError:                 # alive, owned by another user
        return False
    return False


class Heartbeats:
    """A background thread recording a heartbeat for each of a worker's jobs every ``every``.

    >>> with Heartbeats(schedules, worker) as beats:    # doctest: +SKIP
    ...     beats.add(job.id)
    ...     run(job)
    ...     beats.discard(job.id)
    """

    def __init__(self, schedules: ScheduleRecords, worker: str, *, every: timedelta = HEARTBEAT) -> None:
        self.schedules = schedules
        self.worker = worker
        self.every = every
        self._jobs: set[str] = set()
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def add(self, *job_ids: str) -> None:
        with self._lock:
            self._jobs.update(job_ids)

    def discard(self, job_id: str) -> None:
        with self._lock:
            self._jobs.discard(job_id)

    def start(self) -> Heartbeats:
        if self._thread is None:
            self._thread = threading.Thread(target=self._beat, name=f"heartbeats-{self.worker}", daemon=True)
            self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
            self._thread = None

    def __enter__(self) -> Heartbeats:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def _beat(self) -> None:
        while not self._stop.wait(self.every.total_seconds()):
            with self._lock:
                jobs = sorted(self._jobs)
            for job_id in jobs:
                try:
                    self.schedules.heartbeat(job_id, self.worker)
                except GristmillError as exc:
                    log.warning("job %s: heartbeat not recorded: %s", job_id, exc)


def reap_stale_jobs(store: FeatureStore, *, lease: timedelta = LEASE) -> list[JobRecord]:
    """Fail the queued or running jobs whose worker is gone: silent for ``lease``, or a process of this
    machine that has exited. Each is failed only if its worker is still the silent one, atomically (a
    worker that beats meanwhile keeps its job); notifications are sent as for every job that ends."""
    from gristmill.materialization import retry_command
    from gristmill.registry.materialization import ConflictError, JobStatus
    from gristmill.registry.schedules import ScheduleRecords

    records = store.materializer.records
    schedules = ScheduleRecords(records)
    failed = []
    silent = {stale.job.id for stale in schedules.stale(silent_for=lease)}
    for stale in schedules.stale(silent_for=timedelta(0)):
        gone = worker_gone(stale.worker)
        if not gone and stale.job.id not in silent:
            continue
        reason = _reason(stale, gone=gone, retry=retry_command(stale.job, store=store.path))

        def still_gone(conn: Any, stale: StaleJob = stale, gone: bool = gone) -> bool:
            if gone:
                return schedules.still_owned_by(conn, stale.job.id, stale.worker)
            return schedules.still_stale(conn, stale.job.id, silent_for=lease)

        try:
            job = records.fail_job(stale.job.id, reason, status=JobStatus.FAILED, only_if=still_gone)
        except ConflictError:                 # it beat or ended meanwhile, or another worker reaped it
            continue
        log.warning("%s: job %s failed: %s", job.ref, job.id, reason)
        failed.append(store.materializer.ended(job))
    return failed


def _reason(stale: StaleJob, *, gone: bool, retry: str) -> str:
    # the text is read wherever the job is looked at, so the retry command names the store
    if gone:
        return (f"worker {stale.worker} stopped: its process has exited (last heartbeat "
                f"{stale.heartbeat_at:%Y-%m-%d %H:%M:%S} UTC); retry with: {retry}")
    return (f"worker {stale.worker} stopped: no heartbeat since {stale.heartbeat_at:%Y-%m-%d %H:%M:%S} UTC; "
            f"retry with: {retry}")
