"""Turning a user's feature list (``"fs:1:f"`` strings, a retrieval spec, or references) into engine
requests: one per feature set version, with output column names and request order."""

from __future__ import annotations

from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

from gristmill.compute.engine import FeatureSetRequest
from gristmill.errors import NotFoundError, RetrievalError
from gristmill.spec.featureset_spec import FeatureSetSpec
from gristmill.spec.refs import FeatureRef
from gristmill.spec.retrieval_spec import FeatureReference, FeatureRetrievalSpec

__all__ = ["FeatureRef", "plan_requests", "references"]


def references(features: Any) -> list[FeatureRef]:
    """Accept a list of strings or FeatureReference objects, a FeatureRetrievalSpec (or a path to one), or a
    registered ``Model`` (its retrieval spec)."""
    from gristmill.spec.model import Model

    if isinstance(features, Model):
        features = features.retrieval_spec
    if isinstance(features, str | Path) and (Path(features).is_dir() or str(features).endswith((".yaml", ".yml"))):
        features = FeatureRetrievalSpec.load(features)
    if isinstance(features, str):
        features = [features]
    if isinstance(features, FeatureRetrievalSpec):
        features = features.features
    if not isinstance(features, Iterable):
        raise RetrievalError(f"features: expected a list of 'feature_set:version:feature' strings, got "
                             f"{type(features).__name__}")
    refs = []
    for item in features:
        if isinstance(item, FeatureReference):
            refs.append(item.feature_ref)
        elif isinstance(item, FeatureRef):
            refs.append(item)
        else:
            refs.append(FeatureRef.parse(item))
    if not refs:
        raise RetrievalError("features: the list is empty; name at least one feature as "
                             "'feature_set:version:feature'")
    return refs


def plan_requests(refs: list[FeatureRef], resolve: Callable[[str | None, str, str], FeatureSetSpec], *,
                  full_feature_names: bool = False, store_name: str | None = None) -> list[FeatureSetRequest]:
    """Group references by (store, feature set version), keeping request order, and name the output columns.

    ``resolve(store, name, version)`` gives the spec; ``store`` is None for this store (``store_name``) and
    the prefix of a reference into another one (``other/feature_set:version:feature``). Two outputs with the
    same name are an error unless renamed (``output_name``) or prefixed (``full_feature_names=True`` gives
    ``feature_set__version__feature``, and ``store__feature_set__version__feature`` for another store)."""
    specs: dict[tuple[str | None, str, str], FeatureSetSpec] = {}
    grouped: dict[tuple[str | None, str, str], list[tuple[int, str, str]]] = {}
    names: dict[str, list[str]] = {}
    for position, ref in enumerate(refs):
        store = ref.store if ref.store and ref.store != store_name else None
        key = (store, ref.feature_set, ref.version)
        if key not in specs:
            specs[key] = resolve(store, ref.feature_set, ref.version)
        spec = specs[key]
        if spec.feature(ref.feature) is None:
            where = f"{store}/" if store else ""
            raise NotFoundError(f"features: feature set {where}{ref.feature_set_ref} has no feature "
                                f"'{ref.feature}' (features: {', '.join(spec.feature_names)})")
        if ref.output_name:
            output = ref.output_name
        elif full_feature_names:
            output = f"{store + '__' if store else ''}{ref.feature_set}__{ref.version}__{ref.feature}"
        else:
            output = ref.feature
        names.setdefault(output, []).append(ref.text)
        grouped.setdefault(key, []).append((position, ref.feature, output))
    clashes = {name: texts for name, texts in names.items() if len(texts) > 1}
    if clashes:
        detail = "; ".join(f"'{name}' from {', '.join(texts)}" for name, texts in clashes.items())
        raise RetrievalError(f"features: two requested features would get the same column name: {detail}; "
                             "give an output_name or pass full_feature_names=True")
    return [FeatureSetRequest(label=f"{store + '/' if store else ''}{name}:{version}",
                              spec=specs[(store, name, version)],
                              outputs=tuple((feature, output) for _, feature, output in items),
                              position=tuple(position for position, _, _ in items), store=store)
            for (store, name, version), items in grouped.items()]
