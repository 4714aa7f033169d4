"""The Spark engine over Spark Connect: the tests' Spark cluster (tests/spark_cluster.py: a standalone master,
a worker and a Spark Connect server started from the pyspark wheel once per test run), configured as
``engine: {type: spark, remote: sc://...}`` in featurestore.yaml, answers a retrieval exactly as the DuckDB
engine does.

Classic and Connect sessions cannot share one Python process, so the Connect client runs in a
subprocess; this test process never opens a Connect session."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
from conftest import BuildStore, fs1, rows, table
from spark_cluster import SparkCluster

pytestmark = pytest.mark.xdist_group("spark_cluster")


@pytest.fixture(scope="module")
def connect_server(spark_cluster: SparkCluster) -> str:
    """``sc://127.0.0.1:P`` of the cluster's Spark Connect server."""
    return spark_cluster.remote


CLIENT = textwrap.dedent("""
    import json, sys
    from pathlib import Path
    import pandas as pd
    import yaml
    import gristmill as gm

    store_path, remote, observations_path = sys.argv[1:4]
    config_file = Path(store_path) / "featurestore.yaml"
    config = yaml.safe_load(config_file.read_text())
    config["engine"] = {"type": "spark", "remote": remote}
    config_file.write_text(yaml.safe_dump(config))
    store = gm.FeatureStore(store_path)
    observations = pd.read_parquet(observations_path)
    result = store.get_offline_features(["fs1:1:f1"], observations, "ts")
    frame = result.to_pandas()
    print(json.dumps({"columns": list(frame.columns),
                      "rows": [[None if pd.isna(v) else str(v) for v in r] for r in frame.itertuples(index=False)],
                      "engine": store.engine.name, "connect": type(store.engine.spark).__module__}))
""")


def test_retrieval_over_spark_connect_matches_duckdb(connect_server: str, build_store: BuildStore,
                                                     tmp_path: Path) -> None:
    source = table("acct ts f1", ("A", "2024-01-01 00:00", 1.0), ("A", "2024-01-02 00:00", 2.0),
                   ("A", "2024-01-03 00:00", 3.0), ("B", "2024-01-01 12:00", 10.0))
    observations = table("acct ts obs_id", ("A", "2024-01-02 00:00", "o1"), ("A", "2024-01-02 12:00", "o2"),
                         ("A", "2023-12-31 00:00", "o3"), ("B", "2024-01-05 00:00", "o4"),
                         ("C", "2024-01-02 00:00", "o5"))
    repo = build_store(fs1(source))
    expected = repo.store.get_offline_features(["fs1:1:f1"], observations, "ts").to_pandas()
    repo.close()
    observations_path = tmp_path / "observations.parquet"
    observations.to_parquet(observations_path, index=False)
    script = tmp_path / "client.py"
    script.write_text(CLIENT, encoding="utf-8")
    done = subprocess.run([sys.executable, str(script), str(repo.root / "store"), connect_server,
                           str(observations_path)], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    answer = json.loads(done.stdout.strip().splitlines()[-1])
    assert answer["engine"] == "spark" and answer["connect"].startswith("pyspark.sql.connect")
    assert answer["columns"] == list(expected.columns)
    assert answer["rows"] == [[None if v is None else str(v) for v in r] for r in rows(expected)]
    assert [r[3] for r in answer["rows"]] == ["2.0", "2.0", None, "10.0", None]
