"""Run one Feast point-in-time retrieval; executed by offline_retrieval.py inside Feast's venv.

Usage: ``python _feast_runner.py '<json config>'`` with keys store (``duckdb`` | ``file``),
features_path, observations_path, output_path, repo_path, feature_view, features
(name -> double|long), ttl_days, result_path. Writes timings (or ``{"error": ...}``) as JSON to
result_path. Needs only Feast and what it installs (pandas, pyarrow), so it imports nothing
from Gristmill.
"""

from __future__ import annotations

import json
import shutil
import sys
import time
from datetime import timedelta
from pathlib import Path
from typing import Any


def run(config: dict[str, Any]) -> dict[str, float]:
    started = time.perf_counter()
    import pandas as pd
    from feast import Entity, FeatureStore, FeatureView, Field, FileSource
    from feast.repo_config import RepoConfig
    from feast.types import Float64, Int64
    from feast.value_type import ValueType

    timings = {"import_seconds": time.perf_counter() - started}
    repo = Path(config["repo_path"])
    shutil.rmtree(repo, ignore_errors=True)
    repo.mkdir(parents=True)

    started = time.perf_counter()
    repo_config = RepoConfig(
        project="gristmill_bench",
        provider="local",
        registry=str(repo / "registry.db"),
        offline_store={"type": config["store"]},
        online_store={"type": "sqlite", "path": str(repo / "online.db")},
        entity_key_serialization_version=3,
        repo_path=str(repo),
    )
    store = FeatureStore(config=repo_config)
    account = Entity(name="account", join_keys=["account_id"], value_type=ValueType.STRING)
    dtypes = {"double": Float64, "long": Int64}
    view = FeatureView(
        name=config["feature_view"],
        entities=[account],
        ttl=timedelta(days=config["ttl_days"]),
        schema=[Field(name=name, dtype=dtypes[kind]) for name, kind in config["features"].items()],
        source=FileSource(path=config["features_path"], timestamp_field="ts"),
        online=False,
    )
    store.apply([account, view])
    timings["setup_seconds"] = time.perf_counter() - started

    started = time.perf_counter()
    entity_df = pd.read_parquet(config["observations_path"])
    refs = [f"{config['feature_view']}:{name}" for name in config["features"]]
    frame = store.get_historical_features(entity_df=entity_df, features=refs).to_df()
    frame.to_parquet(config["output_path"], index=False)
    timings["query_seconds"] = time.perf_counter() - started
    timings["wall_seconds"] = timings["setup_seconds"] + timings["query_seconds"]
    return timings


def main() -> int:
    config = json.loads(sys.argv[1])
    result_path = Path(config["result_path"])
    try:
        timings = run(config)
    except Exception as error:  # reported to the driver, which keeps going
        import traceback

        traceback.print_exc()
        message = f"{type(error).__name__}: {error}".splitlines()[0][:300]
        result_path.write_text(json.dumps({"error": message}))
        return 1
    result_path.write_text(json.dumps(timings))
    return 0


if __name__ == "__main__":
    sys.exit(main())
