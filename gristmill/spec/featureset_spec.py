"""``FeatureSetSpec``: a folder with ``FeatureSetSpec.yaml`` describing source, keys, transformation
and declared features (SPEC §2). Usable locally before registration via ``.compute(start, end)``."""

from __future__ import annotations

import hashlib
from datetime import datetime, timedelta
from enum import StrEnum
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, Literal

from pydantic import BeforeValidator, Field, PrivateAttr, field_validator, model_validator

from gristmill.errors import SpecError
from gristmill.spec.common import Column, Feature, Frozen, _lower_enum
from gristmill.spec.duration import Duration
from gristmill.spec.refs import VersionRef
from gristmill.spec.yaml_io import read_yaml, validate, write_yaml

if TYPE_CHECKING:
    from gristmill.compute.result import FeatureFrame

SPEC_FILE_NAME = "FeatureSetSpec.yaml"
TIMESTAMP_ALIASES = {"create_timestamp"}
CREATE_TIMESTAMP = "create_timestamp"


class SourceType(StrEnum):
    PARQUET = "parquet"
    CSV = "csv"
    DELTA = "delta"
    CUSTOM = "custom"
    FEATURESET = "featureset"


_SOURCE_ALIASES = {"deltatable": "delta", "delta_table": "delta", "mltable": "parquet", "feature_set": "featureset"}


def _source_type(value: Any) -> Any:
    value = _lower_enum(value)
    return _SOURCE_ALIASES.get(value, value) if isinstance(value, str) else value


class Aggregation(StrEnum):
    """DSL window aggregation functions. Their SQL lives in ``gristmill.compute.duckdb.aggregations``."""

    SUM = "sum"
    AVG = "avg"
    MIN = "min"
    MAX = "max"
    COUNT = "count"
    LATEST = "latest"
    FIRST = "first"
    STDDEV = "stddev"
    VARIANCE = "variance"
    DISTINCT_COUNT = "distinct_count"


_AGGREGATION_ALIASES = {"mean": "avg", "average": "avg", "last": "latest", "count_distinct": "distinct_count",
                        "std": "stddev", "var": "variance"}


def _aggregation(value: Any) -> Any:
    value = _lower_enum(value)
    return _AGGREGATION_ALIASES.get(value, value) if isinstance(value, str) else value


class TimestampColumn(Frozen):
    name: str
    format: str | None = None


class SourceProcessCode(Frozen):
    path: str
    process_class: str


class Source(Frozen):
    """Where the rows of a feature set come from."""

    type: Annotated[SourceType, BeforeValidator(_source_type)]
    path: str | None = None
    timestamp_column: TimestampColumn | None = None
    source_delay: Duration | None = None
    source_process_code: SourceProcessCode | None = None
    kwargs: dict[str, str] = Field(default_factory=dict)

    @field_validator("timestamp_column", mode="before")
    @classmethod
    def _timestamp_shorthand(cls, value: Any) -> Any:
        return {"name": value} if isinstance(value, str) else value

    @model_validator(mode="after")
    def _check(self) -> Source:
        if self.type in (SourceType.PARQUET, SourceType.CSV, SourceType.DELTA, SourceType.FEATURESET) and not self.path:
            raise ValueError(f"source.path is required for a {self.type.value} source; "
                             "give a file, glob, folder or URI")
        if self.type == SourceType.CUSTOM and self.source_process_code is None:
            raise ValueError("a custom source needs source_process_code: {path, process_class}")
        if self.type != SourceType.FEATURESET and self.timestamp_column is None:
            raise ValueError("source.timestamp_column is required; write timestamp_column: {name: ts}")
        return self

    @property
    def delay(self) -> timedelta:
        return self.source_delay.timedelta if self.source_delay else timedelta(0)


class WindowExpression(Frozen):
    """One DSL feature: ``aggregation(source_column)`` over the trailing ``window`` of each event."""

    transformation_type: Literal["window"] = "window"
    feature_name: str
    source_column: str | None = None
    aggregation: Annotated[Aggregation, BeforeValidator(_aggregation)]
    window: Duration

    @field_validator("transformation_type", mode="before")
    @classmethod
    def _lower(cls, value: Any) -> Any:
        return _lower_enum(value)

    @model_validator(mode="after")
    def _check(self) -> WindowExpression:
        if self.aggregation == Aggregation.COUNT and self.source_column is not None:
            raise ValueError(f"{self.feature_name}: count takes no source_column; remove source_column")
        if self.aggregation != Aggregation.COUNT and self.source_column is None:
            raise ValueError(f"{self.feature_name}: {self.aggregation.value} needs a source_column; add one")
        if self.window.timedelta <= timedelta(0):
            raise ValueError(f"{self.feature_name}: window must be greater than 0; write e.g. window: {{days: 7}}")
        if self.source_column == self.feature_name:
            raise ValueError(f"{self.feature_name}: feature_name must differ from source_column; rename the feature")
        return self


