"""How online stores keep values: one codec per feature type, entity-key encoding and row preparation.

Every store reads back exactly what was written (64-bit integers, nan/inf/-0.0, µs datetimes,
float32 vectors); a null stays null. Python values handed out by every store are canonical:

================  ======================  ================================  ===========================
type              Python value            bytes (Redis hash field)          SQLite column
================  ======================  ================================  ===========================
integer, long     ``int``                 8-byte little-endian signed       INTEGER
float, double     ``float``               8-byte little-endian IEEE 754     REAL (nan, -0.0 as 8-byte BLOB)
boolean           ``bool``                1 byte, 0 or 1                    INTEGER 0/1
datetime          aware UTC ``datetime``  8-byte µs since epoch             INTEGER µs since epoch
string            ``str``                 UTF-8                             TEXT
binary            ``bytes``               as is                             BLOB
float_vector      ``list[float]``         float32 little-endian             BLOB (float32 little-endian)
================  ======================  ================================  ===========================

``float`` features are kept as doubles, so a float32 input and a double input both round-trip.

Entity keys (Redis key names) are tagged, escaped parts joined by ``:`` — ``("ab", "c")`` and
``("a", "bc")`` give ``sab:sc`` and ``sa:sbc``; ``("1",)`` and ``(1,)`` give ``s1`` and ``i1`` — so
two different keys never share a name.
"""

from __future__ import annotations

import operator
import struct
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING, Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from gristmill.errors import RetrievalError, StoreUnavailableError
from gristmill.spec.types import FeatureType
from gristmill.stores.online.base import CREATE_TIMESTAMP, EVENT_TIMESTAMP, NEVER

if TYPE_CHECKING:
    from gristmill.stores.online.base import OnlineTable

__all__ = [
    "CODECS",
    "NEVER",
    "OLDEST",
    "Codec",
    "OnlineStoreError",
    "PreparedRows",
    "encode_key",
    "encode_key_column",
    "from_micros",
    "key_encoder",
    "key_normalizer",
    "prepare_rows",
    "table_path",
    "to_micros",
]


class OnlineStoreError(StoreUnavailableError):
    """An online store that cannot be reached or used (the message says where and what to check)."""


EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
OLDEST = -(2**63)          # create_timestamp of rows that have none: loses every tie

_DOUBLE = struct.Struct("<d")
_LONG = struct.Struct("<q")
_TIMESTAMP_US = pa.timestamp("us", tz="UTC")


def to_micros(moment: datetime) -> int:
    """Microseconds since the Unix epoch; a naive datetime is taken as UTC."""
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=UTC)
    return (moment - EPOCH) // timedelta(microseconds=1)


def from_micros(micros: int) -> datetime:
    """The aware UTC datetime ``micros`` µs after the Unix epoch (exact, no float rounding)."""
    return EPOCH + timedelta(microseconds=micros)


# --- one codec per type ----------------------------------------------------------------------------------


def _double_to_sqlite(value: float) -> float | bytes:
    # SQLite turns nan into NULL and stores -0.0 as the integer 0: keep those as their IEEE bytes
    if value != value or (value == 0.0 and str(value)[0] == "-"):
        return _DOUBLE.pack(value)
    return value


def _double_from_sqlite(value: float | bytes) -> float:
    return _DOUBLE.unpack(value)[0] if isinstance(value, bytes) else float(value)


def _fixed_bytes(dtype: str) -> Callable[[pa.Array], np.ndarray]:
    """Column -> (rows, width) uint8 matrix of the little-endian values (nulls as zeros)."""
    def encode(array: pa.Array) -> np.ndarray:
        filled = array.fill_null(pa.scalar(0, array.type)) if array.null_count else array
        values = np.ascontiguousarray(filled.to_numpy(zero_copy_only=False), dtype=dtype)
        return values.view(np.uint8).reshape(len(array), values.dtype.itemsize)
    return encode


def _datetime_bytes(array: pa.Array) -> np.ndarray:
    return _fixed_bytes("<i8")(array.cast(pa.int64()))


def _bool_bytes(array: pa.Array) -> np.ndarray:
    return _fixed_bytes("u1")(array.cast(pa.uint8()))


