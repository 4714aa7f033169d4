"""Bad input and unavailable stores over real HTTP against ``gristmill serve``: every bad request is a 4xx
naming the parameter or field (never a 500), request models are strict, names and descriptions have
limits, and a store that cannot be reached is a 503 with ``Retry-After`` that the SDK raises as
``StoreUnavailableError``."""

from __future__ import annotations

import io
from collections.abc import Iterator
from datetime import datetime
from pathlib import Path
from typing import Any

import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from redis_servers import RedisServer
from served_store import Served, make_store, parquet_bytes, serving

import gristmill as gm

HUGE = "9999999999999999999999999"


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Served]:
    store_path, tokens = make_store(tmp_path_factory.mktemp("inputs"))
    with serving(store_path, tokens) as running:
        yield running



# -- item 7: 4xx, never 5xx ---------------------------------------------------------------------------------
@pytest.mark.parametrize(("path", "named"), [
    (f"/v1/jobs?limit={HUGE}", "limit (query parameter)"),
    (f"/v1/audit?limit={HUGE}", "limit (query parameter)"),
    (f"/v1/features/search?q=f&limit={HUGE}", "limit (query parameter)"),
    ("/v1/jobs?limit=-1", "limit (query parameter)"),
    ("/v1/audit?limit=0", "limit (query parameter)"),
    ("/v1/jobs?limit=abc", "limit (query parameter)"),
])
def test_out_of_range_limits_are_4xx(served: Served, path: str, named: str) -> None:
    response = served.client().get(path)
    assert 400 <= response.status_code < 500, response.text
    assert named in response.json()["error"]


@pytest.mark.parametrize(("times", "status", "named"), [
    (pa.array(["hello"]), 400, "timestamp_column 'ts' has 1 value(s) that are not ISO 8601 times, e.g. 'hello'"),
    (pa.array(["2024-01-09", "not a time"]), 400, "not ISO 8601 times"),
    (pa.array([1, 2]), 400, "timestamp_column 'ts' has type BIGINT"),
    (pa.array([datetime(1, 1, 1)], pa.timestamp("us")), 200, None),
    (pa.array(["0001-01-01T00:00:00"]), 200, None),
    (pa.array([datetime(9999, 12, 31, 23, 59, 59, 999999)], pa.timestamp("us")), 200, None),
])
def test_observation_times_are_checked(served: Served, times: pa.Array, status: int, named: str | None) -> None:
    table = pa.table({"acct": pa.array(["A"] * len(times)), "ts": times})
    response = served.client("reader").post("/v1/offline/features", params={"features": "fs1:1:f1",
                                                                            "timestamp_column": "ts"},
                                            content=parquet_bytes(table),
                                            headers={"content-type": "application/vnd.apache.parquet"})
    assert response.status_code == status, response.text
    if named is not None:
        assert named in response.json()["error"]
    else:
        assert pq.read_table(io.BytesIO(response.content)).column("f1").to_pylist() == [None] * len(times)


def test_online_now_in_year_one_is_answered(served: Served) -> None:
    body = {"features": ["fs1:1:f1"], "entities": {"acct": ["A"]}, "now": "0001-01-01T00:00:00"}
    response = served.client("reader").post("/v1/online/features", json=body)
    assert response.status_code < 500, response.text


# -- item 13: strict request models -------------------------------------------------------------------------
ONLINE = {"features": ["fs1:1:f1"], "entities": {"acct": ["A"]}}


@pytest.mark.parametrize(("change", "named"), [
    ({"full_feature_names": 0}, "full_feature_names: Input should be a valid boolean"),
    ({"full_feature_names": 1}, "full_feature_names: Input should be a valid boolean"),
    ({"full_feature_names": "true"}, "full_feature_names: Input should be a valid boolean"),
    ({"explain": "yes"}, "explain: Input should be a valid boolean"),
    ({"features": "fs1:1:f1"}, "features: Input should be a valid list"),
    ({"features": [1]}, "features.0: Input should be a valid string"),
])
def test_online_request_fields_are_strict(served: Served, change: dict[str, Any], named: str) -> None:
    response = served.client("reader").post("/v1/online/features", json=ONLINE | change)
    assert response.status_code == 422, response.text
    assert named in response.json()["error"]


