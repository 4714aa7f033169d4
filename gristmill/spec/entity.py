"""``Entity``: a named, versioned set of typed join keys (``account:1 = [account_id: string]``)."""

from __future__ import annotations

from pathlib import Path
from typing import Any, ClassVar

from pydantic import Field

from gristmill.spec.common import Asset, Column, Stage, StageName, Version
from gristmill.spec.yaml_io import read_yaml, validate, write_yaml


class Entity(Asset):
    """An entity: ``name``, ``version`` and its typed ``index_columns``."""

    asset_kind: ClassVar[str] = "entity"

    name: str
    version: Version = "1"
    index_columns: list[Column] = Field(min_length=1)
    description: str | None = None
    tags: dict[str, str] = Field(default_factory=dict)
    stage: StageName = Stage.DEVELOPMENT

    @property
    def index_column_names(self) -> list[str]:
        return [c.name for c in self.index_columns]

    @classmethod
    def load(cls, path: str | Path) -> Entity:
        path = Path(path)
        return validate(cls, read_yaml(path), str(path))

    def to_dict(self) -> dict[str, Any]:
        return self.model_dump(mode="json", exclude_none=True)

    def dump(self, path: str | Path) -> None:
        write_yaml(Path(path), self.to_dict())
