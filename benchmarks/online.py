"""Online lookup latency benchmark: Gristmill vs Feast, Redis and SQLite online stores.

Materializes case A of ``offline_retrieval.py`` (3M feature rows, 100k accounts, 13 features) into the
online store (Gristmill: an online-only backfill with the clock fixed just after the last event; Feast:
``materialize`` of the whole range), then measures ``get_online_features(...).to_dict()`` in process:
warm-up calls first, then thousands of calls for 1 entity and for 100 entities each, keys drawn at
random (fixed seed, the same keys for every contender) from the accounts that are materialized and
not expired, with about 2% unknown keys mixed in. Finally a few batches are checked cell by cell
against the newest source row of each key.

Each contender runs in its own child process (Feast in its venv, see ``materialization.py``).

Example::

    python benchmarks/online.py --scale 0.05                  # quick run
    python benchmarks/online.py --only redis                  # full size, Redis only
    python benchmarks/online.py --only gristmill --calls 5000 --batch-calls 2000

See benchmarks/README.md for what is measured and how.
"""

from __future__ import annotations

import json
import os
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow.parquet as pq
from materialization import (
    Services,
    benchmark_arguments,
    benchmark_setup,
    child_entry,
    delete_redis_keys,
    failure,
    feast_entity_count,
    feast_materialize,
    feast_store,
    feast_teardown,
    fmt,
    format_table,
    gristmill_backfill,
    gristmill_store,
    machine_info,
    run_contender,
)
from offline_retrieval import (
    CASE_A_FEATURE_SET,
    CASE_A_FEATURES,
    CASE_A_LOOKBACK_DAYS,
    Dataset,
)

CONTENDERS = ("gristmill-redis", "gristmill-sqlite", "feast-redis", "feast-sqlite")
SEED = 7
UNKNOWN_FRACTION = 0.02
BATCH_SIZE = 100
CHECK_BATCHES = 5
#: Gristmill targets on Redis, in milliseconds: (entities per call, percentile) -> limit
TARGETS_MS = {(1, "p50"): 0.3, (1, "p99"): 1.0, (BATCH_SIZE, "p50"): 2.0}


# --------------------------------------------------------------------------------------------
# Keys and expected values (driver)
# --------------------------------------------------------------------------------------------


def latest_rows(dataset: Dataset, now: datetime) -> dict[str, dict[str, Any]]:
    """The newest source row of every account that is still live at ``now`` (event time + lookback
    > now), i.e. what a correct online store serves; keyed by account id."""
    import duckdb

    features = ", ".join(CASE_A_FEATURES)
    path = str(dataset.features).replace("'", "''")
    connection = duckdb.connect()
    rows = connection.execute(
        f"""
        SELECT account_id, {features} FROM read_parquet('{path}')
        QUALIFY row_number() OVER (PARTITION BY account_id ORDER BY ts DESC) = 1
            AND ts > ?::TIMESTAMP - INTERVAL {CASE_A_LOOKBACK_DAYS} DAY
        ORDER BY account_id
        """,
        [now],
    ).fetchall()
    connection.close()
    names = list(CASE_A_FEATURES)
    return {row[0]: dict(zip(names, row[1:], strict=True)) for row in rows}


def draw_keys(accounts: list[str], count: int, rng: np.random.Generator) -> list[str]:
    """``count`` keys drawn from ``accounts`` with replacement, about 2% replaced by unknown keys."""
    keys = [accounts[i] for i in rng.integers(0, len(accounts), count)]
    for i in np.flatnonzero(rng.random(count) < UNKNOWN_FRACTION).tolist():
        keys[i] = f"unknown_{i:07d}"
    return keys


