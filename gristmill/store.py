"""``FeatureStore``: the one object the SDK, the CLI and (later) the server use."""

from __future__ import annotations

import logging
import os
import shutil
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, replace
from datetime import UTC, datetime, timedelta
from functools import partial
from pathlib import Path
from typing import TYPE_CHECKING, Any

from gristmill.apply import ApplyPlan
from gristmill.compute.engine import FeatureSetRequest, MaterializedData, to_utc_naive
from gristmill.compute.sources import is_uri, resolve_local
from gristmill.config import CONFIG_FILE_NAME, EngineConfig, OnlineStoreConfig, RegistryConfig, StoreConfig
from gristmill.errors import ConfigError, DataLossError, NotFoundError, RetrievalError, SpecError
from gristmill.jobs.intervals import DataStatus
from gristmill.loop_bridge import TimedCache
from gristmill.materialization import Materializer
from gristmill.retrieval import plan_requests, references
from gristmill.spec.entity import Entity
from gristmill.spec.featureset import FeatureSet, MaterializationSettings
from gristmill.spec.featureset_spec import FeatureSetSpec
from gristmill.spec.refs import VersionRef
from gristmill.stores.offline.delta import DeltaOfflineStore
from gristmill.stores.online.base import OnlineStore, OnlineTable

if TYPE_CHECKING:
    from gristmill.client import RemoteFeatureStore
    from gristmill.compute.engine import Engine
    from gristmill.compute.result import FeatureFrame, RetrievalResult
    from gristmill.compute.statistics import FeatureSetStatistics
    from gristmill.jobs.freshness import Freshness
    from gristmill.registry.registry import Registry
    from gristmill.serving import OnlineResult

log = logging.getLogger("gristmill")

_UNSET: Any = object()
_ONLINE_TABLE_TTL = 5.0  # seconds an online table's materialization version is cached


@dataclass(frozen=True)
class Registration:
    """A feature set version as the registry stores it: the spec with paths as written (relative ones resolve
    against ``spec_folder`` when it is computed), the code files by path relative to the spec folder, and the
    digest of both."""

    spec: dict[str, Any]
    spec_folder: str | None
    code_files: dict[str, str]
    content_hash: str


