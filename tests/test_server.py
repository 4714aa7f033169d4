"""The REST server over real HTTP (uvicorn on a free port, httpx as the client): token authentication,
role checks per route and scope, the audit log, and the routes' answers against the SDK's."""

from __future__ import annotations

import time
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

import httpx
import pandas as pd
import pytest
from app_server import served
from repo_support import write_fs1_repo

import gristmill as gm
from gristmill.auth import AccessRecords
from gristmill.server.app import create_app

NOW = datetime(2024, 1, 10)


@dataclass
class Server:
    url: str
    store: gm.FeatureStore
    tokens: dict[str, str]
    access: AccessRecords

    def client(self, who: str | None) -> httpx.Client:
        headers = {"Authorization": f"Bearer {self.tokens[who]}"} if who else {}
        return httpx.Client(base_url=self.url, headers=headers, timeout=30)


def _serve(store: gm.FeatureStore, *, auth: bool) -> Iterator[str]:
    with served(create_app(store, auth=auth)) as url:
        yield url


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    root = tmp_path_factory.mktemp("server")
    (root / "data").mkdir()
    pd.DataFrame({"acct": ["A", "A", "B"], "ts": pd.Series([datetime(2024, 1, 8), datetime(2024, 1, 9, 12),
                                                            datetime(2024, 1, 9)]).astype("datetime64[us]"),
                  "f1": [3.0, 5.0, 9.0]}).to_parquet(root / "data" / "rows.parquet")
    repo = write_fs1_repo(root, source=root / "data" / "rows.parquet", lookback_days=2,
                          settings={"offline_enabled": True, "online_enabled": True})
    second = repo / "fs2"
    (second / "spec").mkdir(parents=True)
    (second / "FeatureSet.yaml").write_text((repo / "fs" / "FeatureSet.yaml").read_text().replace("fs1", "fs2"))
    (second / "spec" / "FeatureSetSpec.yaml").write_text((repo / "fs" / "spec" / "FeatureSetSpec.yaml").read_text())
    store = gm.FeatureStore.init(root / "store", clock=lambda: NOW)
    assert store.apply(repo).ok
    for name in ("fs1", "fs2"):
        [job] = store.backfill(name, 1, start="2024-01-01", end="2024-01-10")
        assert job.status.value == "Completed", job.error
    access = AccessRecords(store.materializer.records)
    grants = {"owner": ("Owner", "store"), "reader": ("Reader", "featureset:fs1"),
              "materializer": ("Materializer", "featureset:fs1:1"), "by_entity": ("Consumer", "entity:account"),
              "nobody": None}
    tokens = {}
    for name, grant in grants.items():
        access.add_principal(name, kind="service" if name == "materializer" else "user")
        tokens[name] = access.create_token(name)
        if grant:
            access.grant(name, grant[0], grant[1], by="test")
    for url in _serve(store, auth=True):
        yield Server(url, store, tokens, access)


def test_health_needs_no_token(server: Server) -> None:
    assert server.client(None).get("/health").json() == {"status": "ok", "store": "store"}


@pytest.mark.parametrize(("token", "fragment"), [
    (None, "a valid token is required"), ("gm_000000000000_nope", "not valid"), ("garbage", "a valid token"),
])
def test_missing_or_bad_tokens_are_401(server: Server, token: str | None, fragment: str) -> None:
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    response = httpx.get(f"{server.url}/v1/feature-sets", headers=headers)
    assert response.status_code == 401 and fragment in response.json()["error"]
    assert response.headers["www-authenticate"] == "Bearer"


def test_revoked_and_expired_tokens_are_refused(server: Server) -> None:
    from datetime import timedelta

    server.access.add_principal("temp")
    server.access.grant("temp", "Reader", by="test")
    revoked = server.access.create_token("temp")
    server.access.revoke_token(revoked.split("_")[1])
    expired = server.access.create_token("temp", expires_in=timedelta(seconds=-1))
    for token, fragment in ((revoked, "was revoked"), (expired, "expired at")):
        response = httpx.get(f"{server.url}/v1/feature-sets", headers={"Authorization": f"Bearer {token}"})
        assert response.status_code == 401 and fragment in response.json()["error"]


