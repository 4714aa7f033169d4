"""The acceptance scenarios of SCENARIOS.md (1-14), row by row, computed from source through the public
API, plus edge cases of point-in-time retrieval and of the DSL.

Every feature set below is written as YAML + Parquet/CSV and applied to one store for this module (built
once, for speed). Features are obtained through the ``retrieve`` / ``compute`` fixtures (conftest.py), so
the same scenarios run against every engine and storage path listed there.
"""

from __future__ import annotations

import math
import random
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import pandas as pd
import polars as pl
import pyarrow as pa
import pytest
from conftest import (  # the helpers next to this file (tests/compute/conftest.py)
    BuildStore,
    Compute,
    FeatureSetDefinition,
    Repo,
    Retrieve,
    days,
    fs1,
    hours,
    rounded,
    rows,
    t,
    table,
    values,
)

import gristmill as gm
from gristmill.errors import NotFoundError, RetrievalError

# -- shared tables -------------------------------------------------------------------------------------


def s1() -> pd.DataFrame:
    """Source ``S1``."""
    return table("acct ts f1",
                 ("A", "2024-01-01 00:00", 1.0),
                 ("A", "2024-01-02 00:00", 2.0),
                 ("A", "2024-01-03 00:00", 3.0),
                 ("B", "2024-01-01 12:00", 10.0))


def o1() -> pd.DataFrame:
    """Observations ``O1`` (``acct, ts, obs_id``)."""
    return table("acct ts obs_id",
                 ("A", "2024-01-02 00:00", "o1"),
                 ("A", "2024-01-02 12:00", "o2"),
                 ("A", "2023-12-31 00:00", "o3"),
                 ("B", "2024-01-05 00:00", "o4"),
                 ("C", "2024-01-02 00:00", "o5"))


SCENARIO_1 = [2.0, 2.0, None, 10.0, None]

# scenario 6
TIE_ROWS = [("A", "2024-01-01 00:00", 1.0, "2024-01-05 00:00"),
            ("A", "2024-01-01 00:00", 2.0, "2024-01-03 00:00")]


def ties_in_source_order(first: float, second: float) -> pd.DataFrame:
    return table("acct ts f1", ("B", "2024-01-01 00:00", 7.0), ("A", "2024-01-01 00:00", first),
                 ("A", "2024-01-01 00:00", second), ("B", "2024-01-01 00:00", 8.0))


def ties_in_two_files(early: float, late: float) -> list[pd.DataFrame]:
    return [table("acct ts f1", ("A", "2024-01-01 00:00", early), ("B", "2024-01-01 00:00", 5.0),
                  ("A", "2023-12-30 00:00", 9.0)),
            table("acct ts f1", ("A", "2024-01-01 00:00", late))]


# scenario 7
def fs_a(name: str = "fsA") -> FeatureSetDefinition:
    return FeatureSetDefinition(name=name, index={"acct": "string"}, features={"acct_f": "double"},
                                source=table("acct ts acct_f", ("A", "2024-01-01", 1.0), ("B", "2024-01-01", 2.0)))


FS_B = FeatureSetDefinition(name="fsB", index={"acct": "string", "merchant": "string"},
                            features={"pair_cnt": "long"},
                            source=table("acct merchant ts pair_cnt", ("A", "M1", "2024-01-01", 100),
                                         ("A", "M2", "2024-01-01", 200)))


def o7() -> pd.DataFrame:
    return table("obs_id acct merchant ts", ("o1", "A", "M1", "2024-01-02"), ("o2", "A", "M3", "2024-01-02"),
                 ("o3", "B", "M1", "2024-01-02"))


# scenario 9
FS_K = FeatureSetDefinition(name="fsK", index={"k1": "string", "k2": "string"}, features={"v": "double"},
                            source=table("k1 k2 ts v", ("ab", "c", "2024-01-01", 1.0), ("a", "bc", "2024-01-01", 2.0),
                                         (None, "c", "2024-01-01", 3.0)))

# scenario 11
TXN_V1 = FeatureSetDefinition(name="txn", version="1", index={"acct": "string"}, features={"f_old": "double"},
                              source=table("acct ts f_old", ("A", "2024-01-01", 1.0)))
TXN_V2 = FeatureSetDefinition(name="txn", version="2", index={"acct": "string"},
                              features={"f_old": "double", "f_new": "double"},
                              source=table("acct ts f_old f_new", ("A", "2024-01-01", 2.0, 20.0)))

