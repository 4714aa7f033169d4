"""``Registry``: the catalog of entities, feature sets and features, in SQLite or PostgreSQL.

Versioning rules live here: a registered version is immutable except for its description, tags,
stage (and, for feature sets, materialization settings); new logic needs a new version. Archived
versions are hidden from lists and "latest" lookups but stay resolvable by their exact version.
"""

from __future__ import annotations

import difflib
import re
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, replace
from datetime import UTC, datetime
from enum import Enum
from pathlib import Path
from types import TracebackType
from typing import Any, Final, Literal, TypeVar

import sqlalchemy as sa
from sqlalchemy import event
from sqlalchemy import exc as sa_exc
from sqlalchemy.engine import URL, Connection, Engine, RowMapping, make_url
from sqlalchemy.pool import StaticPool

from gristmill import loop_bridge
from gristmill.errors import (
    ConfigError,
    ImmutableError,
    NotFoundError,
    RegistryError,
    RegistryUnavailableError,
    install_hint,
)
from gristmill.registry import models
from gristmill.registry.search import query_terms, rank_feature, searchable_text
from gristmill.spec.entity import Entity
from gristmill.spec.featureset import FeatureSet, MaterializationSettings
from gristmill.spec.featureset_spec import FeatureSetSpec
from gristmill.spec.types import FeatureType
from gristmill.spec.yaml_io import validate

PutResult = Literal["created", "unchanged", "updated"]
T = TypeVar("T")


class _Unset(Enum):
    UNSET = "UNSET"


UNSET: Final = _Unset.UNSET
"""Marks an argument of ``update_feature_set`` that was not given (``None`` clears a value)."""

ENTITY_MUTABLE_FIELDS: Final = ("description", "tags", "stage")
FEATURE_SET_MUTABLE_FIELDS: Final = ("description", "tags", "stage", "materialization_settings")
# Where the spec folder lives is not part of what a version computes: it may move without a new version.
FEATURE_SET_LOCATION_FIELDS: Final = ("specification_path", "spec_folder")

_SCHEMA_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]{0,62}$")
_WRITE_OPTION = "gristmill_write"
_OPEN_LOCK_KEY = 0x6772_6973_746D  # serialises concurrent "create tables" on one PostgreSQL database
_EXAMPLE_URLS = "sqlite:///path/registry.db or postgresql+psycopg://user@host:5432/database"


@dataclass(frozen=True)
class RegisteredFeatureSet:
    """A registered feature set version: the asset plus the spec and code it was registered with."""

    asset: FeatureSet
    spec: dict[str, Any]
    spec_folder: str | None
    code_files: dict[str, str]
    content_hash: str
    archived: bool
    created_at: datetime
    updated_at: datetime

    @property
    def name(self) -> str:
        return self.asset.name

    @property
    def version(self) -> str:
        return self.asset.version

    @property
    def ref(self) -> str:
        return self.asset.ref

    def load_spec(self) -> FeatureSetSpec:
        """The registered spec as an object; relative paths resolve against ``spec_folder``."""
        return FeatureSetSpec.from_dict(self.spec, folder=self.spec_folder,
                                        source_name=f"registered feature set {self.ref}")


@dataclass(frozen=True)
class FeatureInfo:
    """One feature of a registered feature set version, as listed and searched in the catalog."""

    feature_set: str
    version: str
    name: str
    type: FeatureType
    description: str | None
    tags: dict[str, str]

    @property
    def ref(self) -> str:
        """The reference used in retrieval specs: ``featureset:version:feature``."""
        return f"{self.feature_set}:{self.version}:{self.name}"


def version_key(version: str) -> tuple[int, int, str]:
    """Sort key for versions: numeric versions compare as numbers and above non-numeric ones."""
    return (1, int(version), "") if version.isdigit() else (0, 0, version)