@pytest.mark.parametrize("value", ["2", "maybe", ""])
def test_offline_boolean_query_parameters_are_strict(served: Served, value: str) -> None:
    table = pa.table({"acct": ["A"], "ts": pa.array([datetime(2024, 1, 9, 13)], pa.timestamp("us"))})
    response = served.client("reader").post(
        "/v1/offline/features", params={"features": "fs1:1:f1", "timestamp_column": "ts", "full_feature_names": value},
        content=parquet_bytes(table), headers={"content-type": "application/vnd.apache.parquet"})
    assert response.status_code == 422, response.text
    assert "full_feature_names (query parameter)" in response.json()["error"]


def test_openapi_documents_errors_security_and_the_parquet_body(served: Served) -> None:
    document = served.client(None).get("/openapi.json").json()
    schemes = document["components"]["securitySchemes"]
    assert any(s.get("type") == "http" and s.get("scheme") == "bearer" for s in schemes.values()), schemes
    error_schema = document["components"]["schemas"]["Error"]
    assert error_schema["required"] == ["error"]
    offline = document["paths"]["/v1/offline/features"]["post"]
    assert "application/vnd.apache.parquet" in offline["requestBody"]["content"]
    assert offline["requestBody"]["required"] is True
    for path, item in document["paths"].items():
        for method, operation in item.items():
            codes = set(operation["responses"])
            if path == "/health":
                assert "security" not in operation or operation["security"] == []
                continue
            assert {"400", "401", "403", "503"} <= codes, (method, path, codes)
            assert operation["responses"]["401"]["content"]["application/json"]["schema"] == {
                "$ref": "#/components/schemas/Error"}
            assert operation.get("security"), (method, path)
    assert "413" in offline["responses"]
    assert "404" in document["paths"]["/v1/feature-sets/{name}/{version}"]["get"]["responses"]


# -- item 14: names and descriptions have limits --------------------------------------------------------------
@pytest.mark.parametrize(("body", "named"), [
    ({"features": ["x" * 100_000 + ":1:f1"], "entities": {"acct": ["A"]}}, "features.0"),
    ({"features": ["fs1:1:f1"] * 1_001, "entities": {"acct": ["A"]}}, "features"),
])
def test_online_request_sizes_are_limited(served: Served, body: dict[str, Any], named: str) -> None:
    response = served.client("reader").post("/v1/online/features", json=body)
    assert response.status_code == 422, response.text[:300]
    assert response.json()["error"].startswith(named) and len(response.json()["error"]) < 300


@pytest.mark.parametrize("path", ["/v1/feature-sets/" + "x" * 60_000 + "/1", "/v1/jobs?feature_set=" + "x" * 10_000])
def test_long_names_in_routes_are_4xx(served: Served, path: str) -> None:
    response = served.client().get(path)
    assert response.status_code == 414, response.text[:300]
    assert "more than the limit of 8,192" in response.json()["error"] and len(response.text) < 1_000


# (field, value, what the error names): asset YAML beyond the documented limits is refused by apply
LONG = "x" * 100_000
ASSET_LIMITS = [
    ("name", LONG, "feature set name 'xxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxx'... (100,000 characters) is longer "
                   "than 128 characters"),
    ("name", "x" * 129, "is longer than 128 characters"),
    ("description", LONG, "description has 100,000 characters, more than the limit of 10,000"),
    ("tags", {f"t{i}": "v" for i in range(101)}, "tags has 101 entries, more than the limit of 100"),
    ("tags", {"team": LONG}, "tag 'team': value is longer than 1,000 characters"),
    ("tags", {"k" * 200: "v"}, "tag name"),
]


