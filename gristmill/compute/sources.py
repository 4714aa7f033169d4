"""Reading feature set sources into the engine: path resolution (local, globs, fsspec URIs), source order
(``__gm_order``: the tie-breaker of last resort) and timestamp normalisation to UTC ``TIMESTAMP``."""

from __future__ import annotations

import glob
import importlib.util
import itertools
import os
import re
import sys
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

from gristmill.compute.duckdb.sqltext import lit, q, ts_lit, utc_timestamp_sql
from gristmill.compute.messages import engine_message
from gristmill.compute.planning import INTERNAL_PREFIX, ORDER
from gristmill.compute.schema import accepts
from gristmill.errors import SourceError, SpecError, TransformationError
from gristmill.spec.featureset_spec import FeatureSetSpec, SourceType
from gristmill.spec.types import FeatureType

if TYPE_CHECKING:
    import duckdb
    import pyarrow as pa

MAX_CHECKED_FILES = 500  # per-file schema checks (footer reads) up to this many files
_counter = itertools.count()

_DEFAULT_SUFFIX = {SourceType.PARQUET: "parquet", SourceType.CSV: "csv"}


def unique_name(prefix: str) -> str:
    return f"{INTERNAL_PREFIX}{prefix}_{next(_counter)}"


def file_error_message(error: BaseException) -> str:
    """An engine error about reading a file, without the file's content: DuckDB's CSV errors quote the
    offending line (``Original Line: root:x:0:0:...``) and list fixes that are its options, not ours."""
    text = engine_message(error)
    text = re.sub(r"\s*Original Line:.*?(?=\s+Expected |\s+Possible fixes|$)", "", text)
    return re.split(r"\s+(?:Possible fixes:|The search space used was:)", text, maxsplit=1)[0].strip()


def is_uri(path: str) -> bool:
    return "://" in path and not path.startswith("file://")


def resolve_local(path: str, folder: Path | None) -> Path:
    path = path.removeprefix("file://")
    candidate = Path(path).expanduser()
    if not candidate.is_absolute():
        candidate = (folder or Path.cwd()) / candidate
    return Path(os.path.normpath(candidate))


def list_files(path: str, folder: Path | None, source_type: SourceType, con: duckdb.DuckDBPyConnection | None,
               *, what: str = "source.path") -> list[str]:
    """Expand a file, folder or glob (local or fsspec URI) into a sorted list of files."""
    suffix = _DEFAULT_SUFFIX.get(source_type, "*")
    if is_uri(path):
        fs = _fsspec_filesystem(path)
        if con is not None:
            con.register_filesystem(fs)
        protocol = path.split("://", 1)[0]
        pattern = path
        if not any(c in path for c in "*?[") and fs.isdir(path):
            pattern = path.rstrip("/") + f"/**/*.{suffix}"
        found = sorted(fs.glob(pattern)) if any(c in pattern for c in "*?[") else [path]
        files = [f if "://" in f else f"{protocol}://{f}" for f in found]
    else:
        local = resolve_local(path, folder)
        if local.is_dir():
            files = sorted(glob.glob(str(local / "**" / f"*.{suffix}"), recursive=True))
        elif any(c in str(local) for c in "*?["):
            files = sorted(p for p in glob.glob(str(local), recursive=True) if Path(p).is_file())
        else:
            files = [str(local)] if local.exists() else []
    if not files:
        where = f" (resolved to {resolve_local(path, folder)})" if not is_uri(path) else ""
        relative_to = "the spec folder" if folder is not None else "the current directory"
        raise SourceError(f"{what} '{path}'{where} matches no {suffix} files; check the path "
                          f"(relative paths are relative to {relative_to})")
    return files


def _fsspec_filesystem(uri: str) -> Any:
    import fsspec

    protocol = uri.split("://", 1)[0]
    try:
        return fsspec.filesystem(protocol)
    except ImportError as exc:
        package = {"s3": "s3fs", "s3a": "s3fs", "abfs": "adlfs", "abfss": "adlfs", "az": "adlfs",
                   "gs": "gcsfs", "gcs": "gcsfs"}.get(protocol, f"the fsspec package for {protocol}://")
        raise SourceError(f"reading {uri} needs {package}; install it with: pip install {package}") from exc
    except ValueError as exc:
        raise SourceError(f"unknown storage protocol '{protocol}://' in {uri}") from exc


