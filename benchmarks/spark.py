"""Spark engine benchmark (issue 9): Gristmill on Spark vs a hand-written Spark job vs the DuckDB engine.

The cases of ``offline_retrieval.py`` (same data generator, same feature sets): case A "PIT" joins 1M
observations to 3M feature rows (13 features, 2-day lookback); case B "DSL" computes 7-day sum/count/avg
per event over 10M raw events, then joins 1M observations. Contenders, each in its own child process:

- ``duckdb-floor``: the hand-written DuckDB query of ``offline_retrieval.py``; its output is the answer
  every other contender is checked against, cell by cell;
- ``gristmill-duckdb``: Gristmill's DuckDB engine (the default store);
- ``spark-hand``: a hand-written PySpark job of the best plan in SPARK_NOTES.md (range join on the key with
  the feature time in ``[t - lookback, t]``, then ``row_number`` by observation ordered by time and source
  order, newest first; for DSL, ``rangeBetween`` windows over ``unix_micros(ts)`` first), written by Spark;
- ``gristmill-spark``: Gristmill's Spark engine (``engine: {type: spark, master: local[2]}``).

Both Spark contenders get the same session settings (``SPARK_CONF``, ``--master``, ``--driver-memory``).
Their wall time is split into the session start (JVM launch plus a tiny warm-up query, the same for both)
and the job. Memory: the child's Python process and the JVM it launches (in local mode the JVM is the Spark
driver and the executors) are reported separately, as the kernel's high-water mark (``VmHWM``) of each
process, read from ``/proc`` every 0.1 s while the child runs.

Example::

    python benchmarks/spark.py --scale 0.05                 # quick run, all contenders, both cases
    python benchmarks/spark.py --cases A --scale 0.3
    python benchmarks/spark.py --only spark-hand,gristmill-duckdb

See benchmarks/README.md ("Spark engine (issue 9)") for the numbers.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import threading
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

import pyarrow.parquet as pq
from offline_retrieval import (
    CASE_A_FEATURES,
    CASE_A_LOOKBACK_DAYS,
    CASE_B_FEATURES,
    CASE_B_LOOKBACK_DAYS,
    CASE_B_WINDOW_DAYS,
    CASES,
    OBSERVATION_COLUMNS,
    REPO_ROOT,
    Dataset,
    Outcome,
    compare_to_floor,
    ensure_dataset,
    feature_names,
    run_floor,
    run_gristmill,
    run_measured,
    write_gristmill_assets,
)

CONTENDERS = ("duckdb-floor", "gristmill-duckdb", "spark-hand", "gristmill-spark")
SPARK_CONTENDERS = ("spark-hand", "gristmill-spark")
REFERENCE = "duckdb-floor"
BASELINE_SPARK = "spark-hand"
BASELINE_DUCKDB = "gristmill-duckdb"
TARGET_VS_HAND = 1.3

#: Session settings both Spark contenders get (plus master and driver memory from the command line). The
#: UTC and microsecond-timestamp settings are the ones SPARK_NOTES.md says every session needs; the rest
#: turn off what a batch job does not use.
SPARK_CONF: dict[str, str] = {
    "spark.sql.session.timeZone": "UTC",
    "spark.driver.extraJavaOptions": "-Duser.timezone=UTC",
    "spark.executor.extraJavaOptions": "-Duser.timezone=UTC",
    "spark.sql.parquet.outputTimestampType": "TIMESTAMP_MICROS",
    "mapreduce.fileoutputcommitter.marksuccessfuljobs": "false",
    "spark.ui.enabled": "false",
    "spark.ui.showConsoleProgress": "false",
}


def spark_settings(*, driver_memory: str, shuffle_partitions: int) -> dict[str, str]:
    """The full, shared settings of a benchmark session."""
    return {
        **SPARK_CONF,
        "spark.driver.memory": driver_memory,
        "spark.sql.shuffle.partitions": str(shuffle_partitions),
        "spark.default.parallelism": str(shuffle_partitions),
    }


# --------------------------------------------------------------------------------------------
# Memory of a child's process tree
# --------------------------------------------------------------------------------------------


def _high_water_mib(pid: int) -> float | None:
    """Peak resident memory of ``pid`` so far (``VmHWM``), or None once it is gone."""
    try:
        with open(f"/proc/{pid}/status") as status:
            for line in status:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) / 1024
    except (FileNotFoundError, ProcessLookupError, PermissionError):
        return None
    return None


class TreeMemory:
    """Samples the peak RSS of every process below this one (the contender's child and the JVM it starts).

    ``VmHWM`` is the kernel's own high-water mark, so a sample only has to arrive before a process exits;
    the sum of the processes' current RSS is sampled too (the tree's peak footprint, approximately).
    """

    def __init__(self, interval: float = 0.1) -> None:
        self.interval = interval
        self.peaks: dict[int, tuple[str, float]] = {}
        self.tree_peak_mib = 0.0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def __enter__(self) -> TreeMemory:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()

    def _run(self) -> None:
        import psutil

        me = psutil.Process()
        while not self._stop.is_set():
            current = 0.0
            for process in me.children(recursive=True):
                try:
                    name = process.name()
                    current += process.memory_info().rss / 2**20
                except psutil.Error:
                    continue
                peak = _high_water_mib(process.pid)
                if peak is not None:
                    known = self.peaks.get(process.pid, (name, 0.0))[1]
                    self.peaks[process.pid] = (name, max(known, peak))
            self.tree_peak_mib = max(self.tree_peak_mib, current)
            self._stop.wait(self.interval)

    def peak_of(self, kind: str) -> float | None:
        """The largest peak among processes named like ``kind`` ("python" or "java")."""
        values = [peak for name, peak in self.peaks.values() if name.startswith(kind)]
        return max(values) if values else None


# --------------------------------------------------------------------------------------------
# Contenders (run in child processes)
# --------------------------------------------------------------------------------------------


def start_session(master: str, conf: dict[str, str]) -> Any:
    """A classic Spark session with ``conf``, warmed by one tiny query (the same for both Spark contenders)."""
    from pyspark.sql import SparkSession

    builder = SparkSession.builder.master(master).appName("gristmill-bench-hand")
    for key, value in conf.items():
        builder = builder.config(key, value)
    session = builder.getOrCreate()
    warm_up(session)
    return session


def warm_up(session: Any) -> None:
    session.range(1000).selectExpr("sum(id)").collect()


def _pit_join(obs: Any, rows: Any, *, lookback_days: int, features: Sequence[str]) -> Any:
    """Range join on the key with ``rows.f_t`` in ``[t - lookback, t]``, then the newest row per observation
    (time, then source order: file, row), observations kept (left join) and in their original order."""
    from pyspark.sql import Window
    from pyspark.sql import functions as F

    condition = (
        (obs.account_id == rows.f_key)
        & (rows.f_t <= obs.obs_t)
        & (rows.f_t >= obs.obs_t - F.expr(f"INTERVAL {lookback_days} DAYS"))
    )
    joined = obs.join(rows, condition, "left")
    # By the observation alone: partitioning by (key, observation) saves a shuffle but sorts by the string
    # key, and measured slower (scale 0.3, case A: 42-72 s vs 26-33 s).
    newest = Window.partitionBy("obs_row").orderBy(
        F.col("f_t").desc_nulls_last(), F.col("f_file").desc_nulls_last(), F.col("f_row").desc_nulls_last()
    )
    best = joined.withColumn("__rank", F.row_number().over(newest)).where(F.col("__rank") == 1)
    return best.orderBy("obs_row").select(*OBSERVATION_COLUMNS, *features)


def _observations(session: Any, path: Path) -> Any:
    from pyspark.sql import functions as F

    return session.read.parquet(str(path)).select(
        *OBSERVATION_COLUMNS,
        F.col("_metadata.row_index").alias("obs_row"),
        F.col("ts").cast("timestamp").alias("obs_t"),
    )


def _source(session: Any, path: Path, columns: Sequence[str]) -> Any:
    """Source rows keyed ``f_key``, timed ``f_t`` (an instant), with their source order ``f_file``, ``f_row``."""
    from pyspark.sql import functions as F

    return session.read.parquet(str(path)).select(
        F.col("account_id").alias("f_key"),
        F.col("ts").cast("timestamp").alias("f_t"),
        F.col("_metadata.file_path").alias("f_file"),
        F.col("_metadata.row_index").alias("f_row"),
        *columns,
    )


def hand_job(session: Any, dataset: Dataset, case: str, out: Path) -> None:
    """The hand-written Spark job for ``case``; writes its rows as Parquet part files in folder ``out``."""
    from pyspark.sql import Window
    from pyspark.sql import functions as F

    obs = _observations(session, dataset.observations_for(case))
    if case == "A":
        rows = _source(session, dataset.features, list(CASE_A_FEATURES))
        result = _pit_join(obs, rows, lookback_days=CASE_A_LOOKBACK_DAYS, features=list(CASE_A_FEATURES))
    else:
        events = _source(session, dataset.events, ["amount"])
        window_us = CASE_B_WINDOW_DAYS * 86_400_000_000
        window = Window.partitionBy("f_key").orderBy(F.unix_micros("f_t")).rangeBetween(-window_us, 0)
        aggregates = []
        for name, (aggregation, source, _) in CASE_B_FEATURES.items():
            argument = F.lit(1) if source is None else F.col(source)
            aggregates.append(getattr(F, aggregation)(argument).over(window).alias(name))
        rows = events.select("f_key", "f_t", "f_file", "f_row", *aggregates)
        result = _pit_join(obs, rows, lookback_days=CASE_B_LOOKBACK_DAYS, features=list(CASE_B_FEATURES))
    result.write.mode("overwrite").parquet(str(out))


def run_spark_hand(dataset: Dataset, case: str, out: Path, settings: dict[str, Any]) -> dict[str, float]:
    started = time.perf_counter()
    session = start_session(settings["master"], settings["conf"])
    timings = {"session_seconds": time.perf_counter() - started}
    started = time.perf_counter()
    hand_job(session, dataset, case, out)
    timings["query_seconds"] = time.perf_counter() - started
    session.stop()
    return timings


def run_gristmill_spark(dataset: Dataset, case: str, out: Path, settings: dict[str, Any]) -> dict[str, Any]:
    import yaml

    try:
        import gristmill as gm
    except ImportError:
        sys.path.insert(0, str(REPO_ROOT))  # the benchmark lives next to the package source
        import gristmill as gm

    folder = out.parent / "gristmill-spark-store"
    shutil.rmtree(folder, ignore_errors=True)
    feature_refs = write_gristmill_assets(dataset, case, folder / "assets")
    timings: dict[str, Any] = {}
    started = time.perf_counter()
    gm.FeatureStore.init(str(folder / "store"))
    config_file = folder / "store" / "featurestore.yaml"
    config = yaml.safe_load(config_file.read_text())
    config["engine"] = {"type": "spark", "master": settings["master"], "conf": settings["conf"]}
    config_file.write_text(yaml.safe_dump(config, sort_keys=False))
    store = gm.FeatureStore(str(folder / "store"))
    setup = time.perf_counter() - started

    # Start the engine's own session (from featurestore.yaml) before timing the job, as spark-hand does.
    started = time.perf_counter()
    session = getattr(store.engine, "spark", None)
    if session is not None:
        warm_up(session)
        timings["session_seconds"] = time.perf_counter() - started
    started = time.perf_counter()
    notes: list[str] = []
    plan = store.apply(str(folder / "assets"))
    if not plan.ok:  # measure the retrieval anyway, and say why the source check was skipped
        notes.append("source check failed, registered without it: " + " ".join(" ".join(plan.lines()).split())[:400])
        plan = store.apply(str(folder / "assets"), check_source=False)
        if not plan.ok:
            raise RuntimeError("apply failed: " + " | ".join(plan.lines()))
    timings["setup_seconds"] = setup + time.perf_counter() - started
    started = time.perf_counter()
    result = store.get_offline_features(
        features=feature_refs,
        observations=str(dataset.observations_for(case)),
        timestamp_column="ts",
    )
    result.to_parquet(str(out))
    timings["query_seconds"] = time.perf_counter() - started
    if session is not None:
        session.stop()
    if notes:
        timings["notes"] = notes
    return timings


def child_main(contender: str, case: str, data_root: Path, out: Path, result_path: Path, settings: str) -> int:
    """Entry point of a child process: run one contender, write its timings (and own peak RSS) as JSON."""
    dataset = Dataset(data_root)
    spark_settings_ = json.loads(settings)
    try:
        if contender == "duckdb-floor":
            timings = run_floor(dataset, case, out)
        elif contender == "gristmill-duckdb":
            timings = run_gristmill(dataset, case, out)
        elif contender == "spark-hand":
            timings = run_spark_hand(dataset, case, out, spark_settings_)
        elif contender == "gristmill-spark":
            timings = run_gristmill_spark(dataset, case, out, spark_settings_)
        else:
            raise ValueError(f"unknown contender {contender!r}")
    except Exception as error:  # reported, not raised: one contender must not stop the run
        import traceback

        traceback.print_exc()
        message = f"{type(error).__name__}: {error}".splitlines()[0][:300]
        result_path.write_text(json.dumps({"error": message}))
        return 1
    # Imports are not timed; the Spark session start is timed separately (session_seconds).
    # job = retrieval + write, what the hand-written jobs do; setup (store, apply) and session start apart.
    timings["job_seconds"] = timings["query_seconds"]
    timings["wall_seconds"] = (
        timings.get("session_seconds", 0.0) + timings.get("setup_seconds", 0.0) + timings["query_seconds"]
    )
    # VmHWM, not getrusage: ru_maxrss survives exec, so it would include the parent's RSS at fork time.
    timings["python_peak_rss_mib"] = _high_water_mib(os.getpid()) or 0.0
    result_path.write_text(json.dumps(timings))
    return 0


# --------------------------------------------------------------------------------------------
# Driver
# --------------------------------------------------------------------------------------------


@dataclass
class SparkOutcome:
    """One contender on one case, with the Spark-specific split of time and memory."""

    outcome: Outcome
    session_seconds: float | None = None
    setup_seconds: float | None = None
    job_seconds: float | None = None
    python_rss_mib: float | None = None
    jvm_rss_mib: float | None = None
    tree_rss_mib: float | None = None
    ratios: dict[str, float] = field(default_factory=dict)


def output_path(case_dir: Path, contender: str) -> Path:
    """Where ``contender`` writes: one file, or for spark-hand a folder of part files (as Spark writes)."""
    return case_dir / (f"{contender}.parts" if contender == "spark-hand" else f"{contender}.parquet")


def readable(output: Path) -> Path:
    """What DuckDB reads: the file, or the part files of a folder Spark wrote."""
    return output / "*.parquet" if output.is_dir() else output


def parse_only(value: str | None) -> list[str]:
    if not value:
        return list(CONTENDERS)
    chosen = [item.strip() for item in value.split(",") if item.strip()]
    unknown = [item for item in chosen if item not in CONTENDERS]
    if unknown:
        raise SystemExit(f"--only: unknown contender(s) {', '.join(unknown)}; choose from {', '.join(CONTENDERS)}")
    return [name for name in CONTENDERS if name in chosen or name == REFERENCE]


def _fmt(value: float | int | None, pattern: str) -> str:
    return "-" if value is None else format(value, pattern)


def compute_ratios(results: Sequence[SparkOutcome]) -> None:
    """Job time vs spark-hand's job (session start excluded from both), wall time vs gristmill-duckdb."""
    by_name = {r.outcome.contender: r for r in results if r.outcome.status == "ok"}
    hand = by_name.get(BASELINE_SPARK)
    duck = by_name.get(BASELINE_DUCKDB)
    for r in results:
        if r.outcome.status != "ok":
            continue
        if hand and hand.job_seconds and r.job_seconds is not None:
            r.ratios["hand_job"] = r.job_seconds / hand.job_seconds
        if hand and hand.outcome.wall_seconds and r.outcome.wall_seconds is not None:
            r.ratios["hand_wall"] = r.outcome.wall_seconds / hand.outcome.wall_seconds
        if duck and duck.outcome.wall_seconds and r.outcome.wall_seconds is not None:
            r.ratios["duckdb"] = r.outcome.wall_seconds / duck.outcome.wall_seconds


