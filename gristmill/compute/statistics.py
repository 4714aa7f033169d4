"""Feature statistics: what one window of a feature set's rows looks like (counts, nulls, ranges, moments,
distinct values, a histogram or the most frequent values), the SQL every engine runs to get them, and the
merge of several windows into one summary.

The semantics live here once. An engine runs two queries over the rows it has just written (so statistics
never read the source again): ``aggregate_sql`` (one scan: counts, min, max, mean, stddev, approximate
distinct counts, newest event time) and then ``groups_sql`` (one scan with grouping sets: the histogram
bins of numeric features, bounded by the first query's min/max, and the ten most frequent values of string
and boolean features). The SQL uses only functions DuckDB and Spark SQL share; the caller passes its
identifier quoting. ``assemble`` turns the two results into a ``WindowStatistics``.

What each feature type gets is one table (``KINDS``): numeric features all of it, strings and booleans
top values instead of a histogram, datetimes min/max, binary and vectors count and nulls only. Float NaN
and infinities count as values but stay out of min, max, mean, stddev and the histogram.

>>> merge_windows([w1, w2]).features[0].mean         # exact: merged from counts, means and stddevs  # doctest: +SKIP
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from datetime import datetime
from typing import Any, Final

from gristmill.spec.types import FeatureType

__all__ = [
    "DEFAULT_SAMPLE_ROWS",
    "FeatureSetStatistics",
    "FeatureStatistics",
    "HistogramBin",
    "TopValue",
    "WindowStatistics",
    "aggregate_sql",
    "assemble",
    "groups_sql",
    "merge_windows",
]

HISTOGRAM_BINS: Final = 10
TOP_VALUES: Final = 10
DEFAULT_SAMPLE_ROWS: Final = 100_000
#: what a summary over several windows cannot merge exactly (they stay per window)
NOT_MERGED: Final = ("distinct", "histogram", "top_values")

# what each feature type gets: (min/max, mean/stddev/histogram, distinct, top values)
_NUMERIC: Final = (True, True, True, False)
KINDS: Final[dict[FeatureType, tuple[bool, bool, bool, bool]]] = {
    FeatureType.INTEGER: _NUMERIC, FeatureType.LONG: _NUMERIC, FeatureType.FLOAT: _NUMERIC,
    FeatureType.DOUBLE: _NUMERIC,
    FeatureType.STRING: (True, False, True, True),
    FeatureType.BOOLEAN: (False, False, True, True),
    FeatureType.DATETIME: (True, False, False, False),
    FeatureType.BINARY: (False, False, False, False),
    FeatureType.FLOAT_VECTOR: (False, False, False, False),
}
_FLOATS: Final = frozenset({FeatureType.FLOAT, FeatureType.DOUBLE})


# -- the public types -----------------------------------------------------------------------------------
@dataclass(frozen=True)
class HistogramBin:
    """``count`` values in ``[low, high)`` (the last bin includes ``high``)."""

    low: float
    high: float
    count: int


@dataclass(frozen=True)
class TopValue:
    """A value and how often it occurs."""

    value: Any
    count: int


@dataclass(frozen=True)
class FeatureStatistics:
    """One feature over one window (or a merged summary): ``count`` non-null values, ``nulls`` nulls.

    ``min``/``max`` are numbers, strings or datetimes by type; ``mean``/``stddev`` (sample standard
    deviation) numeric only; ``distinct`` is approximate (HyperLogLog); ``histogram`` for numeric features,
    ``top_values`` for strings and booleans. Fields a type does not get are None / empty."""

    name: str
    type: FeatureType
    count: int
    nulls: int
    min: Any = None
    max: Any = None
    mean: float | None = None
    stddev: float | None = None
    distinct: int | None = None
    histogram: tuple[HistogramBin, ...] = ()
    top_values: tuple[TopValue, ...] = ()
    #: values that entered mean/stddev (floats: NaN and infinities are left out); merging needs it
    moment_count: int = 0

    @property
    def null_percent(self) -> float:
        """Nulls as a percentage of rows (0 for no rows)."""
        rows = self.count + self.nulls
        return 100.0 * self.nulls / rows if rows else 0.0

    def to_dict(self) -> dict[str, Any]:
        return {"name": self.name, "type": self.type.value, "count": self.count, "nulls": self.nulls,
                "null_percent": round(self.null_percent, 4), "min": _json_value(self.min),
                "max": _json_value(self.max), "mean": self.mean, "stddev": self.stddev, "distinct": self.distinct,
                "histogram": [[b.low, b.high, b.count] for b in self.histogram],
                "top_values": [[_json_value(t.value), t.count] for t in self.top_values],
                "moment_count": self.moment_count}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> FeatureStatistics:
        kind = FeatureType(data["type"])
        return cls(name=data["name"], type=kind, count=int(data["count"]), nulls=int(data["nulls"]),
                   min=_from_json(data.get("min"), kind), max=_from_json(data.get("max"), kind),
                   mean=data.get("mean"), stddev=data.get("stddev"), distinct=data.get("distinct"),
                   histogram=tuple(HistogramBin(float(lo), float(hi), int(n))
                                   for lo, hi, n in data.get("histogram", [])),
                   top_values=tuple(TopValue(_from_json(v, kind), int(n)) for v, n in data.get("top_values", [])),
                   moment_count=int(data.get("moment_count", 0)))


@dataclass(frozen=True)
class WindowStatistics:
    """The statistics of one window ``[start, end)`` of a feature set version: ``rows`` rows, the newest
    event time among them, one ``FeatureStatistics`` per feature.

    Materialized windows name the ``store`` and ``job_id`` that wrote them; an on-demand computation has
    neither, and says whether it was ``sampled`` (from at most ``sample_rows`` source rows)."""

    start: datetime | None
    end: datetime | None
    rows: int
    newest_event_time: datetime | None
    features: tuple[FeatureStatistics, ...]
    computed_at: datetime | None = None
    job_id: str | None = None
    store: str | None = None
    sampled: bool = False
    sample_rows: int | None = None

    def feature(self, name: str) -> FeatureStatistics:
        """The statistics of feature ``name`` (``KeyError`` naming the features when there is none)."""
        for stats in self.features:
            if stats.name == name:
                return stats
        raise KeyError(f"no feature {name!r}; the features are {', '.join(f.name for f in self.features)}")

    def to_dict(self) -> dict[str, Any]:
        return {"start": _json_value(self.start), "end": _json_value(self.end), "rows": self.rows,
                "newest_event_time": _json_value(self.newest_event_time),
                "computed_at": _json_value(self.computed_at), "job_id": self.job_id, "store": self.store,
                "sampled": self.sampled, "sample_rows": self.sample_rows,
                "features": [f.to_dict() for f in self.features]}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> WindowStatistics:
        return cls(start=_time(data.get("start")), end=_time(data.get("end")), rows=int(data["rows"]),
                   newest_event_time=_time(data.get("newest_event_time")),
                   features=tuple(FeatureStatistics.from_dict(f) for f in data.get("features", [])),
                   computed_at=_time(data.get("computed_at")), job_id=data.get("job_id"),
                   store=data.get("store"), sampled=bool(data.get("sampled", False)),
                   sample_rows=data.get("sample_rows"))


@dataclass(frozen=True)
class FeatureSetStatistics:
    """What ``FeatureStore.feature_statistics`` answers: the windows (oldest first) and their ``summary``
    (None: no window). The summary merges what merges exactly — rows, counts, nulls, min, max, mean and
    stddev, newest event time; ``not_merged`` names what stays per window (distinct counts, histograms, top
    values)."""

    feature_set: str
    version: str
    store: str | None
    windows: tuple[WindowStatistics, ...]
    summary: WindowStatistics | None
    not_merged: tuple[str, ...] = field(default=NOT_MERGED)

    @property
    def ref(self) -> str:
        return f"{self.feature_set}:{self.version}"

    def to_dict(self) -> dict[str, Any]:
        return {"feature_set": self.feature_set, "version": self.version, "store": self.store,
                "windows": [w.to_dict() for w in self.windows],
                "summary": self.summary.to_dict() if self.summary is not None else None,
                "not_merged": list(self.not_merged)}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> FeatureSetStatistics:
        summary = data.get("summary")
        return cls(feature_set=data["feature_set"], version=str(data["version"]), store=data.get("store"),
                   windows=tuple(WindowStatistics.from_dict(w) for w in data.get("windows", [])),
                   summary=WindowStatistics.from_dict(summary) if summary else None,
                   not_merged=tuple(data.get("not_merged", NOT_MERGED)))


# -- the SQL ----------------------------------------------------------------------------------------------
Quote = Callable[[str], str]


def _value(name: str, kind: FeatureType, quote: Quote) -> str:
    """The feature's value as it enters min/max/moments: floats without NaN and infinities."""
    column = quote(name)
    if kind in _FLOATS:
        return (f"CASE WHEN NOT isnan({column}) AND {column} NOT IN (CAST('Infinity' AS DOUBLE), "
                f"CAST('-Infinity' AS DOUBLE)) THEN CAST({column} AS DOUBLE) END")
    return f"CAST({column} AS DOUBLE)" if kind in KINDS and KINDS[kind][1] else column


