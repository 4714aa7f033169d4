"""Helpers for the acceptance scenarios: inline tables, a feature repository written to ``tmp_path``
(source files, entity YAML, ``FeatureSet.yaml`` + ``spec/FeatureSetSpec.yaml``) and applied to a real
store, and the two ways features are obtained — ``retrieve`` (point-in-time join) and ``compute`` (a
feature set over a window).

``retrieve`` and ``compute`` are parametrised fixtures: adding an engine (Spark) or a path that reads
materialized data means adding one entry to ``RETRIEVAL_PATHS`` / ``COMPUTE_PATHS``; every scenario then
runs against it unchanged.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, Protocol

import pandas as pd
import pytest
import yaml
from spark_session import spark_engine, spark_session

import gristmill as gm


def t(text: str) -> datetime:
    """A naive UTC datetime from ``"2024-01-02 06:00"`` (or ``"2024-01-02"``)."""
    return datetime.fromisoformat(text)


def table(columns: str, *rows: Sequence[Any], times: Iterable[str] = ("ts",)) -> pd.DataFrame:
    """An inline table: ``table("acct ts f1", ("A", "2024-01-01", 1.0))``; ``times`` columns are parsed
    into ``datetime64[us]`` (None stays null)."""
    names = columns.split()
    frame = pd.DataFrame([list(r) for r in rows], columns=names)
    for name in times:
        if name in frame.columns:
            frame[name] = pd.to_datetime(frame[name], format="ISO8601").astype("datetime64[us]")
    return frame


def days(n: float) -> timedelta:
    return timedelta(days=n)


def hours(n: float) -> timedelta:
    return timedelta(hours=n)


def _duration(value: timedelta) -> dict[str, int]:
    total = int(value.total_seconds())
    d, rest = divmod(total, 86_400)
    h, rest = divmod(rest, 3_600)
    m, s = divmod(rest, 60)
    result = {"days": d, "hours": h, "minutes": m}
    if s:
        result["seconds"] = s
    return result


@dataclass(frozen=True)
class FeatureSetDefinition:
    """Everything needed to write one feature set version as YAML plus its source files.

    ``source`` is one table or a list of tables (one file each, in file-name order). ``index`` and
    ``features`` map names to Gristmill type names. ``transformation`` is the YAML mapping under
    ``feature_transformation``; ``code`` holds extra files of the spec folder (relative path -> text).
    """

    name: str
    index: dict[str, str]
    features: dict[str, str]
    source: pd.DataFrame | list[pd.DataFrame]
    version: str = "1"
    timestamp: str = "ts"
    timestamp_format: str | None = None
    source_format: str = "parquet"
    source_delay: timedelta | None = None
    temporal_join_lookback: timedelta | None = None
    source_lookback: timedelta | None = None
    transformation: dict[str, Any] | None = None
    code: dict[str, str] = field(default_factory=dict)
    description: str = "a test feature set"

    @property
    def ref(self) -> str:
        return f"{self.name}:{self.version}"

    @property
    def entity_name(self) -> str:
        return "_".join(self.index)

    def spec_dict(self, source_path: str) -> dict[str, Any]:
        timestamp: dict[str, Any] = {"name": self.timestamp}
        if self.timestamp_format:
            timestamp["format"] = self.timestamp_format
        source: dict[str, Any] = {"type": self.source_format, "path": source_path, "timestamp_column": timestamp}
        if self.source_delay is not None:
            source["source_delay"] = _duration(self.source_delay)
        spec: dict[str, Any] = {
            "source": source,
            "index_columns": [{"name": n, "type": kind} for n, kind in self.index.items()],
            "features": [{"name": n, "type": kind} for n, kind in self.features.items()],
        }
        if self.transformation is not None:
            spec["feature_transformation"] = self.transformation
        if self.source_lookback is not None:
            spec["source_lookback"] = _duration(self.source_lookback)
        if self.temporal_join_lookback is not None:
            spec["temporal_join_lookback"] = _duration(self.temporal_join_lookback)
        return spec


def fs1(source: pd.DataFrame, *, name: str = "fs1", **settings: Any) -> FeatureSetDefinition:
    """The scenarios' default feature set: index ``acct: string``, timestamp ``ts``, ``f1: double``."""
    return FeatureSetDefinition(name=name, index={"acct": "string"}, features={"f1": "double"}, source=source,
                                **settings)


