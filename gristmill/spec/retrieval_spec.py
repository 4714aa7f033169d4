"""``FeatureRetrievalSpec``: the features a model uses, shipped with the model (SPEC §2)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from pydantic import Field, model_validator

from gristmill.spec.common import Frozen
from gristmill.spec.yaml_io import read_yaml, validate, write_yaml

RETRIEVAL_SPEC_FILE_NAME = "feature_retrieval_spec.yaml"


class FeatureReference(Frozen):
    feature_set: str
    feature_name: str
    output_name: str | None = None

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
    def _check(self) -> FeatureReference:
        if self.feature_set.count(":") != 1 or not all(self.feature_set.split(":")):
            raise ValueError(f"feature_set '{self.feature_set}' must look like name:version")
        return self

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
        refs = []
        for item in features:
            parts = item.rsplit(":", 2)
            refs.append({"feature_set": f"{parts[0]}:{parts[1]}", "feature_name": parts[2]})
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
