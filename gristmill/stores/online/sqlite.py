"""The SQLite online store: one file (WAL), one table per online table, the newest row per key.

Each table ``"online:{store}:{feature set}:{version}:{materialization version}"`` (parts escaped, the
whole name quoted) has the key columns as its primary key (``WITHOUT ROWID``), three internal integer
columns (µs since epoch; ``@`` cannot start a feature name) and one typed column per feature
(see ``encoding`` for the types). A write is one transaction of one ``executemany`` upsert whose
conflict clause keeps the newer ``(event time, create time)``; a 1-key read is one primary-key lookup
(a statement cached by ``sqlite3``), a many-key read one join against a ``VALUES`` list per 500 keys.

Each thread gets its own connection (WAL lets readers run beside a writer).
"""

from __future__ import annotations

import sqlite3
import threading
from collections.abc import Sequence
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

from gristmill.spec.types import FeatureType
from gristmill.stores.online.base import StoredRow
from gristmill.stores.online.encoding import (
    CODECS,
    OLDEST,
    OnlineStoreError,
    key_normalizer,
    prepare_rows,
    table_path,
    to_micros,
)

if TYPE_CHECKING:
    import pyarrow as pa

    from gristmill.stores.online.base import OnlineTable

__all__ = ["SQLiteOnlineStore"]

EVENT = '"@event_timestamp"'
CREATE = '"@create_timestamp"'
EXPIRES = '"@expires_at"'
NO_KEY = '"@row"'                 # the one-row key of a feature set without index columns

_KEY_TYPES = {FeatureType.STRING: "TEXT", FeatureType.INTEGER: "INTEGER", FeatureType.LONG: "INTEGER",
              FeatureType.BOOLEAN: "INTEGER", FeatureType.DATETIME: "INTEGER", FeatureType.BINARY: "BLOB",
              FeatureType.FLOAT: "REAL", FeatureType.DOUBLE: "REAL"}
_KEYS_PER_QUERY = 500


def quote(name: str) -> str:
    """A SQLite identifier, quoted (any text is allowed)."""
    return '"' + name.replace('"', '""') + '"'


def _key_parameter(value: Any) -> Any:
    return to_micros(value) if isinstance(value, datetime) else value


