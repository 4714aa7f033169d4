"""The ``gristmill`` command line, run as a real subprocess of the installed console script against
stores in temporary folders (sample data from ``gristmill.demo``).

Each subprocess costs about a second of start-up, so the commands that only read the shared store run
concurrently in one module fixture (``ran``); every test checks only its own command's result."""

from __future__ import annotations

import json
import re
import shutil
from dataclasses import dataclass
from pathlib import Path

import pandas as pd
import pyarrow.parquet as pq
import pytest
import yaml
from cli_support import Result, assert_ok, assert_user_error, describe, gristmill, run_concurrently

import gristmill as gm
from gristmill.demo import generate_data, write_feature_repo

TRANSACTION_FEATURES = ["amount_7d_sum", "amount_7d_avg", "txn_7d_count", "amount_30d_sum", "amount_30d_max",
                        "txn_30d_count"]
ACCOUNT_FEATURES = ["account_age_days", "credit_limit", "is_premium"]
# Interleaved across feature sets on purpose: output columns must follow the request order.
REQUESTED = ["accounts:1:credit_limit", "transactions:1:amount_7d_sum", "accounts:1:is_premium",
             "transactions:1:txn_7d_count"]
















def assert_apply_failed(result: Result) -> None:
    """``apply`` with a refused or invalid file: exit code 1 and no traceback."""
    assert result.returncode == 1, describe(result)
    assert "Traceback" not in result.stdout + result.stderr


# -- fixtures -----------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Workspace:
    """Sample data, the YAML repo and a store with the repo applied (shared by this module's tests)."""

    root: Path
    init: Result
    first_apply: Result

    @property
    def data(self) -> Path:
        return self.root / "data"

    @property
    def repo(self) -> Path:
        return self.root / "repo"

    @property
    def store(self) -> Path:
        return self.root / "store"

    @property
    def observations(self) -> Path:
        return self.data / "observations.parquet"

    @property
    def training(self) -> Path:
        """Where ``retrieve --features`` writes (its spec copy lands next to it)."""
        return self.root / "out" / "train.parquet"


@pytest.fixture(scope="module")
def workspace(tmp_path_factory: pytest.TempPathFactory) -> Workspace:
    root = tmp_path_factory.mktemp("cli")
    generate_data(root / "data", rows=3000)
    write_feature_repo(root / "repo")
    init = gristmill("init", root / "store", "--name", "cli-test")
    first_apply = gristmill("apply", root / "repo", "--store", root / "store")
    return Workspace(root, init, first_apply)


@pytest.fixture(scope="module")
def ran(workspace: Workspace) -> dict[str, Result]:
    """The result of every command that leaves the shared store as it is, by name."""
    root, store, observations = workspace.root, workspace.store, workspace.observations
    broken = root / "broken_repo" / "entities" / "customer.yaml"
    broken.parent.mkdir(parents=True)
    broken.write_text('name: customer\nversion: "1"\nindex_columns: [{name: customer_id, type: string\n')
    (root / "not_a_store").mkdir()
    retrieve = ["retrieve", "--observations", observations, "--timestamp-column", "label_time", "--store", store]
    return run_concurrently({
        "apply again": ["apply", workspace.repo, "--store", store],
        "list": ["list", "--store", store],
        "list featuresets json": ["list", "featuresets", "--json", "--store", store],
        "list entities json": ["list", "entities", "--json", "--store", store],
        "list features json": ["list", "features", "--json", "--store", store],
        "show": ["show", "transactions:1", "--store", store],
        "search json": ["search", "spend", "--json", "--store", store],
        "preview": ["preview", "transactions:1", "--start", "2025-03-01", "--end", "2025-03-02", "--limit", "3",
                    "--output", root / "preview" / "rows.parquet", "--store", store],
        "retrieve features": [*retrieve, "--features", ",".join(REQUESTED), "--output", workspace.training],
        "demo": ["demo", root / "demo", "--rows", "3000"],
        "preview unknown feature set": ["preview", "nosuchset:1", "--start", "2025-03-01", "--end", "2025-03-02",
                                        "--store", store],
        "retrieve unknown feature": [*retrieve, "--features", "transactions:1:no_such_feature",
                                     "--output", root / "unknown_feature" / "train.parquet"],
        "retrieve missing observations": ["retrieve", "--observations", root / "absent.parquet",
                                          "--timestamp-column", "label_time", "--store", store,
                                          "--features", "transactions:1:amount_7d_sum",
                                          "--output", root / "missing_observations" / "train.parquet"],
        "retrieve wrong timestamp column": ["retrieve", "--observations", observations, "--timestamp-column",
                                            "event_time", "--store", store, "--features",
                                            "transactions:1:amount_7d_sum",
                                            "--output", root / "wrong_timestamp" / "train.parquet"],
        "not a store": ["list", "--store", root / "not_a_store"],
        "apply invalid yaml": ["apply", root / "broken_repo", "--store", store],
    })


