"""Online feature server benchmark: ``gristmill serve`` vs ``feast serve`` over HTTP, Redis and SQLite.

One data set for every contender: 100,000 accounts x 13 double features and an event time (fixed seed,
one row per account). Each online store is built the way a user builds it, from the command line:

- Gristmill: ``gristmill init`` (featurestore.yaml with a Redis online store under a key prefix of its own,
  or the SQLite default), ``gristmill apply`` of an entity and a feature set, ``gristmill backfill`` into the
  online store, and a service principal with a Reader grant and a token (``gristmill access``);
- Feast: a repo (``feature_store.yaml`` + a ``FeatureView`` over the same Parquet), ``feast apply`` and
  ``feast materialize`` into Redis (its own project's keys) or SQLite, in Feast's venv
  (``<workdir>/feast-venv``, shared with the other benchmarks).

Contenders, each started as a server process on a free port of 127.0.0.1 and stopped at the end:

- ``gristmill-auth``: ``gristmill serve`` with tokens (``Authorization: Bearer ...``);
- ``gristmill-noauth``: ``gristmill serve --no-auth``;
- ``feast``: ``feast serve -w 1 --no-access-log``;
- ``sdk``: ``FeatureStore.connect(url, token=...)`` doing 1-entity lookups in a loop against the
  ``gristmill-auth`` server, and the in-process ``FeatureStore(path).get_online_features`` for reference.

Before any load each server's answers for 200 random keys (1 and 100 entities per request) are compared
cell by cell with the generated data. Then the load generator (``wrk`` with a Lua script drawing random
account ids for every request, or this file's asyncio client when wrk is absent) runs each point:
1 and 16 connections x 1 and 100 entities per request, ``--seconds`` each after a short warm-up.

Example::

    python benchmarks/serving.py                                   # everything, 8 s per point
    python benchmarks/serving.py --stores redis --seconds 4 --skip-feast
    python benchmarks/serving.py --only gristmill-noauth --serve-args "--workers 2"
    python benchmarks/serving.py --gristmill-url http://127.0.0.1:8080 --token gm_... --skip-feast

See benchmarks/README.md for what is measured and how.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import http.client
import json
import os
import shlex
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import asdict, dataclass, field
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
from materialization import (
    DEFAULT_REDIS_URL,
    delete_redis_keys,
    ensure_feast_with_redis,
    feast_redis_connection,
    fmt,
    format_table,
    import_gristmill,
    machine_info,
    redis_available,
)
from offline_retrieval import DEFAULT_FEAST_REQUIREMENT, REPO_ROOT

CONTENDERS = ("gristmill-auth", "gristmill-noauth", "feast", "sdk")
STORES = ("redis", "sqlite")
ACCOUNTS = 100_000
FEATURES = tuple(f"f{i:02d}" for i in range(1, 14))
FEATURE_SET = "serving"
SEED = 20261206
DATA_VERSION = 1            # bump when the generator changes, so cached data is rebuilt
EPOCH = datetime(2024, 1, 1)
WINDOW = (EPOCH, EPOCH + timedelta(days=1))     # every event time falls in this day
REDIS_PREFIX = "gmbench-serving"                # Gristmill's keys: "gmbench-serving:*"
FEAST_PROJECT = "gmbench_serving"               # Feast's keys end with the project name
PRINCIPAL = "bench-reader"
CHECK_KEYS = 200
CHECK_BATCH = 100
REQUEST_POOL = 2048          # asyncio client: distinct random request bodies per point, sent in turn
WRK_TIMEOUT = "10s"


def account_id(index: int) -> str:
    return f"acct_{index:06d}"


# --------------------------------------------------------------------------------------------
# Data (one row per account) and the values a correct server answers
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Data:
    path: Path
    values: np.ndarray       # (ACCOUNTS, len(FEATURES)) float64, row i = account_id(i)

    def expected(self, key: str) -> np.ndarray:
        return self.values[int(key.removeprefix("acct_"))]


def ensure_data(workdir: Path) -> Data:
    """Generate the accounts Parquet once (deterministic); later runs reuse it."""
    folder = workdir / "data" / "serving"
    path, manifest = folder / "accounts.parquet", folder / "manifest.json"
    wanted = {"version": DATA_VERSION, "seed": SEED, "accounts": ACCOUNTS, "features": list(FEATURES)}
    if not (path.exists() and manifest.exists() and json.loads(manifest.read_text()) == wanted):
        folder.mkdir(parents=True, exist_ok=True)
        rng = np.random.default_rng(SEED)
        micros = rng.integers(0, 86_400_000_000, ACCOUNTS)
        values = np.round(rng.normal(100.0, 30.0, (ACCOUNTS, len(FEATURES))), 6)
        columns: dict[str, pa.Array] = {
            "account_id": pa.array([account_id(i) for i in range(ACCOUNTS)], type=pa.string()),
            "ts": pa.array(np.datetime64(EPOCH, "us") + micros.astype("timedelta64[us]"), type=pa.timestamp("us")),
        }
        columns.update({name: pa.array(values[:, i]) for i, name in enumerate(FEATURES)})
        pq.write_table(pa.table(columns), path)
        manifest.write_text(json.dumps(wanted, indent=2))
    table = pq.read_table(path, columns=list(FEATURES))
    values = np.column_stack([table.column(name).to_numpy() for name in FEATURES])
    return Data(path, values)


# --------------------------------------------------------------------------------------------
# Building the stores from the command line
# --------------------------------------------------------------------------------------------


def child_env() -> dict[str, str]:
    """The environment of the processes we start: the same ``gristmill`` package as this process imports."""
    gm = import_gristmill()
    package_root = str(Path(gm.__file__).resolve().parent.parent)
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(p for p in (package_root, env.get("PYTHONPATH", "")) if p)
    return env


def gristmill_command() -> list[str]:
    script = Path(sys.executable).parent / "gristmill"
    return [str(script)] if script.exists() else [sys.executable, "-m", "gristmill.cli"]


def run_command(command: Sequence[str], *, log: Path, env: dict[str, str] | None = None,
                cwd: Path | None = None) -> str:
    """Run one setup command; its output goes to ``log`` too. Returns stdout; raises with the output's tail."""
    done = subprocess.run(list(command), capture_output=True, text=True, env=env, cwd=cwd)
    with log.open("a") as sink:
        sink.write(f"$ {shlex.join(command)}\n{done.stdout}{done.stderr}\n")
    if done.returncode != 0:
        tail = (done.stderr or done.stdout).strip().splitlines()[-3:]
        raise RuntimeError(f"{shlex.join(command[:3])} ... exited with {done.returncode}: {' | '.join(tail)}")
    return done.stdout


