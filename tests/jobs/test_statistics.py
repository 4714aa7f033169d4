"""Feature statistics computed by materialization jobs (DuckDB engine), recorded in the registry (SQLite and
PostgreSQL), merged across windows, and computed on demand from the source; freshness per store against
the schedule, with an injected clock."""

from __future__ import annotations

import math
import re
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from repo_support import write_fs1_repo
from statistics_support import FEATURES, ROWS

import gristmill as gm
from gristmill.compute.statistics import HistogramBin, TopValue


class Clock:
    def __init__(self, now: datetime) -> None:
        self.now = now

    def __call__(self) -> datetime:
        return self.now


def _store(tmp_path: Path, request: pytest.FixtureRequest, registry: str, *, clock: Clock,
           settings: dict[str, Any]) -> gm.FeatureStore:
    (tmp_path / "data").mkdir(exist_ok=True)
    ROWS.to_parquet(tmp_path / "data" / "rows.parquet")
    repo = write_fs1_repo(tmp_path, source=tmp_path / "data" / "rows.parquet", settings=settings, features=FEATURES)
    url, schema = request.getfixturevalue("postgres_schema") if registry == "postgresql" else (None, None)
    store = gm.FeatureStore.init(tmp_path / "store", registry_url=url, registry_schema=schema)
    store = gm.FeatureStore(store.path, clock=clock)
    assert store.apply(repo).ok
    return store


REGISTRIES = ["sqlite", pytest.param("postgresql", marks=pytest.mark.postgres)]


@pytest.mark.parametrize("registry", REGISTRIES)
def test_a_job_records_exact_statistics_per_window_and_a_merged_summary(
        tmp_path: Path, request: pytest.FixtureRequest, registry: str) -> None:
    store = _store(tmp_path, request, registry, clock=Clock(datetime(2024, 1, 10)),
                   settings={"offline_enabled": True})
    [whole] = store.backfill("fs1", 1, start="2024-01-01", end="2024-01-04")
    stats = store.feature_statistics("fs1", 1)
    [window] = stats.windows
    assert (window.start, window.end, window.rows, window.job_id, window.store) == (
        datetime(2024, 1, 1), datetime(2024, 1, 4), 6, whole.id, "offline")
    assert window.newest_event_time == datetime(2024, 1, 3, 10) and not window.sampled
    assert window.computed_at is not None
    f1 = window.feature("f1")
    assert (f1.count, f1.nulls, f1.min, f1.max, f1.mean, f1.distinct) == (5, 1, 1.0, 9.0, 4.0, 5)
    assert f1.null_percent == pytest.approx(100 / 6)
    assert f1.stddev == pytest.approx(math.sqrt(10))          # deviations -3 -2 -1 1 5: 40 / 4
    assert [b.count for b in f1.histogram] == [1, 1, 1, 0, 0, 1, 0, 0, 0, 1]
    assert f1.histogram[0] == HistogramBin(1.0, pytest.approx(1.8), 1)     # type: ignore[arg-type]
    assert (f1.histogram[-1].low, f1.histogram[-1].high) == (pytest.approx(8.2), 9.0)
    n = window.feature("n")
    assert (n.count, n.nulls, n.min, n.max, n.mean, n.distinct) == (5, 1, 10, 40, 22.0, 4)
    assert n.stddev == pytest.approx(math.sqrt(((12 ** 2) * 2 + 2 ** 2 + 8 ** 2 + 18 ** 2) / 4))
    assert [b.count for b in n.histogram] == [2, 0, 0, 1, 0, 0, 1, 0, 0, 1]
    cat = window.feature("cat")
    assert (cat.count, cat.nulls, cat.min, cat.max, cat.distinct, cat.mean, cat.histogram) == (
        5, 1, "x", "y", 2, None, ())
    assert cat.top_values == (TopValue("x", 3), TopValue("y", 2))
    flag = window.feature("flag")
    assert (flag.count, flag.nulls, flag.top_values) == (5, 1, (TopValue(True, 3), TopValue(False, 2)))
    seen = window.feature("seen")
    assert (seen.count, seen.nulls, seen.min, seen.max) == (5, 1, datetime(2023, 11, 20), datetime(2023, 12, 5))
    blob = window.feature("blob")
    assert (blob.count, blob.nulls, blob.min, blob.distinct, blob.top_values) == (3, 3, None, None, ())

    # a window written again replaces the statistics of the window it overlaps; two windows merge exactly
    store.backfill("fs1", 1, start="2024-01-01", end="2024-01-02")
    store.backfill("fs1", 1, start="2024-01-02", end="2024-01-04")
    stats = store.feature_statistics("fs1", 1)
    assert [(w.start.day, w.end.day, w.rows) for w in stats.windows] == [(1, 3 - 1, 2), (2, 4, 4)]
    summary = stats.summary
    assert summary is not None and summary.rows == 6 and summary.newest_event_time == datetime(2024, 1, 3, 10)
    merged = summary.feature("f1")
    assert (merged.count, merged.nulls, merged.min, merged.max) == (5, 1, 1.0, 9.0)
    assert merged.mean == pytest.approx(4.0) and merged.stddev == pytest.approx(math.sqrt(10))
    assert (merged.distinct, merged.histogram, merged.top_values) == (None, (), ())
    assert stats.not_merged == ("distinct", "histogram", "top_values")
    assert summary.feature("seen").min == datetime(2023, 11, 20)
    # windows filtered by [start, end)
    assert [w.start.day for w in store.feature_statistics("fs1", 1, start="2024-01-03").windows] == [2]


