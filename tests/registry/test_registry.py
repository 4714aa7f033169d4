"""The catalog registry on real databases: SQLite files and a PostgreSQL schema per test."""

from __future__ import annotations

from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa

from gristmill.errors import ConfigError, ImmutableError, NotFoundError, RegistryError, SpecError
from gristmill.registry import Registry, models, version_key
from gristmill.spec import Entity, FeatureSet, FeatureSetSpec

OpenRegistry = Callable[[], Registry]  # the open_registry fixture (tests/registry/conftest.py)


# -- builders ---------------------------------------------------------------------------------------
def account(version: int = 1, **fields: Any) -> Entity:
    return Entity.model_validate({"name": "account", "version": version,
                                  "index_columns": [{"name": "account_id", "type": "string"}]} | fields)


def spec_dict(**changes: Any) -> dict[str, Any]:
    spec = {
        "source": {"type": "parquet", "path": "../data/transactions/*.parquet",
                   "timestamp_column": {"name": "timestamp"}},
        "index_columns": [{"name": "account_id", "type": "string"}],
        "feature_transformation": {"transformation_expressions": [
            {"transformation_type": "window", "feature_name": "amount_7d_sum", "source_column": "amount",
             "aggregation": "sum", "window": {"days": 7}},
            {"transformation_type": "window", "feature_name": "txn_7d_count", "aggregation": "count",
             "window": {"days": 7}},
        ]},
        "features": [
            {"name": "amount_7d_sum", "type": "double", "description": "Total spent in the last week",
             "tags": {"pii": "false", "unit": "EUR"}},
            {"name": "txn_7d_count", "type": "long", "description": "Number of card payments"},
        ],
    }
    return FeatureSetSpec.from_dict(spec | changes).to_dict()


def transactions(version: int = 1, **fields: Any) -> FeatureSet:
    return FeatureSet.model_validate({"name": "transactions", "version": version,
                                      "specification": {"path": "./spec"}, "entities": ["account:1"],
                                      "description": "Card transactions", "tags": {"team": "fraud"}} | fields)


def put(registry: Registry, feature_set: FeatureSet, spec: dict[str, Any] | None = None, *,
        code_files: dict[str, str] | None = None, content_hash: str | None = None,
        spec_folder: str | None = "/repo/featuresets/transactions/spec") -> str:
    spec = spec if spec is not None else spec_dict()
    return registry.put_feature_set(
        feature_set, spec=spec, spec_folder=spec_folder, code_files=code_files or {},
        content_hash=content_hash or FeatureSetSpec.from_dict(spec).content_hash())


@pytest.fixture
def catalog(registry: Registry) -> Registry:
    """account:1 and transactions:1 registered."""
    registry.put_entity(account())
    put(registry, transactions())
    return registry


# -- entities ---------------------------------------------------------------------------------------
def test_put_entity_reports_created_unchanged_updated(registry: Registry) -> None:
    assert registry.put_entity(account()) == "created"
    assert registry.put_entity(account()) == "unchanged"
    assert registry.put_entity(account(description="A bank account", tags={"owner": "risk"},
                                       stage="Production")) == "updated"
    stored = registry.get_entity("account", 1)
    assert (stored.description, stored.tags, stored.stage.value) == ("A bank account", {"owner": "risk"},
                                                                    "production")


def test_entity_index_columns_are_immutable(registry: Registry) -> None:
    registry.put_entity(account())
    changed = account(index_columns=[{"name": "account_id", "type": "long"}])
    with pytest.raises(ImmutableError, match=r"^entity account:1 is registered with different index_columns; "
                                             r"create a new version \(e\.g\. account:2\)$"):
        registry.put_entity(changed)
    assert registry.get_entity("account", "1").index_columns[0].type.value == "string"


def test_get_entity_latest_and_not_found_messages(registry: Registry) -> None:
    with pytest.raises(NotFoundError, match="no entities are registered yet"):
        registry.get_entity("account")
    registry.put_entity(account(1))
    registry.put_entity(account(2))
    assert registry.get_entity("account").version == "2"
    with pytest.raises(NotFoundError, match=r"^entity 'acount' not found; registered entities: account "
                                            r"\(did you mean 'account'\?\)$"):
        registry.get_entity("acount", 1)
    with pytest.raises(NotFoundError, match=r"^entity account has no version 3; versions: 1, 2$"):
        registry.get_entity("account", 3)


