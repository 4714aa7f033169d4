"""What the server lets slip to a caller without a grant, over real HTTP against ``gristmill serve`` (SQLite
and PostgreSQL registries): 404s name only what the caller may read and answer an unreadable feature set
exactly like a missing one; concurrent UI retries make one job; job lists filter before they cut; a flood
of refused requests writes one audit row a minute; a model using another store's features keeps
``/ui/models`` working."""

from __future__ import annotations

import io
import re
import time
from concurrent.futures import ThreadPoolExecutor
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import pandas as pd
import pytest
import yaml
from serve_support import REGISTRIES, add_principals, make_store, registry_of, serve

import gristmill as gm

WINDOW = {"start": "2024-01-01T00:00:00", "end": "2024-01-10T00:00:00", "stores": ["offline"]}


def _observations() -> bytes:
    out = io.BytesIO()
    pd.DataFrame({"acct": ["A"], "ts": [datetime(2024, 1, 9)]}).to_parquet(out)
    return out.getvalue()


def _requests(name: str) -> dict[str, tuple[str, str, dict[str, Any]]]:
    """Every feature set route, asked about feature set ``name`` version 1."""
    return {
        "catalog": ("GET", f"/v1/feature-sets/{name}/1", {}),
        "intervals": ("GET", f"/v1/feature-sets/{name}/1/intervals", {}),
        "statistics": ("GET", f"/v1/feature-sets/{name}/1/statistics", {}),
        "freshness": ("GET", f"/v1/feature-sets/{name}/1/freshness", {}),
        "backfill": ("POST", f"/v1/feature-sets/{name}/1/backfill", {"json": WINDOW}),
        "online": ("POST", "/v1/online/features",
                   {"json": {"features": [f"{name}:1:f1"], "entities": {"acct": ["A"]}}}),
        "offline": ("POST", "/v1/offline/features", {"params": {"features": f"{name}:1:f1", "timestamp_column": "ts"},
                                                      "content": _observations()}),
    }


@pytest.mark.parametrize("registry", REGISTRIES)
def test_an_unreadable_feature_set_answers_like_a_missing_one(tmp_path: Path, request: pytest.FixtureRequest,
                                                              registry: str) -> None:
    store = make_store(tmp_path, registry=registry_of(request, registry))
    store.register_model("m_fs2", 1, ["fs2:1:f1"])
    tokens = add_principals(store)
    with serve(store, tokens) as server:
        for who in ("reader", "materializer", "nobody"):
            client = server.client(who)
            for route, (method, path, kwargs) in _requests("fs2").items():
                hidden = client.request(method, path, **kwargs)          # fs2 exists, unreadable to them
                _, missing_path, missing_kwargs = _requests("fs7")[route]
                missing = client.request(method, missing_path, **missing_kwargs)
                assert hidden.status_code == missing.status_code == 404, (who, route, hidden.text)
                assert hidden.json() == {"error": missing.json()["error"].replace("fs7", "fs2")}, (who, route)
                assert "fs2," not in hidden.text and "fs2 " not in hidden.text
        # what the message lists and suggests: only what the caller may read
        assert server.client("reader").get("/v1/feature-sets/fs3/1").json() == {
            "error": "feature set 'fs3' not found; feature sets you may read: fs1 (did you mean 'fs1'?)"}
        assert server.client("reader").get("/v1/feature-sets/fs1/9").json() == {
            "error": "feature set fs1 has no version 9; versions: 1"}
        assert server.client("nobody").get("/v1/feature-sets/fs1/1").json() == {
            "error": "feature set 'fs1' not found; you may read no feature sets (an Owner grants access with "
                     "`gristmill access grant`)"}
        owner = server.client("owner").get("/v1/feature-sets/fs3/1").json()["error"]
        assert owner == "feature set 'fs3' not found; feature sets you may read: fs1, fs2 (did you mean 'fs2'?)"
        # the reader may read fs1's catalog but not materialize it: that refusal is a 403, as before
        assert server.client("reader").post("/v1/feature-sets/fs1/1/backfill", json=WINDOW).status_code == 403
        # models and jobs of an unreadable feature set: as if missing
        reader = server.client("reader")
        hidden_model, missing_model = reader.get("/v1/models/m_fs2/1"), reader.get("/v1/models/m_none/1")
        assert hidden_model.status_code == missing_model.status_code == 404
        assert hidden_model.json() == {"error": "model 'm_fs2' not found; you may read no models (an Owner grants "
                                                "access with `gristmill access grant`)"}
        assert missing_model.json()["error"] == hidden_model.json()["error"].replace("m_fs2", "m_none")
        [job] = store.backfill("fs2", 1, start="2024-01-01", end="2024-01-10")
        hidden_job, missing_job = reader.get(f"/v1/jobs/{job.id}"), reader.get("/v1/jobs/000000000000")
        assert hidden_job.status_code == missing_job.status_code == 404
        assert hidden_job.json()["error"] == missing_job.json()["error"].replace("000000000000", job.id)
        assert reader.post(f"/v1/jobs/{job.id}/cancel").status_code == 404
        # the web UI's feature set page: the same
        browser = server.browser("reader")
        page, absent = browser.get("/ui/feature-sets/fs2/1"), browser.get("/ui/feature-sets/fs7/1")
        assert page.status_code == absent.status_code == 404
        assert page.text == absent.text.replace("fs7", "fs2") and "fs2," not in page.text
        # every refusal is still in the audit log
        denied = server.client("owner").get("/v1/audit", params={"denied_only": True, "limit": 1000}).json()
        assert {("reader", "catalog.read", "featureset:fs2:1"), ("nobody", "catalog.read", "featureset:fs1:1")} <= {
            (e["principal"], e["action"], e["resource"]) for e in denied}


