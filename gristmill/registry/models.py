"""The catalog tables (SQLAlchemy 2 Core), portable between SQLite and PostgreSQL.

Tables carry no schema: a ``Registry`` opened with ``schema=...`` maps them into that PostgreSQL schema
with ``schema_translate_map``, so one definition serves every isolated catalog.

    schema_version   one row: the layout version, checked on open (future migrations start here)
    entities         (name, version) -> index columns, description, tags, stage, archived
    feature_sets     (name, version) -> asset fields, spec JSON, spec folder, code files, content hash
    features         (feature set, version, feature) -> type, description, tags; filled on registration
    models           (name, version) -> retrieval spec, description, tags: the features a model uses
    model_features   (model, version, position) -> feature set, version, feature: lineage, queryable
"""

from __future__ import annotations

import sqlalchemy as sa

SCHEMA_VERSION = 1

metadata = sa.MetaData()

# Plain JSON (not JSONB) keeps key order, so specs and code files read back as they were written.
JSON = sa.JSON()
TIMESTAMP = sa.DateTime(timezone=True)
NAME = sa.String(200)
VERSION = sa.String(100)

schema_version = sa.Table(
    "schema_version",
    metadata,
    sa.Column("id", sa.Integer, primary_key=True, autoincrement=False),
    sa.Column("version", sa.Integer, nullable=False),
    sa.Column("applied_at", TIMESTAMP, nullable=False),
)

entities = sa.Table(
    "entities",
    metadata,
    sa.Column("name", NAME, primary_key=True),
    sa.Column("version", VERSION, primary_key=True),
    sa.Column("index_columns", JSON, nullable=False),
    sa.Column("description", sa.Text, nullable=True),
    sa.Column("tags", JSON, nullable=False),
    sa.Column("stage", sa.String(20), nullable=False),
    sa.Column("archived", sa.Boolean, nullable=False, default=False),
    sa.Column("created_at", TIMESTAMP, nullable=False),
    sa.Column("updated_at", TIMESTAMP, nullable=False),
)

feature_sets = sa.Table(
    "feature_sets",
    metadata,
    sa.Column("name", NAME, primary_key=True),
    sa.Column("version", VERSION, primary_key=True),
    sa.Column("specification_path", sa.Text, nullable=False),
    sa.Column("entities", JSON, nullable=False),
    sa.Column("stage", sa.String(20), nullable=False),
    sa.Column("description", sa.Text, nullable=True),
    sa.Column("tags", JSON, nullable=False),
    sa.Column("materialization_settings", JSON, nullable=True),
    sa.Column("spec", JSON, nullable=False),
    sa.Column("spec_folder", sa.Text, nullable=True),
    sa.Column("code_files", JSON, nullable=False),
    sa.Column("content_hash", sa.String(128), nullable=False),
    sa.Column("archived", sa.Boolean, nullable=False, default=False),
    sa.Column("created_at", TIMESTAMP, nullable=False),
    sa.Column("updated_at", TIMESTAMP, nullable=False),
)

features = sa.Table(
    "features",
    metadata,
    sa.Column("feature_set", NAME, primary_key=True),
    sa.Column("version", VERSION, primary_key=True),
    sa.Column("name", NAME, primary_key=True),
    sa.Column("position", sa.Integer, nullable=False),
    sa.Column("type", sa.String(40), nullable=False),
    sa.Column("description", sa.Text, nullable=True),
    sa.Column("tags", JSON, nullable=False),
    sa.ForeignKeyConstraint(
        ["feature_set", "version"], ["feature_sets.name", "feature_sets.version"], ondelete="CASCADE"
    ),
)


models = sa.Table(
    "models",
    metadata,
    sa.Column("name", NAME, primary_key=True),
    sa.Column("version", VERSION, primary_key=True),
    sa.Column("retrieval_spec", JSON, nullable=False),
    sa.Column("description", sa.Text, nullable=True),
    sa.Column("tags", JSON, nullable=False),
    sa.Column("archived", sa.Boolean, nullable=False, default=False),
    sa.Column("created_at", TIMESTAMP, nullable=False),
    sa.Column("updated_at", TIMESTAMP, nullable=False),
)

model_features = sa.Table(
    "model_features",
    metadata,
    sa.Column("model", NAME, primary_key=True),
    sa.Column("version", VERSION, primary_key=True),
    sa.Column("position", sa.Integer, primary_key=True),
    sa.Column("feature_set", NAME, nullable=False),
    sa.Column("feature_set_version", VERSION, nullable=False),
    sa.Column("feature", NAME, nullable=False),
    sa.ForeignKeyConstraint(["model", "version"], ["models.name", "models.version"], ondelete="CASCADE"),
    sa.Index("ix_model_features_feature_set", "feature_set", "feature_set_version"),
)