def aggregate_sql(relation: str, features: Sequence[tuple[str, FeatureType]], timestamp: str, *,
                  quote: Quote, time_value: Callable[[str], str] = lambda expression: expression) -> str:
    """One scan of ``relation``: rows, newest event time, then per feature its scalar statistics (the
    column order ``assemble`` reads). ``time_value`` wraps each timestamp result (Spark: ``unix_micros``, as
    its driver would turn timestamps into local times)."""
    parts = ["count(*)", time_value(f"max({quote(timestamp)})")]
    for name, kind in features:
        ranged, moments, distinct, _ = KINDS[kind]
        column, value = quote(name), _value(name, kind, quote)
        parts.append(f"count({column})")
        if ranged and kind == FeatureType.DATETIME:
            parts += [time_value(f"min({value})"), time_value(f"max({value})")]
        else:
            parts += [f"min({value})", f"max({value})"] if ranged else ["NULL", "NULL"]
        parts += ([f"count({value})", f"avg({value})", f"stddev_samp({value})"] if moments
                  else ["0", "NULL", "NULL"])
        parts.append(f"approx_count_distinct({column})" if distinct else "NULL")
    return f"SELECT {', '.join(parts)} FROM {relation}"


_AGGREGATE_WIDTH: Final = 7        # columns per feature in aggregate_sql


