"""The Spark cluster of the tests (tests/spark_cluster.py): a store configured with ``engine.remote`` on the
cluster retrieves what the DuckDB engine retrieves, computed from source and from materialized data; and a
Spark Connect server killed in the middle of a computation makes the client fail with a clear error within a
bounded time, after which a restarted server serves again.

The Connect clients run in subprocesses: this process may hold a classic Spark session (other tests of the
same xdist worker), and classic and Connect sessions cannot share one Python process."""

from __future__ import annotations

import json
import textwrap
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pandas as pd
import pytest
import yaml
from repo_support import write_fs1_repo
from spark_cluster import SparkCluster, run_python

import gristmill as gm

pytestmark = pytest.mark.xdist_group("spark_cluster")


def _times(*values: str) -> pd.Series:
    return pd.Series(pd.to_datetime(list(values), format="ISO8601")).astype("datetime64[us]")


ROWS = pd.DataFrame({"acct": ["A", "A", "A", "B", "C"],
                     "ts": _times("2024-01-01", "2024-01-02", "2024-01-03", "2024-01-01 12:00", "2024-01-02 06:00"),
                     "f1": [1.0, 2.0, 3.0, 10.0, 7.0]})
OBSERVATIONS = pd.DataFrame({"acct": ["A", "A", "A", "B", "C", "D"],
                             "ts": _times("2024-01-02", "2024-01-02 12:00", "2023-12-31", "2024-01-05",
                                          "2024-01-02 07:00", "2024-01-02")})

# A code transformation that passes rows through, but inside a Spark task (never on the driver, where its
# output columns are learnt) and while the flag file exists, first says so and sleeps: a computation that
# is surely running on the executors when the test kills the Connect server.
SLOW_CODE = '''
import os
import time
from pathlib import Path


class SlowPassThrough:
    def transform(self, frame):
        from pyspark import TaskContext

        if TaskContext.get() is not None and os.path.exists({flag!r}):
            Path({started!r}).touch()
            time.sleep(300)
        return frame
'''

#: A Connect client: opens the store (its featurestore.yaml names the cluster), retrieves each request
#: (feature, materialized_only) and prints one JSON line of rows or of the error.
CLIENT = textwrap.dedent("""
    import json, sys
    import pandas as pd
    import gristmill as gm
    import gristmill.compute.spark.session as spark_session

    store_path, observations_path, retry_seconds, *requests = sys.argv[1:]
    spark_session.CONNECT_RETRY_SECONDS = float(retry_seconds)
    store = gm.FeatureStore(store_path)
    observations = pd.read_parquet(observations_path)
    answers = {"engine": store.engine.name, "connect": type(store.engine.spark).__module__}
    for request in requests:
        feature, _, mode = request.partition("@")
        print("running", request, file=sys.stderr, flush=True)
        try:
            frame = store.get_offline_features([feature], observations, "ts",
                                               materialized_only=mode == "materialized").to_pandas()
        except gm.GristmillError as exc:
            print(json.dumps({"error": str(exc)}), flush=True)
            sys.exit(3)
        answers[request] = [[None if pd.isna(v) else str(v) for v in r] for r in frame.itertuples(index=False)]
    print(json.dumps(answers), flush=True)
""")


@dataclass
class ClusterStore:
    """A store whose ``featurestore.yaml`` names the cluster (``engine.remote``), with the DuckDB engine's
    answers taken before it was switched."""

    path: Path
    observations: Path
    flag: Path          # while it exists, slow:1 sleeps in its Spark tasks
    started: Path       # touched by a Spark task of slow:1 when it starts sleeping
    expected: dict[str, list[list[str | None]]]

    def client(self, *requests: str, retry_seconds: float = 3.0, timeout: float = 240) -> dict[str, Any]:
        done = run_python(CLIENT, [str(self.path), str(self.observations), str(retry_seconds), *requests],
                          timeout=timeout)
        assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-3000:]
        answer: dict[str, Any] = json.loads(done.stdout.strip().splitlines()[-1])
        return answer


def _text_rows(frame: pd.DataFrame) -> list[list[str | None]]:
    return [[None if pd.isna(v) else str(v) for v in r] for r in frame.itertuples(index=False)]


