"""Property-based tests of the DuckDB engine against brute-force references written from SPEC §3.

Each property is checked on random data over a coarse time grid (3-hour steps over a few days) so that
ties on (key, ts) and equalities on window bounds happen often:

* point-in-time retrieval of two plain feature sets at once (one single-key, one composite-key);
* computing a DSL feature set over ``[s, e)`` (per-event window aggregations);
* retrieving DSL features, per event (the default) and as of the observation time (one test each).

Interpretations where SPEC §3 is silent: ``distinct_count`` of a window without values is 0 (it is a
count, like ``count``); in as-of-observation mode an observation with a null key gets nulls for every
feature, ``count`` included (nulls never match); a source without ``create_timestamp`` ignores
``as_known_at``.

The references loop over rows the slow, obvious way. Every property also records which edge cases its
examples reached and asserts that each was reached several times, so a change in the strategies cannot
silently stop exercising them.
"""

from __future__ import annotations

import logging
import math
import statistics
import tempfile
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import astuple, dataclass, replace
from datetime import UTC, datetime, timedelta
from functools import partial
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from hypothesis import HealthCheck, event, example, given, settings
from hypothesis import strategies as st
from spark_session import spark_engine

from gristmill.compute.duckdb.engine import DuckDBEngine
from gristmill.compute.engine import FeatureSetRequest
from gristmill.spec.featureset_spec import FeatureSetSpec

BASE = datetime(2024, 1, 1)
TS = "ts"
CREATE = "create_timestamp"
OBS_TIME = "event_time"
OBS_COLUMNS = ("obs_id", "k1", "k2", OBS_TIME, "note")

SETTINGS = settings(max_examples=50, deadline=None, derandomize=True, database=None,
                    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])

Key = tuple[str | None, ...]
Value = float | int | None


def at(hours: int) -> datetime:
    return BASE + timedelta(hours=hours)


def naive(value: datetime | None) -> datetime | None:
    """A UTC timestamp as a naive datetime (compute results carry the UTC zone)."""
    return value.astimezone(UTC).replace(tzinfo=None) if value is not None and value.tzinfo else value


def hours_after_base(value: datetime | None) -> int:
    return 0 if value is None else int((value - BASE) / timedelta(hours=1))


def hours(value: int | None) -> dict[str, int] | None:
    return None if value is None else {"hours": value}


# -- data model ------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Row:
    """One source row. Times are hours after BASE; ``ct`` is the create_timestamp (None if the source has
    no such column). ``a`` is a feature value (PIT) or the small-integer column ``x`` (DSL); ``b`` is the
    DSL column ``y`` whose values are distinct, so latest/first reveal which row they picked."""

    key: Key
    ts: int
    ct: int | None
    a: float | None
    b: float | None = None


@dataclass(frozen=True)
class Source:
    keys: tuple[str, ...]   # index column names
    rows: tuple[Row, ...]   # in source order
    has_create: bool
    split: int              # rows[:split] go to the first file, the rest to a second one (0 = one file)


@dataclass(frozen=True)
class Obs:
    obs_id: int
    k1: str | None
    k2: str | None
    t: int
    note: str

    def key(self, keys: Sequence[str]) -> Key:
        return tuple(getattr(self, k) for k in keys)


@dataclass(frozen=True)
class PitSet:
    source: Source
    delay: int
    lookback: int | None


@dataclass(frozen=True)
class PitCase:
    fs_a: PitSet              # index k1
    fs_b: PitSet              # index (k1, k2)
    observations: tuple[Obs, ...]
    columns: tuple[str, ...]  # observation column order
    as_known_at: bool
    b_first: bool             # request fs_b's features before fs_a's


# (feature name, aggregation, source column, declared type)
DSL_FEATURES: tuple[tuple[str, str, str | None, str], ...] = (
    ("x_sum", "sum", "x", "double"),
    ("x_avg", "avg", "x", "double"),
    ("x_min", "min", "x", "double"),
    ("x_max", "max", "x", "double"),
    ("n", "count", None, "long"),
    ("x_latest", "latest", "x", "double"),
    ("x_first", "first", "x", "double"),
    ("x_stddev", "stddev", "x", "double"),
    ("x_variance", "variance", "x", "double"),
    ("x_distinct", "distinct_count", "x", "long"),
    ("y_latest", "latest", "y", "double"),
    ("y_first", "first", "y", "double"),
)


@dataclass(frozen=True)
class DslCase:
    source: Source
    windows: tuple[int, ...]  # hours, one per DSL_FEATURES entry
    start: int
    end: int
    delay: int
    lookback: int | None
    observations: tuple[Obs, ...]
    columns: tuple[str, ...]
    mode: str                 # "per_event" | "as_of_observation"
    as_known_at: bool


