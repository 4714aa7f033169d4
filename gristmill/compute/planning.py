"""What a retrieval or computation means, decided once above the engines (SPEC §3): the tie rule, which
feature rows an observation can reach, which windows are read from the offline store and which are
computed, how outputs are named and ordered. Engines (DuckDB, Spark) only carry out these plans."""

from __future__ import annotations

import logging
from dataclasses import dataclass
from datetime import datetime, timedelta
from enum import StrEnum
from typing import TYPE_CHECKING

from gristmill.compute.schema import sql_family
from gristmill.errors import RetrievalError
from gristmill.spec.featureset_spec import CREATE_TIMESTAMP
from gristmill.spec.types import FeatureType

if TYPE_CHECKING:
    import pyarrow as pa

    from gristmill.compute.engine import FeatureSetRequest, MaterializedData
    from gristmill.spec.common import Column
    from gristmill.spec.featureset_spec import FeatureSetSpec

log = logging.getLogger("gristmill.compute")

INTERNAL_PREFIX = "__gm_"          # reserved for the engine's own columns and views
ORDER = "__gm_order"               # source order: the tie-breaker of last resort
ROW = "__gm_row"                   # observation order: one output row per observation row, in it
ONE_MICROSECOND = timedelta(microseconds=1)
EPOCH = datetime(1970, 1, 1)


class AggregationMode(StrEnum):
    """How DSL window features are evaluated in retrieval."""

    PER_EVENT = "per_event"                  # value of the latest event row (materialized = computed)
    AS_OF_OBSERVATION = "as_of_observation"  # window ending exactly at the observation time minus delay


# -- the tie rule, as data both engines read ------------------------------------------------------------

@dataclass(frozen=True)
class TieColumn:
    """One part of the tie rule's ordering: greater wins; a null counts as ``null_as``."""

    column: str | None              # None: the feature set's timestamp column
    null_as: object = None          # None: the column is never null where the rule applies


#: Among feature rows of one key, the row that wins is the greatest by (event time, create_timestamp, source
#: order); a row without a create_timestamp loses to one with it (null counts as the year 1).
TIE_RULE: tuple[TieColumn, ...] = (
    TieColumn(None),
    TieColumn(CREATE_TIMESTAMP, null_as=datetime(1, 1, 1)),
    TieColumn(ORDER, null_as=0),
)


def tie_columns(timestamp: str, *, has_create_timestamp: bool, with_time: bool = True) -> list[TieColumn]:
    """The tie rule for a relation: its timestamp column named, ``create_timestamp`` only where it has one."""
    parts = []
    for part in TIE_RULE:
        if part.column is None:
            if with_time:
                parts.append(TieColumn(timestamp))
        elif part.column != CREATE_TIMESTAMP or has_create_timestamp:
            parts.append(part)
    return parts


# -- retrieval plans ------------------------------------------------------------------------------------

def aggregation_mode(value: str, *, as_known_at: bool) -> AggregationMode:
    """Validate ``aggregation_mode`` (and its combination with ``as_known_at``)."""
    try:
        mode = AggregationMode(value)
    except ValueError:
        raise RetrievalError(f"aggregation_mode '{value}' is unknown; use one of: "
                             f"{', '.join(m.value for m in AggregationMode)}") from None
    if mode == AggregationMode.AS_OF_OBSERVATION and as_known_at:
        raise RetrievalError("as_known_at=True cannot be combined with aggregation_mode="
                             "'as_of_observation'; use one of them")
    return mode


def shifted(moment: datetime, delta: timedelta) -> datetime:
    """``moment + delta``, saturating at the ends of the datetime range (observations in year 1 or 9999
    reach back or forward past it)."""
    try:
        return moment + delta
    except OverflowError:
        return datetime.max if delta > timedelta(0) else datetime.min


def feature_window(low: datetime | None, high: datetime | None, delay: timedelta,
                   lookback: timedelta | None) -> tuple[datetime | None, datetime]:
    """The feature rows any observation can reach: ``[min(t) - lookback, max(t) - delay]``."""
    if low is None or high is None:
        return EPOCH, EPOCH
    if lookback == timedelta(0):
        return low, shifted(high, ONE_MICROSECOND)
    end = shifted(shifted(high, -delay), ONE_MICROSECOND)
    start = shifted(low, -lookback) if lookback is not None else None
    if start is not None and start > end:
        start = end
    return start, end


