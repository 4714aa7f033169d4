"""Fixtures shared by every test folder (this file also puts ``tests/`` on ``sys.path``, so helper modules
such as ``redis_servers`` import from any folder)."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
from object_store import S3Server
from postgres import POSTGRES_URL, drop_schema, postgres_available
from redis_servers import RedisClusterServers
from spark_cluster import SparkCluster


@pytest.fixture(scope="session")
def redis_cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RedisClusterServers]:
    """A private three-primary Redis Cluster, started once per test session (per xdist worker)."""
    cluster = RedisClusterServers(Path(tmp_path_factory.mktemp("redis-cluster")))
    try:
        cluster.start()
        yield cluster
    finally:
        cluster.stop()


@pytest.fixture(scope="session")
def postgres_ready() -> None:
    if not postgres_available():
        # Not a skip: CI and every dev machine run PostgreSQL; a missing server must fail loudly.
        pytest.fail(f"PostgreSQL not reachable at {POSTGRES_URL}; start it (see .ci/run)")


@pytest.fixture
def postgres_schema(postgres_ready: None) -> Iterator[tuple[str, str]]:
    """(URL, schema): a fresh PostgreSQL schema for one test, dropped afterwards."""
    schema = f"gm_test_{uuid.uuid4().hex[:12]}"
    yield POSTGRES_URL, schema
    drop_schema(schema)


@pytest.fixture(scope="session")
def s3_server() -> Iterator[S3Server]:
    """An S3-compatible server (moto, its own process) with an empty bucket, once per session."""
    server = S3Server()
    try:
        server.start()
        yield server
    finally:
        server.stop()


SPARK_CLUSTER_GROUP = "spark_cluster"


@pytest.hookimpl(wrapper=True)
def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> Iterator[None]:
    """Every test that uses the Spark cluster runs in one xdist worker (``--dist loadgroup``, pyproject.toml),
    so one run starts one cluster."""
    for item in items:
        if "spark_cluster" in getattr(item, "fixturenames", ()):
            item.add_marker(pytest.mark.xdist_group(SPARK_CLUSTER_GROUP))
    result = yield
    if config.getoption("loadgroup", False):        # an xdist worker with --dist loadgroup
        for item in items:
            _group_in_node_id(item)
    return result


def _group_in_node_id(item: pytest.Item) -> None:
    """Append ``@group`` to the test's id, as pytest-xdist (3.8) does by setting ``item._nodeid``: pytest 9.2
    keeps the id in ``item._id``, so xdist's suffix is lost and its groups are silently ignored."""
    names = sorted({str(m.args[0] if m.args else m.kwargs.get("name", "default"))
                    for m in item.iter_markers("xdist_group")})
    if not names or "@" in item.nodeid:
        return
    grouped = f"{item.nodeid}@{'_'.join(names)}"
    if hasattr(item, "_id"):
        from _pytest.nodeid import NodeId

        item._id = NodeId.parse(grouped)
    else:
        item._nodeid = grouped


@pytest.fixture(scope="session")
def spark_cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SparkCluster]:
    """A Spark standalone cluster (master, one worker, a Spark Connect server; ``.remote`` is its
    ``sc://`` URL), started once per test session and stopped at its end (tests/spark_cluster.py)."""
    cluster = SparkCluster(Path(tmp_path_factory.mktemp("spark-cluster")))
    cluster.start()          # stops what it started when it fails
    try:
        yield cluster
    finally:
        cluster.stop()       # raises when a process of the cluster outlives it
