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

from gristmill.compute.featureframe import ComputedView
from gristmill.compute.sources import ORDER
from gristmill.compute.sqltext import cols, interval, q
from gristmill.spec.featureset_spec import CREATE_TIMESTAMP

ROW = "__gm_row"
OBS_TIME = "__gm_t"


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


def deduplicated_sql(view: ComputedView, features: list[str]) -> str:
    """One row per (key, ts): the tie-rule winner. Rows with a null key can never match and are dropped."""
    keys = view.keys
    not_null = " AND ".join(f"{q(k)} IS NOT NULL" for k in keys) or "TRUE"
    packed = ", ".join(f"{q(f)} := {q(f)}" for f in features)
    winner = f"arg_max(struct_pack({packed}), {view.order_key})" if features else "NULL"
    unpack = ", ".join(f"__gm_w.{q(f)} AS {q(f)}" for f in features)
    return (f"SELECT {cols(keys)}, {q(view.timestamp)}{', ' + unpack if unpack else ''} FROM ("
            f"SELECT {cols(keys)}, {q(view.timestamp)}, {winner} AS __gm_w FROM {view.name} "
            f"WHERE {not_null} GROUP BY ALL)")


def known_at_sql(plan: JoinPlan, observations: str) -> str:
    """Per observation row, the winning feature row among those known (created) by time t."""
    view = plan.view
    on = [f"o.{okey} = f.{q(k)}" for k, okey in zip(view.keys, plan.obs_keys, strict=True)]
    on.append(f"f.{q(view.timestamp)} <= o.{OBS_TIME} - {interval(plan.delay)}")
    if plan.lookback is not None:
        on.append(f"f.{q(view.timestamp)} >= o.{OBS_TIME} - {interval(plan.lookback)}")
    if view.has_create_timestamp:
        on.append(f"(f.{q(CREATE_TIMESTAMP)} IS NULL OR f.{q(CREATE_TIMESTAMP)} <= o.{OBS_TIME})")
    names = [f for f, _ in plan.outputs]
    packed = ", ".join(f"{q(f)} := f.{q(f)}" for f in names)
    order = [f"f.{q(view.timestamp)}"]
    if view.has_create_timestamp:
        order.append(f"coalesce(f.{q(CREATE_TIMESTAMP)}, TIMESTAMP '0001-01-01')")
    order.append(f"f.{q(ORDER)}")
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
        elif plan.exact_time:
            time_match = f"{ts} = o.{OBS_TIME} - {interval(plan.delay)}"
            joins.append(f"LEFT JOIN ({right}) {alias} ON {' AND '.join([*key_match, time_match])}")
        elif plan.lookback == timedelta(0):
            joins.append(f"LEFT JOIN ({right}) {alias} ON {' AND '.join([*key_match, f'{ts} = o.{OBS_TIME}'])}")
        else:
            upper = f"o.{OBS_TIME} - {interval(plan.delay)} >= {ts}" if plan.delay else f"o.{OBS_TIME} >= {ts}"
            joins.append(f"ASOF LEFT JOIN ({right}) {alias} ON {' AND '.join([*key_match, upper])}")
            if plan.lookback is not None:
                lower = f"{ts} >= o.{OBS_TIME} - {interval(plan.lookback)}"
                value = {f: f"CASE WHEN {lower} THEN {expr} END" for f, expr in value.items()}
        for feature, out in plan.outputs:
            selected[out] = f"{value[feature]} AS {q(out)}"
    ordered = [f"o.{q(c)}" for c in observation_columns] + [selected[name] for name in output_order]
    return f"SELECT {', '.join(ordered)} FROM {observations} o {' '.join(joins)} ORDER BY o.{ROW}"
