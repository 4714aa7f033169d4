"""A Spark standalone cluster for tests, started from the pyspark wheel: a master, one worker and a Spark
Connect server (the driver of one long-lived application on the cluster), every port on 127.0.0.1
(free ports, ``GRISTMILL_TEST_PORTS`` honoured as for the other private servers).

The wheel has no ``start-master.sh``: the daemons run through ``bin/spark-class`` and the Connect server
through ``bin/spark-submit``. Each process leads its own process group (the worker's executors and their
Python workers join the worker's), so stopping a group stops everything under it; stop() runs even when
start() fails halfway, an ``atexit`` hook stops clusters a test forgot, and on Linux every process dies
with the test process (``PR_SET_PDEATHSIG``), so no JVM outlives the test run.

Clients talk to it through ``remote`` (``sc://127.0.0.1:P``). Classic and Connect sessions cannot share
one Python process: run Connect clients in a subprocess (``run_python``)."""

from __future__ import annotations

import atexit
import contextlib
import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

from redis_servers import free_port

CONNECT_CLASS = "org.apache.spark.sql.connect.service.SparkConnectServer"
MASTER_CLASS = "org.apache.spark.deploy.master.Master"
WORKER_CLASS = "org.apache.spark.deploy.worker.Worker"

#: Settings of the Connect server's application: the engine's own (UTC, microsecond Parquet timestamps), small
#: memory and few partitions, so the cluster fits next to other tests on a 2-core machine.
CONNECT_CONF: dict[str, str] = {
    "spark.ui.enabled": "false",
    "spark.ui.showConsoleProgress": "false",
    "spark.sql.session.timeZone": "UTC",
    "spark.driver.extraJavaOptions": "-Duser.timezone=UTC",
    "spark.executor.extraJavaOptions": "-Duser.timezone=UTC",
    "spark.sql.parquet.outputTimestampType": "TIMESTAMP_MICROS",
    "mapreduce.fileoutputcommitter.marksuccessfuljobs": "false",
    "spark.sql.shuffle.partitions": "2",
    "spark.default.parallelism": "2",
    "spark.driver.memory": "1g",
    "spark.executor.memory": "1g",
    "spark.driver.host": "127.0.0.1",
    "spark.driver.bindAddress": "127.0.0.1",
    "spark.pyspark.python": sys.executable,
}

_LIVE: set[SparkCluster] = set()


class SparkClusterError(AssertionError):
    """The cluster did not start (the message carries the tail of every process's log)."""


@dataclass
class _Process:
    name: str
    command: list[str]
    log: Path
    popen: subprocess.Popen[bytes] | None = None

    @property
    def pid(self) -> int | None:
        return self.popen.pid if self.popen is not None else None

    def running(self) -> bool:
        return self.popen is not None and self.popen.poll() is None


