"""The online route's fast lane over real HTTP: every request, good or bad, gets the same status and body from
the lane as from the framework's route (``fast_online=False``); NaN and infinities cross the wire; the
connected SDK's keep-alive connection survives a server restart and many threads."""

from __future__ import annotations

import math
import random
import threading
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import redis
from app_server import served
from redis_servers import REDIS_URL, free_port
from repo_support import set_limits, write_fs1_repo

import gristmill as gm
from gristmill.auth import AccessRecords
from gristmill.server.app import create_app
from gristmill.server.online import OnlineLane

NOW = datetime(2024, 1, 10)
FEATURES = [{"name": "x", "type": "double"}, {"name": "n", "type": "long"}, {"name": "at", "type": "datetime"},
            {"name": "blob", "type": "binary"}, {"name": "vec", "type": "float_vector"},
            {"name": "flag", "type": "boolean"}, {"name": "word", "type": "string"}, {"name": "small", "type": "float"}]
NAMES = [f"fs1:1:{f['name']}" for f in FEATURES]
KEYS = ["K0", "K1", "K2", "K3", "K4"]


@dataclass
class Lane:
    fast: str
    slow: str
    store: gm.FeatureStore
    tokens: dict[str, str]
    app: Any
    online_store: str

    def answered(self) -> dict[str, int]:
        """How many lookups the fast app's lane answered on its event loop and on its threads."""
        lane = self.app.online_lane
        assert isinstance(lane, OnlineLane), "the app has no online lane"
        return dict(lane.answered)

    def both(self, who: str | None, body: Any = None, *, content: bytes | None = None,
             headers: dict[str, str] | None = None) -> tuple[httpx.Response, httpx.Response]:
        sent = dict(headers or {})
        if who is not None:
            sent["Authorization"] = f"Bearer {self.tokens.get(who, who)}"
        answers = []
        for url in (self.fast, self.slow):
            if content is not None:
                answers.append(httpx.post(f"{url}/v1/online/features", content=content, headers=sent, timeout=30))
            else:
                answers.append(httpx.post(f"{url}/v1/online/features", json=body, headers=sent, timeout=30))
        return answers[0], answers[1]


def _rows() -> pa.Table:
    """Rows written with Arrow, so NaN stays NaN (pandas would write it as null)."""
    when = datetime(2024, 1, 9, 1, 2, 3, 456789)
    frame = pd.DataFrame({
        "acct": KEYS, "ts": pd.Series([when] * 5).astype("datetime64[us]"),
        "x": [1.5, math.nan, math.inf, -math.inf, None], "n": pd.array([2**62, -1, None, 0, 7], dtype="Int64"),
        "at": pd.Series([when, None, when, when, when]).astype("datetime64[us]"),
        "blob": [b"\x00\xff", None, b"", b"a", b"b"], "vec": [[1.5, -2.0], None, [math.inf], [], [0.0]],
        "flag": pd.array([True, None, False, True, False], dtype="boolean"),
        "word": ["ü", None, "", "\"quoted\"", "<b>"]})
    table = pa.Table.from_pandas(frame, preserve_index=False)
    table = table.set_column(table.schema.get_field_index("x"), "x",
                             pa.array([1.5, math.nan, math.inf, -math.inf, None], type=pa.float64()))
    return table.append_column("small", pa.array([0.5, None, math.nan, 1.0, 2.0], type=pa.float32()))