def groups_sql(relation: str, features: Sequence[tuple[str, FeatureType]], ranges: dict[str, tuple[float, float]],
               *, quote: Quote) -> str | None:
    """One scan of ``relation`` grouping by each numeric feature's histogram bin (within ``ranges``: its
    min and max) and by each string/boolean feature's value, keeping the ten most frequent values; rows
    ``(feature index, bin or NULL, value text or NULL, count)``. None: no feature needs it."""
    columns: list[str] = []
    for index, (name, kind) in enumerate(features):
        if KINDS[kind][1] and name in ranges:
            low, high = ranges[name]
            width = (high - low) / HISTOGRAM_BINS
            value = _value(name, kind, quote)
            bucket = ("0" if width == 0 else
                      f"least(CAST(floor(({value} - {low!r}) / {width!r}) AS INTEGER), {HISTOGRAM_BINS - 1})")
            columns.append(f"CASE WHEN {value} IS NOT NULL THEN {bucket} END AS g{index}")
        elif KINDS[kind][3]:
            columns.append(f"CAST({quote(name)} AS STRING) AS g{index}" if kind == FeatureType.STRING
                           else f"CASE WHEN {quote(name)} THEN 'true' WHEN NOT {quote(name)} THEN 'false' END "
                                f"AS g{index}")
    if not columns:
        return None
    names = [c.rsplit(" AS ", 1)[1] for c in columns]
    # which grouping set a row belongs to: the one column not null (nulls are left out of every set)
    which = "CASE " + " ".join(f"WHEN {n} IS NOT NULL THEN {n[1:]}" for n in names) + " END"
    as_text = " ".join(f"WHEN {n} IS NOT NULL THEN CAST({n} AS STRING)" for n in names)
    grouped = (f"SELECT {which} AS feature, CASE {as_text} END AS grp, count(*) AS n FROM "
               f"(SELECT {', '.join(columns)} FROM {relation}) AS valued "
               f"GROUP BY GROUPING SETS ({', '.join(f'({n})' for n in names)}) "
               f"HAVING {' OR '.join(f'{n} IS NOT NULL' for n in names)}")
    ranked = (f"SELECT feature, grp, n, row_number() OVER (PARTITION BY feature ORDER BY n DESC, grp) AS r "
              f"FROM ({grouped}) AS grouped")
    return f"SELECT feature, grp, n FROM ({ranked}) AS ranked WHERE r <= {TOP_VALUES} OR feature IN " \
           f"({', '.join(str(i) for i, (_, k) in enumerate(features) if KINDS[k][1]) or '-1'})"


