"""Offline retrieval benchmark: Gristmill vs a hand-written DuckDB floor vs Feast.

Generates deterministic data, runs every contender in its own child process (so wall time and
peak RSS are isolated), checks each result against the floor cell by cell and prints a table.

Case A "PIT": point-in-time join of 1M observations to 3M feature rows (13 features, lookback
2 days). Case B "DSL": per-event 7-day sum/count/avg over 10M raw events, then a PIT join of
1M observations. Feast has no offline equivalent of DSL window aggregations, so it runs case A
only.

Example::

    python benchmarks/offline_retrieval.py --scale 0.05              # quick run
    python benchmarks/offline_retrieval.py --only floor,feast        # full size, two contenders

See benchmarks/README.md for what is measured and how.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

BENCH_DIR = Path(__file__).resolve().parent
REPO_ROOT = BENCH_DIR.parent
FEAST_RUNNER = BENCH_DIR / "_feast_runner.py"
DEFAULT_FEAST_REQUIREMENT = "feast[duckdb]==0.67.*"
FALLBACK_FEAST_REQUIREMENT = "feast[duckdb]<1"
DATA_VERSION = 1  # bump when the generator changes, so cached data is rebuilt

EPOCH = datetime(2024, 1, 1)
SPAN_DAYS = 60
SEED = 20240101

# Case A: 13 features, f01..f09 double, f10..f13 long.
CASE_A_FEATURES: dict[str, str] = {
    **{f"f{i:02d}": "double" for i in range(1, 10)},
    **{f"f{i:02d}": "long" for i in range(10, 14)},
}
CASE_A_LOOKBACK_DAYS = 2
CASE_A_FEATURE_SET = "txn_features"

# Case B: per-event 7-day windows over `amount`.
CASE_B_WINDOW_DAYS = 7
CASE_B_LOOKBACK_DAYS = 7
CASE_B_FEATURE_SET = "txn_windows"
CASE_B_FEATURES: dict[str, tuple[str, str | None, str]] = {
    # feature name: (aggregation, source column, type)
    "amount_7d_sum": ("sum", "amount", "double"),
    "txn_7d_count": ("count", None, "long"),
    "amount_7d_avg": ("avg", "amount", "double"),
}

OBSERVATION_COLUMNS = ("account_id", "ts", "obs_id")
CONTENDERS = ("floor", "gristmill", "feast-duckdb", "feast-file")
CASES = ("A", "B")
FEAST_CASES = ("A",)
FEAST_SKIP_REASON_B = "Feast has no offline equivalent of DSL window aggregations"


# --------------------------------------------------------------------------------------------
# Data generation
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Sizes:
    """Row counts of the generated data at a given scale."""

    accounts: int
    feature_rows: int
    observations_a: int
    events: int
    observations_b: int

    @classmethod
    def at_scale(cls, scale: float) -> Sizes:
        def scaled(n: int) -> int:
            return max(100, round(n * scale))

        return cls(
            accounts=scaled(100_000),
            feature_rows=scaled(3_000_000),
            observations_a=scaled(1_000_000),
            events=scaled(10_000_000),
            observations_b=scaled(1_000_000),
        )


@dataclass(frozen=True)
class Dataset:
    """Paths of one generated data set."""

    root: Path

    @property
    def features(self) -> Path:
        return self.root / "case_a_features.parquet"

    @property
    def observations_a(self) -> Path:
        return self.root / "case_a_observations.parquet"

    @property
    def events(self) -> Path:
        return self.root / "case_b_events.parquet"

    @property
    def observations_b(self) -> Path:
        return self.root / "case_b_observations.parquet"

    @property
    def manifest(self) -> Path:
        return self.root / "manifest.json"

    def source_for(self, case: str) -> Path:
        return self.features if case == "A" else self.events

    def observations_for(self, case: str) -> Path:
        return self.observations_a if case == "A" else self.observations_b


def _account_names(count: int) -> pa.Array:
    return pa.array([f"acct_{i:07d}" for i in range(count)], type=pa.string())


def _account_column(indices: np.ndarray, names: pa.Array) -> pa.Array:
    """Map integer account indices to their string ids without a Python loop."""
    return pa.DictionaryArray.from_arrays(pa.array(indices, type=pa.int32()), names).cast(pa.string())


def _timestamps(micros_since_epoch: np.ndarray) -> pa.Array:
    base = np.datetime64(EPOCH, "us")
    return pa.array(base + micros_since_epoch.astype("timedelta64[us]"), type=pa.timestamp("us"))


def _with_nulls(values: np.ndarray, rng: np.random.Generator, fraction: float) -> pa.Array:
    mask = rng.random(len(values)) < fraction
    return pa.array(values, mask=mask)


def _observations(
    rng: np.random.Generator,
    *,
    count: int,
    accounts: int,
    names: pa.Array,
    source_accounts: np.ndarray,
    source_micros: np.ndarray,
    boundary_offsets: Sequence[int],
) -> pa.Table:
    """Observations in random time order, a few placed exactly on join boundaries.

    For each offset in ``boundary_offsets`` 1% of the observations copy a source row's key and
    get ``source ts + offset`` as their time, so "a row exactly at t counts" and "a row exactly
    on the lookback bound counts" are both exercised.
    """
    span = (SPAN_DAYS + 2) * 86_400_000_000
    account = rng.integers(0, accounts, count)
    micros = rng.integers(0, span, count)
    pick_count = count // 100
    start = 0
    for offset in boundary_offsets:
        target = rng.integers(0, len(source_micros), pick_count)
        slots = slice(start, start + pick_count)
        account[slots] = source_accounts[target]
        micros[slots] = source_micros[target] + offset
        start += pick_count
    order = rng.permutation(count)  # boundary rows end up spread through the file
    return pa.table(
        {
            "account_id": _account_column(account[order], names),
            "ts": _timestamps(micros[order]),
            "obs_id": pa.array(np.arange(count, dtype=np.int64)),
        }
    )


def generate_case_a(dataset: Dataset, sizes: Sizes) -> None:
    rng = np.random.default_rng(SEED)
    names = _account_names(sizes.accounts)
    n = sizes.feature_rows
    span = SPAN_DAYS * 86_400_000_000
    account = rng.integers(0, sizes.accounts, n)
    micros = rng.integers(0, span, n)
    order = np.argsort(micros, kind="stable")  # an append-only log: sorted by event time
    account, micros = account[order], micros[order]
    columns: dict[str, pa.Array] = {
        "account_id": _account_column(account, names),
        "ts": _timestamps(micros),
    }
    for name, kind in CASE_A_FEATURES.items():
        if kind == "double":
            values = np.round(rng.normal(100.0, 30.0, n), 4)
            columns[name] = _with_nulls(values, rng, 0.02 if name == "f02" else 0.0)
        else:
            high = 5_000_000_000 if name == "f13" else 1_000_000  # f13 needs 64 bits
            columns[name] = pa.array(rng.integers(0, high, n, dtype=np.int64))
    pq.write_table(pa.table(columns), dataset.features)

    lookback = CASE_A_LOOKBACK_DAYS * 86_400_000_000
    observations = _observations(
        rng,
        count=sizes.observations_a,
        accounts=sizes.accounts,
        names=names,
        source_accounts=account,
        source_micros=micros,
        boundary_offsets=(0, lookback),
    )
    pq.write_table(observations, dataset.observations_a)


def generate_case_b(dataset: Dataset, sizes: Sizes) -> None:
    rng = np.random.default_rng(SEED + 1)
    names = _account_names(sizes.accounts)
    n = sizes.events
    account = rng.integers(0, sizes.accounts, n)
    # Whole seconds, so some (account, ts) pairs repeat and window peers are exercised.
    micros = rng.integers(0, SPAN_DAYS * 86_400, n) * 1_000_000
    order = np.argsort(micros, kind="stable")
    account, micros = account[order], micros[order]
    amount = np.round(rng.lognormal(3.0, 1.0, n), 2)
    events = pa.table(
        {
            "account_id": _account_column(account, names),
            "ts": _timestamps(micros),
            "amount": _with_nulls(amount, rng, 0.01),
        }
    )
    pq.write_table(events, dataset.events)

    observations = _observations(
        rng,
        count=sizes.observations_b,
        accounts=sizes.accounts,
        names=names,
        source_accounts=account,
        source_micros=micros,
        boundary_offsets=(0,),
    )
    pq.write_table(observations, dataset.observations_b)


def ensure_dataset(workdir: Path, scale: float) -> tuple[Dataset, Sizes]:
    """Generate the data set for ``scale`` once; later runs reuse it."""
    sizes = Sizes.at_scale(scale)
    dataset = Dataset(workdir / "data" / f"scale-{scale:g}")
    wanted = {"version": DATA_VERSION, "seed": SEED, "sizes": asdict(sizes)}
    if dataset.manifest.exists() and json.loads(dataset.manifest.read_text()) == wanted:
        return dataset, sizes
    dataset.root.mkdir(parents=True, exist_ok=True)
    started = time.perf_counter()
    print(f"generating data in {dataset.root} ...", flush=True)
    generate_case_a(dataset, sizes)
    generate_case_b(dataset, sizes)
    dataset.manifest.write_text(json.dumps(wanted, indent=2))
    print(f"  done in {time.perf_counter() - started:.1f} s", flush=True)
    return dataset, sizes


# --------------------------------------------------------------------------------------------
# Contenders that run in this interpreter (as child processes of the driver)
# --------------------------------------------------------------------------------------------


def _sql_string(path: Path) -> str:
    return "'" + str(path).replace("'", "''") + "'"


def floor_sql_case_a(dataset: Dataset, out: Path) -> str:
    """ASOF LEFT JOIN + lookback filter: the latest row at or before t, kept if within lookback."""
    observed = ", ".join(f"o.{c}" for c in OBSERVATION_COLUMNS)
    joined = ", ".join(f"f.{name}" for name in CASE_A_FEATURES)
    kept = ", ".join(
        f"CASE WHEN feature_ts >= ts - INTERVAL {CASE_A_LOOKBACK_DAYS} DAY THEN {name} END AS {name}"
        for name in CASE_A_FEATURES
    )
    return f"""
    COPY (
      WITH joined AS (
        SELECT {observed}, o.file_row_number, f.ts AS feature_ts, {joined}
        FROM read_parquet({_sql_string(dataset.observations_a)}, file_row_number = true) o
        ASOF LEFT JOIN read_parquet({_sql_string(dataset.features)}) f
          ON o.account_id = f.account_id AND o.ts >= f.ts
      )
      SELECT {", ".join(OBSERVATION_COLUMNS)}, {kept}
      FROM joined
      ORDER BY file_row_number
    ) TO {_sql_string(out)} (FORMAT parquet)
    """


def floor_sql_case_b(dataset: Dataset, out: Path) -> str:
    """Per-event RANGE windows (peers included) over all events, then ASOF join + lookback."""
    aggregates = []
    for name, (aggregation, source, _) in CASE_B_FEATURES.items():
        argument = "*" if source is None else source
        aggregates.append(f"{aggregation}({argument}) OVER w AS {name}")
    observed = ", ".join(f"o.{c}" for c in OBSERVATION_COLUMNS)
    joined = ", ".join(f"a.{name}" for name in CASE_B_FEATURES)
    kept = ", ".join(
        f"CASE WHEN feature_ts >= ts - INTERVAL {CASE_B_LOOKBACK_DAYS} DAY THEN {name} END AS {name}"
        for name in CASE_B_FEATURES
    )
    return f"""
    COPY (
      WITH aggregated AS (
        SELECT account_id, ts, {", ".join(aggregates)}
        FROM read_parquet({_sql_string(dataset.events)})
        WINDOW w AS (
          PARTITION BY account_id ORDER BY ts
          RANGE BETWEEN INTERVAL {CASE_B_WINDOW_DAYS} DAY PRECEDING AND CURRENT ROW
        )
      ),
      joined AS (
        SELECT {observed}, o.file_row_number, a.ts AS feature_ts, {joined}
        FROM read_parquet({_sql_string(dataset.observations_b)}, file_row_number = true) o
        ASOF LEFT JOIN aggregated a
          ON o.account_id = a.account_id AND o.ts >= a.ts
      )
      SELECT {", ".join(OBSERVATION_COLUMNS)}, {kept}
      FROM joined
      ORDER BY file_row_number
    ) TO {_sql_string(out)} (FORMAT parquet)
    """


def run_floor(dataset: Dataset, case: str, out: Path) -> dict[str, float]:
    import duckdb

    sql = floor_sql_case_a(dataset, out) if case == "A" else floor_sql_case_b(dataset, out)
    started = time.perf_counter()
    connection = duckdb.connect()
    connection.execute(sql)
    connection.close()
    return {"query_seconds": time.perf_counter() - started}


def _yaml_dump(data: dict[str, Any]) -> str:
    import yaml

    return yaml.safe_dump(data, sort_keys=False)


def write_gristmill_assets(dataset: Dataset, case: str, folder: Path) -> list[str]:
    """Write entity + feature set YAML for ``case`` under ``folder``; return the feature refs."""
    entities = folder / "entities"
    feature_set_dir = folder / "featuresets" / (CASE_A_FEATURE_SET if case == "A" else CASE_B_FEATURE_SET)
    (feature_set_dir / "spec").mkdir(parents=True, exist_ok=True)
    entities.mkdir(parents=True, exist_ok=True)
    index_columns = [{"name": "account_id", "type": "string"}]
    (entities / "account.yaml").write_text(
        _yaml_dump({"name": "account", "version": "1", "index_columns": index_columns})
    )
    spec: dict[str, Any] = {
        "source": {
            "type": "parquet",
            "path": str(dataset.source_for(case)),
            "timestamp_column": {"name": "ts"},
        },
        "index_columns": index_columns,
    }
    if case == "A":
        name = CASE_A_FEATURE_SET
        spec["temporal_join_lookback"] = {"days": CASE_A_LOOKBACK_DAYS, "hours": 0, "minutes": 0}
        features = [{"name": feature, "type": kind} for feature, kind in CASE_A_FEATURES.items()]
    else:
        name = CASE_B_FEATURE_SET
        spec["temporal_join_lookback"] = {"days": CASE_B_LOOKBACK_DAYS, "hours": 0, "minutes": 0}
        expressions = []
        for feature, (aggregation, source, _) in CASE_B_FEATURES.items():
            expression: dict[str, Any] = {
                "transformation_type": "window",
                "feature_name": feature,
                "aggregation": aggregation,
                "window": {"days": CASE_B_WINDOW_DAYS},
            }
            if source is not None:
                expression["source_column"] = source
            expressions.append(expression)
        spec["feature_transformation"] = {"transformation_expressions": expressions}
        features = [{"name": feature, "type": kind} for feature, (_, _, kind) in CASE_B_FEATURES.items()]
    spec["features"] = features
    (feature_set_dir / "spec" / "FeatureSetSpec.yaml").write_text(_yaml_dump(spec))
    (feature_set_dir / "FeatureSet.yaml").write_text(
        _yaml_dump(
            {
                "name": name,
                "version": "1",
                "specification": {"path": "./spec"},
                "entities": ["account:1"],
            }
        )
    )
    return [f"{name}:1:{feature['name']}" for feature in features]


def run_gristmill(dataset: Dataset, case: str, out: Path) -> dict[str, float]:
    import shutil

    try:
        import gristmill as gm
    except ImportError:
        sys.path.insert(0, str(REPO_ROOT))  # the benchmark lives next to the package source
        import gristmill as gm

    folder = out.parent / "gristmill"
    shutil.rmtree(folder, ignore_errors=True)
    feature_refs = write_gristmill_assets(dataset, case, folder / "assets")
    timings: dict[str, float] = {}
    gm.FeatureStore  # noqa: B018 - imports the store's modules now: imports are not timed (as for the others)
    started = time.perf_counter()
    store = gm.FeatureStore.init(str(folder / "store"))
    store.apply(str(folder / "assets"))
    timings["setup_seconds"] = time.perf_counter() - started
    retrieval_started = time.perf_counter()
    result = store.get_offline_features(
        features=feature_refs,
        observations=str(dataset.observations_for(case)),
        timestamp_column="ts",
    )
    result.to_parquet(str(out))
    timings["query_seconds"] = time.perf_counter() - retrieval_started
    return timings


def child_main(contender: str, case: str, data_root: Path, out: Path, result_path: Path) -> int:
    """Entry point of a child process: run one contender, write its timings as JSON."""
    dataset = Dataset(data_root)
    try:
        if contender == "floor":
            timings = run_floor(dataset, case, out)
        elif contender == "gristmill":
            timings = run_gristmill(dataset, case, out)
        else:
            raise ValueError(f"unknown contender {contender!r}")
    except Exception as error:  # reported, not raised: one contender must not stop the run
        import traceback

        traceback.print_exc()
        message = f"{type(error).__name__}: {error}".splitlines()[0][:300]
        result_path.write_text(json.dumps({"error": message}))
        return 1
    # Imports are not timed (the same holds for Feast): setup + retrieval + write only.
    timings["wall_seconds"] = timings.get("setup_seconds", 0.0) + timings["query_seconds"]
    result_path.write_text(json.dumps(timings))
    return 0


# --------------------------------------------------------------------------------------------
# Feast's own virtual environment
# --------------------------------------------------------------------------------------------


def ensure_feast_venv(workdir: Path, requirement: str, log: Path) -> tuple[Path, str]:
    """Create ``<workdir>/feast-venv`` once and install Feast into it; return (python, version)."""
    venv = workdir / "feast-venv"
    python = venv / "bin" / "python"
    marker = venv / "gristmill-bench-installed.json"
    if marker.exists():
        installed = json.loads(marker.read_text())
        if installed.get("requested") == requirement:
            return python, str(installed["version"])
    log.parent.mkdir(parents=True, exist_ok=True)
    with log.open("a") as sink:
        if not python.exists():
            print(f"creating Feast venv in {venv} ...", flush=True)
            subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True, stdout=sink, stderr=sink)
        print(f"installing {requirement} (log: {log}) ...", flush=True)
        pip = [str(python), "-m", "pip", "install", "--disable-pip-version-check"]
        done = subprocess.run([*pip, requirement], stdout=sink, stderr=sink)
        if done.returncode != 0 and requirement == DEFAULT_FEAST_REQUIREMENT:
            print(f"  {requirement} not installable; trying {FALLBACK_FEAST_REQUIREMENT}", flush=True)
            done = subprocess.run([*pip, FALLBACK_FEAST_REQUIREMENT], stdout=sink, stderr=sink)
        if done.returncode != 0:
            raise RuntimeError(f"pip could not install Feast; see {log}")
    version = subprocess.run(
        [str(python), "-c", "import feast; print(feast.__version__)"],
        check=True,
        capture_output=True,
        text=True,
    ).stdout.strip()
    marker.write_text(json.dumps({"requested": requirement, "version": version}))
    return python, version


# --------------------------------------------------------------------------------------------
# Driver: run children, measure, compare, report
# --------------------------------------------------------------------------------------------


@dataclass
class Outcome:
    """One contender on one case."""

    contender: str
    case: str
    status: str = "ok"  # ok | failed | unavailable | skipped | timeout
    detail: str = ""
    wall_seconds: float | None = None
    process_seconds: float | None = None
    peak_rss_mib: float | None = None
    timings: dict[str, float] = field(default_factory=dict)
    rows_in: int | None = None
    rows_out: int | None = None
    observations_missing: int | None = None
    duplicate_rows: int | None = None
    mismatches: int | None = None
    mismatches_by_feature: dict[str, int] = field(default_factory=dict)
    ratio_vs_floor: float | None = None
    retrieval_ratio_vs_floor: float | None = None
    rss_ratio_vs_floor: float | None = None
    floor_from_cache: bool = False


def run_measured(command: list[str], log: Path, timeout: float) -> tuple[int, float, float, bool]:
    """Run ``command`` as a child; return (exit code, wall seconds, peak RSS MiB, timed out).

    ``os.wait4`` returns the resource usage of exactly this child (and the grandchildren it
    waited for), so peak RSS is not polluted by earlier contenders, unlike RUSAGE_CHILDREN.
    """
    with log.open("w") as sink:
        started = time.perf_counter()
        process = subprocess.Popen(command, stdout=sink, stderr=subprocess.STDOUT, start_new_session=True)
        timed_out = False
        while True:
            pid, status, usage = os.wait4(process.pid, os.WNOHANG)
            if pid:
                break
            if time.perf_counter() - started > timeout and not timed_out:
                timed_out = True
                os.killpg(process.pid, signal.SIGKILL)  # the child's own process group only
            time.sleep(0.02)
        elapsed = time.perf_counter() - started
    process.returncode = os.waitstatus_to_exitcode(status)
    return process.returncode, elapsed, usage.ru_maxrss / 1024, timed_out


def compare_to_floor(
    outcome: Outcome, output: Path, floor_output: Path, observations: Path, features: Sequence[str]
) -> None:
    """Fill rows/mismatch fields: each input observation's features vs the floor's, null-safe.

    Rows are matched by ``obs_id``; an observation missing from the output counts as nulls.
    Doubles are equal within 1e-9 relative (aggregations may sum in another order).
    """
    import duckdb

    connection = duckdb.connect()
    available = {
        row[0] for row in connection.execute(f"DESCRIBE SELECT * FROM read_parquet({_sql_string(output)})").fetchall()
    }
    absent = [name for name in ("obs_id", *features) if name not in available]
    if "obs_id" in absent:
        outcome.detail = "output has no obs_id column"
        return
    summary = connection.execute(
        f"""
        SELECT count(*), count(*) - count(DISTINCT obs_id)
        FROM read_parquet({_sql_string(output)})
        """
    ).fetchone()
    assert summary is not None
    outcome.rows_out, outcome.duplicate_rows = int(summary[0]), int(summary[1])
    picked = ", ".join(
        f"any_value({name}::DOUBLE) AS {name}" if name in available else f"NULL::DOUBLE AS {name}" for name in features
    )
    differs = ", ".join(
        f"""count(*) FILTER (WHERE (fl.{name} IS NULL) <> (c.{name} IS NULL)
              OR abs(fl.{name}::DOUBLE - c.{name}) > 1e-9 * greatest(1, abs(fl.{name}::DOUBLE)))"""
        for name in features
    )
    row = connection.execute(
        f"""
        WITH contender AS (
          SELECT obs_id, {picked}, true AS present
          FROM read_parquet({_sql_string(output)}) GROUP BY obs_id
        ),
        floor AS (SELECT * FROM read_parquet({_sql_string(floor_output)}))
        SELECT count(*) FILTER (WHERE c.present IS NULL), {differs}
        FROM read_parquet({_sql_string(observations)}) o
        JOIN floor fl USING (obs_id)
        LEFT JOIN contender c USING (obs_id)
        """
    ).fetchone()
    assert row is not None
    outcome.observations_missing = int(row[0])
    outcome.mismatches_by_feature = {name: int(count) for name, count in zip(features, row[1:], strict=True)}
    outcome.mismatches = sum(outcome.mismatches_by_feature.values())
    if absent:
        outcome.detail = f"missing feature columns: {', '.join(absent)}"
    connection.close()


def feature_names(case: str) -> list[str]:
    return list(CASE_A_FEATURES if case == "A" else CASE_B_FEATURES)


def parse_only(value: str | None) -> list[str]:
    if not value:
        return list(CONTENDERS)
    chosen: list[str] = []
    for item in (part.strip() for part in value.split(",")):
        matches = [name for name in CONTENDERS if name == item or name.split("-")[0] == item]
        if not matches:
            raise SystemExit(f"--only: unknown contender {item!r}; choose from {', '.join(CONTENDERS)} or 'feast'")
        chosen.extend(name for name in matches if name not in chosen)
    return [name for name in CONTENDERS if name in chosen]


def _fmt(value: float | int | None, pattern: str) -> str:
    return "-" if value is None else format(value, pattern)


def print_table(outcomes: Sequence[Outcome]) -> None:
    header = ("contender", "case", "wall s", "retrieval s", "peak RSS MiB", "rows out", "mismatches", "vs floor",
              "retrieval vs floor", "RSS vs floor", "notes")
    rows = []
    for o in outcomes:
        notes = [] if o.status == "ok" else [o.status]
        if o.detail:
            notes.append(o.detail)
        if o.observations_missing:
            notes.append(f"{o.observations_missing} of {o.rows_in} observations missing")
        if o.duplicate_rows:
            notes.append(f"{o.duplicate_rows} duplicate rows")
        if o.floor_from_cache:
            notes.append("floor from an earlier run")
        rows.append(
            (
                o.contender,
                o.case,
                _fmt(o.wall_seconds, ".2f"),
                _fmt(o.timings.get("query_seconds"), ".2f"),
                _fmt(o.peak_rss_mib, ",.0f"),
                _fmt(o.rows_out, ","),
                _fmt(o.mismatches, ","),
                "-" if o.ratio_vs_floor is None else f"{o.ratio_vs_floor:.2f}x",
                "-" if o.retrieval_ratio_vs_floor is None else f"{o.retrieval_ratio_vs_floor:.2f}x",
                "-" if o.rss_ratio_vs_floor is None else f"{o.rss_ratio_vs_floor:.2f}x",
                "; ".join(notes),
            )
        )
    widths = [max(len(str(r[i])) for r in (header, *rows)) for i in range(len(header))]
    line = "  ".join("{:<" + str(w) + "}" for w in widths)
    print()
    print(line.format(*header))
    print(line.format(*("-" * w for w in widths)))
    for r in rows:
        print(line.format(*r))


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--workdir", type=Path, default=Path("/tmp/gristmill-bench"))
    parser.add_argument("--scale", type=float, default=1.0, help="multiply every row count (default 1.0)")
    parser.add_argument("--only", help=f"comma-separated contenders: {', '.join(CONTENDERS)}, or 'feast' for both")
    parser.add_argument("--cases", default="A,B", help="comma-separated cases (default A,B)")
    parser.add_argument("--skip-feast", action="store_true", help="do not install or run Feast")
    parser.add_argument("--feast-requirement", default=DEFAULT_FEAST_REQUIREMENT)
    parser.add_argument("--timeout", type=float, default=3600.0, help="seconds per contender run")
    parser.add_argument(
        "--child", nargs=5, metavar=("CONTENDER", "CASE", "DATA", "OUT", "RESULT"), help=argparse.SUPPRESS
    )
    args = parser.parse_args(argv)

    if args.child:
        contender, case, data_root, out, result = args.child
        return child_main(contender, case, Path(data_root), Path(out), Path(result))

    if args.scale <= 0:
        parser.error("--scale must be > 0")
    contenders = parse_only(args.only)
    if args.skip_feast:
        contenders = [c for c in contenders if not c.startswith("feast")]
    cases = [c.strip().upper() for c in args.cases.split(",") if c.strip()]
    if any(c not in CASES for c in cases):
        parser.error(f"--cases: choose from {', '.join(CASES)}")

    workdir: Path = args.workdir.resolve()
    workdir.mkdir(parents=True, exist_ok=True)
    dataset, sizes = ensure_dataset(workdir, args.scale)
    run_root = workdir / "runs" / f"scale-{args.scale:g}"
    logs = workdir / "logs"
    logs.mkdir(parents=True, exist_ok=True)

    feast_python: Path | None = None
    feast_version: str | None = None
    feast_error: str | None = None
    if any(c.startswith("feast") for c in contenders) and any(c in FEAST_CASES for c in cases):
        try:
            feast_python, feast_version = ensure_feast_venv(workdir, args.feast_requirement, logs / "feast-install.log")
            print(f"Feast {feast_version} in {feast_python.parent.parent}", flush=True)
        except (OSError, RuntimeError, subprocess.CalledProcessError) as error:
            feast_error = str(error)

    outcomes: list[Outcome] = []
    for case in cases:
        case_dir = run_root / f"case-{case}"
        case_dir.mkdir(parents=True, exist_ok=True)
        observations = dataset.observations_for(case)
        rows_in = pq.ParquetFile(observations).metadata.num_rows
        floor_output = case_dir / "floor.parquet"
        floor_result = case_dir / "floor.json"
        floor_wall: float | None = None
        floor_rss: float | None = None
        for contender in contenders:
            outcome = Outcome(contender, case, rows_in=rows_in)
            outcomes.append(outcome)
            if contender.startswith("feast") and case not in FEAST_CASES:
                outcome.status, outcome.detail = "skipped", FEAST_SKIP_REASON_B
                continue
            if contender.startswith("feast") and feast_python is None:
                outcome.status, outcome.detail = "unavailable", feast_error or "Feast not installed"
                continue
            output = case_dir / f"{contender}.parquet"
            result = case_dir / f"{contender}.json"
            output.unlink(missing_ok=True)
            result.unlink(missing_ok=True)
            if contender.startswith("feast"):
                assert feast_python is not None
                store = contender.removeprefix("feast-")
                config = {
                    "store": store,
                    "features_path": str(dataset.features),
                    "observations_path": str(observations),
                    "output_path": str(output),
                    "repo_path": str(case_dir / f"{contender}-repo"),
                    "feature_view": CASE_A_FEATURE_SET,
                    "features": CASE_A_FEATURES,
                    "ttl_days": CASE_A_LOOKBACK_DAYS,
                    "result_path": str(result),
                }
                command = [str(feast_python), str(FEAST_RUNNER), json.dumps(config)]
            else:
                command = [
                    sys.executable,
                    str(Path(__file__).resolve()),
                    "--child",
                    contender,
                    case,
                    str(dataset.root),
                    str(output),
                    str(result),
                ]
            print(f"case {case}: running {contender} ...", flush=True)
            code, elapsed, rss, timed_out = run_measured(command, logs / f"{contender}-case-{case}.log", args.timeout)
            outcome.process_seconds, outcome.peak_rss_mib = elapsed, rss
            reported: dict[str, Any] = json.loads(result.read_text()) if result.exists() else {}
            if timed_out:
                outcome.status, outcome.detail = "timeout", f"killed after {args.timeout:.0f} s"
                continue
            if code != 0 or "error" in reported:
                error = reported.get("error") or f"exit code {code}; see {logs / f'{contender}-case-{case}.log'}"
                outcome.status = "unavailable" if contender == "gristmill" else "failed"
                outcome.detail = str(error)
                continue
            outcome.wall_seconds = float(reported.get("wall_seconds", elapsed))
            outcome.timings = {k: float(v) for k, v in reported.items() if k != "wall_seconds"}
            if contender == "floor":
                floor_wall, floor_rss = outcome.wall_seconds, rss
                floor_result.write_text(json.dumps({"wall_seconds": floor_wall, "peak_rss_mib": floor_rss}))
            elif floor_wall is None and floor_result.exists() and floor_output.exists():
                cached = json.loads(floor_result.read_text())
                floor_wall, floor_rss = float(cached["wall_seconds"]), cached.get("peak_rss_mib")
                outcome.floor_from_cache = True
            if floor_output.exists() and output.exists():
                compare_to_floor(outcome, output, floor_output, observations, feature_names(case))
            elif output.exists():
                outcome.rows_out = pq.ParquetFile(output).metadata.num_rows
            if floor_wall:
                outcome.ratio_vs_floor = outcome.wall_seconds / floor_wall
                retrieval = outcome.timings.get("query_seconds")     # without init + apply (the floor has none)
                outcome.retrieval_ratio_vs_floor = None if retrieval is None else retrieval / floor_wall
            if floor_rss and rss:
                outcome.rss_ratio_vs_floor = rss / floor_rss
            print(f"  {outcome.wall_seconds:.2f} s, {rss:,.0f} MiB peak RSS", flush=True)

    print_table(outcomes)
    if feast_version:
        print(f"\nFeast version: {feast_version}")
    if "B" in cases and any(c.startswith("feast") for c in contenders):
        print(f"Feast skipped for case B: {FEAST_SKIP_REASON_B}.")
    report = {
        "generated_at": datetime.now().isoformat(timespec="seconds"),
        "scale": args.scale,
        "sizes": asdict(sizes),
        "feast_version": feast_version,
        "python": sys.version.split()[0],
        "cpu_count": os.cpu_count(),
        "results": [asdict(o) for o in outcomes],
    }
    (workdir / "results.json").write_text(json.dumps(report, indent=2))
    print(f"results: {workdir / 'results.json'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