def test_archived_entity_is_hidden_but_resolvable(registry: Registry) -> None:
    registry.put_entity(account(1))
    registry.put_entity(account(2))
    registry.archive_entity("account", 2)
    assert [e.ref for e in registry.list_entities()] == ["account:1"]
    assert [e.ref for e in registry.list_entities(include_archived=True)] == ["account:1", "account:2"]
    assert registry.get_entity("account").version == "1"
    assert registry.get_entity("account", 2).version == "2"
    registry.restore_entity("account", 2)
    assert registry.get_entity("account").version == "2"
    with pytest.raises(NotFoundError, match="entity account has no version 9"):
        registry.archive_entity("account", 9)


# -- feature sets -----------------------------------------------------------------------------------
def test_put_feature_set_reports_created_unchanged_updated(catalog: Registry) -> None:
    assert put(catalog, transactions()) == "unchanged"
    changed = transactions(description="Card payments", tags={"team": "risk"}, stage="production",
                           materialization_settings={"offline_enabled": True,
                                                     "schedule": {"frequency": "day"}})
    assert put(catalog, changed) == "updated"
    stored = catalog.get_feature_set("transactions", 1).asset
    assert stored.description == "Card payments"
    assert stored.tags == {"team": "risk"}
    assert stored.stage.value == "production"
    assert stored.materialization_settings is not None
    assert stored.materialization_settings.schedule is not None
    assert stored.materialization_settings.schedule.frequency.value == "day"


def test_changed_specification_is_refused_naming_the_changed_keys(catalog: Registry) -> None:
    spec = spec_dict(
        source={"type": "parquet", "path": "../data/v2/*.parquet", "timestamp_column": {"name": "timestamp"}},
        features=[{"name": "amount_7d_sum", "type": "float"}, {"name": "txn_7d_count", "type": "long"}],
    )
    with pytest.raises(ImmutableError) as error:
        put(catalog, transactions(), spec)
    assert str(error.value) == (
        "feature set transactions:1 is registered with a different specification "
        "(changed: source, features); only description, tags, stage and materialization_settings "
        "can change — create a new version (transactions:2)")
    assert catalog.get_feature_set("transactions", 1).spec == spec_dict()


@pytest.mark.parametrize(("change", "named"), [
    ({"entities": []}, "changed: entities"),
    ({"content_hash": "0" * 64}, "changed: code files"),
])
def test_entities_and_code_are_immutable(catalog: Registry, change: dict[str, Any], named: str) -> None:
    feature_set = transactions(**{k: v for k, v in change.items() if k == "entities"})
    with pytest.raises(ImmutableError, match=named):
        put(catalog, feature_set, content_hash=change.get("content_hash"))


def test_moving_the_spec_folder_updates_the_location_only(catalog: Registry) -> None:
    # The version computes the same: "unchanged", but relative paths now resolve in the new folder.
    assert put(catalog, transactions(), spec_folder="/elsewhere/spec") == "unchanged"
    assert catalog.get_feature_set("transactions", 1).spec_folder == "/elsewhere/spec"


def test_feature_set_needs_registered_entities_with_matching_keys(registry: Registry) -> None:
    with pytest.raises(NotFoundError, match="uses entity account:1, which is not registered"):
        put(registry, transactions())
    registry.put_entity(account(1, index_columns=[{"name": "customer_id", "type": "string"}]))
    with pytest.raises(RegistryError, match="entity account:1 has index column customer_id"):
        put(registry, transactions())


def test_invalid_spec_is_a_spec_error(catalog: Registry) -> None:
    with pytest.raises(SpecError, match="feature set transactions:2: spec"):
        put(catalog, transactions(2), {"source": {"type": "parquet"}}, content_hash="x")


def test_get_feature_set_latest_compares_versions_numerically(catalog: Registry) -> None:
    for version in (2, 10, 9):
        put(catalog, transactions(version))
    assert catalog.get_feature_set("transactions").version == "10"
    assert [fs.version for fs in catalog.list_feature_sets(name="transactions")] == ["1", "2", "9", "10"]


