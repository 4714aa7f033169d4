"""``FeatureSet``: the registered asset ``name:version`` pointing at a spec folder (SPEC §2)."""

from __future__ import annotations

from datetime import datetime
from enum import StrEnum
from pathlib import Path
from typing import Annotated, Any, ClassVar, Literal

from pydantic import BeforeValidator, Field, PrivateAttr, field_validator

from gristmill.errors import SpecError
from gristmill.spec.common import Asset, Frozen, Stage, StageName, Version, _lower_enum
from gristmill.spec.featureset_spec import FeatureSetSpec
from gristmill.spec.refs import VersionRef
from gristmill.spec.yaml_io import read_yaml, validate, write_yaml


class Frequency(StrEnum):
    MINUTE = "minute"
    HOUR = "hour"
    DAY = "day"
    WEEK = "week"


class Schedule(Frozen):
    type: Literal["recurrence"] = "recurrence"
    frequency: Annotated[Frequency, BeforeValidator(_lower_enum)]
    interval: int = Field(default=1, ge=1)
    start_time: datetime | None = None
    time_zone: str = "UTC"

    @field_validator("type", mode="before")
    @classmethod
    def _lower(cls, value: Any) -> Any:
        return _lower_enum(value)


class JobEvent(StrEnum):
    JOB_FAILED = "jobfailed"
    JOB_COMPLETED = "jobcompleted"
    JOB_CANCELLED = "jobcancelled"


class Notification(Frozen):
    email_on: list[Annotated[JobEvent, BeforeValidator(_lower_enum)]] = Field(default_factory=list)
    emails: list[str] = Field(default_factory=list)
    webhooks: list[str] = Field(default_factory=list)


class MaterializationSettings(Frozen):
    offline_enabled: bool = False
    online_enabled: bool = False
    schedule: Schedule | None = None
    notification: Notification | None = None
    resource: dict[str, Any] | None = None
    spark_configuration: dict[str, Any] | None = None

    @field_validator("spark_configuration")
    @classmethod
    def _single_values(cls, value: dict[str, Any] | None) -> dict[str, Any] | None:
        """Spark settings are single values (Spark would refuse the others only when a job runs)."""
        for key, setting in (value or {}).items():
            if not isinstance(setting, str | int | float | bool):
                raise ValueError(f"{key!r} must be a text, number or true/false, not {type(setting).__name__} "
                                 f"{setting!r:.60}; write it as one value (e.g. \"4g\" or 8)")
        return value


class SpecificationRef(Frozen):
    path: str


def _entity_ref(value: Any) -> Any:
    """An entity reference as written in YAML (``account:1``, or Azure ML's ``azureml:account:1``), checked and
    kept as its ``name:version`` text; ``FeatureSet.entity_refs`` gives the parsed form."""
    if isinstance(value, str):
        ref = value.strip().removeprefix("azureml:")
        return str(VersionRef.parse(ref, what="entity reference", example="account:1"))
    return value


EntityRef = Annotated[str, BeforeValidator(_entity_ref)]


class FeatureSet(Asset):
    """A feature set asset. ``spec`` is the loaded specification (not part of the YAML)."""

    asset_kind: ClassVar[str] = "feature set"

    name: str
    version: Version = "1"
    specification: SpecificationRef
    entities: list[EntityRef] = Field(default_factory=list)
    stage: StageName = Stage.DEVELOPMENT
    description: str | None = None
    tags: dict[str, str] = Field(default_factory=dict)
    materialization_settings: MaterializationSettings | None = None

    _spec: FeatureSetSpec | None = PrivateAttr(default=None)
    _file: Path | None = PrivateAttr(default=None)

    @property
    def entity_refs(self) -> list[VersionRef]:
        """The entities as parsed references (``entities`` holds their checked ``name:version`` texts)."""
        return [VersionRef.parse(ref) for ref in self.entities]

    @property
    def spec(self) -> FeatureSetSpec:
        if self._spec is None:
            raise SpecError(f"feature set {self.ref}: specification not loaded; use FeatureSet.load(path)")
        return self._spec

    def with_spec(self, spec: FeatureSetSpec) -> FeatureSet:
        copy = self.model_copy()
        copy._spec = spec
        copy._file = self._file
        return copy

    @classmethod
    def load(cls, path: str | Path) -> FeatureSet:
        """Load the asset YAML and the specification folder it points at."""
        path = Path(path)
        asset = validate(cls, read_yaml(path), str(path))
        spec_folder = (path.parent / asset.specification.path).resolve()
        if not spec_folder.exists():
            raise SpecError(f"{path}: specification.path: folder {spec_folder} not found; "
                            "point it at the folder holding FeatureSetSpec.yaml (relative to this file)")
        asset._spec = FeatureSetSpec.load(spec_folder)
        asset._file = path.resolve()
        return asset

    def to_dict(self) -> dict[str, Any]:
        return self.model_dump(mode="json", exclude_none=True)

    def dump(self, path: str | Path) -> None:
        write_yaml(Path(path), self.to_dict())
