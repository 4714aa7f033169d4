"""The two requests that used to take ``gristmill serve`` down, sent to a real server; prints its peak RSS.

1. a Materializer's backfill of ``[2026-01-01, 9999-12-30)`` into the offline store: refused (400) because
   it ends after now; then the same with ``allow_future`` and the span limit raised so that it runs (a
   job of 20,000 rows over 7,974 years, run by the server's backfill worker, not inside the request);
2. a Reader's ``POST /v1/offline/features`` with a ~158 KB zstd Parquet body of 20M identical rows:
   refused (413) from the Parquet footer, before any row is read.

Run: ``python benchmarks/server_attacks.py`` (needs the server extra). Exit code 1 when the server's peak
RSS passes ``BOUND_MB``.
"""

from __future__ import annotations

import io
import subprocess
import sys
import tempfile
import time
from datetime import datetime, timedelta
from pathlib import Path

import httpx
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import yaml

import gristmill as gm
from gristmill.auth import AccessRecords

BOUND_MB = 1024          # the stated bound for the server's peak RSS during both attacks
ROWS = 20_000


def peak_rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def build_store(root: Path) -> tuple[gm.FeatureStore, dict[str, str]]:
    (root / "data").mkdir(parents=True)
    start = datetime(2026, 1, 1)
    pd.DataFrame({"account_id": [f"A{i % 500:04d}" for i in range(ROWS)],
                  "ts": pd.Series([start + timedelta(minutes=37 * i) for i in range(ROWS)]).astype("datetime64[us]"),
                  "amount": [float(i % 97) for i in range(ROWS)]}).to_parquet(root / "data" / "tx.parquet")
    repo = root / "repo"
    (repo / "transactions" / "spec").mkdir(parents=True)
    (repo / "account.yaml").write_text("name: account\nversion: '1'\n"
                                       "index_columns: [{name: account_id, type: string}]\n")
    (repo / "transactions" / "FeatureSet.yaml").write_text(yaml.safe_dump({
        "name": "transactions", "version": "1", "specification": {"path": "./spec"}, "entities": ["account:1"],
        "materialization_settings": {"offline_enabled": True}}))
    (repo / "transactions" / "spec" / "FeatureSetSpec.yaml").write_text(yaml.safe_dump({
        "source": {"type": "parquet", "path": str(root / "data" / "tx.parquet"), "timestamp_column": {"name": "ts"}},
        "index_columns": [{"name": "account_id", "type": "string"}],
        "features": [{"name": "amount", "type": "double"}]}))
    store = gm.FeatureStore.init(root / "store")
    config_file = store.path / "featurestore.yaml"
    config = yaml.safe_load(config_file.read_text())
    config["limits"]["backfill_max_span_days"] = 3_000_000      # so that the far-future window may run
    config_file.write_text(yaml.safe_dump(config))
    store = gm.FeatureStore(store.path)
    assert store.apply(repo).ok
    access = AccessRecords(store.materializer.records)
    tokens = {}
    for name, role in (("materializer", "Materializer"), ("reader", "Reader")):
        access.add_principal(name)
        access.grant(name, role, by="benchmark")
        tokens[name] = access.create_token(name)
    return store, tokens


def attack_parquet() -> bytes:
    """20M identical rows, zstd: about 158 KB."""
    out = io.BytesIO()
    chunk = pa.table({"account_id": pa.array(["A0001"] * 1_000_000).dictionary_encode(),
                      "ts": pa.array([datetime(2026, 6, 1)] * 1_000_000, pa.timestamp("us"))})
    with pq.ParquetWriter(out, chunk.schema, compression="zstd") as writer:
        for _ in range(20):
            writer.write_table(chunk)
    return out.getvalue()


def main() -> int:
    with tempfile.TemporaryDirectory() as tmp:
        store, tokens = build_store(Path(tmp))
        port = 18000 + int(time.time()) % 1000
        gristmill = Path(sys.executable).with_name("gristmill")
        server = subprocess.Popen([str(gristmill), "serve", "--port", str(port), "--store", str(store.path)],
                                  stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
        url = f"http://127.0.0.1:{port}"
        try:
            while True:
                try:
                    httpx.get(f"{url}/health", timeout=1)
                    break
                except httpx.TransportError:
                    if server.poll() is not None:
                        print(server.communicate()[1])
                        return 2
                    time.sleep(0.1)
            idle = peak_rss_mb(server.pid)
            print(f"server started: peak RSS {idle:.0f} MB")
            materializer = {"Authorization": f"Bearer {tokens['materializer']}"}
            window = {"start": "2026-01-01T00:00:00", "end": "9999-12-30T00:00:00", "stores": ["offline"]}
            path = f"{url}/v1/feature-sets/transactions/1/backfill"
            started = time.perf_counter()
            refused = httpx.post(path, json=window, headers=materializer, timeout=60)
            print(f"1. backfill to 9999-12-30: HTTP {refused.status_code} in {time.perf_counter() - started:.2f} s: "
                  f"{refused.json()['error'][:110]}...")
            started = time.perf_counter()
            queued = httpx.post(path, json={**window, "allow_future": True}, headers=materializer, timeout=60)
            answered = time.perf_counter() - started
            [job] = queued.json()
            while job["status"] in ("Queued", "Running"):
                time.sleep(0.05)
                job = httpx.get(f"{url}/v1/jobs/{job['id']}", headers=materializer).json()
            print(f"   with allow_future: HTTP {queued.status_code} in {answered:.2f} s; job {job['status']} in "
                  f"{time.perf_counter() - started:.2f} s, {job['rows_written']:,} rows written; "
                  f"server peak RSS {peak_rss_mb(server.pid):.0f} MB")
            body = attack_parquet()
            started = time.perf_counter()
            answer = httpx.post(f"{url}/v1/offline/features", content=body, timeout=60,
                                params={"features": "transactions:1:amount", "timestamp_column": "ts"},
                                headers={"Authorization": f"Bearer {tokens['reader']}",
                                         "Content-Type": "application/vnd.apache.parquet"})
            print(f"2. {len(body) / 1024:.0f} KB zstd Parquet of 20M rows: HTTP {answer.status_code} in "
                  f"{time.perf_counter() - started:.2f} s: {answer.json()['error'][:100]}...")
            peak = peak_rss_mb(server.pid)
            print(f"server peak RSS over both attacks: {peak:.0f} MB (bound {BOUND_MB} MB): "
                  f"{'OK' if peak <= BOUND_MB else 'OVER'}")
            return 0 if peak <= BOUND_MB else 1
        finally:
            server.terminate()
            server.wait(timeout=30)


if __name__ == "__main__":
    raise SystemExit(main())
