"""Materialization states, data intervals and jobs in the registry database (SQLite and PostgreSQL)."""

from __future__ import annotations

import threading
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime, timedelta

import pytest
import sqlalchemy as sa

from gristmill.errors import NotFoundError, RegistryError
from gristmill.jobs import DataInterval, DataStatus, Timeline, plan_backfill
from gristmill.registry import Registry
from gristmill.registry.materialization import (
    ConflictError,
    CostRow,
    JobStatus,
    MaterializationRecords,
)

OpenRegistry = Callable[[], Registry]  # the open_registry fixture (tests/registry/conftest.py)

N, P, INC, C = DataStatus.NONE, DataStatus.PENDING, DataStatus.INCOMPLETE, DataStatus.COMPLETE


def t(text: str) -> datetime:
    """A naive UTC time in 2025 from ``"04-02 12:00"``."""
    return datetime.fromisoformat(f"2025-{text}")


def spans(timeline: Timeline, start: str | None = None, end: str | None = None) -> list[tuple[str, str, str]]:
    shown = timeline.intervals(t(start) if start else None, t(end) if end else None)
    return [(i.start.strftime("%m-%d %H:%M"), i.end.strftime("%m-%d %H:%M"), i.status.value) for i in shown]




@pytest.fixture
def records(registry: Registry) -> MaterializationRecords:
    return MaterializationRecords(registry)


@pytest.fixture
def enabled(records: MaterializationRecords) -> MaterializationRecords:
    """transactions:1 with both stores enabled."""
    records.set_enabled("transactions", 1, "offline", True)
    records.set_enabled("transactions", 1, "online", True)
    return records


# -- states -----------------------------------------------------------------------------------------
def test_a_store_never_configured_is_disabled_at_version_1(records: MaterializationRecords) -> None:
    state = records.state("transactions", 1, "offline")
    assert (state.feature_set, state.version, state.store) == ("transactions", "1", "offline")
    assert (state.enabled, state.materialization_version, state.timeline) == (False, 1, Timeline())


def test_enable_disable_cycle_versions_and_resets(records: MaterializationRecords) -> None:
    assert records.set_enabled("transactions", 1, "offline", False).materialization_version == 1
    first = records.set_enabled("transactions", 1, "offline", True)
    assert (first.enabled, first.materialization_version) == (True, 1)  # a first enable is not a re-enable
    assert records.set_enabled("transactions", 1, "offline", True).materialization_version == 1  # no-op
    records.set_status("transactions", 1, "offline", t("04-01 00:00"), t("04-02 00:00"), "Complete")

    disabled = records.set_enabled("transactions", 1, "OFFLINE", False)
    assert (disabled.enabled, disabled.materialization_version, disabled.timeline) == (False, 1, Timeline())
    assert records.set_enabled("transactions", 1, "offline", True).materialization_version == 2
    records.set_enabled("transactions", 1, "offline", False)
    again = records.set_enabled("transactions", "1", "offline", True)
    assert (again.enabled, again.materialization_version) == (True, 3)
    assert records.state("transactions", 1, "online").materialization_version == 1  # stores are independent


def test_set_status_persists_the_timeline(open_registry: OpenRegistry) -> None:
    records = MaterializationRecords(open_registry())
    records.set_enabled("transactions", 1, "offline", True)
    records.set_status("transactions", 1, "offline", t("04-01 00:00"), t("04-05 00:00"), "Complete")
    state = records.set_status("transactions", 1, "offline", t("04-02 00:00"), t("04-03 00:00"), "incomplete")
    expected = [("04-01 00:00", "04-02 00:00", "Complete"), ("04-02 00:00", "04-03 00:00", "Incomplete"),
                ("04-03 00:00", "04-05 00:00", "Complete")]
    assert spans(state.timeline) == expected
    # Another process (a fresh registry and records object) sees the same timeline.
    reopened = MaterializationRecords(open_registry())
    assert spans(reopened.timeline("transactions", 1, "offline")) == expected
    assert reopened.timeline("transactions", 1, "online") == Timeline()
    assert reopened.timeline("transactions", 2, "offline") == Timeline()
    # Aware times are stored as naive UTC; None clears.
    aware_start = datetime(2025, 4, 4, tzinfo=UTC)
    cleared = reopened.set_status("transactions", 1, "offline", aware_start, t("04-05 00:00"), "None")
    assert cleared.timeline.end == t("04-04 00:00")