class Registry:
    """The catalog of entities, feature sets and features, stored in SQLite or PostgreSQL.

    Tables are created on open. ``schema`` puts them in that PostgreSQL schema (created if missing);
    SQLite ignores it.

    >>> registry = Registry("sqlite:///store/registry.db")          # doctest: +SKIP
    >>> registry.put_entity(Entity.load("entities/account.yaml"))   # doctest: +SKIP
    'created'
    """

    def __init__(self, url: str, *, schema: str | None = None) -> None:
        self._url = _parse_url(url)
        self._display_url = self._url.render_as_string(hide_password=True)
        self._backend = self._url.get_backend_name()
        if self._backend != "postgresql":
            schema = None
        if schema is not None and not _SCHEMA_NAME.match(schema):
            raise ConfigError(f"registry schema {schema!r} is not a valid schema name; "
                              "use letters, digits and underscores (at most 63 characters)")
        self._schema = schema
        self._base_engine = _create_engine(self._url, self._display_url)
        self._engine: Engine = (self._base_engine.execution_options(schema_translate_map={None: schema})
                                if schema else self._base_engine)
        try:
            self._create_tables()
        except BaseException:
            self._base_engine.dispose()
            raise

    # -- lifecycle ----------------------------------------------------------------------------------
    @property
    def url(self) -> str:
        """The database URL, password hidden."""
        return self._display_url

    @property
    def schema(self) -> str | None:
        return self._schema

    @property
    def engine(self) -> Engine:
        """The SQLAlchemy engine (tables mapped into ``schema``), for components sharing this database."""
        return self._engine

    def close(self) -> None:
        """Close every pooled connection."""
        self._base_engine.dispose()

    def __enter__(self) -> Registry:
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.close()

    def __repr__(self) -> str:
        schema = f", schema={self._schema!r}" if self._schema else ""
        return f"Registry({self._display_url!r}{schema})"

    # -- entities -----------------------------------------------------------------------------------
    def put_entity(self, entity: Entity) -> PutResult:
        """Register ``entity``; an existing version may only change description, tags and stage.

        Returns "created", "unchanged" or "updated"; raises ``ImmutableError`` for other changes.
        """
        values: dict[str, Any] = {
            "index_columns": [c.model_dump(mode="json") for c in entity.index_columns],
            "description": entity.description,
            "tags": dict(entity.tags),
            "stage": entity.stage.value,
        }
        return self._retry_on_conflict(
            lambda: self._put(models.entities, entity.name, entity.version, values,
                              mutable=ENTITY_MUTABLE_FIELDS, refuse=self._refuse_entity_change))

    def get_entity(self, name: str, version: str | int | None = None) -> Entity:
        """The entity ``name:version``; ``version=None`` means the latest non-archived version."""
        with self._transaction() as conn:
            row = self._find(conn, models.entities, "entity", name, version)
        return _entity_from_row(row)

    def list_entities(self, *, include_archived: bool = False) -> list[Entity]:
        """Every entity version, sorted by name and version."""
        query = sa.select(models.entities)
        if not include_archived:
            query = query.where(models.entities.c.archived.is_(False))
        with self._transaction() as conn:
            rows = conn.execute(query).mappings().all()
        return [_entity_from_row(r) for r in _sorted_rows(rows)]

    def archive_entity(self, name: str, version: str | int) -> None:
        """Hide ``name:version`` from lists and latest lookups; it stays resolvable by version."""
        self._set_archived(models.entities, "entity", name, version, archived=True)

    def restore_entity(self, name: str, version: str | int) -> None:
        """Undo ``archive_entity``."""
        self._set_archived(models.entities, "entity", name, version, archived=False)

    # -- feature sets -------------------------------------------------------------------------------
    def put_feature_set(self, feature_set: FeatureSet, *, spec: Mapping[str, Any], spec_folder: str | None,
                        code_files: Mapping[str, str], content_hash: str) -> PutResult:
        """Register a feature set version with its spec (as a dict), spec folder and code files.

        An existing version may only change description, tags, stage and materialization settings
        (and where its spec folder lives); a different spec, content hash or entity list raises
        ``ImmutableError``. The entities it uses must be registered and their index columns must be
        index columns of the spec.
        """
        spec_object = FeatureSetSpec.from_dict(dict(spec), folder=spec_folder,
                                               source_name=f"feature set {feature_set.ref}: spec")
        settings = feature_set.materialization_settings
        values: dict[str, Any] = {
            "specification_path": feature_set.specification.path,
            "entities": list(feature_set.entities),
            "stage": feature_set.stage.value,
            "description": feature_set.description,
            "tags": dict(feature_set.tags),
            "materialization_settings": _settings_json(settings),
            "spec": spec_object.to_dict(),
            "spec_folder": spec_folder,
            "code_files": dict(code_files),
            "content_hash": content_hash,
        }
        features = [
            {"feature_set": feature_set.name, "version": feature_set.version, "name": f.name, "position": i,
             "type": f.type.value, "description": f.description, "tags": dict(f.tags)}
            for i, f in enumerate(spec_object.features)
        ]

        def put() -> PutResult:
            with self._transaction(write=True) as conn:
                self._check_entities(conn, feature_set, spec_object)
            return self._put(models.feature_sets, feature_set.name, feature_set.version, values,
                             mutable=FEATURE_SET_MUTABLE_FIELDS + FEATURE_SET_LOCATION_FIELDS,
                             quiet=FEATURE_SET_LOCATION_FIELDS,
                             refuse=self._refuse_feature_set_change, children=(models.features, features))

        return self._retry_on_conflict(put)

    def get_feature_set(self, name: str, version: str | int | None = None) -> RegisteredFeatureSet:
        """The feature set ``name:version``; ``version=None`` means the latest non-archived version."""
        with self._transaction() as conn:
            row = self._find(conn, models.feature_sets, "feature set", name, version)
        return _feature_set_from_row(row)

    def list_feature_sets(self, *, name: str | None = None,
                          include_archived: bool = False) -> list[RegisteredFeatureSet]:
        """Every feature set version (or every version of ``name``), sorted by name and version."""
        table = models.feature_sets
        query = sa.select(table)
        if name is not None:
            query = query.where(table.c.name == name)
        if not include_archived:
            query = query.where(table.c.archived.is_(False))
        with self._transaction() as conn:
            rows = conn.execute(query).mappings().all()
        return [_feature_set_from_row(r) for r in _sorted_rows(rows)]

    def update_feature_set(
        self,
        name: str,
        version: str | int,
        *,
        description: str | _Unset | None = UNSET,
        tags: Mapping[str, str] | _Unset = UNSET,
        stage: str | _Unset = UNSET,
        materialization_settings: MaterializationSettings | Mapping[str, Any] | _Unset | None = UNSET,
    ) -> RegisteredFeatureSet:
        """Change the mutable fields of a registered version; arguments not given are kept.

        >>> registry.update_feature_set("transactions", 1, stage="Production")  # doctest: +SKIP
        """
        given: dict[str, Any] = {
            field: value for field, value in (
                ("description", description), ("tags", tags), ("stage", stage),
                ("materialization_settings", materialization_settings),
            ) if value is not UNSET
        }
        if isinstance(given.get("materialization_settings"), MaterializationSettings):
            given["materialization_settings"] = _settings_json(given["materialization_settings"])
        if isinstance(given.get("tags"), Mapping):
            given["tags"] = dict(given["tags"])
        with self._transaction(write=True) as conn:
            row = self._find(conn, models.feature_sets, "feature set", name, version)
            current = _feature_set_from_row(row).asset
            data = {k: v for k, v in current.to_dict().items() if k not in given} | given
            updated = validate(FeatureSet, data, f"feature set {current.ref}")
            values = {
                "description": updated.description,
                "tags": dict(updated.tags),
                "stage": updated.stage.value,
                "materialization_settings": _settings_json(updated.materialization_settings),
            }
            if any(row[k] != v for k, v in values.items()):
                table = models.feature_sets
                conn.execute(sa.update(table)
                             .where(table.c.name == row["name"], table.c.version == row["version"])
                             .values(**values, updated_at=_now()))
        return self.get_feature_set(name, row["version"])

    def archive_feature_set(self, name: str, version: str | int) -> None:
        """Hide ``name:version`` from lists, search and latest lookups; it stays resolvable by version."""
        self._set_archived(models.feature_sets, "feature set", name, version, archived=True)

    def restore_feature_set(self, name: str, version: str | int) -> None:
        """Undo ``archive_feature_set``."""
        self._set_archived(models.feature_sets, "feature set", name, version, archived=False)

    # -- features -----------------------------------------------------------------------------------
    def list_features(self, *, feature_set: str | None = None, version: str | int | None = None,
                      include_archived: bool = False) -> list[FeatureInfo]:
        """Features of every feature set version (or of ``feature_set``, optionally one ``version``)."""
        rows = self._feature_rows(feature_set=feature_set, version=version, include_archived=include_archived)
        return [_feature_from_row(r) for r in _sorted_rows(rows, by=("feature_set", "version"))]

    def search_features(self, query: str, *, limit: int = 100,
                        include_archived: bool = False) -> list[FeatureInfo]:
        """Features matching every term of ``query`` (case-insensitive) in the feature's name,
        description or tags, or in its feature set's name, description or tags.

        Exact name matches come first, then names holding every term, then other matches; newer
        versions before older ones. An empty query lists every feature.

        >>> registry.search_features("amount 7d")   # doctest: +SKIP
        """
        terms = query_terms(query)
        ranked = []
        for row in self._feature_rows(include_archived=include_archived):
            rank = rank_feature(
                terms,
                name=row["name"],
                feature_text=searchable_text(row["name"], row["description"], tags=row["tags"]),
                feature_set_text=searchable_text(row["feature_set"], row["set_description"],
                                                 tags=row["set_tags"]),
            )
            if rank is not None:
                ranked.append((rank, row))
        # Stable sorts, least significant key first: position, newest version, feature set, rank.
        ranked.sort(key=lambda item: item[1]["position"])
        ranked.sort(key=lambda item: version_key(item[1]["version"]), reverse=True)
        ranked.sort(key=lambda item: (item[0], item[1]["feature_set"]))
        return [_feature_from_row(row) for _, row in ranked[:max(limit, 0)]]

    # -- internals ----------------------------------------------------------------------------------
    def _create_tables(self) -> None:
        try:
            with self._engine.begin() as conn:
                if self._backend == "postgresql":
                    conn.execute(sa.select(sa.func.pg_advisory_xact_lock(_OPEN_LOCK_KEY)))
                    if self._schema:
                        conn.execute(sa.schema.CreateSchema(self._schema, if_not_exists=True))
                models.metadata.create_all(conn)
                table = models.schema_version
                found = conn.execute(sa.select(table.c.version).where(table.c.id == 1)).scalar_one_or_none()
                if found is None:
                    conn.execute(sa.insert(table).values(id=1, version=models.SCHEMA_VERSION,
                                                         applied_at=_now()))
                elif found > models.SCHEMA_VERSION:
                    raise ConfigError(
                        f"the registry at {self._location()} has layout version {found}, newer than this "
                        f"Gristmill understands ({models.SCHEMA_VERSION}); upgrade gristmill")
        except sa_exc.DBAPIError as exc:
            raise RegistryError(f"cannot open the registry at {self._location()}: {_reason(exc)}; "
                                f"{self._what_to_check()}") from exc

    @contextmanager
    def _transaction(self, *, write: bool = False) -> Iterator[Connection]:
        loop_bridge.blocking_io()                  # a database round trip: never on the server's event loop
        try:
            with self._engine.connect() as conn:
                if write:
                    conn.execution_options(**{_WRITE_OPTION: True})
                with conn.begin():
                    yield conn
        except (sa_exc.OperationalError, sa_exc.InterfaceError, sa_exc.ProgrammingError) as exc:
            raise RegistryUnavailableError(f"registry at {self._location()} failed: {_reason(exc)}; "
                                           f"{self._what_to_check()}") from exc

    def _retry_on_conflict(self, action: Callable[[], T]) -> T:
        """Run ``action`` again if a concurrent writer inserted the same version first."""
        try:
            return action()
        except sa_exc.IntegrityError:
            try:
                return action()
            except sa_exc.IntegrityError as exc:
                raise RegistryError(f"registry at {self._location()} refused a write: "
                                    f"{_reason(exc)}") from exc

    def _put(self, table: sa.Table, name: str, version: str, values: dict[str, Any], *,
             mutable: Sequence[str], refuse: Callable[[Connection, RowMapping, dict[str, Any]], None],
             children: tuple[sa.Table, list[dict[str, Any]]] | None = None,
             quiet: Sequence[str] = ()) -> PutResult:
        """Insert ``name:version`` or update its ``mutable`` fields (``refuse`` raises for other changes).
        A change of ``quiet`` fields only (where a spec folder lives) is stored but answers "unchanged"."""
        with self._transaction(write=True) as conn:
            row = conn.execute(sa.select(table).where(table.c.name == name, table.c.version == version)
                               ).mappings().one_or_none()
            now = _now()
            if row is None:
                conn.execute(sa.insert(table).values(name=name, version=version, archived=False,
                                                     created_at=now, updated_at=now, **values))
                if children and children[1]:
                    conn.execute(sa.insert(children[0]), children[1])
                return "created"
            refuse(conn, row, values)
            changes = {k: values[k] for k in mutable if row[k] != values[k]}
            if not changes:
                return "unchanged"
            if all(k in quiet for k in changes):
                conn.execute(sa.update(table).where(table.c.name == name, table.c.version == version)
                             .values(**changes))
                return "unchanged"
            conn.execute(sa.update(table).where(table.c.name == name, table.c.version == version)
                         .values(**changes, updated_at=now))
            return "updated"

    def _refuse_entity_change(self, conn: Connection, row: RowMapping, values: dict[str, Any]) -> None:
        changed = [k for k in values if k not in ENTITY_MUTABLE_FIELDS and row[k] != values[k]]
        if changed:
            suggestion = self._next_ref(conn, models.entities, row["name"])
            raise ImmutableError(f"entity {row['name']}:{row['version']} is registered with different "
                                 f"{', '.join(changed)}; create a new version (e.g. {suggestion})")

    def _refuse_feature_set_change(self, conn: Connection, row: RowMapping, values: dict[str, Any]) -> None:
        changed = _changed_keys(row["spec"], values["spec"])
        if row["entities"] != values["entities"]:
            changed.append("entities")
        old_code, new_code = row["code_files"] or {}, values["code_files"]
        changed.extend(f"code file {name}" for name in sorted(set(old_code) | set(new_code))
                       if old_code.get(name) != new_code.get(name))
        if row["content_hash"] != values["content_hash"] and not changed:
            changed.append("code files")
        if changed:
            suggestion = self._next_ref(conn, models.feature_sets, row["name"])
            raise ImmutableError(
                f"feature set {row['name']}:{row['version']} is registered with a different specification "
                f"(changed: {', '.join(changed)}); only description, tags, stage and "
                f"materialization_settings can change — create a new version ({suggestion})")

    def _check_entities(self, conn: Connection, feature_set: FeatureSet, spec: FeatureSetSpec) -> None:
        table = models.entities
        spec_columns = {c.name: c.type.value for c in spec.index_columns}
        for ref, (name, version) in zip(feature_set.entities, feature_set.entity_refs, strict=True):
            row = conn.execute(sa.select(table.c.index_columns)
                               .where(table.c.name == name, table.c.version == version)).one_or_none()
            if row is None:
                raise NotFoundError(f"feature set {feature_set.ref} uses entity {ref}, which is not "
                                    "registered; register the entity first")
            for column in row.index_columns:
                if spec_columns.get(column["name"]) != column["type"]:
                    raise RegistryError(
                        f"feature set {feature_set.ref}: entity {ref} has index column {column['name']} "
                        f"({column['type']}) but the specification's index_columns do not; add "
                        f"{{name: {column['name']}, type: {column['type']}}} to index_columns "
                        "or use another entity")

    def _find(self, conn: Connection, table: sa.Table, kind: str, name: str,
              version: str | int | None) -> RowMapping:
        """The row of ``name:version`` (latest non-archived when version is None) or NotFoundError."""
        if version is not None:
            row = conn.execute(sa.select(table).where(table.c.name == name, table.c.version == str(version))
                               ).mappings().one_or_none()
            if row is not None:
                return row
            raise self._not_found(conn, table, kind, name, str(version))
        rows = conn.execute(sa.select(table).where(table.c.name == name)).mappings().all()
        active = [r for r in rows if not r["archived"]]
        if active:
            return max(active, key=lambda r: version_key(r["version"]))
        if rows:
            archived = ", ".join(sorted((r["version"] for r in rows), key=version_key))
            raise NotFoundError(f"{kind} {name} has no active version; archived versions: {archived} "
                                f"(restore one, or ask for an exact version)")
        raise self._not_found(conn, table, kind, name, None)

    def not_found(self, kind: Literal["entity", "feature set", "model"], name: str, version: str | None, *,
                  visible: Callable[[str, str], bool]) -> NotFoundError:
        """The error an unknown ``name:version`` gets, naming only the versions and names for which
        ``visible(name, version)`` holds: to a caller who may not read a version, it does not exist (the
        server answers an unreadable feature set exactly like a missing one)."""
        table = {"entity": models.entities, "feature set": models.feature_sets, "model": models.models}[kind]
        with self._transaction() as conn:
            return self._not_found(conn, table, kind, name, version, visible=visible)

    def _not_found(self, conn: Connection, table: sa.Table, kind: str, name: str,
                   version: str | None, *, visible: Callable[[str, str], bool] | None = None) -> NotFoundError:
        rows = conn.execute(sa.select(table.c.name, table.c.version, table.c.archived)).all()
        if visible is not None:
            rows = [r for r in rows if visible(r.name, r.version)]
        versions = [(r.version, r.archived) for r in rows if r.name == name]
        if versions:
            listed = ", ".join(v + (" (archived)" if archived else "")
                               for v, archived in sorted(versions, key=lambda item: version_key(item[0])))
            return NotFoundError(f"{kind} {name} has no version {version}; versions: {listed}")
        names = sorted({r.name for r in rows})
        plural = "entities" if kind == "entity" else f"{kind}s"
        if not names:
            if visible is not None:
                return NotFoundError(f"{kind} '{name}' not found; you may read no {plural} (an Owner grants "
                                     "access with `gristmill access grant`)")
            return NotFoundError(f"{kind} '{name}' not found; no {plural} are registered yet")
        close = difflib.get_close_matches(name, names, n=1)
        hint = f" (did you mean '{close[0]}'?)" if close else ""
        shown = ", ".join(names[:50]) + (", …" if len(names) > 50 else "")
        if visible is not None:
            return NotFoundError(f"{kind} '{name}' not found; {plural} you may read: {shown}{hint}")
        return NotFoundError(f"{kind} '{name}' not found; registered {plural}: {shown}{hint}")

    def _next_ref(self, conn: Connection, table: sa.Table, name: str) -> str:
        versions = conn.execute(sa.select(table.c.version).where(table.c.name == name)).scalars().all()
        numbers = [int(v) for v in versions if v.isdigit()]
        return f"{name}:{max(numbers) + 1}" if numbers else f"{name}:<new version>"

    def _set_archived(self, table: sa.Table, kind: str, name: str, version: str | int, *,
                      archived: bool) -> None:
        with self._transaction(write=True) as conn:
            result = conn.execute(sa.update(table)
                                  .where(table.c.name == name, table.c.version == str(version))
                                  .values(archived=archived, updated_at=_now()))
            if result.rowcount == 0:
                raise self._not_found(conn, table, kind, name, str(version))

    def _feature_rows(self, *, feature_set: str | None = None, version: str | int | None = None,
                      include_archived: bool = False) -> list[RowMapping]:
        features, sets = models.features, models.feature_sets
        query = (
            sa.select(features, sets.c.description.label("set_description"), sets.c.tags.label("set_tags"))
            .join(sets, sa.and_(features.c.feature_set == sets.c.name, features.c.version == sets.c.version))
        )
        if feature_set is not None:
            query = query.where(features.c.feature_set == feature_set)
        if version is not None:
            query = query.where(features.c.version == str(version))
        if not include_archived:
            query = query.where(sets.c.archived.is_(False))
        with self._transaction() as conn:
            return list(conn.execute(query.order_by(features.c.position)).mappings().all())

    def _location(self) -> str:
        return self._display_url + (f" (schema {self._schema})" if self._schema else "")

    def _what_to_check(self) -> str:
        if self._backend == "sqlite":
            return "check that the folder exists and is writable and that the file is a SQLite database"
        return ("check that the PostgreSQL server is running and reachable and that the host, port, "
                "database, user and password in the URL are right")


