"""Scale check (not a test): point-in-time retrieval of 5M observations against 15M feature rows
(13 features, 500k accounts) must finish within 8 GiB of memory, spilling instead of crashing.

    python benchmarks/scale_retrieval.py [--workdir /tmp/gristmill-scale] [--memory-limit 6GB] [--scale 1.0]

Prints wall time and the peak RSS of the retrieval process (measured in a child process)."""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import time
from pathlib import Path

CHILD = """
import json, resource, sys, time
from gristmill.compute.duckdb.engine import DuckDBEngine
from gristmill.compute.engine import FeatureSetRequest
from gristmill.spec import FeatureSetSpec
workdir, memory_limit = sys.argv[1], sys.argv[2] or None
spec = FeatureSetSpec.from_dict({
    "source": {"type": "parquet", "path": "features.parquet", "timestamp_column": {"name": "ts"}},
    "index_columns": [{"name": "account_id", "type": "string"}],
    "features": [{"name": f"f{i:02d}", "type": "double"} for i in range(1, 14)],
    "temporal_join_lookback": {"days": 2}}, folder=workdir)
started = time.perf_counter()
engine = DuckDBEngine(memory_limit=memory_limit, temp_directory=workdir + "/spill")
request = FeatureSetRequest("scale:1", spec, tuple((f"f{i:02d}", f"f{i:02d}") for i in range(1, 14)))
engine.retrieve([request], workdir + "/observations.parquet", "ts").to_parquet(workdir + "/out.parquet")
print(json.dumps({"seconds": time.perf_counter() - started,
                  "peak_rss_gib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20}))
"""


def generate(workdir: Path, scale: float) -> None:
    import numpy as np
    import pyarrow as pa
    import pyarrow.parquet as pq

    features, observations = int(15_000_000 * scale), int(5_000_000 * scale)
    accounts = max(int(500_000 * scale), 10)
    marker = workdir / f".generated-{features}-{observations}"
    if marker.exists():
        return
    workdir.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(2)
    base = np.datetime64("2024-01-01T00:00:00", "us")
    ids = np.array([f"acct_{i:07d}" for i in range(accounts)])
    schema = pa.schema([("account_id", pa.string()), ("ts", pa.timestamp("us"))]
                       + [(f"f{i:02d}", pa.float64()) for i in range(1, 14)])
    with pq.ParquetWriter(workdir / "features.parquet", schema) as writer:
        for start in range(0, features, 1_000_000):
            n = min(1_000_000, features - start)
            columns = {"account_id": ids[rng.integers(0, accounts, n)],
                       "ts": base + rng.integers(0, 90 * 86_400, n).astype("timedelta64[s]").astype("timedelta64[us]")}
            columns.update({f"f{i:02d}": rng.random(n) for i in range(1, 14)})
            writer.write_table(pa.table(columns, schema=schema))
    times = base + rng.integers(0, 90 * 86_400, observations).astype("timedelta64[s]").astype("timedelta64[us]")
    pq.write_table(pa.table({"account_id": ids[rng.integers(0, accounts, observations)], "ts": times,
                             "obs_id": np.arange(observations)}), workdir / "observations.parquet")
    marker.touch()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--workdir", type=Path, default=Path("/tmp/gristmill-scale"))
    parser.add_argument("--memory-limit", default="", help="DuckDB memory_limit, e.g. 6GB (default: DuckDB's)")
    parser.add_argument("--scale", type=float, default=1.0)
    args = parser.parse_args()
    started = time.perf_counter()
    generate(args.workdir, args.scale)
    print(f"data ready in {time.perf_counter() - started:.1f} s")
    output = subprocess.run([sys.executable, "-c", CHILD, str(args.workdir), args.memory_limit],
                            check=True, capture_output=True, text=True).stdout
    result = json.loads(output.strip().splitlines()[-1])
    children = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 2**20
    print(f"gristmill: {result['seconds']:.1f} s, peak RSS {max(result['peak_rss_gib'], children):.2f} GiB "
          f"(memory_limit={args.memory_limit or 'default'}); target: < 8 GiB")


if __name__ == "__main__":
    main()
