"""``plan`` / ``apply``: the plan (create, update field by field, unchanged, refuse, invalid, consequences),
specs checked against their source before they become immutable versions, repos that stay the same when
copied elsewhere, and no materialized data dropped without saying so. Real stores in temporary folders."""

from __future__ import annotations

import re
import shutil
from pathlib import Path
from typing import Any

import pandas as pd
import pytest
import yaml
from cli_support import Result, assert_ok, assert_user_error, describe, gristmill, run_concurrently

import gristmill as gm
from gristmill.compute import check

ROWS = pd.DataFrame({
    "acct": ["A", "A", "B"],
    "ts": pd.to_datetime(["2024-01-01 00:00", "2024-01-02 00:00", "2024-01-01 12:00"]).astype("datetime64[us]"),
    "amount": [1.0, 2.0, 10.0],
})
DATA_PATH = "../../../data/rows.parquet"          # from repo/fs/spec to root/data
ENTITY = {"name": "account", "version": "1", "index_columns": [{"name": "acct", "type": "string"}]}


def base_spec(**changes: Any) -> dict[str, Any]:
    spec: dict[str, Any] = {
        "source": {"type": "parquet", "path": DATA_PATH, "timestamp_column": {"name": "ts"}},
        "index_columns": [{"name": "acct", "type": "string"}],
        "features": [{"name": "amount", "type": "double"}],
    }
    spec.update(changes)
    return spec


def write_repo(root: Path, spec: dict[str, Any] | None = None, *, version: str = "1",
               asset: dict[str, Any] | None = None, code: dict[str, str] | None = None,
               data: pd.DataFrame = ROWS) -> Path:
    """``root/repo`` with entity account:1 and feature set fs1 (spec in repo/fs/spec), data in root/data."""
    (root / "data").mkdir(parents=True, exist_ok=True)
    data.to_parquet(root / "data" / "rows.parquet", index=False)
    repo = root / "repo"
    (repo / "fs" / "spec").mkdir(parents=True, exist_ok=True)
    (repo / "account.yaml").write_text(yaml.safe_dump(ENTITY))
    (repo / "fs" / "FeatureSet.yaml").write_text(yaml.safe_dump({
        "name": "fs1", "version": version, "specification": {"path": "./spec"}, "entities": ["account:1"],
        **(asset or {})}))
    (repo / "fs" / "spec" / "FeatureSetSpec.yaml").write_text(yaml.safe_dump(spec or base_spec()))
    for name, text in (code or {}).items():
        target = repo / "fs" / "spec" / name
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_text(text)
    return repo


def fs_item(plan: gm.ApplyPlan, ref: str = "fs1:1") -> gm.PlanItem:
    return plan.item(ref)


@pytest.fixture
def store(tmp_path: Path) -> Any:
    with gm.FeatureStore.init(tmp_path / "store") as opened:
        yield opened


# -- 1. the plan ------------------------------------------------------------------------------------------
def test_plan_changes_nothing_and_apply_executes_the_same_plan(tmp_path: Path, store: gm.FeatureStore) -> None:
    repo = write_repo(tmp_path)
    planned = store.plan(repo)
    assert [(i.kind, i.ref, i.action) for i in planned.items] == [("entity", "account:1", "create"),
                                                                  ("feature set", "fs1:1", "create")]
    assert planned.has_changes and planned.ok and not planned.applied
    assert store.list_entities() == [] and store.list_feature_sets() == []     # nothing registered by plan
    applied = store.apply(repo)
    assert [(i.ref, i.action) for i in applied.items] == [("account:1", "created"), ("fs1:1", "created")]
    assert [i.changes for i in applied.items] == [i.changes for i in planned.items]
    again = store.plan(repo)
    assert {i.action for i in again.items} == {"unchanged"} and not again.has_changes
    assert str(again).endswith("nothing to do")