@pytest.fixture(scope="module", params=["sqlite", "redis"])
def lane(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Lane]:
    """The same store served twice, on SQLite (lookups on the lane's threads) and on Redis (lookups on the
    event loop)."""
    root = tmp_path_factory.mktemp("lane")
    (root / "data").mkdir()
    pq.write_table(_rows(), root / "data" / "rows.parquet")
    repo = write_fs1_repo(root, source=root / "data" / "rows.parquet", features=FEATURES,
                          settings={"offline_enabled": False, "online_enabled": True})
    prefix = f"lane-{uuid.uuid4().hex[:12]}"
    gm.FeatureStore.init(root / "store", clock=lambda: NOW, online_prefix=prefix,
                         online_store=REDIS_URL if request.param == "redis" else None).close()
    set_limits(root / "store", {"online_request_max_keys": 50, "request_max_bytes": 20_000})
    store = gm.FeatureStore(root / "store", clock=lambda: NOW)
    assert store.apply(repo).ok
    assert store.backfill("fs1", 1, start="2024-01-01", end="2024-01-10")[0].status.value == "Completed"
    access = AccessRecords(store.materializer.records)
    tokens = {}
    for name, grant in (("owner", "Owner"), ("reader", "Reader"), ("nobody", None)):
        access.add_principal(name)
        if grant:
            access.grant(name, grant, by="test")
        tokens[name] = access.create_token(name)
    fast_app = create_app(store)
    with served(fast_app) as fast, served(create_app(store, fast_online=False)) as slow:
        yield Lane(fast, slow, store, tokens, fast_app, request.param)
    if request.param == "redis":
        client = redis.Redis.from_url(REDIS_URL)
        for name in client.scan_iter(match=f"{prefix}:*", count=1000):
            client.unlink(name)
        client.close()


def _same(fast: httpx.Response, slow: httpx.Response, status: int) -> dict[str, Any]:
    assert fast.status_code == slow.status_code == status, (fast.text, slow.text)
    assert fast.json() == slow.json()
    assert fast.headers["content-type"] == slow.headers["content-type"] == "application/json"
    return dict(fast.json())


def test_answers_are_the_framework_routes(lane: Lane) -> None:
    keys = {"acct": [*KEYS, "unknown", "K0"], "extra": [1, 2.5, "x", None, True, {"a": 1}, [1]]}
    for body in ({"features": NAMES, "entities": keys},
                 {"features": NAMES, "entities": keys, "full_feature_names": True},
                 {"features": NAMES[:2], "entities": keys, "explain": True},
                 {"features": NAMES[:1], "entities": {"acct": ["K0"]}, "now": "2024-01-09T12:00:00"},
                 {"features": NAMES[:1], "entities": {"acct": ["K0"]}, "unknown_field": 1}):
        fast, slow = lane.both("reader", body)
        answer = _same(fast, slow, 200)
        assert fast.content == slow.content                    # the very same bytes
    answer = _same(*lane.both("reader", {"features": NAMES, "entities": keys}), 200)
    columns = answer["columns"]
    assert columns["extra"] == keys["extra"]                   # pass-through columns as sent
    assert columns["x"] == [1.5, "NaN", "Infinity", "-Infinity", None, None, 1.5]
    assert columns["vec"][0] == [1.5, -2.0] and columns["vec"][2] == ["Infinity"]
    assert columns["n"][0] == 2**62 and columns["at"][0] == "2024-01-09T01:02:03.456789+00:00"
    assert columns["blob"][0] == "AP8=" and columns["word"][3] == "\"quoted\"" and columns["small"][2] == "NaN"
    assert answer["types"]["x"] == "double" and answer["types"]["vec"] == "float_vector"