class _Plan:
    """The SQL of one table, built once."""

    def __init__(self, table: OnlineTable) -> None:
        self.name = f"online:{table_path(table)}"
        self.key_kinds = [kind for _, kind in table.keys]
        name = quote(self.name)
        keys = [quote(k) for k in table.key_names] or [NO_KEY]
        key_types = [_KEY_TYPES[kind] for kind in self.key_kinds] or ["INTEGER"]
        features = [quote(f) for f in table.feature_names]
        self.normalize = key_normalizer(self.key_kinds)
        self.feature_names = table.feature_names
        # sqlite3 already hands out int, float, str and bytes; only these columns need converting
        self.doubles = [name for name, kind in table.features if CODECS[kind].sqlite_type == "REAL"]
        self.conversions = [(name, CODECS[kind].from_sqlite) for name, kind in table.features
                            if kind in (FeatureType.BOOLEAN, FeatureType.DATETIME, FeatureType.FLOAT_VECTOR)]
        columns = [*keys, EVENT, CREATE, EXPIRES, *features]
        self.create = (
            f"CREATE TABLE IF NOT EXISTS {name} ("
            + ", ".join([*(f"{k} {t} NOT NULL" for k, t in zip(keys, key_types, strict=True)),
                         f"{EVENT} INTEGER NOT NULL", f"{CREATE} INTEGER NOT NULL", f"{EXPIRES} INTEGER NOT NULL",
                         *(f"{f} {CODECS[kind].sqlite_type}" for f, (_, kind) in zip(features, table.features,
                                                                                       strict=True))])
            + f", PRIMARY KEY ({', '.join(keys)})) WITHOUT ROWID")
        updates = ", ".join(f"{c} = excluded.{c}" for c in columns[len(keys):])
        self.upsert = (
            f"INSERT INTO {name} ({', '.join(columns)}) VALUES ({', '.join('?' * len(columns))}) "
            f"ON CONFLICT ({', '.join(keys)}) DO UPDATE SET {updates} "
            f"WHERE (excluded.{EVENT}, excluded.{CREATE}) >= ({name}.{EVENT}, {name}.{CREATE})")
        selected = ", ".join([EXPIRES, *features])
        where = " AND ".join(f"{k} = ?" for k in keys)
        self.select_one = f"SELECT {selected} FROM {name} WHERE {where}"
        self.select_stored_one = f"SELECT {EVENT}, {selected} FROM {name} WHERE {where}"
        self._select_many = (name, keys, ", ".join([f"t.{EXPIRES}", *(f"t.{f}" for f in features)]))
        self._many_sql: dict[tuple[int, bool], str] = {}
        self.drop = f"DROP TABLE IF EXISTS {name}"

    def select_many(self, count: int, *, with_event: bool = False) -> str:
        """Rows of ``count`` requested keys (``?`` = position, then the key parts), joined by position
        (``with_event``: the event time first, as ``select_stored_one``)."""
        sql = self._many_sql.get((count, with_event))
        if sql is None:
            name, keys, selected = self._select_many
            parts = [f"c{i}" for i in range(len(keys))]
            values = ", ".join(["(" + ", ".join("?" * (len(keys) + 1)) + ")"] * count)
            join = " AND ".join(f"t.{k} = r.{p}" for k, p in zip(keys, parts, strict=True))
            event = f"t.{EVENT}, " if with_event else ""
            sql = (f"WITH r(i, {', '.join(parts)}) AS (VALUES {values}) "
                   f"SELECT r.i, {event}{selected} FROM r JOIN {name} AS t ON {join}")
            self._many_sql[(count, with_event)] = sql
        return sql

    def key(self, key: Sequence[Any]) -> tuple[Any, ...] | None:
        """The primary-key parameters of ``key`` (None when a part is null)."""
        normalized = self.normalize(key)
        if normalized is None:
            return None
        if self.key_kinds == [FeatureType.STRING]:
            return normalized
        return tuple(_key_parameter(v) for v in normalized) if normalized else (0,)

    def decode(self, row: Sequence[Any] | None, now_micros: int) -> dict[str, Any] | None:
        """A selected row (expiry, features...) -> the features, or None when missing or expired."""
        if row is None or row[0] <= now_micros:
            return None
        values = dict(zip(self.feature_names, row[1:], strict=True))
        for name in self.doubles:
            if type(values[name]) is bytes:           # nan or -0.0, kept as IEEE bytes
                values[name] = CODECS[FeatureType.DOUBLE].from_sqlite(values[name])
        for name, convert in self.conversions:
            if values[name] is not None:
                values[name] = convert(values[name])
        return values