# -- helpers ------------------------------------------------------------------------------------------
def _parse_url(url: str) -> URL:
    try:
        parsed = make_url(url)
    except sa_exc.ArgumentError:
        redacted = re.sub(r"//([^/:@]*):[^/@]*@", r"//\1:***@", url)
        raise ConfigError(f"registry URL {redacted!r} is not a database URL; use {_EXAMPLE_URLS}") from None
    backend = parsed.get_backend_name()
    if backend not in ("sqlite", "postgresql"):
        shown = parsed.render_as_string(hide_password=True)
        raise ConfigError(f"registry URL {shown!r}: unsupported database {backend!r}; "
                          f"the registry runs on SQLite or PostgreSQL ({_EXAMPLE_URLS})")
    if parsed.drivername == "postgresql":
        parsed = parsed.set(drivername="postgresql+psycopg")
    return parsed


def _create_engine(url: URL, display_url: str) -> Engine:
    if url.get_backend_name() == "sqlite":
        return _create_sqlite_engine(url)
    connect_args = {} if "connect_timeout" in url.query else {"connect_timeout": 10}
    try:
        return sa.create_engine(url, pool_pre_ping=True, connect_args=connect_args)
    except (ImportError, sa_exc.NoSuchModuleError) as exc:
        raise ConfigError(f"registry URL {display_url!r} needs the {url.get_driver_name()!r} driver, "
                          f"which is not installed ({exc}); install it with: "
                          f"{install_hint('postgres')}") from None


