"""``gristmill retrieve`` (and ``online get``) on bad input: malformed feature references, observation keys
of another type, times that are not ISO 8601 and unreadable observation files each give one ``error:`` line
and exit code 2, never a traceback or an internal name."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import pandas as pd
import pytest
from cli_support import Result, assert_ok, assert_user_error, run_concurrently

import gristmill as gm
from gristmill.demo import generate_data, write_feature_repo


@dataclass(frozen=True)
class Setup:
    root: Path
    results: dict[str, Result]


@pytest.fixture(scope="module")
def setup(tmp_path_factory: pytest.TempPathFactory) -> Setup:
    root = tmp_path_factory.mktemp("retrieve_errors")
    generate_data(root / "data", rows=2000, accounts=50)
    write_feature_repo(root / "repo")
    store = gm.FeatureStore.init(root / "store")
    assert store.apply(root / "repo").ok
    store.close()
    observations = pd.read_parquet(root / "data" / "observations.parquet").head(20)
    observations.assign(account_id=range(20)).to_parquet(root / "int_keys.parquet")
    observations.assign(label_time="05/01/2025 10:00").to_csv(root / "us_times.csv", index=False)
    observations.to_csv(root / "good.csv", index=False)
    (root / "not_parquet.parquet").write_text("not parquet", encoding="utf-8")

    def retrieve(observed: Path, features: str, name: str) -> list[str | Path]:
        return ["retrieve", "--observations", observed, "--timestamp-column", "label_time", "--features", features,
                "--output", root / name / "train.parquet", "--store", root / "store"]

    good = root / "data" / "observations.parquet"
    return Setup(root, run_concurrently({
        "two parts": retrieve(good, "transactions:amount_7d_sum", "two"),
        "four parts": retrieve(good, "transactions:1:amount_7d_sum:x", "four"),
        "online two parts": ["online", "get", "--features", "transactions:amount_7d_sum", "--key", "account_id=A1",
                             "--store", root / "store"],
        "integer keys": retrieve(root / "int_keys.parquet", "transactions:1:amount_7d_sum", "int"),
        "us times": retrieve(root / "us_times.csv", "transactions:1:amount_7d_sum", "us"),
        "not parquet": retrieve(root / "not_parquet.parquet", "transactions:1:amount_7d_sum", "bad"),
        "csv": retrieve(root / "good.csv", "transactions:1:amount_7d_sum", "csv"),
    }))


def test_a_two_part_reference_is_one_error_line(setup: Setup) -> None:
    assert_user_error(setup.results["two parts"], "'transactions:amount_7d_sum'", "'feature_set:version:feature'",
                      "'transactions:1:amount_7d_sum'")


def test_a_four_part_reference_is_one_error_line(setup: Setup) -> None:
    assert_user_error(setup.results["four parts"], "'transactions:1:amount_7d_sum:x'",
                      "'feature_set:version:feature'")


def test_online_get_parses_references_the_same_way(setup: Setup) -> None:
    assert_user_error(setup.results["online two parts"], "'transactions:amount_7d_sum'",
                      "'feature_set:version:feature'")


def test_integer_keys_for_a_string_index_column_are_one_error_line(setup: Setup) -> None:
    assert_user_error(setup.results["integer keys"], "observations column account_id is BIGINT",
                      "transactions:1 declares it string", "astype('string')")


def test_times_that_are_not_iso_are_one_error_line(setup: Setup) -> None:
    result = setup.results["us times"]
    assert_user_error(result, "timestamp_column 'label_time'", "'05/01/2025 10:00'", "YYYY-MM-DD")
    assert "__gm" not in result.stderr


def test_an_unreadable_observations_file_is_one_error_line(setup: Setup) -> None:
    result = setup.results["not parquet"]
    assert_user_error(result, "not_parquet.parquet", "cannot be read as parquet")
    assert "__gm" not in result.stderr


def test_csv_observations_with_iso_times_still_work(setup: Setup) -> None:
    assert_ok(setup.results["csv"])
    written = pd.read_parquet(setup.root / "csv" / "train.parquet")
    assert list(written.columns) == ["account_id", "label_time", "is_fraud", "amount_7d_sum"]
    assert len(written) == 20