def test_online_statistics_describe_the_newest_row_per_key(tmp_path: Path, request: pytest.FixtureRequest) -> None:
    store = _store(tmp_path, request, "sqlite", clock=Clock(datetime(2024, 1, 10)),
                   settings={"offline_enabled": True, "online_enabled": True})
    store.backfill("fs1", 1, start="2024-01-01", end="2024-01-04")
    [online] = store.feature_statistics("fs1", 1, store="online").windows
    # five keys: A's newest row is 01-03 10:00 (f1 = 9), not 01-01 (f1 = 1)
    assert (online.rows, online.store, online.feature("f1").min, online.feature("f1").count) == (5, "online", 2.0, 4)
    assert online.newest_event_time == datetime(2024, 1, 3, 10)


def test_statistics_on_demand_from_the_source_are_bounded(tmp_path: Path, request: pytest.FixtureRequest) -> None:
    store = _store(tmp_path, request, "sqlite", clock=Clock(datetime(2024, 1, 10)), settings={})
    stats = store.feature_statistics("fs1", 1, start="2024-01-01", end="2024-01-04")
    [window] = stats.windows
    assert (window.rows, window.sampled, window.sample_rows, window.job_id, stats.store) == (
        6, True, 100_000, None, None)
    assert window.feature("f1").mean == 4.0 and window.feature("cat").top_values[0] == TopValue("x", 3)
    few = store.feature_statistics("fs1", 1, start="2024-01-01", end="2024-01-04", sample_rows=2).windows[0]
    assert (few.rows, few.sample_rows) == (2, 2)


def test_sampled_statistics_of_rows_that_need_history_come_from_the_window(
        tmp_path: Path, request: pytest.FixtureRequest) -> None:
    """A spec reading history (source_lookback) is computed over the window with it, then sampled: the sample
    is of the window's rows (not of the first source rows, which may all lie in the history)."""
    store = _store(tmp_path, request, "sqlite", clock=Clock(datetime(2024, 1, 10)), settings={})
    spec_file = tmp_path / "repo" / "fs" / "spec" / "FeatureSetSpec.yaml"
    spec_file.write_text(spec_file.read_text() + "source_lookback: {days: 2}\n")
    (tmp_path / "repo" / "fs" / "FeatureSet.yaml").write_text(
        (tmp_path / "repo" / "fs" / "FeatureSet.yaml").read_text().replace("version: '1'", "version: '2'"))
    assert store.apply(tmp_path / "repo").ok
    [window] = store.feature_statistics("fs1", 2, start="2024-01-03", end="2024-01-04", sample_rows=1).windows
    assert (window.rows, window.sampled, window.sample_rows) == (1, True, 1)
    assert window.feature("f1").min in (5.0, 9.0)        # one of the window's two rows, never 01-01's 1.0
    both = store.feature_statistics("fs1", 2, start="2024-01-03", end="2024-01-04", sample_rows=10).windows[0]
    assert (both.rows, both.feature("f1").min, both.feature("f1").max) == (2, 5.0, 9.0)


