"""The PostgreSQL server the tests use: ``GRISTMILL_TEST_POSTGRES_URL``, by default 127.0.0.1:5432, user
``postgres`` (trust auth), database ``test`` (`.ci/run` starts it). Each test works in a schema of its own."""

from __future__ import annotations

import os

import sqlalchemy as sa

POSTGRES_URL = os.environ.get("GRISTMILL_TEST_POSTGRES_URL", "postgresql+psycopg://postgres@127.0.0.1:5432/test")


def postgres_available() -> bool:
    engine = sa.create_engine(POSTGRES_URL, connect_args={"connect_timeout": 2})
    try:
        with engine.connect():
            return True
    except sa.exc.OperationalError:
        return False
    finally:
        engine.dispose()


def drop_schema(schema: str) -> None:
    engine = sa.create_engine(POSTGRES_URL)
    with engine.begin() as conn:
        conn.execute(sa.schema.DropSchema(schema, cascade=True, if_exists=True))
    engine.dispose()