def test_online_lookup_matches_the_sdk(server: Server) -> None:
    body = {"features": ["fs1:1:f1"], "entities": {"acct": ["A", "B", "C"], "request_id": [1, 2, 3]}}
    response = server.client("reader").post("/v1/online/features", json=body)
    assert response.status_code == 200, response.text
    expected = server.store.get_online_features(["fs1:1:f1"], {"acct": ["A", "B", "C"], "request_id": [1, 2, 3]})
    assert response.json()["columns"] == expected.to_dict() == {"acct": ["A", "B", "C"], "request_id": [1, 2, 3],
                                                                 "f1": [5.0, 9.0, None]}


@pytest.mark.parametrize(("who", "path", "status"), [
    ("reader", "/v1/feature-sets/fs1/1", 200),
    ("reader", "/v1/feature-sets/fs2/1", 404),            # Reader on fs1 only: fs2 answers as if missing
    ("materializer", "/v1/feature-sets/fs1/1", 200),
    ("by_entity", "/v1/feature-sets/fs2/1", 200),         # an entity grant covers its feature sets
    ("nobody", "/v1/feature-sets/fs1/1", 404),
    ("owner", "/v1/feature-sets/fs9/1", 404),
    ("reader", "/v1/feature-sets/fs1/1/intervals", 200),
    ("reader", "/v1/feature-sets/fs1/1/statistics", 200),
    ("reader", "/v1/feature-sets/fs2/1/statistics", 404),     # Reader scoped to fs1: fs2's statistics are hidden
    ("reader", "/v1/feature-sets/fs1/1/freshness", 200),
    ("reader", "/v1/feature-sets/fs2/1/freshness", 404),
    ("by_entity", "/v1/feature-sets/fs2/1/statistics", 200),
    ("nobody", "/v1/feature-sets/fs1/1/statistics", 404),
    ("reader", "/v1/audit", 403),
    ("owner", "/v1/audit", 200),
])
def test_route_permissions(server: Server, who: str, path: str, status: int) -> None:
    response = server.client(who).get(path)
    assert response.status_code == status, response.text
    if status in (403, 404):
        assert response.json()["error"]


def test_online_lookup_needs_online_read_on_every_feature_set(server: Server) -> None:
    body = {"features": ["fs1:1:f1", "fs2:1:f1"], "entities": {"acct": ["A"]}, "full_feature_names": True}
    refused = server.client("reader").post("/v1/online/features", json=body)
    assert refused.status_code == 404                      # fs2 is not readable: answered as if missing
    assert refused.json()["error"].startswith("feature set 'fs2' not found; feature sets you may read: fs1")
    assert server.client("materializer").post("/v1/online/features", json={**body, "features": ["fs1:1:f1"]}
                                              ).status_code == 403     # Materializer does not read features
    allowed = server.client("by_entity").post("/v1/online/features", json=body)
    assert allowed.status_code == 200 and list(allowed.json()["columns"]) == ["acct", "fs1__1__f1", "fs2__1__f1"]


def test_lists_show_only_what_the_caller_may_read(server: Server) -> None:
    items = server.client("reader").get("/v1/feature-sets").json()
    assert [(fs["ref"], fs["freshness"]) for fs in items] == [("fs1:1", "not scheduled")]   # materialized, no schedule
    assert [fs["ref"] for fs in server.client("owner").get("/v1/feature-sets").json()] == ["fs1:1", "fs2:1"]
    assert server.client("nobody").get("/v1/feature-sets").json() == []
    found = server.client("reader").get("/v1/features/search", params={"q": "f1"}).json()
    assert [f["feature"] for f in found] == ["fs1:1:f1"]
    jobs = server.client("reader").get("/v1/jobs").json()
    assert jobs and {j["feature_set"] for j in jobs} == {"fs1:1"}
    assert server.client("owner").get("/v1/entities").json()[0]["name"] == "account"


