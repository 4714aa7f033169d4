"""Bounds on the work one request may make the server do (docs/server.md, "Limits and hardening"):

- backfills never run inside a request: ``POST .../backfill`` records the jobs and answers ``202``; a
  fixed pool of ``limits.server_backfill_workers`` threads runs them, while this server sends their
  heartbeats (so jobs of a killed server are reaped: ``jobs/liveness.py``, done at every start-up);
- ``POST /v1/offline/features`` reads at most ``limits.offline_request_max_bytes`` of body (counted while it
  streams in, never buffered past the limit) and at most ``limits.offline_request_max_rows`` observations
  (counted from the Parquet footer, before any data is read): ``413`` naming the limit;
- at most ``limits.server_retrievals_at_once`` retrievals run at once; a request waits up to
  ``limits.server_retrieval_wait_seconds`` for a slot, then gets ``503`` with ``Retry-After``;
- each engine query runs under a DuckDB memory limit (``engine.memory_limit``, or
  ``limits.server_engine_memory_limit`` when that is not set).
"""

from __future__ import annotations

import asyncio
import io
import logging
import math
import queue
import threading
from collections.abc import AsyncIterator, Sequence
from typing import TYPE_CHECKING, Any

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse

from gristmill.errors import GristmillError
from gristmill.jobs.liveness import Heartbeats, reap_stale_jobs

if TYPE_CHECKING:
    from gristmill.config import LimitsConfig
    from gristmill.registry.materialization import JobRecord
    from gristmill.spec.featureset import FeatureSet
    from gristmill.store import FeatureStore

__all__ = ["BackfillWorkers", "LimitExceeded", "ServerLimits", "add_limits"]

log = logging.getLogger("gristmill.server")


class LimitExceeded(Exception):
    """A request over one of the server's limits: answered ``status`` with ``{"error": message}``."""

    def __init__(self, status: int, message: str, *, retry_after: float | None = None) -> None:
        super().__init__(message)
        self.status, self.message, self.retry_after = status, message, retry_after


class BackfillWorkers:
    """A fixed number of threads running the backfill jobs this server queued, with their heartbeats.

    The threads are daemons: a stopping server does not wait for a long job. It cancels its jobs instead
    (their windows turn Incomplete and can be retried); a server killed outright leaves them to be reaped."""

    def __init__(self, store: FeatureStore, *, size: int) -> None:
        self.store = store
        self.size = size
        self._queue: queue.Queue[tuple[FeatureSet, JobRecord] | None] = queue.Queue()
        self._running: set[str] = set()
        self._lock = threading.Lock()
        self._beats = Heartbeats(store.materializer.schedules, store.materializer.worker).start()
        for index in range(size):
            threading.Thread(target=self._work, name=f"backfill-{index}", daemon=True).start()

    def submit(self, feature_set: FeatureSet, *, start: Any, end: Any, data_status: Sequence[str] | None,
               stores: Sequence[str] | None, allow_future: bool) -> list[JobRecord]:
        """Plan and record the jobs of a backfill (checked as every backfill is) and queue them; returns the
        Queued job records at once."""
        jobs = self.store.materializer.queue_backfill(feature_set, start=start, end=end, data_status=data_status,
                                                      stores=stores, allow_future=allow_future)
        self._beats.add(*(job.id for job in jobs))
        for job in jobs:
            self._queue.put((feature_set, job))
        return jobs

    def submit_job(self, feature_set: FeatureSet, job: JobRecord) -> None:
        """Queue a job recorded elsewhere (a retry from the web UI) on the same fixed pool, with heartbeats."""
        self._beats.add(job.id)
        self._queue.put((feature_set, job))

    def _work(self) -> None:
        while (item := self._queue.get()) is not None:
            feature_set, job = item
            with self._lock:
                self._running.add(job.id)
            try:
                self.store.materializer.run(feature_set, job)      # records the job's own failure
            except Exception:
                log.exception("job %s: the backfill worker failed", job.id)
            finally:
                self._beats.discard(job.id)
                with self._lock:
                    self._running.discard(job.id)

    def shutdown(self) -> None:
        """Cancel the jobs still queued or running here (retry them with ``backfill --job-id``)."""
        waiting: list[str] = []
        while True:
            try:
                item = self._queue.get_nowait()
            except queue.Empty:
                break
            if item is not None:
                waiting.append(item[1].id)
        with self._lock:
            running = sorted(self._running)
        for job_ids, reason in ((waiting, "the server stopped before the job ran"),
                                (running, "the server stopped while the job ran")):
            for job_id in job_ids:
                try:
                    self.store.materializer.cancel(job_id, reason)
                except GristmillError as exc:
                    log.warning("job %s: not cancelled: %s", job_id, exc)
        for _ in range(self.size):
            self._queue.put(None)
        self._beats.stop()