# -- writing inputs and running the engine ------------------------------------------------------------------
def _write_source(folder: Path, source: Source, value_columns: dict[str, tuple[str, pa.DataType]]) -> None:
    """Write the rows to one or two parquet files in ``folder/data`` (source order = file order, then row)."""
    data = folder / "data"
    data.mkdir()
    fields = [pa.field(k, pa.string()) for k in source.keys] + [pa.field(TS, pa.timestamp("us"))]
    if source.has_create:
        fields.append(pa.field(CREATE, pa.timestamp("us")))
    fields += [pa.field(name, kind) for name, (_, kind) in value_columns.items()]
    schema = pa.schema(fields)
    parts = [source.rows[:source.split], source.rows[source.split:]] if source.split else [source.rows]
    for i, part in enumerate(parts):
        columns: dict[str, list[Any]] = {k: [r.key[j] for r in part] for j, k in enumerate(source.keys)}
        columns[TS] = [at(r.ts) for r in part]
        if source.has_create:
            columns[CREATE] = [at(r.ct) if r.ct is not None else None for r in part]
        offset = source.split if i else 0
        for name, (attribute, _) in value_columns.items():  # "position": the row's place in source order
            columns[name] = ([offset + j for j in range(len(part))] if attribute == "position"
                             else [getattr(r, attribute) for r in part])
        pq.write_table(pa.table(columns, schema=schema), data / f"part-{i:03d}.parquet")


def _spec(folder: Path, source: Source, *, delay: int, lookback: int | None,
          features: list[dict[str, str]], expressions: list[dict[str, Any]] | None = None) -> FeatureSetSpec:
    data: dict[str, Any] = {
        "source": {"type": "parquet", "path": "data", "timestamp_column": {"name": TS},
                   "source_delay": hours(delay)},
        "index_columns": [{"name": k, "type": "string"} for k in source.keys],
        "temporal_join_lookback": hours(lookback),
        "features": features,
    }
    if expressions is not None:
        data["feature_transformation"] = {"transformation_expressions": expressions}
    return FeatureSetSpec.from_dict(data, folder=folder)


def _observation_table(observations: Sequence[Obs], columns: Sequence[str]) -> pa.Table:
    types = {"obs_id": pa.int64(), "k1": pa.string(), "k2": pa.string(), OBS_TIME: pa.timestamp("us"),
             "note": pa.string()}
    values: dict[str, list[Any]] = {
        "obs_id": [o.obs_id for o in observations], "k1": [o.k1 for o in observations],
        "k2": [o.k2 for o in observations], OBS_TIME: [at(o.t) for o in observations],
        "note": [o.note for o in observations]}
    return pa.table({c: values[c] for c in columns}, schema=pa.schema([(c, types[c]) for c in columns]))


def _check_observation_columns(result: pa.Table, case: PitCase | DslCase, features: list[str]
                              ) -> list[dict[str, Any]]:
    """Output = observation columns unchanged and in order, then the features; one row per observation."""
    assert result.column_names == [*case.columns, *features]
    assert result.num_rows == len(case.observations)
    rows = result.to_pylist()
    for got, obs in zip(rows, case.observations, strict=True):
        expected = {"obs_id": obs.obs_id, "k1": obs.k1, "k2": obs.k2, OBS_TIME: at(obs.t), "note": obs.note}
        assert {c: got[c] for c in case.columns} == expected
    return rows


def same(actual: Value, expected: Value) -> bool:
    """Nulls equal nulls; floats with a tolerance; everything else exactly."""
    if actual is None or expected is None:
        return actual is None and expected is None
    if isinstance(expected, float) or isinstance(actual, float):
        return math.isclose(actual, expected, rel_tol=1e-9, abs_tol=1e-9)
    return actual == expected


# -- the references (SPEC §3, brute force) ------------------------------------------------------------------
def rank(position: int, row: Row, has_create: bool) -> tuple[int, int, int]:
    """The tie rule as an ordering: greater event time, then create_timestamp, then later in source."""
    return (row.ts, row.ct if has_create and row.ct is not None else -(10**9), position)


def pit_winner(source: Source, key: Key, t: int, *, delay: int, lookback: int | None, as_known_at: bool,
               tags: Counter[str]) -> int | None:
    """Position of the source row an observation (key, t) gets, or None."""
    if any(k is None for k in key):
        tags["null observation key"] += 1
        return None
    candidates = []
    for position, row in enumerate(source.rows):
        if row.key != key:                              # tuples; a null in the row key never matches
            continue
        if lookback == 0:                               # exact-time join, delay ignored
            if row.ts != t:
                continue
        elif row.ts > t - delay or (lookback is not None and row.ts < t - lookback):
            continue
        if as_known_at and source.has_create and row.ct is not None:
            if row.ct > t:
                tags["as_known_at excluded a row"] += 1
                continue
            if row.ct == t:
                tags["as_known_at kept a row created at t"] += 1
        candidates.append(position)
    if not candidates:
        return None
    winner = max(candidates, key=lambda p: rank(p, source.rows[p], source.has_create))
    row = source.rows[winner]
    rivals = [source.rows[p] for p in candidates if p != winner and source.rows[p].ts == row.ts]
    if rivals:
        tags["tie on (key, ts)"] += 1
        if source.has_create and any(r.ct != row.ct for r in rivals):
            tags["tie decided by create_timestamp"] += 1
        if not source.has_create or any(r.ct == row.ct for r in rivals):
            tags["tie decided by source order"] += 1
    if lookback == 0 and delay > 0:
        tags["exact-time join with a delay"] += 1
    if lookback and row.ts == t - lookback:
        tags["row on the lower bound"] += 1
    if lookback != 0 and row.ts == t - delay:
        tags["row on the upper bound"] += 1
    return winner