@pytest.fixture(scope="module")
def cluster_store(spark_cluster: SparkCluster, tmp_path_factory: pytest.TempPathFactory) -> Iterator[ClusterStore]:
    root = tmp_path_factory.mktemp("cluster-store")
    (root / "data").mkdir()
    ROWS.to_parquet(root / "data" / "rows.parquet", index=False)
    OBSERVATIONS.to_parquet(root / "observations.parquet", index=False)
    repo = write_fs1_repo(root, source=root / "data" / "rows.parquet", settings={"offline_enabled": True})
    flag, started = root / "slow.flag", root / "slow.started"
    (repo / "slow" / "spec" / "code").mkdir(parents=True)
    (repo / "slow" / "spec" / "code" / "slow.py").write_text(SLOW_CODE.format(flag=str(flag), started=str(started)))
    (repo / "slow" / "FeatureSet.yaml").write_text(yaml.safe_dump({
        "name": "slow", "version": "1", "specification": {"path": "./spec"}, "entities": ["account:1"]}))
    (repo / "slow" / "spec" / "FeatureSetSpec.yaml").write_text(yaml.safe_dump({
        "source": {"type": "parquet", "path": str(root / "data" / "rows.parquet"), "timestamp_column": {"name": "ts"}},
        "index_columns": [{"name": "acct", "type": "string"}], "features": [{"name": "f1", "type": "double"}],
        "feature_transformation": {"transformation_code": {"path": "./code",
                                                           "transformer_class": "slow.SlowPassThrough"}}}))
    store = gm.FeatureStore.init(root / "store")
    plan = store.apply(repo)
    assert plan.ok, str(plan)
    [job] = store.backfill("fs1", 1, start="2024-01-01", end="2024-01-06")
    assert job.status.value == "Completed", job.error
    expected = {feature: _text_rows(store.get_offline_features([feature], OBSERVATIONS, "ts").to_pandas())
                for feature in ("fs1:1:f1", "slow:1:f1")}
    store.close()
    config_file = root / "store" / "featurestore.yaml"
    config = yaml.safe_load(config_file.read_text())
    config["engine"] = {"type": "spark", "remote": spark_cluster.remote}
    config_file.write_text(yaml.safe_dump(config))
    yield ClusterStore(root / "store", root / "observations.parquet", flag, started, expected)


def test_retrieval_on_the_cluster_matches_duckdb(cluster_store: ClusterStore) -> None:
    """Computed from source and read from the materialized offline store, through engine.remote."""
    answer = cluster_store.client("fs1:1:f1", "fs1:1:f1@materialized", "slow:1:f1")
    assert answer["engine"] == "spark" and answer["connect"].startswith("pyspark.sql.connect")
    expected = cluster_store.expected["fs1:1:f1"]
    assert [row[2] for row in expected] == ["2.0", "2.0", None, "10.0", "7.0", None]
    assert answer["fs1:1:f1"] == expected
    assert answer["fs1:1:f1@materialized"] == expected
    assert answer["slow:1:f1"] == cluster_store.expected["slow:1:f1"] == expected


def test_connect_server_killed_during_a_computation(spark_cluster: SparkCluster,
                                                    cluster_store: ClusterStore) -> None:
    """The client fails with a clear error within its retry time plus a margin (Spark's own client retried
    for over ten minutes); a Connect server restarted on the same port serves new clients."""
    import subprocess
    import sys

    cluster_store.flag.touch()
    cluster_store.started.unlink(missing_ok=True)
    client = subprocess.Popen([sys.executable, "-c", CLIENT, str(cluster_store.path), str(cluster_store.observations),
                               "3", "slow:1:f1"], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 120
        while not cluster_store.started.exists():
            assert client.poll() is None, client.communicate()[1][-3000:]
            assert time.monotonic() < deadline, "the slow computation did not start on the executors in 120 s"
            time.sleep(0.1)
        spark_cluster.kill_connect_server()
        killed = time.monotonic()
        assert spark_cluster.processes()["connect"] == []
        out, err = client.communicate(timeout=90)
        waited = time.monotonic() - killed
    finally:
        client.kill()
        cluster_store.flag.unlink(missing_ok=True)
    assert client.returncode == 3, err[-3000:]
    error = json.loads(out.strip().splitlines()[-1])["error"]
    assert "the Spark Connect server stopped answering (retried for 3 s" in error, error
    assert f"127.0.0.1:{spark_cluster.connect_port}" in error and "Connection refused" in error, error
    assert "engine.remote in featurestore.yaml" in error and "\n" not in error, error
    assert waited < 60, f"the client took {waited:.0f} s to give up on a dead server"

    spark_cluster.restart_connect_server()
    answer = cluster_store.client("fs1:1:f1@materialized")     # the cheapest retrieval: the new server serves
    assert answer["fs1:1:f1@materialized"] == cluster_store.expected["fs1:1:f1"]
