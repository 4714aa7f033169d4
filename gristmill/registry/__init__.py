"""The catalog registry: entities, feature sets and features in SQLite or PostgreSQL."""

from gristmill.registry.registry import (
    UNSET,
    FeatureInfo,
    PutResult,
    RegisteredFeatureSet,
    Registry,
    version_key,
)

__all__ = ["UNSET", "FeatureInfo", "PutResult", "RegisteredFeatureSet", "Registry", "version_key"]
