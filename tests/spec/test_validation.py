"""Spec files (SPEC §2): every validation rule fails with a ``SpecError`` that names the file, the field and
the fix; Azure ML YAML loads unchanged; files round-trip; registered versions are immutable through
``FeatureStore.apply``."""

from __future__ import annotations

import copy
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import yaml

import gristmill as gm
from gristmill.errors import SpecError
from gristmill.spec import Aggregation, SourceType, Stage

Spec = dict[str, Any]

BASE_SPEC: Spec = {
    "source": {"type": "parquet", "path": "../data/*.parquet", "timestamp_column": {"name": "ts"},
               "source_delay": {"days": 0, "hours": 0, "minutes": 20}},
    "index_columns": [{"name": "acct", "type": "string"}],
    "source_lookback": {"days": 7, "hours": 0, "minutes": 0},
    "temporal_join_lookback": {"days": 1, "hours": 0, "minutes": 0},
    "feature_transformation": {"transformation_expressions": [
        {"transformation_type": "window", "feature_name": "amount_7d_sum", "source_column": "amount",
         "aggregation": "sum", "window": {"days": 7}},
        {"transformation_type": "window", "feature_name": "txn_7d_count", "aggregation": "count",
         "window": {"days": 7}},
    ]},
    "features": [{"name": "amount_7d_sum", "type": "double", "description": "spend", "tags": {"pii": "false"}},
                 {"name": "txn_7d_count", "type": "long"}],
}

ENTITY_YAML = """\
name: account
version: "1"
description: A customer account.
index_columns:
  - {name: acct, type: string}
"""

FEATURE_SET_YAML = """\
name: transactions
version: "1"
description: Rolling spend.
specification: {path: ./spec}
entities: [account:1]
stage: Development
tags: {team: risk}
materialization_settings:
  offline_enabled: true
  online_enabled: false
  schedule: {type: recurrence, frequency: day, interval: 1, start_time: "2024-01-01T04:00:00", time_zone: UTC}
  notification: {email_on: [JobFailed, JobCompleted], emails: [ml@example.com]}
"""


def write_spec(folder: Path, spec: Spec | str) -> Path:
    """Write ``FeatureSetSpec.yaml`` into ``folder`` (a dict is dumped, a string written as is)."""
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / "FeatureSetSpec.yaml"
    path.write_text(spec if isinstance(spec, str) else yaml.safe_dump(spec, sort_keys=False), encoding="utf-8")
    return path


def expressions(spec: Spec) -> list[dict[str, Any]]:
    return spec["feature_transformation"]["transformation_expressions"]


def _count_with_column(spec: Spec) -> None:
    expressions(spec)[1]["source_column"] = "amount"


def _sum_without_column(spec: Spec) -> None:
    del expressions(spec)[0]["source_column"]


def _zero_window(spec: Spec) -> None:
    expressions(spec)[0]["window"] = {"days": 0, "hours": 0, "minutes": 0}


def _feature_named_like_column(spec: Spec) -> None:
    expressions(spec)[0]["source_column"] = "amount_7d_sum"


def _int_type(spec: Spec) -> None:
    spec["features"][1]["type"] = "int"


def _unknown_top_level_field(spec: Spec) -> None:
    spec["source_lookbak"] = {"days": 7}


def _unknown_nested_field(spec: Spec) -> None:
    spec["features"][0]["descripton"] = "typo"


def _missing_timestamp(spec: Spec) -> None:
    del spec["source"]["timestamp_column"]


def _two_transformations(spec: Spec) -> None:
    spec["feature_transformation"]["transformation_sql"] = "SELECT acct, ts, 1 AS amount_7d_sum FROM source"


def _undeclared_dsl_feature(spec: Spec) -> None:
    spec["features"] = spec["features"][:1]


def _declared_not_produced(spec: Spec) -> None:
    spec["features"].append({"name": "amount_30d_max", "type": "double"})


def _duplicate_feature(spec: Spec) -> None:
    del spec["feature_transformation"]
    spec["features"].append({"name": "amount_7d_sum", "type": "float"})