@pytest.mark.parametrize(("kwargs", "message"), [
    ({}, "start/end (--start/--end): fs1:1 has no materialized statistics in the offline store; pass a window"),
    ({"start": "2024-01-01", "end": "2024-01-04", "sample_rows": 0},
     "sample_rows (--sample-rows): 0 is not a positive whole number"),
    ({"start": "2024-01-04", "end": "2024-01-01"}, "start (2024-01-04 00:00:00) must be before end"),
    ({"store": "cold"}, "store: 'cold' is not a store; use offline or online"),
    ({"start": "yesterday", "end": "2024-01-01"}, "start: 'yesterday' is not an ISO date"),
])
def test_bad_statistics_arguments_say_what_to_pass(tmp_path: Path, request: pytest.FixtureRequest,
                                                   kwargs: dict[str, Any], message: str) -> None:
    store = _store(tmp_path, request, "sqlite", clock=Clock(datetime(2024, 1, 10)), settings={})
    with pytest.raises(gm.GristmillError, match="^" + re.escape(message)):
        store.feature_statistics("fs1", 1, **kwargs)


@pytest.mark.parametrize("registry", REGISTRIES)
def test_freshness_states_follow_the_schedule_and_the_clock(tmp_path: Path, request: pytest.FixtureRequest,
                                                            registry: str) -> None:
    clock = Clock(datetime(2024, 1, 4))
    store = _store(tmp_path, request, registry, clock=clock,
                   settings={"offline_enabled": True, "schedule": {"frequency": "day"}})
    never = store.freshness("fs1", 1)
    assert (never.state, never.store("offline").state, never.store("online").state) == (
        "never materialized", "never materialized", "disabled")
    [job] = store.backfill("fs1", 1, start="2024-01-01", end="2024-01-04")
    fresh = store.freshness("fs1", 1)
    offline = fresh.store("offline")
    assert (fresh.state, offline.newest_event_time, offline.last_job_id, offline.materialized_until) == (
        "fresh", datetime(2024, 1, 3, 10), job.id, datetime(2024, 1, 4))
    assert offline.last_job_finished_at == job.finished_at and offline.next_run == datetime(2024, 1, 5)
    # newest 01-03 10:00 + one day (cadence) + 0 (source delay) + 12 h (grace: half a cadence)
    assert offline.stale_after == datetime(2024, 1, 4, 22)
    clock.now = datetime(2024, 1, 4, 22, 1)
    stale = store.freshness("fs1", 1)
    assert (stale.state, stale.checked_at, stale.store("offline").next_run) == (
        "stale", datetime(2024, 1, 4, 22, 1), datetime(2024, 1, 5))
    assert store.freshness("fs1", 1, grace=timedelta(days=1)).state == "fresh"


def test_freshness_without_a_schedule_is_not_scheduled(tmp_path: Path, request: pytest.FixtureRequest) -> None:
    store = _store(tmp_path, request, "sqlite", clock=Clock(datetime(2024, 1, 4)), settings={"online_enabled": True})
    store.backfill("fs1", 1, start="2024-01-01", end="2024-01-04")
    found = store.freshness("fs1", 1)
    online = found.store("online")
    assert (found.state, online.state, online.next_run, online.stale_after, online.newest_event_time) == (
        "not scheduled", "not scheduled", None, None, datetime(2024, 1, 3, 10))
    assert gm.Freshness.from_dict(found.to_dict()) == found