def test_archived_feature_set_is_hidden_but_resolvable(catalog: Registry) -> None:
    put(catalog, transactions(2))
    catalog.archive_feature_set("transactions", 2)
    assert [fs.ref for fs in catalog.list_feature_sets()] == ["transactions:1"]
    assert [fs.ref for fs in catalog.list_feature_sets(include_archived=True)] == ["transactions:1",
                                                                                   "transactions:2"]
    assert catalog.get_feature_set("transactions").version == "1"
    archived = catalog.get_feature_set("transactions", 2)
    assert archived.archived
    assert {f.version for f in catalog.list_features()} == {"1"}
    catalog.restore_feature_set("transactions", 2)
    assert catalog.get_feature_set("transactions").version == "2"


def test_all_versions_archived_and_not_found_messages(catalog: Registry) -> None:
    catalog.archive_feature_set("transactions", 1)
    with pytest.raises(NotFoundError, match=r"^feature set transactions has no active version; "
                                            r"archived versions: 1 "):
        catalog.get_feature_set("transactions")
    with pytest.raises(NotFoundError, match=r"^feature set transactions has no version 2; "
                                            r"versions: 1 \(archived\)$"):
        catalog.get_feature_set("transactions", 2)
    with pytest.raises(NotFoundError, match=r"^feature set 'transactoins' not found; "
                                            r"registered feature sets: transactions"):
        catalog.get_feature_set("transactoins")


def test_update_feature_set_changes_only_given_fields(catalog: Registry) -> None:
    before = catalog.get_feature_set("transactions", 1)
    after = catalog.update_feature_set("transactions", 1, stage="Production",
                                       materialization_settings={"online_enabled": True})
    assert after.asset.stage.value == "production"
    assert after.asset.description == "Card transactions"
    assert after.asset.tags == {"team": "fraud"}
    assert after.asset.materialization_settings is not None
    assert after.asset.materialization_settings.online_enabled
    assert after.updated_at >= before.updated_at
    cleared = catalog.update_feature_set("transactions", "1", description=None, materialization_settings=None)
    assert cleared.asset.description is None
    assert cleared.asset.materialization_settings is None
    assert cleared.asset.stage.value == "production"
    with pytest.raises(SpecError, match="stage"):
        catalog.update_feature_set("transactions", 1, stage="Shipped")
    with pytest.raises(NotFoundError, match="has no version 7"):
        catalog.update_feature_set("transactions", 7, description="x")


def test_code_files_and_spec_round_trip(registry: Registry) -> None:
    registry.put_entity(account())
    code = {"transformation_code/transform.py": "class Transformer:\n    def transform(self, df):\n"
                                                "        return df  # é ✓\n",
            "transformation_code/helpers/__init__.py": ""}
    put(registry, transactions(), code_files=code, content_hash="abc123")
    stored = registry.get_feature_set("transactions", 1)
    assert stored.code_files == code
    assert stored.content_hash == "abc123"
    assert stored.spec == spec_dict()
    assert list(stored.spec) == list(spec_dict())
    assert stored.spec_folder == "/repo/featuresets/transactions/spec"
    assert stored.asset.spec.feature_names == ["amount_7d_sum", "txn_7d_count"]
    assert stored.load_spec().folder == Path("/repo/featuresets/transactions/spec")
    assert stored.created_at.tzinfo is not None


# -- features ---------------------------------------------------------------------------------------
def test_list_features(catalog: Registry) -> None:
    catalog.put_entity(Entity.model_validate({"name": "merchant", "index_columns": [
        {"name": "merchant_id", "type": "string"}]}))
    merchants = FeatureSet.model_validate({"name": "merchants", "specification": {"path": "./m"},
                                           "entities": ["merchant:1"]})
    put(catalog, merchants, spec_dict(
        index_columns=[{"name": "merchant_id", "type": "string"}],
        feature_transformation=None, features=[{"name": "category", "type": "string"}]))
    assert [f.ref for f in catalog.list_features()] == [
        "merchants:1:category", "transactions:1:amount_7d_sum", "transactions:1:txn_7d_count"]
    first = catalog.list_features(feature_set="transactions")[0]
    assert (first.type.value, first.description, first.tags) == (
        "double", "Total spent in the last week", {"pii": "false", "unit": "EUR"})
    assert catalog.list_features(feature_set="nothing") == []


