"""What a job cost on Spark, from Spark's own task metrics: the executors' CPU time and the bytes they read,
shuffled and wrote, summed over the stages of the job's Spark jobs.

On a classic session the job's Spark jobs carry a job group, and the driver's status store (the data behind
Spark's UI, kept also when the UI is off) gives each stage's metrics. A Spark Connect client has no access to
the server's status store: there only the client's own CPU time is counted, and the job's log says so."""

from __future__ import annotations

import logging
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from gristmill.compute.spark.session import is_connect

if TYPE_CHECKING:
    from pyspark.sql import SparkSession

log = logging.getLogger("gristmill.jobs")

_GROUP_PROPERTIES = ("spark.jobGroup.id", "spark.job.description", "spark.job.interruptOnCancel")


@dataclass
class TaskMetrics:
    """Sums over the completed stages of one job's Spark jobs (``measured`` is False over Spark Connect)."""

    measured: bool = False
    stages: int = 0
    executor_cpu_seconds: float = 0.0
    executor_run_seconds: float = 0.0
    input_bytes: int = 0
    input_records: int = 0
    output_bytes: int = 0
    output_records: int = 0
    shuffle_read_bytes: int = 0
    shuffle_write_bytes: int = 0
    group: str = field(default_factory=lambda: f"gristmill-{uuid.uuid4().hex[:12]}")

    def describe(self) -> str:
        if not self.measured:
            return ("executor CPU not measured: a Spark Connect client cannot read the server's task metrics "
                    "(the job's CPU seconds are the client's own)")
        return (f"{self.stages} stages, executor CPU {self.executor_cpu_seconds:.2f} s "
                f"(run time {self.executor_run_seconds:.2f} s), read {self.input_records:,} records / "
                f"{self.input_bytes:,} bytes, shuffled {self.shuffle_write_bytes:,} bytes, wrote "
                f"{self.output_records:,} records / {self.output_bytes:,} bytes")


@contextmanager
def task_metrics(spark: SparkSession, *, label: str) -> Iterator[TaskMetrics]:
    """Tag the Spark jobs started inside the block (this thread) and sum their stages' metrics at its end."""
    metrics = TaskMetrics()
    if is_connect(spark):
        spark.addTag(metrics.group)                 # lets an operator find (and interrupt) the job's Spark jobs
        try:
            yield metrics
        finally:
            spark.removeTag(metrics.group)
        return
    context = spark.sparkContext
    previous = {key: context.getLocalProperty(key) for key in _GROUP_PROPERTIES}
    context.setJobGroup(metrics.group, f"gristmill: {label}", interruptOnCancel=True)
    try:
        yield metrics
    finally:
        for key, value in previous.items():
            context.setLocalProperty(key, value)    # type: ignore[arg-type]   (None clears it)
        try:
            _collect(spark, metrics)
        except Exception:                           # metrics are a report; never fail a job over them
            log.debug("Spark task metrics not read", exc_info=True)


def _collect(spark: SparkSession, metrics: TaskMetrics) -> None:
    context = spark.sparkContext
    store = context._jsc.sc().statusStore()         # type: ignore[union-attr]
    jvm = context._jvm                              # type: ignore[attr-defined]
    stage_ids: set[int] = set()
    # the group's jobs by id (one call), not a scan of every job the status store keeps (up to
    # spark.ui.retainedJobs, 1,000: ~3 s of py4j calls per materialization job on a long-running session)
    for job_id in context.statusTracker().getJobIdsForGroup(metrics.group):
        job = store.job(int(job_id))
        stage_ids.update(int(s) for s in str(job.stageIds().mkString(",")).split(",") if s)
    no_quantiles = context._gateway.new_array(jvm.double, 0)   # type: ignore[attr-defined]
    for stage_id in stage_ids:
        attempts = store.stageData(stage_id, False, jvm.java.util.ArrayList(), False, no_quantiles)
        for i in range(attempts.size()):
            stage = attempts.apply(i)
            if str(stage.status()) != "COMPLETE":
                continue                             # skipped (its shuffle output reused) or failed
            metrics.stages += 1
            metrics.executor_cpu_seconds += _number(stage.executorCpuTime()) / 1e9
            metrics.executor_run_seconds += _number(stage.executorRunTime()) / 1e3
            metrics.input_bytes += _number(stage.inputBytes())
            metrics.input_records += _number(stage.inputRecords())
            metrics.output_bytes += _number(stage.outputBytes())
            metrics.output_records += _number(stage.outputRecords())
            metrics.shuffle_read_bytes += _number(stage.shuffleReadBytes())
            metrics.shuffle_write_bytes += _number(stage.shuffleWriteBytes())
    metrics.measured = True


def _number(value: Any) -> int:
    return int(value or 0)