def test_ui_models_page_with_a_model_of_another_store(tmp_path: Path) -> None:
    """A model using another store's features: /ui/models lists it (it was a 404 for everyone)."""
    make_store(tmp_path / "risk", name="risk")
    store = make_store(tmp_path / "main", name="main")
    config = yaml.safe_load((store.path / "featurestore.yaml").read_text())
    config["peers"] = {"risk": str(tmp_path / "risk" / "store")}
    (store.path / "featurestore.yaml").write_text(yaml.safe_dump(config))
    store = gm.FeatureStore(store.path)
    assert store.register_model("blend", 1, ["fs1:1:f1", "risk/fs2:1:f1"]) == "created"
    assert store.register_model("remote_only", 1, ["risk/fs1:1:f1"]) == "created"
    tokens = add_principals(store)
    with serve(store, tokens) as server:
        for who, shown in (("owner", ["blend:1", "remote_only:1"]), ("reader", ["blend:1"]), ("nobody", [])):
            page = server.browser(who).get("/ui/models")
            assert page.status_code == 200, page.text
            assert [m for m in ("blend:1", "remote_only:1") if f"<td>{m}</td>" in page.text] == shown, who
            models = server.client(who).get("/v1/models").json()
            assert [m["ref"] for m in models] == shown, who
        page = server.browser("reader").get("/ui/models").text
        assert "<a href='/ui/feature-sets/fs1/1'>fs1:1</a>, risk/fs2:1" in page      # no page for another store's
        assert "blend:1" in server.browser("reader").get("/ui/feature-sets/fs1/1").text


@pytest.mark.parametrize("registry", REGISTRIES)
def test_concurrent_ui_retries_make_one_job(tmp_path: Path, request: pytest.FixtureRequest, registry: str) -> None:
    store = make_store(tmp_path, registry=registry_of(request, registry))
    records = store.materializer.records
    queued = records.create_job("fs1", "1", start=datetime(2024, 1, 1), end=datetime(2024, 1, 10), stores=["offline"])
    cancelled = store.cancel_job(queued.id)
    assert cancelled.status.value == "Cancelled"
    tokens = add_principals(store)
    with serve(store, tokens) as server:
        browsers = [server.browser("owner") for _ in range(8)]
        with ThreadPoolExecutor(max_workers=8) as pool:
            answers = list(pool.map(lambda b: b.post(f"/ui/jobs/{queued.id}/retry", follow_redirects=False),
                                    browsers))
        assert sorted(a.status_code for a in answers) == [303] + [400] * 7, [a.text[-300:] for a in answers]
        refused = next(a for a in answers if a.status_code == 400).text
        assert f"over the window of job {queued.id}; nothing to retry" in refused
        deadline = time.monotonic() + 60
        while True:
            retries = [j for j in records.list_jobs(feature_set="fs1") if j.id != queued.id]
            if (len(retries) == 1 and retries[0].status.finished) or time.monotonic() > deadline:
                break
            time.sleep(0.1)
        assert [j.status.value for j in retries] == ["Completed"], retries
        # a second click after the retry completed: nothing left to retry
        again = browsers[0].post(f"/ui/jobs/{queued.id}/retry", follow_redirects=False)
        assert again.status_code == 400 and f"job {retries[0].id} is already completed" in again.text
    assert len(records.list_jobs(feature_set="fs1")) == 2


@pytest.mark.parametrize("registry", REGISTRIES)
def test_job_lists_filter_before_they_cut(tmp_path: Path, request: pytest.FixtureRequest, registry: str) -> None:
    store = make_store(tmp_path, registry=registry_of(request, registry))
    [readable] = store.backfill("fs1", 1, start="2024-01-01", end="2024-01-10")
    records = store.materializer.records
    first = datetime(2024, 2, 1)
    for hour in range(230):            # newer jobs the reader may not see: more than one page of the registry
        records.create_job("fs2", "1", start=first + timedelta(hours=hour), end=first + timedelta(hours=hour + 1),
                           stores=["offline"])
    tokens = add_principals(store)
    with serve(store, tokens) as server:
        reader = server.client("reader")
        assert [j["id"] for j in reader.get("/v1/jobs", params={"limit": 1}).json()] == [readable.id]
        assert [j["id"] for j in reader.get("/v1/jobs").json()] == [readable.id]
        assert len(server.client("owner").get("/v1/jobs", params={"limit": 1000}).json()) == 231
        assert len(server.client("owner").get("/v1/jobs", params={"limit": 5}).json()) == 5
        assert server.client("nobody").get("/v1/jobs", params={"limit": 1}).json() == []
        page = server.browser("reader").get("/ui/jobs")
        assert page.status_code == 200 and readable.id in page.text
        # the owner's job pages: 50 a page, newest first, the last page holding the one left over
        owner = server.browser("owner")
        shown = [re.findall(r"<tr><td>(\w{12})</td>", owner.get("/ui/jobs", params={"page_number": n}).text)
                 for n in range(1, 6)]
        assert [len(ids) for ids in shown] == [50, 50, 50, 50, 31] and shown[4][-1] == readable.id
        assert len({i for ids in shown for i in ids}) == 231
        last = owner.get("/ui/jobs", params={"page_number": 5}).text
        assert "page_number=4" in last and "page_number=6" not in last
        assert owner.get("/ui/jobs", params={"page_number": "many"}).status_code == 200     # the first page