class FeatureStore:
    """A feature store on a local folder: registry, offline store, online store and engine.

    >>> store = FeatureStore.init("my-store")            # doctest: +SKIP
    >>> store.apply("featuresets/")                        # doctest: +SKIP
    >>> store.get_offline_features(["transactions:1:amount_7d_sum"], observations, "ts")  # doctest: +SKIP
    """

    def __init__(self, path: str | Path = ".", *, registry_schema: str | None = None,
                 clock: Callable[[], datetime] | None = None, spark: Any = None) -> None:
        """Open the store in ``path``. ``spark``: an existing SparkSession (a Databricks or Synapse notebook's
        own) to compute with, instead of the engine in ``featurestore.yaml``."""
        self.path = Path(path).resolve()
        self._spark = spark
        self.config = StoreConfig.load(self.path)
        self._registry_schema = registry_schema or self.config.registry.db_schema
        self._registry: Registry | None = None
        self._engine: Engine | None = None
        self._job_engine: Engine | None = None
        self._offline_store: DeltaOfflineStore | None = None
        self._online_store: OnlineStore | None = None
        self._materializer: Materializer | None = None
        self._clock = clock or _utc_now
        self._spec_cache: dict[tuple[str, str], FeatureSet] = {}
        self._online_tables: TimedCache[tuple[str, str], OnlineTable] = TimedCache(_ONLINE_TABLE_TTL)
        self._online_plans: TimedCache[Any, tuple[list[FeatureSetRequest], list[OnlineTable]]] = TimedCache(
            _ONLINE_TABLE_TTL, most=1_000)
        self._peers: dict[str, FeatureStore] = {}

    @classmethod
    def init(cls, path: str | Path, *, name: str | None = None, registry_url: str | None = None,
             registry_schema: str | None = None, offline_store_uri: str | None = None,
             online_store: str | None = None, online_prefix: str | None = None,
             memory_limit: str | None = None, exist_ok: bool = True,
             clock: Callable[[], datetime] | None = None, spark: Any = None) -> FeatureStore:
        """Create a store in ``path`` (a ``featurestore.yaml`` plus embedded defaults) and open it."""
        folder = Path(path).resolve()
        config_file = folder / CONFIG_FILE_NAME
        if config_file.exists():
            if not exist_ok:
                raise ConfigError(f"{folder}: a feature store already exists here; open it with "
                                  "gm.FeatureStore(path)")
            return cls(folder, registry_schema=registry_schema, clock=clock, spark=spark)
        folder.mkdir(parents=True, exist_ok=True)
        config = StoreConfig(
            name=name or folder.name or "default",
            registry=RegistryConfig(url=registry_url or "sqlite:///registry.db", schema=registry_schema),
            offline_store=StoreConfig().offline_store.model_copy(
                update={"uri": offline_store_uri} if offline_store_uri else {}),
            online_store=_online_config(online_store, online_prefix),
            engine=EngineConfig(memory_limit=memory_limit),
        )
        config.dump(folder)
        store = cls(folder, clock=clock, spark=spark)
        store.registry  # noqa: B018 - creates the registry tables now, so errors show at init
        log.info("created feature store %s in %s", config.name, folder)
        return store

    @classmethod
    def connect(cls, url: str, *, token: str | None = None, timeout: float = 30.0) -> RemoteFeatureStore:
        """A store served by ``gristmill serve`` at ``url``, with the same methods for what the server offers
        (online lookups, catalog, search, data intervals, jobs, backfill); see ``gristmill.client``.

        >>> store = gm.FeatureStore.connect("http://features:8080", token="gm_...")   # doctest: +SKIP
        """
        from gristmill.client import RemoteFeatureStore

        return RemoteFeatureStore(url, token=token, timeout=timeout)

    # -- parts ----------------------------------------------------------------------------------------
    @property
    def name(self) -> str:
        return self.config.name

    @property
    def registry(self) -> Registry:
        if self._registry is None:
            from gristmill.registry.registry import Registry

            self._registry = Registry(self.config.registry_url(self.path), schema=self._registry_schema)
        return self._registry

    @property
    def engine(self) -> Engine:
        """The engine computing feature sets and training data (``engine.type`` in featurestore.yaml, or
        Spark on the session given as ``spark=``)."""
        if self._engine is None:
            from gristmill.compute.engines import create_engine

            self._engine = create_engine(self.config.engine, folder=self.path, session=self._spark)
        return self._engine

    @property
    def job_engine(self) -> Engine:
        """The engine materialization jobs run on: the store's engine where it can materialize, else the
        embedded DuckDB engine (Spark computes and retrieves; its jobs come with a later release)."""
        engine = self.engine
        if hasattr(engine, "materialize"):
            return engine
        if self._job_engine is None:
            from gristmill.compute.duckdb.engine import DuckDBEngine

            self._job_engine = DuckDBEngine(temp_directory=self.path / ".spill")
        return self._job_engine

    @property
    def offline_store(self) -> DeltaOfflineStore:
        if self._offline_store is None:
            self._offline_store = DeltaOfflineStore(self.config.offline_uri(self.path),
                                                    storage_options=self.config.offline_store.storage_options)
        return self._offline_store

    @property
    def online_store(self) -> OnlineStore:
        if self._online_store is None:
            cfg = self.config.online_store
            if cfg.type == "redis":
                from gristmill.stores.online.redis import RedisOnlineStore

                self._online_store = RedisOnlineStore(cfg.url or "redis://127.0.0.1:6379/0", prefix=cfg.prefix,
                                                      socket_timeout=cfg.timeout_seconds)
            else:
                from gristmill.stores.online.sqlite import SQLiteOnlineStore

                self._online_store = SQLiteOnlineStore(self.path / cfg.path)
        return self._online_store

    @property
    def materializer(self) -> Materializer:
        if self._materializer is None:
            self._materializer = Materializer(self)
        return self._materializer

    def now(self) -> datetime:
        """The store's clock (UTC, naive); injectable for tests of expiry."""
        return to_utc_naive(self._clock(), name="clock")

    def close(self) -> None:
        for peer in self._peers.values():
            peer.close()
        if self._online_store is not None:
            self._online_store.close()
            self._online_store = None
        if self._registry is not None:
            self._registry.close()
            self._registry = None

    def __enter__(self) -> FeatureStore:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"FeatureStore(name={self.name!r}, path={str(self.path)!r})"

    # -- plan and apply -------------------------------------------------------------------------------
    def plan(self, folder: str | Path, *, check_source: bool = True, allow_data_loss: bool = False) -> ApplyPlan:
        """What ``apply(folder)`` would do, without changing anything: per entity and feature set version
        create / update (field by field) / unchanged / refuse / invalid, with consequences as notes.

        New feature set specs are checked against a small sample of their source (``check_source=False``
        skips it). Disabling a store that holds materialized data is refused unless ``allow_data_loss``.

        >>> print(store.plan("repo/"))                      # doctest: +SKIP
        """
        from gristmill.apply import Planner

        return Planner(self, check_source=check_source, allow_data_loss=allow_data_loss).plan(folder)[0]

    def apply(self, folder: str | Path, *, check_source: bool = True, allow_data_loss: bool = False) -> ApplyPlan:
        """Register every entity and feature set YAML under ``folder``: the create and update items of
        ``plan(folder)``; refused and invalid items change nothing. Idempotent.

        Entity files have ``index_columns`` and no ``source``; feature set files have ``specification``."""
        from gristmill.apply import Planner

        return Planner(self, check_source=check_source, allow_data_loss=allow_data_loss).apply(folder)

    # -- entities -------------------------------------------------------------------------------------
    def register_entity(self, entity: Entity) -> str:
        """Register an entity version; returns "created", "unchanged" or "updated"."""
        return self.registry.put_entity(entity)

    def get_entity(self, name: str, version: str | int) -> Entity:
        return self.registry.get_entity(name, str(version))

    def list_entities(self, *, include_archived: bool = False) -> list[Entity]:
        return self.registry.list_entities(include_archived=include_archived)

    def archive_entity(self, name: str, version: str | int) -> None:
        self.registry.archive_entity(name, str(version))

    def restore_entity(self, name: str, version: str | int) -> None:
        self.registry.restore_entity(name, str(version))

    # -- feature sets ---------------------------------------------------------------------------------
    def register_feature_set(self, feature_set: FeatureSet, *, allow_data_loss: bool = False) -> str:
        """Register a feature set version (asset + spec + code snapshot); "created"/"unchanged"/"updated".

        A registered version is immutable except description, tags, stage and materialization settings.
        A settings change that disables a store holding materialized data raises ``DataLossError`` unless
        ``allow_data_loss``."""
        spec = feature_set.spec
        feature_set = feature_set.with_spec(self.with_parent(spec, feature_set.ref))
        self.check_entities(feature_set)
        registration = self.registration(feature_set)
        spec_dict = registration.spec
        try:
            registered = self.registry.get_feature_set(feature_set.name, feature_set.version)
        except NotFoundError:
            registered = None
        if registered is not None:
            spec_dict = _as_registered(registered, registration)
            self._refuse_data_loss(registered.asset, feature_set, allow=allow_data_loss)
        action = self.registry.put_feature_set(
            feature_set, spec=spec_dict, spec_folder=registration.spec_folder,
            code_files=registration.code_files, content_hash=registration.content_hash)
        self.materializer.sync_settings(feature_set)
        self._spec_cache.pop((feature_set.name, feature_set.version), None)
        return action

    def registration(self, feature_set: FeatureSet) -> Registration:
        """How ``feature_set`` would be stored: its spec with paths as written, its code files and digest."""
        spec = feature_set.spec
        self._check_code_paths(feature_set)
        code_files = {}
        for path in spec._code_files() if spec.folder else []:
            folder = spec.folder.resolve()                                     # type: ignore[union-attr]
            lexical = Path(os.path.normpath(path.absolute()))
            if not (lexical.is_relative_to(folder) and path.resolve().is_relative_to(folder)):
                raise SpecError(f"feature set {feature_set.ref}: code file {path} is outside the spec folder "
                                f"{spec.folder}; code is stored with the feature set, so keep it in the spec folder "
                                "and give its path relative to it")
            code_files[str(lexical.relative_to(folder))] = path.read_text(encoding="utf-8")  # keyed as written
        return Registration(spec=spec.to_dict(), spec_folder=str(spec.folder) if spec.folder else None,
                            code_files=code_files, content_hash=spec.content_hash())

    @staticmethod
    def _check_code_paths(feature_set: FeatureSet) -> None:
        """Declared code must be inside the spec folder and exist now: it is snapshotted into the registry, and
        a registered version only ever runs that snapshot."""
        spec = feature_set.spec
        for field_name, written in spec.code_paths():
            if spec.folder is None:
                raise SpecError(f"feature set {feature_set.ref}: {field_name}: the spec has code but no folder; load "
                                "it from its folder (FeatureSetSpec.load) so the code can be stored with it")
            folder = spec.folder.resolve()
            target = Path(os.path.normpath(folder / written))
            if not (target.is_relative_to(folder) and target.resolve().is_relative_to(folder)):
                raise SpecError(f"feature set {feature_set.ref}: {field_name}: '{written}' is outside the spec folder "
                                f"{spec.folder}; code is stored with the feature set, so keep it in the spec folder "
                                "and give its path relative to it")
            has_code = target.is_file() or (target.is_dir() and any(
                p for p in target.rglob("*.py") if "__pycache__" not in p.parts))
            if not has_code:
                raise SpecError(f"feature set {feature_set.ref}: {field_name}: '{written}' (resolved to {target}) "
                                "holds no Python code; give the .py file or the folder holding the module, relative "
                                "to the spec folder")

    def immutable_changes(self, registered: Any, registration: Registration,
                          entities: Sequence[str] | None = None) -> list[Any]:
        """The changes of what a registered version computes (spec fields, entities, code files by name) that
        registering ``registration`` would make; empty when it computes the same."""
        from gristmill.apply import FieldChange, diff

        changes = diff(registered.spec, _as_registered(registered, registration))
        if entities is not None and list(registered.asset.entities) != list(entities):
            changes.append(FieldChange("entities", list(registered.asset.entities), list(entities)))
        old_code, new_code = registered.code_files, registration.code_files
        for name in sorted(set(old_code) | set(new_code)):
            if old_code.get(name) != new_code.get(name):
                old = "(none)" if name not in old_code else "registered content"
                new = "(removed)" if name not in new_code else "changed content"
                changes.append(FieldChange(f"code file {name}", old, new))
        return changes

    def data_losses(self, old: FeatureSet, new: FeatureSet) -> dict[str, str]:
        """What going from ``old``'s materialization settings to ``new``'s would drop: per store it disables
        (offline, online), a text saying what that store holds; stores holding nothing are left out."""
        before = old.materialization_settings or MaterializationSettings()
        after = new.materialization_settings or MaterializationSettings()
        losses = {}
        for kind in ("offline", "online"):
            if getattr(before, f"{kind}_enabled") and not getattr(after, f"{kind}_enabled"):
                held = self.materializer.data_held(old, kind)
                if held:
                    losses[kind] = held
        return losses

    def _refuse_data_loss(self, old: FeatureSet, new: FeatureSet, *, allow: bool) -> None:
        for kind, held in self.data_losses(old, new).items():
            if not allow:
                raise DataLossError(f"feature set {new.ref}: disabling {kind} materialization drops {held}; "
                                    f"keep {kind}_enabled: true, or pass allow_data_loss=True "
                                    "(CLI: --allow-data-loss) to drop it")
            log.warning("%s: %s materialization disabled; dropping %s", new.ref, kind, held)

    def check_entities(self, feature_set: FeatureSet, *, planned: Mapping[str, Entity] | None = None) -> None:
        """The entities of ``feature_set`` must be registered (or in ``planned``, by ``name:version``) and their
        index columns must equal the spec's."""
        declared = {c.name: c.type for c in feature_set.spec.index_columns}
        covered: dict[str, Any] = {}
        for ref in feature_set.entity_refs:
            entity = (planned or {}).get(str(ref))
            if entity is None:
                try:
                    entity = self.registry.get_entity(*ref)
                except NotFoundError as exc:
                    raise SpecError(f"feature set {feature_set.ref}: entities: {exc}; register the entity first "
                                    "(put its YAML in the applied folder)") from None
            covered.update({c.name: c.type for c in entity.index_columns})
        if feature_set.entities and covered != declared:
            raise SpecError(f"feature set {feature_set.ref}: index_columns "
                            f"{_columns_text(declared)} do not match its entities' index columns "
                            f"{_columns_text(covered)}; make them equal (names and types)")

    def get_feature_set(self, name: str, version: str | int | None = None) -> FeatureSet:
        """A registered feature set with its spec loaded (``version=None``: the latest)."""
        record = self.registry.get_feature_set(name, None if version is None else str(version))
        return record.asset.with_spec(self.with_parent(self._registered_spec(record), record.asset.ref))

    def _registered_spec(self, record: Any) -> FeatureSetSpec:
        """A registered spec ready to compute: code from the registry's snapshot, relative source paths
        resolved against the folder the version was last applied from."""
        spec = FeatureSetSpec.from_dict(record.spec, folder=self._spec_folder(record),
                                        source_name=f"registered spec of {record.asset.ref}")
        return _located(spec, record.spec_folder)

    def with_parent(self, spec: FeatureSetSpec, ref: str, depth: int = 0) -> FeatureSetSpec:
        """A derived spec (source type featureset) with its parent's spec attached, recursively."""
        parent_ref = spec.parent_ref
        if parent_ref is None:
            return spec
        if depth > 20:
            raise SpecError(f"feature set {ref}: more than 20 levels of derived feature sets; is there a cycle?")
        try:
            parent = self.registry.get_feature_set(*parent_ref)
        except NotFoundError as exc:
            raise MissingParentError(f"feature set {ref}: source.path: {exc}; a derived feature set reads a "
                                     "registered one, register it first") from None
        return spec.with_parent(self.with_parent(self._registered_spec(parent), parent.asset.ref, depth + 1))

    def _spec_folder(self, record: Any) -> Path | None:
        """Where a registered version's code lives: the snapshot taken at apply, written out of the registry
        under ``.gristmill/specs`` — never the files on disk, which may have changed (or appeared) since. A
        spec without code needs no folder for code; its relative source path resolves in ``spec_folder``."""
        declares_code = bool(record.spec.get("source", {}).get("source_process_code")) or bool(
            (record.spec.get("feature_transformation") or {}).get("transformation_code"))
        if not record.code_files and not declares_code:
            return Path(record.spec_folder) if record.spec_folder else None
        folder = self.path / ".gristmill" / "specs" / record.asset.name / record.asset.version
        marker = folder / ".content_hash"
        if not marker.exists() or marker.read_text() != record.content_hash:
            if folder.exists():
                shutil.rmtree(folder)
            folder.mkdir(parents=True, exist_ok=True)
            for relative, text in record.code_files.items():
                target = folder / relative
                target.parent.mkdir(parents=True, exist_ok=True)
                target.write_text(text, encoding="utf-8")
            marker.write_text(record.content_hash)
        return folder

    def list_feature_sets(self, *, name: str | None = None, include_archived: bool = False) -> list[FeatureSet]:
        return [r.asset for r in self.registry.list_feature_sets(name=name, include_archived=include_archived)]

    def update_feature_set(self, name: str, version: str | int, *, description: Any = _UNSET, tags: Any = _UNSET,
                           stage: Any = _UNSET, materialization_settings: Any = _UNSET) -> FeatureSet:
        """Change the mutable fields of a registered version."""
        changes = {k: v for k, v in (("description", description), ("tags", tags), ("stage", stage),
                                     ("materialization_settings", materialization_settings)) if v is not _UNSET}
        current = self.get_feature_set(name, version)
        self.registry.update_feature_set(name, str(version), **changes)
        updated = self.get_feature_set(name, version)
        self._refuse_data_loss(current, updated, allow=True)      # asked for explicitly: logs what it drops
        self.materializer.sync_settings(updated)
        self._online_tables.discard((name, str(version)))
        self._online_plans.clear()
        return updated

    def archive_feature_set(self, name: str, version: str | int) -> None:
        self.registry.archive_feature_set(name, str(version))

    def restore_feature_set(self, name: str, version: str | int) -> None:
        self.registry.restore_feature_set(name, str(version))

    def list_features(self, *, feature_set: str | None = None, include_archived: bool = False) -> list[Any]:
        return self.registry.list_features(feature_set=feature_set, include_archived=include_archived)

    def search_features(self, query: str, *, limit: int = 100) -> list[Any]:
        """Features whose name, description or tags (or their feature set's) match every term."""
        return self.registry.search_features(query, limit=limit)

    # -- computing and retrieval ----------------------------------------------------------------------
    def preview(self, name: str, version: str | int, start: datetime | str, end: datetime | str) -> FeatureFrame:
        """Compute a registered feature set over ``[start, end)`` without storing anything."""
        feature_set = self.get_feature_set(name, version)
        return self.engine.compute(feature_set.spec, start, end, label=feature_set.ref)

    def get_offline_features(self, features: Any, observations: Any, timestamp_column: str, *,
                             full_feature_names: bool = False, as_known_at: bool = False,
                             aggregation_mode: str = "per_event", materialized_only: bool = False,
                             from_source: bool = False) -> RetrievalResult:
        """Point-in-time correct training data (SPEC §3).

        ``features``: ``["transactions:1:amount_7d_sum", ...]``, a FeatureRetrievalSpec or its path.
        ``observations``: pandas / Polars / Arrow table, or a Parquet / CSV path. Returns a result with
        ``to_pandas()``, ``to_arrow()``, ``to_polars()`` and ``to_parquet(path)``: every observation
        column in order, then the features in request order; no observation row dropped or reordered.
        Materialized offline data is read where its interval is Complete and the rest is computed from
        source (same answers); ``materialized_only=True`` refuses to compute, ``from_source=True`` ignores
        materialized data. ``as_known_at`` always computes from source (materialized rows keep one row per
        key and time, so they cannot answer what was known earlier).

        >>> store.get_offline_features(["transactions:1:amount_7d_sum"], obs, "ts").to_pandas()  # doctest: +SKIP
        """
        requests = plan_requests(references(features), self._resolve, full_feature_names=full_feature_names,
                                 store_name=self.name)
        if not from_source:
            requests = [self._with_materialized(r, strict=materialized_only) if r.store is None else
                        replace(self.peer(r.store)._with_materialized(replace(r, store=None), strict=materialized_only),
                                store=r.store) for r in requests]
        return self.engine.retrieve(requests, observations, timestamp_column, as_known_at=as_known_at,
                                    aggregation_mode=aggregation_mode)

    def _with_materialized(self, request: FeatureSetRequest, *, strict: bool) -> FeatureSetRequest:
        name, version = request.feature_set
        state = self.materializer.records.state(name, version, "offline")
        complete = tuple((i.start, i.end) for i in state.timeline.intervals(include_none=False)
                         if i.status == DataStatus.COMPLETE)
        if not complete and not strict:
            return request
        table = self.materializer.offline_table(self._cached_feature_set(name, version),
                                                state.materialization_version)
        materialized = MaterializedData(store=self.offline_store, table=table, complete=complete, strict=strict)
        return replace(request, materialized=materialized)

    def _cached_feature_set(self, name: str, version: str) -> FeatureSet:
        """Registered versions are immutable in what they compute, so their specs are cached."""
        key = (name, version)
        if key not in self._spec_cache:
            self._spec_cache[key] = self.get_feature_set(name, version)
        return self._spec_cache[key]

    def peer(self, name: str) -> FeatureStore:
        """Another feature store named under ``peers:`` in ``featurestore.yaml`` (opened once, same clock)."""
        opened = self._peers.get(name)
        if opened is None:
            folder = self.config.peers.get(name)
            if folder is None:
                known = ", ".join(sorted(self.config.peers)) or "none"
                raise RetrievalError(f"features: store '{name}' is not a known store (this one is '{self.name}'; "
                                     f"peers: {known}); add it under peers: in {self.path / CONFIG_FILE_NAME}, e.g. "
                                     f"peers: {{{name}: ../{name}}}")
            path = Path(folder) if Path(folder).is_absolute() else self.path / folder
            opened = self._peers[name] = FeatureStore(path, clock=self._clock)
        return opened

    def _resolve(self, store: str | None, name: str, version: str) -> FeatureSetSpec:
        return (self if store is None else self.peer(store))._resolve_spec(name, version)

    def _resolve_spec(self, name: str, version: str) -> FeatureSetSpec:
        return self._cached_feature_set(name, version).spec

    # -- models and lineage -----------------------------------------------------------------------------
    def register_model(self, name: str, version: str | int, retrieval_spec: Any, *, description: str | None = None,
                       tags: dict[str, str] | None = None) -> str:
        """Register the model ``name:version`` with the features it uses (a ``FeatureRetrievalSpec``, a path
        to ``feature_retrieval_spec.yaml`` or its folder, or a list of ``feature_set:version:feature``);
        this records lineage. Every feature must be registered. Returns created / unchanged / updated.

        >>> store.register_model("churn", 3, "models/churn/feature_retrieval_spec.yaml")   # doctest: +SKIP
        """
        from gristmill.registry.lineage import ModelRecords
        from gristmill.spec.model import Model
        from gristmill.spec.retrieval_spec import FeatureRetrievalSpec

        if not isinstance(retrieval_spec, FeatureRetrievalSpec):
            if isinstance(retrieval_spec, Path) or (isinstance(retrieval_spec, str) and (
                    Path(retrieval_spec).exists() or retrieval_spec.endswith((".yaml", ".yml")))):
                retrieval_spec = FeatureRetrievalSpec.load(retrieval_spec)
            else:
                retrieval_spec = FeatureRetrievalSpec.from_features(
                    [retrieval_spec] if isinstance(retrieval_spec, str) else list(retrieval_spec))
        if any(f.feature_ref.store == self.name for f in retrieval_spec.features):   # naming this store: no prefix
            data = retrieval_spec.to_dict()
            for entry in data["feature_stores"]:
                for feature in entry["features"]:
                    store, feature_set = VersionRef.parse_qualified(feature["feature_set"])
                    if store == self.name:
                        feature["feature_set"] = str(feature_set)
            retrieval_spec = FeatureRetrievalSpec.model_validate(data)
        model = Model(name=name, version=str(version), retrieval_spec=retrieval_spec, description=description,
                      tags=tags or {})
        for ref in model.retrieval_spec.features:           # features of other stores: they must exist there
            store = ref.feature_ref.store
            if store and store != self.name:
                spec = self.peer(store)._resolve_spec(*ref.feature_ref.feature_set_ref)
                if spec.feature(ref.feature_name) is None:
                    raise NotFoundError(f"model {model.ref}: feature set {ref.feature_set} has no feature "
                                        f"{ref.feature_name}; register it first or fix the retrieval spec")
        result = ModelRecords(self.registry).put(model)
        log.info("model %s: %s (%d features)", model.ref, result, len(model.features))
        return result

    def get_model(self, name: str, version: str | int | None = None) -> Any:
        """The registered model ``name:version`` (``version=None``: the latest); pass it as the features of
        ``get_offline_features`` or ``get_online_features`` to retrieve exactly what it uses."""
        from gristmill.registry.lineage import ModelRecords

        return ModelRecords(self.registry).get(name, version)

    def list_models(self) -> list[Any]:
        from gristmill.registry.lineage import ModelRecords

        return ModelRecords(self.registry).every()

    def models_using(self, feature_set: str, version: str | int | None = None) -> list[Any]:
        """Lineage: the registered models that use ``feature_set`` (any version, or ``version``)."""
        from gristmill.registry.lineage import ModelRecords

        return ModelRecords(self.registry).using(feature_set, version)

    # -- materialization --------------------------------------------------------------------------------
    def backfill(self, name: str, version: str | int, *, start: datetime | str | None = None,
                 end: datetime | str | None = None, data_status: Sequence[str] | None = None,
                 job_id: str | None = None, stores: Sequence[str] | None = None,
                 on_job: Callable[..., None] | None = None, allow_future: bool = False) -> list[Any]:
        """Materialize a feature set version: one job per matching data interval in ``[start, end)``.

        ``data_status`` picks intervals by status (``["Incomplete", "None"]``...); ``job_id`` retries a failed
        job's window. Jobs run in this process; returns their records (Completed or Failed, with metrics).
        A window may span at most ``limits.backfill_max_span_days`` (featurestore.yaml) and may not end after
        now unless ``allow_future=True``.

        >>> store.backfill("transactions", 1, start="2025-01-01", end="2025-02-01")   # doctest: +SKIP
        """
        feature_set = self._cached_feature_set(name, str(version))
        return self.materializer.backfill(feature_set, start=start, end=end, data_status=data_status,
                                          job_id=job_id, stores=stores, on_job=on_job,
                                          allow_future=allow_future)

    def data_intervals(self, name: str, version: str | int) -> dict[str, list[Any]]:
        """The data status timeline of each store (offline, online) of a feature set version."""
        return self.materializer.intervals(self._cached_feature_set(name, str(version)))

    def list_jobs(self, *, feature_set: str | None = None, version: str | int | None = None,
                  status: str | None = None, limit: int = 100) -> list[Any]:
        return self.materializer.records.list_jobs(feature_set=feature_set, version=version, status=status,
                                                   limit=limit)

    def get_job(self, job_id: str) -> Any:
        return self.materializer.records.get_job(job_id)

    def cancel_job(self, job_id: str, reason: str = "cancelled by user") -> Any:
        """Cancel a queued or running job (e.g. one whose process was killed); its window turns Incomplete."""
        return self.materializer.cancel(job_id, reason)

    def feature_statistics(self, name: str, version: str | int, *, store: str = "offline",
                           start: datetime | str | None = None, end: datetime | str | None = None,
                           sample_rows: int | None = None, recorded_only: bool = False) -> FeatureSetStatistics:
        """Feature statistics per window and merged (``FeatureSetStatistics``): those each materialization job
        recorded for ``store`` (windows overlapping ``[start, end)``), or, with ``sample_rows`` or when nothing
        is recorded, computed from the source over ``[start, end)`` from at most ``sample_rows`` rows
        (default 100,000). ``recorded_only=True`` never computes: no windows when none are recorded.

        >>> stats = store.feature_statistics("transactions", 1)                          # doctest: +SKIP
        >>> stats.summary.feature("amount").mean                                         # doctest: +SKIP
        >>> store.feature_statistics("draft", 1, start="2024-01-01", end="2024-01-08")   # doctest: +SKIP
        """
        return self.materializer.statistics(self._cached_feature_set(name, str(version)), store=store, start=start,
                                            end=end, sample_rows=sample_rows, recorded_only=recorded_only)

    def freshness(self, name: str, version: str | int, *, grace: timedelta | None = None) -> Freshness:
        """How current a feature set version's materialized data is, per store: ``"fresh"``, ``"stale"``,
        ``"never materialized"``, ``"not scheduled"`` or ``"disabled"``, with the newest event time, the last
        successful job and the next scheduled run (``jobs/freshness.py``; ``grace`` defaults to half the
        schedule's cadence).

        >>> store.freshness("transactions", 1).state      # doctest: +SKIP
        'fresh'
        """
        return self.materializer.freshness(self.get_feature_set(name, version), grace=grace)

    def cost(self, *, by: str = "feature_set", feature_set: str | None = None) -> list[Any]:
        """Compute seconds, rows and bytes per job, feature set or store."""
        return self.materializer.records.cost_summary(by=by, feature_set=feature_set)  # type: ignore[arg-type]

    # -- online -----------------------------------------------------------------------------------------
    def get_online_features(self, features: Any, observations: Any, *, full_feature_names: bool = False,
                            now: datetime | str | None = None, explain: bool = False) -> OnlineResult:
        """The latest feature values for the keys in ``observations`` (dict of columns, list of row dicts or a
        DataFrame). Output: observation columns, then features; unknown or expired keys give nulls.

        ``now`` answers as of that time instead of the store's clock, as far as an online store can: it keeps
        only the newest row per key, so a value is returned when that row's event time is at or before ``now``
        and it has not expired by then (event time + ``temporal_join_lookback``). A key whose stored row is
        newer than ``now`` makes the lookup fail with an error naming the feature set (its value at ``now`` is
        no longer stored: use ``get_offline_features`` for past times). Redis deletes expired rows, so as of
        a time before the current one a value that has expired since reads as null.
        ``explain`` fills ``result.notes`` with why keys got no value (expired when, never materialized, not in
        the store); it costs one more store read per feature set with such keys, so it is off by default.

        >>> store.get_online_features(["transactions:1:amount_7d_sum"], {"account_id": ["A1"]})  # doctest: +SKIP
        >>> store.get_online_features(["transactions:1:amount_7d_sum"], {"account_id": ["A1"]},
        ...                           now="2025-03-01T12:00:00")                              # doctest: +SKIP
        """
        from gristmill.serving import lookup

        # The plan for a feature list is cached for a few seconds: parsing and resolving it costs more than
        # the store round trip of a 1-key lookup.
        def plan() -> tuple[list[FeatureSetRequest], list[OnlineTable]]:
            requests = plan_requests(references(features), self._resolve,
                                     full_feature_names=full_feature_names, store_name=self.name)
            return requests, [(self if r.store is None else self.peer(r.store))._online_table(*r.feature_set)
                              for r in requests]

        cache_key = (tuple(features), full_feature_names) if isinstance(features, list | tuple) and all(
            isinstance(f, str) for f in features) else None
        requests, tables = plan() if cache_key is None else self._online_plans.get(cache_key, plan)
        stores = [self.online_store if r.store is None else self.peer(r.store).online_store for r in requests]
        at = self.now() if now is None else to_utc_naive(now, name="now")
        return lookup(requests, tables, stores, observations, now=at, as_of=now is not None,
                      explain=partial(self._explain_missing, now=at) if explain else None)

    def _explain_missing(self, request: FeatureSetRequest, table: OnlineTable, store: OnlineStore,
                         keys: list[tuple[Any, ...]], *, now: datetime) -> str | None:
        """Why ``keys`` of one feature set got no online value at ``now``: the note of ``explain=True``."""
        from gristmill.serving import key_text
        from gristmill.spec.duration import Duration

        owner = self if request.store is None else self.peer(request.store)
        label = request.label
        stored = store.read_stored(table, keys)
        expired = [(key, row) for key, row in zip(keys, stored, strict=True) if row is not None]
        absent = [key for key, row in zip(keys, stored, strict=True) if row is None]
        lookback = Duration.from_timedelta(table.ttl).words if table.ttl is not None else "no limit"
        notes = []
        if expired:
            key, row = max(expired, key=lambda item: item[1].event_micros)
            notes.append(f"{len(expired)} key(s) have expired values (online values expire at event time + "
                         f"temporal_join_lookback, {lookback}): the newest, {key_text(key)}, is from "
                         f"{row.event_time:%Y-%m-%d %H:%M:%S} and expired at {row.expires_at:%Y-%m-%d %H:%M:%S} "
                         f"(as of {now:%Y-%m-%d %H:%M:%S} UTC)")
        if absent:
            name, version = request.feature_set
            jobs = [j for j in owner.materializer.records.list_jobs(feature_set=name, version=version,
                                                                      status="Completed", limit=1_000)
                    if "online" in j.stores
                    and j.materialization_versions.get("online") == table.materialization_version]
            outcomes = [j.online for j in jobs if j.online is not None]
            example = f"e.g. {key_text(absent[0])}"
            newest = max((o for o in outcomes if o.newest_event_time is not None),
                         key=lambda o: o.newest_event_time, default=None)         # type: ignore[arg-type,return-value]
            if not jobs:
                notes.append(f"{len(absent)} key(s) ({example}) were never materialized: no online backfill of "
                             f"{label} has completed (gristmill backfill {label} --start ... --end ...)")
            elif outcomes and len(outcomes) == len(jobs) and sum(o.keys_written for o in outcomes) == 0:
                when = (f": the newest event, {newest.newest_event_time:%Y-%m-%d %H:%M:%S}, expired at "
                        f"{newest.expires_at:%Y-%m-%d %H:%M:%S}" if newest is not None and newest.expires_at else "")
                notes.append(f"{len(absent)} key(s) ({example}) were never materialized online: every online "
                             f"backfill of {label} skipped its keys as already expired (values expire at event "
                             f"time + temporal_join_lookback, {lookback}){when}; backfill a more recent window")
            elif not store.keeps_expired_rows:
                when = (f"; the newest event materialized, {newest.newest_event_time:%Y-%m-%d %H:%M:%S}, "
                        f"expires at {newest.expires_at:%Y-%m-%d %H:%M:%S}"
                        if newest is not None and newest.expires_at else "")
                notes.append(f"{len(absent)} key(s) ({example}) are not in the online store: no materialized "
                             f"window has rows for them, or their values expired (event time + "
                             f"temporal_join_lookback, {lookback}) and Redis deleted them{when}")
            else:
                skipped = sum(o.keys_expired for o in outcomes)
                why = (f"they have no rows in the materialized windows, or their newest row had already expired "
                       f"when it was materialized (the jobs skipped {skipped:,} such key(s); values expire at event "
                       f"time + temporal_join_lookback, {lookback})" if skipped else "they have no rows in the "
                       "materialized windows")
                notes.append(f"{len(absent)} key(s) ({example}) are not in the online store: the {len(jobs)} "
                             f"completed online backfill job(s) of {label} wrote no value for them: {why}")
        return f"{label}: " + "; ".join(notes) if notes else None

    def _online_table(self, name: str, version: str) -> OnlineTable:
        """The online table of a version; its materialization version is re-read every few seconds."""
        def load() -> OnlineTable:
            feature_set = self._cached_feature_set(name, version)
            state = self.materializer.records.state(name, version, "online")
            if not state.enabled:
                raise RetrievalError(f"{name}:{version} is not materialized online; set "
                                     "materialization_settings.online_enabled: true and backfill it")
            return self.materializer.online_table(feature_set, state.materialization_version)

        return self._online_tables.get((name, version), load)