def test_set_status_refuses_disabled_stores_and_stale_versions(records: MaterializationRecords) -> None:
    with pytest.raises(ConflictError, match="offline store of transactions:1 is disabled; enable it"):
        records.set_status("transactions", 1, "offline", t("04-01 00:00"), t("04-02 00:00"), C)
    records.set_enabled("transactions", 1, "offline", True)
    records.set_enabled("transactions", 1, "offline", False)
    records.set_enabled("transactions", 1, "offline", True)
    with pytest.raises(ConflictError, match="at materialization version 2, not 1"):
        records.set_status("transactions", 1, "offline", t("04-01 00:00"), t("04-02 00:00"), C,
                           materialization_version=1)
    state = records.set_status("transactions", 1, "offline", t("04-01 00:00"), t("04-02 00:00"), C,
                               materialization_version=2)
    assert spans(state.timeline) == [("04-01 00:00", "04-02 00:00", "Complete")]


# -- scenario 15 through the records: plan, create, run, finish ------------------------------------
def test_scenario_15_backfill_round_trip(enabled: MaterializationRecords) -> None:
    enabled.set_status("transactions", 1, "offline", t("04-02 04:00"), t("04-03 04:00"), INC)
    enabled.set_status("transactions", 1, "offline", t("04-04 04:00"), t("04-05 04:00"), C)
    windows = plan_backfill(enabled.timeline("transactions", 1, "offline"), start=t("04-02 12:00"),
                            end=t("04-04 12:00"), data_status=["Complete", "Incomplete"])
    assert windows == [(t("04-02 12:00"), t("04-03 04:00")), (t("04-04 04:00"), t("04-04 12:00"))]

    jobs = [enabled.create_job("transactions", 1, start=s, end=e, stores=["offline"]) for s, e in windows]
    pending = enabled.timeline("transactions", 1, "offline")
    assert [pending.status_at(s) for s, _ in windows] == [P, P]
    # A second backfill planned now skips the Pending windows: no job runs twice.
    assert plan_backfill(pending, start=t("04-02 12:00"), end=t("04-04 12:00"), data_status=["Complete",
                                                                                             "Incomplete"]) == []
    for job in jobs:
        enabled.start_job(job.id)
        enabled.finish_job(job.id, rows_read=10, rows_written=5, bytes_written=100, cpu_seconds=1.5)
    assert spans(enabled.timeline("transactions", 1, "offline"), "04-01 04:00", "04-06 04:00") == [
        ("04-01 04:00", "04-02 04:00", "None"),
        ("04-02 04:00", "04-02 12:00", "Incomplete"),
        ("04-02 12:00", "04-03 04:00", "Complete"),
        ("04-03 04:00", "04-04 04:00", "None"),
        ("04-04 04:00", "04-05 04:00", "Complete"),
        ("04-05 04:00", "04-06 04:00", "None"),
    ]
    assert enabled.timeline("transactions", 1, "online") == Timeline()  # only the offline store was asked


