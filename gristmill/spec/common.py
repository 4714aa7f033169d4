"""Small value objects shared by several spec files: columns, features, case-insensitive enums."""

from __future__ import annotations

import re
from enum import StrEnum
from typing import Annotated, Any, ClassVar

from pydantic import BaseModel, BeforeValidator, ConfigDict, Field, field_validator

from gristmill.spec.types import FeatureType, parse_feature_type

NAME_PATTERN = re.compile(r"^[A-Za-z_][A-Za-z0-9_\-]*$")
COLUMN_PATTERN = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")

# Limits of what a catalog entry may hold (documented in docs/specs.md and docs/server.md).
MAX_NAME_LENGTH = 128          # asset, column and feature names
MAX_VERSION_LENGTH = 64
MAX_DESCRIPTION_LENGTH = 10_000
MAX_TAGS = 100                 # entries per tags mapping
MAX_TAG_KEY_LENGTH = 128
MAX_TAG_VALUE_LENGTH = 1_000


def _lower_enum(value: Any) -> Any:
    return value.strip().lower() if isinstance(value, str) else value


def _parse_type(value: Any) -> FeatureType:
    return parse_feature_type(value)


TypeName = Annotated[FeatureType, BeforeValidator(_parse_type)]


def _version(value: Any) -> Any:
    if isinstance(value, bool):
        return value
    if isinstance(value, int):
        return str(value)
    return value


Version = Annotated[str, BeforeValidator(_version), Field(min_length=1, max_length=MAX_VERSION_LENGTH,
                                                           pattern=r"^[A-Za-z0-9_.\-]+$")]


class Frozen(BaseModel):
    """Base of every spec object: immutable, unknown fields rejected."""

    model_config = ConfigDict(frozen=True, extra="forbid", populate_by_name=True)


class LenientStrEnum(StrEnum):
    """A string enum that also accepts its values in any case and with surrounding spaces, as users type them
    (``DataStatus(" complete ")`` is ``DataStatus.COMPLETE``)."""

    @classmethod
    def _missing_(cls, value: object) -> Any:
        if isinstance(value, str):
            wanted = value.strip().lower()
            return next((member for member in cls if member.value.lower() == wanted), None)
        return None


class Asset(Frozen):
    """What every registered asset (entity, feature set, model) shares: a checked ``name``, ``tags`` as
    strings, and ``ref`` = ``name:version``. Subclasses declare the fields (their order is the YAML's) and
    name their kind in ``asset_kind`` for error messages."""

    asset_kind: ClassVar[str] = "asset"

    @field_validator("name", check_fields=False)
    @classmethod
    def _checked_name(cls, value: str) -> str:
        return check_name(value, cls.asset_kind)

    @field_validator("tags", mode="before", check_fields=False)
    @classmethod
    def _tags_as_strings(cls, value: Any) -> Any:
        return tags_as_strings(value)

    @field_validator("tags", check_fields=False)
    @classmethod
    def _tags_within_limits(cls, value: dict[str, str]) -> dict[str, str]:
        return check_tags(value)

    @field_validator("description", check_fields=False)
    @classmethod
    def _description_within_limit(cls, value: str | None) -> str | None:
        return check_description(value)

    @property
    def ref(self) -> str:
        return f"{self.name}:{self.version}"                  # type: ignore[attr-defined]


class Stage(StrEnum):
    DEVELOPMENT = "development"
    PRODUCTION = "production"
    ARCHIVED = "archived"


StageName = Annotated[Stage, BeforeValidator(_lower_enum)]


class Column(Frozen):
    """A typed column: an index column of an entity or feature set."""

    name: str
    type: TypeName

    @field_validator("name")
    @classmethod
    def _column_name(cls, value: str) -> str:
        _check_length(value, "column name")
        if not COLUMN_PATTERN.match(value):
            raise ValueError(f"'{value}' is not a valid column name; use letters, digits and underscores")
        return value


class Feature(Frozen):
    """One declared output column of a feature set."""

    name: str
    type: TypeName
    description: str | None = None
    tags: dict[str, str] = Field(default_factory=dict)

    @field_validator("name")
    @classmethod
    def _feature_name(cls, value: str) -> str:
        _check_length(value, "feature name")
        if not COLUMN_PATTERN.match(value):
            raise ValueError(f"'{value}' is not a valid feature name; use letters, digits and underscores")
        return value

    @field_validator("tags", mode="before")
    @classmethod
    def _tags_as_strings(cls, value: Any) -> Any:
        return tags_as_strings(value)

    @field_validator("tags")
    @classmethod
    def _tags_within_limits(cls, value: dict[str, str]) -> dict[str, str]:
        return check_tags(value)

    @field_validator("description")
    @classmethod
    def _description_within_limit(cls, value: str | None) -> str | None:
        return check_description(value)


def tags_as_strings(value: Any) -> Any:
    """Tags are string to string; YAML turns ``pii: false`` into a bool, so stringify scalars."""
    if value is None:
        return {}
    if isinstance(value, dict):
        return {str(k): (str(v).lower() if isinstance(v, bool) else str(v)) for k, v in value.items()}
    return value


def _shown(value: str) -> str:
    """A value for an error message: long ones cut to their start."""
    return repr(value) if len(value) <= 40 else f"{value[:40]!r}... ({len(value):,} characters)"


def _check_length(value: str, what: str, limit: int = MAX_NAME_LENGTH) -> None:
    if len(value) > limit:
        raise ValueError(f"{what} {_shown(value)} is longer than {limit:,} characters; shorten it")


def check_description(value: str | None) -> str | None:
    """Descriptions hold at most ``MAX_DESCRIPTION_LENGTH`` characters."""
    if value is not None and len(value) > MAX_DESCRIPTION_LENGTH:
        raise ValueError(f"description has {len(value):,} characters, more than the limit of "
                         f"{MAX_DESCRIPTION_LENGTH:,}; shorten it")
    return value


def check_tags(value: dict[str, str]) -> dict[str, str]:
    """At most ``MAX_TAGS`` tags, keys up to ``MAX_TAG_KEY_LENGTH`` and values up to ``MAX_TAG_VALUE_LENGTH``."""
    if len(value) > MAX_TAGS:
        raise ValueError(f"tags has {len(value):,} entries, more than the limit of {MAX_TAGS}; keep fewer tags")
    for key, text in value.items():
        _check_length(key, "tag name", MAX_TAG_KEY_LENGTH)
        if len(text) > MAX_TAG_VALUE_LENGTH:
            raise ValueError(f"tag {_shown(key)}: value is longer than {MAX_TAG_VALUE_LENGTH:,} characters; "
                             "shorten it")
    return value


def check_name(value: str, what: str) -> str:
    _check_length(value, f"{what} name")
    if not NAME_PATTERN.match(value):
        raise ValueError(f"'{value}' is not a valid {what} name; use letters, digits, '_' and '-'")
    return value
