"""A small YAML repo for store-level tests: entity ``account:1`` (index ``acct: string``) and feature set
``fs1:1`` over one source with ``ts`` as timestamp (shared by the materialization, scheduler and
online test modules)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml


def write_fs1_repo(root: Path, *, source: str | Path | dict[str, Any], settings: dict[str, Any],
                   features: list[dict[str, str]] | None = None, lookback_days: int | None = None,
                   source_delay_hours: int = 0) -> Path:
    """Write ``root/repo`` and return it. ``source``: a Parquet path, or a whole ``source`` block (its
    ``timestamp_column`` defaults to ``ts``); ``settings``: the ``materialization_settings`` block;
    ``features`` default to ``f1: double``."""
    repo = root / "repo"
    (repo / "fs" / "spec").mkdir(parents=True, exist_ok=True)
    (repo / "account.yaml").write_text("name: account\nversion: '1'\nindex_columns: [{name: acct, type: string}]\n")
    (repo / "fs" / "FeatureSet.yaml").write_text(yaml.safe_dump({
        "name": "fs1", "version": "1", "specification": {"path": "./spec"}, "entities": ["account:1"],
        "materialization_settings": settings}))
    block = dict(source) if isinstance(source, dict) else {"type": "parquet", "path": str(source)}
    block.setdefault("timestamp_column", {"name": "ts"})
    if source_delay_hours:
        block["source_delay"] = {"hours": source_delay_hours}
    spec: dict[str, Any] = {"source": block, "index_columns": [{"name": "acct", "type": "string"}],
                            "features": features or [{"name": "f1", "type": "double"}]}
    if lookback_days is not None:
        spec["temporal_join_lookback"] = {"days": lookback_days}
    (repo / "fs" / "spec" / "FeatureSetSpec.yaml").write_text(yaml.safe_dump(spec))
    return repo


#: a custom source that takes a minute per window (or until the file named by its ``release`` kwarg exists):
#: its jobs are surely still running when a test kills their process
SLOW_SOURCE = """
import os
import time

import pandas as pd


class Slow:
    def process(self, start, end, **kwargs):
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline and not os.path.exists(kwargs.get("release", "")):
            time.sleep(0.05)
        return pd.DataFrame({"acct": ["A"], "ts": [start or pd.Timestamp("2024-01-09")], "f1": [1.0]})
"""


def set_limits(store: Path, limits: dict[str, Any]) -> None:
    """Merge ``limits`` into the ``limits:`` block of the store's ``featurestore.yaml``."""
    config_file = store / "featurestore.yaml"
    config = yaml.safe_load(config_file.read_text())
    config["limits"] = {**(config.get("limits") or {}), **limits}
    config_file.write_text(yaml.safe_dump(config))
