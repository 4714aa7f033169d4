"""``Model``: a registered model version and the features it uses (its retrieval spec), which records
lineage from feature sets to models (SPEC §1 "retrieval spec", §4 "model registration")."""

from __future__ import annotations

from typing import Any, ClassVar

from pydantic import Field

from gristmill.spec.common import Asset, Version
from gristmill.spec.retrieval_spec import FeatureRetrievalSpec


class Model(Asset):
    """``name:version`` of a model and its ``retrieval_spec``; immutable except description and tags."""

    asset_kind: ClassVar[str] = "model"

    name: str
    version: Version = "1"
    retrieval_spec: FeatureRetrievalSpec
    description: str | None = None
    tags: dict[str, str] = Field(default_factory=dict)

    @property
    def features(self) -> list[str]:
        """``feature_set:version:feature`` of every feature the model uses, in order."""
        return [f.ref for f in self.retrieval_spec.features]

    @property
    def feature_sets(self) -> list[str]:
        """``feature_set:version`` of every feature set the model uses, in first-use order."""
        return list(dict.fromkeys(f.feature_set for f in self.retrieval_spec.features))

    def to_dict(self) -> dict[str, Any]:
        return self.model_dump(mode="json", exclude_none=True)
