"""The Delta offline store: window replacement in one commit, rows outside untouched, readers never see
half a window (also when the writer is killed mid-write)."""

from __future__ import annotations

import subprocess
import sys
import textwrap
from datetime import datetime
from pathlib import Path

import duckdb
import pyarrow as pa

from gristmill.compute.duckdb.jobs import register_offline, write_offline_window
from gristmill.stores.offline.delta import DeltaOfflineStore, OfflineTable

TABLE = OfflineTable(feature_set="txn", version="1", materialization_version=1, keys=("acct",), timestamp="ts",
                     features=("f",))


def _rows(*rows: tuple[str, datetime, float]) -> pa.Table:
    return pa.table({"acct": [r[0] for r in rows], "ts": pa.array([r[1] for r in rows], pa.timestamp("us")),
                     "create_timestamp": pa.array([datetime(2024, 2, 1)] * len(rows), pa.timestamp("us")),
                     "f": [r[2] for r in rows]})


def _stored(store: DeltaOfflineStore) -> list[tuple[str, str, float]]:
    table = store.read(TABLE).to_pylist()
    return [(r["acct"], r["ts"].strftime("%m-%d %H:%M"), r["f"]) for r in table]


def test_window_replacement_scenario_16(tmp_path: Path) -> None:
    store = DeltaOfflineStore(str(tmp_path / "offline"))
    store.write_window(TABLE, _rows(("A", datetime(2024, 1, 1, 10), 1.0), ("A", datetime(2024, 1, 2, 10), 2.0),
                                    ("A", datetime(2024, 1, 3, 10), 3.0)), datetime(2024, 1, 1), datetime(2024, 1, 4))
    stats = store.write_window(TABLE, _rows(("A", datetime(2024, 1, 2, 12), 22.0)), datetime(2024, 1, 2),
                               datetime(2024, 1, 3))
    assert stats.rows == 1 and stats.table_version == 1
    assert _stored(store) == [("A", "01-01 10:00", 1.0), ("A", "01-02 12:00", 22.0), ("A", "01-03 10:00", 3.0)]


def test_window_boundaries_inside_a_day_partition(tmp_path: Path) -> None:
    store = DeltaOfflineStore(str(tmp_path / "offline"))
    day = [("A", datetime(2024, 1, 1, h), float(h)) for h in (0, 6, 12, 18)]
    store.write_window(TABLE, _rows(*day), datetime(2024, 1, 1), datetime(2024, 1, 2))
    store.write_window(TABLE, _rows(("A", datetime(2024, 1, 1, 7), 7.0)), datetime(2024, 1, 1, 6),
                       datetime(2024, 1, 1, 12))
    assert [f for _, _, f in _stored(store)] == [0.0, 7.0, 12.0, 18.0]


def test_empty_window_deletes_rows_removed_at_the_source(tmp_path: Path) -> None:
    store = DeltaOfflineStore(str(tmp_path / "offline"))
    store.write_window(TABLE, _rows(("A", datetime(2024, 1, 1, 10), 1.0), ("B", datetime(2024, 1, 2, 10), 2.0)),
                       datetime(2024, 1, 1), datetime(2024, 1, 3))
    store.write_window(TABLE, _rows(), datetime(2024, 1, 2), datetime(2024, 1, 3))
    assert _stored(store) == [("A", "01-01 10:00", 1.0)]


def test_engines_read_only_the_files_and_rows_of_the_given_windows(tmp_path: Path) -> None:
    store = DeltaOfflineStore(str(tmp_path / "offline"))
    rows = _rows(*[("A", datetime(2024, 1, d, 10), float(d)) for d in range(1, 6)])
    store.write_window(TABLE, rows, datetime(2024, 1, 1), datetime(2024, 1, 6))
    con = duckdb.connect()
    con.execute("SET TimeZone = 'UTC'")
    windows = [(datetime(2024, 1, 2), datetime(2024, 1, 3)), (datetime(2024, 1, 4, 10), datetime(2024, 1, 6))]
    handed = store.files(TABLE, windows)
    assert sorted(f.split("_event_day=")[1][:10] for f in handed.files) == ["2024-01-02", "2024-01-04", "2024-01-05"]
    view = register_offline(con, store, TABLE, windows, schema=rows.schema)
    got = con.execute(f"SELECT f, ts FROM {view} ORDER BY ts").fetchall()
    assert got == [(2.0, datetime(2024, 1, 2, 10)), (4.0, datetime(2024, 1, 4, 10)), (5.0, datetime(2024, 1, 5, 10))]
    assert store.files(TABLE, []).files == ()
    empty = register_offline(con, store, TABLE, [], schema=rows.schema)
    assert con.execute(f"SELECT count(*) FROM {empty}").fetchall() == [(0,)]


