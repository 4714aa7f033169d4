"""``gristmill serve`` as a real subprocess on a free port over a small store (entity ``account:1``, feature set
``fs1:1`` materialized offline and online), with an Owner and a Reader token (shared by the server input
hardening and schemathesis test modules)."""

from __future__ import annotations

import io
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

import httpx
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
from cli_support import gristmill_serve
from repo_support import write_fs1_repo

import gristmill as gm
from gristmill.auth import AccessRecords

NOW = datetime(2024, 1, 10)


@dataclass
class Served:
    url: str
    store_path: Path
    tokens: dict[str, str]          # "owner", "reader"

    def client(self, who: str | None = "owner") -> httpx.Client:
        headers = {"Authorization": f"Bearer {self.tokens[who]}"} if who else {}
        return httpx.Client(base_url=self.url, headers=headers, timeout=60)


def make_store(root: Path, *, online_store: str | None = None) -> tuple[Path, dict[str, str]]:
    """A store with fs1:1 backfilled over [2024-01-01, 2024-01-10) and tokens of an Owner and a Reader."""
    (root / "data").mkdir(parents=True)
    pd.DataFrame({"acct": ["A", "A", "B"], "ts": pd.Series([datetime(2024, 1, 8), datetime(2024, 1, 9, 12),
                                                            datetime(2024, 1, 9)]).astype("datetime64[us]"),
                  "f1": [3.0, 5.0, 9.0]}).to_parquet(root / "data" / "rows.parquet")
    repo = write_fs1_repo(root, source=root / "data" / "rows.parquet", lookback_days=3650,
                          settings={"offline_enabled": True, "online_enabled": True})
    store = gm.FeatureStore.init(root / "store", online_store=online_store, clock=lambda: NOW)
    assert store.apply(repo).ok
    [job] = store.backfill("fs1", 1, start="2024-01-01", end="2024-01-10")
    assert job.status.value == "Completed", job.error
    access = AccessRecords(store.materializer.records)
    tokens = {}
    for name, role in (("owner", "Owner"), ("reader", "Reader")):
        access.add_principal(name)
        access.grant(name, role, by="test")
        tokens[name] = access.create_token(name)
    return root / "store", tokens


@contextmanager
def serving(store_path: Path, tokens: dict[str, str]) -> Iterator[Served]:
    """Run ``gristmill serve`` on ``store_path`` until the block ends (its output in ``serve-*.log`` beside it)."""
    log = store_path.parent / f"serve-{time.monotonic_ns()}.log"
    with gristmill_serve(store_path, log=log) as (_, url):
        yield Served(url, store_path, tokens)


def parquet_bytes(table: pa.Table, **options: Any) -> bytes:
    """``table`` as the bytes of a Parquet file (a request body of ``POST /v1/offline/features``)."""
    out = io.BytesIO()
    pq.write_table(table, out, **options)
    return out.getvalue()