@pytest.mark.parametrize(("who", "body", "status"), [
    ("reader", {"features": [], "entities": {"acct": ["K0"]}}, 422),
    ("reader", {"features": "fs1:1:x", "entities": {"acct": ["K0"]}}, 422),
    ("reader", {"features": ["fs1:1:" + "x" * 400], "entities": {"acct": ["K0"]}}, 404),
    ("reader", {"features": ["fs1:1:" + "x" * 4000], "entities": {"acct": ["K0"]}}, 422),
    ("reader", {"features": ["fs1:1:x"] * 1001, "entities": {"acct": ["K0"]}}, 422),
    ("reader", {"features": [7], "entities": {"acct": ["K0"]}}, 422),
    ("reader", {"features": ["fs1:1:x"], "entities": {"acct": "K0"}}, 422),
    ("reader", {"features": ["fs1:1:x"], "entities": ["K0"]}, 422),
    ("reader", {"features": ["fs1:1:x"]}, 422),
    ("reader", {"features": ["fs1:1:x"], "entities": {"acct": ["K0"]}, "full_feature_names": 1}, 422),
    ("reader", {"features": ["fs1:1:x"], "entities": {"acct": ["K0"]}, "explain": "yes"}, 422),
    ("reader", {"features": ["fs1:1:x"], "entities": {"acct": ["K0"]}, "now": "yesterday"}, 422),
    ("reader", [1, 2], 422),
    ("reader", {"features": ["fs9:1:x"], "entities": {"acct": ["K0"]}}, 404),
    ("reader", {"features": ["fs1:x"], "entities": {"acct": ["K0"]}}, 400),
    ("reader", {"features": ["elsewhere/fs1:1:x"], "entities": {"acct": ["K0"]}}, 400),
    ("reader", {"features": ["fs1:1:nope"], "entities": {"acct": ["K0"]}}, 404),
    ("reader", {"features": ["fs1:1:x"], "entities": {"acct": [5]}}, 400),
    ("reader", {"features": ["fs1:1:x"], "entities": {"account": ["K0"]}}, 400),
    ("reader", {"features": ["fs1:1:x"], "entities": {"acct": ["K0"] * 51}}, 413),
    ("reader", {"features": ["fs1:1:x"], "entities": {"acct": ["K0"], "pad": ["x" * 30_000]}}, 413),
    ("reader", {"features": ["fs1:1:x"], "entities": {"acct": [2**70]}}, 400),
    ("reader", {"features": ["fs1:1:x"], "entities": {"acct": [-(2**63) - 1]}}, 400),
    ("reader", {"features": ["fs1:1:x"], "entities": {"acct": ["K0"], "deep": [{"big": 2**70}]}}, 200),
    ("reader", {"features": ["fs1:1:x"], "entities": {"acct": ["K0"], "wide": [1e300]}}, 200),
    (None, {"features": ["fs1:1:x"], "entities": {"acct": ["K0"]}}, 401),
    ("gm_madeup_secret", {"features": ["fs1:1:x"], "entities": {"acct": ["K0"]}}, 401),
    ("nobody", {"features": ["fs1:1:x"], "entities": {"acct": ["K0"]}}, 404),
])
def test_refusals_are_the_framework_routes(lane: Lane, who: str | None, body: Any, status: int) -> None:
    answer = _same(*lane.both(who, body), status)
    assert status == 200 or (answer["error"] and "Traceback" not in answer["error"])


@pytest.mark.parametrize(("content", "content_type", "status"), [
    (b"{not json", "application/json", 422),
    (b"", "application/json", 422),
    (b'{"features": ["fs1:1:x"], "entities": {"acct": ["\\ud800"]}}', "application/json", 400),
    (b'{"features": ["fs1:1:x"], "entities": {"acct": ["K0"]}}', "text/plain", 422),
    (b'{"features": ["fs1:1:x"], "entities": {"acct": ["K0"]}}', "application/json; charset=utf-8", 200),
    (b'\xff\xfe{"features"', "application/json", 400),
    (b'{"features": ["fs1:1:n"], "features": ["fs1:1:x"], "entities": {"acct": ["K0"]}}', "application/json", 200),
    (b'{"features": ["fs1:1:x"], "entities": {"acct": [NaN]}}', "application/json", 400),
    (b'{"features": ["fs1:1:x"], "entities": {"acct": ["K0"], "pass": [NaN]}}', "application/json", 200),
    (b'{"features": ["fs1:1:x"], "entities": {"acct": ["K0"], "pass": [123456789012345678901234567890]}}',
     "application/json", 200),
])
def test_raw_bodies_are_the_framework_routes(lane: Lane, content: bytes, content_type: str, status: int) -> None:
    _same(*lane.both("reader", content=content, headers={"Content-Type": content_type}), status)


