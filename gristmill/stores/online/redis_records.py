"""Redis records: how one row is packed into (and read back from) the string stored under its key.

The layout is described in ``redis.py``. Everything before the variable-width bytes has one width per
table, so many records decode at once in numpy; rows are encoded column-wise by numpy/pyarrow and come
out framed as RESP bulk strings, ready to be written to a socket.
"""

from __future__ import annotations

import struct
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from gristmill.spec.types import FeatureType
from gristmill.stores.online.base import StoredRow
from gristmill.stores.online.encoding import CODECS, OLDEST, PreparedRows, from_micros, key_encoder, table_path

if TYPE_CHECKING:
    from gristmill.stores.online.base import OnlineTable

__all__ = ["Framed", "RecordLayout"]

_HEADER = 24                              # event µs, create µs, expiry µs
_TIMES = struct.Struct("<qqq")
_NUMPY_TYPES = {FeatureType.INTEGER: "<i8", FeatureType.LONG: "<i8", FeatureType.FLOAT: "<f8",
                FeatureType.DOUBLE: "<f8", FeatureType.BOOLEAN: "u1", FeatureType.DATETIME: "<i8"}
_STRUCT_TYPES = {FeatureType.INTEGER: "q", FeatureType.LONG: "q", FeatureType.FLOAT: "d",
                 FeatureType.DOUBLE: "d", FeatureType.BOOLEAN: "?", FeatureType.DATETIME: "q"}



@dataclass
class Framed:
    """Values framed as RESP bulk strings (``$len\\r\\n value \\r\\n``), one per row, back to back."""

    array: pa.Array                               # binary: row i is the framed value i

    @classmethod
    def from_binary(cls, values: pa.Array) -> Framed:
        """Frame every value of a binary/string array (no nulls)."""
        values = values.cast(pa.binary())
        lengths = pc.binary_length(values).cast(pa.string()).cast(pa.binary())
        return cls(pc.binary_join_element_wise(b"$", lengths, b"\r\n", values, b"\r\n", b""))

    @classmethod
    def from_matrix(cls, matrix: np.ndarray) -> Framed:
        """Rows of a uint8 matrix, each already one framed value."""
        count, width = matrix.shape
        offsets = np.arange(count + 1, dtype=np.int32) * width
        return cls(pa.Array.from_buffers(pa.binary(), count, [None, pa.py_buffer(offsets),
                                                             pa.py_buffer(np.ascontiguousarray(matrix))]))

    def __post_init__(self) -> None:
        self.offsets = np.frombuffer(self.array.buffers()[1], dtype=np.int32, count=len(self.array) + 1,
                                     offset=self.array.offset * 4)
        self.data = memoryview(self.array.buffers()[2] or b"")

    def slice(self, start: int, stop: int) -> memoryview:
        """The bytes of rows ``[start, stop)``."""
        return self.data[self.offsets[start]:self.offsets[stop]]

    def take(self, positions: np.ndarray) -> Framed:
        return Framed(self.array.take(pa.array(positions)))


