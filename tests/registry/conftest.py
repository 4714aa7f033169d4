"""Registry fixtures shared by the registry tests: a catalog on a SQLite file, or on PostgreSQL in a
fresh schema dropped afterwards (a PostgreSQL that is down fails the tests, it never skips them)."""

from __future__ import annotations

import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from postgres import POSTGRES_URL, drop_schema

from gristmill.registry import Registry

OpenRegistry = Callable[[], Registry]


@pytest.fixture(params=["sqlite", pytest.param("postgresql", marks=pytest.mark.postgres)])
def open_registry(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[OpenRegistry]:
    """Opens registries on one fresh catalog: a SQLite file, or a PostgreSQL schema dropped afterwards."""
    if request.param == "sqlite":
        url, schema = f"sqlite:///{tmp_path / 'catalog' / 'registry.db'}", None
    else:
        request.getfixturevalue("postgres_ready")
        url, schema = POSTGRES_URL, f"gm_test_{uuid.uuid4().hex[:12]}"
    opened: list[Registry] = []

    def open_one() -> Registry:
        opened.append(Registry(url, schema=schema))
        return opened[-1]

    yield open_one
    for registry in opened:
        registry.close()
    if schema:
        drop_schema(schema)


@pytest.fixture
def registry(open_registry: OpenRegistry) -> Registry:
    return open_registry()