def test_backfill_and_cancel_need_materialize(server: Server) -> None:
    window = {"start": "2024-01-01T00:00:00", "end": "2024-01-10T00:00:00", "stores": ["offline"]}
    assert server.client("reader").post("/v1/feature-sets/fs1/1/backfill", json=window).status_code == 403
    queued_jobs = server.client("materializer").post("/v1/feature-sets/fs1/1/backfill", json=window)
    assert queued_jobs.status_code == 202, queued_jobs.text          # queued; the server's workers run it
    [job] = queued_jobs.json()
    deadline = time.monotonic() + 30
    while job["status"] in ("Queued", "Running") and time.monotonic() < deadline:
        time.sleep(0.1)
        job = server.client("materializer").get(f"/v1/jobs/{job['id']}").json()
    assert (job["status"], job["rows_written"], job["stores"]) == ("Completed", 3, ["offline"])
    assert server.client("materializer").get(f"/v1/jobs/{job['id']}").json()["id"] == job["id"]
    assert server.client("materializer").post("/v1/feature-sets/fs2/1/backfill", json=window).status_code == 404
    queued = server.store.materializer.records.create_job("fs1", "1", start=datetime(2024, 1, 10),
                                                          end=datetime(2024, 1, 11), stores=["offline"])
    assert server.client("reader").post(f"/v1/jobs/{queued.id}/cancel").status_code == 403
    cancelled = server.client("materializer").post(f"/v1/jobs/{queued.id}/cancel").json()
    assert cancelled["status"] == "Cancelled" and cancelled["error"] == "cancelled by materializer"


def test_denied_actions_land_in_the_audit_log(server: Server) -> None:
    server.client("nobody").get("/v1/feature-sets/fs2/1")
    entries = server.client("owner").get("/v1/audit", params={"denied_only": True, "limit": 500}).json()
    mine = [e for e in entries if e["principal"] == "nobody" and e["resource"] == "featureset:fs2:1"]
    assert mine and mine[0]["action"] == "catalog.read" and mine[0]["allowed"] is False
    assert "nobody may not catalog.read" in mine[0]["detail"]
    everything = server.client("owner").get("/v1/audit", params={"limit": 500}).json()
    assert any(e["action"] == "access.grant" and e["resource"] == "reader Reader on featureset:fs1"
               for e in everything)


def test_bad_requests_are_400_with_the_reason(server: Server) -> None:
    response = server.client("owner").post("/v1/online/features", json={"features": ["fs1:1:nope"],
                                                                       "entities": {"acct": ["A"]}})
    assert response.status_code in (400, 404) and "nope" in response.json()["error"]
    missing_key = server.client("owner").post("/v1/online/features", json={"features": ["fs1:1:f1"],
                                                                          "entities": {"account": ["A"]}})
    assert missing_key.status_code == 400 and "acct" in missing_key.json()["error"]
    assert server.client("owner").post("/v1/online/features", json={"features": []}).status_code == 422


def test_openapi_document_lists_the_routes(server: Server) -> None:
    paths = server.client(None).get("/openapi.json").json()["paths"]
    assert {"/v1/online/features", "/v1/feature-sets", "/v1/jobs", "/v1/features/search", "/v1/audit",
            "/v1/feature-sets/{name}/{version}/statistics", "/v1/feature-sets/{name}/{version}/freshness"} <= set(paths)


def test_without_auth_everyone_may_do_everything(tmp_path: Path) -> None:
    (tmp_path / "data").mkdir()
    pd.DataFrame({"acct": ["A"], "ts": pd.Series([datetime(2024, 1, 9)]).astype("datetime64[us]"),
                  "f1": [1.0]}).to_parquet(tmp_path / "data" / "rows.parquet")
    repo = write_fs1_repo(tmp_path, source=tmp_path / "data" / "rows.parquet", settings={"offline_enabled": True})
    store = gm.FeatureStore.init(tmp_path / "store", clock=lambda: NOW)
    assert store.apply(repo).ok
    for url in _serve(store, auth=False):
        assert httpx.get(f"{url}/v1/whoami").json() == {"principal": "anonymous", "grants": []}
        assert [fs["ref"] for fs in httpx.get(f"{url}/v1/feature-sets").json()] == ["fs1:1"]