def numeric_ranges(features: Sequence[tuple[str, FeatureType]], aggregates: Sequence[Any]
                   ) -> dict[str, tuple[float, float]]:
    """The (min, max) of each numeric feature with values, from ``aggregate_sql``'s row."""
    ranges = {}
    for index, (name, kind) in enumerate(features):
        base = 2 + index * _AGGREGATE_WIDTH
        low, high = aggregates[base + 1], aggregates[base + 2]
        if KINDS[kind][1] and low is not None and high is not None:
            ranges[name] = (float(low), float(high))
    return ranges


def assemble(features: Sequence[tuple[str, FeatureType]], aggregates: Sequence[Any],
             groups: Sequence[tuple[int, str, int]], *, start: datetime | None, end: datetime | None,
             normalize_time: Callable[[Any], Any] = lambda v: v) -> WindowStatistics:
    """A ``WindowStatistics`` from the rows of ``aggregate_sql`` and ``groups_sql`` (engine values as the
    database driver returns them; ``normalize_time`` turns its timestamps into naive UTC)."""
    rows = int(aggregates[0] or 0)
    ranges = numeric_ranges(features, aggregates)
    by_feature: dict[int, list[tuple[str, int]]] = {}
    for index, group, count in groups:
        by_feature.setdefault(int(index), []).append((group, int(count)))
    result = []
    for index, (name, kind) in enumerate(features):
        base = 2 + index * _AGGREGATE_WIDTH
        count, low, high, moment_count, mean, stddev, distinct = aggregates[base:base + _AGGREGATE_WIDTH]
        count = int(count or 0)
        histogram: tuple[HistogramBin, ...] = ()
        top: tuple[TopValue, ...] = ()
        if name in ranges:
            lo, hi = ranges[name]
            width = (hi - lo) / HISTOGRAM_BINS
            counts = dict((int(g), n) for g, n in by_feature.get(index, []))
            histogram = ((HistogramBin(lo, hi, counts.get(0, 0)),) if width == 0 else tuple(
                HistogramBin(lo + i * width, hi if i == HISTOGRAM_BINS - 1 else lo + (i + 1) * width,
                             counts.get(i, 0)) for i in range(HISTOGRAM_BINS)))
        elif KINDS[kind][3]:
            found = sorted(by_feature.get(index, []), key=lambda gn: (-gn[1], gn[0]))[:TOP_VALUES]
            top = tuple(TopValue(g == "true" if kind == FeatureType.BOOLEAN else g, n) for g, n in found)
        if kind == FeatureType.DATETIME:
            low, high = normalize_time(low), normalize_time(high)
        elif KINDS[kind][1]:
            low, high = _number(low, kind), _number(high, kind)
        result.append(FeatureStatistics(
            name=name, type=kind, count=count, nulls=rows - count, min=low, max=high,
            mean=float(mean) if mean is not None else None,
            stddev=float(stddev) if stddev is not None and not math.isnan(stddev) else None,
            # HyperLogLog can overshoot on small counts: never more distinct values than values
            distinct=min(int(distinct), count) if distinct is not None else None, histogram=histogram,
            top_values=top,
            moment_count=int(moment_count or 0)))
    return WindowStatistics(start=start, end=end, rows=rows, newest_event_time=normalize_time(aggregates[1]),
                            features=tuple(result))