def write_yaml(path: Path, document: dict[str, Any]) -> None:
    import yaml

    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(yaml.safe_dump(document, sort_keys=False))


def build_gristmill(data: Data, folder: Path, kind: str, redis_url: str, log: Path) -> tuple[Path, str]:
    """A Gristmill store holding the data online, built with the CLI; returns (store folder, Reader token)."""
    shutil.rmtree(folder, ignore_errors=True)
    store, assets = folder / "store", folder / "assets"
    gristmill, env = gristmill_command(), child_env()
    online = ["--online-store", redis_url, "--online-prefix", REDIS_PREFIX] if kind == "redis" else []
    if kind == "redis":
        delete_redis_keys(redis_url, f"{REDIS_PREFIX}:*")
    run_command([*gristmill, "init", str(store), "--name", f"serving-{kind}", *online], log=log, env=env)
    index_columns = [{"name": "account_id", "type": "string"}]
    write_yaml(assets / "entities" / "account.yaml",
               {"name": "account", "version": "1", "index_columns": index_columns})
    feature_set = assets / "featuresets" / FEATURE_SET
    write_yaml(feature_set / "spec" / "FeatureSetSpec.yaml", {
        "source": {"type": "parquet", "path": str(data.path), "timestamp_column": {"name": "ts"}},
        "index_columns": index_columns,
        "features": [{"name": name, "type": "double"} for name in FEATURES],
    })   # no temporal_join_lookback: values never expire (2024 data served with today's clock)
    write_yaml(feature_set / "FeatureSet.yaml", {
        "name": FEATURE_SET, "version": "1", "specification": {"path": "./spec"}, "entities": ["account:1"],
        "materialization_settings": {"offline_enabled": False, "online_enabled": True},
    })
    at = ["--store", str(store)]
    run_command([*gristmill, "apply", str(assets), *at], log=log, env=env)
    run_command([*gristmill, "backfill", f"{FEATURE_SET}:1", "--start", WINDOW[0].isoformat(),
                 "--end", WINDOW[1].isoformat(), *at], log=log, env=env)
    run_command([*gristmill, "access", "add", PRINCIPAL, "--kind", "service", *at], log=log, env=env)
    run_command([*gristmill, "access", "grant", PRINCIPAL, "Reader", "--scope", f"featureset:{FEATURE_SET}", *at],
                log=log, env=env)
    token = run_command([*gristmill, "access", "token", PRINCIPAL, *at], log=log, env=env).strip().splitlines()[-1]
    return store, token


FEAST_DEFINITIONS = '''\
from datetime import timedelta

from feast import Entity, FeatureView, Field, FileSource
from feast.types import Float64
from feast.value_type import ValueType

account = Entity(name="account", join_keys=["account_id"], value_type=ValueType.STRING)
{name} = FeatureView(
    name="{name}",
    entities=[account],
    ttl=timedelta(0),  # never expires, as the Gristmill feature set
    schema=[{fields}],
    source=FileSource(path={path!r}, timestamp_field="ts"),
    online=True,
)
'''


def build_feast(data: Data, folder: Path, kind: str, redis_url: str, feast_python: Path, log: Path) -> Path:
    """A Feast repo holding the data online (``feast apply`` + ``feast materialize``); returns the repo folder."""
    shutil.rmtree(folder, ignore_errors=True)
    folder.mkdir(parents=True)
    if kind == "redis":
        delete_redis_keys(redis_url, f"*{FEAST_PROJECT}")
        online: dict[str, Any] = {"type": "redis", "connection_string": feast_redis_connection(redis_url)}
    else:
        online = {"type": "sqlite", "path": str(folder / "online.db")}
    write_yaml(folder / "feature_store.yaml", {
        "project": FEAST_PROJECT, "provider": "local", "registry": str(folder / "registry.db"),
        "online_store": online, "offline_store": {"type": "duckdb"}, "entity_key_serialization_version": 3,
    })
    fields = ", ".join(f'Field(name="{name}", dtype=Float64)' for name in FEATURES)
    (folder / "definitions.py").write_text(FEAST_DEFINITIONS.format(name=FEATURE_SET, fields=fields,
                                                                     path=str(data.path)))
    feast = [str(feast_python.parent / "feast"), "-c", str(folder)]
    run_command([*feast, "apply"], log=log)
    run_command([*feast, "materialize", WINDOW[0].isoformat(), WINDOW[1].isoformat()], log=log)
    return folder


