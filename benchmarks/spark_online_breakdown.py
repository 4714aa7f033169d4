"""Where an online-only Spark materialization spends its time (issue 10): the benchmark's online-only backfill
into Redis, repeated in one warm ``local[2]`` session, with each run's Spark jobs and stages read from Spark's
REST API (wall time, time to the first task, tasks, executor run and CPU time, records read, shuffle bytes).

Uses the data of ``materialization.py`` (case A, cached in the same work directory) and its store setup::

    python benchmarks/spark_online_breakdown.py --runs 3             # full size (3M rows)
    python benchmarks/spark_online_breakdown.py --runs 2 --scale 0.1

The job's log lines (Spark task metrics, the time the executors' Python workers spent in the Redis writes) are
printed too."""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
import time
import urllib.request
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

from materialization import (
    CASE_A_FEATURE_SET,
    SPARK_BENCH_CONF,
    data_clock,
    delete_redis_keys,
    ensure_dataset,
    gristmill_store,
)


def _seconds(text: str | None) -> float:
    """A time of Spark's REST API (``2026-12-06T06:30:01.123GMT``) as seconds since the epoch."""
    return datetime.strptime((text or "").replace("GMT", ""), "%Y-%m-%dT%H:%M:%S.%f").timestamp()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workdir", type=Path, default=Path("/tmp/gristmill-bench"))
    parser.add_argument("--scale", type=float, default=1.0)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--redis-url", default="redis://127.0.0.1:6379/0")
    parser.add_argument("--ui-port", type=int, default=4247, help="port of the Spark UI the stages are read from")
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING, format="%(message)s")
    logging.getLogger("gristmill.jobs").setLevel(logging.INFO)

    dataset, _ = ensure_dataset(args.workdir.resolve(), args.scale)
    start, end, now = data_clock(dataset)
    prefix = f"gmbench-breakdown-{os.getpid()}"
    config: dict[str, Any] = {
        "contender": "spark-redis-online", "online": "redis", "data_root": str(dataset.root),
        "run_dir": str(args.workdir.resolve() / "runs" / "spark-online-breakdown"), "start": start.isoformat(),
        "end": end.isoformat(), "now": now.isoformat(), "redis_url": args.redis_url, "prefix": prefix,
        "project": prefix.replace("-", "_"),
        "engine": {"type": "spark", "master": "local[2]",
                   "conf": {**SPARK_BENCH_CONF, "spark.ui.enabled": "true", "spark.ui.port": str(args.ui_port)}},
    }
    store, _ = gristmill_store(config, offline=False)
    context = store.engine.spark.sparkContext
    api = f"{context.uiWebUrl}/api/v1/applications/{context.applicationId}"

    def rest(path: str) -> Any:
        with urllib.request.urlopen(f"{api}/{path}") as response:
            return json.load(response)

    try:
        store.backfill(CASE_A_FEATURE_SET, 1, start=start, end=start + timedelta(hours=1))     # warm up
        for run in range(args.runs):
            before = {job["jobId"] for job in rest("jobs")}
            begun = time.perf_counter()
            jobs = store.backfill(CASE_A_FEATURE_SET, 1, start=start, end=end)
            wall = time.perf_counter() - begun
            spark_jobs = sorted((j for j in rest("jobs") if j["jobId"] not in before), key=lambda j: j["jobId"])
            stages = {s["stageId"]: s for s in rest("stages?details=false")}
            in_jobs = sum(_seconds(j["completionTime"]) - _seconds(j["submissionTime"]) for j in spark_jobs)
            print(f"run {run}: {wall:.2f} s wall, {len(jobs)} job(s), "
                  f"{sum(j.online.keys_written for j in jobs if j.online):,} keys written, "
                  f"{sum(j.cpu_seconds for j in jobs):.2f} CPU s, {len(spark_jobs)} Spark jobs ({in_jobs:.2f} s)",
                  flush=True)
            for job in spark_jobs:
                took = _seconds(job["completionTime"]) - _seconds(job["submissionTime"])
                print(f"  Spark job {job['jobId']}: {took:.2f} s, {job['name'][:70]}")
                for stage_id in sorted(job["stageIds"]):
                    stage = stages.get(stage_id)
                    if stage is None or stage["status"] != "COMPLETE":
                        continue                                    # skipped: its shuffle output reused
                    submitted = _seconds(stage["submissionTime"])
                    first = stage.get("firstTaskLaunchedTime")
                    print(f"    stage {stage_id}: {_seconds(stage['completionTime']) - submitted:.2f} s "
                          f"(first task after {(_seconds(first) - submitted) if first else 0:.2f} s), "
                          f"{stage['numTasks']} tasks, run {stage['executorRunTime'] / 1e3:.2f} s, "
                          f"CPU {stage['executorCpuTime'] / 1e9:.2f} s, GC {stage['jvmGcTime'] / 1e3:.2f} s, "
                          f"read {stage['inputRecords']:,} records, shuffle write {stage['shuffleWriteBytes']:,} "
                          f"B, shuffle read {stage['shuffleReadBytes']:,} B")
    finally:
        delete_redis_keys(args.redis_url, f"{prefix}:*")
        store.close()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