# -- round trips ------------------------------------------------------------------------------------
def test_init_creates_the_store(workspace: Workspace) -> None:
    assert_ok(workspace.init)
    assert "cli-test" in workspace.init.stdout
    config = yaml.safe_load((workspace.store / "featurestore.yaml").read_text())
    assert config["name"] == "cli-test"


def test_apply_creates_then_is_unchanged(workspace: Workspace, ran: dict[str, Result]) -> None:
    refs = ("entity account:1", "feature set accounts:1", "feature set transactions:1")
    first = workspace.first_apply
    assert_ok(first)
    for ref in refs:
        assert re.search(rf"created\s+{ref}", first.stdout), first.stdout
    assert first.stdout.rstrip().endswith("3 created")

    again = ran["apply again"]
    assert_ok(again)
    for ref in refs:
        assert re.search(rf"unchanged\s+{ref}", again.stdout), again.stdout
    assert again.stdout.rstrip().endswith("3 unchanged")
    assert "created" not in again.stdout


def test_list_feature_sets_table(ran: dict[str, Result]) -> None:
    result = ran["list"]
    assert_ok(result)
    assert "transactions" in result.stdout
    assert "accounts" in result.stdout
    assert "account:1" in result.stdout


def test_list_feature_sets_json(ran: dict[str, Result]) -> None:
    result = ran["list featuresets json"]
    assert_ok(result)
    rows = json.loads(result.stdout)
    assert [(r["name"], r["version"], r["stage"], r["entities"]) for r in rows] == [
        ("accounts", "1", "development", "account:1"), ("transactions", "1", "development", "account:1")]


def test_list_entities_json(ran: dict[str, Result]) -> None:
    result = ran["list entities json"]
    assert_ok(result)
    assert json.loads(result.stdout) == [{"name": "account", "version": "1", "index_columns": "account_id: string",
                                          "description": "A customer account."}]


def test_list_features_json(ran: dict[str, Result]) -> None:
    result = ran["list features json"]
    assert_ok(result)
    rows = json.loads(result.stdout)
    expected = [f"accounts:1:{f}" for f in ACCOUNT_FEATURES] + [f"transactions:1:{f}" for f in TRANSACTION_FEATURES]
    assert [r["feature"] for r in rows] == expected
    types = {r["feature"]: r["type"] for r in rows}
    assert types["transactions:1:txn_7d_count"] == "long"
    assert types["accounts:1:account_age_days"] == "integer"
    assert types["accounts:1:is_premium"] == "boolean"


def test_show_prints_the_feature_set_as_yaml(workspace: Workspace, ran: dict[str, Result]) -> None:
    result = ran["show"]
    assert_ok(result)
    shown = yaml.safe_load(result.stdout)
    assert shown["name"] == "transactions"
    assert shown["version"] == "1"
    assert shown["entities"] == ["account:1"]
    assert [f["name"] for f in shown["spec"]["features"]] == TRANSACTION_FEATURES
    # Long values (the absolute source path) must survive: the output is YAML, not text wrapped to 80 columns.
    source = Path(shown["spec"]["source"]["path"])
    assert source.parent.resolve() == (workspace.data / "transactions").resolve()
    assert source.name == "*.parquet"