# (mutation of BASE_SPEC, the field the message must name, the fix it must give)
SPEC_RULES: list[Any] = [
    pytest.param(_count_with_column, "transformation_expressions.1", "remove source_column", id="count-with-column"),
    pytest.param(_sum_without_column, "transformation_expressions.0", "needs a source_column; add",
                 id="sum-without-column"),
    pytest.param(_zero_window, "window", "window: {days: 7}", id="window-0"),
    pytest.param(_feature_named_like_column, "source_column", "rename the feature", id="feature-is-source-column"),
    pytest.param(_int_type, "features.1.type", "integer", id="type-int"),
    pytest.param(_unknown_top_level_field, "source_lookbak", "remove it or check its spelling",
                 id="unknown-field"),
    pytest.param(_unknown_nested_field, "features.0.descripton", "remove it or check its spelling",
                 id="unknown-nested-field"),
    pytest.param(_missing_timestamp, "timestamp_column", "timestamp_column: {name: ts}", id="missing-timestamp"),
    pytest.param(_two_transformations, "feature_transformation", "exactly one of", id="two-transformations"),
    pytest.param(_undeclared_dsl_feature, "txn_7d_count", "not declared under features; declare it",
                 id="dsl-feature-not-declared"),
    pytest.param(_declared_not_produced, "amount_30d_max", "add an expression or remove the feature",
                 id="declared-feature-not-produced"),
    pytest.param(_duplicate_feature, "amount_7d_sum", "each name once", id="duplicate-feature-names"),
]


def test_base_spec_is_valid(tmp_path: Path) -> None:
    spec = gm.FeatureSetSpec.load(write_spec(tmp_path / "spec", BASE_SPEC).parent)
    assert spec.feature_names == ["amount_7d_sum", "txn_7d_count"]
    assert spec.source_delay.total_seconds() == 20 * 60


@pytest.mark.parametrize(("mutate", "field", "fix"), SPEC_RULES)
def test_invalid_spec_names_file_field_and_fix(tmp_path: Path, mutate: Callable[[Spec], None], field: str,
                                               fix: str) -> None:
    spec = copy.deepcopy(BASE_SPEC)
    mutate(spec)
    path = write_spec(tmp_path / "spec", spec)
    with pytest.raises(SpecError) as caught:
        gm.FeatureSetSpec.load(path.parent)
    message = str(caught.value)
    assert str(path) in message
    assert field in message
    assert fix in message


def test_type_int_hint_names_integer_and_long(tmp_path: Path) -> None:
    spec = copy.deepcopy(BASE_SPEC)
    _int_type(spec)
    with pytest.raises(SpecError, match=r"'int'.*integer.*long"):
        gm.FeatureSetSpec.load(write_spec(tmp_path / "spec", spec).parent)


def test_invalid_yaml_syntax_names_the_line(tmp_path: Path) -> None:
    text = ("source:\n"
            "  type: parquet\n"
            "  path: data.parquet\n"
            "  timestamp_column: {name: ts\n"
            "index_columns: [{name: acct, type: string}]\n")
    path = write_spec(tmp_path / "spec", text)
    with pytest.raises(SpecError) as caught:
        gm.FeatureSetSpec.load(path.parent)
    message = str(caught.value)
    assert str(path) in message
    assert "not valid YAML" in message
    assert "line 5" in message


@pytest.mark.parametrize("reference", ["account", "account:1:2", "account:", ":1"])
def test_bad_entity_reference_format(tmp_path: Path, reference: str) -> None:
    write_spec(tmp_path / "spec", BASE_SPEC)
    path = tmp_path / "FeatureSet.yaml"
    path.write_text(FEATURE_SET_YAML.replace("entities: [account:1]", f"entities: ['{reference}']"),
                    encoding="utf-8")
    with pytest.raises(SpecError) as caught:
        gm.FeatureSet.load(path)
    message = str(caught.value)
    assert str(path) in message
    assert "entities.0" in message
    assert "name:version, e.g. account:1" in message


def test_entity_without_index_columns(tmp_path: Path) -> None:
    path = tmp_path / "account.yaml"
    path.write_text("name: account\nversion: '1'\n", encoding="utf-8")
    with pytest.raises(SpecError) as caught:
        gm.Entity.load(path)
    assert str(path) in str(caught.value)
    assert "index_columns" in str(caught.value)
    assert "index_columns: [{name: account_id, type: string}]" in str(caught.value)


# -- Azure compatibility ----------------------------------------------------------------------------------

AZURE_SPEC = """\
$schema: http://azureml/sdk-2-0/FeatureSetSpec.json

source:
  type: Parquet
  path: abfss://data@storage.dfs.core.windows.net/transactions/*.parquet
  timestamp_column:
    name: timestamp
  source_delay:
    days: 0
    hours: 0
    minutes: 20
feature_transformation_code:
  path: ./transformation_code
  transformer_class: transaction_transform.TransactionFeatureTransformer
features:
  - name: transaction_amount_7d_sum
    type: double
  - name: transaction_7d_count
    type: long
index_columns:
  - name: accountID
    type: string
source_lookback:
  days: 7
  hours: 0
  minutes: 0
temporal_join_lookback:
  days: 1
  hours: 0
  minutes: 0
"""


