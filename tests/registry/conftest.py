"""Registry fixtures shared by the registry tests: a catalog on a SQLite file, or on PostgreSQL in a
fresh schema dropped afterwards (a PostgreSQL that is down fails the tests, it never skips them)."""

from __future__ import annotations

import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
import sqlalchemy as sa

from gristmill.registry import Registry

POSTGRES_URL = "postgresql+psycopg://postgres@127.0.0.1:5432/test"

OpenRegistry = Callable[[], Registry]


def _postgres_available() -> bool:
    engine = sa.create_engine(POSTGRES_URL, connect_args={"connect_timeout": 2})
    try:
        with engine.connect():
            return True
    except sa.exc.OperationalError:
        return False
    finally:
        engine.dispose()


@pytest.fixture(scope="session")
def postgres_ready() -> None:
    if not _postgres_available():
        # Not a skip: CI and every dev machine run PostgreSQL; a missing server must fail loudly.
        pytest.fail(f"PostgreSQL not reachable at {POSTGRES_URL}; start it (see .ci/run)")


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
        engine = sa.create_engine(url)
        with engine.begin() as conn:
            conn.execute(sa.schema.DropSchema(schema, cascade=True, if_exists=True))
        engine.dispose()


@pytest.fixture
def registry(open_registry: OpenRegistry) -> Registry:
    return open_registry()
