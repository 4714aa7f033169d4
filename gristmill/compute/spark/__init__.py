"""The Apache Spark engine (``engine: {type: spark}`` in featurestore.yaml): install with
``pip install 'gristmill[spark]'``; Spark itself starts only when the engine first computes."""

from gristmill.compute.spark.engine import SparkEngine

__all__ = ["SparkEngine"]