class Repo:
    """A feature repository in a folder: YAML files and source data, applied to a store on demand."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.definitions: dict[str, FeatureSetDefinition] = {}
        self._store: gm.FeatureStore | None = None
        self._spark_store: gm.FeatureStore | None = None

    def add(self, definition: FeatureSetDefinition) -> Path:
        """Write the source files, the entity YAML and the feature set YAML; returns the spec folder."""
        data = self.root / "data" / f"{definition.name}_v{definition.version}"
        data.mkdir(parents=True, exist_ok=True)
        tables = definition.source if isinstance(definition.source, list) else [definition.source]
        suffix = definition.source_format
        for i, frame in enumerate(tables):
            target = data / f"part-{i}.{suffix}"
            if suffix == "csv":
                frame.to_csv(target, index=False)
            else:
                frame.to_parquet(target, index=False)
        entity = {"name": definition.entity_name, "version": "1",
                  "index_columns": [{"name": n, "type": kind} for n, kind in definition.index.items()]}
        _write_yaml(self.root / "repo" / "entities" / f"{definition.entity_name}.yaml", entity)
        folder = self.root / "repo" / "featuresets" / definition.name / f"v{definition.version}"
        asset = {"name": definition.name, "version": definition.version, "specification": {"path": "./spec"},
                 "entities": [f"{definition.entity_name}:1"], "stage": "Development",
                 "description": definition.description}
        _write_yaml(folder / "FeatureSet.yaml", asset)
        relative = Path("..", "..", "..", "..", "..", "data", data.name, f"*.{suffix}").as_posix()
        _write_yaml(folder / "spec" / "FeatureSetSpec.yaml", definition.spec_dict(relative))
        for path, text in definition.code.items():
            target = folder / "spec" / path
            target.parent.mkdir(parents=True, exist_ok=True)
            target.write_text(text, encoding="utf-8")
        self.definitions[definition.ref] = definition
        return folder / "spec"

    def spec_folder(self, name: str, version: str = "1") -> Path:
        return self.root / "repo" / "featuresets" / name / f"v{version}" / "spec"

    @property
    def store(self) -> gm.FeatureStore:
        if self._store is None:
            self._store = gm.FeatureStore.init(self.root / "store")
        return self._store

    def apply(self, *, check_source: bool = True) -> gm.ApplyPlan:
        plan = self.store.apply(self.root / "repo", check_source=check_source)
        assert plan.ok, str(plan) + "\n" + "\n".join(i.detail for i in plan.items if i.detail)
        return plan

    @property
    def spark_store(self) -> gm.FeatureStore:
        """The same store opened on the test process's Spark session: ``gm.FeatureStore(path, spark=...)``
        (materialization jobs still run on DuckDB: Spark computes and retrieves)."""
        if self._spark_store is None:
            self.store  # noqa: B018 - the store exists before it is opened a second time
            self._spark_store = gm.FeatureStore(self.root / "store", spark=spark_session())
        return self._spark_store

    def close(self) -> None:
        if self._store is not None:
            self._store.close()
        if self._spark_store is not None:
            self._spark_store.close()


def _write_yaml(path: Path, data: dict[str, Any]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(yaml.safe_dump(data, sort_keys=False), encoding="utf-8")


BuildStore = Callable[..., Repo]


def _builder(new_root: Callable[[], Path]) -> tuple[BuildStore, list[Repo]]:
    repos: list[Repo] = []

    def build(*definitions: FeatureSetDefinition, check_source: bool = True) -> Repo:
        repo = Repo(new_root())
        repos.append(repo)
        for definition in definitions:
            repo.add(definition)
        repo.apply(check_source=check_source)
        return repo

    return build, repos


@pytest.fixture
def build_store(tmp_path: Path) -> Iterator[BuildStore]:
    """``build_store(definition, ...)`` writes the feature sets into a repository under ``tmp_path``,
    applies it to a fresh store in that folder and returns the repository."""
    count = iter(range(1_000))
    build, repos = _builder(lambda: tmp_path / f"repo{next(count)}")
    yield build
    for repo in repos:
        repo.close()


@pytest.fixture(scope="module")
def build_module_store(tmp_path_factory: pytest.TempPathFactory) -> Iterator[BuildStore]:
    """Like ``build_store``, for a store shared by the tests of one module (built once: faster)."""
    build, repos = _builder(lambda: tmp_path_factory.mktemp("repo"))
    yield build
    for repo in repos:
        repo.close()


# -- how features are obtained ------------------------------------------------------------------------

class Retrieve(Protocol):
    def __call__(self, repo: Repo, features: Any, observations: Any, timestamp_column: str = "ts",
                 **options: Any) -> pd.DataFrame: ...


class Compute(Protocol):
    def __call__(self, repo: Repo, name: str, start: str, end: str, *, version: str = "1") -> pd.DataFrame: ...


def _retrieve_computed(repo: Repo, features: Any, observations: Any, timestamp_column: str = "ts",
                       **options: Any) -> pd.DataFrame:
    """Point-in-time join computed from source by the store's engine (DuckDB)."""
    return repo.store.get_offline_features(features, observations, timestamp_column, **options).to_pandas()