def test_killed_writer_leaves_the_table_as_before(tmp_path: Path) -> None:
    """A writer killed in the middle of a large write commits nothing: readers see the previous table. (A
    writer that finished before the kill proves nothing: the next attempt writes three times as many rows.)"""
    import time

    rows = 3_000_000
    for attempt in range(3):
        root = str(tmp_path / f"offline-{attempt}")
        store = DeltaOfflineStore(root)
        store.write_window(TABLE, _rows(("A", datetime(2024, 1, 1, 10), 1.0)), datetime(2024, 1, 1),
                           datetime(2024, 1, 2))
        before = _stored(store)
        script = textwrap.dedent(f"""
            import sys
            from datetime import datetime, timedelta
            import numpy as np, pyarrow as pa
            from gristmill.stores.offline.delta import DeltaOfflineStore, OfflineTable
            table = OfflineTable("txn", "1", 1, ("acct",), "ts", ("f",))
            n = {rows}
            ts = np.datetime64("2024-01-01") + (np.arange(n) % 86_400_000_000).astype("timedelta64[us]")
            rows = pa.table({{"acct": pa.array(np.arange(n).astype(str)), "ts": pa.array(ts),
                             "create_timestamp": pa.array(ts), "f": np.arange(n, dtype=float)}})
            print("writing", flush=True)
            DeltaOfflineStore({root!r}).write_window(table, rows, datetime(2024, 1, 1), datetime(2024, 1, 2))
            print("done", flush=True)
        """)
        process = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, text=True)
        assert process.stdout is not None
        assert process.stdout.readline().strip() == "writing"
        time.sleep(0.5)  # let the writer start producing files, then kill it before it can commit
        process.kill()
        process.wait()
        if "done" not in process.stdout.read():  # killed before its write returned
            assert _stored(store) == before
            return
        rows *= 3
    raise AssertionError("every writer finished before it could be killed: the test proved nothing")


def test_engine_written_window_keeps_rows_of_the_same_day_outside_it(tmp_path: Path) -> None:
    """DuckDB writes the files the store hands it a place for, one Delta commit swaps the day partitions in."""
    store = DeltaOfflineStore(str(tmp_path / "offline"))
    con = duckdb.connect()
    con.execute("SET TimeZone = 'UTC'")
    con.register("day_rows", _rows(*[("A", datetime(2024, 1, 1, h), float(h)) for h in (0, 6, 12, 18)],
                                   ("A", datetime(2024, 1, 2, 6), 30.0)))
    first = write_offline_window(con, store, TABLE, "day_rows", datetime(2024, 1, 1), datetime(2024, 1, 3))
    assert first.rows == 5 and first.bytes > 0
    con.register("patch", _rows(("A", datetime(2024, 1, 1, 7), 7.0)))
    write_offline_window(con, store, TABLE, "patch", datetime(2024, 1, 1, 6), datetime(2024, 1, 1, 12))
    assert [f for _, _, f in _stored(store)] == [0.0, 7.0, 12.0, 18.0, 30.0]
    con.register("nothing", _rows())
    write_offline_window(con, store, TABLE, "nothing", datetime(2024, 1, 2), datetime(2024, 1, 3))
    assert [f for _, _, f in _stored(store)] == [0.0, 7.0, 12.0, 18.0]


def test_concurrent_writers_of_one_day_lose_nothing_and_duplicate_nothing(tmp_path: Path) -> None:
    """Six processes rewrite disjoint hours of one day at once (scheduler workers, or two backfills). Each
    rewrite carries the day's other stored rows, so a commit landing on a stale snapshot would drop or
    duplicate them; a commit that lost the race is redone on the new snapshot."""
    root = str(tmp_path / "offline")
    store = DeltaOfflineStore(root)
    con = duckdb.connect()
    con.execute("SET TimeZone = 'UTC'")
    con.register("day", _rows(*[("A", datetime(2024, 1, 1, h), -1.0) for h in range(0, 24, 4)]))
    write_offline_window(con, store, TABLE, "day", datetime(2024, 1, 1), datetime(2024, 1, 2))   # stored before
    go = tmp_path / "go"
    script = textwrap.dedent(f"""
        import sys, time
        from datetime import datetime
        from pathlib import Path
        import duckdb, pyarrow as pa
        from gristmill.compute.duckdb.jobs import write_offline_window
        from gristmill.stores.offline.delta import DeltaOfflineStore, OfflineTable
        hour = int(sys.argv[1])
        table = OfflineTable("txn", "1", 1, ("acct",), "ts", ("f",))
        con = duckdb.connect()
        con.execute("SET TimeZone = 'UTC'")
        when = pa.array([datetime(2024, 1, 1, hour)], pa.timestamp("us"))
        con.register("patch", pa.table({{"acct": ["A"], "ts": when, "f": [float(hour)],
                                         "create_timestamp": pa.array([datetime(2024, 2, 1)], pa.timestamp("us"))}}))
        store = DeltaOfflineStore({root!r})
        print("ready", flush=True)
        while not Path({str(go)!r}).exists():
            time.sleep(0.001)
        for _ in range(3):                         # three rewrites each: more chances to collide
            write_offline_window(con, store, table, "patch", datetime(2024, 1, 1, hour), datetime(2024, 1, 1, hour + 1))
    """)
    hours = range(1, 24, 4)                       # 01:00, 05:00, ...: between the stored rows
    writers = [subprocess.Popen([sys.executable, "-c", script, str(h)], stdout=subprocess.PIPE, text=True)
               for h in hours]
    for writer in writers:
        assert writer.stdout is not None and writer.stdout.readline().strip() == "ready"
    go.touch()
    for writer in writers:
        assert writer.wait(timeout=120) == 0
    expected = sorted([(f"01-01 {h:02d}:00", -1.0) for h in range(0, 24, 4)] +
                      [(f"01-01 {h:02d}:00", float(h)) for h in hours])
    assert sorted((ts, f) for _, ts, f in _stored(store)) == expected