# scenario 12
ROLLING_CODE = '''\
"""1-day and 3-day rolling spend per user; windows [ts - w, ts], both ends included."""

import pandas as pd


class RollingSpend:
    def transform(self, frame: pd.DataFrame) -> pd.DataFrame:
        frame = frame.sort_values(["user_id", "timestamp"], kind="stable").reset_index(drop=True)
        out = frame[["user_id", "timestamp"]].copy()
        for name, window in (("spend_1d_sum", "1D"), ("spend_3d_sum", "3D")):
            rolled = frame.groupby("user_id").rolling(window, on="timestamp", closed="both")["spend"].sum()
            out[name] = rolled.to_numpy(dtype="float64")   # groups come out in the frame's (sorted) order
        return out
'''


def rolling_spend(name: str, **settings: Any) -> FeatureSetDefinition:
    source = table("user_id timestamp spend",
                   (1, "2022-12-10 06:00", 12), (2, "2022-12-10 03:00", 56), (1, "2022-12-11 01:00", 10),
                   (2, "2022-12-11 20:00", 10), (2, "2022-12-12 02:00", 100), times=("timestamp",))
    return FeatureSetDefinition(
        name=name, index={"user_id": "long"}, features={"spend_1d_sum": "double", "spend_3d_sum": "double"},
        source=source, timestamp="timestamp", code={"transformation_code/rolling.py": ROLLING_CODE},
        transformation={"transformation_code": {"path": "./transformation_code",
                                                "transformer_class": "rolling.RollingSpend"}},
        **settings)


# scenarios 13 and 14
DSL_FEATURES = {"amount_7d_sum": "double", "txn_7d_count": "long", "amount_7d_avg": "double",
                "amount_7d_min": "double", "amount_7d_max": "double", "amount_7d_latest": "double"}


def window(feature: str, aggregation: str, source_column: str | None = "amount") -> dict[str, Any]:
    expression: dict[str, Any] = {"transformation_type": "window", "feature_name": feature,
                                  "aggregation": aggregation, "window": {"days": 7}}
    if source_column is not None:
        expression["source_column"] = source_column
    return expression


def txn_7d(name: str, **settings: Any) -> FeatureSetDefinition:
    source = table("acct ts amount",
                   ("A", "2024-01-01 10:00", 10.0), ("A", "2024-01-03 10:00", 20.0),
                   ("A", "2024-01-08 10:00", 5.0), ("A", "2024-01-09 09:00", 7.0),
                   ("B", "2024-01-05 00:00", 100.0))
    expressions = [window("amount_7d_sum", "sum"), window("txn_7d_count", "count", None),
                   window("amount_7d_avg", "avg"), window("amount_7d_min", "min"),
                   window("amount_7d_max", "max"), window("amount_7d_latest", "latest")]
    return FeatureSetDefinition(name=name, index={"acct": "string"}, features=DSL_FEATURES, source=source,
                                transformation={"transformation_expressions": expressions}, **settings)


# every DSL aggregation with nulls
NULLS_SOURCE = [
    ("A", "2024-01-01", 4.0),
    ("A", "2024-01-02", None),
    ("A", "2024-01-03", 2.0),
    ("A", "2024-01-04", 4.0),
    ("A", "2024-01-05", None),
    ("A", "2024-01-12", 1.0),   # 7-day window [01-05, 01-12]: the null row at 01-05 is on the bound
    ("B", "2024-01-01", None),
]
_VAR_424 = ((4 - 10 / 3) ** 2 * 2 + (2 - 10 / 3) ** 2) / 2   # sample variance of 4, 2, 4
# (aggregation, type, expected value at each row of NULLS_SOURCE)
AGGREGATION_CASES = [
    ("sum", "double", [4.0, 4.0, 6.0, 10.0, 10.0, 1.0, None]),
    ("avg", "double", [4.0, 4.0, 3.0, 10 / 3, 10 / 3, 1.0, None]),
    ("min", "double", [4.0, 4.0, 2.0, 2.0, 2.0, 1.0, None]),
    ("max", "double", [4.0, 4.0, 4.0, 4.0, 4.0, 1.0, None]),
    ("count", "long", [1, 2, 3, 4, 5, 2, 1]),
    ("latest", "double", [4.0, 4.0, 2.0, 4.0, 4.0, 1.0, None]),
    ("first", "double", [4.0, 4.0, 4.0, 4.0, 4.0, 1.0, None]),
    ("stddev", "double", [None, None, math.sqrt(2), math.sqrt(_VAR_424), math.sqrt(_VAR_424), None, None]),
    ("variance", "double", [None, None, 2.0, _VAR_424, _VAR_424, None, None]),
    ("distinct_count", "long", [1, 1, 2, 2, 2, 1, 0]),
]
NULLS = FeatureSetDefinition(
    name="nulls", index={"acct": "string"}, features={f"x_7d_{a}": kind for a, kind, _ in AGGREGATION_CASES},
    source=table("acct ts x", *NULLS_SOURCE),
    transformation={"transformation_expressions": [
        window(f"x_7d_{a}", a, None if a == "count" else "x") for a, _, _ in AGGREGATION_CASES]})

