"""The scheduler through a real store: due runs and their windows (scenario 17), catch-up, exactly one job
per run with several workers (SQLite and PostgreSQL registries), dead workers' jobs, and notifications
(a real HTTP server for webhooks, a real SMTP server for e-mail)."""

from __future__ import annotations

import json
import logging
import threading
from collections.abc import Iterator
from datetime import datetime, timedelta
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any, ClassVar

import pandas as pd
import pytest
import yaml
from repo_support import write_fs1_repo

import gristmill as gm
from gristmill.registry.schedules import ScheduleRecords


class Clock:
    def __init__(self, now: datetime) -> None:
        self.now = now

    def __call__(self) -> datetime:
        return self.now


def _rows(start: datetime, hours: int) -> pd.DataFrame:
    """Accounts A and B, one row each every 30 minutes for ``hours`` hours from ``start``."""
    times = [start + timedelta(minutes=30 * i) for i in range(2 * hours)]
    return pd.DataFrame({"acct": ["A", "B"] * len(times),
                         "ts": pd.Series([t for t in times for _ in range(2)]).astype("datetime64[us]"),
                         "f1": [float(i) for i in range(2 * len(times))]})


def _store(root: Path, rows: pd.DataFrame, clock: Clock, *, schedule: dict[str, Any] | None,
           notification: dict[str, Any] | None = None, delay_hours: int = 0, online: bool = False,
           registry: tuple[str, str] | None = None, source: str | None = None,
           smtp_port: int | None = None) -> gm.FeatureStore:
    data = root / "data"
    data.mkdir(parents=True, exist_ok=True)
    rows.to_parquet(data / "rows.parquet")
    settings: dict[str, Any] = {"offline_enabled": True, "online_enabled": online}
    if schedule is not None:
        settings["schedule"] = schedule
    if notification is not None:
        settings["notification"] = notification
    repo = write_fs1_repo(root, source=source or data / "rows.parquet", settings=settings, lookback_days=2,
                          source_delay_hours=delay_hours)
    url, schema = registry if registry else (None, None)
    store = gm.FeatureStore.init(root / "store", registry_url=url, registry_schema=schema, clock=clock)
    if smtp_port is not None:
        config = yaml.safe_load((root / "store" / "featurestore.yaml").read_text())
        config["notifications"] = {"smtp": {"host": "127.0.0.1", "port": smtp_port, "sender": "gm@example.com"}}
        (root / "store" / "featurestore.yaml").write_text(yaml.safe_dump(config))
        store = gm.FeatureStore(root / "store", clock=clock)
    plan = store.apply(repo)
    assert plan.ok, str(plan)
    return store


def _windows(jobs: list[Any]) -> list[tuple[str, str, str]]:
    return [(f"{j.start:%m-%d %H:%M}", f"{j.end:%m-%d %H:%M}", j.status.value) for j in jobs]


def _timeline(store: gm.FeatureStore) -> list[tuple[str, str, str]]:
    return [(f"{i.start:%m-%d %H:%M}", f"{i.end:%m-%d %H:%M}", i.status.value)
            for i in store.data_intervals("fs1", 1)["offline"]]


HOURLY = {"type": "recurrence", "frequency": "hour", "interval": 1, "start_time": "2024-01-01T00:00:00"}