# -- merging ----------------------------------------------------------------------------------------------
def merge_windows(windows: Sequence[WindowStatistics]) -> WindowStatistics | None:
    """One summary of ``windows``: rows, counts and nulls add up, min/max/newest event time are the
    extremes, mean and stddev combine exactly from each window's count, mean and stddev (Chan's parallel
    formula). Distinct counts, histograms and top values do not merge exactly: they are left out (None,
    empty). Features are matched by name, in the first window's order."""
    if not windows:
        return None
    names = [f.name for f in windows[0].features]
    merged = []
    for name in names:
        parts = [f for w in windows for f in w.features if f.name == name]
        merged.append(_merge_feature(parts))
    starts = [w.start for w in windows if w.start is not None]
    ends = [w.end for w in windows if w.end is not None]
    newest = [w.newest_event_time for w in windows if w.newest_event_time is not None]
    computed = [w.computed_at for w in windows if w.computed_at is not None]
    return WindowStatistics(start=min(starts) if starts else None, end=max(ends) if ends else None,
                            rows=sum(w.rows for w in windows), newest_event_time=max(newest) if newest else None,
                            features=tuple(merged), computed_at=max(computed) if computed else None,
                            store=windows[0].store, sampled=any(w.sampled for w in windows))


def _merge_feature(parts: list[FeatureStatistics]) -> FeatureStatistics:
    first = parts[0]
    lows = [p.min for p in parts if p.min is not None]
    highs = [p.max for p in parts if p.max is not None]
    n, mean, m2 = 0, 0.0, 0.0
    for part in parts:
        k = part.moment_count
        if not k or part.mean is None:
            continue
        part_m2 = (part.stddev or 0.0) ** 2 * (k - 1)
        delta = part.mean - mean
        total = n + k
        mean += delta * k / total
        m2 += part_m2 + delta * delta * n * k / total
        n = total
    has_moments = n > 0
    return replace(first, count=sum(p.count for p in parts), nulls=sum(p.nulls for p in parts),
                   min=min(lows) if lows else None, max=max(highs) if highs else None,
                   mean=mean if has_moments else None,
                   stddev=math.sqrt(m2 / (n - 1)) if n > 1 else None,
                   distinct=None, histogram=(), top_values=(), moment_count=n)


# -- values -----------------------------------------------------------------------------------------------
def _number(value: Any, kind: FeatureType) -> Any:
    if value is None:
        return None
    return int(value) if kind in (FeatureType.INTEGER, FeatureType.LONG) else float(value)


def _json_value(value: Any) -> Any:
    if isinstance(value, datetime):
        return value.isoformat()
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


def _time(value: Any) -> datetime | None:
    if value is None or isinstance(value, datetime):
        return value
    return datetime.fromisoformat(value)


def _from_json(value: Any, kind: FeatureType) -> Any:
    if value is not None and kind == FeatureType.DATETIME:
        return _time(value)
    return value