class MissingParentError(SpecError, NotFoundError):
    """A derived feature set whose parent (``source.path``) is not registered."""


def _utc_now() -> datetime:
    return datetime.now(UTC).replace(tzinfo=None)


def _online_config(online_store: str | None, prefix: str | None) -> OnlineStoreConfig:
    """``None``/"sqlite" -> the embedded SQLite file; a ``redis://`` URL -> Redis."""
    if online_store is None or online_store == "sqlite":
        return OnlineStoreConfig()
    if online_store.startswith(("redis://", "rediss://", "unix://")):
        return OnlineStoreConfig(type="redis", url=online_store, prefix=prefix or "gristmill")
    raise ConfigError(f"online_store (--online-store): '{online_store}' is not 'sqlite' or a Redis URL such as "
                      "redis://localhost:6379/0 (rediss:// and unix:// work too)")


def _located(spec: FeatureSetSpec, folder: str | None) -> FeatureSetSpec:
    """``spec`` with a relative local source path resolved against ``folder`` (where it was applied from)."""
    path = spec.source.path
    if (path is None or folder is None or is_uri(path) or spec.source.type.value == "featureset"
            or Path(path.removeprefix("file://")).expanduser().is_absolute()):
        return spec
    source = spec.source.model_copy(update={"path": str(resolve_local(path, Path(folder)))})
    return spec.model_copy(update={"source": source}).with_folder(spec.folder)


def _as_registered(registered: Any, registration: Registration) -> dict[str, Any]:
    """The spec dict of ``registration`` in the form ``registered`` was stored in. Versions registered before
    paths were stored as written hold absolute source paths: the same file reached by a relative path is the
    same spec."""
    old_path = registered.spec.get("source", {}).get("path")
    new_path = registration.spec.get("source", {}).get("path")
    if (old_path and new_path and old_path != new_path and not is_uri(new_path) and Path(old_path).is_absolute()
            and registration.spec_folder
            and str(resolve_local(new_path, Path(registration.spec_folder))) == old_path):
        return {**registration.spec, "source": {**registration.spec["source"], "path": old_path}}
    return registration.spec


def _columns_text(columns: dict[str, Any]) -> str:
    return "[" + ", ".join(f"{name}: {getattr(t, 'value', t)}" for name, t in columns.items()) + "]"