# -- the SDK connected to the server --------------------------------------------------------------------


def test_remote_store_answers_like_the_local_one(server: Server) -> None:
    remote = gm.FeatureStore.connect(server.url, token=server.tokens["owner"])
    local = server.store
    assert remote.name == local.name == "store"
    observations = {"acct": ["A", "B", "C"]}
    got, want = remote.get_online_features(["fs1:1:f1"], observations), local.get_online_features(["fs1:1:f1"],
                                                                                                 observations)
    assert got.to_dict() == want.to_dict() and got.types == want.types
    assert got.to_arrow().equals(want.to_arrow())
    assert [fs.ref for fs in remote.list_feature_sets()] == [fs.ref for fs in local.list_feature_sets()]
    remote_fs, local_fs = remote.get_feature_set("fs1", 1), local.get_feature_set("fs1", "1")
    assert remote_fs.spec.feature_names == local_fs.spec.feature_names == ["f1"]
    assert remote_fs.materialization_settings == local_fs.materialization_settings
    assert [e.name for e in remote.list_entities()] == ["account"]
    assert [f.ref for f in remote.search_features("f1")] == [f.ref for f in local.search_features("f1")]
    assert remote.data_intervals("fs1", 1) == local.data_intervals("fs1", "1")
    remote_jobs = remote.list_jobs(feature_set="fs1", version=1)
    assert [j.id for j in remote_jobs] == [j.id for j in local.list_jobs(feature_set="fs1", version="1")]
    assert remote.get_job(remote_jobs[0].id).status == local.get_job(remote_jobs[0].id).status
    assert remote.feature_statistics("fs1", 1) == local.feature_statistics("fs1", 1)
    assert remote.feature_statistics("fs1", 1, store="online") == local.feature_statistics("fs1", 1, store="online")
    sampled = remote.feature_statistics("fs1", 1, start=datetime(2024, 1, 1), end="2024-01-10", sample_rows=2)
    assert sampled == local.feature_statistics("fs1", 1, start="2024-01-01", end="2024-01-10", sample_rows=2)
    assert (sampled.windows[0].rows, sampled.windows[0].sampled, sampled.store) == (2, True, None)
    assert remote.freshness("fs1", 1) == local.freshness("fs1", 1)
    [job] = remote.backfill("fs2", 1, start=datetime(2024, 1, 1), end=datetime(2024, 1, 10))
    assert job.status.value == "Completed" and job.feature_set == "fs2" and job.rows_read == 3
    remote.close()


def test_remote_store_errors_are_the_local_errors(server: Server) -> None:
    reader = gm.FeatureStore.connect(server.url, token=server.tokens["reader"])
    with pytest.raises(gm.NotFoundError, match=r"feature set 'fs2' not found.*HTTP 404"):    # unreadable = missing
        reader.get_online_features(["fs2:1:f1"], {"acct": ["A"]})
    materializer = gm.FeatureStore.connect(server.url, token=server.tokens["materializer"])
    with pytest.raises(gm.AccessDeniedError, match=r"materializer may not online\.read on featureset:fs1:1.*HTTP 403"):
        materializer.get_online_features(["fs1:1:f1"], {"acct": ["A"]})
    with pytest.raises(gm.NotFoundError, match="HTTP 404"):
        reader.get_feature_set("nope", 1)
    with pytest.raises(gm.AccessDeniedError, match="a valid token is required"):
        gm.FeatureStore.connect(server.url).list_jobs()
    with pytest.raises(gm.GristmillError, match=r"preview is not available through the server"):
        reader.preview("fs1", 1, "2024-01-01", "2024-01-02")
    with pytest.raises(gm.NotFoundError, match=r"feature set 'fs2' not found"):
        reader.get_offline_features(["fs2:1:f1"], pd.DataFrame({"acct": ["A"], "ts": [datetime(2024, 1, 9)]}), "ts")
    with pytest.raises(gm.GristmillError, match=r"cannot reach the feature store server at http://127\.0\.0\.1:9"):
        gm.FeatureStore.connect("http://127.0.0.1:9", token="gm_x_y").list_feature_sets()