def _text_bytes(array: pa.Array) -> pa.Array:
    return array.cast(pa.binary())


def _vector_bytes(array: pa.Array) -> pa.Array:
    """list<float32> -> binary of the packed float32 values, without a Python loop."""
    values = array.values
    if values.null_count:
        raise ValueError("a float_vector value contains a null element; vectors must be complete")
    floats = np.ascontiguousarray(values.to_numpy(zero_copy_only=False), dtype="<f4")
    offsets = np.asarray(array.offsets, dtype=np.int64) * 4
    if len(floats) * 4 >= 2**31:
        raise ValueError("float_vector batch too large; write fewer rows at a time")
    validity = pc.is_valid(array).buffers()[1] if array.null_count else None
    return pa.Array.from_buffers(pa.binary(), len(array),
                                 [validity, pa.py_buffer(offsets.astype(np.int32)), pa.py_buffer(floats)])


def _vector_from_bytes(value: bytes) -> list[float]:
    return np.frombuffer(value, dtype="<f4").tolist()


def _vector_to_python(array: pa.Array) -> list[Any]:
    return array.to_pylist()


def _datetime_to_python(array: pa.Array) -> list[Any]:
    return [None if v is None else from_micros(v) for v in array.cast(pa.int64()).to_pylist()]


def _vector_to_sqlite(array: pa.Array) -> list[Any]:
    packed = _vector_bytes(array)
    return packed.to_pylist()


def _micros_to_sqlite(array: pa.Array) -> list[Any]:
    return array.cast(pa.int64()).to_pylist()


def _doubles_to_sqlite(array: pa.Array) -> list[Any]:
    values = array.to_pylist()
    numbers = array.to_numpy(zero_copy_only=False)
    special = np.flatnonzero(np.isnan(numbers) | ((numbers == 0.0) & np.signbit(numbers)))
    for i in special.tolist():
        if values[i] is not None:
            values[i] = _double_to_sqlite(values[i])
    return values


def _pylist(array: pa.Array) -> list[Any]:
    return array.to_pylist()


@dataclass(frozen=True)
class Codec:
    """How one feature type is held: its Arrow form, its bytes (Redis) and its SQLite column."""

    arrow_type: pa.DataType                               # rows are cast to this before storing
    width: int | None                                     # bytes per value, None = variable
    encode_column: Callable[[pa.Array], Any]              # -> (rows, width) uint8 matrix or binary array
    from_bytes: Callable[[bytes], Any]
    to_python: Callable[[pa.Array], list[Any]]            # canonical Python values (nulls as None)
    sqlite_type: str
    to_sqlite: Callable[[pa.Array], list[Any]]
    from_sqlite: Callable[[Any], Any]

    def to_bytes(self, value: Any) -> bytes:
        """One canonical Python value as stored bytes (the scalar twin of ``encode_column``)."""
        encoded = self.encode_column(pa.array([value], self.arrow_type))
        return encoded.tobytes() if isinstance(encoded, np.ndarray) else encoded[0].as_py()


def _int_codec() -> Codec:
    return Codec(pa.int64(), 8, _fixed_bytes("<i8"), lambda b: int.from_bytes(b, "little", signed=True),
                 _pylist, "INTEGER", _pylist, int)


def _double_codec() -> Codec:
    return Codec(pa.float64(), 8, _fixed_bytes("<f8"), lambda b: _DOUBLE.unpack(b)[0],
                 _pylist, "REAL", _doubles_to_sqlite, _double_from_sqlite)


CODECS: dict[FeatureType, Codec] = {
    FeatureType.INTEGER: _int_codec(),
    FeatureType.LONG: _int_codec(),
    FeatureType.FLOAT: _double_codec(),
    FeatureType.DOUBLE: _double_codec(),
    FeatureType.BOOLEAN: Codec(pa.bool_(), 1, _bool_bytes, lambda b: b != b"\x00",
                               _pylist, "INTEGER", _pylist, bool),
    FeatureType.DATETIME: Codec(_TIMESTAMP_US, 8, _datetime_bytes,
                                lambda b: from_micros(int.from_bytes(b, "little", signed=True)),
                                _datetime_to_python, "INTEGER", _micros_to_sqlite, from_micros),
    FeatureType.STRING: Codec(pa.string(), None, _text_bytes, lambda b: b.decode(),
                              _pylist, "TEXT", _pylist, str),
    FeatureType.BINARY: Codec(pa.binary(), None, _text_bytes, bytes, _pylist, "BLOB", _pylist, bytes),
    FeatureType.FLOAT_VECTOR: Codec(pa.list_(pa.float32()), None, _vector_bytes, _vector_from_bytes,
                                    _vector_to_python, "BLOB", _vector_to_sqlite, _vector_from_bytes),
}