def test_update_lists_each_changed_field_old_to_new(tmp_path: Path, store: gm.FeatureStore) -> None:
    store.apply(write_repo(tmp_path, asset={"description": "old words", "tags": {"team": "risk"}}))
    repo = write_repo(tmp_path, asset={"description": "new words", "tags": {"team": "fraud", "pii": "no"},
                                       "stage": "Production"})
    item = fs_item(store.plan(repo))
    assert item.action == "update"
    assert {(c.field, c.old, c.new) for c in item.changes} == {
        ("description", "old words", "new words"), ("tags.team", "risk", "fraud"), ("tags.pii", None, "no"),
        ("stage", "development", "production")}
    assert "description: old words → new words" in str(store.plan(repo))
    assert store.get_feature_set("fs1", 1).description == "old words"           # plan changed nothing
    assert fs_item(store.apply(repo)).action == "updated"
    assert store.get_feature_set("fs1", 1).description == "new words"


def test_refuse_lists_the_immutable_changes_and_the_next_version(tmp_path: Path, store: gm.FeatureStore) -> None:
    store.apply(write_repo(tmp_path))
    changed = base_spec(features=[{"name": "amount", "type": "float"}], temporal_join_lookback={"days": 2})
    item = fs_item(store.plan(write_repo(tmp_path, changed)))
    assert item.action == "refuse"
    assert [(c.field, c.old, c.new) for c in item.changes] == [
        ("features.amount.type", "double", "float"), ("temporal_join_lookback", None,
                                                      {"days": 2, "hours": 0, "minutes": 0, "seconds": 0})]
    assert "version: 2 in FeatureSet.yaml" in item.detail
    assert fs_item(store.apply(write_repo(tmp_path, changed))).action == "refused"
    assert store.get_feature_set("fs1", 1).spec.feature("amount").type == gm.FeatureType.DOUBLE


def test_consequences_schedule_and_a_version_no_model_uses(tmp_path: Path, store: gm.FeatureStore) -> None:
    store.apply(write_repo(tmp_path))
    store.register_model("churn", 1, ["fs1:1:amount"])
    repo = write_repo(tmp_path, version="2", asset={"materialization_settings": {
        "offline_enabled": True, "schedule": {"type": "recurrence", "frequency": "day", "interval": 1,
                                              "start_time": "2024-01-01T04:00:00"}}})
    item = fs_item(store.plan(repo), "fs1:2")
    assert item.action == "create"
    notes = "\n".join(item.notes)
    assert re.search(r"schedule added: next run \d{4}-\d\d-\d\d 04:00 UTC materializes \[", notes), notes
    assert "no model uses fs1:2 yet (models using other versions of fs1: churn:1)" in notes


def test_a_broken_or_multi_document_file_counts_once_under_its_name(tmp_path: Path,
                                                                    store: gm.FeatureStore) -> None:
    repo = write_repo(tmp_path)
    asset = repo / "fs" / "FeatureSet.yaml"
    asset.write_text(asset.read_text() + "---\nname: other\n")
    plan = store.plan(repo)
    assert [(i.kind, i.ref, i.action) for i in plan.items if i.action == "invalid"] == [
        ("feature set", "fs1:1", "invalid")]
    assert "another document" in fs_item(plan).detail
    repo = write_repo(tmp_path / "second")
    (repo / "fs" / "spec" / "FeatureSetSpec.yaml").write_text("source: [\n")
    plan = store.plan(repo)
    assert [(i.ref, i.action) for i in plan.items] == [("account:1", "create"), ("fs1:1", "invalid")]
    assert plan.summary() == "1 create, 1 invalid"


def test_cli_plan_exit_codes_and_apply_prints_the_plan(tmp_path: Path) -> None:
    new_repo = write_repo(tmp_path / "new")
    broken = write_repo(tmp_path / "broken", base_spec(features=[{"name": "amount", "type": "string"}]))
    gm.FeatureStore.init(tmp_path / "store").close()
    s = ["--store", tmp_path / "store"]
    ran = run_concurrently({
        "plan": ["plan", new_repo, *s],
        "plan detailed": ["plan", new_repo, "--detailed-exitcode", *s],
        "plan broken": ["plan", broken, *s],
        "plan no folder": ["plan", tmp_path / "absent", *s],
    })
    assert_ok(ran["plan"])
    assert re.search(r"create\s+feature set fs1:1", ran["plan"].stdout)
    assert ran["plan detailed"].returncode == 3, describe(ran["plan detailed"])
    assert ran["plan broken"].returncode == 1, describe(ran["plan broken"])
    assert "declared string" in ran["plan broken"].stdout
    assert_user_error(ran["plan no folder"], "absent")
    applied = gristmill("apply", new_repo, *s)
    assert_ok(applied)
    def shape(text: str) -> list[str]:
        return [re.sub(r"create(d)?", "X", line).strip() for line in text.splitlines()]

    assert shape(applied.stdout) == shape(ran["plan"].stdout)
    nothing = gristmill("plan", new_repo, "--detailed-exitcode", *s)
    assert_ok(nothing)
    assert "nothing to do" in nothing.stdout