class ServerLimits:
    """The server's limits, read once from ``featurestore.yaml``, and the state that enforces them."""

    def __init__(self, store: FeatureStore) -> None:
        self.config: LimitsConfig = store.config.limits
        self.backfills = BackfillWorkers(store, size=self.config.server_backfill_workers)
        self._slots: asyncio.Semaphore | None = None

    async def read_body(self, request: Request) -> bytes:
        """The request body, refused (413) as soon as it passes ``offline_request_max_bytes``: a declared
        ``Content-Length`` over it is refused before reading, a streamed body when it crosses it; a body that
        does not arrive in full within ``request_body_seconds`` is refused (408)."""
        most = self.config.offline_request_max_bytes
        declared = request.headers.get("content-length", "")
        if declared.isdigit() and int(declared) > most:
            raise LimitExceeded(413, _too_large(int(declared), most))

        async def read() -> bytes:
            chunks: list[bytes] = []
            size = 0
            async for chunk in request.stream():
                size += len(chunk)
                if size > most:
                    raise LimitExceeded(413, _too_large(None, most))
                chunks.append(chunk)
            return b"".join(chunks)

        seconds = self.config.request_body_seconds
        try:
            return await asyncio.wait_for(read(), timeout=seconds)
        except TimeoutError:
            raise LimitExceeded(408, f"request body: not received in full within {seconds:g} s "
                                     "(limits.request_body_seconds in featurestore.yaml)") from None

    def check_keys(self, entities: dict[str, list[Any]]) -> None:
        """Refuse (413) an online lookup of more than ``online_request_max_keys`` keys."""
        most = self.config.online_request_max_keys
        keys = max((len(values) for values in entities.values()), default=0)
        if keys > most:
            raise LimitExceeded(413, f"entities: {keys:,} keys; one lookup may ask for at most {most:,} "
                                     "(limits.online_request_max_keys in featurestore.yaml): split the keys into "
                                     "several requests")

    def check_rows(self, body: bytes) -> None:
        """Refuse (413) observations of more than ``offline_request_max_rows`` rows, counted from the Parquet
        footer alone (a few compressed bytes can hold millions of rows)."""
        import pyarrow.parquet as pq

        try:
            parquet = pq.ParquetFile(io.BytesIO(body))
            metadata, names = parquet.metadata, parquet.schema_arrow.names
        except Exception:
            return                      # not Parquet: reading it says so, with the reason
        rows = metadata.num_rows
        repeated = sorted({n for n in names if names.count(n) > 1})
        if repeated:
            raise LimitExceeded(400, f"request body: column {repeated[0]} appears more than once in the observations; "
                                     "give every column its own name")
        columns = metadata.num_columns
        if columns > self.config.offline_request_max_columns:
            raise LimitExceeded(413, f"request body: the observations have {columns:,} columns; one request may send "
                                     f"at most {self.config.offline_request_max_columns:,} "
                                     "(limits.offline_request_max_columns in featurestore.yaml): send only the "
                                     "index, timestamp and pass-through columns you need")
        most = self.config.offline_request_max_rows
        if rows > most:
            raise LimitExceeded(413, f"request body: the observations have {rows:,} rows; one request may send at "
                                     f"most {most:,} (limits.offline_request_max_rows in featurestore.yaml): split "
                                     "them into several requests")

    async def retrieval_slot(self) -> AsyncIterator[None]:
        """One of ``server_retrievals_at_once`` slots, waited for up to ``server_retrieval_wait_seconds``;
        then 503 with ``Retry-After``."""
        if self._slots is None:
            self._slots = asyncio.Semaphore(self.config.server_retrievals_at_once)
        wait = self.config.server_retrieval_wait_seconds
        try:
            await asyncio.wait_for(self._slots.acquire(), timeout=wait) if wait > 0 else \
                await _acquire_now(self._slots)
        except TimeoutError:
            at_once = self.config.server_retrievals_at_once
            raise LimitExceeded(503, f"the server is busy: {at_once} offline retrieval(s) are running "
                                     f"(limits.server_retrievals_at_once); retry shortly",
                                retry_after=max(wait, 1.0)) from None
        try:
            yield
        finally:
            self._slots.release()


