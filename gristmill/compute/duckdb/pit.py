"""The point-in-time join (SPEC §3), as SQL over an observations view and computed feature views.

For each observation row with time ``t`` and each feature set independently: the row of the same key
(a tuple of index columns; nulls never match) with the latest event time in
``[t - temporal_join_lookback, t - source_delay]`` (both inclusive; no lookback = unbounded; lookback 0 =
exact-time join, delay ignored). Ties on (key, ts) go to the greatest ``create_timestamp``, then to the
row last in source order. With ``as_known_at`` only rows with ``create_timestamp <= t`` are eligible.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import timedelta

from gristmill.compute.duckdb.featureframe import ComputedView
from gristmill.compute.duckdb.sqltext import cols, interval, q, tie_rule_sql, utc_timestamp_sql
from gristmill.compute.planning import ROW
from gristmill.compute.schema import sql_family
from gristmill.spec.featureset_spec import CREATE_TIMESTAMP
from gristmill.spec.types import FeatureType

OBS_TIME = "__gm_t"

# -- observations meeting feature rows -------------------------------------------------------------------

# How an observation key column is brought to the type of the declared index column, in DuckDB SQL, by the
# family of the observation column's type: exactly the conversions ``planning.KEY_CONVERSIONS`` allows.
# Integers are narrowed with TRY_CAST on purpose: a value outside the declared range equals no stored key,
# so it matches nothing, exactly as an unconverted comparison would; it can never match another key.
_KEY_CONVERSIONS: dict[FeatureType, dict[str, str]] = {
    FeatureType.STRING: {"string": "CAST({c} AS VARCHAR)"},
    FeatureType.INTEGER: {"integer": "TRY_CAST({c} AS INTEGER)", "decimal_int": "TRY_CAST({c} AS INTEGER)"},
    FeatureType.LONG: {"integer": "TRY_CAST({c} AS BIGINT)", "decimal_int": "TRY_CAST({c} AS BIGINT)"},
    # float keys are stored at their declared precision, so they are compared at it
    FeatureType.FLOAT: {"float": "CAST({c} AS FLOAT)"},
    FeatureType.DOUBLE: {"float": "CAST({c} AS DOUBLE)"},
    FeatureType.BOOLEAN: {"boolean": "CAST({c} AS BOOLEAN)"},
    FeatureType.DATETIME: {"datetime": "{time}"},
    FeatureType.BINARY: {"binary": "CAST({c} AS BLOB)"},
}


def utc_time_sql(column: str, sql_type: str) -> str | None:
    """SQL for observation column ``column`` as a naive UTC ``TIMESTAMP``; None for types that hold no time.
    Text must match ``ISO_TIME_PATTERN`` (checked before the query runs): an offset in it is honoured."""
    return utc_timestamp_sql(q(column), sql_type)


def observation_key_sql(column: str, sql_type: str, declared: FeatureType) -> str | None:
    """SQL for observation key ``column`` (engine type ``sql_type``) in the declared index column type, or
    None when no conversion is safe (see ``_KEY_CONVERSIONS``)."""
    if sql_type.upper() == declared.sql:
        return q(column)
    template = _KEY_CONVERSIONS.get(declared, {}).get(sql_family(sql_type))
    if template is None:
        return None
    time = utc_time_sql(column, sql_type) if declared == FeatureType.DATETIME else None
    return template.format(c=q(column), time=time)


@dataclass(frozen=True)
class JoinPlan:
    """One feature set's part of a retrieval: its computed view and how to join it."""

    view: ComputedView
    obs_keys: list[str]            # observation-side column (or expression) per index column
    outputs: list[tuple[str, str]]  # (feature name, output column name)
    delay: timedelta
    lookback: timedelta | None     # None = unbounded
    as_known_at: bool = False
    exact_time: bool = False       # as-of-observation probes: join on the probe time exactly


SORT_KEY = "__gm_sort"
# Greatest sort key at time t; NULL (never matching) when t is NULL, as a struct with a NULL field is not.
LATEST_BOUND = ("(CASE WHEN {t} IS NOT NULL THEN "
                "{{'t': {t}, 'c': 'infinity'::TIMESTAMP, 'o': 9223372036854775807::BIGINT}} END)")


def sort_key_sql(view: ComputedView, prefix: str = "") -> str:
    """The ASOF ordering key of a feature row: the tie-rule struct, or just the timestamp where rows at
    equal (key, ts) carry equal features anyway or no two rows share a (key, ts) (cheaper to sort)."""
    if not view.needs_tie_rule:
        return f"{prefix}{q(view.timestamp)}"
    return _tie_rule_struct(view, prefix)


