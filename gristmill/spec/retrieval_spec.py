"""``FeatureRetrievalSpec``: the features a model uses, shipped with the model (SPEC §2)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from pydantic import Field, PrivateAttr, model_validator

from gristmill.spec.common import Frozen
from gristmill.spec.refs import FeatureRef, VersionRef
from gristmill.spec.yaml_io import read_yaml, validate, write_yaml

__all__ = ["RETRIEVAL_SPEC_FILE_NAME", "FeatureRef", "FeatureReference", "FeatureRetrievalSpec",
           "FeatureStoreFeatures"]

RETRIEVAL_SPEC_FILE_NAME = "feature_retrieval_spec.yaml"


class FeatureReference(Frozen):
    """One feature of a retrieval spec: ``feature_set`` is ``[store/]name:version``, parsed once into
    ``feature_ref`` when the spec is validated."""

    feature_set: str
    feature_name: str
    output_name: str | None = None

    _ref: FeatureRef = PrivateAttr()

    @model_validator(mode="before")
    @classmethod
    def _azure_names(cls, data: Any) -> Any:
        if isinstance(data, dict):
            data = dict(data)
            if "featureset" in data:
                data["feature_set"] = data.pop("featureset")
            if "featureset_name" in data:
                version = data.pop("featureset_version", None)
                name = data.pop("featureset_name")
                data["feature_set"] = f"{name}:{version}" if version is not None else name
        return data

    @model_validator(mode="after")
    def _parse(self) -> FeatureReference:
        store, feature_set = VersionRef.parse_qualified(self.feature_set, what="feature_set")
        self._ref = FeatureRef(store, feature_set.name, feature_set.version, self.feature_name, self.output_name)
        return self

    @property
    def feature_ref(self) -> FeatureRef:
        """The parsed reference: store (None: this one), feature set, version, feature and output name."""
        return self._ref

    @property
    def ref(self) -> str:
        return f"{self.feature_set}:{self.feature_name}"


class FeatureStoreFeatures(Frozen):
    uri: str | None = None
    features: list[FeatureReference] = Field(min_length=1)
    location: str | None = None
    workspace_id: str | None = None


class FeatureRetrievalSpec(Frozen):
    serialization_version: int = 2
    feature_stores: list[FeatureStoreFeatures] = Field(min_length=1)

    @model_validator(mode="before")
    @classmethod
    def _alias(cls, data: Any) -> Any:
        if isinstance(data, dict) and "featurestores" in data:
            data = dict(data)
            data.setdefault("feature_stores", data.pop("featurestores"))
            data.pop("featurestores", None)
        return data

    @property
    def features(self) -> list[FeatureReference]:
        return [f for store in self.feature_stores for f in store.features]

    @classmethod
    def from_features(cls, features: list[str], *, uri: str | None = None) -> FeatureRetrievalSpec:
        """A spec of ``[store/]feature_set:version:feature`` strings; a malformed one raises RetrievalError."""
        refs = []
        for item in features:
            ref = FeatureRef.parse(item)
            store = f"{ref.store}/" if ref.store else ""
            refs.append({"feature_set": f"{store}{ref.feature_set_ref}", "feature_name": ref.feature})
        return cls.model_validate({"feature_stores": [{"uri": uri, "features": refs}]})

    @classmethod
    def load(cls, path: str | Path) -> FeatureRetrievalSpec:
        path = Path(path)
        if path.is_dir():
            path = path / RETRIEVAL_SPEC_FILE_NAME
        return validate(cls, read_yaml(path), str(path))

    def to_dict(self) -> dict[str, Any]:
        return self.model_dump(mode="json", exclude_none=True)

    def dump(self, path: str | Path) -> Path:
        path = Path(path)
        if path.is_dir():
            path = path / RETRIEVAL_SPEC_FILE_NAME
        write_yaml(path, self.to_dict())
        return path
