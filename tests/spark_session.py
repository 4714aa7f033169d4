"""One classic ``local[2]`` Spark session per test process (each xdist worker gets its own), started on
first use only: tests that never touch Spark never pay its start-up (5-17 s)."""

from __future__ import annotations

import functools
from typing import Any


@functools.cache
def spark_session() -> Any:
    """The test process's SparkSession (classic; Spark Connect is tested in a separate process)."""
    from gristmill.compute.spark.session import build_session

    return build_session(master="local[2]", conf={"spark.sql.shuffle.partitions": "2",
                                                  "spark.default.parallelism": "2",
                                                  "spark.driver.memory": "1g",
                                                  "spark.sql.adaptive.enabled": "true"})


@functools.cache
def spark_engine() -> Any:
    """A SparkEngine on the test process's session."""
    from gristmill.compute.spark import SparkEngine

    return SparkEngine(session=spark_session())