# -- jobs -------------------------------------------------------------------------------------------
def test_job_lifecycle(enabled: MaterializationRecords) -> None:
    before = datetime.now(UTC)
    job = enabled.create_job("transactions", 1, start=t("04-01 00:00"), end=t("04-02 00:00"),
                             stores=["online", "Offline"])
    assert len(job.id) == 12 and job.ref == "transactions:1"
    assert (job.status, job.stores, job.start, job.end) == (JobStatus.QUEUED, ("offline", "online"),
                                                            t("04-01 00:00"), t("04-02 00:00"))
    assert job.materialization_versions == {"offline": 1, "online": 1}
    assert before <= job.created_at <= datetime.now(UTC) and job.started_at is None and job.wall_seconds is None
    for store in ("offline", "online"):
        assert enabled.timeline("transactions", 1, store).covered(job.start, job.end, P)

    running = enabled.start_job(job.id)
    assert running.status is JobStatus.RUNNING and running.started_at is not None
    done = enabled.finish_job(job.id, rows_read=3_000_000_000, rows_written=7, bytes_written=2048,
                              cpu_seconds=2.25)
    assert (done.status, done.rows_read, done.rows_written, done.bytes_written, done.cpu_seconds, done.error) == (
        JobStatus.COMPLETED, 3_000_000_000, 7, 2048, 2.25, None)
    assert done.finished_at is not None and done.wall_seconds is not None and done.wall_seconds >= 0
    assert enabled.get_job(job.id) == done
    for store in ("offline", "online"):
        assert enabled.timeline("transactions", 1, store).covered(job.start, job.end, C)


def test_failed_and_cancelled_jobs_leave_incomplete_intervals(enabled: MaterializationRecords) -> None:
    failing = enabled.create_job("transactions", 1, start=t("04-01 00:00"), end=t("04-02 00:00"), stores="offline")
    enabled.start_job(failing.id)
    failed = enabled.fail_job(failing.id, "source file missing", cpu_seconds=0.5)
    assert (failed.status, failed.error, failed.cpu_seconds) == (JobStatus.FAILED, "source file missing", 0.5)

    queued = enabled.create_job("transactions", 1, start=t("04-02 00:00"), end=t("04-03 00:00"), stores=["offline"])
    cancelled = enabled.fail_job(queued.id, "cancelled by ana", status="cancelled")
    assert cancelled.status is JobStatus.CANCELLED and cancelled.started_at is None
    assert spans(enabled.timeline("transactions", 1, "offline")) == [("04-01 00:00", "04-03 00:00", "Incomplete")]


TRANSITION_CONFLICTS = [
    ("start twice", lambda r, j: (r.start_job(j), r.start_job(j)), "is Running; it must be Queued"),
    ("finish a queued job", lambda r, j: r.finish_job(j, rows_read=0, rows_written=0, bytes_written=0,
                                                      cpu_seconds=0), "is Queued; it must be Running"),
    ("fail a finished job", lambda r, j: (r.fail_job(j, "x"), r.fail_job(j, "y")), "is Failed; it must be"),
    ("fail_job to Completed", lambda r, j: r.fail_job(j, "x", status="Completed"), "Failed or Cancelled"),
    ("negative metrics", lambda r, j: (r.start_job(j), r.finish_job(j, rows_read=-1, rows_written=0,
                                                                    bytes_written=0, cpu_seconds=0)),
     "cannot be negative: rows_read"),
]


@pytest.mark.parametrize(("action", "message"), [c[1:] for c in TRANSITION_CONFLICTS],
                         ids=[c[0] for c in TRANSITION_CONFLICTS])
def test_job_transitions_are_checked(enabled: MaterializationRecords, action: Callable[..., object],
                                     message: str) -> None:
    job = enabled.create_job("transactions", 1, start=t("04-01 00:00"), end=t("04-02 00:00"), stores=["offline"])
    with pytest.raises(RegistryError, match=message):
        action(enabled, job.id)


def test_create_job_checks_its_arguments(records: MaterializationRecords) -> None:
    window = {"start": t("04-01 00:00"), "end": t("04-02 00:00")}
    with pytest.raises(ConflictError, match="online store of transactions:1 is disabled"):
        records.create_job("transactions", 1, stores=["online"], **window)
    records.set_enabled("transactions", 1, "offline", True)
    with pytest.raises(ConflictError, match="online store of transactions:1 is disabled"):
        records.create_job("transactions", 1, stores=["offline", "online"], **window)
    assert records.timeline("transactions", 1, "offline") == Timeline()  # the refused job marked nothing
    with pytest.raises(RegistryError, match="store 'archive' is not a store kind; use 'offline' or 'online'"):
        records.create_job("transactions", 1, stores=["archive"], **window)
    with pytest.raises(RegistryError, match="at least one store"):
        records.create_job("transactions", 1, stores=[], **window)
    with pytest.raises(ValueError, match="start must be before end"):
        records.create_job("transactions", 1, start=t("04-02 00:00"), end=t("04-01 00:00"), stores=["offline"])
    assert records.list_jobs() == []


