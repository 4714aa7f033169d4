"""``featurestore.yaml``: where a store keeps its registry, offline and online data, and which engine
it computes with. Every default is embedded (no server)."""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from gristmill.errors import ConfigError
from gristmill.spec.yaml_io import read_yaml, validate, write_yaml

CONFIG_FILE_NAME = "featurestore.yaml"


class _Config(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")


class RegistryConfig(_Config):
    url: str = "sqlite:///registry.db"   # relative SQLite paths resolve against the store folder
    db_schema: str | None = Field(default=None, alias="schema")


class OfflineStoreConfig(_Config):
    uri: str = "offline"                 # a folder (relative to the store) or an object-storage URI
    # object-storage settings for delta-rs (e.g. AWS_ENDPOINT_URL, AWS_REGION, AZURE_STORAGE_ACCOUNT_NAME);
    # unset ones come from the environment as usual
    storage_options: dict[str, str] | None = None


class OnlineStoreConfig(_Config):
    type: Literal["sqlite", "redis"] = "sqlite"
    path: str = "online.db"              # SQLite file, relative to the store folder
    url: str | None = None               # Redis URL, e.g. redis://127.0.0.1:6379/0
    prefix: str = "gristmill"            # Redis key prefix (one per store sharing a server)
    # Redis: how long a lookup or a write waits for Redis's reply before it fails (a served lookup: 503)
    timeout_seconds: float = Field(default=30.0, gt=0, le=3600)


class EngineConfig(_Config):
    """Which engine computes feature sets and training data (docs/engines.md).

    ``duckdb`` (the default) runs in-process; ``spark`` runs on Apache Spark: a classic session (``master``,
    e.g. ``local[4]`` or ``spark://host:7077``) or a Spark Connect server (``remote``, e.g.
    ``sc://host:15002``); ``conf`` holds Spark settings (``spark.executor.memory``...)."""

    type: Literal["duckdb", "spark"] = "duckdb"
    memory_limit: str | None = None      # DuckDB: its memory limit per query (spills to disk beyond)
    threads: int | None = None           # DuckDB: worker threads
    master: str | None = None            # Spark: the master URL of a classic session (default local[*])
    remote: str | None = None            # Spark: the Spark Connect URL (sc://host:port)
    conf: dict[str, str] | None = None   # Spark: settings applied to the session

    @field_validator("conf", mode="before")
    @classmethod
    def _settings_as_text(cls, value: object) -> object:
        """Spark settings are text; numbers and booleans written plainly in YAML are taken as their text."""
        if isinstance(value, dict):
            return {key: (str(item).lower() if isinstance(item, bool) else str(item))
                    if isinstance(item, int | float | bool) else item for key, item in value.items()}
        return value

    @model_validator(mode="after")
    def _fields_of_the_engine(self) -> EngineConfig:
        spark_only = [name for name in ("master", "remote", "conf") if getattr(self, name) is not None]
        duckdb_only = [name for name in ("memory_limit", "threads") if getattr(self, name) is not None]
        if self.type == "duckdb" and spark_only:
            raise ValueError(f"{', '.join(spark_only)}: only for the Spark engine; set type: spark or remove "
                             f"{'it' if len(spark_only) == 1 else 'them'}")
        if self.type == "spark" and duckdb_only:
            raise ValueError(f"{', '.join(duckdb_only)}: only for the DuckDB engine; for Spark, give "
                             "spark.driver.memory / spark.executor.memory under conf")
        if self.master is not None and self.remote is not None:
            raise ValueError("give either master (a classic Spark session) or remote (Spark Connect), not both")
        if self.master is not None and not self.master.startswith(("local", "spark://", "yarn", "k8s://", "mesos://")):
            raise ValueError(f"master '{self.master}' is not a Spark master URL: use local[N], spark://host:7077, "
                             "yarn or k8s://...")
        if self.remote is not None and not self.remote.startswith("sc://"):
            from gristmill.compute.spark.session import without_token

            raise ValueError(f"remote '{without_token(self.remote)}' must be a Spark Connect URL such as "
                             "sc://host:15002")
        return self


class SmtpConfig(_Config):
    """The mail server that sends job notifications (feature sets' ``notification.emails``)."""

    host: str
    port: int = 25
    sender: str = "gristmill@localhost"
    starttls: bool = False
    username: str | None = None
    # the password: write a reference to the environment, "${SMTP_PASSWORD}", resolved when a mail is sent
    # (a literal password works but then sits in this file)
    password: str | None = None
    password_env: str | None = None      # older form: the name of the environment variable holding it


class NotificationsConfig(_Config):
    smtp: SmtpConfig | None = None
    timeout_seconds: float = 10.0        # per webhook call or mail delivery


class LimitsConfig(_Config):
    """Bounds on the work one request may ask for (docs/server.md, "Limits and hardening")."""

    #: the widest window one backfill may cover, in days (split wider ones into several backfills)
    backfill_max_span_days: int = Field(default=3660, ge=1)
    #: how many backfill jobs ``gristmill serve`` runs at once (the rest wait, Queued, in its worker pool)
    server_backfill_workers: int = Field(default=1, ge=1, le=64)
    #: the largest Parquet body ``POST /v1/offline/features`` reads, in bytes
    offline_request_max_bytes: int = Field(default=64 * 1024 * 1024, ge=1)
    #: the most observation rows one ``POST /v1/offline/features`` may send (from the Parquet footer)
    offline_request_max_rows: int = Field(default=1_000_000, ge=1)
    #: how many offline retrievals the server runs at once
    server_retrievals_at_once: int = Field(default=2, ge=1, le=64)
    #: how long a retrieval waits for a free slot before the server answers 503 with Retry-After
    server_retrieval_wait_seconds: float = Field(default=10.0, ge=0)
    #: DuckDB's memory limit for each query the server runs, when ``engine.memory_limit`` is not set
    server_engine_memory_limit: str = "2GB"
    #: the most observation columns one ``POST /v1/offline/features`` may send (from the Parquet footer)
    offline_request_max_columns: int = Field(default=1_000, ge=1)
    #: the largest body of every other request (JSON), in bytes
    request_max_bytes: int = Field(default=16 * 1024 * 1024, ge=1)
    #: the most keys (rows of ``entities``) one online lookup may ask for
    online_request_max_keys: int = Field(default=10_000, ge=1)
    #: how long the server waits for a request body to arrive in full
    request_body_seconds: float = Field(default=60.0, gt=0)


class StoreConfig(_Config):
    """The contents of ``featurestore.yaml``."""

    name: str = "default"
    registry: RegistryConfig = RegistryConfig()
    offline_store: OfflineStoreConfig = OfflineStoreConfig()
    online_store: OnlineStoreConfig = OnlineStoreConfig()
    engine: EngineConfig = EngineConfig()
    notifications: NotificationsConfig = NotificationsConfig()
    limits: LimitsConfig = LimitsConfig()
    # other feature stores a query may span: name -> store folder (relative to this one), used by feature
    # references like "risk/scores:1:score"
    peers: dict[str, str] = {}

    @classmethod
    def load(cls, folder: Path) -> StoreConfig:
        path = folder / CONFIG_FILE_NAME
        if not path.exists():
            raise ConfigError(f"{folder}: not a feature store (no {CONFIG_FILE_NAME}); create one with "
                              f"`gristmill init {folder}` or gm.FeatureStore.init(path)")
        return validate(cls, read_yaml(path), str(path))

    def dump(self, folder: Path) -> Path:
        path = folder / CONFIG_FILE_NAME
        write_yaml(path, self.model_dump(mode="json", by_alias=True, exclude_none=True))
        return path

    def registry_url(self, folder: Path) -> str:
        """The registry URL with a relative SQLite path resolved against the store folder."""
        url = self.registry.url
        prefix = "sqlite:///"
        if url.startswith(prefix) and not url[len(prefix):].startswith("/") and url != "sqlite:///:memory:":
            return prefix + str((folder / url[len(prefix):]).resolve())
        return url

    def offline_uri(self, folder: Path) -> str:
        uri = self.offline_store.uri
        return uri if "://" in uri else str((folder / uri).resolve())