# --- entity keys ------------------------------------------------------------------------------------------


def escape(part: str) -> str:
    """Make ``part`` free of ``:`` (reversibly), so parts joined by ``:`` cannot run into each other."""
    return part.replace("%", "%25").replace(":", "%3A")


def table_path(table: OnlineTable) -> str:
    """``store:feature_set:version:materialization_version``, each part escaped: unique per table."""
    return ":".join([escape(table.store), escape(table.feature_set), escape(table.version),
                     str(int(table.materialization_version))])


def normalize_key(kinds: Sequence[FeatureType], key: Sequence[Any]) -> tuple[Any, ...] | None:
    """The key as canonical Python values (bool, int, str, ...), or None when a part is null.

    Raises ``RetrievalError`` when the key has the wrong length or a part of the wrong type."""
    if len(key) != len(kinds):
        raise RetrievalError(f"an online key needs {len(kinds)} part(s) ({', '.join(kinds)}), got {tuple(key)!r}")
    parts = []
    for kind, value in zip(kinds, key, strict=True):
        if value is None:
            return None
        check = _KEY_CHECKS.get(kind)
        if check is None:
            raise RetrievalError(f"{kind} columns cannot be online keys")
        try:
            parts.append(check(value))
        except (TypeError, ValueError):
            raise RetrievalError(f"online key part {value!r} is not a valid {kind} value") from None
    return tuple(parts)


def _as_int(value: Any) -> int:
    if isinstance(value, bool | float | str):
        raise TypeError("not an integer")
    return operator.index(value)


def _as_bool(value: Any) -> bool:
    if isinstance(value, bool | np.bool_):
        return bool(value)
    raise TypeError("not a boolean")


def _as_str(value: Any) -> str:
    if isinstance(value, str):
        return value
    raise TypeError("not a string")


def _as_bytes(value: Any) -> bytes:
    if isinstance(value, bytes | bytearray | memoryview):
        return bytes(value)
    raise TypeError("not bytes")


def _as_datetime(value: Any) -> datetime:
    if isinstance(value, datetime):
        return from_micros(to_micros(value))
    raise TypeError("not a datetime")


def _as_float(value: Any) -> float:
    if isinstance(value, bool | str):
        raise TypeError("not a number")
    return float(value)


_KEY_CHECKS: dict[FeatureType, Callable[[Any], Any]] = {
    FeatureType.STRING: _as_str,
    FeatureType.INTEGER: _as_int,
    FeatureType.LONG: _as_int,
    FeatureType.BOOLEAN: _as_bool,
    FeatureType.DATETIME: _as_datetime,
    FeatureType.BINARY: _as_bytes,
    FeatureType.FLOAT: _as_float,
    FeatureType.DOUBLE: _as_float,
}

# one tag per kind of key part: parts of different types never look alike
_KEY_PART: dict[FeatureType, Callable[[Any], str]] = {
    FeatureType.STRING: lambda v: "s" + escape(v),
    FeatureType.INTEGER: lambda v: f"i{v}",
    FeatureType.LONG: lambda v: f"i{v}",
    FeatureType.BOOLEAN: lambda v: "b1" if v else "b0",
    FeatureType.DATETIME: lambda v: f"t{to_micros(v)}",
    FeatureType.BINARY: lambda v: "x" + v.hex(),
    FeatureType.FLOAT: lambda v: "f" + v.hex(),
    FeatureType.DOUBLE: lambda v: "f" + v.hex(),
}


