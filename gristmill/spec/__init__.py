"""Typed, frozen spec objects and their YAML files."""

from gristmill.spec.common import Column, Feature, Stage
from gristmill.spec.duration import Duration
from gristmill.spec.entity import Entity
from gristmill.spec.featureset import FeatureSet, MaterializationSettings, Schedule
from gristmill.spec.featureset_spec import (
    Aggregation,
    FeatureSetSpec,
    FeatureTransformation,
    Source,
    SourceType,
    WindowExpression,
)
from gristmill.spec.retrieval_spec import FeatureReference, FeatureRetrievalSpec
from gristmill.spec.types import FeatureType

__all__ = [
    "Aggregation",
    "Column",
    "Duration",
    "Entity",
    "Feature",
    "FeatureReference",
    "FeatureRetrievalSpec",
    "FeatureSet",
    "FeatureSetSpec",
    "FeatureTransformation",
    "FeatureType",
    "MaterializationSettings",
    "Schedule",
    "Source",
    "SourceType",
    "Stage",
    "WindowExpression",
]