def test_hourly_runs_once_each_then_catch_up(tmp_path: Path) -> None:
    clock = Clock(datetime(2024, 1, 1, 5, 30))
    store = _store(tmp_path, _rows(datetime(2024, 1, 1), 24), clock, schedule=HOURLY)
    scheduler = gm.Scheduler(store, worker="w1")
    tick = scheduler.tick()
    # never run before: only the latest due run (05:00), which materializes the hour before it
    assert _windows(tick.ran) == [("01-01 04:00", "01-01 05:00", "Completed")]
    assert tick.ran[0].rows_written == 4
    assert scheduler.tick().ran == []                      # same clock: nothing new is due
    clock.now = datetime(2024, 1, 1, 8, 10)
    assert _windows(scheduler.tick().ran) == [("01-01 05:00", "01-01 06:00", "Completed"),
                                              ("01-01 06:00", "01-01 07:00", "Completed"),
                                              ("01-01 07:00", "01-01 08:00", "Completed")]
    assert _timeline(store) == [("01-01 04:00", "01-01 08:00", "Complete")]
    runs = ScheduleRecords(store.materializer.records).runs("fs1", "1")
    assert [(f"{r.run_at:%H:%M}", r.worker) for r in runs] == [("08:00", "w1"), ("07:00", "w1"), ("06:00", "w1"),
                                                               ("05:00", "w1")]
    at = pd.Series([datetime(2024, 1, 1, 7, 45)]).astype("datetime64[us]")
    observations = pd.DataFrame({"acct": ["A"], "ts": at})
    mixed = store.get_offline_features(["fs1:1:f1"], observations, "ts").to_pandas()   # partly materialized
    source = store.get_offline_features(["fs1:1:f1"], observations, "ts", from_source=True).to_pandas()
    assert mixed["f1"].tolist() == source["f1"].tolist() == [30.0]          # A at 07:30


def test_scenario_17_windows_through_the_scheduler(tmp_path: Path) -> None:
    """delay 3h, every 3 days from 2023-04-15 10:20; switched to every 2 days at 04-18 17:00."""
    clock = Clock(datetime(2023, 4, 15, 10, 20))
    every_3_days = {"type": "recurrence", "frequency": "day", "interval": 3, "start_time": "2023-04-15T10:20:00"}
    store = _store(tmp_path, _rows(datetime(2023, 4, 10), 24 * 10), clock, schedule=every_3_days, delay_hours=3)
    scheduler = gm.Scheduler(store)
    assert _windows(scheduler.tick().ran) == [("04-12 07:20", "04-15 07:20", "Completed")]
    clock.now = datetime(2023, 4, 18, 10, 20)
    assert _windows(scheduler.tick().ran) == [("04-15 07:20", "04-18 07:20", "Completed")]
    clock.now = datetime(2023, 4, 18, 17, 0)
    store.update_feature_set("fs1", 1, materialization_settings={
        "offline_enabled": True, "schedule": {**every_3_days, "interval": 2}})
    assert scheduler.tick().ran == []
    clock.now = datetime(2023, 4, 19, 10, 20)
    assert _windows(scheduler.tick().ran) == [("04-17 07:20", "04-19 07:20", "Completed")]