def test_every_type_crosses_the_wire(tmp_path: Path) -> None:
    """Datetimes, binary, vectors, 64-bit integers and nulls come back from the server as they went in."""
    (tmp_path / "data").mkdir()
    when = datetime(2024, 1, 9, 1, 2, 3, 456789)
    pd.DataFrame({"acct": ["A", "B"], "ts": pd.Series([when, when]).astype("datetime64[us]"),
                  "big": pd.array([2**62, None], dtype="Int64"), "at": pd.Series([when, None]).astype("datetime64[us]"),
                  "blob": [b"\x00\xff", None], "vec": [[1.5, -2.0], None],
                  "flag": pd.array([True, None], dtype="boolean"), "word": ["ü", None]}
                 ).to_parquet(tmp_path / "data" / "rows.parquet")
    features = [{"name": "big", "type": "long"}, {"name": "at", "type": "datetime"}, {"name": "blob", "type": "binary"},
                {"name": "vec", "type": "float_vector"}, {"name": "flag", "type": "boolean"},
                {"name": "word", "type": "string"}]
    repo = write_fs1_repo(tmp_path, source=tmp_path / "data" / "rows.parquet", features=features,
                          settings={"offline_enabled": False, "online_enabled": True})
    store = gm.FeatureStore.init(tmp_path / "store", clock=lambda: NOW)
    assert store.apply(repo).ok
    assert store.backfill("fs1", 1, start="2024-01-01", end="2024-01-10")[0].status.value == "Completed"
    names = [f"fs1:1:{f['name']}" for f in features]
    for url in _serve(store, auth=False):
        got = gm.FeatureStore.connect(url).get_online_features(names, {"acct": ["A", "B"]}).to_dict()
        assert got == store.get_online_features(names, {"acct": ["A", "B"]}).to_dict()
        assert got["big"][0] == 2**62 and got["blob"][0] == b"\x00\xff" and got["at"][0].microsecond == 456789


def test_models_and_lineage_over_http(server: Server) -> None:
    server.store.register_model("m_fs1", 1, ["fs1:1:f1"])
    server.store.register_model("m_both", 1, ["fs1:1:f1", "fs2:1:f1"])
    def mine(refs: list[str]) -> list[str]:                        # other tests share this server
        return [ref for ref in refs if ref.startswith("m_")]

    assert mine([m["ref"] for m in server.client("reader").get("/v1/models").json()]) == ["m_fs1:1"]
    assert mine([m["ref"] for m in server.client("owner").get("/v1/models").json()]) == ["m_both:1", "m_fs1:1"]
    assert server.client("reader").get("/v1/models/m_both/1").status_code == 404     # as if missing
    model = server.client("owner").get("/v1/models/m_both/1").json()
    assert model["retrieval_spec"]["feature_stores"][0]["features"][1] == {"feature_set": "fs2:1",
                                                                            "feature_name": "f1"}
    detail = server.client("reader").get("/v1/feature-sets/fs1/1").json()
    assert mine(detail["used_by_models"]) == ["m_fs1:1"]       # m_both also reads fs2, which reader may not
    assert mine(server.client("owner").get("/v1/feature-sets/fs1/1").json()["used_by_models"]) == ["m_both:1",
                                                                                                  "m_fs1:1"]
    remote = gm.FeatureStore.connect(server.url, token=server.tokens["owner"])
    assert [m.ref for m in remote.models_using("fs2")] == [m.ref for m in server.store.models_using("fs2")]
    assert remote.get_model("m_fs1", 1) == server.store.get_model("m_fs1", 1)
    assert mine([m.ref for m in remote.list_models()]) == ["m_both:1", "m_fs1:1"]