# transformation_sql
SQL_FS = FeatureSetDefinition(
    name="sqlfs", index={"acct": "string"}, features={"amount_doubled": "double", "is_large": "boolean"},
    source=table("acct ts amount", ("A", "2024-01-01", 4.0), ("A", "2024-01-02", 6.0), ("B", "2024-01-01", 1.0)),
    transformation={"transformation_sql": "SELECT acct, ts, amount * 2 AS amount_doubled, amount > 5 AS is_large "
                                          "FROM source WHERE amount IS NOT NULL"})

# string timestamps with a format
S1_DAY_FIRST = table("acct ts f1", ("A", "01/01/2024 00:00", 1.0), ("A", "02/01/2024 00:00", 2.0),
                     ("A", "03/01/2024 00:00", 3.0), ("B", "01/01/2024 12:00", 10.0), times=())

DEFINITIONS = [
    fs1(s1()),
    fs1(s1(), name="fs1_delay", source_delay=hours(12)),
    fs1(s1(), name="fs1_lookback", temporal_join_lookback=days(1)),
    fs1(s1(), name="fs1_delay_lookback", source_delay=hours(12), temporal_join_lookback=days(1)),
    fs1(s1(), name="fs1_exact", temporal_join_lookback=timedelta(0)),
    fs1(s1(), name="fs1_exact_delay", temporal_join_lookback=timedelta(0), source_delay=hours(12)),
    fs1(table("acct ts f1", ("A", "2024-01-01 00:00", 1.0)), name="fs1_4b", source_delay=hours(12),
        temporal_join_lookback=days(1)),
    fs1(s1(), name="fs1_4c", source_delay=hours(12), temporal_join_lookback=hours(6)),
    fs1(table("acct ts f1 create_timestamp", *TIE_ROWS, times=("ts", "create_timestamp")), name="ties_ct"),
    fs1(table("acct ts f1 create_timestamp", *TIE_ROWS[::-1], times=("ts", "create_timestamp")),
        name="ties_ct_reversed"),
    fs1(ties_in_source_order(1.0, 2.0), name="ties_order_2_last"),
    fs1(ties_in_source_order(2.0, 1.0), name="ties_order_1_last"),
    fs1(ties_in_two_files(2.0, 1.0), name="ties_files_1_last"),
    fs1(ties_in_two_files(1.0, 2.0), name="ties_files_2_last"),
    fs_a(), fs_a("fsA2"), FS_B, FS_K, TXN_V1, TXN_V2,
    rolling_spend("spend_lookback", source_lookback=days(3)),
    rolling_spend("spend"),
    txn_7d("txn7d"),
    txn_7d("txn7d_delayed", source_delay=days(1), temporal_join_lookback=days(3)),
    NULLS, SQL_FS,
    fs1(S1_DAY_FIRST, name="fs1_day_first", timestamp_format="%d/%m/%Y %H:%M"),
    fs1(s1(), name="fs1_csv", source_format="csv"),
]


@pytest.fixture(scope="module")
def repo(build_module_store: BuildStore) -> Repo:
    return build_module_store(*DEFINITIONS)


# -- scenarios 1-5: delay and lookback ------------------------------------------------------------------

@pytest.mark.parametrize(("feature_set", "expected"), [
    pytest.param("fs1", SCENARIO_1, id="1-no-delay-no-lookback"),
    pytest.param("fs1_delay", [1.0, 2.0, None, 10.0, None], id="2-delay-12h"),
    pytest.param("fs1_lookback", [2.0, 2.0, None, None, None], id="3-lookback-1d"),
    pytest.param("fs1_delay_lookback", [1.0, 2.0, None, None, None], id="4-delay-12h-lookback-1d"),
    pytest.param("fs1_exact", [2.0, None, None, None, None], id="5-lookback-0-exact"),
    pytest.param("fs1_exact_delay", [2.0, None, None, None, None], id="5-lookback-0-ignores-delay"),
])
def test_scenarios_1_to_5_delay_and_lookback(repo: Repo, retrieve: Retrieve, feature_set: str,
                                             expected: list[float | None]) -> None:
    result = retrieve(repo, [f"{feature_set}:1:f1"], o1(), "ts")
    assert list(result.columns) == ["acct", "ts", "obs_id", "f1"]
    assert values(result, "obs_id") == ["o1", "o2", "o3", "o4", "o5"]
    assert values(result, "f1") == expected