def test_catch_up_is_bounded(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    clock = Clock(datetime(2024, 1, 1, 1, 0))
    store = _store(tmp_path, _rows(datetime(2024, 1, 1), 2), clock, schedule=HOURLY)
    scheduler = gm.Scheduler(store, max_catch_up=3)
    assert len(scheduler.tick().ran) == 1                           # 01:00
    clock.now = datetime(2024, 1, 1, 10, 0)                         # 9 runs missed: 02:00 ... 10:00
    with caplog.at_level(logging.WARNING, logger="gristmill.scheduler"):
        ran = scheduler.tick().ran
    assert [f"{j.end:%H:%M}" for j in ran] == ["08:00", "09:00", "10:00"]
    assert "9 scheduled runs missed" in caplog.text
    assert "gristmill backfill fs1:1 --end 2024-01-01T07:00:00" in caplog.text    # where the kept runs begin


def test_no_schedule_or_no_enabled_store_means_no_jobs(tmp_path: Path) -> None:
    clock = Clock(datetime(2024, 1, 1, 5, 30))
    store = _store(tmp_path, _rows(datetime(2024, 1, 1), 6), clock, schedule=None)
    assert gm.Scheduler(store).tick().ran == []
    store.update_feature_set("fs1", 1, materialization_settings={"offline_enabled": False, "schedule": HOURLY})
    assert gm.Scheduler(store).tick().ran == []
    assert store.list_jobs() == []


@pytest.mark.parametrize("registry", ["sqlite", pytest.param("postgresql", marks=pytest.mark.postgres)])
def test_workers_sharing_a_registry_run_each_window_once(tmp_path: Path, request: pytest.FixtureRequest,
                                                         registry: str) -> None:
    """Four workers (each with its own store object, so its own registry connections) tick at once."""
    pg = request.getfixturevalue("postgres_schema") if registry == "postgresql" else None
    clock = Clock(datetime(2024, 1, 1, 1, 0))
    first = _store(tmp_path, _rows(datetime(2024, 1, 1), 12), clock, schedule=HOURLY, registry=pg)
    gm.Scheduler(first, worker="w0").tick()                         # 01:00, so the next tick catches up
    clock.now = datetime(2024, 1, 1, 7, 0)                          # due: 02:00 ... 07:00
    stores = [first] + [gm.FeatureStore(tmp_path / "store", clock=clock) for _ in range(3)]
    barrier = threading.Barrier(len(stores))
    results: dict[str, Any] = {}

    def work(index: int) -> None:
        scheduler = gm.Scheduler(stores[index], worker=f"w{index}")
        barrier.wait()
        try:
            results[f"w{index}"] = scheduler.tick().ran
        except BaseException as exc:
            results[f"w{index}"] = exc

    threads = [threading.Thread(target=work, args=(i,)) for i in range(len(stores))]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    errors = [r for r in results.values() if isinstance(r, BaseException)]
    assert not errors, errors
    ran = [job for jobs in results.values() for job in jobs]
    assert sorted(f"{j.end:%H:%M}" for j in ran) == ["02:00", "03:00", "04:00", "05:00", "06:00", "07:00"]
    assert all(j.status.value == "Completed" for j in ran), [(j.id, j.error) for j in ran]
    assert len(first.list_jobs()) == 7                                # no run produced two jobs
    assert _timeline(first) == [("01-01 00:00", "01-01 07:00", "Complete")]
    table = first.materializer.offline_table(first.get_feature_set("fs1", "1"))
    stored = first.offline_store.read(table).to_pandas()
    assert len(stored) == 28 and not stored.duplicated(["acct", "ts"]).any()


def _running_claimed_job(tmp_path: Path, *, worker: str) -> tuple[gm.FeatureStore, ScheduleRecords, Any]:
    """A store whose 03:00 run ``worker`` claimed and started (its first heartbeat: now)."""
    store = _store(tmp_path, _rows(datetime(2024, 1, 1), 6), Clock(datetime(2024, 1, 1, 3, 0)), schedule=HOURLY)
    schedules = ScheduleRecords(store.materializer.records)
    job = schedules.claim("fs1", "1", datetime(2024, 1, 1, 3), start=datetime(2024, 1, 1, 2),
                          end=datetime(2024, 1, 1, 3), stores=["offline"], worker=worker)
    assert job is not None
    store.materializer.records.start_job(job.id)
    return store, schedules, job


def test_a_dead_workers_job_is_failed_and_its_window_incomplete(tmp_path: Path) -> None:
    # a worker claimed the 03:00 run, started the job and died (its last heartbeat is old)
    store, _, job = _running_claimed_job(tmp_path, worker="gone")
    # a lease long enough that a loaded machine cannot make the fresh heartbeat look stale (it flaked at 50 ms)
    scheduler = gm.Scheduler(store, worker="alive", heartbeat=timedelta(milliseconds=10),
                             lease=timedelta(seconds=1))
    assert scheduler.tick().reaped == []                            # its heartbeat is still fresh
    threading.Event().wait(1.1)
    tick = scheduler.tick()
    assert [(j.id, j.status.value) for j in tick.reaped] == [(job.id, "Failed")]
    assert "worker gone stopped" in (tick.reaped[0].error or "")
    assert f"gristmill backfill fs1:1 --job-id {job.id} --store {store.path}" in (tick.reaped[0].error or "")
    assert tick.ran == []                                            # the 03:00 run stays claimed
    assert _timeline(store) == [("01-01 02:00", "01-01 03:00", "Incomplete")]
    [retry] = store.backfill("fs1", 1, job_id=job.id)
    assert retry.status.value == "Completed" and _timeline(store) == [("01-01 02:00", "01-01 03:00", "Complete")]


def test_a_running_workers_heartbeats_keep_its_job(tmp_path: Path) -> None:
    """A job that runs longer than the lease is not reaped while its worker sends heartbeats."""
    clock = Clock(datetime(2024, 1, 1, 3, 0))
    store = _store(tmp_path, _rows(datetime(2024, 1, 1), 6), clock, schedule=HOURLY)
    other = gm.Scheduler(gm.FeatureStore(tmp_path / "store", clock=clock), worker="other",
                         heartbeat=timedelta(milliseconds=20), lease=timedelta(milliseconds=200))
    reaped: list[Any] = []
    original = store.materializer.run

    def slow_run(feature_set: Any, job: Any) -> Any:
        for _ in range(10):                  # 0.5 s inside the job: the other worker checks meanwhile
            threading.Event().wait(0.05)
            reaped.extend(other.reap())
        return original(feature_set, job)

    store.materializer.run = slow_run        # type: ignore[method-assign]
    worker = gm.Scheduler(store, worker="busy", heartbeat=timedelta(milliseconds=20),
                          lease=timedelta(milliseconds=200))
    [job] = worker.tick().ran
    assert reaped == [] and job.status.value == "Completed"


# -- notifications --------------------------------------------------------------------------------------


class _Hooks(BaseHTTPRequestHandler):
    received: ClassVar[list[dict[str, Any]]] = []
    status: ClassVar[int] = 200

    def do_POST(self) -> None:
        body = self.rfile.read(int(self.headers["Content-Length"]))
        type(self).received.append({"path": self.path, "content_type": self.headers["Content-Type"],
                                    "body": json.loads(body)})
        self.send_response(type(self).status)
        self.end_headers()

    def log_message(self, *args: Any) -> None:
        pass


@pytest.fixture
def webhook_server() -> Iterator[tuple[str, type[_Hooks]]]:
    handler = type("Hooks", (_Hooks,), {"received": [], "status": 200})
    server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}", handler
    server.shutdown()
    server.server_close()