# --------------------------------------------------------------------------------------------
# Server processes
# --------------------------------------------------------------------------------------------


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@contextlib.contextmanager
def server_process(name: str, command: Sequence[str], *, port: int, log: Path, env: dict[str, str] | None = None,
                   cwd: Path | None = None, startup_seconds: float = 120.0) -> Iterator[str]:
    """Start ``command`` (a server listening on ``port``) in a process group of its own, wait until
    ``GET /health`` answers 200, yield its base URL; always stop the group (SIGTERM, then SIGKILL)."""
    sink = log.open("a")
    sink.write(f"$ {shlex.join(command)}\n")
    sink.flush()
    process = subprocess.Popen(list(command), stdout=sink, stderr=subprocess.STDOUT, env=env, cwd=cwd,
                               start_new_session=True)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + startup_seconds
        while True:
            if process.poll() is not None:
                lines = [line.strip(" │╭╮╰╯─") for line in log.read_text().splitlines()]
                tail = " | ".join([line for line in lines if line][-3:])
                raise RuntimeError(f"{name} exited with {process.returncode} on start: {tail} (log: {log})")
            with contextlib.suppress(OSError, http.client.HTTPException):
                connection = http.client.HTTPConnection("127.0.0.1", port, timeout=2)
                connection.request("GET", "/health")
                if connection.getresponse().status == 200:
                    connection.close()
                    break
                connection.close()
            if time.monotonic() > deadline:
                raise RuntimeError(f"{name} did not answer GET /health within {startup_seconds:.0f} s (log: {log})")
            time.sleep(0.2)
        yield url
    finally:
        stop_group(process)
        sink.close()


def stop_group(process: subprocess.Popen[Any]) -> None:
    """Stop the process group we started for ``process`` (it is its leader): SIGTERM, SIGKILL after 10 s."""
    if process.poll() is not None:
        return
    with contextlib.suppress(ProcessLookupError):
        os.killpg(process.pid, signal.SIGTERM)
    try:
        process.wait(timeout=10)
    except subprocess.TimeoutExpired:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, signal.SIGKILL)
        process.wait()


# --------------------------------------------------------------------------------------------
# What is asked, and checking the answers
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Target:
    """One server to load: where, how to ask, and how to read its answers."""

    contender: str
    store: str
    url: str
    kind: str                            # "gristmill" | "feast"
    headers: dict[str, str] = field(default_factory=dict)

    @property
    def path(self) -> str:
        return "/v1/online/features" if self.kind == "gristmill" else "/get-online-features"

    @property
    def features(self) -> list[str]:
        if self.kind == "gristmill":
            return [f"{FEATURE_SET}:1:{name}" for name in FEATURES]
        return [f"{FEATURE_SET}:{name}" for name in FEATURES]

    def body(self, keys: Sequence[str]) -> bytes:
        return json.dumps({"features": self.features, "entities": {"account_id": list(keys)}}).encode()

    def body_parts(self) -> tuple[str, str]:
        """The body's text before and after the comma-separated quoted keys (for the Lua script)."""
        text = json.dumps({"features": self.features, "entities": {"account_id": ["@KEYS@"]}})
        before, after = text.split('"@KEYS@"')
        return before, after

    def columns(self, answer: dict[str, Any]) -> dict[str, list[Any]]:
        """Feature name -> values in request order, from either server's answer."""
        if self.kind == "gristmill":
            return answer["columns"]
        names = answer["metadata"]["feature_names"]
        return {name.split("__")[-1].split(":")[-1]: result["values"]
                for name, result in zip(names, answer["results"], strict=True)}


def check_answers(target: Target, data: Data, seed: int) -> tuple[int, int, list[str]]:
    """Ask for ``CHECK_KEYS`` random keys one per request and ``CHECK_BATCH`` per request; compare every cell
    with the generated data. Returns (mismatching cells, cells compared, a few examples)."""
    rng = np.random.default_rng(seed)
    keys = [account_id(int(i)) for i in rng.integers(0, ACCOUNTS, CHECK_KEYS)]
    batches = [[key] for key in keys] + [keys[i:i + CHECK_BATCH] for i in range(0, len(keys), CHECK_BATCH)]
    parts = urlsplit(target.url)
    connection = http.client.HTTPConnection(parts.hostname or "127.0.0.1", parts.port or 80, timeout=30)
    mismatches = cells = 0
    examples: list[str] = []
    try:
        for batch in batches:
            connection.request("POST", target.path, body=target.body(batch),
                               headers={"Content-Type": "application/json", **target.headers})
            response = connection.getresponse()
            payload = response.read()
            if response.status != 200:
                mismatches += len(batch) * len(FEATURES)
                cells += len(batch) * len(FEATURES)
                examples.append(f"HTTP {response.status}: {payload[:200].decode(errors='replace')}")
                continue
            columns = target.columns(json.loads(payload))
            for j, name in enumerate(FEATURES):
                got_column = columns.get(name) or []
                for i, key in enumerate(batch):
                    want = float(data.expected(key)[j])
                    got = got_column[i] if i < len(got_column) else None
                    cells += 1
                    if got is None or abs(float(got) - want) > 1e-9 * max(1.0, abs(want)):
                        mismatches += 1
                        if len(examples) < 5:
                            examples.append(f"{key} {name}: got {got!r}, want {want!r}")
    finally:
        connection.close()
    return mismatches, cells, examples