def aggregate(aggregation: str, column: str | None, members: list[tuple[int, Row]], has_create: bool,
              ) -> Value:
    """One DSL aggregation over the window members (position, row): nulls ignored; count counts rows."""
    if aggregation == "count":
        return len(members)
    attribute = "a" if column == "x" else "b"
    present = [(p, r, getattr(r, attribute)) for p, r in members if getattr(r, attribute) is not None]
    values = [v for _, _, v in present]
    if aggregation == "distinct_count":
        return len(set(values))
    if not values:
        return None
    if aggregation == "sum":
        return float(sum(values))
    if aggregation == "avg":
        return sum(values) / len(values)
    if aggregation == "min":
        return min(values)
    if aggregation == "max":
        return max(values)
    if aggregation in ("latest", "first"):
        pick = max if aggregation == "latest" else min
        return pick(present, key=lambda item: rank(item[0], item[1], has_create))[2]
    if aggregation == "stddev":
        return statistics.stdev(values) if len(values) > 1 else None
    if aggregation == "variance":
        return statistics.variance(values) if len(values) > 1 else None
    raise AssertionError(aggregation)


def dsl_window(case: DslCase, key: Key, high: int, tags: Counter[str]) -> list[Value]:
    """Every DSL feature for ``key`` over ``[high - window, high]`` (both bounds inclusive)."""
    values = []
    for (_, aggregation, column, _), window in zip(DSL_FEATURES, case.windows, strict=True):
        low = high - window
        members = [(p, r) for p, r in enumerate(case.source.rows) if r.key == key and low <= r.ts <= high]
        if any(r.ts == low for _, r in members):
            tags["row on a window's lower bound"] += 1
        if any(r.ts == high for _, r in members):
            tags["row on a window's upper bound"] += 1
        if not members:
            tags["empty window"] += 1
        elif all(r.a is None for _, r in members):
            tags["window of null values only"] += 1
        if aggregation in ("latest", "first") and column == "y":
            times = [r.ts for _, r in members if r.b is not None]
            if times:
                edge = max(times) if aggregation == "latest" else min(times)
                if times.count(edge) > 1:
                    tags["latest/first decided by the tie rule"] += 1
        values.append(aggregate(aggregation, column, members, case.source.has_create))
    return values


def per_event(case: DslCase, position: int, tags: Counter[str]) -> list[Value]:
    """Per-event DSL semantics: for source row r, windows ``[r.ts - w, r.ts]`` over rows of r's key."""
    row = case.source.rows[position]
    return dsl_window(case, row.key, row.ts, tags)


# -- strategies ----------------------------------------------------------------------------------------------
SOURCE_HOURS = st.integers(0, 12).map(lambda i: 3 * i)                       # 0h .. 36h, 3-hour grid
MOSTLY_TRUE = st.sampled_from([True, True, False])
ANCHOR_OFFSETS = st.sampled_from([0, 0, 3, 6, 12, 24])
OBS_HOURS = st.one_of(st.integers(-2, 14).map(lambda i: 3 * i), st.integers(-6, 45))
CREATE_OFFSETS = st.sampled_from([0, 3, 6, 24])
# (source_delay, temporal_join_lookback) in hours: unbounded, exact-time (delay ignored), delay > lookback
JOIN_WINDOWS = st.sampled_from([(0, None), (3, None), (12, None), (0, 0), (6, 0), (12, 0), (0, 6), (3, 12), (6, 24),
                                (12, 6), (6, 3), (12, 24), (0, 24)])
HALVES = st.integers(-40, 40).map(lambda v: v / 2)
SMALL = st.integers(-2, 3).map(float)
K1 = st.sampled_from(["a", "ab", None])
K2 = st.sampled_from(["c", "bc", "", None])
CONFUSABLE: tuple[Key, ...] = (("ab", "c"), ("a", "bc"))
SINGLE_KEYS = K1.map(lambda k: (k,))
COMPOSITE_KEYS = st.one_of(st.sampled_from(CONFUSABLE), st.tuples(K1, K2))
OBS_K1 = st.sampled_from(["a", "ab", "zz", None])   # "zz": a key no source has


@st.composite
def sources(draw: st.DrawFn, keys: tuple[str, ...], key_values: st.SearchStrategy[Key],
            a_values: st.SearchStrategy[float], max_rows: int = 10) -> Source:
    has_create = draw(MOSTLY_TRUE)
    rows = []
    for _ in range(draw(st.integers(1, max_rows))):
        ts = draw(SOURCE_HOURS)
        rows.append(Row(key=draw(key_values), ts=ts, ct=ts + draw(CREATE_OFFSETS) if has_create else None,
                        a=draw(st.none() | a_values), b=draw(st.none() | HALVES)))
    if rows:  # copies of some (key, ts) with new values: ties, with equal or different create_timestamp
        for i in draw(st.lists(st.integers(0, len(rows) - 1), max_size=4)):
            ts = rows[i].ts
            rows.append(replace(rows[i], ct=ts + draw(CREATE_OFFSETS) if has_create else None,
                                a=draw(st.none() | a_values), b=draw(HALVES)))
        rows = draw(st.permutations(rows))
    split = draw(st.integers(0, len(rows) - 1)) if len(rows) > 1 else 0
    return Source(keys, tuple(rows), has_create, split)