@pytest.mark.parametrize(("field", "value", "named"), ASSET_LIMITS, ids=[f"{a[0]}-{a[2][:20]}" for a in ASSET_LIMITS])
def test_asset_fields_have_limits(tmp_path: Path, field: str, value: Any, named: str) -> None:
    import yaml
    from repo_support import write_fs1_repo

    (tmp_path / "rows.parquet").write_bytes(b"")
    repo = write_fs1_repo(tmp_path, source=tmp_path / "rows.parquet", settings={})
    asset_file = repo / "fs" / "FeatureSet.yaml"
    asset_file.write_text(yaml.safe_dump(yaml.safe_load(asset_file.read_text()) | {field: value}))
    plan = gm.FeatureStore.init(tmp_path / "store").apply(repo, check_source=False)
    [invalid] = [item for item in plan.items if item.action == "invalid"]
    assert f"FeatureSet.yaml: {field}: " in invalid.detail and named in invalid.detail, invalid.detail[:500]
    assert len(invalid.detail) < 500


@pytest.mark.parametrize(("where", "named"), [
    ({"features": [{"name": "f" * 129, "type": "double"}]}, "feature name 'fff"),
    ({"features": [{"name": "f1", "type": "double", "description": LONG}]}, "description has 100,000 characters"),
    ({"index_columns": [{"name": "a" * 129, "type": "string"}]}, "column name 'aaa"),
])
def test_spec_names_and_descriptions_have_limits(tmp_path: Path, where: dict[str, Any], named: str) -> None:
    with pytest.raises(gm.SpecError, match=r"longer than 128 characters|more than the limit of 10,000") as caught:
        gm.FeatureSetSpec.from_dict({"source": {"type": "parquet", "path": "x.parquet",
                                                "timestamp_column": {"name": "ts"}},
                                     "index_columns": [{"name": "acct", "type": "string"}],
                                     "features": [{"name": "f1", "type": "double"}]} | where, folder=tmp_path)
    assert named in str(caught.value) and len(str(caught.value)) < 500


# -- item 8: a store that cannot be reached is 503, and the SDK says so -------------------------------------
@pytest.fixture
def redis_store(tmp_path: Path) -> Iterator[tuple[RedisServer, Served]]:
    redis_server = RedisServer(tmp_path / "redis", persistent=False)
    redis_server.start()
    try:
        store_path, tokens = make_store(tmp_path / "root", online_store=redis_server.url)
        with serving(store_path, tokens) as running:
            yield redis_server, running
    finally:
        redis_server.kill()


def test_redis_down_is_503_with_retry_after_and_a_distinct_sdk_error(
        redis_store: tuple[RedisServer, Served]) -> None:
    redis_server, running = redis_store
    with running.client("reader") as http:
        assert http.post("/v1/online/features", json=ONLINE).json()["columns"]["f1"] == [5.0]
        remote = gm.FeatureStore.connect(running.url, token=running.tokens["reader"])
        assert remote.get_online_features(["fs1:1:f1"], {"acct": ["B"]}).to_dict()["f1"] == [9.0]

        redis_server.kill()
        response = http.post("/v1/online/features", json=ONLINE)
        assert response.status_code == 503, response.text
        assert int(response.headers["retry-after"]) > 0
        assert "cannot reach Redis" in response.json()["error"]
        # a bad request is still the caller's mistake, whatever the state of the store
        refused = http.post("/v1/online/features", json={"features": ["nope:1:f1"], "entities": {"acct": ["A"]}})
        assert refused.status_code == 404, refused.text

    with pytest.raises(gm.StoreUnavailableError, match="cannot reach Redis") as caught:
        remote.get_online_features(["fs1:1:f1"], {"acct": ["B"]})
    assert caught.value.retry_after is not None and caught.value.retry_after > 0
    with pytest.raises(gm.GristmillError) as bad:
        remote.get_online_features(["fs1:1:nope"], {"acct": ["B"]})
    assert not isinstance(bad.value, gm.StoreUnavailableError)
    remote.close()

    local = gm.FeatureStore(running.store_path)
    with pytest.raises(gm.StoreUnavailableError, match="cannot reach Redis"):
        local.get_online_features(["fs1:1:f1"], {"acct": ["B"]})
    assert issubclass(gm.OnlineStoreError, gm.StoreUnavailableError)