# --------------------------------------------------------------------------------------------
# Load generators
# --------------------------------------------------------------------------------------------


@dataclass
class Load:
    requests: int
    seconds: float
    p50_ms: float
    p99_ms: float
    p999_ms: float
    errors: int
    client: str
    client_cpu_seconds: float | None = None   # the asyncio client's own CPU time (its ceiling, see README)
    error_detail: str = ""


WRK_SCRIPT = """\
-- written by benchmarks/serving.py: random account ids in every request's body
wrk.method = "POST"
wrk.headers["Content-Type"] = "application/json"
{headers}
local before = [==[{before}]==]
local after = [==[{after}]==]
local entities = {entities}
local accounts = {accounts}
local threads = 0

function setup(thread)
  threads = threads + 1
  thread:set("thread_number", threads)
end

function init(args)
  math.randomseed({seed} + 7919 * thread_number)
end

function request()
  local ids = {{}}
  for i = 1, entities do
    ids[i] = string.format('"acct_%06d"', math.random(0, accounts - 1))
  end
  return wrk.format(nil, "{path}", nil, before .. table.concat(ids, ",") .. after)
end

function done(summary, latency, requests)
  local e = summary.errors
  io.write(string.format(
    'WRK_RESULT {{"requests": %d, "duration_us": %d, "p50_us": %d, "p99_us": %d, "p999_us": %d, ' ..
    '"errors": %d, "status_errors": %d, "timeouts": %d}}\\n',
    summary.requests, summary.duration, latency:percentile(50), latency:percentile(99),
    latency:percentile(99.9), e.connect + e.read + e.write + e.status + e.timeout, e.status, e.timeout))
end
"""


def run_wrk(target: Target, *, connections: int, entities: int, seconds: float, seed: int, script_dir: Path,
            log: Path) -> Load:
    before, after = target.body_parts()
    headers = "\n".join(f'wrk.headers["{k}"] = "{v}"' for k, v in target.headers.items())
    script = script_dir / f"wrk-{target.contender}-{target.store}-{entities}.lua"
    script.write_text(WRK_SCRIPT.format(headers=headers, before=before, after=after, entities=entities,
                                        accounts=ACCOUNTS, seed=seed, path=target.path))
    threads = min(connections, os.cpu_count() or 1, 2)
    command = ["wrk", "-t", str(threads), "-c", str(connections), "-d", f"{max(1, round(seconds))}s",
               "--timeout", WRK_TIMEOUT, "-s", str(script), target.url + target.path]
    done = subprocess.run(command, capture_output=True, text=True, timeout=seconds + 120)
    with log.open("a") as sink:
        sink.write(f"$ {shlex.join(command)}\n{done.stdout}{done.stderr}\n")
    line = next((text for text in done.stdout.splitlines() if text.startswith("WRK_RESULT ")), None)
    if done.returncode != 0 or line is None:
        raise RuntimeError(f"wrk failed ({done.returncode}): {(done.stderr or done.stdout).strip()[-300:]}")
    result = json.loads(line.removeprefix("WRK_RESULT "))
    socket_errors = result["errors"] - result["status_errors"] - result["timeouts"]
    return Load(requests=result["requests"], seconds=result["duration_us"] / 1e6, p50_ms=result["p50_us"] / 1e3,
                p99_ms=result["p99_us"] / 1e3, p999_ms=result["p999_us"] / 1e3, errors=result["errors"],
                client="wrk", error_detail=f"{result['status_errors']:,} non-2xx, {result['timeouts']:,} timeouts, "
                                          f"{socket_errors:,} socket errors")


def http_request(target: Target, body: bytes, host: str) -> bytes:
    head = (f"POST {target.path} HTTP/1.1\r\nHost: {host}\r\nContent-Type: application/json\r\n"
            f"Content-Length: {len(body)}\r\n")
    head += "".join(f"{k}: {v}\r\n" for k, v in target.headers.items())
    return head.encode() + b"\r\n" + body


async def _read_response(reader: asyncio.StreamReader) -> int:
    """Read one HTTP/1.1 response (Content-Length or chunked); return its status."""
    head = await reader.readuntil(b"\r\n\r\n")
    status = int(head[9:12])
    lowered = head.lower()
    at = lowered.find(b"content-length:")
    if at >= 0:
        length = int(lowered[at + 15:lowered.index(b"\r\n", at)])
        await reader.readexactly(length)
    elif b"transfer-encoding: chunked" in lowered:
        while True:
            size = int((await reader.readuntil(b"\r\n")).split(b";")[0], 16)
            await reader.readexactly(size + 2)
            if size == 0:
                break
    return status