def _compute_spec(repo: Repo, name: str, start: str, end: str, *, version: str = "1") -> pd.DataFrame:
    """Local development path: ``FeatureSetSpec.load(folder).compute(start, end)``."""
    return gm.FeatureSetSpec.load(repo.spec_folder(name, version)).compute(start, end).to_pandas()


def _retrieve_materialized(repo: Repo, features: Any, observations: Any, timestamp_column: str = "ts",
                           **options: Any) -> pd.DataFrame:
    """Point-in-time join over materialized data: every feature set involved is first backfilled into the
    Delta offline store over its whole history, then read with ``materialized_only=True`` (no computing
    from source allowed; ``as_known_at`` and as-of-observation windows still compute, by design)."""
    _materialize_requested(repo, features)
    return repo.store.get_offline_features(features, observations, timestamp_column, materialized_only=True,
                                           **options).to_pandas()


def _materialize_requested(repo: Repo, features: Any, *, on_spark: bool = False) -> None:
    """Backfill every feature set ``features`` names into the offline store (bad references: left to the
    retrieval to report), by the DuckDB engine's jobs or the Spark engine's."""
    from gristmill.errors import GristmillError
    from gristmill.retrieval import references

    try:
        wanted = {(r.feature_set, r.version) for r in references(features)}
    except GristmillError:
        wanted = set()
    for name, version in wanted:
        _materialize_offline(repo, name, version, on_spark=on_spark)


def _materialize_offline(repo: Repo, name: str, version: str, *, on_spark: bool = False) -> None:
    from gristmill.errors import GristmillError

    done: set[tuple[str, str]] = repo.__dict__.setdefault("_materialized_spark" if on_spark else "_materialized",
                                                          set())
    if (name, version) in done:
        return
    store = repo.spark_store if on_spark else repo.store
    assert store.job_engine.name == ("spark" if on_spark else "duckdb")
    try:
        store.update_feature_set(name, version, materialization_settings={"offline_enabled": True})
    except GristmillError:  # unknown feature sets: let the retrieval itself report them
        return
    jobs = store.backfill(name, version, start="2020-01-01", end="2025-01-01")
    assert [j.status.value for j in jobs] == ["Completed"], [j.error for j in jobs]
    done.add((name, version))


def _retrieve_spark_computed(repo: Repo, features: Any, observations: Any, timestamp_column: str = "ts",
                             **options: Any) -> pd.DataFrame:
    """Point-in-time join computed from source by the Spark engine (a classic local session)."""
    return repo.spark_store.get_offline_features(features, observations, timestamp_column, **options).to_pandas()