@pytest.fixture
def smtp_server() -> Iterator[tuple[int, list[Any]]]:
    from aiosmtpd.controller import Controller
    from aiosmtpd.handlers import Message
    from redis_servers import free_port

    messages: list[Any] = []

    class Keep(Message):
        def handle_message(self, message: Any) -> None:
            messages.append(message)

    controller = Controller(Keep(), hostname="127.0.0.1", port=free_port())
    controller.start()
    yield controller.port, messages
    controller.stop()


def _header(message: Any, name: str) -> str:
    """A header as read by a mail client: long ones arrive folded over several lines."""
    return str(message[name]).replace("\r\n", "").replace("\n", "").strip()


def test_webhooks_and_emails_on_completed_and_failed_jobs(tmp_path: Path, webhook_server: Any,
                                                          smtp_server: Any) -> None:
    url, hooks = webhook_server
    port, mails = smtp_server
    clock = Clock(datetime(2024, 1, 1, 2, 0))
    notification = {"email_on": ["JobCompleted", "JobFailed"], "emails": ["ml@example.com", "ops@example.com"],
                    "webhooks": [f"{url}/a", f"{url}/b"]}
    store = _store(tmp_path, _rows(datetime(2024, 1, 1), 6), clock, schedule=HOURLY, notification=notification,
                   smtp_port=port)
    [job] = gm.Scheduler(store).tick().ran
    assert job.status.value == "Completed"
    assert [h["path"] for h in hooks.received] == ["/a", "/b"]
    body = hooks.received[0]["body"]
    assert hooks.received[0]["content_type"] == "application/json"
    assert body["event"] == "JobCompleted" and body["feature_set"] == "fs1:1" and body["store"] == "store"
    assert body["job"]["id"] == job.id and body["job"]["rows_written"] == 4
    assert (body["job"]["start"], body["job"]["end"]) == ("2024-01-01T01:00:00", "2024-01-01T02:00:00")
    [mail] = mails
    assert mail["To"] == "ml@example.com, ops@example.com" and mail["From"] == "gm@example.com"
    assert _header(mail, "Subject") == "[gristmill] JobCompleted: fs1:1 [2024-01-01T01:00:00, 2024-01-01T02:00:00)"
    # a failing job (its source is gone) notifies JobFailed, with the error
    (tmp_path / "data" / "rows.parquet").unlink()
    clock.now = datetime(2024, 1, 1, 3, 0)
    [failed] = gm.Scheduler(store).tick().ran
    assert failed.status.value == "Failed"
    assert [h["body"]["event"] for h in hooks.received[2:]] == ["JobFailed", "JobFailed"]
    assert hooks.received[2]["body"]["job"]["error"] == failed.error
    assert _header(mails[1], "Subject").startswith("[gristmill] JobFailed: fs1:1")
    assert failed.error and failed.error in mails[1].get_payload(decode=True).decode()