async def _load_async(target: Target, requests: list[bytes], connections: int, seconds: float
                      ) -> tuple[list[int], dict[str, int], float]:
    parts = urlsplit(target.url)
    latencies: list[int] = []
    errors = {"status": 0, "socket": 0}
    clock = time.perf_counter_ns

    async def connect() -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
        reader, writer = await asyncio.open_connection(parts.hostname, parts.port)
        writer.get_extra_info("socket").setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        return reader, writer

    async def connection_loop(number: int) -> None:
        nonlocal errors
        reader, writer = await connect()
        index = number
        try:
            while clock() < deadline:
                request = requests[index % len(requests)]
                index += connections
                started = clock()
                try:
                    writer.write(request)
                    status = await _read_response(reader)
                except (ConnectionError, asyncio.IncompleteReadError):
                    errors["socket"] += 1          # the server closed the connection: count it, open another
                    writer.close()
                    reader, writer = await connect()
                    continue
                latencies.append(clock() - started)
                errors["status"] += status != 200
        finally:
            writer.close()

    begun = clock()
    deadline = begun + int(seconds * 1e9)
    await asyncio.gather(*(connection_loop(n) for n in range(connections)))
    return latencies, errors, (clock() - begun) / 1e9


def run_python_client(target: Target, *, connections: int, entities: int, seconds: float, seed: int) -> Load:
    """The fallback load generator: ``connections`` keep-alive HTTP/1.1 connections of one asyncio loop, each
    sending its next request when the answer to the last has arrived, for ``seconds``. Bodies come from a pool
    of ``REQUEST_POOL`` random draws built before the clock starts (building JSON is not the server's work)."""
    rng = np.random.default_rng(seed)
    host = urlsplit(target.url).netloc
    pool = [http_request(target, target.body([account_id(int(i)) for i in rng.integers(0, ACCOUNTS, entities)]),
                         host) for _ in range(REQUEST_POOL)]
    cpu_started = time.process_time()
    latencies, errors, elapsed = asyncio.run(_load_async(target, pool, connections, seconds))
    cpu = time.process_time() - cpu_started
    values = np.asarray(latencies, dtype=np.float64) / 1e6
    p50, p99, p999 = (float(np.percentile(values, q)) for q in (50, 99, 99.9))
    return Load(requests=len(latencies), seconds=elapsed, p50_ms=p50, p99_ms=p99, p999_ms=p999,
                errors=sum(errors.values()), client="python", client_cpu_seconds=cpu,
                error_detail=f"{errors['status']:,} non-200, {errors['socket']:,} closed connections")


# --------------------------------------------------------------------------------------------
# Results
# --------------------------------------------------------------------------------------------


@dataclass
class Point:
    contender: str
    store: str
    connections: int
    entities: int
    client: str
    requests: int = 0
    seconds: float = 0.0
    requests_per_second: float | None = None
    rows_per_second: float | None = None
    p50_ms: float | None = None
    p99_ms: float | None = None
    p999_ms: float | None = None
    errors: int = 0
    client_cpu_per_request_us: float | None = None
    ratio_to_feast: float | None = None
    notes: list[str] = field(default_factory=list)

    def fill(self, load: Load) -> None:
        self.requests, self.seconds, self.errors, self.client = load.requests, load.seconds, load.errors, load.client
        self.requests_per_second = load.requests / load.seconds if load.seconds else None
        self.rows_per_second = self.requests_per_second * self.entities if self.requests_per_second else None
        self.p50_ms, self.p99_ms, self.p999_ms = load.p50_ms, load.p99_ms, load.p999_ms
        if load.errors:
            self.notes.append(f"{load.errors:,} errors ({load.error_detail})")
        if load.client_cpu_seconds is not None and load.requests:
            self.client_cpu_per_request_us = load.client_cpu_seconds / load.requests * 1e6
            self.notes.append(f"client CPU {self.client_cpu_per_request_us:.0f} us/request")


@dataclass
class Check:
    contender: str
    store: str
    mismatches: int
    cells: int
    examples: list[str]


def latencies_point(contender: str, store: str, samples: list[int], elapsed: float, note: str) -> Point:
    values = np.asarray(samples, dtype=np.float64) / 1e6
    point = Point(contender, store, 1, 1, "loop", requests=len(samples), seconds=elapsed,
                  requests_per_second=len(samples) / elapsed, rows_per_second=len(samples) / elapsed,
                  p50_ms=float(np.percentile(values, 50)), p99_ms=float(np.percentile(values, 99)),
                  p999_ms=float(np.percentile(values, 99.9)), notes=[note])
    return point


def sdk_loop(lookup: Callable[[list[str]], Any], seconds: float, seed: int) -> tuple[list[int], float]:
    """1-entity lookups of random keys, one after the other, for ``seconds`` after 200 untimed ones."""
    rng = np.random.default_rng(seed)
    keys = [account_id(int(i)) for i in rng.integers(0, ACCOUNTS, 200_000)]
    for key in keys[:200]:
        lookup([key])
    clock = time.perf_counter_ns
    samples: list[int] = []
    begun = clock()
    deadline = begun + int(seconds * 1e9)
    index = 200
    while clock() < deadline:
        started = clock()
        lookup([keys[index % len(keys)]])
        samples.append(clock() - started)
        index += 1
    return samples, (clock() - begun) / 1e9