def test_unknown_job_names_the_id(records: MaterializationRecords) -> None:
    for action in (records.get_job, records.start_job, lambda j: records.fail_job(j, "boom")):
        with pytest.raises(NotFoundError, match="job 'abc123' not found"):
            action("abc123")


def test_a_job_from_before_a_re_enable_does_not_mark_the_new_timeline(enabled: MaterializationRecords) -> None:
    job = enabled.create_job("transactions", 1, start=t("04-01 00:00"), end=t("04-02 00:00"),
                             stores=["offline", "online"])
    enabled.start_job(job.id)
    enabled.set_enabled("transactions", 1, "offline", False)
    enabled.set_enabled("transactions", 1, "offline", True)
    done = enabled.finish_job(job.id, rows_read=1, rows_written=1, bytes_written=1, cpu_seconds=0.1)
    assert done.status is JobStatus.COMPLETED  # the job's own record is kept ...
    assert enabled.timeline("transactions", 1, "offline") == Timeline()  # ... but the dropped data is not revived
    assert enabled.timeline("transactions", 1, "online").covered(job.start, job.end, C)


def test_list_jobs_newest_first_with_filters(enabled: MaterializationRecords) -> None:
    enabled.set_enabled("accounts", 2, "offline", True)
    created = [enabled.create_job(name, version, start=t(f"04-0{day} 00:00"), end=t(f"04-0{day + 1} 00:00"),
                                  stores=["offline"])
               for day, (name, version) in enumerate([("transactions", 1), ("accounts", 2), ("transactions", 1),
                                                      ("transactions", 1)], start=1)]
    enabled.start_job(created[2].id)
    enabled.fail_job(created[3].id, "boom")
    ids = [job.id for job in created]
    assert [j.id for j in enabled.list_jobs()] == ids[::-1]
    assert [j.id for j in enabled.list_jobs(feature_set="transactions")] == [ids[3], ids[2], ids[0]]
    assert [j.id for j in enabled.list_jobs(feature_set="accounts", version="2")] == [ids[1]]
    assert [j.id for j in enabled.list_jobs(version=2)] == [ids[1]]
    assert [j.id for j in enabled.list_jobs(status="queued")] == [ids[1], ids[0]]
    assert [j.id for j in enabled.list_jobs(status=[JobStatus.RUNNING, "Failed"])] == [ids[3], ids[2]]
    assert [j.id for j in enabled.list_jobs(limit=2)] == ids[:1:-1]
    with pytest.raises(RegistryError, match="job status 'Done' is not one of Queued, Running"):
        enabled.list_jobs(status="Done")