def test_search_spend(ran: dict[str, Result]) -> None:
    result = ran["search json"]
    assert_ok(result)
    found = [r["feature"] for r in json.loads(result.stdout)]
    assert sorted(found) == sorted(f"transactions:1:{f}" for f in TRANSACTION_FEATURES)
    # Features whose own description says "spend" rank above those matched through their feature set.
    assert set(found[:2]) == {"transactions:1:amount_7d_sum", "transactions:1:amount_30d_sum"}


def test_preview_prints_the_row_count(workspace: Workspace, ran: dict[str, Result]) -> None:
    result = ran["preview"]
    assert_ok(result)
    match = re.search(r"^(\d+) rows, columns: account_id, timestamp, amount_7d_sum", result.stdout, re.MULTILINE)
    assert match, result.stdout
    source = pd.read_parquet(workspace.data / "transactions")
    in_window = source[(source["timestamp"] >= "2025-03-01") & (source["timestamp"] < "2025-03-02")]
    assert int(match.group(1)) == len(in_window) > 0
    frame = pq.read_table(workspace.root / "preview" / "rows.parquet")
    assert frame.num_rows == len(in_window)
    assert frame.column_names == ["account_id", "timestamp", *TRANSACTION_FEATURES]


def test_retrieve_with_features_writes_training_data_and_spec_copy(workspace: Workspace,
                                                                   ran: dict[str, Result]) -> None:
    result = ran["retrieve features"]
    assert_ok(result)
    observations = pd.read_parquet(workspace.observations)
    match = re.search(r"wrote (\d+) rows", result.stdout)
    assert match and int(match.group(1)) == len(observations), result.stdout

    training = pd.read_parquet(workspace.training)
    assert list(training.columns) == [*observations.columns, "credit_limit", "amount_7d_sum", "is_premium",
                                      "txn_7d_count"]
    assert len(training) == len(observations)
    pd.testing.assert_frame_equal(training[list(observations.columns)], observations)

    # credit_limit is the latest account snapshot at or before label_time (snapshots every 30 days,
    # temporal_join_lookback 31 days: every observation finds one).
    accounts = pd.read_parquet(workspace.data / "accounts.parquet").sort_values("timestamp")
    expected = pd.merge_asof(observations.reset_index().sort_values("label_time"), accounts,
                             left_on="label_time", right_on="timestamp", by="account_id").sort_values("index")
    assert training["credit_limit"].tolist() == expected["credit_limit"].tolist()

    copy = workspace.training.parent / "feature_retrieval_spec.yaml"
    assert copy.exists()
    assert [f.ref for f in gm.FeatureRetrievalSpec.load(copy).features] == REQUESTED


def test_retrieve_with_spec_gives_the_same_parquet(workspace: Workspace, ran: dict[str, Result]) -> None:
    assert_ok(ran["retrieve features"])
    output = workspace.root / "out_from_spec" / "train.parquet"
    result = gristmill("retrieve", "--spec", workspace.training.parent / "feature_retrieval_spec.yaml",
                       "--observations", workspace.observations, "--timestamp-column", "label_time",
                       "--output", output, "--store", workspace.store)
    assert_ok(result)
    pd.testing.assert_frame_equal(pd.read_parquet(output), pd.read_parquet(workspace.training))
    copy = gm.FeatureRetrievalSpec.load(output.parent / "feature_retrieval_spec.yaml")
    assert [f.ref for f in copy.features] == REQUESTED