def print_table(results: Sequence[SparkOutcome], scale: float) -> None:
    header = (
        "contender", "case", "wall s", "session s", "setup s", "job s", "job/hand", "wall/hand", "wall/duckdb",
        "py RSS MiB", "JVM RSS MiB", "rows out", "mismatches", "notes",
    )  # fmt: skip
    rows = []
    for r in results:
        o = r.outcome
        notes = [] if o.status == "ok" else [o.status]
        if o.detail:
            notes.append(o.detail)
        if o.observations_missing:
            notes.append(f"{o.observations_missing} of {o.rows_in} observations missing")
        if o.duplicate_rows:
            notes.append(f"{o.duplicate_rows} duplicate rows")
        if o.mismatches:
            worst = ", ".join(f"{k}={v}" for k, v in o.mismatches_by_feature.items() if v)
            notes.append(f"differs: {worst}")
        rows.append(
            (
                o.contender,
                o.case,
                _fmt(o.wall_seconds, ".2f"),
                _fmt(r.session_seconds, ".2f"),
                _fmt(r.setup_seconds, ".2f"),
                _fmt(r.job_seconds, ".2f"),
                _fmt(r.ratios.get("hand_job"), ".2f"),
                _fmt(r.ratios.get("hand_wall"), ".2f"),
                _fmt(r.ratios.get("duckdb"), ".2f"),
                _fmt(r.python_rss_mib, ",.0f"),
                _fmt(r.jvm_rss_mib, ",.0f"),
                _fmt(o.rows_out, ","),
                _fmt(o.mismatches, ","),
                "; ".join(notes),
            )
        )
    widths = [max(len(str(row[i])) for row in (header, *rows)) for i in range(len(header))]
    line = "  ".join("{:<" + str(w) + "}" for w in widths)
    print(f"\nscale {scale:g}")
    print(line.format(*header))
    print(line.format(*("-" * w for w in widths)))
    for row in rows:
        print(line.format(*row))
    print(
        f"wall = session start + setup (store, apply) + job (retrieval + write); job/hand target <= {TARGET_VS_HAND}; "
        "py = the child's Python process, JVM = the Spark driver (local mode), each its own peak"
    )


