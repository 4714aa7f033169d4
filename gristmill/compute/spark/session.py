"""Obtaining the SparkSession the Spark engine runs on: a classic one (``master``), a Spark Connect one
(``remote``), or one the caller already has. Built lazily, on the first computation, because starting
Spark takes seconds and needs Java."""

from __future__ import annotations

import logging
import math
import os
import shutil
import sys
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, ParamSpec, TypeVar

from gristmill.errors import GristmillError, install_hint

if TYPE_CHECKING:
    from pyspark.sql import SparkSession

log = logging.getLogger("gristmill.compute")
P = ParamSpec("P")
R = TypeVar("R")

#: Settings every session gets: times are UTC instants, Parquet timestamps are microseconds (the INT96
#: default reads back as naive nanoseconds elsewhere), no ``_SUCCESS`` files in written folders.
REQUIRED_CONF: dict[str, str] = {
    "spark.sql.session.timeZone": "UTC",
    "spark.sql.parquet.outputTimestampType": "TIMESTAMP_MICROS",
    "mapreduce.fileoutputcommitter.marksuccessfuljobs": "false",
}

#: Defaults for a session Gristmill starts itself (a user's ``conf`` wins).
LOCAL_DEFAULTS: dict[str, str] = {
    "spark.ui.enabled": "false",
    "spark.ui.showConsoleProgress": "false",
    "spark.sql.shuffle.partitions": "4",
    "spark.default.parallelism": "4",
}

#: Classic sessions only: the JVM's own time zone (used by a few date functions and by Parquet writers).
JVM_UTC: dict[str, str] = {
    "spark.driver.extraJavaOptions": "-Duser.timezone=UTC",
    "spark.executor.extraJavaOptions": "-Duser.timezone=UTC",
}


class SparkJobError(GristmillError):
    """Spark failed while it computed or wrote (the message is Spark's first line, or what happened to the
    Spark Connect server and what to do)."""


class SparkUnavailableError(GristmillError):
    """Spark cannot be started here (no Java, no reachable Connect server)."""


def import_pyspark() -> Any:
    """The ``pyspark.sql`` module, or an ImportError saying what to install."""
    try:
        import pyspark.sql
    except ImportError as exc:
        raise ImportError(f"the Spark engine needs pyspark: {install_hint('spark')}") from exc
    return pyspark.sql


def without_token(text: str) -> str:
    """``text`` with a Spark Connect URL's secrets hidden (``sc://host:15002/;token=...``)."""
    import re

    return re.sub(r"(;\s*(?:token|password|user_secret)\s*=\s*)[^;\s]*", r"\1***", text, flags=re.IGNORECASE)


CONNECT_TIMEOUT_SECONDS = 10.0

#: How long a Spark Connect client keeps retrying a server that stopped answering before the computation fails.
#: The client's own default is over ten minutes of retries, so a job whose server died looked hung instead of
#: Failed; a restarted server is still picked up within this time.
CONNECT_RETRY_SECONDS = 30.0


def _reachable(remote: str) -> None:
    """Fail fast when nothing listens at the Spark Connect URL (the client would retry for minutes)."""
    import socket
    from urllib.parse import urlsplit

    try:
        parts = urlsplit(remote.split(";", 1)[0])
        host, port = parts.hostname or "localhost", parts.port or 15002
    except ValueError as exc:
        raise SparkUnavailableError(f"engine.remote '{without_token(remote)}' is not a Spark Connect URL such as "
                                    f"sc://host:15002 ({exc})") from None
    try:
        socket.create_connection((host, port), timeout=CONNECT_TIMEOUT_SECONDS).close()
    except OSError as exc:
        raise SparkUnavailableError(f"cannot reach the Spark Connect server at {host}:{port} "
                                    f"({exc.strerror or type(exc).__name__}); start it, or check engine.remote in "
                                    "featurestore.yaml") from None