def load_user_class(folder: Path | None, path: str, qualified_name: str, *, what: str) -> type:
    """Import ``module.ClassName`` from the code folder ``path`` (relative to the spec folder)."""
    root = resolve_local(path, folder)
    module_name, _, class_name = qualified_name.rpartition(".")
    if not module_name or not class_name:
        raise SpecError(f"{what}: '{qualified_name}' must look like module.ClassName")
    module_file = root / (module_name.replace(".", "/") + ".py") if root.is_dir() else root
    if not module_file.exists():
        raise SpecError(f"{what}: module file {module_file} not found; check path and class name")
    unique = f"gristmill_user_{abs(hash(str(module_file.resolve())))}_{module_name.replace('.', '_')}"
    spec = importlib.util.spec_from_file_location(unique, module_file)
    if spec is None or spec.loader is None:
        raise SpecError(f"{what}: cannot import {module_file}")
    module = importlib.util.module_from_spec(spec)
    added = str(root if root.is_dir() else root.parent)
    sys.path.insert(0, added)
    try:
        spec.loader.exec_module(module)
    except Exception as exc:
        raise TransformationError(f"{what}: importing {module_file} failed: {type(exc).__name__}: {exc}") from exc
    finally:
        if added in sys.path:
            sys.path.remove(added)
    cls = getattr(module, class_name, None)
    if cls is None:
        raise SpecError(f"{what}: {module_file} has no class {class_name}")
    return cls


def to_arrow_table(data: Any, *, what: str) -> pa.Table:
    """Accept a pandas / Polars DataFrame or Arrow table (or batches) and return an Arrow table."""
    import pyarrow as pa

    if isinstance(data, pa.Table):
        return data
    if isinstance(data, pa.RecordBatchReader):
        return data.read_all()
    module = type(data).__module__
    if module.startswith("pandas"):
        return pa.Table.from_pandas(data, preserve_index=False)
    if module.startswith("polars"):
        return data.to_arrow()
    if hasattr(data, "__arrow_c_stream__"):
        return pa.table(data)
    raise TransformationError(f"{what} returned {type(data).__name__}; return a pandas or Polars DataFrame "
                              "or an Arrow table")


def with_order(table: pa.Table) -> pa.Table:
    import numpy as np
    import pyarrow as pa

    if ORDER in table.column_names:
        table = table.drop_columns([ORDER])
    return table.append_column(ORDER, pa.array(np.arange(table.num_rows, dtype=np.int64)))