async def _acquire_now(slots: asyncio.Semaphore) -> None:
    if slots.locked():
        raise TimeoutError
    await slots.acquire()


class BodyLimit:
    """ASGI middleware: request bodies (but the offline route's, which has its own limit) larger than
    ``most`` bytes are refused with 413, by ``Content-Length`` before reading or as they stream in. Bodies
    under the limit are read here in full and handed on (they are small: ``limits.request_max_bytes``)."""

    def __init__(self, app: Any, *, most: int, skip: tuple[str, ...]) -> None:
        self.app = app
        self.most = most
        self.skip = skip

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] != "http" or scope["path"] in self.skip:
            await self.app(scope, receive, send)
            return
        declared = dict(scope.get("headers") or []).get(b"content-length", b"")
        if declared.isdigit() and int(declared) > self.most:
            await JSONResponse({"error": _body_too_large(self.most)}, status_code=413)(scope, receive, send)
            return
        chunks: list[bytes] = []
        size, more = 0, True
        while more:
            message = await receive()
            if message.get("type") != "http.request":            # the client left: the app sees it
                pending = [message]
                break
            chunks.append(message.get("body", b""))
            size += len(chunks[-1])
            more = message.get("more_body", False)
            if size > self.most:                                  # refused as it streams in, not buffered further
                await JSONResponse({"error": _body_too_large(self.most)}, status_code=413)(scope, receive, send)
                return
        else:
            pending = [{"type": "http.request", "body": b"".join(chunks), "more_body": False}]

        async def replayed() -> Any:
            return pending.pop(0) if pending else await receive()

        await self.app(scope, replayed, send)


def _body_too_large(most: int) -> str:
    return (f"request body: over {most:,} bytes (limits.request_max_bytes in featurestore.yaml); send smaller "
            "requests")


def add_limits(app: FastAPI, store: FeatureStore) -> ServerLimits:
    """Install the server's limits on ``app``: the 413/503 answers, the backfill worker pool (stopped with
    the server), the engine's memory limit; and fail the jobs of workers that are gone (e.g. this server's
    previous run, killed with jobs queued)."""
    limits = ServerLimits(store)
    engine = store.engine
    if store.config.engine.memory_limit is None and hasattr(engine, "memory_limit"):
        engine.memory_limit = limits.config.server_engine_memory_limit
    try:
        reaped = reap_stale_jobs(store)
    except GristmillError as exc:
        log.warning("jobs of stopped workers not reaped: %s", exc)
    else:
        if reaped:
            log.warning("failed %d job(s) of stopped workers: %s", len(reaped), ", ".join(j.id for j in reaped))

    @app.exception_handler(LimitExceeded)
    def over_limit(request: Request, exc: LimitExceeded) -> JSONResponse:
        headers = {"Retry-After": str(math.ceil(exc.retry_after))} if exc.retry_after is not None else None
        return JSONResponse({"error": exc.message}, status_code=exc.status, headers=headers)

    app.add_middleware(BodyLimit, most=limits.config.request_max_bytes, skip=("/v1/offline/features",))
    app.router.on_shutdown.append(limits.backfills.shutdown)
    app.state.limits = limits
    return limits


def _too_large(size: int | None, most: int) -> str:
    sent = f" of {size:,} bytes" if size is not None else ""
    return (f"request body{sent}: one request may send at most {most:,} bytes "
            "(limits.offline_request_max_bytes in featurestore.yaml): split the observations into several requests")
