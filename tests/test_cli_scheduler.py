"""``gristmill scheduler`` as real subprocesses: two workers started at once run each due run once, and
user errors are one line. The CLI uses the real clock, so the feature set runs daily and the test only
relies on "a run is due now", never on which one."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pandas as pd
import yaml
from cli_support import assert_ok, assert_user_error, describe, gristmill, run_concurrently

import gristmill as gm


def test_two_workers_once_run_the_due_run_once(tmp_path: Path) -> None:
    now = datetime.now(UTC).replace(tzinfo=None)
    data = tmp_path / "data"
    data.mkdir()
    times = [now - timedelta(hours=h) for h in range(1, 48)]
    pd.DataFrame({"acct": ["A"] * len(times), "ts": pd.Series(times).astype("datetime64[us]"),
                  "f1": [float(i) for i in range(len(times))]}).to_parquet(data / "rows.parquet")
    repo = tmp_path / "repo"
    (repo / "fs" / "spec").mkdir(parents=True)
    (repo / "account.yaml").write_text("name: account\nversion: '1'\nindex_columns: [{name: acct, type: string}]\n")
    (repo / "fs" / "FeatureSet.yaml").write_text(yaml.safe_dump({
        "name": "fs1", "version": "1", "specification": {"path": "./spec"}, "entities": ["account:1"],
        "materialization_settings": {"offline_enabled": True, "online_enabled": True,
                                     "schedule": {"type": "recurrence", "frequency": "day", "interval": 1}}}))
    (repo / "fs" / "spec" / "FeatureSetSpec.yaml").write_text(yaml.safe_dump({
        "source": {"type": "parquet", "path": str(data / "rows.parquet"), "timestamp_column": {"name": "ts"}},
        "index_columns": [{"name": "acct", "type": "string"}],
        "features": [{"name": "f1", "type": "double"}]}))
    store = tmp_path / "store"
    gm.FeatureStore.init(store)
    assert_ok(gristmill("apply", repo, "--store", store))
    ran = run_concurrently({f"w{i}": ["scheduler", "--once", "--worker", f"w{i}", "--store", store] for i in (1, 2)})
    for result in ran.values():
        assert_ok(result)
        assert "scheduler worker w" in result.stderr
    printed = "".join(r.stdout for r in ran.values())
    assert printed.count("Completed") == 1, describe(ran["w1"]) + describe(ran["w2"])   # one worker ran it
    assert "nothing due" in printed                                                     # the other found none
    jobs = json.loads(gristmill("jobs", "--json", "--store", store).stdout)
    assert [(j["feature_set"], j["status"], j["stores"]) for j in jobs] == [("fs1:1", "Completed", "offline+online")]
    online = json.loads(gristmill("online", "get", "--features", "fs1:1:f1", "--key", "acct=A", "--json",
                                  "--store", store).stdout)
    assert online[0]["f1"] is not None                 # the newest row before the run's window end


def test_scheduler_user_errors(tmp_path: Path) -> None:
    gm.FeatureStore.init(tmp_path / "store")
    assert_user_error(gristmill("scheduler", "--once", "--store", tmp_path / "nowhere"), "not a feature store")
    assert_user_error(gristmill("scheduler", "--once", "--lease", "1", "--store", tmp_path / "store"),
                      "--lease 1", "at least 5 seconds")
    assert_user_error(gristmill("scheduler", "--poll", "0", "--store", tmp_path / "store"), "--poll 0")
