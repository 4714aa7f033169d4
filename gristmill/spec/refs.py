"""Typed references: ``name:version`` (an entity, feature set or model version) and
``[store/]feature_set:version:feature`` (a feature, maybe of another store).

Every entry point (YAML validation, SDK arguments, CLI arguments, server parameters) parses the text once
into one of these frozen values and passes that on, so no module splits on ``:`` or ``/`` by hand.

>>> VersionRef.parse("transactions:1")
VersionRef(name='transactions', version='1')
>>> FeatureRef.parse("risk/scores:2:score").feature_set_ref
VersionRef(name='scores', version='2')
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, NamedTuple

from gristmill.errors import GristmillError, RetrievalError, SpecError

__all__ = ["FEATURE_REFERENCE_FORM", "FeatureRef", "VersionRef", "parse_name_and_version", "split_store"]

FEATURE_REFERENCE_FORM = "feature_set:version:feature"


def split_store(text: str) -> tuple[str | None, str]:
    """``"risk/scores:2"`` → ``("risk", "scores:2")``; no prefix → ``(None, text)``. The one place that reads
    the ``store/`` prefix of a reference into another feature store (a store name has no ``/``, so a text
    with two of them gives a store containing one, which the parsers below refuse)."""
    store, _, rest = text.rpartition("/")
    return store or None, rest


class VersionRef(NamedTuple):
    """``name:version`` of an entity, feature set or model version.

    A tuple, so ``name, version = ref`` and ``(name, version)`` dictionary keys keep working where code
    holds pairs; ``str(ref)`` is the ``name:version`` text."""

    name: str
    version: str

    def __str__(self) -> str:
        return f"{self.name}:{self.version}"

    @classmethod
    def parse(cls, text: Any, *, what: str = "reference", example: str = "transactions:1",
              error: type[GristmillError] = SpecError) -> VersionRef:
        """Parse ``"transactions:1"`` (surrounding spaces ignored); anything else raises ``error`` (a
        ``SpecError`` unless told) naming ``what`` (the field or argument) and the expected form.

        >>> VersionRef.parse(" account:1 ")
        VersionRef(name='account', version='1')
        """
        ref = cls._split(_text(text, what=what, form="name:version", example=example, error=error))
        if ref is None:
            raise error(f"{what} '{text}' must look like name:version, e.g. {example}")
        return ref

    @classmethod
    def parse_qualified(cls, text: Any, *, what: str = "reference", example: str = "transactions:1",
                        error: type[GristmillError] = SpecError) -> tuple[str | None, VersionRef]:
        """Parse ``"[store/]name:version"``: the store (None: no prefix) and the version reference.

        >>> VersionRef.parse_qualified("risk/scores:2")
        ('risk', VersionRef(name='scores', version='2'))
        """
        store, rest = split_store(_text(text, what=what, form="[store/]name:version", example=example, error=error))
        ref = cls._split(rest)
        if ref is None or (store is not None and "/" in store):
            raise error(f"{what} '{text}' must look like name:version or store/name:version, e.g. {example}")
        return store, ref

    @classmethod
    def _split(cls, text: str) -> VersionRef | None:
        name, colon, version = text.partition(":")
        return cls(name, version) if colon and name and version and ":" not in version else None


def _text(text: Any, *, what: str, form: str, example: str, error: type[GristmillError]) -> str:
    """``text`` without surrounding spaces; not a string: ``error`` naming ``what`` and the form."""
    if not isinstance(text, str):
        raise error(f"{what}: {text!r} is not a string; write {form}, e.g. {example}")
    return text.strip()


def parse_name_and_version(text: Any, *, what: str = "reference", example: str = "transactions:1",
                           error: type[GristmillError] = SpecError) -> tuple[str, str | None]:
    """Parse ``"name"`` or ``"name:version"`` (a latest-version lookup or a filter): ``(name, None)`` or
    ``(name, version)``; anything else raises ``error`` naming ``what`` and both forms.

    >>> parse_name_and_version("transactions"), parse_name_and_version("transactions:1")
    (('transactions', None), ('transactions', '1'))
    """
    stripped = _text(text, what=what, form="name or name:version", example=example, error=error)
    if stripped and ":" not in stripped:
        return stripped, None
    ref = VersionRef._split(stripped)
    if ref is None:
        raise error(f"{what} '{text}' must look like name or name:version, e.g. {example}")
    return ref.name, ref.version


@dataclass(frozen=True)
class FeatureRef:
    """A parsed ``[store/]feature_set:version:feature`` reference: the one parsed form every entry point
    (SDK, CLI, server, retrieval specs) passes around. ``store`` None: the store asked."""

    store: str | None
    feature_set: str
    version: str
    feature: str
    output_name: str | None = None

    @property
    def text(self) -> str:
        prefix = f"{self.store}/" if self.store else ""
        return f"{prefix}{self.feature_set}:{self.version}:{self.feature}"

    def __str__(self) -> str:
        return self.text

    @property
    def feature_set_ref(self) -> VersionRef:
        """The feature set version (within its store) holding the feature."""
        return VersionRef(self.feature_set, self.version)

    @classmethod
    def parse(cls, text: Any) -> FeatureRef:
        """Parse ``"transactions:1:amount_7d_sum"`` (optionally ``"store/transactions:1:..."``); anything else
        raises ``RetrievalError`` naming the reference and the expected form.

        >>> FeatureRef.parse("risk/scores:2:score")
        FeatureRef(store='risk', feature_set='scores', version='2', feature='score', output_name=None)
        """
        if not isinstance(text, str):
            raise RetrievalError(f"features: {text!r} is not a string; write '{FEATURE_REFERENCE_FORM}', "
                                 "e.g. 'transactions:1:amount_7d_sum'")
        store, rest = split_store(text.strip())
        parts = rest.split(":")
        if len(parts) == 3 and all(parts) and (store is None or "/" not in store):
            return cls(store, parts[0], parts[1], parts[2])
        example = "e.g. 'transactions:1:amount_7d_sum'"
        if len(parts) == 2 and all(parts) and parts[1].isdigit():
            example = f"is the feature missing? e.g. '{parts[0]}:{parts[1]}:amount_7d_sum'"
        elif len(parts) == 2 and all(parts):
            example = f"is the version missing? e.g. '{parts[0]}:1:{parts[1]}'"
        raise RetrievalError(f"features: '{text}' must look like '{FEATURE_REFERENCE_FORM}'; {example}")
