"""What retrieval does with the observations it is given: key columns whose type differs from the declared
index column, observation times written as text, observation columns handed back unchanged, malformed
feature references, and errors that speak in the user's terms (never the engine's internal names)."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import polars as pl
import polars.testing
import pyarrow as pa
import pytest
from conftest import BuildStore, FeatureSetDefinition, Repo, Retrieve, fs1, table, values

import gristmill as gm
from gristmill.errors import GristmillError, RetrievalError, TransformationError
from gristmill.spec.retrieval_spec import FeatureRef

STRING_KEYS = fs1(table("acct ts f1",
                        ("A", "2024-01-01 00:00", 1.0),
                        ("A", "2024-01-02 00:00", 2.0),
                        ("7", "2024-01-01 00:00", 7.0),
                        ("007", "2024-01-01 00:00", 70.0)))


def _numbers(name: str, key: str, kind: str) -> FeatureSetDefinition:
    source = pd.DataFrame({key: np.array([7, 8], dtype="int64" if kind == "long" else "int32"),
                           "ts": pd.to_datetime(["2024-01-01", "2024-01-01"]).astype("datetime64[us]"),
                           "g": np.array([70, 80], dtype="int64")})
    return FeatureSetDefinition(name=name, index={key: kind}, features={"g": "long"}, source=source)


LONG_KEYS = _numbers("by_long", "n", "long")
INTEGER_KEYS = _numbers("by_integer", "m", "integer")
KEY_OF = {"fs1": "acct", "by_long": "n", "by_integer": "m"}
SQL_TYPO = FeatureSetDefinition(name="sql_typo", index={"acct": "string"}, features={"f1": "double"},
                                source=STRING_KEYS.source,
                                transformation={"transformation_sql": "SELECT acct, ts, f1_typo AS f1 FROM source"})


@pytest.fixture(scope="module")
def repo(build_module_store: BuildStore) -> Repo:
    # SQL_TYPO is registered broken on purpose (its error at retrieval is tested): no source check at apply
    return build_module_store(STRING_KEYS, LONG_KEYS, INTEGER_KEYS, SQL_TYPO, check_source=False)


def at(*times: str) -> pd.Series:
    return pd.Series(pd.to_datetime(list(times))).astype("datetime64[us]")


# -- 1. key types: one rule, no silent all-null features --------------------------------------------------

@pytest.mark.parametrize(("feature", "keys", "fragments"), [
    pytest.param("fs1:1:f1", np.array([7, 8], dtype="int64"), ["acct", "BIGINT", "fs1:1", "string",
                                                                "astype('string')", "'007'"],
                 id="integers-vs-string"),
    pytest.param("by_long:1:g", np.array(["7", "8"], dtype=object), ["column n", "VARCHAR", "by_long:1", "long",
                                                                     "astype('Int64')"],
                 id="text-vs-long"),
    pytest.param("by_integer:1:g", np.array(["7", "x"], dtype=object), ["column m", "VARCHAR", "integer",
                                                                        "astype('Int32')"],
                 id="text-vs-integer"),
    pytest.param("by_long:1:g", np.array([7.0, 7.5]), ["column n", "DOUBLE", "long", "loss of precision"],
                 id="floats-vs-long"),
    pytest.param("fs1:1:f1", np.array([True, False]), ["acct", "BOOLEAN", "string"], id="booleans-vs-string"),
])
def test_a_key_column_of_another_kind_is_one_clear_error(repo: Repo, feature: str, keys: Any,
                                                        fragments: list[str]) -> None:
    name = KEY_OF[feature.split(":")[0]]
    observations = pd.DataFrame({name: keys, "ts": at("2024-01-02", "2024-01-02")})
    with pytest.raises(RetrievalError) as raised:
        repo.store.get_offline_features([feature], observations, "ts")
    message = str(raised.value)
    for fragment in fragments:
        assert fragment in message, message
    assert "__gm" not in message


@pytest.mark.parametrize(("feature", "keys", "expected"), [
    pytest.param("by_long:1:g", np.array([7, 8, 9], dtype="int32"), [70, 80, None], id="int32-widened-to-long"),
    pytest.param("by_long:1:g", np.array([7, 8, 9], dtype="uint8"), [70, 80, None], id="uint8-widened-to-long"),
    pytest.param("by_integer:1:g", np.array([7, 2**40 + 7, 8], dtype="int64"), [70, None, 80],
                 id="int64-vs-integer-out-of-range-matches-nothing"),
    pytest.param("by_long:1:g", pd.array([7, None, 8], dtype="Int64"), [70, None, 80], id="nullable-integers"),
    pytest.param("fs1:1:f1", pd.Categorical(["007", "7", "A"]), [70.0, 7.0, 2.0], id="categorical-text"),
])
def test_integer_keys_are_widened_and_text_keys_compared_as_text(repo: Repo, retrieve: Retrieve, feature: str,
                                                                 keys: Any, expected: list[Any]) -> None:
    name = KEY_OF[feature.split(":")[0]]
    observations = pd.DataFrame({name: keys, "ts": at("2024-01-03", "2024-01-03", "2024-01-03")})
    result = retrieve(repo, [feature], observations, "ts")
    assert values(result, feature.rsplit(":", 1)[1]) == expected


@pytest.mark.parametrize(("keys", "expected"), [
    pytest.param(["007", "7"], [70.0, 7.0], id="leading-zeros"),
    pytest.param(["7", "8"], [7.0, None], id="digits-only"),     # would be sniffed as integers
])
def test_csv_observation_keys_declared_string_are_read_as_text(repo: Repo, tmp_path: Path, keys: list[str],
                                                               expected: list[float | None]) -> None:
    path = tmp_path / "observations.csv"
    path.write_text("acct,ts\n" + "".join(f"{key},2024-01-03 00:00:00\n" for key in keys), encoding="utf-8")
    result = repo.store.get_offline_features(["fs1:1:f1"], str(path), "ts").to_pandas()
    assert values(result, "acct") == keys
    assert values(result, "f1") == expected


# -- 2. feature references: one parser --------------------------------------------------------------------

@pytest.mark.parametrize(("text", "expected"), [
    ("fs1:1:f1", FeatureRef(None, "fs1", "1", "f1")),
    (" fs1:1:f1 ", FeatureRef(None, "fs1", "1", "f1")),
    ("risk/scores:2:score", FeatureRef("risk", "scores", "2", "score")),
])
def test_feature_references_parse_into_one_frozen_type(text: str, expected: FeatureRef) -> None:
    assert FeatureRef.parse(text) == expected


@pytest.mark.parametrize(("text", "hint"), [
    ("spend:spend_3d_sum", "'spend:1:spend_3d_sum'"),
    ("a:b:c:d", ""),
    ("fs1::f1", ""),
    ("fs1", ""),
    ("a/b/c:1:f", ""),
])
def test_a_malformed_reference_is_a_retrieval_error_everywhere(repo: Repo, text: str, hint: str) -> None:
    observations = pd.DataFrame({"acct": ["A"], "ts": at("2024-01-02")})
    attempts = [lambda: FeatureRef.parse(text),
                lambda: gm.FeatureRetrievalSpec.from_features([text]),
                lambda: repo.store.get_offline_features([text], observations, "ts"),
                lambda: repo.store.get_online_features([text], {"acct": ["A"]})]
    for attempt in attempts:
        with pytest.raises(RetrievalError) as raised:
            attempt()
        message = str(raised.value)
        assert f"'{text}'" in message and "'feature_set:version:feature'" in message, message
        assert hint in message


# -- 3. observation times written as text -----------------------------------------------------------------

@pytest.mark.parametrize(("written", "expected"), [
    pytest.param("2024-01-02", 2.0, id="date"),
    pytest.param("2024-01-01 23:00", 1.0, id="date-time"),
    pytest.param("2024-01-01T23:00:00.5", 1.0, id="T-and-fraction"),
    pytest.param("2024-01-02T00:00:00Z", 2.0, id="Z"),
    pytest.param("2024-01-02T01:00:00+02:00", 1.0, id="offset-is-honoured"),
    pytest.param("2024-01-01T22:00:00-02:00", 2.0, id="negative-offset"),
])
def test_iso_observation_times_in_text_are_read_in_utc(repo: Repo, retrieve: Retrieve, written: str,
                                                       expected: float) -> None:
    observations = pd.DataFrame({"acct": ["A"], "label_time": [written]})
    result = retrieve(repo, ["fs1:1:f1"], observations, "label_time")
    assert values(result, "f1") == [expected]
    assert values(result, "label_time") == [written]


@pytest.mark.parametrize("bad", ["05/01/2025 10:00", "yesterday", "epoch", "", "2024-01-02 10:00 Europe/Paris"])
def test_a_time_that_is_not_iso_is_one_clear_error(repo: Repo, bad: str) -> None:
    observations = pd.DataFrame({"acct": ["A", "A"], "label_time": ["2024-01-02", bad]})
    with pytest.raises(RetrievalError) as raised:
        repo.store.get_offline_features(["fs1:1:f1"], observations, "label_time").to_pandas()
    message = str(raised.value)
    assert "timestamp_column 'label_time'" in message and f"e.g. {bad!r}" in message, message
    assert "1 value(s)" in message and "YYYY-MM-DD" in message and "+02:00" in message
    assert "__gm" not in message


def test_a_csv_file_of_day_first_times_is_refused_not_guessed(repo: Repo, tmp_path: Path) -> None:
    path = tmp_path / "observations.csv"
    path.write_text("acct,label_time\nA,01/12/2024\nA,11/13/2024\n")
    with pytest.raises(RetrievalError, match=r"not ISO 8601 times, e.g. '01/12/2024'"):
        repo.store.get_offline_features(["fs1:1:f1"], str(path), "label_time").to_pandas()
    path.write_text("acct,label_time\nA,2024-01-02 12:00:00\nA,2024-01-02T13:00:00+01:00\n")
    result = repo.store.get_offline_features(["fs1:1:f1"], str(path), "label_time").to_pandas()
    assert result["f1"].tolist() == [2.0, 2.0]


# -- 4. observation columns come back as given -----------------------------------------------------------

def _pandas_observations() -> pd.DataFrame:
    paris = pd.Series(pd.to_datetime(["2024-01-02 00:30", "2024-01-02 02:00", "2024-01-03 00:00"])
                      ).dt.tz_localize("Europe/Paris")
    return pd.DataFrame({
        "acct": ["A", "A", "7"],
        "label_time": paris,                                              # the observation time, with a zone
        "is_fraud": np.array([True, False, True]),
        "amount": np.array([1, 2, 3], dtype="int64"),
        "small": np.array([1, 2, 3], dtype="int16"),
        "maybe": pd.array([1, None, 3], dtype="Int64"),
        "segment": pd.Categorical(["x", "y", "x"], categories=["y", "x"], ordered=True),
        "note": pd.Series(["a", None, "c"], dtype=object),
        "local": pd.Series(pd.to_datetime(["2024-01-01 08:00:00.123456789"] * 3)).dt.tz_localize("US/Eastern"),
        "score": [0.5, math.nan, 1.5],
    })


EXPECTED_F1 = [1.0, 2.0, 7.0]   # 00:30 Paris is 23:30 UTC on Jan 1; 02:00 Paris is 01:00 UTC on Jan 2


def test_pandas_observation_columns_come_back_unchanged(repo: Repo) -> None:
    observations = _pandas_observations()
    result = repo.store.get_offline_features(["fs1:1:f1"], observations, "label_time")
    frame = result.to_pandas()
    assert list(frame.columns) == [*observations.columns, "f1"] == result.columns
    pd.testing.assert_frame_equal(frame[list(observations.columns)], observations, check_exact=True)
    assert values(frame, "f1") == EXPECTED_F1
    assert len(result) == 3


def test_polars_observation_columns_come_back_unchanged(repo: Repo) -> None:
    observations = pl.from_pandas(_pandas_observations().drop(columns=["note", "segment"])).with_columns(
        pl.Series("note", ["a", None, "c"], dtype=pl.String),
        pl.Series("segment", ["x", "y", "x"], dtype=pl.Categorical))
    result = repo.store.get_offline_features(["fs1:1:f1"], observations, "label_time").to_polars()
    assert result.columns == [*observations.columns, "f1"]
    polars.testing.assert_frame_equal(result.select(observations.columns), observations, check_exact=True)
    assert result["f1"].to_list() == EXPECTED_F1


def test_arrow_observation_columns_come_back_unchanged(repo: Repo, tmp_path: Path) -> None:
    observations = pa.table({
        "acct": pa.array(["A", "A", "7"]),
        "label_time": pa.array([1704151800, 1704157200, 1704236400], pa.timestamp("s", tz="Europe/Paris")),
        "is_fraud": pa.array([True, False, None]),
        "amount": pa.array([1, 2, 3], pa.uint32()),
        "segment": pa.array(["x", "y", "x"]).dictionary_encode(),
        "local": pa.array([1, 2, 3], pa.timestamp("ns", tz="US/Eastern")),
        "day": pa.array([19723, 19724, 19725], pa.date32()),
    })
    result = repo.store.get_offline_features(["fs1:1:f1"], observations, "label_time")
    table = result.to_arrow()
    assert table.column_names == [*observations.column_names, "f1"]
    assert table.select(observations.column_names).equals(observations), table.schema
    assert table["f1"].to_pylist() == EXPECTED_F1
    written = result.to_parquet(tmp_path / "out" / "train.parquet")
    assert pa.parquet.read_table(written).select(["acct", "f1"]).equals(table.select(["acct", "f1"]))


# -- 5. errors never show internal names ------------------------------------------------------------------

def test_a_transformation_sql_error_shows_no_internal_names(repo: Repo) -> None:
    observations = pd.DataFrame({"acct": ["A"], "ts": at("2024-01-02")})
    with pytest.raises(TransformationError) as raised:
        repo.store.get_offline_features(["sql_typo:1:f1"], observations, "ts")
    message = str(raised.value)
    assert "sql_typo:1" in message and "f1_typo" in message and "Candidate bindings" in message, message
    assert "__gm" not in message and "LINE" not in message and "\n" not in message


def test_an_unreadable_observations_file_is_a_retrieval_error(repo: Repo, tmp_path: Path) -> None:
    path = tmp_path / "observations.parquet"
    path.write_text("not parquet", encoding="utf-8")
    with pytest.raises(RetrievalError) as raised:
        repo.store.get_offline_features(["fs1:1:f1"], str(path), "ts")
    message = str(raised.value)
    assert f"observations file {path}" in message and "parquet" in message, message
    assert "__gm" not in message and "\n" not in message


def test_a_source_file_removed_before_the_query_runs_is_a_retrieval_error(build_store: BuildStore) -> None:
    repo = build_store(fs1(table("acct ts f1", ("A", "2024-01-01", 1.0))))
    observations = pd.DataFrame({"acct": ["A"], "ts": at("2024-01-02")})
    result = repo.store.get_offline_features(["fs1:1:f1"], observations, "ts")
    for file in (repo.root / "data").rglob("*.parquet"):
        file.unlink()
    with pytest.raises(RetrievalError) as raised:
        result.to_pandas()
    message = str(raised.value)
    assert message.startswith("point-in-time retrieval of fs1:1 failed: "), message
    assert "__gm" not in message and "\n" not in message


def test_reserved_observation_columns_are_refused_not_dropped(repo: Repo) -> None:
    observations = pd.DataFrame({"acct": ["A"], "ts": at("2024-01-02"), "__gm_row": [5]})
    with pytest.raises(GristmillError, match="__gm_row use the reserved prefix"):
        repo.store.get_offline_features(["fs1:1:f1"], observations, "ts")


def test_a_dataframe_with_a_mixed_column_is_named_as_such(repo: Repo) -> None:
    observations = pd.DataFrame({"acct": ["A", "B"], "ts": at("2024-01-02", "2024-01-02"),
                                 "mixed": pd.Series([1, "x"], dtype=object)})
    with pytest.raises(RetrievalError) as raised:
        repo.store.get_offline_features(["fs1:1:f1"], observations, "ts")
    message = str(raised.value)
    assert "the DataFrame cannot be read as a table" in message and "'x'" in message, message
    with pytest.raises(RetrievalError, match=r"expected a pandas/Polars DataFrame, .* got list"):
        repo.store.get_offline_features(["fs1:1:f1"], [1, 2], "ts")


def test_results_hand_over_arrow_batches_equal_to_the_whole_table(build_store: BuildStore, tmp_path: Path) -> None:
    """``to_batches`` streams the same rows as ``to_arrow`` (observations from memory and from a file)."""
    repo = build_store(fs1(table("acct ts f1", *[("A", f"2024-01-0{d}", float(d)) for d in range(1, 8)])))
    observations = table("acct ts", *[("A", f"2024-01-0{d} 12:00") for d in range(1, 8)])
    observations.to_parquet(tmp_path / "obs.parquet")
    for given in (observations, tmp_path / "obs.parquet"):
        result = repo.store.get_offline_features(["fs1:1:f1"], given, "ts")
        batches = list(result.to_batches(batch_rows=3))
        assert [b.num_rows for b in batches if b.num_rows] and max(b.num_rows for b in batches) <= 3
        assert pa.Table.from_batches(batches).to_pylist() == result.to_arrow().to_pylist()