def test_scenario_4b_lookback_is_measured_from_observation_time(repo: Repo, retrieve: Retrieve) -> None:
    observations = table("acct ts", ("A", "2024-01-02 06:00"))
    # window [01-01 06:00, 01-01 18:00]: the only row, at 01-01 00:00, is outside it
    assert values(retrieve(repo, ["fs1_4b:1:f1"], observations, "ts"), "f1") == [None]


def test_scenario_4c_lookback_shorter_than_delay_is_an_empty_window(repo: Repo, retrieve: Retrieve) -> None:
    observations = pd.concat([o1(), table("acct ts obs_id",
                                          ("A", "2024-01-02 06:00", "o6"),
                                          ("A", "2024-01-02 12:00", "o7"),
                                          ("A", "2024-01-02 18:00", "o8"),
                                          ("B", "2024-01-02 00:00", "o9"))], ignore_index=True)
    result = retrieve(repo, ["fs1_4c:1:f1"], observations, "ts")
    assert values(result, "f1") == [None] * 9


# -- scenario 6: ties -----------------------------------------------------------------------------------

@pytest.mark.parametrize("feature_set", ["ties_ct", "ties_ct_reversed"])
def test_scenario_6_ties_go_to_the_greatest_create_timestamp(repo: Repo, retrieve: Retrieve,
                                                             feature_set: str) -> None:
    observations = table("acct ts obs_id", ("A", "2024-01-02 06:00", "o1"), ("A", "2024-01-04 00:00", "o2"))
    features = [f"{feature_set}:1:f1"]
    assert values(retrieve(repo, features, observations, "ts"), "f1") == [1.0, 1.0]
    known = retrieve(repo, features, observations, "ts", as_known_at=True)
    # at 01-02 06:00 neither row exists yet; at 01-04 only the row created 01-03 does
    assert values(known, "f1") == [None, 2.0]
    assert values(known, "obs_id") == ["o1", "o2"]


@pytest.mark.parametrize(("feature_set", "expected"), [("ties_order_2_last", 2.0), ("ties_order_1_last", 1.0)])
def test_scenario_6_without_create_timestamp_the_later_source_row_wins(repo: Repo, retrieve: Retrieve,
                                                                       feature_set: str, expected: float) -> None:
    observations = table("acct ts", ("A", "2024-01-02 06:00"), ("B", "2024-01-02 06:00"))
    for _ in range(3):  # every run
        assert values(retrieve(repo, [f"{feature_set}:1:f1"], observations, "ts"), "f1") == [expected, 8.0]


@pytest.mark.parametrize(("feature_set", "expected"), [("ties_files_1_last", 1.0), ("ties_files_2_last", 2.0)])
def test_scenario_6_tie_across_two_parquet_files_goes_to_the_later_file(repo: Repo, retrieve: Retrieve,
                                                                        feature_set: str, expected: float) -> None:
    observations = table("acct ts", ("A", "2024-01-02 06:00"), ("B", "2024-01-02 06:00"))
    for _ in range(3):
        assert values(retrieve(repo, [f"{feature_set}:1:f1"], observations, "ts"), "f1") == [expected, 5.0]


# -- scenario 7: two feature sets, different keys, column order -----------------------------------------

def test_scenario_7_two_feature_sets_with_different_keys(repo: Repo, retrieve: Retrieve) -> None:
    result = retrieve(repo, ["fsB:1:pair_cnt", "fsA:1:acct_f"], o7(), "ts")
    assert list(result.columns) == ["obs_id", "acct", "merchant", "ts", "pair_cnt", "acct_f"]
    assert rows(result) == [
        ("o1", "A", "M1", t("2024-01-02"), 100, 1.0),
        ("o2", "A", "M3", t("2024-01-02"), None, 1.0),
        ("o3", "B", "M1", t("2024-01-02"), None, 2.0),
    ]


# -- scenario 8: errors -----------------------------------------------------------------------------------

def test_scenario_8_observations_missing_an_index_column(repo: Repo, retrieve: Retrieve) -> None:
    with pytest.raises(RetrievalError, match="merchant"):
        retrieve(repo, ["fsB:1:pair_cnt", "fsA:1:acct_f"], o7().drop(columns=["merchant"]), "ts")


