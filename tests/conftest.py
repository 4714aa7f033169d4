"""Fixtures shared by every test folder (this file also puts ``tests/`` on ``sys.path``, so helper modules
such as ``redis_servers`` import from any folder)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from redis_servers import RedisClusterServers


@pytest.fixture(scope="session")
def redis_cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RedisClusterServers]:
    """A private three-primary Redis Cluster, started once per test session (per xdist worker)."""
    cluster = RedisClusterServers(Path(tmp_path_factory.mktemp("redis-cluster")))
    try:
        cluster.start()
        yield cluster
    finally:
        cluster.stop()