@pytest.mark.parametrize(("query", "expected"), [
    ("amount", ["amount_7d_sum"]),                       # name
    ("AMOUNT 7D", ["amount_7d_sum"]),                    # every term, case-insensitive
    ("card payments", ["txn_7d_count"]),                 # description
    ("eur", ["amount_7d_sum"]),                          # tag value
    ("unit", ["amount_7d_sum"]),                         # tag key
    ("fraud", ["amount_7d_sum", "txn_7d_count"]),        # feature set tag
    ("transactions count", ["txn_7d_count"]),            # feature set name + feature name
    ("amount count", []),                                # terms must all match
    ("", ["amount_7d_sum", "txn_7d_count"]),             # empty query lists everything
])
def test_search_features_matches_every_term(catalog: Registry, query: str, expected: list[str]) -> None:
    assert [f.name for f in catalog.search_features(query)] == expected


def test_search_ranks_exact_name_first_and_newest_version_first(catalog: Registry) -> None:
    spec = spec_dict(feature_transformation=None, features=[
        {"name": "amount_7d_sum", "type": "double", "description": "mentions txn_7d_count"},
        {"name": "txn_7d_count_avg", "type": "double"},
        {"name": "txn_7d_count", "type": "long"},
    ])
    put(catalog, transactions(2), spec)
    found = [f.ref for f in catalog.search_features("TXN_7D_COUNT")]
    assert found == ["transactions:2:txn_7d_count", "transactions:1:txn_7d_count",
                     "transactions:2:txn_7d_count_avg", "transactions:2:amount_7d_sum"]
    assert len(catalog.search_features("txn", limit=2)) == 2
    catalog.archive_feature_set("transactions", 2)
    assert [f.ref for f in catalog.search_features("txn_7d_count")] == ["transactions:1:txn_7d_count"]


# -- storage --------------------------------------------------------------------------------------
def test_two_registries_on_one_catalog_see_each_others_writes(open_registry: OpenRegistry) -> None:
    first, second = open_registry(), open_registry()
    first.put_entity(account())
    assert second.put_entity(account()) == "unchanged"
    put(second, transactions())
    assert first.get_feature_set("transactions").spec == second.get_feature_set("transactions").spec
    first.archive_feature_set("transactions", 1)
    assert second.list_feature_sets() == []


def test_concurrent_puts_of_one_version_create_it_once(open_registry: OpenRegistry) -> None:
    open_registry().put_entity(account())
    registries = [open_registry() for _ in range(4)]
    with ThreadPoolExecutor(max_workers=4) as pool:
        results = list(pool.map(lambda r: put(r, transactions()), registries))
    assert sorted(results) == ["created", "unchanged", "unchanged", "unchanged"]
    assert len(registries[0].list_features()) == 2


def test_reopening_keeps_data_and_refuses_a_newer_layout(open_registry: OpenRegistry) -> None:
    registry = open_registry()
    registry.put_entity(account())
    registry.close()
    assert open_registry().get_entity("account").ref == "account:1"
    with registry.engine.begin() as conn:
        conn.execute(sa.update(models.schema_version).values(version=models.SCHEMA_VERSION + 1))
    with pytest.raises(ConfigError, match="newer than this Gristmill understands"):
        open_registry()


@pytest.mark.parametrize(("url", "error", "message"), [
    ("not a url", ConfigError, "is not a database URL"),
    ("mysql://user@host/db", ConfigError, "unsupported database 'mysql'"),
    ("postgresql+psycopg://me:s3cret@127.0.0.1:1/db", RegistryError,
     r"cannot open the registry at postgresql\+psycopg://me:\*\*\*@127\.0\.0\.1:1/db: .*check that the "
     r"PostgreSQL server is running"),
])
def test_bad_urls_say_what_to_check(url: str, error: type[Exception], message: str) -> None:
    with pytest.raises(error, match=message) as raised:
        Registry(url)
    assert "s3cret" not in str(raised.value)


def test_sqlite_uses_wal_and_foreign_keys(tmp_path: Path) -> None:
    with Registry(f"sqlite:///{tmp_path / 'registry.db'}") as registry, registry.engine.connect() as conn:
        assert conn.exec_driver_sql("PRAGMA journal_mode").scalar() == "wal"
        assert conn.exec_driver_sql("PRAGMA foreign_keys").scalar() == 1


@pytest.mark.parametrize(("versions", "ordered"), [
    (["10", "9", "2"], ["2", "9", "10"]),
    (["1", "beta", "2"], ["beta", "1", "2"]),
    (["b", "a"], ["a", "b"]),
])
def test_version_order(versions: list[str], ordered: list[str]) -> None:
    assert sorted(versions, key=version_key) == ordered