def test_scenario_8_two_features_with_the_same_name_collide(repo: Repo, retrieve: Retrieve) -> None:
    with pytest.raises(RetrievalError, match="acct_f") as caught:
        retrieve(repo, ["fsA:1:acct_f", "fsA2:1:acct_f"], o7(), "ts")
    assert "fsA:1:acct_f" in str(caught.value) and "fsA2:1:acct_f" in str(caught.value)


def test_scenario_8_collision_resolved_by_output_name(repo: Repo, retrieve: Retrieve, tmp_path: Path) -> None:
    spec_file = tmp_path / "feature_retrieval_spec.yaml"
    spec_file.write_text(
        "serialization_version: 2\n"
        "feature_stores:\n"
        "  - features:\n"
        "      - {feature_set: 'fsA:1', feature_name: acct_f}\n"
        "      - {feature_set: 'fsA2:1', feature_name: acct_f, output_name: acct_f_again}\n",
        encoding="utf-8")
    for features in (spec_file, gm.FeatureRetrievalSpec.load(spec_file)):
        result = retrieve(repo, features, o7(), "ts")
        assert list(result.columns) == ["obs_id", "acct", "merchant", "ts", "acct_f", "acct_f_again"]
        assert values(result, "acct_f") == [1.0, 1.0, 2.0]
        assert values(result, "acct_f_again") == [1.0, 1.0, 2.0]


def test_scenario_8_collision_resolved_by_full_feature_names(repo: Repo, retrieve: Retrieve) -> None:
    result = retrieve(repo, ["fsA:1:acct_f", "fsA2:1:acct_f"], o7(), "ts", full_feature_names=True)
    assert list(result.columns) == ["obs_id", "acct", "merchant", "ts", "fsA__1__acct_f", "fsA2__1__acct_f"]
    assert values(result, "fsA2__1__acct_f") == [1.0, 1.0, 2.0]


def test_scenario_8_empty_feature_list(repo: Repo, retrieve: Retrieve) -> None:
    with pytest.raises(RetrievalError, match="empty"):
        retrieve(repo, [], o7(), "ts")


@pytest.mark.parametrize(("feature", "named"), [
    ("nosuchset:1:acct_f", "nosuchset"),
    ("fsA:42:acct_f", "42"),
    ("fsA:1:nosuchfeature", "nosuchfeature"),
], ids=["unknown-feature-set", "unknown-version", "unknown-feature"])
def test_scenario_8_unknown_reference_is_named(repo: Repo, retrieve: Retrieve, feature: str, named: str) -> None:
    with pytest.raises(NotFoundError, match=named):
        retrieve(repo, [feature], o7(), "ts")


# -- scenario 9: duplicates, composite keys, nulls ---------------------------------------------------------

def test_scenario_9_duplicate_observation_rows_are_kept(repo: Repo, retrieve: Retrieve) -> None:
    observations = table("acct ts obs_id", ("A", "2024-01-02 06:00", "o1"), ("A", "2024-01-02 06:00", "o1"))
    result = retrieve(repo, ["fs1:1:f1"], observations, "ts")
    assert rows(result) == [("A", t("2024-01-02 06:00"), "o1", 2.0)] * 2


def test_scenario_9_composite_keys_are_tuples_and_nulls_never_match(repo: Repo, retrieve: Retrieve) -> None:
    observations = table("obs_id k1 k2 ts", ("x", "ab", "c", "2024-01-02"), ("y", "a", "bc", "2024-01-02"),
                         ("z", None, "c", "2024-01-02"))
    result = retrieve(repo, ["fsK:1:v"], observations, "ts")
    assert values(result, "obs_id") == ["x", "y", "z"]
    assert values(result, "v") == [1.0, 2.0, None]


# -- scenario 10: observation time column with another name ------------------------------------------------

def test_scenario_10_observation_timestamp_column_with_another_name(repo: Repo, retrieve: Retrieve) -> None:
    observations = o1().rename(columns={"ts": "event_time"})[["event_time", "acct", "obs_id"]]
    result = retrieve(repo, ["fs1:1:f1"], observations, "event_time")
    assert list(result.columns) == ["event_time", "acct", "obs_id", "f1"]
    assert values(result, "f1") == SCENARIO_1


# -- scenario 11: mixed versions ---------------------------------------------------------------------------