@pytest.mark.parametrize("registry", REGISTRIES)
def test_a_flood_of_refusals_writes_one_audit_row_a_minute(tmp_path: Path, request: pytest.FixtureRequest,
                                                           registry: str) -> None:
    store = make_store(tmp_path, registry=registry_of(request, registry))
    tokens = add_principals(store)
    with serve(store, tokens) as server:
        nobody, reader = server.client("nobody"), server.client("reader")
        started = time.perf_counter()
        for _ in range(300):
            assert nobody.get("/v1/feature-sets/fs2/1").status_code in (403, 404)   # 404 since unreadable = missing
        for _ in range(20):
            assert reader.post("/v1/feature-sets/fs1/1/backfill", json=WINDOW).status_code == 403
        elapsed = time.perf_counter() - started
        entries = server.client("owner").get("/v1/audit", params={"denied_only": True, "limit": 1000}).json()
    rows = {(e["principal"], e["action"], e["resource"]): e for e in entries}
    assert len(entries) == len(rows) == 2, entries
    assert rows[("nobody", "catalog.read", "featureset:fs2:1")]["count"] == 300
    assert rows[("reader", "materialize", "featureset:fs1:1")]["count"] == 20
    assert "reader may not materialize on featureset:fs1:1" in rows[("reader", "materialize", "featureset:fs1:1")][
        "detail"]
    print(f"320 refused requests in {elapsed:.2f} s, {len(entries)} audit rows")
    # the CLI reads the same rows with their counts
    listed = gm.FeatureStore(store.path)
    from gristmill.auth import AccessRecords

    counts = {(e.principal, e.resource): e.count for e in AccessRecords(listed.materializer.records).audit_entries(
        denied_only=True)}
    assert counts == {("nobody", "featureset:fs2:1"): 300, ("reader", "featureset:fs1:1"): 20}


def test_one_audit_row_per_minute_then_a_new_one(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """After the minute, the same refusal starts a new row; the last minute's row keeps its full count."""
    from gristmill.auth import AccessDeniedError, AccessRecords, Action, Resource
    from gristmill.auth import records as access_records

    store = make_store(tmp_path)
    access = AccessRecords(store.materializer.records)
    access.add_principal("nobody")
    clock = [1000.0]
    monkeypatch.setattr(access_records.time, "monotonic", lambda: clock[0])
    resource = Resource("featureset", "fs1", "1", ("account",))
    for step in (0.0, 0.1, 0.2, 30.0, 59.0, 61.0, 61.5):
        clock[0] = 1000.0 + step
        with pytest.raises(AccessDeniedError):
            access.check("nobody", Action.READ_CATALOG, resource)
    entries = access.audit_entries(denied_only=True)
    assert [e.count for e in entries] == [2, 5]            # newest first


def test_ui_search_filters_before_it_cuts(tmp_path: Path) -> None:
    store = make_store(tmp_path)
    big = tmp_path / "big"
    (big / "spec").mkdir(parents=True)
    features = [{"name": f"x{i:03d}", "type": "double", "description": "needle"} for i in range(300)]
    (big / "FeatureSet.yaml").write_text(yaml.safe_dump({"name": "big", "version": "1",
                                                         "specification": {"path": "./spec"}}))
    (big / "spec" / "FeatureSetSpec.yaml").write_text(yaml.safe_dump({
        "source": {"type": "parquet", "path": str(tmp_path / "data" / "rows.parquet"),
                   "timestamp_column": {"name": "ts"}},
        "index_columns": [{"name": "acct", "type": "string"}], "features": features,
        "feature_transformation": {"transformation_sql": "SELECT acct, ts, "
                                   + ", ".join(f"f1 AS x{i:03d}" for i in range(300)) + " FROM source"}}))
    assert store.apply(big).ok
    store.update_feature_set("fs1", 1, tags={"kind": "needle"})      # fs1's features match through its tags
    tokens = add_principals(store)
    with serve(store, tokens) as server:
        assert len(server.client("owner").get("/v1/features/search", params={"q": "needle", "limit": 1000}).json()) \
            == 301
        page = server.browser("reader").get("/ui", params={"q": "needle"})
    assert page.status_code == 200
    assert "1 feature(s) matching" in page.text and "fs1:1:f1" in page.text