def add_ratios(points: Sequence[Point]) -> None:
    feast = {(p.store, p.connections, p.entities): p.requests_per_second for p in points if p.contender == "feast"}
    for point in points:
        base = feast.get((point.store, point.connections, point.entities))
        if point.contender not in ("feast", "sdk-in-process") and base and point.requests_per_second:
            point.ratio_to_feast = point.requests_per_second / base


def print_table(points: Sequence[Point]) -> None:
    header = ("contender", "online store", "conns", "entities/req", "req/s", "entity rows/s", "p50 ms", "p99 ms",
              "p99.9 ms", "vs Feast", "notes")
    rows = [(p.contender, p.store, str(p.connections or "-"), str(p.entities or "-"),
             fmt(p.requests_per_second, ",.0f"), fmt(p.rows_per_second, ",.0f"), fmt(p.p50_ms, ".2f"),
             fmt(p.p99_ms, ".2f"), fmt(p.p999_ms, ".2f"),
             "-" if p.ratio_to_feast is None else f"{p.ratio_to_feast:.2f}x", "; ".join(p.notes))
            for p in points]
    print()
    print(format_table(header, rows))


# --------------------------------------------------------------------------------------------
# Driver
# --------------------------------------------------------------------------------------------


def parse_list(value: str, allowed: Sequence[str], option: str) -> list[str]:
    chosen = [part.strip() for part in value.split(",") if part.strip()]
    unknown = [part for part in chosen if part not in allowed]
    if unknown or not chosen:
        raise SystemExit(f"{option}: unknown {', '.join(unknown) or 'empty list'}; choose from {', '.join(allowed)}")
    return [name for name in allowed if name in chosen]


def parse_counts(value: str, option: str) -> list[int]:
    try:
        counts = [int(part) for part in value.split(",") if part.strip()]
    except ValueError:
        raise SystemExit(f"{option}: expected comma-separated whole numbers, e.g. 1,16; got {value!r}") from None
    if not counts or min(counts) < 1:
        raise SystemExit(f"{option}: expected whole numbers >= 1, e.g. 1,16; got {value!r}")
    return counts


def arguments() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--workdir", type=Path, default=Path("/tmp/gristmill-bench"),
                        help="data, stores, Feast's venv and logs (default /tmp/gristmill-bench)")
    parser.add_argument("--only", default=",".join(CONTENDERS),
                        help=f"comma-separated contenders (default all: {', '.join(CONTENDERS)})")
    parser.add_argument("--stores", default=",".join(STORES), help="online stores (default redis,sqlite)")
    parser.add_argument("--skip-feast", action="store_true", help="do not install or run Feast")
    parser.add_argument("--seconds", type=float, default=8.0, help="seconds of load per point (default 8)")
    parser.add_argument("--warmup-seconds", type=float, default=1.0,
                        help="untimed load before each contender's points (default 1)")
    parser.add_argument("--connections", default="1,16", help="connection counts (default 1,16)")
    parser.add_argument("--entities", default="1,100", help="entities per request (default 1,100)")
    parser.add_argument("--sdk-seconds", type=float, default=4.0, help="seconds of each SDK loop (default 4)")
    parser.add_argument("--client", choices=("auto", "wrk", "python"), default="auto",
                        help="load generator: wrk when installed (auto), or the in-repo asyncio client")
    parser.add_argument("--serve-args", default="", help='appended to `gristmill serve`, e.g. "--workers 2"')
    parser.add_argument("--gristmill-url", help="benchmark this running Gristmill server instead of starting "
                        "gristmill serve (it should serve a store built by this script: see --keep-data)")
    parser.add_argument("--token", default=os.environ.get("GRISTMILL_TOKEN"),
                        help="with --gristmill-url: the bearer token to send (default $GRISTMILL_TOKEN)")
    parser.add_argument("--keep-data", action="store_true",
                        help="keep the stores and their Redis keys at the end (to serve them yourself)")
    parser.add_argument("--redis-url", default=DEFAULT_REDIS_URL)
    parser.add_argument("--feast-requirement", default=DEFAULT_FEAST_REQUIREMENT)
    parser.add_argument("--json", type=Path, dest="json_path", help="also write the results to this JSON file")
    return parser