def test_scenario_11_features_of_two_versions_can_be_mixed(repo: Repo, retrieve: Retrieve) -> None:
    result = retrieve(repo, ["txn:1:f_old", "txn:2:f_new"], table("acct ts", ("A", "2024-01-02")), "ts")
    assert list(result.columns) == ["acct", "ts", "f_old", "f_new"]
    assert rows(result, ["f_old", "f_new"]) == [(1.0, 20.0)]


def test_scenario_11_same_feature_of_two_versions_with_full_names(repo: Repo, retrieve: Retrieve) -> None:
    observations = table("acct ts", ("A", "2024-01-02"))
    with pytest.raises(RetrievalError, match="f_old"):
        retrieve(repo, ["txn:1:f_old", "txn:2:f_old"], observations, "ts")
    result = retrieve(repo, ["txn:2:f_old", "txn:1:f_old"], observations, "ts", full_feature_names=True)
    assert list(result.columns) == ["acct", "ts", "txn__2__f_old", "txn__1__f_old"]
    assert rows(result, ["txn__2__f_old", "txn__1__f_old"]) == [(2.0, 1.0)]


# -- scenario 12: rolling code transformation and source_lookback --------------------------------------------

SCENARIO_12 = {
    "spend_lookback": [(1, t("2022-12-11 01:00"), 22.0, 22.0),
                       (2, t("2022-12-11 20:00"), 10.0, 66.0),
                       (2, t("2022-12-12 02:00"), 110.0, 166.0)],
    "spend": [(1, t("2022-12-11 01:00"), 10.0, 10.0),
              (2, t("2022-12-11 20:00"), 10.0, 10.0),
              (2, t("2022-12-12 02:00"), 110.0, 110.0)],
}


@pytest.mark.parametrize("feature_set", list(SCENARIO_12), ids=["lookback-3d", "no-lookback"])
def test_scenario_12_rolling_code_transformation(repo: Repo, compute: Compute, feature_set: str) -> None:
    frame = compute(repo, feature_set, "2022-12-11", "2022-12-13")
    assert list(frame.columns) == ["user_id", "timestamp", "spend_1d_sum", "spend_3d_sum"]
    assert sorted(rows(frame)) == SCENARIO_12[feature_set]


def test_scenario_12_preview_of_registered_code_equals_local_compute(repo: Repo) -> None:
    preview = repo.store.preview("spend_lookback", 1, "2022-12-11", "2022-12-13").to_pandas()
    assert sorted(rows(preview)) == SCENARIO_12["spend_lookback"]


# -- scenario 13: DSL, 7-day windows, per event --------------------------------------------------------------

SCENARIO_13 = [
    ("A", t("2024-01-01 10:00"), 10.0, 1, 10.0, 10.0, 10.0, 10.0),
    ("A", t("2024-01-03 10:00"), 30.0, 2, 15.0, 10.0, 20.0, 20.0),
    ("A", t("2024-01-08 10:00"), 35.0, 3, 35 / 3, 5.0, 20.0, 5.0),
    ("A", t("2024-01-09 09:00"), 32.0, 3, 32 / 3, 5.0, 20.0, 7.0),
    ("B", t("2024-01-05 00:00"), 100.0, 1, 100.0, 100.0, 100.0, 100.0),
]


@pytest.mark.parametrize(("start", "end", "expected"), [
    pytest.param("2024-01-01", "2024-01-15", SCENARIO_13, id="whole-range"),
    pytest.param("2024-01-08", "2024-01-10", SCENARIO_13[2:4], id="history-read-automatically"),
])
def test_scenario_13_dsl_seven_day_windows_per_event(repo: Repo, compute: Compute, start: str, end: str,
                                                     expected: list[tuple[Any, ...]]) -> None:
    frame = compute(repo, "txn7d", start, end)
    assert list(frame.columns) == ["acct", "ts", *DSL_FEATURES]
    assert rounded(sorted(rows(frame))) == rounded(expected)


def test_scenario_13_preview_equals_local_compute(repo: Repo) -> None:
    preview = repo.store.preview("txn7d", 1, "2024-01-01", "2024-01-15").to_pandas()
    assert rounded(sorted(rows(preview))) == rounded(SCENARIO_13)


# -- scenario 14: DSL in retrieval -----------------------------------------------------------------------------

def o14() -> pd.DataFrame:
    return table("obs_id acct ts", ("q1", "A", "2024-01-10 00:00"), ("q2", "A", "2024-01-12 00:00"),
                 ("q3", "A", "2024-01-08 10:00"), ("q4", "B", "2024-01-04 23:59:59"))