# -- the web UI -----------------------------------------------------------------------------------------


def _browser(server: Server, who: str) -> httpx.Client:
    """A client signed in through the login form (the token ends up in the session cookie)."""
    client = httpx.Client(base_url=server.url, timeout=30)
    response = client.post("/ui/login", data={"token": server.tokens[who], "next": "/ui"})
    assert response.status_code == 303 and response.headers["location"] == "/ui"
    assert "httponly" in response.headers["set-cookie"].lower()
    assert server.tokens[who] not in response.headers["set-cookie"]      # a session token, not the API token
    return client


def test_ui_sign_out_revokes_the_session(server: Server) -> None:
    browser = _browser(server, "reader")
    session = browser.cookies["gristmill_token"]
    assert httpx.get(f"{server.url}/v1/whoami", headers={"Authorization": f"Bearer {session}"}).status_code == 200
    browser.get("/ui/logout")
    import time as clock

    clock.sleep(5.1)                                          # the server trusts what it read for 5 s
    refused = httpx.get(f"{server.url}/v1/whoami", headers={"Authorization": f"Bearer {session}"})
    assert refused.status_code == 401 and "was revoked" in refused.json()["error"]


def test_ui_needs_a_sign_in(server: Server) -> None:
    anonymous = httpx.Client(base_url=server.url)
    response = anonymous.get("/ui/jobs")
    assert response.status_code == 303 and response.headers["location"] == "/ui/login?next=/ui/jobs"
    assert "Sign in" in anonymous.get("/ui/login").text
    refused = anonymous.post("/ui/login", data={"token": "gm_000000000000_nope"})
    assert refused.status_code == 303 and "error=" in refused.headers["location"]
    assert "the token is not valid" in anonymous.get(refused.headers["location"]).text


def test_ui_catalog_and_search_show_what_the_caller_may_read(server: Server) -> None:
    reader = _browser(server, "reader")
    page = reader.get("/ui").text
    assert "/ui/feature-sets/fs1/1" in page and "/ui/feature-sets/fs2/1" not in page
    found = reader.get("/ui", params={"q": "f1"}).text
    assert "1 feature(s) matching" in found and "fs1:1:f1" in found and "fs2:1:f1" not in found
    owner = _browser(server, "owner")
    assert "/ui/feature-sets/fs2/1" in owner.get("/ui").text


def test_ui_feature_set_page(server: Server) -> None:
    server.store.register_model("ui_model", 1, ["fs1:1:f1"])
    page = _browser(server, "reader").get("/ui/feature-sets/fs1/1")
    assert page.status_code == 200
    html = page.text
    for fragment in ("<h1>fs1:1</h1>", "<td>acct</td><td>string</td><td>index column</td>",
                     "<td>f1</td><td>double</td><td>feature</td>", "ui_model:1", "class='timeline'",
                     "<td>Complete</td>", "Recent jobs", "Completed"):
        assert fragment in html, fragment
    refused = _browser(server, "reader").get("/ui/feature-sets/fs2/1")
    assert refused.status_code == 404 and "feature set &#x27;fs2&#x27; not found" in refused.text
    assert _browser(server, "owner").get("/ui/feature-sets/nope/1").status_code == 404


def test_ui_jobs_and_models_pages(server: Server) -> None:
    jobs = _browser(server, "reader").get("/ui/jobs")
    running = [j for j in server.store.list_jobs(feature_set="fs1") if not j.status.finished]    # what reader sees
    refresh = '<meta http-equiv="refresh" content="10">'
    assert jobs.status_code == 200 and (refresh in jobs.text) == bool(running)   # refreshes while jobs may change
    assert "fs1:1" in jobs.text and ">fs2:1<" not in jobs.text
    failed_only = _browser(server, "owner").get("/ui/jobs", params={"status": "Failed"}).text
    assert "<span class='Completed'>" not in failed_only
    server.store.register_model("ui_jobs_model", 1, ["fs2:1:f1"])
    assert "ui_jobs_model:1" in _browser(server, "owner").get("/ui/models").text
    assert "ui_jobs_model:1" not in _browser(server, "reader").get("/ui/models").text      # reads fs1 only