def test_connected_sdk_carries_every_value_and_survives_restarts(lane: Lane, tmp_path: Path) -> None:
    port = free_port()
    observations = {"acct": np.array([*KEYS, "unknown"], dtype=object), "when": [pd.Timestamp("2024-01-09")] * 6,
                    "weight": pd.Series([0.5] * 6, dtype="float32")}
    local = lane.store.get_online_features(NAMES, observations).to_dict()
    with served(create_app(lane.store), port=port) as url:
        remote = gm.FeatureStore.connect(url, token=lane.tokens["reader"])
        got = remote.get_online_features(NAMES, observations).to_dict()
    assert got.keys() == local.keys()
    for name in NAMES:
        column = name.split(":")[-1]
        assert _comparable(got[column]) == _comparable(local[column]), column
    assert got["when"] == ["2024-01-09T00:00:00"] * 6           # pass-through values travel as JSON
    with pytest.raises(gm.StoreUnavailableError, match=r"cannot reach the feature store server at http://127"):
        remote.get_online_features(NAMES[:1], {"acct": ["K0"]})
    with served(create_app(lane.store), port=port):              # a new server on the same port: reconnects
        assert remote.get_online_features(NAMES[:1], {"acct": ["K0"]}).to_dict()["x"] == [1.5]
        with pytest.raises(gm.AccessDeniedError, match=r"HTTP 401"):
            gm.FeatureStore.connect(url, token="gm_madeup_secret").get_online_features(NAMES[:1], {"acct": ["K0"]})
        with pytest.raises(gm.NotFoundError, match=r"HTTP 404"):
            remote.get_online_features(["fs9:1:x"], {"acct": ["K0"]})


def test_many_threads_share_the_lane(lane: Lane) -> None:
    remote = gm.FeatureStore.connect(lane.fast, token=lane.tokens["reader"])
    expected = {key: lane.store.get_online_features(["fs1:1:n"], {"acct": [key]}).to_dict()["n"][0] for key in KEYS}
    problems: list[str] = []

    def work(seed: int) -> None:
        rng = random.Random(seed)
        for _ in range(40):
            keys = rng.choices(KEYS, k=rng.randint(1, 5))
            got = remote.get_online_features(["fs1:1:n"], {"acct": keys}).to_dict()["n"]
            if got != [expected[k] for k in keys]:
                problems.append(f"{keys}: {got}")

    before = lane.answered()
    threads = [threading.Thread(target=work, args=(seed,)) for seed in range(16)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=120)
    assert not problems, problems[:3]
    after = lane.answered()
    assert after["loop"] + after["threads"] - before["loop"] - before["threads"] == 16 * 40
    if lane.online_store == "redis":               # waited for on the event loop, but for cache refreshes
        assert after["loop"] - before["loop"] >= 16 * 40 // 2, (before, after)
    else:                                          # SQLite blocks its caller: read on the lane's threads
        assert after["loop"] == before["loop"] == 0


def _comparable(values: list[Any]) -> list[Any]:
    """NaN never equals itself: compare it as a marker."""
    def one(value: Any) -> Any:
        if isinstance(value, float) and math.isnan(value):
            return "NaN"
        if isinstance(value, list):
            return [one(v) for v in value]
        return value

    return [one(v) for v in values]


def test_headers_query_strings_and_streamed_bodies_are_the_framework_routes(lane: Lane) -> None:
    body = b'{"features": ["fs1:1:x"], "entities": {"acct": ["K0"]}}'
    for url in (lane.fast, lane.slow):
        assert url
    pairs = []
    for url in (lane.fast, lane.slow):
        with httpx.Client(base_url=url, timeout=30) as client:
            # repeated headers: the first counts, on both paths
            twice = [("Authorization", f"Bearer {lane.tokens['reader']}"), ("Authorization", "Bearer gm_x_y"),
                     ("Content-Type", "application/json")]
            first = client.post("/v1/online/features", content=body, headers=twice)
            swapped = client.post("/v1/online/features", content=body, headers=[twice[1], twice[0], twice[2]])
            typed = client.post("/v1/online/features", content=body, headers=[
                ("Authorization", f"Bearer {lane.tokens['reader']}"), ("Content-Type", "text/plain"),
                ("Content-Type", "application/json")])
            long_url = client.post("/v1/online/features?" + "q" * 9_000, content=body, headers=twice)
            query = client.post("/v1/online/features?pretty=1", content=body, headers=twice)

            def chunks() -> Iterator[bytes]:                  # no Content-Length: streamed, over the limit
                yield b'{"features": ["fs1:1:x"], "entities": {"acct": ["K0"], "pad": ["'
                for _ in range(30):
                    yield b"x" * 1_000
                yield b'"]}}'

            streamed = client.post("/v1/online/features", content=chunks(), headers=twice)
            pairs.append((first, swapped, typed, long_url, query, streamed))
    for fast, slow in zip(pairs[0], pairs[1], strict=True):
        assert fast.status_code == slow.status_code and fast.json() == slow.json(), (fast.text, slow.text)
    first, swapped, typed, long_url, query, streamed = pairs[0]
    assert first.status_code == 200 and swapped.status_code == 401 and typed.status_code == 422
    assert long_url.status_code == 414 and query.status_code == 200
    assert streamed.status_code == 413 and "limits.request_max_bytes" in streamed.json()["error"], streamed.text