def test_azure_spec_loads_unchanged(tmp_path: Path) -> None:
    spec = gm.FeatureSetSpec.load(write_spec(tmp_path / "spec", AZURE_SPEC).parent)
    assert spec.source.type == SourceType.PARQUET
    transformation = spec.feature_transformation
    assert transformation is not None and transformation.transformation_code is not None
    assert transformation.transformation_code.transformer_class == "transaction_transform.TransactionFeatureTransformer"
    assert spec.index_column_names == ["accountID"]
    assert spec.temporal_join_lookback is not None and spec.temporal_join_lookback.days == 1


@pytest.mark.parametrize(("written", "expected"), [
    ("deltaTable", SourceType.DELTA), ("DELTA", SourceType.DELTA), ("Parquet", SourceType.PARQUET),
    ("CSV", SourceType.CSV),
])
def test_source_type_is_case_insensitive(tmp_path: Path, written: str, expected: SourceType) -> None:
    spec = copy.deepcopy(BASE_SPEC)
    spec["source"]["type"] = written
    assert gm.FeatureSetSpec.load(write_spec(tmp_path / "spec", spec).parent).source.type == expected


@pytest.mark.parametrize(("written", "expected"), [("Sum", Aggregation.SUM), ("COUNT", Aggregation.COUNT),
                                                   ("Latest", Aggregation.LATEST)])
def test_aggregation_is_case_insensitive(tmp_path: Path, written: str, expected: Aggregation) -> None:
    spec = copy.deepcopy(BASE_SPEC)
    spec["feature_transformation"]["transformation_expressions"] = [
        {"transformation_type": "Window", "feature_name": "amount_7d_sum", "aggregation": written,
         "window": {"days": 7}, **({} if expected == Aggregation.COUNT else {"source_column": "amount"})}]
    spec["features"] = spec["features"][:1]
    loaded = gm.FeatureSetSpec.load(write_spec(tmp_path / "spec", spec).parent)
    assert loaded.window_expressions is not None
    assert loaded.window_expressions[0].aggregation == expected


@pytest.mark.parametrize(("written", "expected"), [("Development", Stage.DEVELOPMENT),
                                                   ("PRODUCTION", Stage.PRODUCTION), ("archived", Stage.ARCHIVED)])
def test_stage_is_case_insensitive(tmp_path: Path, written: str, expected: Stage) -> None:
    write_spec(tmp_path / "spec", BASE_SPEC)
    asset = tmp_path / "FeatureSet.yaml"
    asset.write_text(FEATURE_SET_YAML.replace("stage: Development", f"stage: {written}"), encoding="utf-8")
    entity = tmp_path / "account.yaml"
    entity.write_text(ENTITY_YAML + f"stage: {written}\n", encoding="utf-8")
    assert gm.FeatureSet.load(asset).stage == expected
    assert gm.Entity.load(entity).stage == expected


def test_azureml_entity_reference_prefix(tmp_path: Path) -> None:
    write_spec(tmp_path / "spec", BASE_SPEC)
    path = tmp_path / "FeatureSet.yaml"
    path.write_text(FEATURE_SET_YAML.replace("entities: [account:1]", "entities: ['azureml:account:1']"),
                    encoding="utf-8")
    assert gm.FeatureSet.load(path).entities == ["account:1"]


@pytest.mark.parametrize("header", ["$schema: http://azureml/sdk-2-0/FeatureSet.json\n", "schema_version: 1\n",
                                    "$schema: http://azureml/sdk-2-0/FeatureSet.json\nschema_version: '2'\n"])
def test_schema_lines_are_ignored_in_every_file(tmp_path: Path, header: str) -> None:
    write_spec(tmp_path / "spec", header + yaml.safe_dump(BASE_SPEC, sort_keys=False))
    asset = tmp_path / "FeatureSet.yaml"
    asset.write_text(header + FEATURE_SET_YAML, encoding="utf-8")
    entity = tmp_path / "account.yaml"
    entity.write_text(header + ENTITY_YAML, encoding="utf-8")
    retrieval = tmp_path / "feature_retrieval_spec.yaml"
    retrieval.write_text(header + "serialization_version: 2\nfeature_stores:\n  - features:\n"
                         "      - {feature_set: 'transactions:1', feature_name: amount_7d_sum}\n", encoding="utf-8")
    feature_set = gm.FeatureSet.load(asset)
    assert feature_set.spec.feature_names == ["amount_7d_sum", "txn_7d_count"]
    assert gm.Entity.load(entity).index_column_names == ["acct"]
    assert [f.ref for f in gm.FeatureRetrievalSpec.load(retrieval).features] == ["transactions:1:amount_7d_sum"]


