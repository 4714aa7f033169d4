"""Offline store: materialized feature rows per feature set version, for training-data retrieval."""