class SparkCluster:
    """A master, a worker (``cores``, ``memory``) and a Spark Connect server, started by ``start()`` and all
    stopped by ``stop()``. ``folder`` receives the logs (``logs/``) and the worker's scratch space."""

    def __init__(self, folder: Path, *, cores: int = 2, memory: str = "2g", daemon_memory: str = "512m",
                 ready_timeout: float = 180.0, conf: dict[str, str] | None = None) -> None:
        import pyspark

        self.spark_home = Path(pyspark.__file__).parent
        self.folder = folder
        self.log_folder = folder / "logs"
        self.ready_timeout = ready_timeout
        self.conf = {**CONNECT_CONF, **(conf or {})}
        self.master_port, self.master_webui_port = free_port(), free_port()
        self.worker_port, self.worker_webui_port = free_port(), free_port()
        self.connect_port = free_port()
        self.daemon_memory = daemon_memory
        work = folder / "work"
        self._master = _Process("master", [str(self.spark_home / "bin" / "spark-class"), MASTER_CLASS,
                                           "--host", "127.0.0.1", "--port", str(self.master_port),
                                           "--webui-port", str(self.master_webui_port)],
                                self.log_folder / "master.log")
        self._worker = _Process("worker", [str(self.spark_home / "bin" / "spark-class"), WORKER_CLASS,
                                           "--host", "127.0.0.1", "--port", str(self.worker_port),
                                           "--webui-port", str(self.worker_webui_port), "--cores", str(cores),
                                           "--memory", memory, "--work-dir", str(work), self.master_url],
                                self.log_folder / "worker.log")
        settings = {**self.conf, "spark.connect.grpc.binding.port": str(self.connect_port),
                    "spark.connect.grpc.binding.address": "127.0.0.1", "spark.local.dir": str(folder / "local")}
        self._connect = _Process("connect", [str(self.spark_home / "bin" / "spark-submit"), "--master", self.master_url,
                                             "--class", CONNECT_CLASS, "--name", "gristmill-tests",
                                             *[arg for key, value in settings.items()
                                               for arg in ("--conf", f"{key}={value}")],
                                             "spark-internal"],
                                 self.log_folder / "connect.log")
        #: seconds from the start of ``start()`` (or a restart) until each readiness condition held
        self.timings: dict[str, float] = {}

    # -- addresses -----------------------------------------------------------------------------------

    @property
    def master_url(self) -> str:
        return f"spark://127.0.0.1:{self.master_port}"

    @property
    def remote(self) -> str:
        """The Spark Connect URL clients use (``engine: {type: spark, remote: ...}``)."""
        return f"sc://127.0.0.1:{self.connect_port}"

    @property
    def master_webui(self) -> str:
        return f"http://127.0.0.1:{self.master_webui_port}"

    # -- life cycle ----------------------------------------------------------------------------------

    def start(self) -> None:
        """Start the three processes and wait until the worker is registered, the Connect server listens and
        its application holds executor cores; on any failure everything started is stopped again."""
        self.log_folder.mkdir(parents=True, exist_ok=True)
        _LIVE.add(self)
        try:
            deadline = time.monotonic() + self.ready_timeout
            self._launch(self._master)
            self._wait("the master's web UI to answer", lambda: self.master_state() is not None, deadline)
            self._launch(self._worker)
            self._launch(self._connect)
            self._wait("the worker to register with the master",
                       lambda: (self.master_state() or {}).get("aliveworkers", 0) >= 1, deadline)
            self._wait_connect(deadline)
        except BaseException:
            self.stop()
            raise

    def stop(self) -> None:
        """Stop every process: SIGTERM to each process group, then SIGKILL to what is left after 15 s."""
        processes = [self._connect, self._worker, self._master]
        groups = [p.pid for p in processes if p.pid is not None]
        for pid in groups:
            _signal_group(pid, signal.SIGTERM)
        deadline = time.monotonic() + 15
        for process in processes:
            if process.popen is not None:
                with contextlib.suppress(subprocess.TimeoutExpired):
                    process.popen.wait(timeout=max(0.1, deadline - time.monotonic()))
        while any(_group_members(pid) for pid in groups) and time.monotonic() < deadline:
            time.sleep(0.1)
        for pid in groups:
            _signal_group(pid, signal.SIGKILL)
        for process in processes:
            if process.popen is not None:
                process.popen.wait(timeout=10)
        _LIVE.discard(self)
        deadline = time.monotonic() + 10
        while (left := {name: pids for name, pids in self.processes().items() if pids}) and \
                time.monotonic() < deadline:
            time.sleep(0.1)
        if left:
            raise SparkClusterError(f"Spark cluster: processes still alive after SIGKILL: {left}")

    def processes(self) -> dict[str, list[int]]:
        """The live process ids of each part (``master``, ``worker`` with its executors, ``connect``)."""
        return {p.name: _group_members(p.pid) for p in (self._master, self._worker, self._connect)
                if p.pid is not None}

    def peak_memory_mb(self) -> dict[str, int]:
        """The peak resident memory (VmHWM) of each part's live processes, summed, in MiB (the worker's
        includes its executors)."""
        peaks: dict[str, int] = {}
        for name, pids in self.processes().items():
            total = 0
            for pid in pids:
                with contextlib.suppress(OSError, ValueError):
                    status = Path(f"/proc/{pid}/status").read_text()
                    total += next(int(line.split()[1]) for line in status.splitlines() if line.startswith("VmHWM:"))
            peaks[name] = total // 1024
        return peaks

    # -- faults --------------------------------------------------------------------------------------

    def kill_connect_server(self) -> None:
        """SIGKILL the Connect server (the application's driver), as a crash or an OOM kill would."""
        self._kill(self._connect)

    def restart_connect_server(self) -> None:
        """Start the Connect server again on the same port (after a kill) and wait until it serves."""
        if self._connect.running():
            self._kill(self._connect)
        self._launch(self._connect)
        self._wait_connect(time.monotonic() + self.ready_timeout)

    def kill_worker(self) -> None:
        """SIGKILL the worker and its executors (a lost machine)."""
        self._kill(self._worker)

    def start_worker(self) -> None:
        """Start the worker again (after a kill) and wait until it is registered and executors run again."""
        if self._worker.running():
            return
        self._launch(self._worker)
        deadline = time.monotonic() + self.ready_timeout
        self._wait("the worker to register with the master",
                   lambda: (self.master_state() or {}).get("aliveworkers", 0) >= 1, deadline)
        self._wait("the Connect server's application to get executor cores", self._application_has_cores, deadline)

    # -- state ---------------------------------------------------------------------------------------

    def master_state(self) -> dict[str, object] | None:
        """The master's JSON status (``aliveworkers``, ``activeapps``...), or None while it does not answer."""
        try:
            with urllib.request.urlopen(f"{self.master_webui}/json/", timeout=2) as response:
                state: dict[str, object] = json.loads(response.read())
                return state
        except (OSError, ValueError):
            return None

    def log_tails(self, lines: int = 30) -> str:
        """The last ``lines`` lines of every log, for failure messages."""
        parts = []
        for process in (self._master, self._worker, self._connect):
            text = process.log.read_text(errors="replace") if process.log.exists() else "(no log)"
            tail = "\n".join(text.splitlines()[-lines:])
            parts.append(f"--- {process.name} ({process.log}) ---\n{tail}")
        return "\n".join(parts)

    # -- internals -----------------------------------------------------------------------------------

    def _environment(self) -> dict[str, str]:
        return {**os.environ, "SPARK_HOME": str(self.spark_home), "SPARK_LOCAL_IP": "127.0.0.1",
                "SPARK_LOG_DIR": str(self.log_folder), "SPARK_DAEMON_MEMORY": self.daemon_memory,
                "PYSPARK_PYTHON": sys.executable, "PYSPARK_DRIVER_PYTHON": sys.executable, "TZ": "UTC",
                "SPARK_NO_DAEMONIZE": "1",
                # a fixed port otherwise (6066): two clusters on one machine would clash
                "SPARK_MASTER_OPTS": "-Dspark.master.rest.enabled=false"}

    def _launch(self, process: _Process) -> None:
        mode = "ab" if process.log.exists() else "wb"
        with process.log.open(mode) as output:
            process.popen = subprocess.Popen(process.command, stdout=output, stderr=subprocess.STDOUT,
                                             stdin=subprocess.DEVNULL, env=self._environment(),
                                             start_new_session=True, preexec_fn=_die_with_parent)

    def _kill(self, process: _Process) -> None:
        if process.pid is None:
            return
        _signal_group(process.pid, signal.SIGKILL)
        if process.popen is not None:
            process.popen.wait(timeout=10)
        deadline = time.monotonic() + 10
        while _group_members(process.pid) and time.monotonic() < deadline:
            time.sleep(0.05)

    def _wait_connect(self, deadline: float) -> None:
        self._wait("the Spark Connect server to listen", lambda: _listening(self.connect_port), deadline)
        self._wait("the Connect server's application to get executor cores", self._application_has_cores, deadline)

    def _application_has_cores(self) -> bool:
        """Whether the newest running application (the Connect server's) holds cores on the worker: its first
        query then runs at once instead of waiting for executors."""
        apps = (self.master_state() or {}).get("activeapps") or []
        assert isinstance(apps, list)
        running = [a for a in apps if isinstance(a, dict) and a.get("state") == "RUNNING"]
        return bool(running) and int(max(running, key=lambda a: a.get("starttime", 0)).get("cores", 0)) > 0

    def _wait(self, what: str, ready: Callable[[], bool], deadline: float) -> None:
        began = deadline - self.ready_timeout
        while not ready():
            dead = [p.name for p in (self._master, self._worker, self._connect)
                    if p.popen is not None and p.popen.poll() is not None]
            if dead or time.monotonic() > deadline:
                why = f"{', '.join(dead)} exited" if dead else f"not within {self.ready_timeout:.0f} s"
                raise SparkClusterError(f"Spark cluster: waited for {what}: {why}\n{self.log_tails()}")
            time.sleep(0.2)
        self.timings[what] = round(time.monotonic() - began, 2)