@dataclass
class Run:
    """Everything one invocation works with, and what it measured."""

    args: argparse.Namespace
    data: Data
    contenders: list[str]
    stores: list[str]
    connections: list[int]
    entities: list[int]
    client: str
    workdir: Path
    logs: Path
    points: list[Point] = field(default_factory=list)
    checks: list[Check] = field(default_factory=list)
    wrote_redis: bool = False       # this run loaded Redis: its keys go at the end (unless --keep-data)

    @contextlib.contextmanager
    def attempt(self, contenders: Sequence[str], store: str) -> Iterator[None]:
        """Run the block; when it fails, print one line and add a row saying so for each of ``contenders``."""
        try:
            yield
        except Exception as error:   # reported, not raised: one contender must not stop the run
            message = " ".join(f"{type(error).__name__}: {error}".split())[:300]
            print(f"  failed: {message}", file=sys.stderr, flush=True)
            for contender in contenders:
                self.points.append(Point(contender, store, 0, 0, self.client, notes=[f"FAILED: {message}"]))

    def load(self, target: Target) -> None:
        """Check ``target``'s answers, then run every (connections, entities) point against it."""
        print(f"{target.contender} on {target.store}: {target.url}", flush=True)
        mismatches, cells, examples = check_answers(target, self.data, SEED + 1)
        self.checks.append(Check(target.contender, target.store, mismatches, cells, examples))
        print(f"  check: {mismatches:,} of {cells:,} cells differ from the data", flush=True)
        for example in examples:
            print(f"    {example}", flush=True)
        log = self.logs / f"serving-load-{target.contender}-{target.store}.log"
        if self.args.warmup_seconds > 0:
            self.generate(target, connections=max(self.connections), entities=max(self.entities),
                          seconds=self.args.warmup_seconds, seed=SEED, log=log)
        for connections in self.connections:
            for entities in self.entities:
                point = Point(target.contender, target.store, connections, entities, self.client)
                if mismatches:
                    point.notes.append(f"WRONG ANSWERS: {mismatches:,} of {cells:,} cells")
                point.fill(self.generate(target, connections=connections, entities=entities,
                                         seconds=self.args.seconds, seed=SEED + 100 * connections + entities, log=log))
                self.points.append(point)
                print(f"  {connections:>2} conns x {entities:>3} entities: {point.requests_per_second:,.0f} req/s, "
                      f"p50 {point.p50_ms:.2f} ms, p99 {point.p99_ms:.2f} ms, p99.9 {point.p999_ms:.2f} ms"
                      + (f", {point.errors:,} errors" if point.errors else ""), flush=True)

    def generate(self, target: Target, *, connections: int, entities: int, seconds: float, seed: int,
                 log: Path) -> Load:
        if self.client == "wrk":
            return run_wrk(target, connections=connections, entities=entities, seconds=seconds, seed=seed,
                           script_dir=self.workdir / "serving", log=log)
        return run_python_client(target, connections=connections, entities=entities, seconds=seconds, seed=seed)

    def sdk_connected(self, url: str, store: str, token: str | None) -> None:
        gm = import_gristmill()
        remote = gm.FeatureStore.connect(url, token=token)
        refs = [f"{FEATURE_SET}:1:{name}" for name in FEATURES]
        samples, elapsed = sdk_loop(lambda keys: remote.get_online_features(refs, {"account_id": keys}).to_dict(),
                                    self.args.sdk_seconds, SEED + 2)
        self.add_sdk_point("sdk-connected", store, samples, elapsed, "FeatureStore.connect, one call at a time")

    def sdk_in_process(self, path: Path, store: str) -> None:
        gm = import_gristmill()
        local = gm.FeatureStore(str(path))
        refs = [f"{FEATURE_SET}:1:{name}" for name in FEATURES]
        try:
            samples, elapsed = sdk_loop(lambda keys: local.get_online_features(refs, {"account_id": keys}).to_dict(),
                                        self.args.sdk_seconds, SEED + 3)
        finally:
            local.close()
        self.add_sdk_point("sdk-in-process", store, samples, elapsed, "FeatureStore(path), no HTTP (reference)")

    def add_sdk_point(self, contender: str, store: str, samples: list[int], elapsed: float, note: str) -> None:
        point = latencies_point(contender, store, samples, elapsed, note)
        self.points.append(point)
        print(f"  {contender}: {point.requests_per_second:,.0f} calls/s, p50 {point.p50_ms:.3f} ms, "
              f"p99 {point.p99_ms:.3f} ms", flush=True)


def main(argv: Sequence[str] | None = None) -> int:
    parser = arguments()
    args = parser.parse_args(argv)
    contenders = parse_list(args.only, CONTENDERS, "--only")
    if args.skip_feast:
        contenders = [c for c in contenders if c != "feast"]
    stores = parse_list(args.stores, STORES, "--stores")
    if args.seconds <= 0 or args.sdk_seconds <= 0:
        parser.error("--seconds and --sdk-seconds must be > 0")
    client = args.client
    if client == "auto":
        client = "wrk" if shutil.which("wrk") else "python"
    elif client == "wrk" and not shutil.which("wrk"):
        parser.error("--client wrk: wrk is not installed (apt-get install wrk), or use --client python")
    workdir: Path = args.workdir.resolve()
    logs = workdir / "logs"
    logs.mkdir(parents=True, exist_ok=True)
    (workdir / "serving").mkdir(parents=True, exist_ok=True)

    def interrupted(signum: int, frame: Any) -> None:
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, interrupted)   # a killed driver still stops its servers (finally blocks)
    data = ensure_data(workdir)
    run = Run(args, data, contenders, stores, parse_counts(args.connections, "--connections"),
              parse_counts(args.entities, "--entities"), client, workdir, logs)
    print(f"data: {ACCOUNTS:,} accounts x {len(FEATURES)} double features ({data.path}); load generator: {client}",
          flush=True)
    feast_python = feast_version = None
    if "feast" in contenders:
        feast_python, feast_version = ensure_feast_with_redis(workdir, args.feast_requirement,
                                                              logs / "feast-install.log")
        print(f"Feast {feast_version} in {feast_python.parent.parent}", flush=True)
    if "redis" in stores and (error := redis_available(args.redis_url)):
        raise SystemExit(f"--stores redis: {error}; start Redis or use --stores sqlite")

    try:
        if args.gristmill_url:
            headers = {"Authorization": f"Bearer {args.token}"} if args.token else {}
            url = args.gristmill_url.rstrip("/")
            if any(c.startswith("gristmill") for c in contenders):
                with run.attempt(["gristmill-url"], "(running server)"):
                    run.load(Target("gristmill-url", "(running server)", url, "gristmill", headers))
            if "sdk" in contenders:
                with run.attempt(["sdk-connected"], "(running server)"):
                    run.sdk_connected(url, "(running server)", args.token)
        for store in stores:
            run_store(run, store, feast_python)
    except KeyboardInterrupt:
        print("\ninterrupted: servers stopped; partial results follow", file=sys.stderr)
    finally:
        if run.wrote_redis and not args.keep_data:
            delete_redis_keys(args.redis_url, f"{REDIS_PREFIX}:*")
            delete_redis_keys(args.redis_url, f"*{FEAST_PROJECT}")

    add_ratios(run.points)
    print_table(run.points)
    gm = import_gristmill()
    commit = subprocess.run(["git", "-C", str(REPO_ROOT), "rev-parse", "--short", "HEAD"], capture_output=True,
                            text=True).stdout.strip()
    print(f"\n{datetime.now():%Y-%m-%d %H:%M}, commit {commit or '?'}, load generator {client}, "
          f"{args.seconds:g} s per point" + (f", Feast {feast_version}" if feast_version else "")
          + (f", gristmill serve {args.serve_args}" if args.serve_args else ""))
    if args.json_path:
        report = {
            "benchmark": "serving",
            "generated_at": datetime.now().isoformat(timespec="seconds"),
            "commit": commit,
            "gristmill_version": getattr(gm, "__version__", None),
            "feast_version": feast_version,
            "load_generator": client,
            "seconds_per_point": args.seconds,
            "serve_args": args.serve_args,
            "accounts": ACCOUNTS,
            "features": len(FEATURES),
            **machine_info(),
            "checks": [asdict(c) for c in run.checks],
            "results": [asdict(p) for p in run.points],
        }
        args.json_path.write_text(json.dumps(report, indent=2))
        print(f"results: {args.json_path}")
    return 0


