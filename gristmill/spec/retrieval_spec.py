"""``FeatureRetrievalSpec``: the features a model uses, shipped with the model (SPEC §2)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pydantic import Field, model_validator

from gristmill.errors import RetrievalError
from gristmill.spec.common import Frozen
from gristmill.spec.yaml_io import read_yaml, validate, write_yaml

RETRIEVAL_SPEC_FILE_NAME = "feature_retrieval_spec.yaml"
REFERENCE_FORM = "feature_set:version:feature"


@dataclass(frozen=True)
class FeatureRef:
    """A parsed ``[store/]feature_set:version:feature`` reference: the one parsed form every entry point
    (SDK, CLI, server, retrieval specs) passes around."""

    store: str | None
    feature_set: str
    version: str
    feature: str
    output_name: str | None = None

    @property
    def text(self) -> str:
        prefix = f"{self.store}/" if self.store else ""
        return f"{prefix}{self.feature_set}:{self.version}:{self.feature}"

    @classmethod
    def parse(cls, text: Any) -> FeatureRef:
        """Parse ``"transactions:1:amount_7d_sum"`` (optionally ``"store/transactions:1:..."``); anything else
        raises ``RetrievalError`` naming the reference and the expected form.

        >>> FeatureRef.parse("risk/scores:2:score")
        FeatureRef(store='risk', feature_set='scores', version='2', feature='score', output_name=None)
        """
        if not isinstance(text, str):
            raise RetrievalError(f"features: {text!r} is not a string; write '{REFERENCE_FORM}', "
                                 "e.g. 'transactions:1:amount_7d_sum'")
        store, _, rest = text.strip().rpartition("/")
        parts = rest.split(":")
        if len(parts) == 3 and all(parts) and "/" not in store:
            return cls(store or None, parts[0], parts[1], parts[2])
        example = "e.g. 'transactions:1:amount_7d_sum'"
        if len(parts) == 2 and all(parts) and parts[1].isdigit():
            example = f"is the feature missing? e.g. '{parts[0]}:{parts[1]}:amount_7d_sum'"
        elif len(parts) == 2 and all(parts):
            example = f"is the version missing? e.g. '{parts[0]}:1:{parts[1]}'"
        raise RetrievalError(f"features: '{text}' must look like '{REFERENCE_FORM}'; {example}")


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
        """A spec of ``[store/]feature_set:version:feature`` strings; a malformed one raises RetrievalError."""
        refs = []
        for item in features:
            ref = FeatureRef.parse(item)
            store = f"{ref.store}/" if ref.store else ""
            refs.append({"feature_set": f"{store}{ref.feature_set}:{ref.version}", "feature_name": ref.feature})
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