def test_statistics_show_values_to_readers_of_the_data_only(lane: Lane) -> None:
    access = AccessRecords(lane.store.materializer.records)
    access.add_principal("operator")
    access.grant("operator", "Materializer", by="test")
    operator = access.create_token("operator")
    for who, token in (("operator", operator), ("reader", lane.tokens["reader"])):
        answer = httpx.get(f"{lane.fast}/v1/feature-sets/fs1/1/statistics", timeout=30,
                           headers={"Authorization": f"Bearer {token}"})
        if who == "operator":
            assert answer.status_code == 403 and "offline.read" in answer.json()["error"], answer.text
        else:
            assert answer.status_code in (200, 400), answer.text      # recorded (online only here) or none
        fresh = httpx.get(f"{lane.fast}/v1/feature-sets/fs1/1/freshness", timeout=30,
                          headers={"Authorization": f"Bearer {token}"})
        assert fresh.status_code == 200, fresh.text                   # freshness shows no values: jobs readers


def test_a_new_token_fills_the_caches_on_a_thread_and_is_answered_on_the_loop(lane: Lane) -> None:
    """A token the server has not seen needs the registry: a thread reads it, stopping short of the store
    read, whose wait stays on the event loop (on SQLite, whose reads block, the whole lookup is a thread's)."""
    access = AccessRecords(lane.store.materializer.records)
    token = access.create_token("reader")
    body = {"features": NAMES, "entities": {"acct": KEYS}}
    before = lane.answered()
    fast = httpx.post(f"{lane.fast}/v1/online/features", json=body, headers={"Authorization": f"Bearer {token}"})
    slow = httpx.post(f"{lane.slow}/v1/online/features", json=body, headers={"Authorization": f"Bearer {token}"})
    _same(fast, slow, 200)
    after = lane.answered()
    if lane.online_store == "redis":
        assert (after["loop"] - before["loop"], after["threads"] - before["threads"]) == (1, 0)
    else:
        assert (after["loop"] - before["loop"], after["threads"] - before["threads"]) == (0, 1)


def test_large_lookups_are_worked_out_on_a_thread(lane: Lane, monkeypatch: pytest.MonkeyPatch) -> None:
    """Decoding and encoding a large answer would hold the event loop (and every other request): past
    ``LOOP_MOST_CELLS`` keys x features a lookup runs on the lane's threads, with the same answer."""
    from gristmill.server import online

    body = {"features": NAMES, "entities": {"acct": KEYS}}
    warm = lane.both("reader", body)
    _same(*warm, 200)
    monkeypatch.setattr(online, "LOOP_MOST_CELLS", len(NAMES) * len(KEYS) - 1)
    before = lane.answered()
    fast, slow = lane.both("reader", body)
    _same(fast, slow, 200)
    assert fast.content == warm[0].content
    after = lane.answered()
    assert (after["loop"] - before["loop"], after["threads"] - before["threads"]) == (0, 1)