# -- 2. specs checked against their source ---------------------------------------------------------------------
TRANSFORMER = """
import pandas as pd

class Doubler:
    def transform(self, frame):
        out = frame[["acct", "ts"]].copy()
        out["doubled"] = frame["amount"] * 2
        return out
"""
RAISING = "class Broken:\n    def transform(self, frame):\n        raise ValueError('boom in transform')\n"
SLOW = "import time\n\nclass Slow:\n    def transform(self, frame):\n        time.sleep(3)\n        return frame\n"
DOUBLED = [{"name": "doubled", "type": "double"}]


def _dsl(column: str) -> dict[str, Any]:
    return {"transformation_expressions": [{"transformation_type": "window", "feature_name": "amount_sum",
                                            "source_column": column, "aggregation": "sum", "window": {"days": 1}}]}


BROKEN_SPECS: list[tuple[str, dict[str, Any], dict[str, str], str]] = [
    ("wrong timestamp column", base_spec(source={"type": "parquet", "path": DATA_PATH,
                                                 "timestamp_column": {"name": "time"}}), {}, "time"),
    ("wrong declared type", base_spec(features=[{"name": "amount", "type": "string"}]), {}, "declared string"),
    ("wrong index column type", base_spec(index_columns=[{"name": "acct", "type": "long"}]), {}, "acct"),
    ("timestamp format that does not parse", base_spec(), {}, "format"),
    ("DSL source_column typo", base_spec(feature_transformation=_dsl("amout"),
                                         features=[{"name": "amount_sum", "type": "double"}]), {}, "amout"),
    ("DSL sum of a string", base_spec(feature_transformation=_dsl("acct"),
                                      features=[{"name": "amount_sum", "type": "double"}]), {}, "sum"),
    ("SQL typo", base_spec(feature_transformation={
        "transformation_sql": "SELECT acct, ts, amout * 2 AS doubled FROM source"}, features=DOUBLED), {}, "amout"),
    ("SQL that does not parse", base_spec(feature_transformation={
        "transformation_sql": "SELEC acct FROM source"}, features=DOUBLED), {}, "transformation_sql"),
    ("undeclared output column", base_spec(feature_transformation={
        "transformation_sql": "SELECT acct, ts, amount * 2 AS doubled, amount AS extra FROM source"},
        features=DOUBLED), {}, "extra"),
    ("missing transformer class", base_spec(feature_transformation={"transformation_code": {
        "path": "./code", "transformer_class": "doubler.Missing"}}, features=DOUBLED),
     {"code/doubler.py": TRANSFORMER}, "no class Missing"),
    ("code that raises", base_spec(feature_transformation={"transformation_code": {
        "path": "./code", "transformer_class": "broken.Broken"}}, features=DOUBLED),
     {"code/broken.py": RAISING}, "boom in transform"),
]


@pytest.mark.parametrize(("spec", "code", "fragment"), [case[1:] for case in BROKEN_SPECS],
                         ids=[case[0] for case in BROKEN_SPECS])
def test_a_broken_spec_is_refused_with_the_exact_error_and_not_registered(
        tmp_path: Path, store: gm.FeatureStore, spec: dict[str, Any], code: dict[str, str], fragment: str) -> None:
    if fragment == "format":
        spec["source"]["timestamp_column"]["format"] = "%d/%m/%Y"
        data = ROWS.assign(ts=ROWS["ts"].dt.strftime("%Y-%m-%d %H:%M"))
    else:
        data = ROWS
    repo = write_repo(tmp_path, spec, code=code, data=data)
    item = fs_item(store.plan(repo))
    assert item.action == "invalid", str(item)
    assert fragment in item.detail, item.detail
    assert "__gm" not in item.detail and "Traceback" not in item.detail
    applied = store.apply(repo)
    assert fs_item(applied).action == "invalid" and not applied.ok
    with pytest.raises(gm.NotFoundError):
        store.get_feature_set("fs1", 1)
    # the fixed spec becomes version 1, not 2
    fixed = write_repo(tmp_path, base_spec())
    assert fs_item(store.apply(fixed)).action == "created"