def test_notifications_follow_email_on_and_never_fail_a_job(tmp_path: Path, webhook_server: Any,
                                                            caplog: pytest.LogCaptureFixture) -> None:
    url, hooks = webhook_server
    hooks.status = 500
    clock = Clock(datetime(2024, 1, 1, 2, 0))
    notification = {"email_on": ["JobFailed", "JobCancelled"], "emails": ["ml@example.com"],
                    "webhooks": [f"{url}/x", "http://127.0.0.1:9/unreachable"]}
    store = _store(tmp_path, _rows(datetime(2024, 1, 1), 6), clock, schedule=None, notification=notification)
    [done] = store.backfill("fs1", 1, start="2024-01-01", end="2024-01-01T02:00")
    assert done.status.value == "Completed" and hooks.received == []       # JobCompleted not asked for
    job = store.materializer.records.create_job("fs1", "1", start=datetime(2024, 1, 1, 2),
                                               end=datetime(2024, 1, 1, 3), stores=["offline"])
    with caplog.at_level(logging.WARNING, logger="gristmill.notify"):
        cancelled = store.cancel_job(job.id)
    assert cancelled.status.value == "Cancelled"
    assert [(h["path"], h["body"]["event"]) for h in hooks.received] == [("/x", "JobCancelled")]
    assert "answered HTTP 500" in caplog.text and "unreachable" in caplog.text
    assert "no mail server configured" in caplog.text


def test_a_job_cancelled_while_it_runs_does_not_stop_the_pass(tmp_path: Path) -> None:
    """An operator cancels a running scheduled job (or another worker fails it): its work is not recorded
    over that, and the pass goes on with the next due run."""
    clock = Clock(datetime(2024, 1, 1, 1, 0))
    store = _store(tmp_path, _rows(datetime(2024, 1, 1), 6), clock, schedule=HOURLY)
    gm.Scheduler(store).tick()                                       # 01:00
    clock.now = datetime(2024, 1, 1, 3, 0)                           # due: 02:00, 03:00
    records = store.materializer.records
    finish = records.finish_job
    cancelled: list[str] = []

    def cancelled_meanwhile(job_id: str, **metrics: Any) -> Any:
        if not cancelled:                      # the first job did its work; an operator cancelled it meanwhile
            store.cancel_job(job_id, "stopped by an operator")
            cancelled.append(job_id)
        return finish(job_id, **metrics)

    records.finish_job = cancelled_meanwhile                        # type: ignore[method-assign]
    ran = gm.Scheduler(store).tick().ran
    assert [(j.id == cancelled[0], j.status.value) for j in ran] == [(True, "Cancelled"), (False, "Completed")]
    assert ran[0].error == "stopped by an operator"


def test_a_heartbeat_landing_after_the_stale_list_saves_the_job(tmp_path: Path) -> None:
    """The reaper lists silent jobs, then fails each one only if its worker is still silent, checked in the
    same transaction that fails it: a heartbeat that lands in between keeps the job running."""
    store, schedules, job = _running_claimed_job(tmp_path, worker="slow")
    reaper = gm.Scheduler(store, worker="reaper", heartbeat=timedelta(milliseconds=10),
                          lease=timedelta(milliseconds=50))
    threading.Event().wait(0.1)
    listed = schedules.stale(silent_for=reaper.lease)
    assert [s.job.id for s in listed] == [job.id]
    schedules.heartbeat(job.id, "slow")                             # the worker was alive after all
    original = schedules.stale
    reaper.schedules.stale = lambda silent_for: listed              # type: ignore[method-assign]
    assert reaper.reap() == []
    assert store.get_job(job.id).status.value == "Running"
    reaper.schedules.stale = original                                # type: ignore[method-assign]