def test_ui_escapes_what_users_wrote(server: Server) -> None:
    server.store.update_feature_set("fs2", 1, description="<script>alert(1)</script>")
    html = _browser(server, "owner").get("/ui/feature-sets/fs2/1").text
    assert "<script>alert(1)</script>" not in html and "&lt;script&gt;alert(1)&lt;/script&gt;" in html


def test_refused_tokens_and_access_changes_are_audited(server: Server) -> None:
    httpx.get(f"{server.url}/v1/whoami", headers={"Authorization": "Bearer gm_abcdefabcdef_wrong"})
    entries = server.access.audit_entries(limit=1000)
    # made-up token ids share one throttled bucket (at most a row a minute, however many requests)
    refused = [e for e in entries if e.action == "authenticate" and e.resource == "token:(unknown)"]
    assert refused and refused[0].allowed is False and refused[0].detail == "the token is not valid"
    for _ in range(20):
        httpx.get(f"{server.url}/v1/whoami", headers={"Authorization": "Bearer gm_abcdefabcdef_wrong"})
    assert len([e for e in server.access.audit_entries(limit=1000) if e.resource == "token:(unknown)"]) == 1
    assert any(e.action == "access.token.create" and "of owner" in e.resource for e in entries)


def test_ui_login_refuses_cross_site_posts(server: Server) -> None:
    response = httpx.post(f"{server.url}/ui/login", data={"token": server.tokens["owner"]},
                          headers={"Origin": "https://evil.example"})
    assert response.status_code == 403 and "set-cookie" not in response.headers


def test_ui_cancel_and_retry_need_materialize(server: Server) -> None:
    queued = server.store.materializer.records.create_job("fs1", "1", start=datetime(2024, 1, 9),
                                                          end=datetime(2024, 1, 10), stores=["offline"])
    reader, materializer = _browser(server, "reader"), _browser(server, "materializer")
    assert f"/ui/jobs/{queued.id}/cancel" not in reader.get("/ui/jobs").text          # no buttons for a Reader
    assert reader.post(f"/ui/jobs/{queued.id}/cancel").status_code == 403
    assert f"/ui/jobs/{queued.id}/cancel" in materializer.get("/ui/jobs").text
    cancelled = materializer.post(f"/ui/jobs/{queued.id}/cancel")
    assert cancelled.status_code == 303 and "cancelled" in materializer.get(cancelled.headers["location"]).text
    assert server.store.get_job(queued.id).status.value == "Cancelled"
    retried = materializer.post(f"/ui/jobs/{queued.id}/retry")
    assert retried.status_code == 303 and "started" in retried.headers["location"]
    import time as clock

    deadline = clock.monotonic() + 30                         # the retry runs in the background
    while True:
        covering = [i for i in server.store.data_intervals("fs1", 1)["offline"]
                    if i.start <= datetime(2024, 1, 9) and i.end >= datetime(2024, 1, 10)]
        if [i.status.value for i in covering] == ["Complete"]:
            break
        assert clock.monotonic() < deadline, covering
        clock.sleep(0.1)
    completed = materializer.post(f"/ui/jobs/{queued.id}/cancel")   # a cancelled job cannot be cancelled again
    assert completed.status_code == 400
    cross_site = materializer.post(f"/ui/jobs/{queued.id}/cancel", headers={"Origin": "https://evil.example"})
    assert cross_site.status_code == 403