@pytest.mark.parametrize(("feature_set", "expected"), [
    pytest.param("txn7d", [(32.0, 3), (32.0, 3), (35.0, 3), (None, None)], id="a-no-delay-no-lookback"),
    pytest.param("txn7d_delayed", [(35.0, 3), (32.0, 3), (None, None), (None, None)],
                 id="b-delay-1d-lookback-3d"),
])
def test_scenario_14_dsl_features_in_retrieval(repo: Repo, retrieve: Retrieve, feature_set: str,
                                               expected: list[tuple[Any, ...]]) -> None:
    result = retrieve(repo, [f"{feature_set}:1:amount_7d_sum", f"{feature_set}:1:txn_7d_count"], o14(), "ts")
    assert list(result.columns) == ["obs_id", "acct", "ts", "amount_7d_sum", "txn_7d_count"]
    assert rows(result, ["amount_7d_sum", "txn_7d_count"]) == expected


def test_scenario_14c_as_of_observation_mode(repo: Repo, retrieve: Retrieve) -> None:
    result = retrieve(repo, ["txn7d:1:amount_7d_sum", "txn7d:1:txn_7d_count"], o14(), "ts",
                      aggregation_mode="as_of_observation")
    assert values(result, "obs_id") == ["q1", "q2", "q3", "q4"]
    by_id = {r[0]: r[1:] for r in rows(result, ["obs_id", "amount_7d_sum", "txn_7d_count"])}
    assert by_id["q2"] == (12.0, 2)   # window [01-05 00:00, 01-12 00:00]
    assert by_id["q1"] == (32.0, 3)   # window [01-03 00:00, 01-10 00:00]
    assert by_id["q3"] == (35.0, 3)   # window [01-01 10:00, 01-08 10:00]
    assert by_id["q4"][0] is None     # no B event up to 01-04 23:59:59


# -- edge cases: observation inputs --------------------------------------------------------------------------

def test_observation_formats_give_identical_results(repo: Repo, retrieve: Retrieve, tmp_path: Path) -> None:
    observations = o1()
    parquet = tmp_path / "observations.parquet"
    observations.to_parquet(parquet, index=False)
    inputs: dict[str, Any] = {
        "pandas": observations,
        "polars": pl.from_pandas(observations),
        "arrow": pa.Table.from_pandas(observations, preserve_index=False),
        "parquet-path": parquet,
        "parquet-str": str(parquet),
    }
    results = {kind: retrieve(repo, ["fs1:1:f1"], data, "ts") for kind, data in inputs.items()}
    assert values(results["pandas"], "f1") == SCENARIO_1
    expected = rows(results["pandas"])
    for kind, result in results.items():
        assert list(result.columns) == ["acct", "ts", "obs_id", "f1"], kind
        assert rows(result) == expected, kind


def _reference_f1(source: pd.DataFrame, acct: str | None, at: datetime) -> float | None:
    """Scenario-1 semantics in plain Python: the latest row of ``acct`` with ``ts <= at``."""
    eligible = [(r.ts, r.f1) for r in source.itertuples() if r.acct == acct]
    eligible = [(ts, f1) for ts, f1 in eligible if ts <= at]
    return max(eligible)[1] if eligible else None


def test_output_keeps_observation_column_and_row_order(repo: Repo, retrieve: Retrieve) -> None:
    generator = random.Random(11)
    records = [{"label": i % 3 == 0, "ts": t("2023-12-31") + timedelta(minutes=generator.randrange(0, 8640, 30)),
                "obs_id": f"r{i:03d}", "acct": generator.choice(["A", "B", "C", None])} for i in range(300)]
    observations = pd.DataFrame(records)
    observations["ts"] = observations["ts"].astype("datetime64[us]")
    result = retrieve(repo, ["fs1:1:f1"], observations, "ts")
    assert list(result.columns) == ["label", "ts", "obs_id", "acct", "f1"]
    assert values(result, "obs_id") == [r["obs_id"] for r in records]
    assert values(result, "label") == [r["label"] for r in records]
    assert values(result, "f1") == [_reference_f1(s1(), r["acct"], r["ts"]) for r in records]


def test_observation_rows_with_null_key_or_time_are_kept(repo: Repo, retrieve: Retrieve) -> None:
    observations = table("acct ts obs_id", ("A", None, "n1"), (None, "2024-01-02", "n2"),
                         ("A", "2024-01-02", "n3"))
    result = retrieve(repo, ["fs1:1:f1"], observations, "ts")
    assert values(result, "obs_id") == ["n1", "n2", "n3"]
    assert values(result, "f1") == [None, None, 2.0]   # no time, no point-in-time value