@st.composite
def observation_lists(draw: st.DrawFn, anchors: Sequence[tuple[Row, Sequence[int]]]) -> tuple[Obs, ...]:
    """Random observations; most sit on a source row's key, at its time plus an offset that puts the row on
    a bound of the observation's window (``offsets``: e.g. delay, lookback) or at its create_timestamp, so
    that matches, ties and bound equalities (t - delay, t - lookback, ct <= t) are hit often."""
    observations = []
    for i in range(draw(st.integers(1, 12))):
        if anchors and draw(MOSTLY_TRUE):
            row, offsets = draw(st.sampled_from(anchors))
            k1, k2 = row.key if len(row.key) == 2 else (row.key[0], draw(K2))
            if row.ct is not None and draw(st.booleans()):  # just before / exactly when the row is created
                t = row.ct - draw(st.sampled_from([0, 3]))
            else:
                t = row.ts + draw(st.sampled_from(sorted({0, 3, *offsets})))
        else:
            k1, k2 = draw(st.one_of(st.sampled_from(CONFUSABLE), st.tuples(OBS_K1, K2)))
            t = draw(OBS_HOURS)
        observations.append(Obs(i, k1, k2, t, f"note {i}"))
    if observations:  # duplicated observation rows must come back as identical rows
        observations += draw(st.lists(st.sampled_from(observations), max_size=3))
    return tuple(draw(st.permutations(observations)))


def pit_anchors(fs: PitSet) -> list[tuple[Row, Sequence[int]]]:
    """Offsets that put a row on the upper (delay) or lower (lookback) bound of an observation's window."""
    return [(row, (fs.delay, fs.lookback or 0)) for row in fs.source.rows]


@st.composite
def pit_sets(draw: st.DrawFn, keys: tuple[str, ...], key_values: st.SearchStrategy[Key]) -> PitSet:
    delay, lookback = draw(JOIN_WINDOWS)
    return PitSet(draw(sources(keys, key_values, HALVES)), delay, lookback)


@st.composite
def pit_cases(draw: st.DrawFn) -> PitCase:
    fs_a, fs_b = draw(pit_sets(("k1",), SINGLE_KEYS)), draw(pit_sets(("k1", "k2"), COMPOSITE_KEYS))
    return PitCase(fs_a=fs_a, fs_b=fs_b,
                   observations=draw(observation_lists([*pit_anchors(fs_a), *pit_anchors(fs_b)])),
                   columns=tuple(draw(st.permutations(OBS_COLUMNS))),
                   as_known_at=draw(MOSTLY_TRUE), b_first=draw(st.booleans()))


@st.composite
def dsl_cases(draw: st.DrawFn, mode: str = "per_event") -> DslCase:
    keys, key_values = draw(st.sampled_from([(("k1",), SINGLE_KEYS), (("k1", "k2"), COMPOSITE_KEYS)]))
    start = 3 * draw(st.integers(-1, 8))
    source = draw(sources(keys, key_values, SMALL, max_rows=12))
    windows = tuple(draw(st.sampled_from([1, 3, 6, 24])) for _ in DSL_FEATURES)
    delay, lookback = draw(JOIN_WINDOWS)
    if mode == "as_of_observation":
        lookback = None
    # per event: the row on the bounds of the join window; as of t: on the bounds of the aggregation windows
    offsets = (delay, lookback or 0) if mode == "per_event" else (delay, *(delay + w for w in windows))
    return DslCase(
        source=source, windows=windows, start=start, end=start + 3 * draw(st.integers(1, 14)),
        delay=delay, lookback=lookback,
        observations=draw(observation_lists([(row, offsets) for row in source.rows])),
        columns=tuple(draw(st.permutations(OBS_COLUMNS))), mode=mode,
        as_known_at=draw(MOSTLY_TRUE) if mode == "per_event" else False)


def run_property(strategy: st.SearchStrategy[Any], check: Callable[[Any, Counter[str]], None],
                 examples: Sequence[Any], required: Sequence[str], minimum: int = 3,
                 run_settings: settings = SETTINGS) -> None:
    """Run ``check`` on ``examples`` and on random cases, then assert every ``required`` edge case was hit
    at least ``minimum`` times in total (so the random data really exercises them)."""
    seen: Counter[str] = Counter()

    def body(case: Any) -> None:
        tags: Counter[str] = Counter()
        check(case, tags)
        for tag in tags:
            event(tag)
            seen[tag] += 1

    test = given(case=strategy)(body)
    for case in examples:
        test = example(case=case)(test)
    run_settings(test)()
    missing = {tag: seen[tag] for tag in required if seen[tag] < minimum}
    assert not missing, f"edge cases reached too rarely: {missing} (all: {dict(seen)})"