class TransformationCode(Frozen):
    path: str
    transformer_class: str


class FeatureTransformation(Frozen):
    """Exactly one of: the DSL, a code class, or portable SQL over a relation named ``source``."""

    transformation_expressions: list[WindowExpression] | None = None
    transformation_code: TransformationCode | None = None
    transformation_sql: str | None = None

    @model_validator(mode="after")
    def _exactly_one(self) -> FeatureTransformation:
        given = [n for n in ("transformation_expressions", "transformation_code", "transformation_sql")
                 if getattr(self, n)]
        if len(given) != 1:
            raise ValueError("feature_transformation needs exactly one of transformation_expressions, "
                             f"transformation_code, transformation_sql (got {', '.join(given) or 'none'})")
        return self

    @field_validator("transformation_sql")
    @classmethod
    def _one_select(cls, value: str | None) -> str | None:
        if value is not None:
            from gristmill.compute.transformation_rules import check_transformation_sql

            check_transformation_sql(value)
        return value


class FeatureSetSpec(Frozen):
    """The specification of a feature set: everything needed to compute it."""

    source: Source
    index_columns: list[Column] = Field(min_length=1)
    features: list[Feature] = Field(min_length=1)
    feature_transformation: FeatureTransformation | None = None
    source_lookback: Duration | None = None
    temporal_join_lookback: Duration | None = None

    _folder: Path | None = PrivateAttr(default=None)
    _parent: FeatureSetSpec | None = PrivateAttr(default=None)

    @model_validator(mode="before")
    @classmethod
    def _legacy_code_key(cls, data: Any) -> Any:
        if isinstance(data, dict) and "feature_transformation_code" in data:
            data = dict(data)
            legacy = data.pop("feature_transformation_code")
            if legacy is not None:
                if data.get("feature_transformation"):
                    raise ValueError("give either feature_transformation_code (legacy) or "
                                     "feature_transformation, not both")
                data["feature_transformation"] = {"transformation_code": legacy}
        return data

    @model_validator(mode="after")
    def _check(self) -> FeatureSetSpec:
        names = [f.name for f in self.features]
        dupes = sorted({n for n in names if names.count(n) > 1})
        if dupes:
            raise ValueError(f"features: duplicate feature name(s) {', '.join(dupes)}; each name once")
        keys = {c.name for c in self.index_columns}
        clash = sorted(keys & set(names))
        if clash:
            raise ValueError(f"features: {', '.join(clash)} is also an index column; rename the feature")
        ts = self.source.timestamp_column.name if self.source.timestamp_column else None
        if ts and ts in names:
            raise ValueError(f"features: '{ts}' is the timestamp column; it cannot be a feature")
        if ts and ts in keys:
            raise ValueError(f"index_columns: '{ts}' is the timestamp column; it cannot be an index column")
        expressions = self.window_expressions
        if expressions is not None:
            produced = [e.feature_name for e in expressions]
            dup_expr = sorted({n for n in produced if produced.count(n) > 1})
            if dup_expr:
                raise ValueError("feature_transformation.transformation_expressions: feature_name "
                                 f"{', '.join(dup_expr)} appears more than once")
            missing = [n for n in names if n not in produced]
            if missing:
                raise ValueError(f"features: {', '.join(missing)} declared but no transformation_expression "
                                 "produces it; add an expression or remove the feature")
            extra = [n for n in produced if n not in names]
            if extra:
                raise ValueError(f"feature_transformation.transformation_expressions: {', '.join(extra)} is "
                                 "not declared under features; declare it with its type")
        return self

    # -- derived properties -------------------------------------------------------------------------
    @property
    def folder(self) -> Path | None:
        """The folder the spec was loaded from (relative source and code paths resolve against it)."""
        return self._folder

    @property
    def index_column_names(self) -> list[str]:
        return [c.name for c in self.index_columns]

    @property
    def feature_names(self) -> list[str]:
        return [f.name for f in self.features]

    @property
    def timestamp_column(self) -> str:
        if self.source.timestamp_column is None:
            raise SpecError(f"this spec reads feature set {self.source.path} (source type featureset) and inherits "
                            "its timestamp column; compute it through a FeatureStore where that feature set is "
                            "registered")
        return self.source.timestamp_column.name

    @property
    def source_delay(self) -> timedelta:
        return self.source.delay

    @property
    def window_expressions(self) -> list[WindowExpression] | None:
        t = self.feature_transformation
        return t.transformation_expressions if t else None

    @property
    def max_window(self) -> timedelta:
        return max((e.window.timedelta for e in self.window_expressions or []), default=timedelta(0))

    def feature(self, name: str) -> Feature | None:
        return next((f for f in self.features if f.name == name), None)

    # -- files --------------------------------------------------------------------------------------
    @classmethod
    def load(cls, folder: str | Path) -> FeatureSetSpec:
        """Load a spec from its folder (or directly from its YAML file).

        >>> spec = FeatureSetSpec.load("featuresets/transactions/spec")   # doctest: +SKIP
        """
        path = find_spec_file(Path(folder))
        data = read_yaml(path)
        spec = validate(cls, data, str(path))
        spec._folder = path.parent.resolve()
        return spec

    @classmethod
    def from_dict(cls, data: dict[str, Any], *, folder: str | Path | None = None,
                  source_name: str = "<FeatureSetSpec>") -> FeatureSetSpec:
        """Build a spec from a dict (as in the YAML); relative paths resolve against ``folder``."""
        spec = validate(cls, data, source_name)
        spec._folder = Path(folder).resolve() if folder is not None else None
        return spec

    def with_folder(self, folder: str | Path | None) -> FeatureSetSpec:
        copy = self.model_copy()
        copy._folder = Path(folder).resolve() if folder is not None else None
        copy._parent = self._parent
        return copy

    # -- derived feature sets (source type featureset) ---------------------------------------------------
    @property
    def parent_ref(self) -> VersionRef | None:
        """``name:version`` of the feature set a derived spec reads (``source.path``), else None."""
        if self.source.type != SourceType.FEATURESET:
            return None
        try:
            return VersionRef.parse((self.source.path or "").strip().removeprefix("azureml:"))
        except SpecError:
            raise SpecError(f"source.path '{self.source.path}' of a featureset source must name the parent as "
                            "name:version, e.g. path: transactions:1") from None

    @property
    def parent(self) -> FeatureSetSpec:
        """The parent spec of a derived feature set (set by the store when it loads the spec)."""
        if self._parent is None:
            raise SpecError(f"this spec reads feature set {self.source.path} (source type featureset); compute it "
                            "through a FeatureStore where that feature set is registered")
        return self._parent

    def with_parent(self, parent: FeatureSetSpec) -> FeatureSetSpec:
        """This derived spec with its parent resolved: it reads the parent's output, whose timestamp column it
        inherits unless it names one."""
        copy = self
        if self.source.timestamp_column is None:
            source = self.source.model_copy(update={"timestamp_column": TimestampColumn(name=parent.timestamp_column)})
            copy = self.model_copy(update={"source": source})
        else:
            copy = self.model_copy()
        copy._folder = self._folder
        copy._parent = parent
        return copy

    def to_dict(self) -> dict[str, Any]:
        return self.model_dump(mode="json", exclude_none=True, exclude_defaults=False)

    def dump(self, folder: str | Path) -> Path:
        path = Path(folder) / SPEC_FILE_NAME
        write_yaml(path, self.to_dict())
        return path

    def content_hash(self) -> str:
        """A digest of the spec's meaning and of its code files: equal hash = same computation."""
        digest = hashlib.sha256(repr(sorted_json(self.to_dict())).encode())
        for path in sorted(self._code_files()):
            digest.update(path.name.encode())
            digest.update(path.read_bytes())
        return digest.hexdigest()

    def code_paths(self) -> list[tuple[str, str]]:
        """The code this spec runs, as (field, path as written): transformation_code and source_process_code."""
        paths = []
        t = self.feature_transformation
        if t and t.transformation_code:
            paths.append(("feature_transformation.transformation_code.path", t.transformation_code.path))
        if self.source.source_process_code:
            paths.append(("source.source_process_code.path", self.source.source_process_code.path))
        return paths

    def _code_files(self) -> list[Path]:
        if self.folder is None:
            return []
        roots = [self.folder / path for _, path in self.code_paths()]
        files: list[Path] = []
        for root in roots:
            if root.is_file():
                files.append(root)
            elif root.is_dir():
                files.extend(p for p in root.rglob("*.py") if "__pycache__" not in p.parts)
        return files

    # -- local development ----------------------------------------------------------------------------
    def compute(self, start: datetime | str, end: datetime | str, *, engine: Any = None) -> FeatureFrame:
        """Compute this spec over the feature window ``[start, end)`` (SPEC §3) with the default engine.

        >>> FeatureSetSpec.load("spec").compute("2024-01-01", "2024-01-15").to_pandas()  # doctest: +SKIP
        """
        from gristmill.compute.engine import default_engine

        return (engine or default_engine()).compute(self, start, end)


def find_spec_file(folder: Path) -> Path:
    """The spec YAML inside ``folder`` (any capitalisation, .yaml or .yml), or ``folder`` itself."""
    if folder.is_file():
        return folder
    if not folder.exists():
        raise SpecError(f"{folder}: spec folder not found; pass the folder that holds {SPEC_FILE_NAME}")
    for candidate in sorted(folder.iterdir()):
        if candidate.name.lower() in ("featuresetspec.yaml", "featuresetspec.yml"):
            return candidate
    raise SpecError(f"{folder}: no {SPEC_FILE_NAME} in this folder; create one (see docs/specs.md)")


def sorted_json(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: sorted_json(value[k]) for k in sorted(value)}
    if isinstance(value, list):
        return [sorted_json(v) for v in value]
    return value
