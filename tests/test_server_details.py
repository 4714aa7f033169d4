"""Details of the REST server over real HTTP (uvicorn on a free port): every error answers the documented
``{"error": "..."}`` shape (validation errors naming the field, unknown routes, wrong methods), ``/ui``
errors are pages in the UI's layout, and ``/docs`` works offline (its scripts and styles come from the
server itself)."""

from __future__ import annotations

import re
from collections.abc import Iterator
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
from gristmill.server.ui import COOKIE


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[str, str]]:
    """(URL, an Owner's token) of a server over a store with ``fs1:1``."""
    root = tmp_path_factory.mktemp("server_details")
    (root / "data").mkdir()
    pd.DataFrame({"acct": ["A"], "ts": pd.Series([datetime(2024, 1, 9)]).astype("datetime64[us]"),
                  "f1": [1.0]}).to_parquet(root / "data" / "rows.parquet")
    repo = write_fs1_repo(root, source=root / "data" / "rows.parquet", settings={"offline_enabled": True})
    store = gm.FeatureStore.init(root / "store")
    assert store.apply(repo).ok
    access = AccessRecords(store.materializer.records)
    access.add_principal("owner")
    access.grant("owner", "Owner", "store", by="test")
    token = access.create_token("owner")
    with served(create_app(store, auth=True)) as url:
        yield url, token


def _client(server: tuple[str, str], *, signed_in: bool = True) -> httpx.Client:
    url, token = server
    return httpx.Client(base_url=url, headers={"Authorization": f"Bearer {token}"} if signed_in else {}, timeout=30)


@pytest.mark.parametrize(("request_kwargs", "fragments"), [
    ({"json": {"features": [], "entities": {"acct": ["A"]}}}, ["features: ", "at least 1 item"]),
    ({"json": {"features": ["fs1:1:f1"]}}, ["entities: ", "required"]),
    ({"json": {"features": "fs1:1:f1", "entities": {"acct": ["A"]}}}, ["features: ", "list"]),
    ({"content": b"{not json", "headers": {"content-type": "application/json"}}, ["request body: ", "JSON"]),
])
def test_malformed_bodies_are_422_naming_the_field(server: tuple[str, str], request_kwargs: dict[str, object],
                                                    fragments: list[str]) -> None:
    response = _client(server).post("/v1/online/features", **request_kwargs)  # type: ignore[arg-type]
    assert response.status_code == 422, response.text
    body = response.json()
    assert set(body) == {"error"}, body
    for fragment in fragments:
        assert fragment in body["error"], body


def test_bad_query_parameters_are_422_naming_the_parameter(server: tuple[str, str]) -> None:
    response = _client(server).get("/v1/jobs", params={"limit": "many"})
    assert response.status_code == 422
    assert response.json()["error"].startswith("limit (query parameter): "), response.json()


def test_unknown_routes_and_methods_answer_the_error_shape(server: tuple[str, str]) -> None:
    with _client(server) as client:
        unknown = client.get("/v1/nothing-here")
        wrong_method = client.delete("/v1/jobs")
    assert unknown.status_code == 404 and unknown.json() == {
        "error": "no route GET /v1/nothing-here; the routes are listed at /docs"}
    assert wrong_method.status_code == 405 and set(wrong_method.json()) == {"error"}
    assert wrong_method.json()["error"] == "/v1/jobs does not take DELETE; use GET"
    assert wrong_method.headers["allow"] == "GET"


def test_the_remote_store_reports_a_malformed_request_in_words(server: tuple[str, str]) -> None:
    url, token = server
    remote = gm.FeatureStore.connect(url, token=token)
    with pytest.raises(gm.GristmillError) as raised:
        remote._call("POST", "/v1/online/features", json={"features": [], "entities": {}})
    assert "malformed: features: " in str(raised.value) and "detail" not in str(raised.value)


def test_ui_pages_that_do_not_exist_are_pages(server: tuple[str, str]) -> None:
    url, token = server
    with httpx.Client(base_url=url, timeout=30) as browser:
        signed_out = browser.get("/ui/no-such-page")
        assert signed_out.status_code == 404 and signed_out.headers["content-type"].startswith("text/html")
        assert "there is no page /ui/no-such-page" in signed_out.text and "href='/ui'" in signed_out.text
        session = browser.post("/ui/login", data={"token": token, "next": "/ui"}, follow_redirects=False)
        assert session.status_code == 303
        browser.cookies.set(COOKIE, session.cookies[COOKIE])
        signed_in = browser.get("/ui/feature-sets/fs1/1/nothing")
        wrong_method = browser.delete("/ui/jobs")
    assert signed_in.status_code == 404 and "<h1>Not found</h1>" in signed_in.text
    assert "/ui/jobs" in signed_in.text and "sign out" in signed_in.text        # the layout, signed in
    assert wrong_method.status_code == 405 and wrong_method.headers["content-type"].startswith("text/html")
    assert "/ui/jobs does not take DELETE" in wrong_method.text


@pytest.mark.parametrize("page", ["/docs", "/redoc"])
def test_api_docs_load_nothing_from_other_sites(server: tuple[str, str], page: str) -> None:
    with _client(server, signed_in=False) as client:
        html = client.get(page)
        assert html.status_code == 200
        urls = re.findall(r"""(?:src|href|spec-url)\s*=\s*['"]([^'"]+)['"]""", html.text)
        urls += re.findall(r"""\burl\s*:\s*['"]([^'"]+)['"]""", html.text)
        assert "http://" not in html.text and "https://" not in html.text     # no CDN, no fonts from elsewhere
        assert not [u for u in urls if "//" in u], html.text
        assert "/openapi.json" in urls
        for url in urls:
            answer = client.get(url)
            assert answer.status_code == 200, url
        scripts = [u for u in urls if u.endswith(".js")]
        assert scripts and all(len(client.get(u).content) > 100_000 for u in scripts)


def test_the_docs_assets_ship_with_the_package() -> None:
    from importlib.resources import files

    assets = Path(str(files("fastapi_offline") / "static"))
    assert {"swagger-ui-bundle.js", "swagger-ui.css", "redoc.standalone.js"} <= {p.name for p in assets.iterdir()}
