"""DSL window aggregations: one table mapping each aggregation to its SQL (SQLGlot style: behaviour in
data, not if-chains). ``{x}`` is the source column, ``{marker}`` is 1 on real rows and NULL on probe rows
(as-of-observation mode), ``{order}`` is the tie-rule ordering key of a row."""

from __future__ import annotations

from dataclasses import dataclass

from gristmill.spec.featureset_spec import Aggregation


@dataclass(frozen=True)
class AggregationSql:
    template: str
    description: str


AGGREGATIONS: dict[Aggregation, AggregationSql] = {
    Aggregation.SUM: AggregationSql("sum({x})", "sum of non-null values"),
    Aggregation.AVG: AggregationSql("avg({x})", "mean of non-null values"),
    Aggregation.MIN: AggregationSql("min({x})", "smallest non-null value"),
    Aggregation.MAX: AggregationSql("max({x})", "largest non-null value"),
    Aggregation.COUNT: AggregationSql("count({marker})", "number of rows (0 for an empty window)"),
    Aggregation.LATEST: AggregationSql("arg_max({x}, {order}) FILTER (WHERE {x} IS NOT NULL)",
                                       "value of the latest row with a non-null value (tie rule on equal times)"),
    Aggregation.FIRST: AggregationSql("arg_min({x}, {order}) FILTER (WHERE {x} IS NOT NULL)",
                                      "value of the earliest row with a non-null value"),
    Aggregation.STDDEV: AggregationSql("stddev_samp({x})", "sample standard deviation (null below 2 values)"),
    Aggregation.VARIANCE: AggregationSql("var_samp({x})", "sample variance (null below 2 values)"),
    Aggregation.DISTINCT_COUNT: AggregationSql("count(DISTINCT {x})", "number of distinct non-null values"),
}


def aggregation_sql(aggregation: Aggregation, *, x: str | None, marker: str, order: str) -> str:
    return AGGREGATIONS[aggregation].template.format(x=x, marker=marker, order=order)