def _listening(port: int) -> bool:
    with socket.socket() as probe:
        probe.settimeout(0.5)
        return probe.connect_ex(("127.0.0.1", port)) == 0


def _signal_group(leader: int, signal_number: int) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(leader, signal_number)


def _group_members(group: int | None) -> list[int]:
    """The live (not zombie) processes of process group ``group``."""
    if group is None:
        return []
    members = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:
            continue
        fields = stat[stat.rindex(")") + 2:].split()     # after "pid (command) ": state, ppid, pgrp...
        if int(fields[2]) == group and fields[0] != "Z":
            members.append(int(entry.name))
    return members


def _die_with_parent() -> None:
    """In the child before exec: the kernel SIGKILLs it when the test process dies (Linux only)."""
    if sys.platform.startswith("linux"):
        import ctypes

        ctypes.CDLL(None).prctl(1, signal.SIGKILL)   # PR_SET_PDEATHSIG


@atexit.register
def _stop_forgotten_clusters() -> None:
    for cluster in list(_LIVE):
        cluster.stop()


def run_python(script: str, args: Sequence[str], *, timeout: float) -> subprocess.CompletedProcess[str]:
    """Run ``script`` (Python source) in a fresh interpreter, e.g. a Spark Connect client."""
    return subprocess.run([sys.executable, "-c", script, *args], capture_output=True, text=True, timeout=timeout)