class SourceReader:
    """Registers a spec's source in a DuckDB connection as a view of normalised rows in a time range."""

    def __init__(self, con: duckdb.DuckDBPyConnection, spec: FeatureSetSpec, *,
                 sample_rows: int | None = None) -> None:
        self.con = con
        self.spec = spec
        self.sample_rows = sample_rows        # read at most this many rows (spec checks before registration)

    def read(self, start: datetime | None, end: datetime | None) -> str:
        """A view name with the source rows whose timestamp is in ``[start, end)`` (``None`` = open)."""
        source = self.spec.source
        ts = self.spec.timestamp_column
        if source.type == SourceType.PARQUET:
            raw, what = self._parquet()
        elif source.type == SourceType.CSV:
            raw, what = self._csv()
        elif source.type == SourceType.DELTA:
            raw, what = self._delta(start, end)
        elif source.type == SourceType.CUSTOM:
            raw, what = self._custom(start, end)
        else:
            raw, what = self._parent(start, end)
        types = {r[0]: r[1] for r in self.con.execute(f"DESCRIBE SELECT * FROM {raw}").fetchall()}
        if ts not in types:
            # Columns of files are not listed (see _check_files); those of Delta tables, custom sources and
            # parent feature sets are names someone chose.
            listed = "" if source.type in (SourceType.PARQUET, SourceType.CSV) else \
                f" (columns: {', '.join(n for n in types if not n.startswith(INTERNAL_PREFIX))})"
            raise SourceError(f"{what}: timestamp column '{ts}' not found{listed}; fix source.timestamp_column.name")
        normalized = self._timestamp_expression(q(ts), types[ts], what)
        view = unique_name("src")
        conditions = []
        if start is not None:
            conditions.append(f"{q(ts)} >= {ts_lit(start)}")
        if end is not None:
            conditions.append(f"{q(ts)} < {ts_lit(end)}")
        where = f"WHERE {' AND '.join(conditions)}" if conditions else ""
        replace = f"* REPLACE ({normalized} AS {q(ts)})" if normalized != q(ts) else "*"
        limit = f" LIMIT {int(self.sample_rows)}" if self.sample_rows is not None else ""
        self.con.execute(f"CREATE OR REPLACE TEMP VIEW {view} AS SELECT * FROM "
                         f"(SELECT {replace} FROM {raw}{limit}) {where}")
        return view

    def _parent(self, start: datetime | None, end: datetime | None) -> tuple[str, str]:
        """A derived feature set's source: the parent feature set computed over the same range (its own
        lookbacks and DSL history included). Rows keep the parent's source order for the tie rule."""
        from gristmill.compute.duckdb.featureframe import compute_view

        name, version = self.spec.parent_ref or ("", "")
        parent = compute_view(self.con, self.spec.parent, start, end, label=f"feature set {name}:{version}",
                              sample_rows=self.sample_rows)
        return parent.name, f"parent feature set {name}:{version}"

    def required_columns(self) -> dict[str, FeatureType | None]:
        """Columns every source file must have (with the declared type where the source provides it as is)."""
        spec = self.spec
        required: dict[str, FeatureType | None] = {spec.timestamp_column: None}
        transformation = spec.feature_transformation
        if transformation is None:
            required.update({c.name: c.type for c in spec.index_columns})
            required.update({f.name: f.type for f in spec.features})
        elif transformation.transformation_expressions is not None:
            required.update({c.name: c.type for c in spec.index_columns})
            required.update({e.source_column: None for e in transformation.transformation_expressions
                             if e.source_column})
        return required

    def _check_files(self, files: list[str], reader: str) -> None:
        """Name the file and column when a source file lacks a column or holds it with the wrong type —
        a multi-file scan would otherwise fill the gap with nulls or blur the type."""
        if len(files) > MAX_CHECKED_FILES:
            return
        required = self.required_columns()
        for file in files:
            try:
                described = self.con.execute(f"DESCRIBE SELECT * FROM {reader}({lit(file)})").fetchall()
            except Exception as exc:
                raise SourceError(f"source file {file}: cannot be read: {file_error_message(exc)}") from None
            types = {row[0]: row[1] for row in described}
            missing = [name for name in required if name not in types]
            if missing:
                # The file's own column names are not shown: a text file read as CSV has its first line as
                # its "columns" (/etc/passwd would be echoed).
                raise SourceError(f"source file {file}: column(s) {', '.join(missing)} missing; fix the file "
                                  "or the spec")
            for name, declared in required.items():
                if declared is not None and not accepts(declared, types[name]):
                    raise SourceError(f"source file {file}: column '{name}' is {types[name]}, declared "
                                      f"{declared.value}; fix the file or the declared type")

    def _timestamp_expression(self, column: str, sql_type: str, what: str) -> str:
        fmt = self.spec.source.timestamp_column.format if self.spec.source.timestamp_column else None
        expression = utc_timestamp_sql(column, sql_type, format=fmt)
        if expression is None:
            raise SourceError(f"{what}: timestamp column has type {sql_type}; it must be a timestamp, a date or a "
                              "string (ISO 8601, or give timestamp_column.format)")
        return expression

    # -- per source type -----------------------------------------------------------------------------
    def _parquet(self) -> tuple[str, str]:
        path = self.spec.source.path or ""
        files = list_files(path, self.spec.folder, SourceType.PARQUET, self.con)
        self._check_files(files, "read_parquet")
        file_list = "[" + ", ".join(lit(f) for f in files) + "]"
        raw = unique_name("raw")
        scan = f"read_parquet({file_list}, file_row_number=true, filename=true, union_by_name=true)"
        if len(files) == 1:
            order = "file_row_number"
            from_clause = scan
        else:
            mapping = unique_name("files")
            values = ", ".join(f"({lit(f)}, {i})" for i, f in enumerate(files))
            self.con.execute(f"CREATE OR REPLACE TEMP TABLE {mapping} AS SELECT * FROM (VALUES {values}) "
                             "v(__gm_file, __gm_file_index)")
            order = "(__gm_file_index::BIGINT << 40) + file_row_number"
            from_clause = f"{scan} JOIN {mapping} ON filename = __gm_file"
        try:
            self.con.execute(
                f"CREATE OR REPLACE TEMP VIEW {raw} AS SELECT * EXCLUDE (filename, file_row_number"
                f"{', __gm_file, __gm_file_index' if len(files) > 1 else ''}), {order} AS {ORDER} "
                f"FROM {from_clause}")
        except Exception as exc:  # duckdb.Error, kept lazy
            raise SourceError(f"source.path '{path}': cannot read parquet: {file_error_message(exc)}") from exc
        return raw, f"source '{path}'"

    def _csv(self) -> tuple[str, str]:
        path = self.spec.source.path or ""
        files = list_files(path, self.spec.folder, SourceType.CSV, self.con)
        self._check_files(files, "read_csv")
        file_list = "[" + ", ".join(lit(f) for f in files) + "]"
        raw = unique_name("raw")
        limit = f" LIMIT {int(self.sample_rows)}" if self.sample_rows is not None else ""
        try:
            self.con.execute(f"CREATE OR REPLACE TEMP TABLE {raw}_t AS SELECT * FROM read_csv({file_list}, "
                             f"union_by_name=true){limit}")
        except Exception as exc:
            raise SourceError(f"source.path '{path}': cannot read csv: {file_error_message(exc)}") from exc
        self.con.execute(f"CREATE OR REPLACE TEMP VIEW {raw} AS SELECT *, rowid::BIGINT AS {ORDER} FROM {raw}_t")
        return raw, f"source '{path}'"

    def _delta(self, start: datetime | None, end: datetime | None) -> tuple[str, str]:
        import pyarrow as pa
        import pyarrow.dataset as ds
        from deltalake import DeltaTable

        path = self.spec.source.path or ""
        uri = path if is_uri(path) else str(resolve_local(path, self.spec.folder))
        try:
            table = DeltaTable(uri)
        except Exception as exc:
            raise SourceError(f"source.path '{path}': not a readable Delta table ({exc})") from exc
        dataset = table.to_pyarrow_dataset()
        ts = self.spec.timestamp_column
        if ts not in dataset.schema.names:
            raise SourceError(f"source '{path}': timestamp column '{ts}' not found (columns: "
                              f"{', '.join(dataset.schema.names)}); fix source.timestamp_column.name")
        expression = None
        field_type = dataset.schema.field(ts).type
        if pa.types.is_timestamp(field_type):
            tz = field_type.tz
            for bound, op in ((start, "ge"), (end, "lt")):
                if bound is None:
                    continue
                scalar = pa.scalar(bound.replace(tzinfo=None) if tz is None else
                                   bound.replace(tzinfo=UTC), type=field_type)
                term = getattr(ds.field(ts), f"__{op}__")(scalar)
                expression = term if expression is None else expression & term
        scanner = dataset.scanner(filter=expression)
        raw = unique_name("raw")
        batches = (scanner.head(self.sample_rows).to_batches() if self.sample_rows is not None
                   else scanner.to_batches())
        reader = pa.RecordBatchReader.from_batches(
            scanner.projected_schema.append(pa.field(ORDER, pa.int64())), _numbered(iter(batches)))
        self.con.register(f"{raw}_reader", reader)
        self.con.execute(f"CREATE OR REPLACE TEMP TABLE {raw} AS SELECT * FROM {raw}_reader")
        self.con.unregister(f"{raw}_reader")
        return raw, f"source '{path}'"

    def _custom(self, start: datetime | None, end: datetime | None) -> tuple[str, str]:
        source = self.spec.source
        code = source.source_process_code
        assert code is not None  # guaranteed by Source validation
        cls = load_user_class(self.spec.folder, code.path, code.process_class, what="source.source_process_code")
        try:
            rows = _instance(cls, source.kwargs).process(start, end, **source.kwargs)
        except Exception as exc:
            raise SourceError(f"custom source {code.process_class}.process failed: {type(exc).__name__}: {exc}"
                              ) from exc
        table = with_order(to_arrow_table(rows, what=f"{code.process_class}.process"))
        if self.sample_rows is not None:
            table = table.slice(0, self.sample_rows)
        raw = unique_name("raw")
        self.con.register(f"{raw}_arrow", table)
        self.con.execute(f"CREATE OR REPLACE TEMP TABLE {raw} AS SELECT * FROM {raw}_arrow")
        self.con.unregister(f"{raw}_arrow")
        return raw, f"custom source {code.process_class}"


def _instance(cls: type, kwargs: dict[str, str]) -> Any:
    """A custom source object: built with the spec's ``kwargs`` as in Azure (``Class(**kwargs)``) when its
    constructor takes them, else with no arguments (``process`` receives them in either case)."""
    import inspect

    try:
        inspect.signature(cls).bind(**kwargs)
    except TypeError:
        return cls()
    except ValueError:                      # no signature to inspect (a builtin): try the Azure form
        return cls(**kwargs)
    return cls(**kwargs)


def _numbered(batches: Iterator[pa.RecordBatch]) -> Iterator[pa.RecordBatch]:
    import numpy as np
    import pyarrow as pa

    offset = 0
    for batch in batches:
        n = batch.num_rows
        yield pa.RecordBatch.from_arrays(
            [*batch.columns, pa.array(np.arange(offset, offset + n, dtype=np.int64))],
            names=[*batch.schema.names, ORDER])
        offset += n