def run_case(
    case: str, contenders: Sequence[str], *, dataset: Dataset, run_root: Path, logs: Path, settings: dict[str, Any],
    timeout: float,
) -> list[SparkOutcome]:  # fmt: skip
    case_dir = run_root / f"case-{case}"
    case_dir.mkdir(parents=True, exist_ok=True)
    observations = dataset.observations_for(case)
    rows_in = pq.ParquetFile(observations).metadata.num_rows
    reference = output_path(case_dir, REFERENCE)
    results: list[SparkOutcome] = []
    for contender in contenders:
        outcome = Outcome(contender, case, rows_in=rows_in)
        result = SparkOutcome(outcome)
        results.append(result)
        output = output_path(case_dir, contender)
        result_file = case_dir / f"{contender}.json"
        if output.is_dir():
            shutil.rmtree(output)
        output.unlink(missing_ok=True)
        result_file.unlink(missing_ok=True)
        command = [
            sys.executable, str(Path(__file__).resolve()), "--child", contender, case, str(dataset.root),
            str(output), str(result_file), json.dumps(settings),
        ]  # fmt: skip
        print(f"case {case}: running {contender} ...", flush=True)
        log = logs / f"spark-{contender}-case-{case}.log"
        with TreeMemory() as memory:
            code, elapsed, rss, timed_out = run_measured(command, log, timeout)
        outcome.process_seconds, outcome.peak_rss_mib = elapsed, rss
        result.jvm_rss_mib = memory.peak_of("java")
        result.tree_rss_mib = memory.tree_peak_mib
        reported: dict[str, Any] = json.loads(result_file.read_text()) if result_file.exists() else {}
        if timed_out:
            outcome.status, outcome.detail = "timeout", f"killed after {timeout:.0f} s"
            continue
        if code != 0 or "error" in reported:
            outcome.status = "failed"
            outcome.detail = str(reported.get("error") or f"exit code {code}; see {log}")
            continue
        outcome.wall_seconds = float(reported["wall_seconds"])
        outcome.timings = {k: float(v) for k, v in reported.items() if k != "notes"}
        outcome.detail = "; ".join(note[:100] for note in reported.get("notes", []))  # in full in the JSON
        result.setup_seconds = reported.get("setup_seconds")
        result.session_seconds = reported.get("session_seconds")
        result.job_seconds = float(reported["job_seconds"])
        result.python_rss_mib = float(reported["python_peak_rss_mib"])
        if reference.exists() and output.exists():
            compare_to_floor(outcome, readable(output), reference, observations, feature_names(case))
        print(
            f"  wall {outcome.wall_seconds:.2f} s (session {result.session_seconds or 0:.2f} s), "
            f"py {result.python_rss_mib:,.0f} MiB, JVM {_fmt(result.jvm_rss_mib, ',.0f')} MiB, "
            f"mismatches {_fmt(outcome.mismatches, ',')}",
            flush=True,
        )
    compute_ratios(results)
    return results


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--workdir", type=Path, default=Path("/tmp/gristmill-bench"))
    parser.add_argument("--scale", type=float, action="append", help="row-count multiplier; repeat for several")
    parser.add_argument("--only", help=f"comma-separated contenders: {', '.join(CONTENDERS)} ({REFERENCE} always)")
    parser.add_argument("--cases", default="A,B", help="comma-separated cases (default A,B)")
    parser.add_argument("--master", default="local[2]", help="Spark master of both Spark contenders")
    parser.add_argument("--driver-memory", default="4g", help="spark.driver.memory of both Spark contenders")
    parser.add_argument("--shuffle-partitions", type=int, default=4, help="spark.sql.shuffle.partitions (both)")
    parser.add_argument("--timeout", type=float, default=3600.0, help="seconds per contender run")
    parser.add_argument(
        "--child", nargs=6, metavar=("CONTENDER", "CASE", "DATA", "OUT", "RESULT", "SETTINGS"), help=argparse.SUPPRESS
    )
    args = parser.parse_args(argv)
    if args.child:
        contender, case, data_root, out, result, settings = args.child
        return child_main(contender, case, Path(data_root), Path(out), Path(result), settings)

    scales: list[float] = args.scale or [1.0]
    if any(scale <= 0 for scale in scales):
        parser.error("--scale must be > 0")
    contenders = parse_only(args.only)
    cases = [c.strip().upper() for c in args.cases.split(",") if c.strip()]
    if any(c not in CASES for c in cases):
        parser.error(f"--cases: choose from {', '.join(CASES)}")
    settings = {
        "master": args.master,
        "conf": spark_settings(driver_memory=args.driver_memory, shuffle_partitions=args.shuffle_partitions),
    }

    workdir: Path = args.workdir.resolve()
    workdir.mkdir(parents=True, exist_ok=True)
    logs = workdir / "logs"
    logs.mkdir(parents=True, exist_ok=True)
    report: dict[str, Any] = {
        "generated_at": datetime.now().isoformat(timespec="seconds"),
        "spark": settings,
        "cpu_count": os.cpu_count(),
        "runs": [],
    }
    everything: list[tuple[float, list[SparkOutcome]]] = []
    for scale in scales:
        dataset, sizes = ensure_dataset(workdir, scale)
        run_root = workdir / "runs-spark" / f"scale-{scale:g}"
        results: list[SparkOutcome] = []
        for case in cases:
            results += run_case(
                case, contenders, dataset=dataset, run_root=run_root, logs=logs, settings=settings, timeout=args.timeout
            )
        everything.append((scale, results))
        report["runs"].append(
            {
                "scale": scale,
                "sizes": asdict(sizes),
                "results": [{**asdict(r), "outcome": asdict(r.outcome)} for r in results],
            }
        )
    for scale, results in everything:
        print_table(results, scale)
    if len(everything) > 1:
        print_rss_by_scale(everything)
    (workdir / "results-spark.json").write_text(json.dumps(report, indent=2))
    print(f"results: {workdir / 'results-spark.json'}")
    return 0


def print_rss_by_scale(everything: Sequence[tuple[float, Sequence[SparkOutcome]]]) -> None:
    """Peak RSS of each Spark contender at each scale: does the driver grow with the data?"""
    print("\npeak RSS MiB by scale (python / JVM)")
    for contender in SPARK_CONTENDERS:
        for case in CASES:
            cells = [
                f"{scale:g}: {_fmt(r.python_rss_mib, ',.0f')} / {_fmt(r.jvm_rss_mib, ',.0f')}"
                for scale, results in everything
                for r in results
                if r.outcome.contender == contender and r.outcome.case == case
            ]
            if cells:
                print(f"  {contender} case {case}: " + "; ".join(cells))


if __name__ == "__main__":
    sys.exit(main())
