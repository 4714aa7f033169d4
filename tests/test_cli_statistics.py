"""``gristmill stats`` and ``gristmill status`` (freshness) as real subprocesses: tables, JSON, and bad input
as one line with exit code 2."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from cli_support import assert_ok, assert_user_error, gristmill, run_concurrently
from repo_support import write_fs1_repo
from statistics_support import FEATURES, ROWS

import gristmill as gm


@pytest.fixture(scope="module")
def store(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("stats")
    (root / "data").mkdir()
    ROWS.to_parquet(root / "data" / "rows.parquet")
    repo = write_fs1_repo(root, source=root / "data" / "rows.parquet", features=FEATURES,
                          settings={"offline_enabled": True, "schedule": {"frequency": "day"}})
    with gm.FeatureStore.init(root / "store") as setup:
        assert setup.apply(repo).ok
    return root / "store"


def test_stats_before_and_after_materialization(store: Path) -> None:
    s = ["--store", store]
    ran = run_concurrently({
        "nothing recorded": ["stats", "fs1:1", *s],
        "sampled": ["stats", "fs1:1", "--start", "2024-01-01", "--end", "2024-01-04", "--sample-rows", "4", "--json",
                    *s],
        "bad sample": ["stats", "fs1:1", "--start", "2024-01-01", "--end", "2024-01-04", "--sample-rows", "0", *s],
        "bad start": ["stats", "fs1:1", "--start", "soon", "--end", "2024-01-04", *s],
        "no version": ["stats", "fs1", *s],
        "status before": ["status", "--json", *s],
    })
    assert_user_error(ran["nothing recorded"], "--start/--end", "no materialized statistics", "sample_rows")
    assert_user_error(ran["bad sample"], "--sample-rows", "0 is not a positive whole number")
    assert_user_error(ran["bad start"], "start: 'soon' is not an ISO date")
    assert_user_error(ran["no version"], "'fs1' needs a version")
    assert_ok(ran["sampled"])
    sampled = json.loads(ran["sampled"].stdout)
    assert (sampled["store"], sampled["windows"][0]["rows"], sampled["windows"][0]["sampled"],
            sampled["windows"][0]["sample_rows"]) == (None, 4, True, 4)
    assert [(r["store"], r["state"]) for r in json.loads(ran["status before"].stdout)] == [
        ("offline", "never materialized"), ("online", "disabled")]

    assert_ok(gristmill("backfill", "fs1:1", "--start", "2024-01-01", "--end", "2024-01-04", *s))
    ran = run_concurrently({"table": ["stats", "fs1:1", *s], "json": ["stats", "fs1:1", "--json", *s],
                            "status": ["status", "--json", *s], "status one": ["status", "fs1:1", *s]})
    table = ran["table"]
    assert_ok(table)
    flat = " ".join(table.stdout.split())
    assert "fs1:1: offline store: 1 materialized window(s)" in flat and "6 rows" in flat, flat
    assert "cat: most frequent x: 3, y: 2" in flat and "[1, 1.8): 1" in flat
    window = json.loads(ran["json"].stdout)["windows"][0]
    f1 = next(f for f in window["features"] if f["name"] == "f1")
    assert (f1["count"], f1["nulls"], f1["min"], f1["max"], f1["mean"]) == (5, 1, 1.0, 9.0, 4.0)
    # the real clock is years after 2024-01-03: the data is stale for a daily schedule
    [offline, online] = json.loads(ran["status"].stdout)
    assert (offline["state"], offline["newest_event"], online["state"]) == ("stale", "2024-01-03 10:00:00", "disabled")
    assert_ok(ran["status one"])
    assert "stale" in ran["status one"].stdout and "Complete" in ran["status one"].stdout