def run_store(run: Run, store: str, feast_python: Path | None) -> None:
    """Build ``store``'s online data for the chosen contenders and run them against it. A contender that fails
    (setup, server start, load generator) becomes a row saying why; the others still run."""
    args, contenders = run.args, run.contenders
    log = run.logs / f"serving-setup-{store}.log"
    log.write_text("")
    gristmill_wanted = [c for c in ("gristmill-auth", "gristmill-noauth") if c in contenders and not args.gristmill_url]
    if gristmill_wanted or "sdk" in contenders:
        with run.attempt([*gristmill_wanted, *(["sdk"] if "sdk" in contenders else [])], store):
            print(f"building the Gristmill store on {store} (log: {log}) ...", flush=True)
            started = time.perf_counter()
            run.wrote_redis |= store == "redis"
            store_path, token = build_gristmill(run.data, run.workdir / "serving" / f"gristmill-{store}", store,
                                                args.redis_url, log)
            print(f"  {time.perf_counter() - started:.1f} s: {store_path}", flush=True)
            for contender, auth in (("gristmill-auth", True), ("gristmill-noauth", False)):
                sdk = auth and "sdk" in contenders and not args.gristmill_url
                if contender in gristmill_wanted or sdk:
                    with run.attempt([contender] if contender in gristmill_wanted else ["sdk-connected"], store):
                        run_gristmill_server(run, contender, store, store_path, token if auth else None,
                                             load=contender in gristmill_wanted, sdk=sdk)
            if "sdk" in contenders:
                with run.attempt(["sdk-in-process"], store):
                    run.sdk_in_process(store_path, store)
    if "feast" in contenders and feast_python is not None:
        with run.attempt(["feast"], store):
            print(f"building the Feast repo on {store} (log: {log}) ...", flush=True)
            started = time.perf_counter()
            run.wrote_redis |= store == "redis"
            repo = build_feast(run.data, run.workdir / "serving" / f"feast-{store}", store, args.redis_url,
                               feast_python, log)
            print(f"  {time.perf_counter() - started:.1f} s: {repo}", flush=True)
            port = free_port()
            command = [str(feast_python.parent / "feast"), "-c", str(repo), "serve", "-h", "127.0.0.1", "-p",
                       str(port), "-w", "1", "--no-access-log"]
            with server_process("feast serve", command, port=port, log=run.logs / f"serving-feast-{store}.log") as url:
                run.load(Target("feast", store, url, "feast"))


def run_gristmill_server(run: Run, contender: str, store: str, store_path: Path, token: str | None, *, load: bool,
                         sdk: bool) -> None:
    """``gristmill serve`` (``--no-auth`` without a token, plus ``--serve-args``) on a free port: the load
    points when ``load``, the connected SDK's loop when ``sdk``."""
    port = free_port()
    command = [*gristmill_command(), "serve", "--store", str(store_path), "--host", "127.0.0.1", "--port", str(port),
               *([] if token else ["--no-auth"]), *shlex.split(run.args.serve_args)]
    with server_process(contender, command, port=port, log=run.logs / f"serving-{contender}-{store}.log",
                        env=child_env()) as url:
        if load:
            run.load(Target(contender, store, url, "gristmill", {"Authorization": f"Bearer {token}"} if token else {}))
        if sdk:
            run.sdk_connected(url, store, token)

if __name__ == "__main__":
    sys.exit(main())
