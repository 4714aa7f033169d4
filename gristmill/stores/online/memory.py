"""The in-memory online store: a dict per table, the reference the other stores are tested against.

Useful in tests and notebooks; nothing is kept when the process ends.
"""

from __future__ import annotations

import threading
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import TYPE_CHECKING, Any

from gristmill.stores.online.base import StoredRow
from gristmill.stores.online.encoding import CODECS, normalize_key, prepare_rows, table_path, to_micros

if TYPE_CHECKING:
    import pyarrow as pa

    from gristmill.stores.online.base import OnlineTable

__all__ = ["InMemoryOnlineStore"]


@dataclass(frozen=True)
class _Row:
    event_micros: int
    create_micros: int
    expires_micros: int
    values: dict[str, Any]


class InMemoryOnlineStore:
    """Online store in a Python dict (thread-safe).

    Example::

        store = InMemoryOnlineStore()
        store.write(table, rows, now=datetime.now(UTC))
        store.read(table, [("A",)], now=datetime.now(UTC))   # [{'amount': 5.0}]
    """

    keeps_expired_rows = True
    executor_writes = False                  # one process's memory / one file: the Spark driver writes it

    def __init__(self) -> None:
        self._tables: dict[str, dict[tuple[Any, ...], _Row]] = {}
        self._lock = threading.Lock()

    def write(self, table: OnlineTable, rows: pa.Table, *, now: datetime) -> int:
        """Upsert ``rows``: the newer (event time, create time) wins per key; expired rows are skipped."""
        prepared = prepare_rows(table, rows, now_micros=to_micros(now))
        kinds = [kind for _, kind in table.keys]
        keys = list(zip(*(CODECS[kind].to_python(a) for kind, a in zip(kinds, prepared.keys, strict=True)),
                        strict=True)) or [()] * len(prepared)
        columns = [CODECS[kind].to_python(a) for (_, kind), a in zip(table.features, prepared.features, strict=True)]
        names = table.feature_names
        written = 0
        with self._lock:
            stored = self._tables.setdefault(table_path(table), {})
            for i, key in enumerate(keys):
                row = _Row(int(prepared.event_micros[i]), int(prepared.create_micros[i]),
                           int(prepared.expires_micros[i]), {name: column[i] for name, column in zip(names, columns,
                                                                                                  strict=True)})
                old = stored.get(key)
                if old is None or (row.event_micros, row.create_micros) >= (old.event_micros, old.create_micros):
                    stored[key] = row
                    written += 1
        return written

    def read(self, table: OnlineTable, keys: Sequence[tuple[Any, ...]], *, now: datetime
             ) -> list[dict[str, Any] | None]:
        """The feature values of each key (request order), None where unknown, expired or with a null part."""
        now_micros = to_micros(now)
        kinds = [kind for _, kind in table.keys]
        with self._lock:
            stored = self._tables.get(table_path(table), {})
            out: list[dict[str, Any] | None] = []
            for key in keys:
                normalized = normalize_key(kinds, key)
                row = None if normalized is None else stored.get(normalized)
                if row is None or row.expires_micros <= now_micros:
                    out.append(None)
                else:
                    out.append({k: list(v) if isinstance(v, list) else v for k, v in row.values.items()})
            return out

    def read_stored(self, table: OnlineTable, keys: Sequence[tuple[Any, ...]]) -> list[StoredRow | None]:
        """The stored row of each key (request order), expired or not; None where unknown."""
        kinds = [kind for _, kind in table.keys]
        with self._lock:
            stored = self._tables.get(table_path(table), {})
            out: list[StoredRow | None] = []
            for key in keys:
                normalized = normalize_key(kinds, key)
                row = None if normalized is None else stored.get(normalized)
                out.append(None if row is None else StoredRow(
                    row.event_micros, row.expires_micros,
                    {k: list(v) if isinstance(v, list) else v for k, v in row.values.items()}))
            return out

    def drop(self, table: OnlineTable) -> None:
        """Forget every row of ``table``."""
        with self._lock:
            self._tables.pop(table_path(table), None)

    def count(self, table: OnlineTable) -> int:
        """How many keys ``table`` holds."""
        with self._lock:
            return len(self._tables.get(table_path(table), {}))

    def close(self) -> None:
        """Nothing to release."""