def test_featurestores_alias_in_retrieval_spec(tmp_path: Path) -> None:
    path = tmp_path / "feature_retrieval_spec.yaml"
    path.write_text(
        "serialization_version: 2\n"
        "featurestores:\n"
        "  - uri: azureml://subscriptions/s/resourcegroups/r/workspaces/fs\n"
        "    features:\n"
        "      - {feature_set: 'transactions:1', feature_name: amount_7d_sum}\n"
        "      - {feature_set: 'transactions:2', feature_name: txn_7d_count, output_name: count_v2}\n",
        encoding="utf-8")
    spec = gm.FeatureRetrievalSpec.load(path)
    assert [(f.ref, f.output_name) for f in spec.features] == [("transactions:1:amount_7d_sum", None),
                                                              ("transactions:2:txn_7d_count", "count_v2")]
    assert spec.feature_stores[0].uri == "azureml://subscriptions/s/resourcegroups/r/workspaces/fs"


# -- round trips --------------------------------------------------------------------------------------------

def test_spec_round_trip(tmp_path: Path) -> None:
    folder = write_spec(tmp_path / "spec", BASE_SPEC).parent
    original = gm.FeatureSetSpec.load(folder)
    assert gm.FeatureSetSpec.from_dict(original.to_dict(), folder=folder) == original
    original.dump(tmp_path / "copy")
    assert gm.FeatureSetSpec.load(tmp_path / "copy").to_dict() == original.to_dict()
    original.dump(folder)   # overwrite in place: the reloaded object is equal, folder included
    assert gm.FeatureSetSpec.load(folder) == original


def test_azure_spec_round_trip(tmp_path: Path) -> None:
    folder = write_spec(tmp_path / "spec", AZURE_SPEC).parent
    original = gm.FeatureSetSpec.load(folder)
    original.dump(folder)
    assert gm.FeatureSetSpec.load(folder) == original


def test_entity_round_trip(tmp_path: Path) -> None:
    path = tmp_path / "account.yaml"
    path.write_text(ENTITY_YAML + "tags: {pii: false}\nstage: Production\n", encoding="utf-8")
    original = gm.Entity.load(path)
    original.dump(tmp_path / "copy.yaml")
    assert gm.Entity.load(tmp_path / "copy.yaml") == original


def test_feature_set_round_trip(tmp_path: Path) -> None:
    write_spec(tmp_path / "spec", BASE_SPEC)
    path = tmp_path / "FeatureSet.yaml"
    path.write_text(FEATURE_SET_YAML, encoding="utf-8")
    original = gm.FeatureSet.load(path)
    original.dump(path)
    reloaded = gm.FeatureSet.load(path)
    assert reloaded == original
    assert reloaded.spec == original.spec


def test_retrieval_spec_round_trip(tmp_path: Path) -> None:
    original = gm.FeatureRetrievalSpec.from_features(["transactions:1:amount_7d_sum", "accounts:2:age"])
    path = original.dump(tmp_path / "feature_retrieval_spec.yaml")
    assert gm.FeatureRetrievalSpec.load(path) == original
    assert gm.FeatureRetrievalSpec.load(tmp_path) == original


# -- registry immutability through apply -----------------------------------------------------------------------

def _feature_set_item(plan: gm.ApplyPlan) -> Any:
    (item,) = [i for i in plan.items if i.kind == "feature set"]
    return item


def test_apply_is_idempotent_and_registered_versions_are_immutable(tmp_path: Path) -> None:
    repo = tmp_path / "repo"
    (repo / "entities").mkdir(parents=True)
    (repo / "entities" / "account.yaml").write_text(ENTITY_YAML, encoding="utf-8")
    spec_folder = repo / "transactions" / "spec"
    write_spec(spec_folder, BASE_SPEC)
    asset = repo / "transactions" / "FeatureSet.yaml"
    asset.write_text(FEATURE_SET_YAML, encoding="utf-8")
    with gm.FeatureStore.init(tmp_path / "store") as store:
        first = store.apply(repo, check_source=False)   # the spec has no data: only the registry rules are tested
        assert [(i.kind, i.ref, i.action) for i in first.items] == [("entity", "account:1", "created"),
                                                                    ("feature set", "transactions:1", "created")]
        again = store.apply(repo, check_source=False)
        assert {i.action for i in again.items} == {"unchanged"}

        asset.write_text(FEATURE_SET_YAML.replace("Rolling spend.", "Rolling spend per account."), encoding="utf-8")
        described = store.apply(repo, check_source=False)
        assert _feature_set_item(described).action == "updated"
        assert store.get_feature_set("transactions", 1).description == "Rolling spend per account."

        changed = copy.deepcopy(BASE_SPEC)
        changed["features"][1]["type"] = "integer"
        write_spec(spec_folder, changed)
        refused = store.apply(repo, check_source=False)
        item = _feature_set_item(refused)
        assert item.action == "refused"
        assert "create a new version" in item.detail
        assert not refused.ok
        registered = store.get_feature_set("transactions", 1).spec
        assert registered.feature("txn_7d_count") is not None
        assert registered.feature("txn_7d_count").type == gm.FeatureType.LONG   # the registered version is kept