def _create_sqlite_engine(url: URL) -> Engine:
    database = url.database or ""
    in_memory = database in ("", ":memory:")
    if in_memory:
        engine = sa.create_engine(url, poolclass=StaticPool, connect_args={"check_same_thread": False})
    else:
        Path(database).expanduser().parent.mkdir(parents=True, exist_ok=True)
        engine = sa.create_engine(url)

    @event.listens_for(engine, "connect")
    def _on_connect(dbapi_connection: Any, _record: Any) -> None:
        # SQLAlchemy emits BEGIN itself (below), so writers can take the lock up front.
        dbapi_connection.isolation_level = None
        cursor = dbapi_connection.cursor()
        cursor.execute("PRAGMA journal_mode=WAL")
        cursor.execute("PRAGMA foreign_keys=ON")
        cursor.execute("PRAGMA busy_timeout=30000")
        cursor.close()

    @event.listens_for(engine, "begin")
    def _on_begin(conn: Connection) -> None:
        # BEGIN IMMEDIATE for read-then-write transactions avoids SQLite's lock-upgrade deadlock.
        write = conn.get_execution_options().get(_WRITE_OPTION)
        conn.exec_driver_sql("BEGIN IMMEDIATE" if write else "BEGIN")

    return engine


def _reason(exc: sa_exc.DBAPIError) -> str:
    text = str(exc.orig).strip() if exc.orig is not None else str(exc)
    return text.splitlines()[0] if text else type(exc.orig).__name__