def test_each_refused_lookup_is_counted_once_in_the_audit_log(lane: Lane) -> None:
    """A refusal found on the event loop is handed to a thread before anything is counted (counted once,
    and the count written)."""
    body = {"features": ["fs1:1:x"], "entities": {"acct": ["K0"]}}
    owner = {"Authorization": f"Bearer {lane.tokens['owner']}"}
    before = {(e["resource"], e["action"]): e["count"]
              for e in httpx.get(f"{lane.fast}/v1/audit?denied_only=true&limit=1000", headers=owner).json()
              if e["principal"] == "nobody"}
    for _ in range(11):
        refused = httpx.post(f"{lane.fast}/v1/online/features", json=body,
                             headers={"Authorization": f"Bearer {lane.tokens['nobody']}"})
        assert refused.status_code in (403, 404), refused.text
    after = {(e["resource"], e["action"]): e["count"]
             for e in httpx.get(f"{lane.fast}/v1/audit?denied_only=true&limit=1000", headers=owner).json()
             if e["principal"] == "nobody"}
    added = sum(after.values()) - sum(before.values())
    assert added == 11, (before, after)


@pytest.mark.postgres
def test_a_registry_that_fails_is_503_and_remembered_tokens_keep_their_time(
        tmp_path: Path, postgres_schema: tuple[str, str]) -> None:
    """The registry's tables gone (its schema renamed away): a token not seen yet is 503 with Retry-After, a
    remembered one keeps working until its 5 s are up (a failed reload does not end it sooner), then 503;
    with the registry back, every token works again."""
    import time

    import sqlalchemy as sa
    from postgres import POSTGRES_URL

    url, schema = postgres_schema
    (tmp_path / "data").mkdir()
    pq.write_table(_rows(), tmp_path / "data" / "rows.parquet")
    repo = write_fs1_repo(tmp_path, source=tmp_path / "data" / "rows.parquet", features=FEATURES,
                          settings={"offline_enabled": False, "online_enabled": True})
    prefix = f"lane-{uuid.uuid4().hex[:12]}"
    store = gm.FeatureStore.init(tmp_path / "store", registry_url=url, registry_schema=schema, clock=lambda: NOW,
                                 online_store=REDIS_URL, online_prefix=prefix)
    assert store.apply(repo).ok
    assert store.backfill("fs1", 1, start="2024-01-01", end="2024-01-10")[0].status.value == "Completed"
    access = AccessRecords(store.materializer.records)
    access.add_principal("reader")
    access.grant("reader", "Reader", by="test")
    seen, unseen = access.create_token("reader"), access.create_token("reader")
    body = {"features": ["fs1:1:x"], "entities": {"acct": ["K0"]}}
    admin = sa.create_engine(POSTGRES_URL)

    def rename(old: str, new: str) -> None:
        with admin.begin() as conn:
            conn.execute(sa.text(f'ALTER SCHEMA "{old}" RENAME TO "{new}"'))

    try:
        with served(create_app(store)) as server:
            def ask(token: str) -> httpx.Response:
                return httpx.post(f"{server}/v1/online/features", json=body,
                                  headers={"Authorization": f"Bearer {token}"}, timeout=30)

            assert ask(seen).json()["columns"]["x"] == [1.5]
            loaded = time.monotonic()
            rename(schema, f"{schema}_away")
            try:
                refused = ask(unseen)
                assert refused.status_code == 503, refused.text
                assert "registry" in refused.json()["error"] and int(refused.headers["retry-after"]) > 0
                time.sleep(max(0.0, loaded + 2.8 - time.monotonic()))   # past half its time: a reload fails
                assert ask(seen).status_code == 200
                time.sleep(0.5)
                again = ask(seen)
                assert again.status_code == 200, again.text                # ... and the token is still remembered
                time.sleep(max(0.0, loaded + 5.3 - time.monotonic()))
                assert ask(seen).status_code == 503                      # its time is up
            finally:
                rename(f"{schema}_away", schema)
            assert ask(unseen).status_code == 200
            assert ask(seen).status_code == 200
    finally:
        admin.dispose()
        client = redis.Redis.from_url(REDIS_URL)
        for name in client.scan_iter(match=f"{prefix}:*", count=1000):
            client.unlink(name)
        client.close()
