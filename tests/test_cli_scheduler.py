"""``gristmill scheduler`` as real subprocesses: two workers started at once run each due run once, and
user errors are one line. The CLI uses the real clock, so the feature set runs daily and the test only
relies on "a run is due now", never on which one."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pandas as pd
from cli_support import assert_ok, assert_user_error, describe, gristmill, run_concurrently
from repo_support import write_fs1_repo

import gristmill as gm


def test_two_workers_once_run_the_due_run_once(tmp_path: Path) -> None:
    now = datetime.now(UTC).replace(tzinfo=None)
    data = tmp_path / "data"
    data.mkdir()
    times = [now - timedelta(hours=h) for h in range(1, 48)]
    pd.DataFrame({"acct": ["A"] * len(times), "ts": pd.Series(times).astype("datetime64[us]"),
                  "f1": [float(i) for i in range(len(times))]}).to_parquet(data / "rows.parquet")
    repo = write_fs1_repo(tmp_path, source=data / "rows.parquet", settings={
        "offline_enabled": True, "online_enabled": True,
        "schedule": {"type": "recurrence", "frequency": "day", "interval": 1}})
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
    status = gristmill("status", "fs1:1", "--store", store)
    assert_ok(status)
    flat = " ".join(status.stdout.split())
    assert "schedule: every 1 day(s)" in flat and "last run 20" in flat and "next run 20" in flat, flat
    online = json.loads(gristmill("online", "get", "--features", "fs1:1:f1", "--key", "acct=A", "--json",
                                  "--store", store).stdout)
    assert online[0]["f1"] is not None                 # the newest row before the run's window end


def test_scheduler_user_errors(tmp_path: Path) -> None:
    gm.FeatureStore.init(tmp_path / "store")
    assert_user_error(gristmill("scheduler", "--once", "--store", tmp_path / "nowhere"), "not a feature store")
    assert_user_error(gristmill("scheduler", "--once", "--lease", "1", "--store", tmp_path / "store"),
                      "--lease 1", "at least 5 seconds")
    assert_user_error(gristmill("scheduler", "--poll", "0", "--store", tmp_path / "store"), "--poll 0")


def test_sigterm_cancels_the_running_job(tmp_path: Path) -> None:
    """A worker stopped with SIGTERM while a job runs cancels that job (window Incomplete), then exits 130."""
    import signal
    import subprocess
    import time

    from cli_support import _command, _environment

    code = tmp_path / "repo" / "fs" / "spec" / "code"
    code.mkdir(parents=True)
    started = tmp_path / "started"
    (code / "slow.py").write_text(
        "import time\nfrom pathlib import Path\nimport pandas as pd\n"
        "class Slow:\n"
        "    def process(self, start_time, end_time, *, marker):\n"
        "        Path(marker).touch()\n"
        "        time.sleep(60)\n"
        "        return pd.DataFrame({'acct': ['A'], 'ts': [start_time], 'f1': [1.0]})\n")
    repo = write_fs1_repo(tmp_path, source={
        "type": "custom", "source_process_code": {"path": "code", "process_class": "slow.Slow"},
        "kwargs": {"marker": str(started)}}, settings={
        "offline_enabled": True, "schedule": {"type": "recurrence", "frequency": "day", "interval": 1}})
    store = tmp_path / "store"
    gm.FeatureStore.init(store)
    assert_ok(gristmill("apply", repo, "--store", store, "--skip-source-check"))   # the source is slow on purpose
    worker = subprocess.Popen([*_command(), "scheduler", "--store", str(store)], env=_environment(),
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 60
    while not started.exists():
        assert worker.poll() is None, worker.communicate()
        assert time.monotonic() < deadline, "the job never started"
        time.sleep(0.05)
    worker.send_signal(signal.SIGTERM)
    out, err = worker.communicate(timeout=30)
    assert worker.returncode == 130, (out, err)
    assert "Traceback" not in out + err
    assert "scheduler stopped (interrupted)" in " ".join(err.split())
    [job] = gm.FeatureStore(store).list_jobs()
    assert job.status.value == "Cancelled" and "stopped while the job ran" in (job.error or "")
    statuses = [i.status.value for i in gm.FeatureStore(store).data_intervals("fs1", 1)["offline"]]
    assert statuses == ["Incomplete"]