class SQLiteOnlineStore:
    """Online store in one SQLite file (the embedded default).

    Example::

        store = SQLiteOnlineStore("online.db")
        store.write(table, rows, now=datetime.now(UTC))
        store.read(table, [("A",)], now=datetime.now(UTC))   # [{'amount': 5.0}]
    """

    keeps_expired_rows = True
    executor_writes = False                  # one process's memory / one file: the Spark driver writes it

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self._local = threading.local()
        self._lock = threading.Lock()
        self._connections: list[sqlite3.Connection] = []
        self._plans: dict[OnlineTable, _Plan] = {}
        self._tables: set[str] = set()            # tables known to exist

    # --- protocol -----------------------------------------------------------------------------------------

    def write(self, table: OnlineTable, rows: pa.Table, *, now: datetime) -> int:
        """Upsert ``rows`` in one transaction: the newer (event time, create time) wins per key."""
        plan = self._plan(table)
        prepared = prepare_rows(table, rows, now_micros=to_micros(now))
        if not len(prepared):
            return 0
        columns: list[list[Any]] = [CODECS[kind].to_sqlite(array)
                                    for (_, kind), array in zip(table.keys, prepared.keys, strict=True)]
        if not columns:
            columns = [[0] * len(prepared)]
        columns += [prepared.event_micros.tolist(), prepared.create_micros.tolist(), prepared.expires_micros.tolist()]
        columns += [CODECS[kind].to_sqlite(array) for (_, kind), array in zip(table.features, prepared.features,
                                                                              strict=True)]
        connection = self._connection()
        before = connection.total_changes
        try:
            connection.execute("BEGIN IMMEDIATE")
            try:
                connection.execute(plan.create)          # a no-op once the table exists
                self._tables.add(plan.name)
                connection.executemany(plan.upsert, zip(*columns, strict=True))
            except BaseException:
                connection.execute("ROLLBACK")
                raise
            connection.execute("COMMIT")
        except sqlite3.Error as exc:
            raise OnlineStoreError(f"cannot write online table {plan.name} in {self.path}: {exc}") from exc
        return connection.total_changes - before

    def read(self, table: OnlineTable, keys: Sequence[tuple[Any, ...]], *, now: datetime
             ) -> list[dict[str, Any] | None]:
        """The feature values of each key (request order), None where unknown, expired or with a null part."""
        plan = self._plan(table)
        now_micros = to_micros(now)
        return [plan.decode(row, now_micros) for row in self._rows(plan, keys, with_event=False)]

    def read_stored(self, table: OnlineTable, keys: Sequence[tuple[Any, ...]]) -> list[StoredRow | None]:
        """The stored row of each key (request order), expired or not; None where unknown."""
        plan = self._plan(table)
        return [None if row is None else StoredRow(row[0], row[1], plan.decode(row[1:], OLDEST) or {})
                for row in self._rows(plan, keys, with_event=True)]

    def _rows(self, plan: _Plan, keys: Sequence[tuple[Any, ...]], *, with_event: bool) -> list[Any]:
        """The selected row of each key (request order: [event time,] expiry, features), None where missing."""
        parameters = [plan.key(key) for key in keys]
        connection = self._connection()
        if plan.name not in self._tables and not self._exists(connection, plan):
            return [None] * len(keys)
        try:
            if len(parameters) == 1:
                found = parameters[0]
                select = plan.select_stored_one if with_event else plan.select_one
                return [None if found is None else connection.execute(select, found).fetchone()]
            rows: list[Any] = [None] * len(parameters)
            wanted = [(i, p) for i, p in enumerate(parameters) if p is not None]
            for start in range(0, len(wanted), _KEYS_PER_QUERY):
                chunk = wanted[start:start + _KEYS_PER_QUERY]
                flat = [v for i, p in chunk for v in (i, *p)]
                for row in connection.execute(plan.select_many(len(chunk), with_event=with_event), flat):
                    rows[row[0]] = row[1:]
        except sqlite3.OperationalError as exc:
            if "no such table" in str(exc):           # dropped by another store object
                self._tables.discard(plan.name)
                return [None] * len(keys)
            raise OnlineStoreError(f"cannot read online table {plan.name} in {self.path}: {exc}") from exc
        return rows

    def drop(self, table: OnlineTable) -> None:
        """Delete ``table`` (its SQLite table)."""
        plan = self._plan(table)
        connection = self._connection()
        try:
            connection.execute(plan.drop)
        except sqlite3.Error as exc:
            raise OnlineStoreError(f"cannot drop online table {plan.name} in {self.path}: {exc}") from exc
        self._tables.discard(plan.name)

    def count(self, table: OnlineTable) -> int:
        """How many keys ``table`` holds (expired ones not yet overwritten included)."""
        plan = self._plan(table)
        connection = self._connection()
        if not self._exists(connection, plan):
            return 0
        try:
            return int(connection.execute(f"SELECT count(*) FROM {quote(plan.name)}").fetchone()[0])
        except sqlite3.Error as exc:
            raise OnlineStoreError(f"cannot count online table {plan.name} in {self.path}: {exc}") from exc

    def close(self) -> None:
        with self._lock:
            for connection in self._connections:
                connection.close()
            self._connections.clear()
            self._local = threading.local()

    def __repr__(self) -> str:
        return f"SQLiteOnlineStore({str(self.path)!r})"

    # --- internals ----------------------------------------------------------------------------------------

    def _connection(self) -> sqlite3.Connection:
        connection = getattr(self._local, "connection", None)
        if connection is None:
            try:
                self.path.parent.mkdir(parents=True, exist_ok=True)
                connection = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False,
                                             cached_statements=256)
                connection.execute("PRAGMA journal_mode=WAL")
                connection.execute("PRAGMA synchronous=NORMAL")        # an online store can be rebuilt
                connection.execute("PRAGMA busy_timeout=30000")
            except (sqlite3.Error, OSError) as exc:
                raise OnlineStoreError(f"cannot open the SQLite online store {self.path}: {exc}") from exc
            self._local.connection = connection
            with self._lock:
                self._connections.append(connection)
        return connection

    def _plan(self, table: OnlineTable) -> _Plan:
        plan = self._plans.get(table)
        if plan is None:
            plan = self._plans[table] = _Plan(table)
        return plan

    def _exists(self, connection: sqlite3.Connection, plan: _Plan) -> bool:
        found = connection.execute("SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = ?",
                                   (plan.name,)).fetchone()
        if found:
            self._tables.add(plan.name)
        return found is not None
