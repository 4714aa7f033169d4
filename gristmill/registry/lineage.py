"""Registered models and the lineage from feature sets to the models that use them.

A model version is registered with its retrieval spec; every feature in it must be registered (so a
model never points at a feature that does not exist). Like feature sets, a registered version is
immutable except its description and tags: a model that uses other features is a new version.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import Connection, RowMapping

from gristmill.errors import ImmutableError, NotFoundError
from gristmill.registry import models
from gristmill.registry.registry import PutResult, Registry, _sorted_rows
from gristmill.spec.model import Model
from gristmill.spec.retrieval_spec import FeatureRetrievalSpec

__all__ = ["ModelRecords"]

MODEL_MUTABLE_FIELDS = ("description", "tags")


class ModelRecords:
    """Models in a registry's catalog, and which models use a feature set."""

    def __init__(self, registry: Registry) -> None:
        self.registry = registry

    def put(self, model: Model) -> PutResult:
        """Register ``model``; its features must exist. Returns "created", "unchanged" or "updated"."""
        spec = model.retrieval_spec.to_dict()
        values: dict[str, Any] = {"retrieval_spec": spec, "description": model.description, "tags": dict(model.tags)}
        lineage = [{"model": model.name, "version": model.version, "position": i,
                    "feature_set": f.feature_ref.feature_set, "feature_set_version": f.feature_ref.version,
                    "feature": f.feature_name} for i, f in enumerate(model.retrieval_spec.features)]

        def put() -> PutResult:
            with self.registry._transaction() as conn:
                self._check_features(conn, model)
            return self.registry._put(models.models, model.name, model.version, values, mutable=MODEL_MUTABLE_FIELDS,
                                      refuse=_refuse_model_change, children=(models.model_features, lineage))

        return self.registry._retry_on_conflict(put)

    def get(self, name: str, version: str | int | None = None) -> Model:
        """The model ``name:version``; ``version=None``: its latest version."""
        with self.registry._transaction() as conn:
            row = self.registry._find(conn, models.models, "model", name, version)
        return _model(row)

    def every(self) -> list[Model]:
        """Every registered (not archived) model version, by name and version."""
        with self.registry._transaction() as conn:
            rows = conn.execute(sa.select(models.models).where(models.models.c.archived.is_(False))).mappings().all()
        return [_model(r) for r in _sorted_rows(rows)]

    def using(self, feature_set: str, version: str | int | None = None) -> list[Model]:
        """The models that use ``feature_set`` (any version, or ``version``), by name and version."""
        lineage = models.model_features
        query = sa.select(lineage.c.model, lineage.c.version).where(lineage.c.feature_set == feature_set).distinct()
        if version is not None:
            query = query.where(lineage.c.feature_set_version == str(version))
        with self.registry._transaction() as conn:
            keys = conn.execute(query).all()
            rows = [conn.execute(sa.select(models.models).where(models.models.c.name == name,
                                                                models.models.c.version == model_version)
                                 ).mappings().one() for name, model_version in keys]
        return [_model(r) for r in _sorted_rows(rows) if not r["archived"]]

    def _check_features(self, conn: Connection, model: Model) -> None:
        for ref in model.retrieval_spec.features:
            if ref.feature_ref.store is not None:     # another store's feature: checked by the FeatureStore
                continue
            name, version = ref.feature_ref.feature_set_ref
            found = conn.execute(sa.select(models.features.c.name).where(
                models.features.c.feature_set == name, models.features.c.version == version,
                models.features.c.name == ref.feature_name)).first()
            if found is None:
                exists = conn.execute(sa.select(models.feature_sets.c.name).where(
                    models.feature_sets.c.name == name, models.feature_sets.c.version == version)).first()
                what = (f"feature set {ref.feature_set} has no feature {ref.feature_name}" if exists
                        else f"feature set {ref.feature_set} is not registered")
                raise NotFoundError(f"model {model.ref}: {what}; register it first or fix the retrieval spec")


def _refuse_model_change(conn: Connection, row: RowMapping, values: Mapping[str, Any]) -> None:
    if row["retrieval_spec"] != values["retrieval_spec"]:
        raise ImmutableError(f"model {row['name']}:{row['version']} is registered with other features; a model "
                             f"that uses different features is a new version (e.g. {row['name']}:"
                             f"{_next(row['version'])})")


def _next(version: str) -> str:
    return str(int(version) + 1) if version.isdigit() else f"{version}-2"


def _model(row: RowMapping) -> Model:
    return Model(name=row["name"], version=row["version"], description=row["description"], tags=row["tags"],
                 retrieval_spec=FeatureRetrievalSpec.model_validate(row["retrieval_spec"]))