def test_a_redis_that_stops_answering_is_503_after_its_timeout_and_the_server_stays_up(tmp_path: Path) -> None:
    """Lookups wait for Redis on the server's event loop: while Redis is frozen (alive, answering nothing)
    each waiting lookup gets 503 after ``timeout_seconds``, and every other route answers meanwhile."""
    import signal
    import threading
    import time

    import httpx
    import yaml

    redis_server = RedisServer(tmp_path / "redis", persistent=False)
    redis_server.start()
    assert redis_server.process is not None
    try:
        store_path, tokens = make_store(tmp_path / "root", online_store=redis_server.url)
        config_file = store_path / "featurestore.yaml"
        config = yaml.safe_load(config_file.read_text())
        config["online_store"]["timeout_seconds"] = 1.5
        config_file.write_text(yaml.safe_dump(config))
        with serving(store_path, tokens) as running, running.client("reader") as http:
            for _ in range(3):          # the first fills the caches (on a thread), the next ones use the loop's
                assert http.post("/v1/online/features", json=ONLINE).json()["columns"]["f1"] == [5.0]
            redis_server.process.send_signal(signal.SIGSTOP)
            answers: list[httpx.Response] = []

            def lookup() -> None:
                with running.client("reader") as own:
                    answers.append(own.post("/v1/online/features", json=ONLINE))

            started = time.monotonic()
            waiting = [threading.Thread(target=lookup) for _ in range(8)]
            for thread in waiting:
                thread.start()
            time.sleep(0.3)
            health = http.get("/health")                      # answered while the lookups wait
            assert health.status_code == 200 and time.monotonic() - started < 1.4
            for thread in waiting:
                thread.join(30)
            assert [a.status_code for a in answers] == [503] * 8, [a.text for a in answers]
            assert all("cannot reach Redis" in a.json()["error"] and "1.5 s" in a.json()["error"] for a in answers), \
                [a.json()["error"] for a in answers]
            assert int(answers[0].headers["retry-after"]) > 0
            assert time.monotonic() - started < 6
            redis_server.process.send_signal(signal.SIGCONT)
            assert http.post("/v1/online/features", json=ONLINE).json()["columns"]["f1"] == [5.0]
    finally:
        if redis_server.process.poll() is None:
            redis_server.process.send_signal(signal.SIGCONT)
        redis_server.kill()


def test_a_server_that_cannot_be_reached_is_store_unavailable() -> None:
    from redis_servers import free_port

    remote = gm.FeatureStore.connect(f"http://127.0.0.1:{free_port()}", token="gm_x_y")
    with pytest.raises(gm.StoreUnavailableError, match="cannot reach the feature store server"):
        remote.get_online_features(["fs1:1:f1"], {"acct": ["B"]})
    remote.close()


def test_frames_round_trip(served: Served) -> None:
    """The normal path still works: a Reader's point-in-time retrieval over HTTP."""
    table = pa.table({"acct": ["A", "B"], "ts": pa.array([datetime(2024, 1, 9, 13)] * 2, pa.timestamp("us"))})
    response = served.client("reader").post("/v1/offline/features", params={"features": "fs1:1:f1",
                                                                            "timestamp_column": "ts"},
                                            content=parquet_bytes(table),
                                            headers={"content-type": "application/vnd.apache.parquet"})
    assert response.status_code == 200, response.text
    assert pd.read_parquet(io.BytesIO(response.content))["f1"].tolist() == [5.0, 9.0]