def test_demo_writes_training_data(workspace: Workspace, ran: dict[str, Result]) -> None:
    result = ran["demo"]
    assert_ok(result)
    demo = workspace.root / "demo"
    training = pd.read_parquet(demo / "training_data.parquet")
    observations = pd.read_parquet(demo / "data" / "observations.parquet")
    assert len(training) == len(observations) > 0
    assert list(training.columns) == [*observations.columns, *TRANSACTION_FEATURES, *ACCOUNT_FEATURES]
    assert training["credit_limit"].notna().all()
    assert (demo / "store" / "featurestore.yaml").exists()


# -- user errors: exit code 2, one `error:` line on stderr, no traceback ----------------------------
def test_preview_of_unknown_feature_set(ran: dict[str, Result]) -> None:
    assert_user_error(ran["preview unknown feature set"], "nosuchset")


def test_retrieve_of_unknown_feature(workspace: Workspace, ran: dict[str, Result]) -> None:
    assert_user_error(ran["retrieve unknown feature"], "no_such_feature")
    assert not (workspace.root / "unknown_feature" / "train.parquet").exists()


def test_retrieve_with_missing_observations_file(workspace: Workspace, ran: dict[str, Result]) -> None:
    assert_user_error(ran["retrieve missing observations"], "absent.parquet")
    assert not (workspace.root / "missing_observations" / "train.parquet").exists()


def test_retrieve_with_wrong_timestamp_column(workspace: Workspace, ran: dict[str, Result]) -> None:
    assert_user_error(ran["retrieve wrong timestamp column"], "event_time", "label_time")
    assert not (workspace.root / "wrong_timestamp" / "train.parquet").exists()


def test_store_folder_without_featurestore_yaml(ran: dict[str, Result]) -> None:
    assert_user_error(ran["not a store"], "featurestore.yaml")


# -- apply: invalid files and immutable versions (exit code 1, the plan names what failed) ----------
def test_apply_of_invalid_yaml_names_the_file(ran: dict[str, Result]) -> None:
    result = ran["apply invalid yaml"]
    assert_apply_failed(result)
    assert re.search(r"invalid\s+entity customer:1", result.stdout), result.stdout
    assert "customer.yaml" in result.stdout
    assert "not valid YAML" in result.stdout


def test_apply_refuses_a_changed_feature_type(tmp_path: Path) -> None:
    generate_data(tmp_path / "data", rows=300, accounts=50)
    repo = write_feature_repo(tmp_path / "repo")
    with gm.FeatureStore.init(tmp_path / "store") as store:
        assert store.apply(repo).ok
    spec_file = repo / "featuresets" / "transactions" / "spec" / "FeatureSetSpec.yaml"
    text = spec_file.read_text()
    assert "{name: amount_7d_sum, type: double" in text
    spec_file.write_text(text.replace("{name: amount_7d_sum, type: double", "{name: amount_7d_sum, type: float"))

    result = gristmill("apply", repo, "--store", tmp_path / "store")
    assert_apply_failed(result)
    assert re.search(r"refused\s+feature set transactions:1", result.stdout), result.stdout
    assert re.search(r"unchanged\s+feature set accounts:1", result.stdout), result.stdout
    assert "create a new version" in result.stdout
    with gm.FeatureStore(tmp_path / "store") as store:
        kept = store.get_feature_set("transactions", "1").spec.feature("amount_7d_sum")
        assert kept is not None and kept.type == gm.FeatureType.DOUBLE


def test_apply_of_the_same_repo_copied_elsewhere_is_not_refused(workspace: Workspace,
                                                                ran: dict[str, Result]) -> None:
    # Runs after the concurrent commands (it may record the new spec folder). The copy sits next to the
    # original, so its relative source paths reach the same data files: only the spec folder moved,
    # which a registered version allows.
    copy = workspace.root / "repo_copy"
    shutil.copytree(workspace.repo, copy)
    result = gristmill("apply", copy, "--store", workspace.store)
    assert "refused" not in result.stdout, result.stdout
    assert_ok(result)