def encode_key(kinds: Sequence[FeatureType], key: tuple[Any, ...]) -> str:
    """A normalized key tuple as one string that no other key (of any types) shares."""
    return ":".join([_KEY_PART[kind](value) for kind, value in zip(kinds, key, strict=True)])


def key_normalizer(kinds: Sequence[FeatureType]) -> Callable[[Sequence[Any]], tuple[Any, ...] | None]:
    """``normalize_key`` for one list of kinds, fast for the common single-string key."""
    kinds = list(kinds)
    if kinds != [FeatureType.STRING]:
        return lambda key: normalize_key(kinds, key)

    def normalize_string(key: Sequence[Any]) -> tuple[Any, ...] | None:
        if len(key) == 1 and type(key[0]) is str:
            return tuple(key)
        return normalize_key(kinds, key)

    return normalize_string


def key_encoder(kinds: Sequence[FeatureType], *, prefix: str = "") -> Callable[[Sequence[Any]], str | None]:
    """A function: key tuple -> ``prefix`` + ``encode_key`` of it (None when a part is null), fast for
    the common single-string key."""
    kinds = list(kinds)

    def encode(key: Sequence[Any]) -> str | None:
        normalized = normalize_key(kinds, key)
        return None if normalized is None else prefix + encode_key(kinds, normalized)

    if kinds != [FeatureType.STRING]:
        return encode

    def encode_string(key: Sequence[Any]) -> str | None:
        if len(key) == 1 and type(key[0]) is str:
            return prefix + "s" + escape(key[0])
        return encode(key)

    return encode_string


def _key_part_column(kind: FeatureType, array: pa.Array) -> pa.Array:
    """The vectorized twin of ``_KEY_PART``: one string per row."""
    if kind == FeatureType.STRING:
        escaped = pc.replace_substring(pc.replace_substring(array.cast(pa.string()), "%", "%25"), ":", "%3A")
        return pc.binary_join_element_wise("s", escaped, "")
    if kind in (FeatureType.INTEGER, FeatureType.LONG):
        return pc.binary_join_element_wise("i", array.cast(pa.int64()).cast(pa.string()), "")
    if kind == FeatureType.DATETIME:
        return pc.binary_join_element_wise("t", array.cast(pa.int64()).cast(pa.string()), "")
    if kind == FeatureType.BOOLEAN:
        return pc.if_else(array, "b1", "b0")
    normalize = _KEY_CHECKS[kind]
    return pa.array([_KEY_PART[kind](normalize(v)) for v in array.to_pylist()], pa.string())


def encode_key_column(kinds: Sequence[FeatureType], columns: Sequence[pa.Array], *, prefix: str) -> pa.Array:
    """``prefix`` + the encoded key of every row (no nulls allowed), as one string array."""
    if not columns:
        raise ValueError("encode_key_column needs at least one key column")
    parts: list[Any] = [prefix]
    for i, (kind, column) in enumerate(zip(kinds, columns, strict=True)):
        if i:
            parts.append(":")
        parts.append(_key_part_column(kind, column))
    return pc.binary_join_element_wise(*parts, "")


# --- rows to write -----------------------------------------------------------------------------------------


@dataclass(frozen=True)
class PreparedRows:
    """Rows ready to store: typed, non-null keys, expired rows dropped, one row (the newest) per key."""

    keys: list[pa.Array]                 # one array per key column, cast to its codec's Arrow type
    event_micros: np.ndarray             # int64 µs since epoch
    create_micros: np.ndarray            # int64 µs since epoch, OLDEST where absent
    expires_micros: np.ndarray           # int64 µs since epoch, NEVER without ttl
    features: list[pa.Array]             # one array per feature, cast to its codec's Arrow type

    def __len__(self) -> int:
        return len(self.event_micros)


def _micros_column(rows: pa.Table, name: str) -> pa.Array:
    column = rows.column(name).combine_chunks()
    if pa.types.is_timestamp(column.type):
        return column.cast(pa.timestamp("us", tz=column.type.tz), safe=False).cast(pa.int64())
    if pa.types.is_date(column.type):
        return column.cast(pa.timestamp("us")).cast(pa.int64())
    raise ValueError(f"online rows: column '{name}' must be a timestamp, got {column.type}")


