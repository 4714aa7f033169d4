"""A store with two feature sets and a few principals, served by ``gristmill serve`` as a real subprocess, on
a SQLite or a PostgreSQL registry (shared by the server hardening test modules)."""

from __future__ import annotations

import subprocess
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

import httpx
import pandas as pd
import pytest
from cli_support import gristmill_serve
from repo_support import write_fs1_repo

import gristmill as gm
from gristmill.auth import AccessRecords
from gristmill.server.ui import COOKIE

#: who gets which grant; "nobody" has a token and no grant
GRANTS: dict[str, tuple[str, str] | None] = {
    "owner": ("Owner", "store"), "reader": ("Reader", "featureset:fs1"),
    "materializer": ("Materializer", "featureset:fs1"), "nobody": None,
}

REGISTRIES = ["sqlite", pytest.param("postgresql", marks=pytest.mark.postgres)]


@dataclass
class Served:
    url: str
    store: gm.FeatureStore
    tokens: dict[str, str]
    process: subprocess.Popen[str]

    def client(self, who: str) -> httpx.Client:
        return httpx.Client(base_url=self.url, headers={"Authorization": f"Bearer {self.tokens[who]}"}, timeout=60)

    def browser(self, who: str) -> httpx.Client:
        """A client signed in to the web UI as ``who`` (its session cookie set)."""
        browser = httpx.Client(base_url=self.url, timeout=60)
        signed_in = browser.post("/ui/login", data={"token": self.tokens[who], "next": "/ui"}, follow_redirects=False)
        assert signed_in.status_code == 303, signed_in.text
        browser.cookies.set(COOKIE, signed_in.cookies[COOKIE])
        return browser


def registry_of(request: pytest.FixtureRequest, registry: str) -> tuple[str, str] | None:
    """(URL, schema) of a fresh PostgreSQL schema for ``postgresql``, None for SQLite."""
    return request.getfixturevalue("postgres_schema") if registry == "postgresql" else None


def make_store(root: Path, *, registry: tuple[str, str] | None = None, settings: dict[str, Any] | None = None,
               name: str | None = None) -> gm.FeatureStore:
    """A store in ``root/store`` with entity ``account:1`` and feature sets ``fs1:1`` and ``fs2:1`` (same
    source, ``f1: double``), offline materialization enabled."""
    (root / "data").mkdir(parents=True, exist_ok=True)
    pd.DataFrame({"acct": ["A", "B"], "ts": pd.Series([datetime(2024, 1, 8), datetime(2024, 1, 9)]
                                                      ).astype("datetime64[us]"),
                  "f1": [1.0, 2.0]}).to_parquet(root / "data" / "rows.parquet")
    repo = write_fs1_repo(root, source=root / "data" / "rows.parquet",
                          settings={"offline_enabled": True, **(settings or {})})
    second = repo / "fs2"
    (second / "spec").mkdir(parents=True, exist_ok=True)
    (second / "FeatureSet.yaml").write_text((repo / "fs" / "FeatureSet.yaml").read_text().replace("fs1", "fs2"))
    (second / "spec" / "FeatureSetSpec.yaml").write_text((repo / "fs" / "spec" / "FeatureSetSpec.yaml").read_text())
    url, schema = registry or (None, None)
    store = gm.FeatureStore.init(root / "store", name=name, registry_url=url, registry_schema=schema)
    plan = store.apply(repo)
    assert plan.ok, "\n".join(plan.lines())
    return store


def add_principals(store: gm.FeatureStore) -> dict[str, str]:
    """The principals of ``GRANTS`` with their grants; returns their tokens."""
    access = AccessRecords(store.materializer.records)
    tokens = {}
    for name, grant in GRANTS.items():
        access.add_principal(name)
        tokens[name] = access.create_token(name)
        if grant:
            access.grant(name, *grant, by="test")
    return tokens


@contextmanager
def serve(store: gm.FeatureStore, tokens: dict[str, str], *, env: dict[str, str] | None = None) -> Iterator[Served]:
    """``gristmill serve`` on ``store`` as a subprocess, until the block ends."""
    with gristmill_serve(store.path, env=env) as (process, url):
        yield Served(url, store, tokens, process)