# -- property 1: point-in-time retrieval --------------------------------------------------------------------
PIT_FEATURES = [{"name": "f1", "type": "double"}, {"name": "f2", "type": "long"}]


def _pit_request(folder: Path, label: str, fs: PitSet, prefix: str, positions: tuple[int, int]
                 ) -> FeatureSetRequest:
    sub = folder / label
    sub.mkdir()
    _write_source(sub, fs.source, {"f1": ("a", pa.float64()), "f2": ("position", pa.int64())})
    spec = _spec(sub, fs.source, delay=fs.delay, lookback=fs.lookback, features=PIT_FEATURES)
    return FeatureSetRequest(f"{label}:1", spec, (("f1", f"{prefix}_f1"), ("f2", f"{prefix}_f2")), positions)


def materialized(request: FeatureSetRequest, folder: Path, *, until: int | None = None) -> FeatureSetRequest:
    """The same request answered from materialized data: the spec is backfilled into a Delta offline store
    over all time, and read strictly (never computed from source). With ``until`` (hours after BASE) only
    the time before it is materialized and the rest is computed from source (a gap)."""
    from gristmill.compute.engine import MaterializedData
    from gristmill.jobs.materialize import materialize_window
    from gristmill.stores.offline.delta import DeltaOfflineStore, OfflineTable

    spec = request.spec
    store = DeltaOfflineStore(str(folder / "offline"))
    table = OfflineTable(request.label.replace(":", "_"), "1", 1, tuple(spec.index_column_names),
                         spec.timestamp_column, tuple(spec.feature_names))
    window = (datetime(1970, 1, 1), datetime(2100, 1, 1) if until is None else at(until))
    materialize_window(DuckDBEngine(), spec, *window, now=datetime(2099, 1, 1), label=request.label,
                       offline=(store, table))
    return replace(request, materialized=MaterializedData(store, table, (window,), strict=until is None))


class JoinPathLog(logging.Handler):
    """Collects which ASOF ordering the DuckDB engine chose per feature set (its log of materialized reads)."""

    def __init__(self) -> None:
        super().__init__(logging.INFO)
        self.paths: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        message = record.getMessage()
        if "joining by the tie rule" in message:
            self.paths.append("tie-rule join")
        elif "joining on the event time alone" in message:
            self.paths.append("plain join")


def check_pit(case: PitCase, tags: Counter[str], *, from_materialized: bool = False, engine: Any = None,
              materialized_until: int | None = None) -> None:
    # f2 is each row's position in source order: it names the row the join picked
    paths = JoinPathLog()
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        request_a = _pit_request(folder, "fs_a", case.fs_a, "a", (2, 3) if case.b_first else (0, 1))
        request_b = _pit_request(folder, "fs_b", case.fs_b, "b", (0, 1) if case.b_first else (2, 3))
        if from_materialized:
            request_a = materialized(request_a, folder, until=materialized_until)
            request_b = materialized(request_b, folder, until=materialized_until)
        observations = _observation_table(case.observations, case.columns)
        logger = logging.getLogger("gristmill.compute")
        level = logger.level
        logger.addHandler(paths)
        logger.setLevel(logging.INFO)
        try:
            result = (engine or DuckDBEngine()).retrieve([request_a, request_b], observations, OBS_TIME,
                                                         as_known_at=case.as_known_at).to_arrow()
        finally:
            logger.removeHandler(paths)
            logger.setLevel(level)
    for path in paths.paths:
        tags[path] += 1
    outputs = ["b_f1", "b_f2", "a_f1", "a_f2"] if case.b_first else ["a_f1", "a_f2", "b_f1", "b_f2"]
    rows = _check_observation_columns(result, case, outputs)
    for got, obs in zip(rows, case.observations, strict=True):
        for prefix, fs in (("a", case.fs_a), ("b", case.fs_b)):
            key = obs.key(fs.source.keys)
            winner = pit_winner(fs.source, key, obs.t, delay=fs.delay, lookback=fs.lookback,
                                as_known_at=case.as_known_at, tags=tags)
            expected = (None, None) if winner is None else (fs.source.rows[winner].a, winner)
            assert (got[f"{prefix}_f1"], got[f"{prefix}_f2"]) == expected, (
                f"observation {obs} on fs_{prefix} (delay {fs.delay}h, lookback {fs.lookback}h, as_known_at "
                f"{case.as_known_at}): got f1/row {got[f'{prefix}_f1']}/{got[f'{prefix}_f2']}, expected "
                f"{expected[0]}/{expected[1]}")
            if winner is not None and fs.source.rows[winner].a is None:
                tags["matched row with a null feature"] += 1
            if key in CONFUSABLE and winner is not None:
                tags["composite key ('ab','c') / ('a','bc') matched"] += 1
            if fs.source.rows and obs.t < min(r.ts for r in fs.source.rows):
                tags["observation before all data"] += 1
            if fs.lookback is not None and 0 < fs.lookback < fs.delay:
                tags["delay > lookback (empty window)"] += 1
    if len(set(case.observations)) < len(case.observations):
        tags["duplicate observations"] += 1
    if any(None in r.key for fs in (case.fs_a, case.fs_b) for r in fs.source.rows):
        tags["null key in the source"] += 1
    if case.fs_a.source.split or case.fs_b.source.split:
        tags["source in two files"] += 1