class RecordLayout:
    """Everything about one table that does not change between calls: names, record layout, decoders."""

    def __init__(self, table: OnlineTable, prefix: str) -> None:
        self.key_prefix = f"{prefix}:{table_path(table)}:"
        self.key_kinds = [kind for _, kind in table.keys]
        self.key = key_encoder(self.key_kinds, prefix=self.key_prefix)
        self.feature_names = table.feature_names
        self.kinds = [kind for _, kind in table.features]
        self.fixed = [i for i, kind in enumerate(self.kinds) if CODECS[kind].width is not None]
        self.variable = [i for i, kind in enumerate(self.kinds) if CODECS[kind].width is None]
        self.bitmap_bytes = (len(self.kinds) + 7) // 8
        fields: list[tuple[Any, ...]] = [("event", "<i8"), ("create", "<i8"), ("expiry", "<i8")]
        if self.bitmap_bytes:
            fields.append(("nulls", "u1", (self.bitmap_bytes,)))
        fields += [(f"f{i}", _NUMPY_TYPES[self.kinds[i]]) for i in self.fixed]
        fields += [(f"n{i}", "<i4") for i in self.variable]
        self.record = np.dtype(fields)                 # the fixed-width head of every record
        self.width = self.record.itemsize
        self.head = struct.Struct("<qqq" + f"{self.bitmap_bytes}s"
                                  + "".join(_STRUCT_TYPES[self.kinds[i]] for i in self.fixed)
                                  + "i" * len(self.variable))
        assert self.head.size == self.width
        self.from_bytes: list[Callable[[bytes], Any]] = [CODECS[kind].from_bytes for kind in self.kinds]

    # --- decoding -------------------------------------------------------------------------------------------

    def decode_one(self, record: bytes | None, now_micros: int) -> dict[str, Any] | None:
        """One record -> the row, or None if unknown/expired (struct: cheaper than numpy for one)."""
        if record is None or len(record) < self.width:
            return None
        head = self.head.unpack_from(record)
        if head[2] <= now_micros:
            return None
        present = int.from_bytes(head[3], "little")
        values: list[Any] = [None] * len(self.kinds)
        for position, i in enumerate(self.fixed, start=4):
            if present >> i & 1:
                value = head[position]
                values[i] = from_micros(value) if self.kinds[i] == FeatureType.DATETIME else value
        pos = self.width
        for position, i in enumerate(self.variable, start=4 + len(self.fixed)):
            length = head[position]
            if present >> i & 1:
                values[i] = self.from_bytes[i](record[pos:pos + length])
            pos += length
        return dict(zip(self.feature_names, values, strict=True))

    def decode_stored(self, record: bytes | None) -> StoredRow | None:
        """One record -> its event time, expiry and values, expired or not (None when unreadable)."""
        if record is None or len(record) < self.width:
            return None
        event, _, expiry = _TIMES.unpack_from(record)
        return StoredRow(event, expiry, self.decode_one(record, OLDEST) or {})

    def decode_many(self, records: Sequence[bytes | None], now_micros: int) -> list[dict[str, Any] | None]:
        """MGET replies -> one row (or None) each: the fixed-width heads of all records decode in numpy."""
        out: list[dict[str, Any] | None] = [None] * len(records)
        found = [i for i, record in enumerate(records) if record is not None and len(record) >= self.width]
        if not found:
            return out
        hits = [records[i] for i in found] if len(found) < len(records) else records
        blob = b"".join(hits)                                            # type: ignore[arg-type]
        count = len(hits)
        if not self.variable:
            if len(blob) != count * self.width:
                return [self.decode_one(record, now_micros) for record in records]
            heads = np.frombuffer(blob, dtype=self.record)
            starts = None
        else:
            lengths = np.fromiter(map(len, hits), dtype=np.int64, count=count)  # type: ignore[arg-type]
            starts = np.zeros(count, dtype=np.int64)
            np.cumsum(lengths[:-1], out=starts[1:])
            raw = np.frombuffer(blob, dtype=np.uint8)
            heads = raw[starts[:, None] + np.arange(self.width)].view(self.record).reshape(count)
        alive = heads["expiry"] > now_micros
        if not alive.all():
            keep = np.flatnonzero(alive)
            heads = heads[keep]
            if starts is not None:
                starts = starts[keep]
            found = [found[i] for i in keep.tolist()]
            count = len(found)
            if not count:
                return out
        columns: list[list[Any]] = [[] for _ in self.kinds]
        for i in self.fixed:
            values = heads[f"f{i}"]
            kind = self.kinds[i]
            if kind == FeatureType.BOOLEAN:
                columns[i] = (values != 0).tolist()
            elif kind == FeatureType.DATETIME:
                columns[i] = [from_micros(v) for v in values.tolist()]
            else:
                columns[i] = values.tolist()
        if self.variable:
            position = starts + self.width                                 # type: ignore[operator]
            for i in self.variable:
                sizes = heads[f"n{i}"].astype(np.int64)
                decode = self.from_bytes[i]
                columns[i] = [decode(blob[s:s + n]) for s, n in zip(position.tolist(), sizes.tolist(), strict=True)]
                position = position + sizes
        if self.bitmap_bytes:
            present = np.unpackbits(heads["nulls"], axis=1, count=len(self.kinds), bitorder="little")
            for i in np.flatnonzero(present.min(axis=0) == 0).tolist():
                column = columns[i]
                for row in np.flatnonzero(present[:, i] == 0).tolist():
                    column[row] = None
        names = self.feature_names
        if names:
            for index, row in zip(found, zip(*columns, strict=True), strict=True):
                out[index] = dict(zip(names, row, strict=True))
        else:
            for index in found:
                out[index] = {}
        return out

    # --- encoding -------------------------------------------------------------------------------------------

    def records(self, rows: PreparedRows, start: int, stop: int) -> Framed:
        """One record per row of ``[start, stop)``, framed as RESP bulk strings."""
        count = stop - start
        features = [feature.slice(start, count) for feature in rows.features]
        parts: list[np.ndarray] = [
            np.ascontiguousarray(column[start:stop], dtype="<i8").view(np.uint8).reshape(count, 8)
            for column in (rows.event_micros, rows.create_micros, rows.expires_micros)]
        if self.bitmap_bytes:
            if any(feature.null_count for feature in features):
                valid = np.stack([pc.is_valid(f).to_numpy(zero_copy_only=False) for f in features], axis=1)
                parts.append(np.packbits(valid, axis=1, bitorder="little"))
            else:
                full = np.packbits(np.ones(len(self.kinds), dtype=bool), bitorder="little")
                parts.append(np.broadcast_to(full, (count, self.bitmap_bytes)))
        for i in self.fixed:
            parts.append(CODECS[self.kinds[i]].encode_column(features[i]))
        encoded = {i: CODECS[self.kinds[i]].encode_column(features[i]).fill_null(b"") for i in self.variable}
        for i in self.variable:
            sizes = np.ascontiguousarray(pc.binary_length(encoded[i]).to_numpy(zero_copy_only=False), dtype="<i4")
            parts.append(sizes.view(np.uint8).reshape(count, 4))
        if not self.variable:                             # constant record width: frame in numpy
            head = b"$%d\r\n" % self.width
            matrix = np.empty((count, len(head) + self.width + 2), dtype=np.uint8)
            matrix[:, :len(head)] = np.frombuffer(head, dtype=np.uint8)
            column = len(head)
            for part in parts:
                matrix[:, column:column + part.shape[1]] = part
                column += part.shape[1]
            matrix[:, column:] = np.frombuffer(b"\r\n", dtype=np.uint8)
            return Framed.from_matrix(matrix)
        fixed = np.ascontiguousarray(np.concatenate(parts, axis=1))
        pieces: list[pa.Array] = [
            pa.FixedSizeBinaryArray.from_buffers(pa.binary(self.width), count, [None, pa.py_buffer(fixed)])
            .cast(pa.binary())]
        pieces += [encoded[i].cast(pa.binary()) for i in self.variable]
        return Framed.from_binary(pc.binary_join_element_wise(*pieces, b""))


