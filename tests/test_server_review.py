"""Defects an outside review of the hardened server found, over real HTTP against ``gristmill serve``: online
lookups and JSON bodies without bounds, a slow upload holding a retrieval slot, Parquet bodies of very many or
repeated columns, times at the edge of the calendar, text no store can encode, and disconnects logged as
errors."""

from __future__ import annotations

import socket
import time
from typing import Any

import pyarrow as pa
import pytest
from repo_support import set_limits
from served_store import Served, make_store, parquet_bytes, serving

LIMITS = {"online_request_max_keys": 100, "request_max_bytes": 20_000, "offline_request_max_columns": 50,
          "server_retrievals_at_once": 1, "server_retrieval_wait_seconds": 1.0, "request_body_seconds": 2.0}


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory) -> Any:
    store_path, tokens = make_store(tmp_path_factory.mktemp("review"))
    set_limits(store_path, LIMITS)
    with serving(store_path, tokens) as server:
        yield server



OFFLINE = "/v1/offline/features?features=fs1:1:f1&timestamp_column=ts"


def test_online_lookups_and_json_bodies_are_bounded(served: Served) -> None:
    with served.client("reader") as reader:
        many = reader.post("/v1/online/features", json={"features": ["fs1:1:f1"], "entities": {"acct": ["A"] * 101}})
        assert many.status_code == 413 and "limits.online_request_max_keys" in many.json()["error"], many.text
        big = reader.post("/v1/online/features", json={"features": ["fs1:1:f1"],
                                                        "entities": {"acct": ["A"], "pad": ["x" * 30_000]}})
        assert big.status_code == 413 and "limits.request_max_bytes" in big.json()["error"], big.text
        fine = reader.post("/v1/online/features", json={"features": ["fs1:1:f1"], "entities": {"acct": ["A"] * 100}})
        assert fine.status_code == 200 and fine.json()["columns"]["f1"] == [5.0] * 100


def test_a_slow_upload_holds_no_retrieval_slot_and_times_out(served: Served) -> None:
    host, port = served.url.removeprefix("http://").split(":")
    slow = socket.create_connection((host, int(port)))
    slow.sendall((f"POST {OFFLINE} HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {served.tokens['reader']}\r\n"
                  "Content-Type: application/octet-stream\r\nContent-Length: 1000000\r\n\r\n").encode() + b"x")
    try:
        time.sleep(0.5)
        observations = pa.table({"acct": ["A"], "ts": pa.array([1_704_931_200_000_000], pa.timestamp("us"))})
        with served.client("owner") as owner:
            answer = owner.post(OFFLINE, content=parquet_bytes(observations))
        assert answer.status_code == 200, answer.text                 # the slow upload held no slot
        slow.settimeout(10)
        reply = ""
        while "limits.request_body_seconds" not in reply and (chunk := slow.recv(4096)):
            reply += chunk.decode()
        assert reply.startswith("HTTP/1.1 408") and "limits.request_body_seconds" in reply, reply
    finally:
        slow.close()


def test_parquet_bodies_of_many_or_repeated_columns(served: Served) -> None:
    base = {"acct": ["A"], "ts": pa.array([1_704_931_200_000_000], pa.timestamp("us"))}
    wide = pa.table({**base, **{f"c{i}": [i] for i in range(60)}})
    repeated = pa.Table.from_arrays([pa.array(["A"]), base["ts"], pa.array([1]), pa.array([2])],
                                    names=["acct", "ts", "x", "x"])
    with served.client("reader") as reader:
        too_wide = reader.post(OFFLINE, content=parquet_bytes(wide))
        assert too_wide.status_code == 413 and "limits.offline_request_max_columns" in too_wide.json()["error"]
        twice = reader.post(OFFLINE, content=parquet_bytes(repeated))
        assert twice.status_code == 400 and "column x appears more than once" in twice.json()["error"], twice.text
        assert "__" not in twice.json()["error"]


@pytest.mark.parametrize("edge", ["9999-12-31T23:59:59-12:00", "0001-01-01T00:00:00+14:00"])
def test_times_at_the_edge_of_the_calendar_are_400(served: Served, edge: str) -> None:
    with served.client("owner") as owner:
        offline = owner.post(OFFLINE, content=parquet_bytes(pa.table({"acct": ["A"], "ts": [edge]})))
        assert offline.status_code == 400 and "between 0001-01-01 and 9999-12-31" in offline.json()["error"]
        online = owner.post("/v1/online/features", json={"features": ["fs1:1:f1"], "entities": {"acct": ["A"]},
                                                         "now": edge})
        assert online.status_code in (400, 422) and "error" in online.json(), online.text
        backfill = owner.post("/v1/feature-sets/fs1/1/backfill", json={"start": edge, "end": "2024-01-02T00:00:00"}
                              if edge.startswith("0001") else {"start": "9999-12-30T00:00:00", "end": edge,
                                                               "allow_future": True})
        assert 400 <= backfill.status_code < 500, backfill.text


def test_text_no_store_can_encode_is_400_and_disconnects_are_quiet(served: Served) -> None:
    body = b'{"features": ["fs1:1:f1"], "entities": {"acct": ["\\ud800"]}}'
    with served.client("owner") as owner:
        answer = owner.post("/v1/online/features", content=body, headers={"Content-Type": "application/json"})
    assert answer.status_code == 400 and "not valid Unicode" in answer.json()["error"], answer.text
    host, port = served.url.removeprefix("http://").split(":")
    gone = socket.create_connection((host, int(port)))
    gone.sendall((f"POST {OFFLINE} HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {served.tokens['owner']}\r\n"
                  "Content-Length: 5000\r\n\r\nabc").encode())
    gone.close()
    time.sleep(1)
    log = next(served.store_path.parent.glob("serve-*.log")).read_text()
    assert "Traceback" not in log and "Exception in ASGI application" not in log, log[-3000:]