def _retrieve_spark_materialized(repo: Repo, features: Any, observations: Any, timestamp_column: str = "ts",
                                 **options: Any) -> pd.DataFrame:
    """Engine crossing: materialized by the DuckDB engine (``store.backfill``), read by the Spark engine."""
    _materialize_requested(repo, features)
    return repo.spark_store.get_offline_features(features, observations, timestamp_column, materialized_only=True,
                                                 **options).to_pandas()


def _retrieve_spark_jobs(repo: Repo, features: Any, observations: Any, timestamp_column: str = "ts",
                         **options: Any) -> pd.DataFrame:
    """Engine crossing the other way: materialized by the Spark engine's jobs (executors write the Delta files,
    delta-rs commits them), read by the DuckDB engine."""
    _materialize_requested(repo, features, on_spark=True)
    return repo.store.get_offline_features(features, observations, timestamp_column, materialized_only=True,
                                           **options).to_pandas()


def _compute_spark_spec(repo: Repo, name: str, start: str, end: str, *, version: str = "1") -> pd.DataFrame:
    """``FeatureSetSpec.load(folder).compute(start, end, engine=SparkEngine(...))``."""
    spec = gm.FeatureSetSpec.load(repo.spec_folder(name, version))
    return spec.compute(start, end, engine=spark_engine()).to_pandas()


RETRIEVAL_PATHS: dict[str, Retrieve] = {"duckdb-computed": _retrieve_computed,
                                        "duckdb-materialized": _retrieve_materialized,
                                        "spark-computed": _retrieve_spark_computed,
                                        "spark-materialized": _retrieve_spark_materialized,
                                        "spark-jobs": _retrieve_spark_jobs}
COMPUTE_PATHS: dict[str, Compute] = {"duckdb-spec": _compute_spec, "spark-spec": _compute_spark_spec}


@pytest.fixture(scope="module", params=list(RETRIEVAL_PATHS))
def retrieve(request: pytest.FixtureRequest) -> Retrieve:
    """Point-in-time retrieval through one engine / storage path: computed from source, or materialized."""
    return RETRIEVAL_PATHS[request.param]


@pytest.fixture(scope="module", params=list(COMPUTE_PATHS))
def compute(request: pytest.FixtureRequest) -> Compute:
    """Computing a feature set over ``[start, end)`` through one engine / entry point."""
    return COMPUTE_PATHS[request.param]


# -- reading results ------------------------------------------------------------------------------------

def plain(value: Any) -> Any:
    """A Python value with every flavour of null (None, NaN, NA, NaT) as None."""
    if value is None or value is pd.NA or value is pd.NaT:
        return None
    if isinstance(value, float) and math.isnan(value):
        return None
    if isinstance(value, pd.Timestamp):
        return naive_utc(value.to_pydatetime())
    if isinstance(value, datetime):
        return naive_utc(value)
    if hasattr(value, "item"):
        return plain(value.item())
    return value


def rounded(records: Sequence[tuple[Any, ...]], digits: int = 9) -> list[tuple[Any, ...]]:
    """Rows with floats rounded, to compare computed averages with hand-written ones."""
    return [tuple(round(v, digits) if isinstance(v, float) else v for v in record) for record in records]


def naive_utc(value: datetime) -> datetime:
    return value.astimezone(UTC).replace(tzinfo=None) if value.tzinfo is not None else value


def values(frame: pd.DataFrame, column: str) -> list[Any]:
    """One column as a list of plain Python values (nulls as None)."""
    return [plain(v) for v in frame[column].tolist()]


def rows(frame: pd.DataFrame, columns: Sequence[str] | None = None) -> list[tuple[Any, ...]]:
    """Rows as tuples of plain Python values (nulls as None)."""
    names = list(columns) if columns is not None else list(frame.columns)
    return [tuple(plain(v) for v in record) for record in frame[names].itertuples(index=False, name=None)]