def key_plan(accounts: list[str], calls: int, batch_calls: int, warmup: int) -> dict[str, Any]:
    rng = np.random.default_rng(SEED)

    def batches(n: int) -> list[list[str]]:
        flat = draw_keys(accounts, n * BATCH_SIZE, rng)
        return [flat[i:i + BATCH_SIZE] for i in range(0, len(flat), BATCH_SIZE)]

    return {
        "warmup_single": draw_keys(accounts, warmup, rng),
        "warmup_batch": batches(max(1, warmup // 10)),
        "single": draw_keys(accounts, calls, rng),
        "batch": batches(batch_calls),
        "check": batches(CHECK_BATCHES),
    }


def count_mismatches(outputs: list[dict[str, list[Any]]], batches: list[list[str]],
                     expected: dict[str, dict[str, Any]]) -> tuple[int, int]:
    """(cells that differ from the newest source row, cells compared); unknown keys expect nulls."""
    mismatches = cells = 0
    for output, keys in zip(outputs, batches, strict=True):
        for name in CASE_A_FEATURES:
            column = output.get(name)
            for i, key in enumerate(keys):
                want = expected.get(key, {}).get(name)
                got = None if column is None or i >= len(column) else column[i]
                cells += 1
                if want is None or got is None:
                    mismatches += (want is None) != (got is None)
                elif abs(float(got) - float(want)) > 1e-9 * max(1.0, abs(float(want))):
                    mismatches += 1
    return mismatches, cells


# --------------------------------------------------------------------------------------------
# Children
# --------------------------------------------------------------------------------------------


def measure(lookup: Callable[[list[str]], dict[str, list[Any]]], keys: dict[str, Any]) -> dict[str, Any]:
    """Warm up, then time every call (``lookup`` includes ``to_dict()``); return latencies in ms."""
    for key in keys["warmup_single"]:
        lookup([key])
    for batch in keys["warmup_batch"]:
        lookup(batch)
    clock = time.perf_counter_ns
    single = []
    for key in keys["single"]:
        started = clock()
        lookup([key])
        single.append(clock() - started)
    batched = []
    for batch in keys["batch"]:
        started = clock()
        lookup(batch)
        batched.append(clock() - started)
    return {
        "single_ms": [n / 1e6 for n in single],
        "batch_ms": [n / 1e6 for n in batched],
        "check_outputs": [lookup(batch) for batch in keys["check"]],
    }


def redis_round_trip(url: str, calls: int = 2000) -> dict[str, float] | None:
    """p50/p99 ms of a raw-socket ``PING`` to the Redis at ``url`` (no client library): the floor under
    any Redis lookup from this process. None for a URL with a password or a non-TCP URL."""
    import socket
    from urllib.parse import urlsplit

    parts = urlsplit(url)
    if parts.scheme != "redis" or parts.password:
        return None
    with socket.create_connection((parts.hostname or "127.0.0.1", parts.port or 6379), timeout=5) as sock:
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        clock = time.perf_counter_ns
        samples = []
        for i in range(calls + calls // 10):
            started = clock()
            sock.sendall(b"*1\r\n$4\r\nPING\r\n")
            reply = b""
            while not reply.endswith(b"\r\n"):
                reply += sock.recv(64)
            if i >= calls // 10:  # the first tenth warms up
                samples.append(clock() - started)
    values = np.asarray(samples, dtype=np.float64) / 1e6
    return {"p50": float(np.percentile(values, 50)), "p99": float(np.percentile(values, 99))}


def run_gristmill(config: dict[str, Any]) -> dict[str, Any]:
    keys = json.loads(Path(config["keys_path"]).read_text())
    started = time.perf_counter()
    store, refs = gristmill_store(config, offline=False)
    try:
        gristmill_backfill(store, config)
        materialize_seconds = time.perf_counter() - started

        def lookup(batch: list[str]) -> dict[str, list[Any]]:
            return store.get_online_features(refs, {"account_id": batch}).to_dict()

        result = measure(lookup, keys)
        if config["online"] == "redis":
            result["redis_round_trip_ms"] = redis_round_trip(config["redis_url"])
    finally:
        if config["online"] == "redis":
            delete_redis_keys(config["redis_url"], f"{config['prefix']}:*")
        store.close()
    result["materialize_seconds"] = materialize_seconds
    return result


def run_feast(config: dict[str, Any]) -> dict[str, Any]:
    keys = json.loads(Path(config["keys_path"]).read_text())
    started = time.perf_counter()
    store = feast_store(config)
    try:
        feast_materialize(store, config)
        materialize_seconds = time.perf_counter() - started
        entities = feast_entity_count(config)
        refs = [f"{CASE_A_FEATURE_SET}:{name}" for name in CASE_A_FEATURES]

        def lookup(batch: list[str]) -> dict[str, list[Any]]:
            return store.get_online_features(features=refs, entity_rows={"account_id": batch}).to_dict()

        result = measure(lookup, keys)
        if config["online"] == "redis":
            result["redis_round_trip_ms"] = redis_round_trip(config["redis_url"])
    finally:
        feast_teardown(store, config)
    result["materialize_seconds"] = materialize_seconds
    result["entities_in_store"] = entities
    return result


# --------------------------------------------------------------------------------------------
# Driver
# --------------------------------------------------------------------------------------------


@dataclass
class Outcome:
    contender: str
    status: str = "ok"  # ok | failed | unavailable | timeout
    detail: str = ""
    materialize_seconds: float | None = None
    peak_rss_mib: float | None = None
    process_seconds: float | None = None
    latency_ms: dict[str, float] = field(default_factory=dict)   # "1 p50", "100 p99", ...
    calls: dict[str, int] = field(default_factory=dict)
    mismatches: int | None = None
    cells_checked: int | None = None
    redis_round_trip_ms: dict[str, float] | None = None   # raw-socket PING p50/p99, right after the calls
    targets: dict[str, bool] = field(default_factory=dict)


def summarize(outcome: Outcome, reported: dict[str, Any]) -> None:
    for entities, name in ((1, "single_ms"), (BATCH_SIZE, "batch_ms")):
        values = np.asarray(reported[name], dtype=np.float64)
        outcome.calls[str(entities)] = len(values)
        for label, value in (("p50", np.percentile(values, 50)), ("p99", np.percentile(values, 99)),
                             ("mean", values.mean()), ("max", values.max())):
            outcome.latency_ms[f"{entities} {label}"] = float(value)
    if outcome.contender == "gristmill-redis":
        outcome.targets = {f"{entities} entit{'y' if entities == 1 else 'ies'} {p} <= {limit} ms":
                           outcome.latency_ms[f"{entities} {p}"] <= limit
                           for (entities, p), limit in TARGETS_MS.items()}


def print_table(outcomes: Sequence[Outcome]) -> None:
    header = ("contender", "materialize s", "1: p50 ms", "p99 ms", f"{BATCH_SIZE}: p50 ms", "p99 ms",
              "PING p50 ms", "peak RSS MiB", "mismatches", "targets", "notes")
    rows = []
    for o in outcomes:
        notes = [] if o.status == "ok" else [o.status]
        if o.detail:
            notes.append(o.detail)
        lat = o.latency_ms
        targets = ", ".join(("met" if ok else "MISSED") + f" {name}" for name, ok in o.targets.items())
        checked = "-" if o.mismatches is None else f"{o.mismatches:,} / {o.cells_checked:,}"
        rows.append((o.contender, fmt(o.materialize_seconds, ".1f"), fmt(lat.get("1 p50"), ".3f"),
                     fmt(lat.get("1 p99"), ".3f"), fmt(lat.get(f"{BATCH_SIZE} p50"), ".2f"),
                     fmt(lat.get(f"{BATCH_SIZE} p99"), ".2f"),
                     fmt(o.redis_round_trip_ms["p50"] if o.redis_round_trip_ms else None, ".3f"),
                     fmt(o.peak_rss_mib, ",.0f"), checked, targets or "-",
                     "; ".join(notes)))
    print()
    print(format_table(header, rows))


def main(argv: Sequence[str] | None = None) -> int:
    parser = benchmark_arguments(CONTENDERS, "gristmill, feast, redis, sqlite", __doc__)
    parser.add_argument("--calls", type=int, default=5000, help="timed 1-entity calls (default 5000)")
    parser.add_argument("--batch-calls", type=int, default=2000,
                        help=f"timed {BATCH_SIZE}-entity calls (default 2000)")
    parser.add_argument("--warmup", type=int, default=300, help="untimed 1-entity calls first (and a tenth as "
                        f"many {BATCH_SIZE}-entity calls)")
    args = parser.parse_args(argv)
    if args.child:
        return child_entry([args.child], run_gristmill)
    if args.feast_child:
        return child_entry([args.feast_child], run_feast)
    setup = benchmark_setup(args, parser, CONTENDERS)
    contenders, workdir, dataset, sizes, logs = setup.contenders, setup.workdir, setup.dataset, setup.sizes, setup.logs
    start, end, now = setup.start, setup.end, setup.now
    run_root = workdir / "runs" / f"scale-{args.scale:g}" / "online"
    run_root.mkdir(parents=True, exist_ok=True)

    expected = latest_rows(dataset, now)
    keys = key_plan(sorted(expected), args.calls, args.batch_calls, args.warmup)
    keys_path = run_root / "keys.json"
    keys_path.write_text(json.dumps(keys))
    accounts = pq.read_table(dataset.features, columns=["account_id"]).column("account_id").unique()
    print(f"clock now = {now}; {len(expected):,} of {len(accounts):,} accounts live at now "
          f"(newest row within {CASE_A_LOOKBACK_DAYS} days); keys drawn from them, "
          f"{UNKNOWN_FRACTION:.0%} unknown", flush=True)

    services = Services.prepare(args, contenders, workdir, logs)
    feast_python, feast_version = services.feast_python, services.feast_version

    run_id = f"{os.getpid()}"
    outcomes: list[Outcome] = []
    for contender in contenders:
        outcome = Outcome(contender)
        outcomes.append(outcome)
        missing = services.missing_for(contender)
        if missing:
            outcome.status, outcome.detail = "unavailable", missing
            continue
        result_path = run_root / f"{contender}.json"
        result_path.unlink(missing_ok=True)
        config = {
            "contender": contender,
            "online": "redis" if "redis" in contender else "sqlite",
            "data_root": str(dataset.root),
            "run_dir": str(run_root / contender),
            "result_path": str(result_path),
            "keys_path": str(keys_path),
            "start": start.isoformat(),
            "end": end.isoformat(),
            "now": now.isoformat(),
            "redis_url": args.redis_url,
            "prefix": f"gmbench-online-{run_id}-{contender}",
            "project": f"gmbench_online_{run_id}_{contender.replace('-', '_')}",
            "feast_offline": args.feast_offline,
        }
        log = logs / f"online-{contender}.log"
        code, elapsed, rss, timed_out, reported = run_contender(
            contender, config, script=Path(__file__).resolve(), feast_python=feast_python, log=log,
            timeout=args.timeout)
        outcome.process_seconds, outcome.peak_rss_mib = elapsed, rss
        failed = failure(code, timed_out, reported, timeout=args.timeout, log=log)
        if failed:
            outcome.status, outcome.detail = failed
            continue
        outcome.materialize_seconds = float(reported["materialize_seconds"])
        summarize(outcome, reported)
        outcome.redis_round_trip_ms = reported.get("redis_round_trip_ms")
        outcome.mismatches, outcome.cells_checked = count_mismatches(reported["check_outputs"], keys["check"],
                                                                     expected)
        if reported.get("entities_in_store"):
            outcome.detail = (f"{reported['entities_in_store']:,} entities materialized (Feast does not expire rows "
                              "by event time)")
        lat = outcome.latency_ms
        print(f"  1 entity p50 {lat['1 p50']:.3f} ms, p99 {lat['1 p99']:.3f} ms; {BATCH_SIZE} entities "
              f"p50 {lat[f'{BATCH_SIZE} p50']:.2f} ms, p99 {lat[f'{BATCH_SIZE} p99']:.2f} ms", flush=True)

    print_table(outcomes)
    if feast_version:
        print(f"\nFeast {feast_version}")
    report = {
        "benchmark": "online",
        "generated_at": datetime.now().isoformat(timespec="seconds"),
        "scale": args.scale,
        "sizes": asdict(sizes),
        "clock_now": now.isoformat(),
        "live_accounts": len(expected),
        "unknown_key_fraction": UNKNOWN_FRACTION,
        "batch_size": BATCH_SIZE,
        "feast_version": feast_version,
        "feast_offline_store": args.feast_offline,
        **machine_info(),
        "results": [asdict(o) for o in outcomes],
    }
    output = workdir / "online-results.json"
    output.write_text(json.dumps(report, indent=2))
    print(f"results: {output}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