def _o(i: int, k1: str | None, k2: str | None, t: int) -> Obs:
    return Obs(i, k1, k2, t, f"note {i}")


PIT_EXAMPLES = [
    # SCENARIOS 6 and 9: ties on create_timestamp, composite keys ('ab','c') / ('a','bc'), null key, dupes
    PitCase(
        fs_a=PitSet(Source(("k1",), (Row(("a",), 0, 96, 1.0), Row(("a",), 0, 48, 2.0)), True, 0), 0, None),
        fs_b=PitSet(Source(("k1", "k2"), (Row(("ab", "c"), 0, None, 1.0), Row(("a", "bc"), 0, None, 2.0)),
                           False, 1), 0, None),
        observations=(_o(0, "a", "c", 30), _o(1, "ab", "c", 24), _o(2, "a", "bc", 24), _o(3, None, "c", 24),
                      _o(1, "ab", "c", 24), _o(4, "a", "bc", 72)),
        columns=OBS_COLUMNS, as_known_at=False, b_first=True),
    # the same with as_known_at: at 72h only the row created at 48h is known
    PitCase(
        fs_a=PitSet(Source(("k1",), (Row(("a",), 0, 96, 1.0), Row(("a",), 0, 48, 2.0)), True, 0), 0, None),
        fs_b=PitSet(Source(("k1", "k2"), (Row(("a", "bc"), 0, None, 5.0), Row(("a", "bc"), 0, None, 6.0)),
                           False, 0), 12, 0),
        observations=(_o(0, "a", "bc", 72), _o(1, "a", "bc", 0), _o(2, "a", "bc", 12)),
        columns=OBS_COLUMNS, as_known_at=True, b_first=False),
    # an empty source (a parquet file without rows) answers null
    PitCase(
        fs_a=PitSet(Source(("k1",), (), True, 0), 3, 12),
        fs_b=PitSet(Source(("k1", "k2"), (Row(("a", "bc"), 6, None, 5.0),), False, 0), 0, 6),
        observations=(_o(0, "a", "bc", 12), _o(1, "a", "bc", 3)),
        columns=("k2", OBS_TIME, "note", "k1", "obs_id"), as_known_at=False, b_first=True),
    # no observations: no rows, same columns
    PitCase(
        fs_a=PitSet(Source(("k1",), (Row(("a",), 0, 0, 1.0),), True, 0), 0, None),
        fs_b=PitSet(Source(("k1", "k2"), (Row(("a", "bc"), 0, None, 5.0),), False, 0), 0, None),
        observations=(), columns=OBS_COLUMNS, as_known_at=True, b_first=False),
]


def test_point_in_time_join_matches_reference() -> None:
    run_property(pit_cases(), check_pit, PIT_EXAMPLES, required=[
        "tie on (key, ts)", "tie decided by create_timestamp", "tie decided by source order",
        "null observation key", "null key in the source", "duplicate observations",
        "composite key ('ab','c') / ('a','bc') matched", "matched row with a null feature",
        "exact-time join with a delay", "delay > lookback (empty window)", "observation before all data",
        "as_known_at excluded a row", "as_known_at kept a row created at t", "row on the lower bound",
        "row on the upper bound", "source in two files"])


def test_point_in_time_join_on_materialized_data_matches_reference() -> None:
    """SPEC §3: reads of materialized data give the same answers as computing from source."""
    run_property(pit_cases(), partial(check_pit, from_materialized=True), PIT_EXAMPLES, required=[
        "tie on (key, ts)", "tie decided by create_timestamp", "tie decided by source order",
        "null key in the source", "duplicate observations", "row on the lower bound", "row on the upper bound"])


def test_point_in_time_join_on_partly_materialized_data_matches_reference() -> None:
    """Materialized up to 18h, computed from source after it: the DuckDB engine joins on the event time alone
    when the computed rows repeat no (key, ts), by the tie rule when one does; both give the reference."""
    run_property(pit_cases().map(lambda case: replace(case, as_known_at=False)),
                 partial(check_pit, from_materialized=True, materialized_until=18), PIT_EXAMPLES[:1], required=[
                     "plain join", "tie-rule join", "tie on (key, ts)", "tie decided by create_timestamp",
                     "tie decided by source order", "null key in the source", "row on the lower bound",
                     "row on the upper bound"])


