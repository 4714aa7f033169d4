"""The server's limits over real HTTP against ``gristmill serve`` subprocesses: a backfill is queued (202)
and run by the server's worker pool, the connected SDK waits for it; jobs a killed server had queued are
failed when a server starts again; offline retrieval refuses bodies and row counts over the limits
(413) and too many retrievals at once (503 with Retry-After)."""

from __future__ import annotations

import io
import os
import subprocess
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import datetime
from pathlib import Path
from typing import Any

import httpx
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import yaml
from cli_support import _command, _environment, gristmill_serve
from redis_servers import free_port
from repo_support import SLOW_SOURCE, set_limits, write_fs1_repo
from served_store import parquet_bytes

import gristmill as gm
from gristmill.auth import AccessRecords
from gristmill.errors import GristmillError

REGISTRIES = ["sqlite", pytest.param("postgresql", marks=pytest.mark.postgres)]
ROWS = pd.DataFrame({"acct": ["A", "A", "B"],
                     "ts": pd.Series([datetime(2024, 1, 8), datetime(2024, 1, 9, 12), datetime(2024, 1, 9)]
                                     ).astype("datetime64[us]"),
                     "f1": [3.0, 5.0, 9.0]})


def _store(tmp_path: Path, request: pytest.FixtureRequest, registry: str, *,
           limits: dict[str, Any] | None = None) -> tuple[gm.FeatureStore, str]:
    """A store with ``fs1`` (three rows) and ``slow`` (a minute per job), and an Owner's token."""
    (tmp_path / "data").mkdir()
    ROWS.to_parquet(tmp_path / "data" / "rows.parquet")
    repo = write_fs1_repo(tmp_path, source=tmp_path / "data" / "rows.parquet",
                          settings={"offline_enabled": True})
    slow = repo / "slow"
    (slow / "spec" / "code").mkdir(parents=True)
    (slow / "FeatureSet.yaml").write_text((repo / "fs" / "FeatureSet.yaml").read_text().replace("fs1", "slow"))
    spec = yaml.safe_load((repo / "fs" / "spec" / "FeatureSetSpec.yaml").read_text())
    spec["source"] = {"type": "custom", "timestamp_column": {"name": "ts"},
                      "source_process_code": {"path": "./code", "process_class": "slow.Slow"},
                      "kwargs": {"release": str(tmp_path / "release")}}
    (slow / "spec" / "FeatureSetSpec.yaml").write_text(yaml.safe_dump(spec))
    (slow / "spec" / "code" / "slow.py").write_text(SLOW_SOURCE)
    url, schema = request.getfixturevalue("postgres_schema") if registry == "postgresql" else (None, None)
    store = gm.FeatureStore.init(tmp_path / "store", registry_url=url, registry_schema=schema)
    if limits:
        set_limits(store.path, limits)
        store = gm.FeatureStore(store.path)
    assert store.apply(repo, check_source=False).ok
    access = AccessRecords(store.materializer.records)
    access.add_principal("owner")
    access.grant("owner", "Owner", by="test")
    return store, access.create_token("owner")


@contextmanager
def _serve(store: gm.FeatureStore) -> Iterator[tuple[subprocess.Popen[str], str]]:
    """``gristmill serve`` on a free port, until the block ends (then stopped, unless the test killed it)."""
    with gristmill_serve(store.path) as served:
        yield served


