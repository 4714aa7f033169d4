"""The Redis servers of the tests: the shared one (``REDIS_URL``: ``GRISTMILL_TEST_REDIS_URL``, by default
``redis://127.0.0.1:6379/0``; tests use fresh key prefixes in it), and private ones: a standalone
``redis-server`` that can be killed, and a Redis Cluster of three primaries, each on free ports under a
temporary folder (``GRISTMILL_TEST_PORTS``, e.g. ``20000-30000``, picks the port range; by default any
free port). The private ones need the ``redis-server`` and ``redis-cli`` binaries (installed with Redis;
`.ci/run` relies on the machine's Redis)."""

from __future__ import annotations

import os
import random
import shutil
import socket
import subprocess
import time
from pathlib import Path

import redis

REDIS_URL = os.environ.get("GRISTMILL_TEST_REDIS_URL", "redis://127.0.0.1:6379/0")


def _port_range() -> tuple[int, int] | None:
    """``GRISTMILL_TEST_PORTS=LOW-HIGH``: where the tests' own servers listen (``None``: anywhere free)."""
    value = os.environ.get("GRISTMILL_TEST_PORTS", "").strip()
    if not value:
        return None
    low, _, high = value.partition("-")
    try:
        ports = int(low), int(high)
    except ValueError:
        ports = (0, 0)
    if not 1024 <= ports[0] <= ports[1] <= 65535:
        raise ValueError(f"GRISTMILL_TEST_PORTS={value!r} must look like 20000-30000 (ports 1024 to 65535)")
    return ports


def free_port(*, with_bus: bool = False) -> int:
    """A free TCP port; ``with_bus``: also port + 10000 (a cluster node's bus), so below 55536."""
    ports = _port_range() or (20000, 55000)
    if with_bus:
        ports = (ports[0], min(ports[1], 55535))
    elif _port_range() is None:
        ports = None
    while True:
        with socket.socket() as probe:
            try:
                probe.bind(("127.0.0.1", 0 if ports is None else random.randrange(ports[0], ports[1] + 1)))
            except OSError:                          # taken: draw again
                continue
            port = int(probe.getsockname()[1])
        if not with_bus:
            return port
        with socket.socket() as bus:
            try:
                bus.bind(("127.0.0.1", port + 10000))
            except OSError:
                continue
        return port


def _binary(name: str) -> str:
    binary = shutil.which(name)
    assert binary is not None, f"{name} must be installed for these tests (it comes with Redis)"
    return binary


class RedisServer:
    """A private ``redis-server`` on a free port. By default its append-only file survives a kill (fsync
    always), as a production Redis with persistence does."""

    def __init__(self, folder: Path, *, extra_args: tuple[str, ...] = (), persistent: bool = True,
                 cluster_bus: bool = False) -> None:
        self.binary = _binary("redis-server")
        self.folder = folder
        self.folder.mkdir(parents=True, exist_ok=True)
        self.port = free_port(with_bus=cluster_bus)
        self.extra_args = extra_args
        self.persistent = persistent
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def client(self) -> redis.Redis:
        return redis.Redis(host="127.0.0.1", port=self.port, socket_connect_timeout=2)

    def start(self) -> None:
        persistence = ["--appendonly", "yes", "--appendfsync", "always"] if self.persistent else ["--appendonly", "no"]
        self.process = subprocess.Popen(
            [self.binary, "--port", str(self.port), "--bind", "127.0.0.1", "--save", "", *persistence,
             "--dir", str(self.folder), "--daemonize", "no", "--logfile", str(self.folder / "redis.log"),
             *self.extra_args],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        client = self.client()
        deadline = time.monotonic() + 10
        while True:
            try:
                client.ping()
                break
            except redis.ConnectionError:
                assert self.process.poll() is None, f"redis-server exited at start; see {self.folder / 'redis.log'}"
                assert time.monotonic() < deadline, "redis-server did not answer within 10 s"
                time.sleep(0.02)
            finally:
                client.close()

    def kill(self) -> None:
        """Stop the server abruptly (SIGKILL), as a crash or an OOM kill would."""
        if self.process is not None and self.process.poll() is None:
            self.process.kill()
            self.process.wait(timeout=10)

    def dbsize(self) -> int:
        client = self.client()
        try:
            return int(client.dbsize())
        finally:
            client.close()


class RedisClusterServers:
    """Three cluster-enabled ``redis-server`` primaries (no replicas) joined into one Redis Cluster."""

    def __init__(self, folder: Path, *, nodes: int = 3) -> None:
        self.servers = [RedisServer(folder / f"node{i}", persistent=False, cluster_bus=True,
                                    extra_args=("--cluster-enabled", "yes",
                                                "--cluster-config-file", str(folder / f"node{i}" / "nodes.conf"),
                                                "--cluster-node-timeout", "5000"))
                        for i in range(nodes)]

    @property
    def url(self) -> str:
        """Any node's URL: the store discovers the others."""
        return self.servers[0].url

    def start(self) -> None:
        for server in self.servers:
            server.start()
        subprocess.run([_binary("redis-cli"), "--cluster", "create",
                        *(f"127.0.0.1:{s.port}" for s in self.servers), "--cluster-yes"],
                       check=True, capture_output=True, timeout=60)
        deadline = time.monotonic() + 30
        while not all(self._ready(server) for server in self.servers):
            assert time.monotonic() < deadline, "the Redis Cluster did not become ready within 30 s"
            time.sleep(0.05)

    @staticmethod
    def _ready(server: RedisServer) -> bool:
        client = server.client()
        try:
            info = client.execute_command("CLUSTER", "INFO")
            text = info.decode() if isinstance(info, bytes) else str(info)
            return "cluster_state:ok" in text and len(client.execute_command("CLUSTER", "SLOTS")) == 3
        finally:
            client.close()

    def stop(self) -> None:
        for server in self.servers:
            server.kill()
