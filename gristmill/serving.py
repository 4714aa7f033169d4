"""Online lookups: the latest feature values for the entity keys of some observation rows.

Observation rows carry the index columns (extra columns pass through); the output is the observation
columns followed by the requested features. A feature whose name is already a column gets the suffix
``_1``; unknown or expired keys give nulls. The hot path avoids pandas: a 1-key lookup costs one store
round trip plus a few microseconds of Python."""

from __future__ import annotations

import numbers
from collections.abc import Callable, Mapping, Sequence
from datetime import datetime
from typing import TYPE_CHECKING, Any

import numpy as np

from gristmill import loop_bridge
from gristmill.errors import RetrievalError, install_hint
from gristmill.spec.types import FeatureType

if TYPE_CHECKING:
    import pandas as pd
    import pyarrow as pa

    from gristmill.compute.engine import FeatureSetRequest
    from gristmill.stores.online.base import OnlineStore, OnlineTable, StoredRow


class OnlineResult:
    """Observation columns plus features, column by column; converts to dict, pandas, Arrow, Polars.

    ``notes`` says why values are missing (expired, never materialized, not in the store) when the lookup
    was asked to explain them; otherwise it is empty."""

    def __init__(self, columns: dict[str, list[Any]], types: dict[str, FeatureType], *,
                 notes: list[str] | None = None) -> None:
        self._columns = columns
        self._types = types
        self.notes: list[str] = notes or []

    def to_dict(self) -> dict[str, list[Any]]:
        return self._columns

    @property
    def types(self) -> dict[str, FeatureType]:
        """The type of each feature column (observation columns pass through untyped)."""
        return dict(self._types)

    def to_rows(self) -> list[dict[str, Any]]:
        names = list(self._columns)
        return [dict(zip(names, values, strict=True)) for values in zip(*self._columns.values(), strict=True)]

    def to_arrow(self) -> pa.Table:
        import pyarrow as pa

        arrays = {}
        for name, values in self._columns.items():
            kind = self._types.get(name)
            arrays[name] = pa.array(values, type=kind.arrow_type()) if kind else pa.array(values)
        return pa.table(arrays)

    def to_pandas(self) -> pd.DataFrame:
        import pandas as pd

        mapping = {"int32": pd.Int32Dtype(), "int64": pd.Int64Dtype(), "bool": pd.BooleanDtype()}
        return self.to_arrow().to_pandas(types_mapper=lambda t: mapping.get(str(t)))

    def to_polars(self) -> Any:
        try:
            import polars as pl
        except ImportError as exc:
            raise ImportError(f"to_polars() needs Polars: {install_hint('polars')}") from exc

        return pl.from_arrow(self.to_arrow())

    def __len__(self) -> int:
        return len(next(iter(self._columns.values()), []))

    def __repr__(self) -> str:
        return f"<OnlineResult {len(self)} rows: {', '.join(self._columns)}>"


def observation_columns(observations: Any) -> dict[str, list[Any]]:
    """Accept a dict of columns, a list of row dicts, or a pandas / Polars / Arrow table."""
    if isinstance(observations, Mapping):
        columns = {str(k): _column(v) for k, v in observations.items()}
    elif isinstance(observations, Sequence) and not isinstance(observations, str | bytes):
        if not all(isinstance(row, Mapping) for row in observations):
            raise RetrievalError("observations: a list must hold one dict per row, e.g. [{'account_id': 'A1'}]")
        names = list(dict.fromkeys(k for row in observations for k in row))
        columns = {name: [row.get(name) for row in observations] for name in names}
    else:
        from gristmill.compute.sources import to_arrow_table

        try:
            table = to_arrow_table(observations, what="observations")
        except Exception:
            raise RetrievalError(f"observations: expected a dict of columns, a list of row dicts or a DataFrame, "
                                 f"got {type(observations).__name__}") from None
        columns = table.to_pydict()
    lengths = {len(v) for v in columns.values()}
    if len(lengths) > 1:
        raise RetrievalError(f"observations: columns have different lengths {sorted(lengths)}")
    return columns


def _column(value: Any) -> list[Any]:
    """One column of a dict of columns: a list, tuple, NumPy array or pandas / Polars series; a single value
    (text, bytes, a number) is a column of one row."""
    if isinstance(value, str | bytes):
        return [value]
    if isinstance(value, Sequence) or (isinstance(value, np.ndarray) and value.ndim == 1):
        return list(value)
    if hasattr(value, "to_list") and hasattr(value, "__len__"):
        return list(value.to_list())
    return [value]


def _exact(values: list[Any], kind: FeatureType) -> bool:
    """Whether every key value already has the exact Python type of the declared column type (no None)."""
    if kind == FeatureType.STRING:
        return all(type(v) is str for v in values)
    if kind in (FeatureType.INTEGER, FeatureType.LONG):
        return all(type(v) is int for v in values)
    return False


def _coerce_key(value: Any, kind: FeatureType, column: str, label: str) -> Any:
    """A key value in the declared index column type, by the same rule as training-data retrieval: integers of
    any width for integer/long columns, text for string columns; anything else is an error naming the column
    (a silent cast would look up another key, or none)."""
    if value is None:
        return None
    if kind in (FeatureType.INTEGER, FeatureType.LONG):
        if isinstance(value, numbers.Integral) and not isinstance(value, bool | np.bool_):
            return int(value)
    elif kind == FeatureType.STRING:
        if isinstance(value, str):
            return value
    else:
        return value
    shown = f"{value!r} ({type(value).__name__})"
    hint = f"pass text, e.g. {str(value)!r}" if kind == FeatureType.STRING else "pass whole numbers"
    raise RetrievalError(f"observations column {column} holds {shown} but feature set {label} declares it "
                         f"{kind.value}; {hint}")