@pytest.mark.parametrize(("transformation", "features", "code"), [
    ({"transformation_sql": "SELECT acct, ts, amount * 2 AS doubled FROM source"}, DOUBLED, {}),
    ({"transformation_code": {"path": "./code", "transformer_class": "doubler.Doubler"}}, DOUBLED,
     {"code/doubler.py": TRANSFORMER}),
    (_dsl("amount"), [{"name": "amount_sum", "type": "double"}], {}),
], ids=["sql", "code", "dsl"])
def test_a_good_spec_passes_the_check(tmp_path: Path, store: gm.FeatureStore, transformation: dict[str, Any],
                                      features: list[dict[str, str]], code: dict[str, str]) -> None:
    repo = write_repo(tmp_path, base_spec(feature_transformation=transformation, features=features), code=code)
    item = fs_item(store.apply(repo))
    assert item.action == "created" and item.notes == (), str(item)


def test_code_that_does_not_finish_in_time_is_refused(tmp_path: Path, store: gm.FeatureStore,
                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(check, "CHECK_SECONDS", 0.5)
    repo = write_repo(tmp_path, base_spec(feature_transformation={"transformation_code": {
        "path": "./code", "transformer_class": "slow.Slow"}}), code={"code/slow.py": SLOW})
    item = fs_item(store.plan(repo))
    assert item.action == "invalid"
    assert "did not finish within 0 s" in item.detail or "did not finish within 1 s" in item.detail, item.detail
    assert "--skip-source-check" in item.detail


def test_a_custom_source_is_checked_on_the_last_day(tmp_path: Path, store: gm.FeatureStore) -> None:
    source = """
import pandas as pd

class Rows:
    def process(self, start, end, **kwargs):
        return pd.DataFrame({"acct": ["A"], "ts": [start], "amount_renamed": [1.0]})
"""
    spec = base_spec(source={"type": "custom", "source_process_code": {"path": "./code", "process_class": "rows.Rows"},
                             "timestamp_column": {"name": "ts"}})
    item = fs_item(store.plan(write_repo(tmp_path, spec, code={"code/rows.py": source})))
    assert item.action == "invalid" and "feature 'amount' is missing" in item.detail, item.detail


def test_an_unreachable_source_is_registered_with_a_not_checked_note(tmp_path: Path) -> None:
    spec = base_spec(source={"type": "parquet", "path": "wasbs://data@account.blob.core.windows.net/rows/*.parquet",
                             "timestamp_column": {"name": "ts"}})
    repo = write_repo(tmp_path, spec)
    gm.FeatureStore.init(tmp_path / "store").close()
    result = gristmill("apply", repo, "--store", tmp_path / "store")
    assert_ok(result)
    assert re.search(r"created\s+feature set fs1:1", result.stdout)
    assert "note: not checked: wasbs:// sources cannot be read from this machine" in result.stdout


@pytest.mark.parametrize("uri", ["abfss://data@storage.dfs.core.windows.net/transactions/*.parquet",
                                 "s3://bucket/transactions/", "gs://bucket/rows.parquet"])
def test_sources_on_object_stores_this_machine_cannot_read_are_not_checked(tmp_path: Path, store: gm.FeatureStore,
                                                                          uri: str) -> None:
    spec = base_spec(source={"type": "parquet", "path": uri, "timestamp_column": {"name": "ts"}})
    item = fs_item(store.apply(write_repo(tmp_path, spec)))
    assert item.action == "created"
    (note,) = item.notes
    assert note.startswith(f"not checked: {uri.split(':')[0]}:// sources cannot be read from this machine"), note


def test_skip_source_check_registers_without_reading_the_source(tmp_path: Path, store: gm.FeatureStore) -> None:
    repo = write_repo(tmp_path, base_spec(features=[{"name": "amount", "type": "string"}]))
    item = fs_item(store.apply(repo, check_source=False))
    assert item.action == "created" and item.notes == ("not checked: --skip-source-check",)


# -- 3. portable repos --------------------------------------------------------------------------------------
def test_a_repo_copied_elsewhere_is_unchanged_and_reads_its_own_data(tmp_path: Path) -> None:
    first = tmp_path / "checkout1"
    repo = write_repo(first, base_spec(feature_transformation={"transformation_code": {
        "path": "./code", "transformer_class": "doubler.Doubler"}}, features=DOUBLED),
        code={"code/doubler.py": TRANSFORMER})
    store_path = tmp_path / "store"
    with gm.FeatureStore.init(store_path) as store:
        assert store.apply(repo).ok
    second = tmp_path / "elsewhere" / "checkout2"
    shutil.copytree(first, second)
    shutil.rmtree(first)                              # the first checkout is gone; the copy must be enough
    with gm.FeatureStore(store_path) as store:
        plan = store.apply(second / "repo")
        assert {i.action for i in plan.items} == {"unchanged"}, str(plan)
        frame = store.preview("fs1", 1, "2024-01-01", "2024-01-03").to_pandas()
        assert frame["doubled"].tolist() == [2.0, 4.0, 20.0]
    code = second / "repo" / "fs" / "spec" / "code" / "doubler.py"
    code.write_text(code.read_text().replace("* 2", "* 3"))
    result = gristmill("apply", second / "repo", "--store", store_path)
    assert result.returncode == 1, describe(result)
    assert re.search(r"refused\s+feature set fs1:1", result.stdout)
    assert "code file code/doubler.py: registered content → changed content" in result.stdout


def test_a_version_registered_with_an_absolute_path_stays_unchanged(tmp_path: Path, store: gm.FeatureStore) -> None:
    repo = write_repo(tmp_path)
    loaded = gm.FeatureSet.load(repo / "fs" / "FeatureSet.yaml")
    store.apply(repo, check_source=False)
    registered = store.registry.get_feature_set("fs1", 1)
    absolute = {**registered.spec, "source": {**registered.spec["source"],
                                             "path": str((tmp_path / "data" / "rows.parquet").resolve())}}
    with store.registry._transaction(write=True) as conn:        # a registry written by an older release
        from gristmill.registry import models

        conn.execute(models.feature_sets.update().values(spec=absolute))
    assert fs_item(store.plan(repo)).action == "unchanged"
    assert store.register_feature_set(loaded) == "unchanged"


# -- 4. no silent data loss ---------------------------------------------------------------------------------
def _materialized(tmp_path: Path, store: gm.FeatureStore) -> Path:
    repo = write_repo(tmp_path)
    store.apply(repo)
    store.update_feature_set("fs1", 1, materialization_settings={"offline_enabled": True, "online_enabled": True})
    jobs = store.backfill("fs1", 1, start="2024-01-01", end="2024-01-03")
    assert [j.status.value for j in jobs] == ["Completed"]
    return repo


def test_apply_refuses_to_disable_stores_that_hold_data(tmp_path: Path, store: gm.FeatureStore) -> None:
    repo = _materialized(tmp_path, store)      # the YAML says nothing about materialization: both stores off
    item = fs_item(store.plan(repo))
    assert item.action == "refuse"
    assert "offline store: 3 rows in 1 materialized window covering [2024-01-01 00:00, 2024-01-03 00:00)" in item.detail
    assert "online store: 2 keys in 1 materialized window" in item.detail
    assert "--allow-data-loss" in item.detail
    assert [(c.field, c.old, c.new) for c in item.changes] == [
        ("materialization_settings.offline_enabled", True, False),
        ("materialization_settings.online_enabled", True, False)]
    assert fs_item(store.apply(repo)).action == "refused"
    intervals = store.data_intervals("fs1", 1)
    assert [i.status.value for i in intervals["offline"]] == ["Complete"]
    online = store.get_online_features(["fs1:1:amount"], {"acct": ["A", "B"]}).to_dict()
    assert online["amount"] == [2.0, 10.0]
    with pytest.raises(gm.DataLossError, match="allow_data_loss=True"):
        store.register_feature_set(gm.FeatureSet.load(repo / "fs" / "FeatureSet.yaml"))


def test_allow_data_loss_applies_and_says_what_was_dropped(tmp_path: Path, store: gm.FeatureStore) -> None:
    repo = _materialized(tmp_path, store)
    result = gristmill("apply", repo, "--allow-data-loss", "--store", store.path)
    assert_ok(result)
    assert re.search(r"updated\s+feature set fs1:1", result.stdout)
    assert "note: drops offline store: 3 rows" in result.stdout
    assert "note: drops online store: 2 keys" in result.stdout
    with gm.FeatureStore(store.path) as reopened:
        assert reopened.data_intervals("fs1", 1)["offline"] == []


def test_archive_and_restore_from_the_cli(tmp_path: Path) -> None:
    repo = write_repo(tmp_path)
    with gm.FeatureStore.init(tmp_path / "store") as store:
        store.apply(repo)
    s = ["--store", tmp_path / "store"]
    assert_ok(gristmill("archive", "fs1:1", *s))
    assert "fs1" not in gristmill("list", *s).stdout
    assert_ok(gristmill("archive", "account:1", "--entity", *s))
    ran: dict[str, Result] = run_concurrently({
        "restore": ["restore", "fs1:1", *s], "restore entity": ["restore", "account:1", "--entity", *s],
        "no version": ["archive", "fs1", *s], "unknown": ["archive", "nosuch:1", *s]})
    assert_ok(ran["restore"])
    assert_ok(ran["restore entity"])
    assert_user_error(ran["no version"], "fs1:1")
    assert_user_error(ran["unknown"], "nosuch")
    with gm.FeatureStore(tmp_path / "store") as store:
        assert [f.ref for f in store.list_feature_sets()] == ["fs1:1"]
        assert [e.ref for e in store.list_entities()] == ["account:1"]


# -- code runs only from the registry's snapshot --------------------------------------------------------------
@pytest.mark.parametrize(("path", "fragment"), [
    ("../../../../outside", "is outside the spec folder"),
    ("./code_not_written_yet", "holds no Python code"),
])
def test_code_outside_the_spec_folder_or_missing_is_refused_at_apply(tmp_path: Path, store: gm.FeatureStore,
                                                                     path: str, fragment: str) -> None:
    repo = write_repo(tmp_path, base_spec(feature_transformation={"transformation_code": {
        "path": path, "transformer_class": "doubler.Doubler"}}, features=DOUBLED))
    for check_source in (True, False):
        item = fs_item(store.apply(repo, check_source=check_source))
        assert item.action == "invalid" and fragment in item.detail, item.detail
    with pytest.raises(gm.NotFoundError):
        store.get_feature_set("fs1", 1)


def test_a_registered_version_never_runs_code_from_disk(tmp_path: Path, store: gm.FeatureStore) -> None:
    repo = write_repo(tmp_path, base_spec(feature_transformation={"transformation_code": {
        "path": "./code", "transformer_class": "doubler.Doubler"}}, features=DOUBLED),
        code={"code/doubler.py": TRANSFORMER})
    assert store.apply(repo).ok
    code = repo / "fs" / "spec" / "code" / "doubler.py"
    code.write_text(code.read_text().replace("* 2", "* 100"))            # changed on disk, not applied
    assert store.preview("fs1", 1, "2024-01-01", "2024-01-03").to_pandas()["doubled"].tolist() == [2.0, 4.0, 20.0]
    # A version registered without a snapshot (an older release accepted a code path that did not exist yet):
    # code that appears at that path later must not run.
    with store.registry._transaction(write=True) as conn:
        from gristmill.registry import models

        conn.execute(models.feature_sets.update().values(code_files={}, content_hash="no-snapshot"))
    marker = tmp_path / "ran.txt"
    code.write_text(f"import pathlib\npathlib.Path({str(marker)!r}).write_text('ran')\n" + TRANSFORMER)
    with gm.FeatureStore(store.path) as reopened, pytest.raises(gm.GristmillError, match="not found"):
        reopened.preview("fs1", 1, "2024-01-01", "2024-01-03").to_pandas()
    assert not marker.exists()


# -- review findings: derived versions, duplicates, odd files ----------------------------------------------------
def write_derived(repo: Path, name: str, parent: str, features: list[dict[str, str]], sql: str) -> None:
    (repo / name / "spec").mkdir(parents=True, exist_ok=True)
    (repo / name / "FeatureSet.yaml").write_text(yaml.safe_dump({
        "name": name, "version": "1", "specification": {"path": "./spec"}, "entities": ["account:1"]}))
    (repo / name / "spec" / "FeatureSetSpec.yaml").write_text(yaml.safe_dump({
        "source": {"type": "featureset", "path": parent}, "index_columns": [{"name": "acct", "type": "string"}],
        "features": features, "feature_transformation": {"transformation_sql": sql}}))


def test_a_derived_version_is_checked_against_the_parent_apply_will_use(tmp_path: Path,
                                                                      store: gm.FeatureStore) -> None:
    store.apply(write_repo(tmp_path))                                                  # fs1:1 has amount
    repo = write_repo(tmp_path / "v2", base_spec(features=[{"name": "spend", "type": "double"}]),
                      data=ROWS.rename(columns={"amount": "spend"}))               # fs1:1 changed: refused
    write_derived(repo, "zchild", "fs1:1", DOUBLED, "SELECT acct, ts, spend * 2 AS doubled FROM source")
    plan = store.plan(repo)
    assert fs_item(plan).action == "refuse"
    child = plan.item("zchild:1")
    assert child.action == "invalid" and "spend" in child.detail, str(child)


def test_a_derived_version_of_an_invalid_parent_is_invalid(tmp_path: Path, store: gm.FeatureStore) -> None:
    repo = write_repo(tmp_path, base_spec(features=[{"name": "amount", "type": "string"}]))   # fs1:1 invalid
    write_derived(repo, "child", "fs1:1", DOUBLED, "SELECT acct, ts, amount * 2 AS doubled FROM source")
    plan = store.plan(repo)
    assert fs_item(plan).action == "invalid"
    assert plan.item("child:1").action == "invalid"
    assert "its parent feature set fs1:1 is invalid in this plan" in plan.item("child:1").detail


def test_derived_feature_sets_that_read_each_other_are_a_cycle(tmp_path: Path, store: gm.FeatureStore) -> None:
    repo = tmp_path / "repo"
    (repo).mkdir()
    (repo / "account.yaml").write_text(yaml.safe_dump(ENTITY))
    write_derived(repo, "a", "b:1", DOUBLED, "SELECT acct, ts, doubled FROM source")
    write_derived(repo, "b", "a:1", DOUBLED, "SELECT acct, ts, doubled FROM source")
    plan = store.plan(repo)
    for ref in ("a:1", "b:1"):
        assert plan.item(ref).action == "invalid" and "cycle" in plan.item(ref).detail, plan.item(ref).detail


def test_two_files_with_one_version_are_both_invalid(tmp_path: Path, store: gm.FeatureStore) -> None:
    repo = write_repo(tmp_path)
    shutil.copytree(repo / "fs", repo / "fs_copy")
    plan = store.apply(repo)
    items = [i for i in plan.items if i.ref == "fs1:1"]
    assert [i.action for i in items] == ["invalid", "invalid"]
    assert "declared by 2 files" in items[0].detail and "fs_copy" in items[0].detail
    with pytest.raises(gm.NotFoundError):
        store.get_feature_set("fs1", 1)


def test_odd_files_are_reported_not_ignored(tmp_path: Path, store: gm.FeatureStore) -> None:
    repo = write_repo(tmp_path)
    (repo / "notes.yaml").write_text("owner: risk-team\n")
    (repo / "latin1.yaml").write_bytes(b"name: caf\xe9\n")
    typo = tmp_path / "typo" / "FeatureSet.yaml"
    typo.parent.mkdir()
    typo.write_text("name: typo\nversion: '1'\nspecifcation: {path: ./spec}\n")
    (repo / "linked").symlink_to(typo.parent, target_is_directory=True)
    plan = store.plan(repo)
    assert "not UTF-8" in plan.item("latin1.yaml").detail
    assert plan.item("typo:1").action == "invalid" and "specifcation" in plan.item("typo:1").detail
    assert plan.skipped == [str(repo / "notes.yaml")] and "1 other YAML file(s) skipped" in plan.summary()
    with pytest.raises(gm.SpecError, match="this is a feature set specification"):
        store.plan(repo / "fs" / "spec" / "FeatureSetSpec.yaml")


def test_code_that_exits_is_invalid_not_a_crash(tmp_path: Path, store: gm.FeatureStore) -> None:
    exiting = "import sys\nsys.exit(3)\n"
    repo = write_repo(tmp_path, base_spec(feature_transformation={"transformation_code": {
        "path": "./code", "transformer_class": "exiting.Doubler"}}, features=DOUBLED),
        code={"code/exiting.py": exiting})
    item = fs_item(store.plan(repo))
    assert item.action == "invalid" and "SystemExit(3)" in item.detail, item.detail


def test_a_custom_source_is_built_with_its_kwargs(tmp_path: Path, store: gm.FeatureStore) -> None:
    source = """
import pandas as pd

class Rows:
    def __init__(self, path, password):
        self.path = path

    def process(self, start, end, **kwargs):
        frame = pd.read_parquet(self.path)
        return frame[(frame.ts >= start) & (frame.ts < end)]
"""
    kwargs = {"path": str(tmp_path / "data" / "rows.parquet"), "password": "hunter2"}
    spec = base_spec(source={"type": "custom", "source_process_code": {"path": "./code", "process_class": "rows.Rows"},
                             "timestamp_column": {"name": "ts"}, "kwargs": kwargs})
    repo = write_repo(tmp_path, spec, code={"code/rows.py": source})
    assert fs_item(store.apply(repo)).action == "created"
    assert store.preview("fs1", 1, "2024-01-01", "2024-01-03").to_pandas()["amount"].tolist() == [1.0, 2.0, 10.0]
    spec["source"]["kwargs"] = {**kwargs, "password": "correct horse"}
    item = fs_item(store.plan(write_repo(tmp_path, spec, code={"code/rows.py": source})))
    assert item.action == "refuse"
    assert "source.kwargs.password: (hidden) → (hidden, changed)" in [str(c) for c in item.changes]
    assert "horse" not in str(store.plan(repo)) and "hunter2" not in str(store.plan(repo))


def test_a_reference_without_its_feature_says_so() -> None:
    with pytest.raises(gm.RetrievalError, match="is the feature missing"):
        gm.FeatureRetrievalSpec.from_features(["transactions:1"])


def test_a_runaway_sql_check_is_interrupted_and_bounded(tmp_path: Path, store: gm.FeatureStore,
                                                        monkeypatch: pytest.MonkeyPatch) -> None:
    import threading
    import time

    monkeypatch.setattr(check, "CHECK_SECONDS", 2.0)
    bomb = "SELECT s.acct, s.ts, CAST(count(*) OVER () AS VARCHAR) AS v FROM source s, range(100000000000) r"
    repo = write_repo(tmp_path, base_spec(feature_transformation={"transformation_sql": bomb},
                                          features=[{"name": "v", "type": "string"}]))
    item = fs_item(store.plan(repo))
    assert item.action == "invalid" and "did not finish within 2 s" in item.detail, item.detail
    deadline = time.monotonic() + 10
    while any(t.name.startswith("check ") for t in threading.enumerate()) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert not any(t.name.startswith("check ") for t in threading.enumerate())   # the query was interrupted


def test_sql_may_not_read_settings(tmp_path: Path, store: gm.FeatureStore) -> None:
    sql = "SELECT acct, ts, current_setting('temp_directory') AS v FROM source"
    repo = write_repo(tmp_path, base_spec(feature_transformation={"transformation_sql": sql},
                                          features=[{"name": "v", "type": "string"}]))
    item = fs_item(store.plan(repo))
    assert item.action == "invalid" and "current_setting" in item.detail, item.detail


def test_credentials_in_a_source_uri_stay_out_of_the_plan(tmp_path: Path, store: gm.FeatureStore) -> None:
    uri = "s3://AKIAEXAMPLE:wJalrSECRET@bucket/transactions/*.parquet"
    repo = write_repo(tmp_path, base_spec(source={"type": "parquet", "path": uri, "timestamp_column": {"name": "ts"}}))
    assert fs_item(store.apply(repo)).action == "created"
    changed = write_repo(tmp_path, base_spec(source={"type": "parquet", "path": uri.replace("bucket", "other"),
                                                     "timestamp_column": {"name": "ts"}}))
    text = str(store.plan(changed))
    assert "source.path: s3://…@bucket/transactions/*.parquet → s3://…@other/transactions/*.parquet" in text, text
    assert "SECRET" not in text and "AKIA" not in text