def _typed(rows: pa.Table, name: str, kind: FeatureType) -> pa.Array:
    column = rows.column(name).combine_chunks()
    target = CODECS[kind].arrow_type
    if column.type == target:
        return column
    if kind == FeatureType.DATETIME and pa.types.is_timestamp(column.type):
        return column.cast(pa.timestamp("us", tz=column.type.tz), safe=False).cast(target)
    try:
        return column.cast(target)
    except (pa.ArrowInvalid, pa.ArrowNotImplementedError) as exc:
        raise ValueError(f"online rows: column '{name}' ({column.type}) cannot be stored as {kind}: {exc}") from None


def prepare_rows(table: OnlineTable, rows: pa.Table, *, now_micros: int) -> PreparedRows:
    """Check and normalize ``rows`` for ``table``: keys with a null part and rows already expired at
    ``now`` are dropped; of several rows of one key the newest wins (event time, then create time,
    then the later row)."""
    needed = [*table.key_names, EVENT_TIMESTAMP, *table.feature_names]
    missing = [name for name in needed if name not in rows.column_names]
    if missing:
        raise ValueError(f"online rows lack column(s) {', '.join(missing)} (have {', '.join(rows.column_names)})")
    event = _micros_column(rows, EVENT_TIMESTAMP)
    if event.null_count:
        raise ValueError(f"online rows: '{EVENT_TIMESTAMP}' has nulls; every row needs an event time")
    event_micros = event.to_numpy()
    if CREATE_TIMESTAMP in rows.column_names:
        create = _micros_column(rows, CREATE_TIMESTAMP)
        create_micros = create.fill_null(OLDEST).to_numpy() if create.null_count else create.to_numpy()
    else:
        create_micros = np.full(len(event_micros), OLDEST, dtype=np.int64)
    keep = np.ones(len(event_micros), dtype=bool)
    if table.ttl is not None:
        ttl = table.ttl // timedelta(microseconds=1)
        expires_micros = event_micros + ttl
        keep &= expires_micros > now_micros
    else:
        expires_micros = np.full(len(event_micros), NEVER, dtype=np.int64)
    keys = [_typed(rows, name, kind) for name, kind in table.keys]
    for key in keys:
        if key.null_count:
            keep &= pc.is_valid(key).to_numpy(zero_copy_only=False)
    chosen = np.flatnonzero(keep)
    chosen = chosen[_newest_per_key([k.take(chosen) for k in keys], event_micros[chosen], create_micros[chosen])]
    taken = pa.array(chosen)
    return PreparedRows(
        keys=[k.take(taken) for k in keys],
        event_micros=event_micros[chosen],
        create_micros=create_micros[chosen],
        expires_micros=expires_micros[chosen],
        features=[_typed(rows, name, kind).take(taken) for name, kind in table.features],
    )


def _newest_per_key(keys: list[pa.Array], event: np.ndarray, create: np.ndarray) -> np.ndarray:
    """Positions (ascending) of the winning row of every key: greatest (event, create, position)."""
    n = len(event)
    if n <= 1:
        return np.arange(n)
    if not keys:
        return np.array([np.lexsort((np.arange(n), create, event))[-1]])
    if _distinct_keys(keys) == n:           # the usual case (the job already kept one row per key): no sort
        return np.arange(n)
    order = np.lexsort((np.arange(n), create, event))          # ascending: the winner sorts last
    rank = np.empty(n, dtype=np.int64)
    rank[order] = np.arange(n)
    names = [f"k{i}" for i in range(len(keys))]
    grouped = pa.table([*keys, pa.array(rank)], names=[*names, "rank"]).group_by(names, use_threads=False)
    best = grouped.aggregate([("rank", "max")]).column("rank_max").to_numpy()
    if len(best) == n:
        return np.arange(n)
    return np.sort(order[best])


def _distinct_keys(keys: list[pa.Array]) -> int:
    """How many distinct key tuples ``keys`` hold (hash based; no sort)."""
    if len(keys) == 1:
        return int(pc.count_distinct(keys[0]).as_py())
    names = [f"k{i}" for i in range(len(keys))]
    return pa.table(keys, names=names).group_by(names, use_threads=False).aggregate([]).num_rows