def test_ui_backfill_form_needs_materialize_and_this_site(server: Server) -> None:
    reader, materializer = _browser(server, "reader"), _browser(server, "materializer")
    form = {"start": "2024-01-08T00:00", "end": "2024-01-09T00:00", "stores": "offline"}
    assert "Queue backfill" not in reader.get("/ui/feature-sets/fs1/1").text
    assert "Queue backfill" in materializer.get("/ui/feature-sets/fs1/1").text
    assert reader.post("/ui/feature-sets/fs1/1/backfill", data=form).status_code == 403
    assert materializer.post("/ui/feature-sets/fs2/1/backfill", data=form).status_code == 404   # not its to read
    cross_site = materializer.post("/ui/feature-sets/fs1/1/backfill", data=form,
                                   headers={"Origin": "https://evil.example"})
    assert cross_site.status_code == 403
    future = materializer.post("/ui/feature-sets/fs1/1/backfill", data={**form, "end": "2030-01-01T00:00"})
    assert future.status_code == 400 and "<h1>Error</h1>" in future.text
    queued = materializer.post("/ui/feature-sets/fs1/1/backfill", data=form)
    assert queued.status_code == 303 and queued.headers["location"].startswith("/ui/jobs?feature_set=fs1%3A1&done=")
    assert "fs1:1" in materializer.get(queued.headers["location"]).text


def test_ui_sessions_end_with_their_sign_in_token(server: Server) -> None:
    server.access.add_principal("short", kind="user")
    server.access.grant("short", "Reader", by="test")
    api_token = server.access.create_token("short")
    browser = httpx.Client(base_url=server.url)
    assert browser.post("/ui/login", data={"token": api_token}).status_code == 303
    session = browser.cookies["gristmill_token"]
    # a session cannot start another session
    again = httpx.post(f"{server.url}/ui/login", data={"token": session})
    assert again.status_code == 303 and "error=" in again.headers["location"]
    # signing out with an API token in the cookie does not revoke it
    httpx.get(f"{server.url}/ui/logout", cookies={"gristmill_token": api_token})
    assert server.access.authenticate(api_token) == "short"
    # revoking the sign-in token ends the session too
    server.access.revoke_token(api_token.split("_")[1])
    fresh = AccessRecords(server.store.materializer.records)           # no 5-second cache
    with pytest.raises(gm.AccessDeniedError, match="sign-in token was revoked"):
        fresh.authenticate(session)


def test_features_of_other_stores_are_refused_with_a_reason(server: Server) -> None:
    response = server.client("owner").post("/v1/online/features", json={"features": ["risk/fs1:1:f1"],
                                                                       "entities": {"acct": ["A"]}})
    assert response.status_code == 400 and "belongs to another feature store" in response.json()["error"]


def test_training_data_through_the_server_equals_the_local_one(server: Server) -> None:
    times = [datetime(2024, 1, 8, 6), datetime(2024, 1, 9, 6), datetime(2024, 1, 1), datetime(2024, 1, 9)]
    observations = pd.DataFrame({"acct": ["A", "B", "A", "C"], "obs_id": [1, 2, 3, 4],
                                 "ts": pd.Series(times).astype("datetime64[us]")})
    remote = gm.FeatureStore.connect(server.url, token=server.tokens["reader"])
    got = remote.get_offline_features(["fs1:1:f1"], observations, "ts")
    want = server.store.get_offline_features(["fs1:1:f1"], observations, "ts")
    pd.testing.assert_frame_equal(got.to_pandas(), want.to_pandas())
    path = Path(server.store.path) / "observations.parquet"                  # a file, as locally
    observations.to_parquet(path)
    pd.testing.assert_frame_equal(remote.get_offline_features(["fs1:1:f1"], path, "ts").to_pandas(),
                                  want.to_pandas())
    assert got.columns == want.columns == ["acct", "obs_id", "ts", "f1"]
    assert got.to_pandas()["f1"].tolist()[:2] == [3.0, 9.0]
    raw = httpx.post(f"{server.url}/v1/offline/features", params={"features": "fs1:1:f1", "timestamp_column": "ts"},
                     content=b"not parquet", headers={"Authorization": f"Bearer {server.tokens['reader']}"})
    assert raw.status_code == 400 and "observations as Parquet" in raw.json()["error"]