def test_cost_summary(enabled: MaterializationRecords) -> None:
    enabled.set_enabled("accounts", 1, "offline", True)
    runs = [("transactions", ["offline", "online"], 10, 4, 400, 2.0), ("transactions", ["online"], 5, 5, 50, 1.0),
            ("accounts", ["offline"], 100, 100, 1000, 4.5)]
    ids = []
    for day, (name, stores, read, written, size, cpu) in enumerate(runs, start=1):
        job = enabled.create_job(name, 1, start=t(f"04-0{day} 00:00"), end=t(f"04-0{day + 1} 00:00"),
                                 stores=stores)
        enabled.start_job(job.id)
        enabled.finish_job(job.id, rows_read=read, rows_written=written, bytes_written=size, cpu_seconds=cpu)
        ids.append(job.id)
    enabled.create_job("transactions", 1, start=t("04-09 00:00"), end=t("04-10 00:00"), stores=["offline"])

    by_job = enabled.cost_summary(by="job", feature_set="accounts")
    assert by_job == [CostRow(jobs=1, cpu_seconds=4.5, rows_read=100, rows_written=100, bytes_written=1000,
                              job_id=ids[2], feature_set="accounts", version="1")]
    assert len(enabled.cost_summary(by="job")) == 4
    assert enabled.cost_summary(by="feature_set") == [
        CostRow(jobs=1, cpu_seconds=4.5, rows_read=100, rows_written=100, bytes_written=1000,
                feature_set="accounts", version="1"),
        CostRow(jobs=3, cpu_seconds=3.0, rows_read=15, rows_written=9, bytes_written=450,
                feature_set="transactions", version="1"),
    ]
    # A job writing both stores counts in each.
    assert enabled.cost_summary(by="store") == [
        CostRow(jobs=3, cpu_seconds=6.5, rows_read=110, rows_written=104, bytes_written=1400, store="offline"),
        CostRow(jobs=2, cpu_seconds=3.0, rows_read=15, rows_written=9, bytes_written=450, store="online"),
    ]
    assert enabled.cost_summary(by="store", since=datetime.now(UTC) + timedelta(hours=1)) == []
    naive_hour_ago = datetime.now(UTC).replace(tzinfo=None) - timedelta(hours=1)  # naive means UTC
    assert enabled.cost_summary(by="feature_set", since=naive_hour_ago)[0].jobs == 1
    with pytest.raises(RegistryError, match="by='team' is not one of job, feature_set, store"):
        enabled.cost_summary(by="team")  # type: ignore[arg-type]


# -- concurrency ------------------------------------------------------------------------------------
def test_concurrent_writers_lose_no_update(open_registry: OpenRegistry) -> None:
    first = MaterializationRecords(open_registry())
    first.set_enabled("transactions", 1, "offline", True)
    writers = [MaterializationRecords(open_registry()) for _ in range(4)]
    hours = list(range(24))

    def mark(hour: int) -> None:
        records = writers[hour % len(writers)]
        records.set_status("transactions", 1, "offline", t("04-01 00:00") + timedelta(hours=hour),
                           t("04-01 00:00") + timedelta(hours=hour + 1), C if hour % 2 else INC)

    with ThreadPoolExecutor(max_workers=4) as pool:
        list(pool.map(mark, hours))
    timeline = first.timeline("transactions", 1, "offline")
    assert len(timeline) == 24 and (timeline.start, timeline.end) == (t("04-01 00:00"), t("04-02 00:00"))


def test_only_one_worker_starts_a_job(open_registry: OpenRegistry) -> None:
    records = [MaterializationRecords(open_registry()) for _ in range(4)]
    records[0].set_enabled("transactions", 1, "offline", True)
    job = records[0].create_job("transactions", 1, start=t("04-01 00:00"), end=t("04-02 00:00"), stores=["offline"])
    barrier = threading.Barrier(len(records))

    def claim(worker: MaterializationRecords) -> bool:
        barrier.wait()
        try:
            worker.start_job(job.id)
        except ConflictError:
            return False
        return True

    with ThreadPoolExecutor(max_workers=len(records)) as pool:
        assert sorted(pool.map(claim, records)) == [False, False, False, True]


def test_tables_live_in_the_registry_schema(registry: Registry, records: MaterializationRecords) -> None:
    records.state("transactions", 1, "offline")  # first use creates the tables
    inspector = sa.inspect(registry.engine)
    assert {"materialization_states", "data_intervals", "jobs"} <= set(
        inspector.get_table_names(schema=registry.schema))


def test_stored_intervals_round_trip_microseconds(enabled: MaterializationRecords) -> None:
    start, end = datetime(2025, 4, 1, 0, 0, 0, 1), datetime(2025, 4, 1, 0, 0, 0, 999_999)
    enabled.set_status("transactions", 1, "offline", start, end, C)
    assert list(enabled.timeline("transactions", 1, "offline")) == [DataInterval(start, end, C)]