def _tie_rule_struct(view: ComputedView, prefix: str) -> str:
    """The tie-rule ordering of a feature row as one comparable struct: (ts, create_timestamp, source order).
    An ASOF join on it picks, among rows at or before a time, the latest one and, on equal times, the
    tie-rule winner — no separate de-duplication pass needed."""
    rule = tie_rule_sql(view.timestamp, has_create_timestamp=True, prefix=prefix)
    if not view.has_create_timestamp:       # the struct keeps one shape (LATEST_BOUND compares with it)
        rule[1] = "TIMESTAMP '0001-01-01'"
    return "{" + ", ".join(f"'{field}': {sql}" for field, sql in zip("tco", rule, strict=True)) + "}"


def asof_side_sql(view: ComputedView, features: list[str]) -> str:
    """The right side of the point-in-time ASOF join. Rows with a null key can never match: dropped."""
    not_null = " AND ".join(f"{q(k)} IS NOT NULL" for k in view.keys) or "TRUE"
    feature_cols = "".join(f", {q(f)}" for f in features)
    return (f"SELECT {cols(view.keys)}, {q(view.timestamp)}, {sort_key_sql(view)} AS {SORT_KEY}{feature_cols} "
            f"FROM {view.name} WHERE {not_null}")


def known_at_sql(plan: JoinPlan, observations: str) -> str:
    """Per observation row, the winning feature row among those known (created) by time t."""
    view = plan.view
    on = [f"o.{okey} = f.{q(k)}" for k, okey in zip(view.keys, plan.obs_keys, strict=True)]
    if plan.lookback == timedelta(0):
        on.append(f"f.{q(view.timestamp)} = o.{OBS_TIME}")  # exact-time join: delay ignored
    else:
        on.append(f"f.{q(view.timestamp)} <= o.{OBS_TIME} - {interval(plan.delay)}")
        if plan.lookback is not None:
            on.append(f"f.{q(view.timestamp)} >= o.{OBS_TIME} - {interval(plan.lookback)}")
    if view.has_create_timestamp:
        on.append(f"(f.{q(CREATE_TIMESTAMP)} IS NULL OR f.{q(CREATE_TIMESTAMP)} <= o.{OBS_TIME})")
    names = [f for f, _ in plan.outputs]
    packed = ", ".join(f"{q(f)} := f.{q(f)}" for f in names)
    order = tie_rule_sql(view.timestamp, has_create_timestamp=view.has_create_timestamp, prefix="f.")
    return (f"SELECT o.{ROW}, arg_max(struct_pack({packed}), ({', '.join(order)})) AS __gm_w "
            f"FROM {observations} o JOIN {view.name} f ON {' AND '.join(on)} GROUP BY o.{ROW}")


def point_in_time_sql(observations: str, observation_columns: list[str], plans: list[JoinPlan],
                      right_sides: list[str], output_order: list[str]) -> str:
    """The full retrieval query: observation columns in their order, then features in ``output_order``
    (request order), one output row per observation row, in observation order."""
    joins = []
    selected: dict[str, str] = {}
    for i, (plan, right) in enumerate(zip(plans, right_sides, strict=True)):
        alias = f"f{i}"
        view = plan.view
        key_match = [f"o.{okey} = {alias}.{q(k)}" for k, okey in zip(view.keys, plan.obs_keys, strict=True)]
        ts = f"{alias}.{q(view.timestamp)}"
        value = {f: f"{alias}.{q(f)}" for f, _ in plan.outputs}
        if plan.as_known_at:
            joins.append(f"LEFT JOIN ({right}) {alias} ON {alias}.{ROW} = o.{ROW}")
            value = {f: f"{alias}.__gm_w.{q(f)}" for f, _ in plan.outputs}
        else:
            # exact-time join (lookback 0: delay ignored; as-of-observation probes: at t - delay),
            # otherwise the latest row at or before t - delay, kept if within the lookback.
            if plan.exact_time:
                target = f"o.{OBS_TIME} - {interval(plan.delay)}"
            elif plan.lookback == timedelta(0):
                target = f"o.{OBS_TIME}"
            else:
                target = f"o.{OBS_TIME} - {interval(plan.delay)}" if plan.delay else f"o.{OBS_TIME}"
            bound = LATEST_BOUND.format(t=target) if view.needs_tie_rule else target
            joins.append(f"ASOF LEFT JOIN ({right}) {alias} ON "
                         f"{' AND '.join([*key_match, f'{bound} >= {alias}.{SORT_KEY}'])}")
            if plan.exact_time or plan.lookback == timedelta(0):
                keep = f"{ts} = {target}"
            elif plan.lookback is not None:
                keep = f"{ts} >= o.{OBS_TIME} - {interval(plan.lookback)}"
            else:
                keep = None
            if keep is not None:
                value = {f: f"CASE WHEN {keep} THEN {expr} END" for f, expr in value.items()}
        for feature, out in plan.outputs:
            selected[out] = f"{value[feature]} AS {q(out)}"
    ordered = [f"o.{q(c)}" for c in observation_columns] + [selected[name] for name in output_order]
    return f"SELECT {', '.join(ordered)} FROM {observations} o {' '.join(joins)} ORDER BY o.{ROW}"