def _peak_rss_mb(pid: int) -> float:
    """The peak resident memory of a process so far (VmHWM), in MB."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    raise AssertionError("no VmHWM")



# -- backfill ---------------------------------------------------------------------------------------------
@pytest.mark.parametrize("registry", REGISTRIES)
def test_backfill_is_queued_and_the_sdk_waits(tmp_path: Path, request: pytest.FixtureRequest, registry: str) -> None:
    store, token = _store(tmp_path, request, registry, limits={"server_backfill_workers": 3})
    with _serve(store) as (_, url):
        auth = {"Authorization": f"Bearer {token}"}
        started = time.monotonic()
        answer = httpx.post(f"{url}/v1/feature-sets/slow/1/backfill", headers=auth, timeout=30,
                            json={"start": "2024-01-01T00:00:00", "end": "2024-01-02T00:00:00"})
        assert answer.status_code == 202, answer.text                    # not after the minute the job takes
        assert time.monotonic() - started < 10
        [queued] = answer.json()
        assert queued["status"] in ("Queued", "Running") and queued["id"]
        far = httpx.post(f"{url}/v1/feature-sets/fs1/1/backfill", headers=auth, timeout=30,
                         json={"start": "2026-01-01T00:00:00", "end": "9999-12-30T00:00:00", "stores": ["offline"]})
        assert far.status_code == 400 and "--allow-future (allow_future=True)" in far.json()["error"], far.text
        wide = httpx.post(f"{url}/v1/feature-sets/fs1/1/backfill", headers=auth, timeout=30,
                          json={"start": "1900-01-01T00:00:00", "end": "2024-01-01T00:00:00", "allow_future": True})
        assert wide.status_code == 400 and "limits.backfill_max_span_days" in wide.json()["error"], wide.text

        remote = gm.FeatureStore.connect(url, token=token)
        with pytest.raises(GristmillError, match=r"backfill of slow:1: job\(s\) \w+ still queued or running after 1 s"):
            remote.backfill("slow", 1, start="2024-01-05", end="2024-01-06", timeout=1, poll_seconds=0.2)
        [waiting] = remote.backfill("fs1", 1, start="2024-01-01", end="2024-01-10", wait=False)
        assert waiting.status.value in ("Queued", "Running")
        [done] = remote.backfill("fs1", 1, start="2023-12-01", end="2024-01-01", poll_seconds=0.2)
        assert done.status.value == "Completed", done.error            # the third worker runs them


@pytest.mark.parametrize("registry", REGISTRIES)
def test_jobs_of_a_killed_server_are_failed_when_a_server_starts(tmp_path: Path, request: pytest.FixtureRequest,
                                                                 registry: str) -> None:
    store, token = _store(tmp_path, request, registry)
    auth = {"Authorization": f"Bearer {token}"}
    with _serve(store) as (server, url):
        ids = [httpx.post(f"{url}/v1/feature-sets/slow/1/backfill", headers=auth, timeout=30,
                          json={"start": f"2024-01-0{day}T00:00:00", "end": f"2024-01-0{day + 1}T00:00:00"}
                          ).json()[0]["id"] for day in (1, 3)]
        deadline = time.monotonic() + 30
        while store.get_job(ids[0]).status.value != "Running":
            assert time.monotonic() < deadline, "the first job did not start"
            time.sleep(0.1)
        server.kill()                                                    # kill -9: one job running, one queued
        server.wait(timeout=30)
    assert [store.get_job(i).status.value for i in ids] == ["Running", "Queued"]
    with _serve(store) as (_, url):                                      # the next server reaps them at start-up
        jobs = [httpx.get(f"{url}/v1/jobs/{i}", headers=auth).json() for i in ids]
    assert [j["status"] for j in jobs] == ["Failed", "Failed"]
    assert all("its process has exited" in j["error"] and "--job-id" in j["error"] for j in jobs)
    assert [(i.start.day, i.end.day, i.status.value) for i in store.data_intervals("slow", 1)["offline"]] == [
        (1, 2, "Incomplete"), (2, 3, "None"), (3, 4, "Incomplete")]


# -- offline retrieval ------------------------------------------------------------------------------------
def _offline(url: str, token: str, body: Any, **headers: str) -> httpx.Response:
    return httpx.post(f"{url}/v1/offline/features", params={"features": "fs1:1:f1", "timestamp_column": "ts"},
                      content=body, timeout=60,
                      headers={"Authorization": f"Bearer {token}", "Content-Type": "application/vnd.apache.parquet",
                               **headers})


@pytest.mark.parametrize("registry", REGISTRIES)
def test_offline_requests_are_bounded(tmp_path: Path, request: pytest.FixtureRequest, registry: str) -> None:
    store, token = _store(tmp_path, request, registry,
                          limits={"offline_request_max_bytes": 200_000, "offline_request_max_rows": 1000})
    [job] = store.backfill("fs1", 1, start="2024-01-01", end="2024-01-10")
    assert job.status.value == "Completed", job.error
    small = parquet_bytes(pa.table({"acct": ["A", "B"],
                                    "ts": pa.array([datetime(2024, 1, 10)] * 2, pa.timestamp("us"))}))
    # 20 million identical rows: a few hundred KB of zstd Parquet, gigabytes once read
    attack = io.BytesIO()
    chunk = pa.table({"acct": pa.array(["A"] * 1_000_000).dictionary_encode(),
                      "ts": pa.array([datetime(2024, 1, 10)] * 1_000_000, pa.timestamp("us"))})
    with pq.ParquetWriter(attack, chunk.schema, compression="zstd") as writer:
        for _ in range(20):
            writer.write_table(chunk)
    assert len(attack.getvalue()) < 200_000
    with _serve(store) as (server, url):
        ok = _offline(url, token, small)
        assert ok.status_code == 200, ok.text
        assert pq.read_table(io.BytesIO(ok.content)).column("f1").to_pylist() == [5.0, 9.0]
        before = _peak_rss_mb(server.pid)
        rows = _offline(url, token, attack.getvalue())
        assert rows.status_code == 413, rows.text
        assert rows.json()["error"] == ("request body: the observations have 20,000,000 rows; one request may send "
                                        "at most 1,000 (limits.offline_request_max_rows in featurestore.yaml): split "
                                        "them into several requests")
        assert _peak_rss_mb(server.pid) < before + 100                  # the rows were never read
        big = _offline(url, token, b"x" * 300_000)
        assert big.status_code == 413 and "of 300,000 bytes" in big.json()["error"]
        assert "at most 200,000 bytes (limits.offline_request_max_bytes" in big.json()["error"]

        def endless() -> Iterator[bytes]:                                 # no Content-Length: counted as it streams
            for _ in range(1000):
                yield b"x" * 10_000

        streamed = _offline(url, token, endless())
        assert streamed.status_code == 413, streamed.text
        assert "at most 200,000 bytes" in streamed.json()["error"]
        assert _offline(url, token, small).status_code == 200               # the server is fine


def test_too_many_retrievals_at_once_are_answered_503(tmp_path: Path, request: pytest.FixtureRequest) -> None:
    store, token = _store(tmp_path, request, "sqlite",
                          limits={"server_retrievals_at_once": 1, "server_retrieval_wait_seconds": 0})
    small = parquet_bytes(pa.table({"acct": ["A"], "ts": pa.array([datetime(2024, 1, 10)], pa.timestamp("us"))}))
    with _serve(store) as (_, url):
        holder = threading.Thread(target=lambda: first.update(r=httpx.post(
            f"{url}/v1/offline/features", params={"features": "slow:1:f1", "timestamp_column": "ts"},
            content=small, timeout=90, headers={"Authorization": f"Bearer {token}"})))
        first: dict[str, httpx.Response] = {}
        holder.start()                       # computes the slow source: holds the only slot until released
        try:
            time.sleep(1.5)
            busy = _offline(url, token, small)
            assert busy.status_code == 503, busy.text
            assert busy.headers["retry-after"] == "1"
            assert "limits.server_retrievals_at_once" in busy.json()["error"]
        finally:
            (tmp_path / "release").touch()
            holder.join(timeout=60)
        assert first["r"].status_code == 200, first["r"].text
        assert _offline(url, token, small).status_code == 200


def test_limits_are_validated(tmp_path: Path, request: pytest.FixtureRequest) -> None:
    store, _ = _store(tmp_path, request, "sqlite")
    config_file = store.path / "featurestore.yaml"
    config = yaml.safe_load(config_file.read_text())
    config["limits"]["server_retrievals_at_once"] = 0
    config_file.write_text(yaml.safe_dump(config))
    served = subprocess.run([*_command(), "serve", "--port", str(free_port()), "--store", str(store.path)],
                            env=_environment(), capture_output=True, text=True, timeout=60, check=False)
    assert served.returncode == 2 and "Traceback" not in served.stderr
    assert "limits.server_retrievals_at_once" in served.stderr and "featurestore.yaml" in served.stderr
    assert os.path.exists(config_file)