def rename_clashes(requests: list[FeatureSetRequest], columns: list[str]) -> list[FeatureSetRequest]:
    """A feature whose output name is already an observation column gets the suffix ``_1`` (``_2``...)."""
    from gristmill.compute.engine import FeatureSetRequest

    taken = set(columns)
    renamed = []
    for request in requests:
        outputs = []
        for feature, name in request.outputs:
            final, n = name, 0
            while final in taken:
                n += 1
                final = f"{name}_{n}"
            if final != name:
                log.warning("feature %s of %s is output as %s: an observation column is named %s",
                            feature, request.label, final, name)
            taken.add(final)
            outputs.append((feature, final))
        renamed.append(FeatureSetRequest(request.label, request.spec, tuple(outputs), request.position,
                                         request.materialized))
    return renamed


def request_order(requests: list[FeatureSetRequest]) -> list[str]:
    """Output names sorted by the position of each feature in the user's request."""
    positions = {name: pos for r in requests for (_, name), pos in zip(r.outputs, r.position, strict=True)}
    names = [name for r in requests for _, name in r.outputs]
    return sorted(names, key=lambda name: positions[name])


def index_columns_to_match(requests: list[FeatureSetRequest]) -> list[tuple[Column, str]]:
    """Each distinct (index column, declared type) the requests join on, once, with the label of the first
    request that needs it (for the error when the observation column cannot be converted)."""
    seen: dict[tuple[str, str], tuple[Column, str]] = {}
    for request in requests:
        for column in request.spec.index_columns:
            seen.setdefault((column.name, column.type.sql), (column, request.label))
    return list(seen.values())


def missing_index_columns(requests: list[FeatureSetRequest], columns: list[str]) -> str | None:
    """The error text when observations lack an index column of a requested feature set, else None."""
    present = set(columns)
    missing = {r.label: [k for k in r.spec.index_column_names if k not in present] for r in requests}
    missing = {label: keys for label, keys in missing.items() if keys}
    if not missing:
        return None
    detail = "; ".join(f"{label} needs {', '.join(keys)}" for label, keys in missing.items())
    return f"observations lack index column(s): {detail} (observation columns: {', '.join(columns)})"


@dataclass(frozen=True)
class WindowSplit:
    """Which parts of ``[start, end)`` are read from the offline store and which are computed from source."""

    complete: list[tuple[datetime, datetime]]       # read from the offline store
    gaps: list[tuple[datetime | None, datetime]]    # computed from source (None: open start)


def split_windows(materialized: MaterializedData, start: datetime | None, end: datetime, *,
                  label: str) -> WindowSplit:
    """Split ``[start, end)`` into Complete offline windows and gaps; strict retrieval refuses gaps."""
    low = start or datetime.min
    complete = [(max(s, low), min(e, end)) for s, e in materialized.complete if s < end and e > low]
    if not complete:
        if materialized.strict:
            raise RetrievalError(f"{label}: no Complete offline data in [{start}, {end}) and strict retrieval "
                                 "refuses to compute from source; backfill the window first")
        return WindowSplit([], [(start, end)])
    gaps: list[tuple[datetime | None, datetime]] = []
    cursor: datetime | None = start
    for s, e in sorted(complete):
        if cursor is None or cursor < s:
            gaps.append((cursor, s))
        cursor = e
    if cursor is not None and cursor < end:
        gaps.append((cursor, end))
    if materialized.strict and gaps and gaps[0][0] is None:
        # Unbounded lookback: strict retrieval never reads the source, so time before the first
        # materialized window counts as holding no rows (documented in docs/materialization.md).
        gaps = gaps[1:]
    if gaps and materialized.strict:
        shown = ", ".join(f"[{s or '-inf'}, {e})" for s, e in gaps)
        raise RetrievalError(f"{label}: windows {shown} are not Complete in the offline store and strict "
                             "retrieval refuses to compute from source; backfill them first")
    log.info("%s: reading %d Complete window(s) from the offline store, computing %d gap(s) from source",
             label, len(complete), len(gaps))
    return WindowSplit(sorted(complete), gaps)


def check_declared_outputs(spec: FeatureSetSpec, extra_columns: tuple[str, ...], *, label: str) -> None:
    """Refuse columns a SQL or code transformation outputs beyond the declared ones (the spec check at apply)."""
    from gristmill.errors import TransformationError

    transformation = spec.feature_transformation
    if not extra_columns or transformation is None:
        return
    if transformation.transformation_sql or transformation.transformation_code:
        kind = "transformation_sql" if transformation.transformation_sql else "transformation_code"
        raise TransformationError(
            f"{label}: {kind} outputs column(s) {', '.join(extra_columns)} that are not declared under "
            "features; declare them (name and type) or leave them out of the transformation's output")