# -- property 2: computing DSL window aggregations over [s, e) ----------------------------------------------
def _dsl_spec(folder: Path, case: DslCase) -> FeatureSetSpec:
    _write_source(folder, case.source, {"x": ("a", pa.float64()), "y": ("b", pa.float64())})
    expressions = []
    for (name, aggregation, column, _), window in zip(DSL_FEATURES, case.windows, strict=True):
        expression: dict[str, Any] = {"transformation_type": "window", "feature_name": name,
                                      "aggregation": aggregation, "window": hours(window)}
        if column is not None:
            expression["source_column"] = column
        expressions.append(expression)
    features = [{"name": name, "type": kind} for name, _, _, kind in DSL_FEATURES]
    return _spec(folder, case.source, delay=case.delay, lookback=case.lookback, features=features,
                 expressions=expressions)


def _key_order(key: Key) -> tuple[tuple[bool, str], ...]:
    return tuple((k is None, k or "") for k in key)


def check_compute(case: DslCase, tags: Counter[str], *, engine: Any = None) -> None:
    source = case.source
    with tempfile.TemporaryDirectory() as tmp:
        spec = _dsl_spec(Path(tmp), case)
        result = (engine or DuckDBEngine()).compute(spec, at(case.start), at(case.end)).to_arrow()
    names = [name for name, *_ in DSL_FEATURES]
    assert result.column_names == [*source.keys, TS, *([CREATE] if source.has_create else []), *names]
    kept = [p for p, r in enumerate(source.rows) if case.start <= r.ts < case.end]
    assert result.num_rows == len(kept), "output rows must be the source rows with s <= ts < e"
    if len(kept) < sum(1 for r in source.rows if r.ts < case.end):
        tags["history before s"] += 1

    def order(key: Key, ts: int, ct: int | None) -> tuple[Any, ...]:
        return (_key_order(key), ts, ct or 0)

    got = [{**r, TS: naive(r[TS]), **({CREATE: naive(r[CREATE])} if source.has_create else {})}
           for r in result.to_pylist()]
    got.sort(key=lambda r: order(tuple(r[k] for k in source.keys), hours_after_base(r[TS]),
                                 hours_after_base(r[CREATE]) if source.has_create else None))
    expected_rows = sorted(kept, key=lambda p: order(*astuple(source.rows[p])[:3]))
    for actual, position in zip(got, expected_rows, strict=True):
        row = source.rows[position]
        assert tuple(actual[k] for k in source.keys) == row.key
        assert actual[TS] == at(row.ts)
        if source.has_create:
            assert actual[CREATE] == (at(row.ct) if row.ct is not None else None)
        if None in row.key:  # a null key matches nothing; which rows share its window is not specified
            tags["null key in the source"] += 1
            continue
        expected = per_event(case, position, tags)
        wrong = {name: (actual[name], want) for name, want in zip(names, expected, strict=True)
                 if not same(actual[name], want)}
        assert not wrong, f"row {row} (source position {position}): (got, expected) {wrong}"
    if any(sum(1 for r in source.rows if (r.key, r.ts) == (x.key, x.ts)) > 1 for x in source.rows):
        tags["tie on (key, ts)"] += 1


DSL_EXAMPLES = [
    # SCENARIO 13 (on the 3-hour grid): windows of 24h, ties and nulls
    DslCase(
        source=Source(("k1",), (Row(("a",), 0, None, 10.0, 1.0), Row(("a",), 6, None, 20.0, 2.0),
                                Row(("a",), 24, None, 5.0, None), Row(("a",), 24, None, None, 4.0),
                                Row(("a",), 30, None, 7.0, 5.0), Row(("ab",), 12, None, 100.0, 6.0)),
                      False, 2),
        windows=(24,) * len(DSL_FEATURES), start=6, end=33, delay=6, lookback=12,
        observations=(_o(0, "a", None, 30), _o(1, "a", None, 36), _o(2, "ab", None, 9),
                      _o(3, "zz", None, 30)),
        columns=OBS_COLUMNS, mode="as_of_observation", as_known_at=False),
]
# per event, with create_timestamps: the tie at 24h is decided by create_timestamp, then source order
DSL_EXAMPLES.append(replace(
    DSL_EXAMPLES[0], mode="per_event", as_known_at=True,
    source=Source(("k1",), tuple(replace(r, ct=r.ts + (6 if i == 2 else 3)) for i, r in enumerate(
        DSL_EXAMPLES[0].source.rows)), True, 2)))


def test_dsl_compute_matches_reference() -> None:
    run_property(dsl_cases(), check_compute, DSL_EXAMPLES, required=[
        "tie on (key, ts)", "latest/first decided by the tie rule", "row on a window's lower bound",
        "window of null values only", "history before s", "null key in the source"])