def build_session(*, master: str | None = None, remote: str | None = None,
                  conf: dict[str, Any] | None = None) -> SparkSession:
    """A SparkSession: Spark Connect when ``remote`` is given, else classic on ``master`` (default
    ``local[2]``), with ``REQUIRED_CONF`` always set."""
    sql = import_pyspark()
    if master and remote:
        raise GristmillError("engine: give either master (classic Spark) or remote (Spark Connect), not both")
    settings = {**LOCAL_DEFAULTS, **{k: str(v) for k, v in (conf or {}).items()}, **REQUIRED_CONF}
    builder = sql.SparkSession.builder
    if remote:
        _reachable(remote)
        _require_connect_client()
        builder = builder.remote(remote)
        settings = {k: v for k, v in settings.items() if not k.startswith(("spark.ui.", "spark.default.",
                                                                           "mapreduce."))}
    else:
        if shutil.which("java") is None and not _java_home():
            raise SparkUnavailableError("the Spark engine needs Java 17 or newer: install a JDK (e.g. "
                                        "apt-get install openjdk-17-jre-headless) or set JAVA_HOME")
        settings = {**JVM_UTC, **settings}
        if (master or "local").startswith("local") and not os.environ.get("PYSPARK_PYTHON"):
            # local executors run Python UDFs (code transformations per key) with this interpreter, which has
            # pandas and pyarrow (pyspark reads the variable when the session starts; else it runs `python3`);
            # on a cluster, PYSPARK_PYTHON / spark.pyspark.python name the executors' own
            os.environ["PYSPARK_PYTHON"] = sys.executable
        builder = builder.master(master or "local[2]").appName("gristmill")
    for key, value in settings.items():
        builder = builder.config(key, value)
    try:
        session = builder.getOrCreate()
    except Exception as exc:          # py4j / gRPC errors: say what failed, not where
        where = f"Spark Connect server {remote}" if remote else f"Spark (master {master or 'local[2]'})"
        raise SparkUnavailableError(without_token(f"cannot start a session on {where}: {type(exc).__name__}: "
                                                  f"{str(exc).splitlines()[0] if str(exc) else ''}")) from None
    if remote:
        _bound_retries(session, CONNECT_RETRY_SECONDS)
    prepare_session(session)
    log.info("Spark session ready (%s)", without_token(remote or master or "local[2]"))
    return session


def failure_text(exc: BaseException) -> str:
    """One line saying why a Spark computation failed: the first line of Spark's message, or, when the Spark
    Connect server stopped answering (gRPC's own text is a multi-line dump), what happened and what to do."""
    status = getattr(exc, "getGrpcStatusCode", None) or getattr(exc, "code", None)
    try:
        unavailable = callable(status) and getattr(status(), "name", "") == "UNAVAILABLE"
    except Exception:           # a gRPC call object that is not finished has no code yet
        unavailable = False
    if unavailable:
        import re

        detail = re.search(r'details = "([^"]*)"', str(exc))
        reason = detail.group(1) if detail else "unavailable"
        return without_token(f"the Spark Connect server stopped answering (retried for {CONNECT_RETRY_SECONDS:.0f} s: "
                             f"{reason}); check that it is running (engine.remote in featurestore.yaml), then retry")
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


def is_spark_failure(exc: BaseException) -> bool:
    """Whether ``exc`` comes from Spark itself (the JVM, the Connect client or gRPC), not from Gristmill."""
    return type(exc).__module__.startswith(("pyspark", "py4j", "grpc"))


def reports_spark_failures(what: str, error: type[GristmillError]) -> Callable[[Callable[P, R]], Callable[P, R]]:
    """Decorate an engine method whose planning runs Spark jobs (sampling, counting hot keys...): a Spark
    failure there becomes one ``error`` saying ``what`` failed and why, instead of a Spark traceback."""
    import functools

    def decorate(method: Callable[P, R]) -> Callable[P, R]:
        @functools.wraps(method)
        def run(*args: P.args, **kwargs: P.kwargs) -> R:
            try:
                return method(*args, **kwargs)
            except Exception as exc:
                if is_spark_failure(exc):
                    raise error(f"{what} failed: {failure_text(exc)}") from None
                raise
        return run
    return decorate


def _bound_retries(session: SparkSession, seconds: float) -> None:
    """Make the Connect client give up on an unreachable server after about ``seconds`` of retries (backoff
    50 ms, 200 ms, 800 ms, then every 2 s), instead of its default of more than ten minutes."""
    from pyspark.sql.connect.client.retries import DefaultPolicy

    waits_ms = [50, 200, 800]
    retries = len(waits_ms) + max(0, math.ceil((seconds * 1000 - sum(waits_ms)) / 2000))
    session.client.set_retry_policies([DefaultPolicy(max_retries=retries, max_backoff=2000, jitter=0)])


def prepare_session(session: SparkSession) -> None:
    """Set the session-level settings the engine relies on (also on a session passed in by the user)."""
    for key in ("spark.sql.session.timeZone", "spark.sql.parquet.outputTimestampType"):
        session.conf.set(key, REQUIRED_CONF[key])


def is_connect(session: Any) -> bool:
    """Whether ``session`` is a Spark Connect session (its DataFrames are of another class)."""
    return type(session).__module__.startswith("pyspark.sql.connect")


def is_spark_dataframe(value: Any) -> bool:
    """Whether ``value`` is a Spark DataFrame (classic or Connect), without importing pyspark."""
    module = type(value).__module__
    return module.startswith("pyspark.sql") and type(value).__name__ == "DataFrame"


def _java_home() -> str | None:
    import os

    home = os.environ.get("JAVA_HOME")
    return home if home and shutil.which("java", path=os.path.join(home, "bin")) else None


def _require_connect_client() -> None:
    try:
        import grpc  # noqa: F401
        import pyspark.sql.connect  # noqa: F401
    except ImportError as exc:
        raise ImportError(f"Spark Connect needs the Connect client: pip install 'pyspark[connect]' "
                          f"({install_hint('spark')})") from exc