def source_read_start(start: datetime | None, *, source_lookback: timedelta | None,
                      max_window: timedelta | None) -> datetime | None:
    """Where reading the source starts for features of ``[start, ...)``: earlier by the source lookback, and by
    the longest DSL window (its history)."""
    lookback = source_lookback or timedelta(0)
    if max_window is not None:
        lookback = max(lookback, max_window)
    return shifted(start, -lookback) if start is not None else None


def declared_schema(spec: FeatureSetSpec) -> pa.Schema:
    """The schema of materialized rows as declared (no source read: the source may be gone): index columns,
    timestamp, ``create_timestamp``, features; times as naive ``timestamp[us]`` (UTC)."""
    import pyarrow as pa

    fields = [pa.field(c.name, c.type.arrow_type()) for c in spec.index_columns]
    fields += [pa.field(spec.timestamp_column, pa.timestamp("us")), pa.field(CREATE_TIMESTAMP, pa.timestamp("us"))]
    fields += [pa.field(f.name, f.type.arrow_type()) for f in spec.features]
    return pa.schema(fields)


# -- observations: their times and keys ------------------------------------------------------------------

# Observation times given as text: ISO 8601 dates or date-times, with an optional UTC offset.
ISO_TIME_PATTERN = r"\d{4}-\d{2}-\d{2}([ T]\d{2}:\d{2}(:\d{2}(\.\d{1,9})?)?)?(Z|[+-]\d{2}(:?\d{2})?)?"
ISO_TIME_FORMS = ("YYYY-MM-DD or YYYY-MM-DD HH:MM[:SS[.ffffff]] (a T may separate date and time), optionally "
                  "followed by Z or an offset such as +02:00 (times without one are UTC)")

# How an observation key column may be brought to the type of the declared index column: the families of
# observation column types (``schema.sql_family``) each declared type converts from (docs/retrieval.md, "Key
# types"). Only conversions that cannot change which key a value names are listed: text <-> numbers ('007'
# vs 7) and lossy casts (7.5 -> 8) are errors instead. Integers are narrowed so that a value outside the
# declared range matches nothing, exactly as an unconverted comparison would; it can never match another key.
KEY_CONVERSIONS: dict[FeatureType, frozenset[str]] = {
    FeatureType.STRING: frozenset({"string"}),
    FeatureType.INTEGER: frozenset({"integer", "decimal_int"}),
    FeatureType.LONG: frozenset({"integer", "decimal_int"}),
    # float keys are stored at their declared precision, so they are compared at it
    FeatureType.FLOAT: frozenset({"float"}),
    FeatureType.DOUBLE: frozenset({"float"}),
    FeatureType.BOOLEAN: frozenset({"boolean"}),
    FeatureType.DATETIME: frozenset({"datetime"}),
    FeatureType.BINARY: frozenset({"binary"}),
}

# The conversion a user writes instead, shown in the error (pandas spelling; nullable where it matters).
_KEY_FIXES: dict[FeatureType, str] = {
    FeatureType.STRING: "df['{c}'] = df['{c}'].astype('string')",
    FeatureType.INTEGER: "df['{c}'] = df['{c}'].astype('Int32')",
    FeatureType.LONG: "df['{c}'] = df['{c}'].astype('Int64')",
    FeatureType.FLOAT: "df['{c}'] = df['{c}'].astype('float32')",
    FeatureType.DOUBLE: "df['{c}'] = df['{c}'].astype('float64')",
    FeatureType.BOOLEAN: "df['{c}'] = df['{c}'].astype('boolean')",
    FeatureType.DATETIME: "df['{c}'] = pd.to_datetime(df['{c}'], utc=True)",
    FeatureType.BINARY: "df['{c}'] = df['{c}'].str.encode('utf-8')",
    FeatureType.FLOAT_VECTOR: "a list of floats per row",
}


def key_type_message(column: str, sql_type: str, declared: FeatureType, label: str) -> str:
    """The error for an observation key column that cannot be matched to its declared type."""
    fix = _KEY_FIXES[declared].format(c=column)
    if "string" in (sql_family(sql_type), sql_family(declared.sql)):
        why = "keys are never converted between text and numbers: 7 and '007' are different keys"
    else:
        why = "keys are never converted with a loss of precision or meaning: 7.5 is not the key 8"
    return (f"observations column {column} is {sql_type} but feature set {label} declares it {declared.value}; "
            f"convert the column first, e.g. {fix} ({why})")