def test_feature_named_like_an_observation_column_gets_suffix(repo: Repo, retrieve: Retrieve) -> None:
    observations = o1().assign(f1=["x1", "x2", "x3", "x4", "x5"])
    result = retrieve(repo, ["fs1:1:f1"], observations, "ts")
    assert list(result.columns) == ["acct", "ts", "obs_id", "f1", "f1_1"]
    assert values(result, "f1") == ["x1", "x2", "x3", "x4", "x5"]
    assert values(result, "f1_1") == SCENARIO_1


def test_full_feature_names(repo: Repo, retrieve: Retrieve) -> None:
    result = retrieve(repo, ["fsA:1:acct_f", "fs1:1:f1"], o1(), "ts", full_feature_names=True)
    assert list(result.columns) == ["acct", "ts", "obs_id", "fsA__1__acct_f", "fs1__1__f1"]
    assert values(result, "fs1__1__f1") == SCENARIO_1
    assert values(result, "fsA__1__acct_f") == [1.0, 1.0, None, 2.0, None]


@pytest.mark.parametrize("zone", ["UTC", "Europe/Berlin", "America/New_York"])
def test_timezone_aware_observation_timestamps(repo: Repo, retrieve: Retrieve, zone: str) -> None:
    observations = o1()
    observations["ts"] = observations["ts"].dt.tz_localize("UTC").dt.tz_convert(zone)
    result = retrieve(repo, ["fs1:1:f1"], observations, "ts")
    assert values(result, "f1") == SCENARIO_1
    assert values(result, "ts") == values(o1(), "ts")   # the same instants


# -- edge cases: sources and transformations -----------------------------------------------------------------

def test_transformation_sql_feature_set(repo: Repo, compute: Compute, retrieve: Retrieve) -> None:
    frame = compute(repo, "sqlfs", "2024-01-01", "2024-01-03")
    assert list(frame.columns) == ["acct", "ts", "amount_doubled", "is_large"]
    assert sorted(rows(frame)) == [("A", t("2024-01-01"), 8.0, False), ("A", t("2024-01-02"), 12.0, True),
                                   ("B", t("2024-01-01"), 2.0, False)]
    result = retrieve(repo, ["sqlfs:1:is_large", "sqlfs:1:amount_doubled"], o1(), "ts")
    assert rows(result, ["is_large", "amount_doubled"]) == [(True, 12.0), (True, 12.0), (None, None),
                                                            (False, 2.0), (None, None)]


def test_string_timestamp_column_with_format(repo: Repo, retrieve: Retrieve, compute: Compute) -> None:
    assert values(retrieve(repo, ["fs1_day_first:1:f1"], o1(), "ts"), "f1") == SCENARIO_1
    frame = compute(repo, "fs1_day_first", "2024-01-02", "2024-01-04")
    assert sorted(rows(frame)) == [("A", t("2024-01-02"), 2.0), ("A", t("2024-01-03"), 3.0)]


def test_csv_source(repo: Repo, retrieve: Retrieve) -> None:
    assert values(retrieve(repo, ["fs1_csv:1:f1"], o1(), "ts"), "f1") == SCENARIO_1


# -- edge cases: every DSL aggregation with nulls, against hand-computed values --------------------------------

@pytest.fixture(scope="module")
def nulls_frame(repo: Repo, compute: Compute) -> pd.DataFrame:
    return compute(repo, "nulls", "2024-01-01", "2024-02-01")


@pytest.mark.parametrize(("aggregation", "expected"), [(a, e) for a, _, e in AGGREGATION_CASES],
                         ids=[a for a, _, _ in AGGREGATION_CASES])
def test_dsl_aggregation_with_nulls(nulls_frame: pd.DataFrame, aggregation: str, expected: list[Any]) -> None:
    by_row = {(acct, ts): value for acct, ts, value in rows(nulls_frame, ["acct", "ts", f"x_7d_{aggregation}"])}
    got = [by_row[(acct, t(ts))] for acct, ts, _ in NULLS_SOURCE]
    assert got == pytest.approx(expected)


def test_isolated_store_gives_the_same_answers(build_store: BuildStore, retrieve: Retrieve) -> None:
    """A store holding only ``fs1`` answers scenario 1 like the shared one (no cross-talk between sets)."""
    alone = build_store(fs1(s1()))
    assert values(retrieve(alone, ["fs1:1:f1"], o1(), "ts"), "f1") == SCENARIO_1