#: explains the keys of one request that got no row: (request, table, store, keys) -> a note, or None
Explainer = Callable[["FeatureSetRequest", "OnlineTable", "OnlineStore", list[tuple[Any, ...]]], "str | None"]


def lookup(requests: list[FeatureSetRequest], tables: list[OnlineTable], stores: OnlineStore | list[OnlineStore],
           observations: Any, *, now: datetime, as_of: bool = False, explain: Explainer | None = None
           ) -> OnlineResult:
    """Read every request's features for the observation rows' keys (``stores``: one online store, or one per
    request when they come from several feature stores).

    ``as_of``: ``now`` is a time the caller chose, not the clock. The store keeps only the newest row per key,
    so the answer as of ``now`` is that row when its event time is at or before ``now`` and it has not expired
    at ``now``; a row whose event time is after ``now`` hides the value of that time, which is not stored any
    more, so the lookup fails (naming the feature set) rather than answer wrongly. ``explain`` adds a note per
    request whose keys got no row (one more store read each, so only when asked)."""
    per_request = stores if isinstance(stores, list) else [stores] * len(requests)
    columns = observation_columns(observations)
    rows = len(next(iter(columns.values()), []))
    missing = {r.label: [k for k in r.spec.index_column_names if k not in columns] for r in requests}
    missing = {label: keys for label, keys in missing.items() if keys}
    if missing:
        detail = "; ".join(f"{label} needs {', '.join(keys)}" for label, keys in missing.items())
        raise RetrievalError(f"observations lack index column(s): {detail} (columns: {', '.join(columns)})")
    taken = set(columns)
    notes: list[str] = []
    outputs: list[tuple[int, str, list[Any], FeatureType]] = []
    for request, table, store in zip(requests, tables, per_request, strict=True):
        key_types = [kind for _, kind in table.keys]
        key_columns = [columns[name] for name in table.key_names]
        key_names = table.key_names
        if not key_columns:
            keys: list[tuple[Any, ...]] = [()] * rows
        elif all(_exact(column, kind) for column, kind in zip(key_columns, key_types, strict=True)):
            keys = list(zip(*key_columns, strict=True))          # already of the declared types: the common case
        else:
            keys = [tuple(_coerce_key(v, kind, name, request.label)
                          for v, kind, name in zip(values, key_types, key_names, strict=True))
                    for values in zip(*key_columns, strict=True)]
        if getattr(store, "loop_reads", False):
            loop_bridge.stop_when_warming()        # filling caches on a thread: the read is the event loop's
        else:
            loop_bridge.blocking_io()              # a store that blocks its caller: not on an event loop
        found = _as_of(request.label, keys, store.read_stored(table, keys), now) if as_of \
            else store.read(table, keys, now=now)
        if explain is not None:
            missing = [key for key, hit in zip(keys, found, strict=True) if hit is None]
            note = explain(request, table, store, list(dict.fromkeys(missing))) if missing else None
            if note:
                notes.append(note)
        feature_types = dict(table.features)
        hits = [hit for hit in found if hit is not None]
        for (feature, name), position in zip(request.outputs, request.position, strict=True):
            if len(hits) == len(found):
                values = [hit.get(feature) for hit in hits]
            else:
                values = [None if hit is None else hit.get(feature) for hit in found]
            outputs.append((position, name, values, feature_types[feature]))
    result = dict(columns)
    types: dict[str, FeatureType] = {}
    for _, name, values, kind in sorted(outputs, key=lambda item: item[0]):
        final, n = name, 0
        while final in taken:
            n += 1
            final = f"{name}_{n}"
        taken.add(final)
        result[final] = values
        types[final] = kind
    return OnlineResult(result, types, notes=notes)


def key_text(key: Sequence[Any]) -> str:
    """A key tuple as users write it: ``A00001`` or ``(A00001, 7)``."""
    return str(key[0]) if len(key) == 1 else "(" + ", ".join(map(str, key)) + ")"


def _as_of(label: str, keys: list[tuple[Any, ...]], stored: list[StoredRow | None], now: datetime
           ) -> list[dict[str, Any] | None]:
    """The values as of ``now`` from the newest stored rows (see ``lookup``)."""
    from gristmill.stores.online.encoding import to_micros

    now_micros = to_micros(now)
    newer = [(key, row) for key, row in zip(keys, stored, strict=True)
             if row is not None and row.event_micros > now_micros]
    if newer:
        key, row = newer[0]
        raise RetrievalError(
            f"{label}: cannot answer as of {now:%Y-%m-%d %H:%M:%S}: {len(newer)} key(s) (e.g. {key_text(key)}) hold "
            f"a value from {row.event_time:%Y-%m-%d %H:%M:%S}, after that time, and the online store keeps only "
            "the newest value per key; ask as of a later time, or use offline retrieval (get_offline_features, "
            "gristmill retrieve) for values at past times")
    return [None if row is None or row.expires_micros <= now_micros else row.values for row in stored]