def _now() -> datetime:
    return datetime.now(UTC)


def _utc(value: datetime) -> datetime:
    return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)


def _settings_json(settings: MaterializationSettings | Mapping[str, Any] | None) -> dict[str, Any] | None:
    if settings is None:
        return None
    if isinstance(settings, MaterializationSettings):
        return settings.model_dump(mode="json", exclude_none=True)
    return dict(settings)


def _changed_keys(old: Mapping[str, Any], new: Mapping[str, Any]) -> list[str]:
    """Top-level keys whose values differ, in the order they appear in the spec."""
    keys = list(old) + [k for k in new if k not in old]
    return [k for k in keys if old.get(k) != new.get(k)]


def _sorted_rows(rows: Sequence[RowMapping], by: tuple[str, str] = ("name", "version")) -> list[RowMapping]:
    name, version = by
    return sorted(rows, key=lambda r: (r[name], version_key(r[version])))


def _entity_from_row(row: RowMapping) -> Entity:
    return Entity.model_validate({
        "name": row["name"], "version": row["version"], "index_columns": row["index_columns"],
        "description": row["description"], "tags": row["tags"], "stage": row["stage"],
    })


def _feature_set_from_row(row: RowMapping) -> RegisteredFeatureSet:
    asset = FeatureSet.model_validate({
        "name": row["name"], "version": row["version"], "specification": {"path": row["specification_path"]},
        "entities": row["entities"], "stage": row["stage"], "description": row["description"],
        "tags": row["tags"], "materialization_settings": row["materialization_settings"],
    })
    registered = RegisteredFeatureSet(
        asset=asset, spec=row["spec"], spec_folder=row["spec_folder"], code_files=dict(row["code_files"]),
        content_hash=row["content_hash"], archived=row["archived"],
        created_at=_utc(row["created_at"]), updated_at=_utc(row["updated_at"]),
    )
    # Attach the spec so ``registered.asset.spec`` works like on a FeatureSet loaded from files.
    return replace(registered, asset=asset.with_spec(registered.load_spec()))


def _feature_from_row(row: RowMapping) -> FeatureInfo:
    return FeatureInfo(feature_set=row["feature_set"], version=row["version"], name=row["name"],
                       type=FeatureType(row["type"]), description=row["description"], tags=dict(row["tags"]))
