"""Engines are chosen by ``engine.type`` in featurestore.yaml (a table, as Ibis registers backends); the
configuration of one engine is refused on another with the fix."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

import gristmill as gm
from gristmill.compute.duckdb.engine import DuckDBEngine
from gristmill.compute.engines import ENGINES, engine_class
from gristmill.errors import SpecError


def _store_with_engine(tmp_path: Path, engine: dict[str, object]) -> Path:
    folder = tmp_path / "store"
    gm.FeatureStore.init(folder).close()
    config = yaml.safe_load((folder / "featurestore.yaml").read_text())
    config["engine"] = engine
    (folder / "featurestore.yaml").write_text(yaml.safe_dump(config))
    return folder


def test_every_engine_type_of_the_configuration_has_an_engine() -> None:
    from typing import get_args

    from gristmill.config import EngineConfig

    configured = set(get_args(EngineConfig.model_fields["type"].annotation))
    assert configured == set(ENGINES)
    assert engine_class("duckdb") is DuckDBEngine
    assert engine_class("spark").name == "spark"


def test_the_default_engine_is_duckdb_and_runs_the_jobs_itself(tmp_path: Path) -> None:
    store = gm.FeatureStore(_store_with_engine(tmp_path, {"type": "duckdb", "memory_limit": "1GB", "threads": 1}))
    assert isinstance(store.engine, DuckDBEngine)
    assert (store.engine.memory_limit, store.engine.threads) == ("1GB", 1)
    assert store.job_engine is store.engine
    store.close()


@pytest.mark.parametrize(("engine", "message"), [
    ({"type": "duckdb", "master": "local[2]"}, "master: only for the Spark engine; set type: spark or remove it"),
    ({"type": "duckdb", "conf": {"spark.executor.memory": "1g"}}, "conf: only for the Spark engine"),
    ({"type": "spark", "memory_limit": "4GB"}, "memory_limit: only for the DuckDB engine; for Spark"),
    ({"type": "spark", "master": "local[2]", "remote": "sc://h:15002"}, "either master"),
    ({"type": "spark", "remote": "http://h:15002"}, "must be a Spark Connect URL such as sc://host:15002"),
    ({"type": "flink"}, "engine.type"),
    ({"type": "spark", "conf": ["spark.executor.memory=1g"]}, "engine.conf"),
    ({"type": "spark", "remote": "http://h:15002/;token=SECRET"}, "http://h:15002/;token=***"),
    ({"type": "spark", "master": "bogus://nowhere"}, "is not a Spark master URL: use local[N], spark://host:7077"),
])
def test_engine_settings_that_do_not_fit_are_refused_with_the_fix(tmp_path: Path, engine: dict[str, object],
                                                                  message: str) -> None:
    folder = _store_with_engine(tmp_path, engine)
    with pytest.raises(SpecError) as caught:
        gm.FeatureStore(folder)
    assert message in str(caught.value)
    assert "featurestore.yaml" in str(caught.value)


def test_spark_settings_written_as_numbers_or_booleans_are_taken_as_text(tmp_path: Path) -> None:
    folder = _store_with_engine(tmp_path, {"type": "spark", "master": "local[1]",
                                           "conf": {"spark.sql.shuffle.partitions": 4,
                                                    "spark.sql.adaptive.enabled": True}})
    store = gm.FeatureStore(folder)
    assert store.config.engine.conf == {"spark.sql.shuffle.partitions": "4", "spark.sql.adaptive.enabled": "true"}
    store.close()


def test_a_spark_connect_token_is_never_shown() -> None:
    from gristmill.compute.spark.session import without_token

    assert without_token("cannot reach sc://h:15002/;token=SECRET;user_id=me") == \
        "cannot reach sc://h:15002/;token=***;user_id=me"
    assert "SECRET" not in without_token("sc://h:15002/;Token = SECRET")


def test_an_unreachable_spark_connect_server_fails_fast_naming_it() -> None:
    import socket
    import time

    from gristmill.compute.spark.session import SparkUnavailableError, build_session

    with socket.socket() as probe:          # a port nothing listens on
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    started = time.perf_counter()
    with pytest.raises(SparkUnavailableError, match=f"cannot reach the Spark Connect server at 127.0.0.1:{port}"):
        build_session(remote=f"sc://127.0.0.1:{port}/;token=SECRET")
    assert time.perf_counter() - started < 5


def test_the_duckdb_key_conversions_spell_exactly_the_shared_rule() -> None:
    """The Spark engine reads ``planning.KEY_CONVERSIONS``; DuckDB spells the same conversions in SQL."""
    from gristmill.compute.duckdb.pit import _KEY_CONVERSIONS
    from gristmill.compute.planning import KEY_CONVERSIONS

    assert {declared: frozenset(sql) for declared, sql in _KEY_CONVERSIONS.items()} == KEY_CONVERSIONS