# -- property 3: retrieving DSL features (per event, and as of the observation time) ------------------------
def check_dsl_retrieval(case: DslCase, tags: Counter[str], *, from_materialized: bool = False,
                        engine: Any = None) -> None:
    source = case.source
    names = [name for name, *_ in DSL_FEATURES]
    with tempfile.TemporaryDirectory() as tmp:
        spec = _dsl_spec(Path(tmp), case)
        request = FeatureSetRequest("dsl:1", spec, tuple((n, n) for n in names))
        if from_materialized:
            request = materialized(request, Path(tmp))
        observations = _observation_table(case.observations, case.columns)
        result = (engine or DuckDBEngine()).retrieve([request], observations, OBS_TIME,
                                                     as_known_at=case.as_known_at,
                                                     aggregation_mode=case.mode).to_arrow()
    rows = _check_observation_columns(result, case, names)
    tags[case.mode] += 1
    for got, obs in zip(rows, case.observations, strict=True):
        key = obs.key(source.keys)
        expected: list[Value]
        if case.mode == "as_of_observation":
            if None in key:
                tags["null observation key"] += 1
                expected = [None] * len(names)        # nulls never match: no value, not even a count
            else:
                expected = dsl_window(case, key, obs.t - case.delay, tags)
        else:
            winner = pit_winner(source, key, obs.t, delay=case.delay, lookback=case.lookback,
                                as_known_at=case.as_known_at, tags=tags)
            expected = [None] * len(names) if winner is None else per_event(case, winner, tags)
        wrong = {name: (got[name], want) for name, want in zip(names, expected, strict=True)
                 if not same(got[name], want)}
        assert not wrong, (f"observation {obs} ({case.mode}, delay {case.delay}h, lookback {case.lookback}h, "
                           f"as_known_at {case.as_known_at}): (got, expected) {wrong}")


def test_dsl_retrieval_per_event_matches_reference() -> None:
    run_property(dsl_cases("per_event"), check_dsl_retrieval, DSL_EXAMPLES[1:], required=[
        "null observation key", "tie on (key, ts)", "tie decided by source order", "tie decided by create_timestamp",
        "as_known_at excluded a row", "as_known_at kept a row created at t", "row on the upper bound"])


def test_dsl_retrieval_as_of_observation_matches_reference() -> None:
    run_property(dsl_cases("as_of_observation"), check_dsl_retrieval, DSL_EXAMPLES[:1], required=[
        "empty window", "row on a window's lower bound", "row on a window's upper bound", "null observation key",
        "latest/first decided by the tie rule", "window of null values only"])


def test_dsl_retrieval_per_event_on_materialized_data_matches_reference() -> None:
    run_property(dsl_cases("per_event"), partial(check_dsl_retrieval, from_materialized=True), DSL_EXAMPLES[1:],
                 required=["tie on (key, ts)", "row on the upper bound"])


# -- the same properties on the Spark engine ----------------------------------------------------------------
# The worked examples plus a few random cases (fixed seeds): each case costs several Spark jobs (seconds), so
# the random search stays small; it runs in full on DuckDB above, and Spark must give the same answers.
SPARK_SETTINGS = settings(SETTINGS, max_examples=3)


def test_point_in_time_join_matches_reference_on_spark() -> None:
    run_property(pit_cases(), partial(check_pit, engine=spark_engine()), PIT_EXAMPLES, minimum=1,
                 run_settings=SPARK_SETTINGS, required=[
                     "tie on (key, ts)", "tie decided by create_timestamp", "null observation key",
                     "duplicate observations", "composite key ('ab','c') / ('a','bc') matched"])


def test_point_in_time_join_matches_reference_on_spark_ordered_join(monkeypatch: pytest.MonkeyPatch) -> None:
    """The ordered (hot-key) form of Spark's join, forced for every key, against the reference."""
    from gristmill.compute.spark import engine

    monkeypatch.setattr(engine, "HOT_KEY_PAIRS", 0)
    monkeypatch.setattr(engine, "MIN_HOT_OBSERVATIONS", 0)
    run_property(pit_cases(), partial(check_pit, engine=spark_engine()), PIT_EXAMPLES, minimum=1,
                 run_settings=SPARK_SETTINGS, required=[
                     "tie on (key, ts)", "tie decided by create_timestamp", "null observation key",
                     "duplicate observations", "exact-time join with a delay", "row on the lower bound"])


def test_point_in_time_join_on_materialized_data_matches_reference_on_spark() -> None:
    """Engine crossing: materialized by the DuckDB engine, read by the Spark engine."""
    run_property(pit_cases(), partial(check_pit, from_materialized=True, engine=spark_engine()), PIT_EXAMPLES,
                 minimum=1, run_settings=SPARK_SETTINGS, required=["tie on (key, ts)", "duplicate observations"])


def test_dsl_compute_matches_reference_on_spark() -> None:
    run_property(dsl_cases(), partial(check_compute, engine=spark_engine()), DSL_EXAMPLES, minimum=1,
                 run_settings=SPARK_SETTINGS, required=["tie on (key, ts)"])


def test_dsl_retrieval_per_event_matches_reference_on_spark() -> None:
    run_property(dsl_cases("per_event"), partial(check_dsl_retrieval, engine=spark_engine()), DSL_EXAMPLES[1:],
                 minimum=1, run_settings=SPARK_SETTINGS, required=["tie on (key, ts)"])


def test_dsl_retrieval_as_of_observation_matches_reference_on_spark() -> None:
    run_property(dsl_cases("as_of_observation"), partial(check_dsl_retrieval, engine=spark_engine()),
                 DSL_EXAMPLES[:1], minimum=1, run_settings=SPARK_SETTINGS, required=["as_of_observation"])
