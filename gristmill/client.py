"""A feature store reached through its REST server (``gristmill serve``), with ``FeatureStore``'s method
names and results (SPEC §4: "opened embedded on a local folder or connected to a server").

>>> store = gm.FeatureStore.connect("http://features.internal:8080", token="gm_...")   # doctest: +SKIP
>>> store.get_online_features(["transactions:1:amount_7d_sum"], {"account_id": ["A1"]}).to_dict()  # doctest: +SKIP

What the server offers works the same as on a local store: online lookups, point-in-time training data
(observations and result travel as Parquet), the catalog (feature sets, entities, models and lineage),
search, data intervals, jobs, backfill and cancelling jobs. Anything else (applying YAML, preview)
raises an error that says to open the store's folder instead. Server refusals come back as the same
errors a local store raises: ``AccessDeniedError`` (401/403), ``NotFoundError`` (404),
``StoreUnavailableError`` (503, and a server that cannot be reached: retry later) and ``GristmillError``
(400, a bad request), with the server's message.
"""

from __future__ import annotations

import base64
import http.client
import io
import math
import threading
import urllib.parse
import urllib.request
from datetime import datetime
from typing import Any

from gristmill.auth.roles import AccessDeniedError
from gristmill.errors import GristmillError, NotFoundError, StoreUnavailableError, install_hint
from gristmill.spec.refs import VersionRef

__all__ = ["RemoteFeatureStore"]


class RemoteFeatureStore:
    """``FeatureStore`` methods over HTTP; see the module docstring."""

    def __init__(self, url: str, *, token: str | None = None, timeout: float = 30.0) -> None:
        try:
            import httpx
        except ImportError:
            raise ImportError(f"connecting to a server needs httpx: {install_hint('server')}") from None
        self.url = url.rstrip("/")
        headers = {"Authorization": f"Bearer {token}"} if token else {}
        self._http = httpx.Client(base_url=self.url, headers=headers, timeout=timeout)
        self._transport_errors = (httpx.TransportError,)
        self._name: str | None = None
        self._lookups = _KeepAlive(self.url, headers=headers, timeout=timeout)

    # -- the store --------------------------------------------------------------------------------------
    @property
    def name(self) -> str:
        if self._name is None:
            self._name = str(self._call("GET", "/health")["store"])
        return self._name

    def whoami(self) -> dict[str, Any]:
        """The principal of this client's token and its grants."""
        return dict(self._call("GET", "/v1/whoami"))

    def close(self) -> None:
        self._http.close()
        self._lookups.close()

    def __enter__(self) -> RemoteFeatureStore:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"RemoteFeatureStore({self.url!r})"

    def __getattr__(self, name: str) -> Any:
        if name.startswith("_"):
            raise AttributeError(name)
        raise GristmillError(f"FeatureStore.{name} is not available through the server ({self.url}); open the "
                             "store's folder for it: gm.FeatureStore(path)")

    # -- online -----------------------------------------------------------------------------------------
    def get_online_features(self, features: Any, observations: Any, *, full_feature_names: bool = False,
                            now: datetime | str | None = None, explain: bool = False) -> Any:
        """The latest feature values for the keys in ``observations``, as ``FeatureStore.get_online_features``
        (``now``: as of that time; ``explain``: notes on keys without a value)."""
        import orjson

        from gristmill.serving import OnlineResult, observation_columns
        from gristmill.spec.types import FeatureType

        body: dict[str, Any] = {"features": [features] if isinstance(features, str) else list(features),
                                "entities": observation_columns(observations), "full_feature_names": full_feature_names}
        if now is not None:
            body["now"] = _iso(now)
        if explain:
            body["explain"] = True
        content = orjson.dumps(body, default=_json_default, option=orjson.OPT_SERIALIZE_NUMPY)
        if self._lookups.usable:
            try:
                status, reply, retry_after = self._lookups.post("/v1/online/features", content)
            except (OSError, http.client.HTTPException) as exc:
                reason = str(exc) or type(exc).__name__
                raise StoreUnavailableError(f"cannot reach the feature store server at {self.url}: {reason}; is "
                                            "`gristmill serve` running there?") from exc
            if status >= 400:
                self._refused(status, reply, retry_after)
            answer = orjson.loads(reply)
        else:                                       # through a proxy: httpx knows how
            answer = self._call("POST", "/v1/online/features", content=content,
                                headers={"Content-Type": "application/json"})
        types = {name: FeatureType(kind) for name, kind in answer.get("types", {}).items()}
        columns = {name: _decoded(values, types.get(name)) for name, values in answer["columns"].items()}
        return OnlineResult(columns, types, notes=answer.get("notes"))

    # -- offline ----------------------------------------------------------------------------------------
    def get_offline_features(self, features: Any, observations: Any, timestamp_column: str, *,
                             full_feature_names: bool = False, as_known_at: bool = False,
                             aggregation_mode: str = "per_event") -> Any:
        """Point-in-time training data computed by the server, as ``FeatureStore.get_offline_features``: the
        observations travel as Parquet, and the result converts to pandas, Arrow, Polars and Parquet."""
        import pyarrow.parquet as pq

        from gristmill.compute.duckdb.engine import read_observations
        from gristmill.compute.result import RetrievalResult
        from gristmill.retrieval import references

        refs = references(features)
        renamed = [ref.text for ref in refs if ref.output_name]
        if renamed:
            raise GristmillError(f"features: {renamed[0]} has an output_name; renaming is not sent to the server "
                                 "yet: rename the result's columns instead")
        names = ",".join(ref.text for ref in refs)
        # the observations read exactly as a local store reads them (files too)
        given, table = read_observations(observations, text_columns={timestamp_column})
        columns = table.column_names
        body = io.BytesIO()
        pq.write_table(table, body)
        answer = self._call("POST", "/v1/offline/features", content=body.getvalue(), raw=True,
                            headers={"Content-Type": "application/vnd.apache.parquet"},
                            params={"features": names, "timestamp_column": timestamp_column,
                                    "full_feature_names": full_feature_names, "as_known_at": as_known_at,
                                    "aggregation_mode": aggregation_mode})
        received = pq.read_table(io.BytesIO(answer))
        # observations given in memory come back as given, as from a local store: only features are taken
        shown = received.select(received.column_names[len(columns):]) if given is not None else received
        return RetrievalResult.from_arrow(shown, observations=given, frame=observations, observation_columns=columns,
                                          description=f"training data from {self.url}")

    # -- catalog ----------------------------------------------------------------------------------------
    def list_feature_sets(self) -> list[Any]:
        from gristmill.spec.featureset import FeatureSet

        return [FeatureSet.model_validate(_asset(item)) for item in self._call("GET", "/v1/feature-sets")]

    def get_feature_set(self, name: str, version: str | int) -> Any:
        from gristmill.spec.featureset import FeatureSet
        from gristmill.spec.featureset_spec import FeatureSetSpec

        item = self._call("GET", f"/v1/feature-sets/{_q(name)}/{_q(version)}")
        spec = FeatureSetSpec.from_dict(item["spec"], source_name=f"specification of {name}:{version} "
                                                                           f"from {self.url}")
        return FeatureSet.model_validate(_asset(item)).with_spec(spec)

    def list_entities(self) -> list[Any]:
        from gristmill.spec.entity import Entity

        return [Entity.model_validate(item) for item in self._call("GET", "/v1/entities")]

    def search_features(self, query: str, *, limit: int = 100) -> list[Any]:
        from gristmill.registry.registry import FeatureInfo
        from gristmill.spec.types import FeatureType

        found = self._call("GET", "/v1/features/search", params={"q": query, "limit": limit})
        infos = []
        for f in found:
            name, version = VersionRef.parse(f["feature_set"])
            infos.append(FeatureInfo(feature_set=name, version=version, name=f["name"], type=FeatureType(f["type"]),
                                     description=f["description"], tags=f["tags"]))
        return infos

    def list_models(self) -> list[Any]:
        from gristmill.spec.model import Model

        return [Model.model_validate({k: v for k, v in m.items() if k != "ref"})
                for m in self._call("GET", "/v1/models")]

    def get_model(self, name: str, version: str | int) -> Any:
        from gristmill.spec.model import Model

        item = self._call("GET", f"/v1/models/{_q(name)}/{_q(version)}")
        return Model.model_validate({k: v for k, v in item.items() if k != "ref"})

    def models_using(self, feature_set: str, version: str | int | None = None) -> list[Any]:
        """Lineage: the models that use ``feature_set`` (any version, or ``version``)."""
        versions = [str(version)] if version is not None else [
            fs.version for fs in self.list_feature_sets() if fs.name == feature_set]
        refs = sorted({ref for v in versions
                       for ref in self._call("GET", f"/v1/feature-sets/{_q(feature_set)}/{_q(v)}")["used_by_models"]})
        return [self.get_model(*VersionRef.parse(ref)) for ref in refs]

    # -- materialization --------------------------------------------------------------------------------
    def data_intervals(self, name: str, version: str | int) -> dict[str, list[Any]]:
        from gristmill.jobs.intervals import DataInterval

        answer = self._call("GET", f"/v1/feature-sets/{_q(name)}/{_q(version)}/intervals")
        return {kind: [DataInterval(datetime.fromisoformat(i["start"]), datetime.fromisoformat(i["end"]),
                                    i["status"]) for i in items] for kind, items in answer.items()}

    def feature_statistics(self, name: str, version: str | int, *, store: str = "offline", start: Any = None,
                           end: Any = None, sample_rows: int | None = None) -> Any:
        """``FeatureStore.feature_statistics`` on the server (the same ``FeatureSetStatistics``)."""
        from gristmill.compute.statistics import FeatureSetStatistics

        params = {k: _param(v) for k, v in {"store": store, "start": start, "end": end,
                                            "sample_rows": sample_rows}.items() if v is not None}
        answer = self._call("GET", f"/v1/feature-sets/{_q(name)}/{_q(version)}/statistics", params=params)
        return FeatureSetStatistics.from_dict(answer)

    def freshness(self, name: str, version: str | int) -> Any:
        """``FeatureStore.freshness`` on the server (the same ``Freshness``)."""
        from gristmill.jobs.freshness import Freshness

        return Freshness.from_dict(self._call("GET", f"/v1/feature-sets/{_q(name)}/{_q(version)}/freshness"))

    def backfill(self, name: str, version: str | int, *, start: Any = None, end: Any = None,
                 data_status: list[str] | None = None, stores: list[str] | None = None,
                 allow_future: bool = False, wait: bool = True, timeout: float | None = 3600.0,
                 poll_seconds: float = 1.0) -> list[Any]:
        """Run a backfill on the server: it queues the jobs and its backfill workers run them.

        With ``wait`` (the default, as on a local store) the call returns when every job has ended
        (Completed, Failed or Cancelled), polling each job every ``poll_seconds``; after ``timeout`` seconds
        (``None``: no limit) it raises ``GristmillError`` naming the jobs still running (they go on: follow
        them with ``get_job``). With ``wait=False`` it returns the Queued jobs at once."""
        import time

        body = {"start": _iso(start), "end": _iso(end), "data_status": data_status, "stores": stores,
                "allow_future": allow_future}
        path = f"/v1/feature-sets/{_q(name)}/{_q(version)}/backfill"
        jobs = [_job(item) for item in self._call("POST", path, json=body)]
        deadline = None if timeout is None else time.monotonic() + timeout
        while wait:
            jobs = [job if job.status.finished else self.get_job(job.id) for job in jobs]
            running = [job.id for job in jobs if not job.status.finished]
            if not running:
                break
            if deadline is not None and time.monotonic() >= deadline:
                raise GristmillError(f"backfill of {name}:{version}: job(s) {', '.join(running)} still queued or "
                                     f"running after {timeout:g} s; they go on on the server: follow them with "
                                     "get_job(id), or pass a longer timeout")
            time.sleep(poll_seconds)
        return jobs

    def list_jobs(self, *, feature_set: str | None = None, version: str | int | None = None,
                  status: str | None = None, limit: int = 100) -> list[Any]:
        ref = f"{feature_set}:{version}" if feature_set and version is not None else feature_set
        params = {k: v for k, v in {"feature_set": ref, "status": status, "limit": limit}.items() if v is not None}
        return [_job(item) for item in self._call("GET", "/v1/jobs", params=params)]

    def get_job(self, job_id: str) -> Any:
        return _job(self._call("GET", f"/v1/jobs/{_q(job_id)}"))

    def cancel_job(self, job_id: str) -> Any:
        return _job(self._call("POST", f"/v1/jobs/{_q(job_id)}/cancel"))

    # -- HTTP -------------------------------------------------------------------------------------------
    def _call(self, method: str, path: str, *, raw: bool = False, **kwargs: Any) -> Any:
        try:
            response = self._http.request(method, path, **kwargs)
        except self._transport_errors as exc:
            raise StoreUnavailableError(f"cannot reach the feature store server at {self.url}: {exc}; is "
                                        "`gristmill serve` running there?") from exc
        if response.status_code < 400:
            return response.content if raw else response.json()
        self._refused(response.status_code, response.content, response.headers.get("retry-after", ""))

    def _refused(self, status: int, body: bytes, retry_after: str) -> None:
        """Raise the error a local store raises for the server's refusal ``status`` with ``body``."""
        import json

        text = body.decode("utf-8", "replace")
        try:
            message = json.loads(text).get("error") or text
        except (ValueError, AttributeError):
            message = text
        if status == 422:
            message = f"the server refused the request as malformed: {message}"
        if status == 503:
            raise StoreUnavailableError(f"{message} (HTTP 503 from {self.url}; retry later)",
                                        retry_after=float(retry_after) if retry_after.isdigit() else None)
        error = {401: AccessDeniedError, 403: AccessDeniedError, 404: NotFoundError}.get(status, GristmillError)
        raise error(f"{message} (HTTP {status} from {self.url})")


class _KeepAlive:
    """Online lookups over one HTTP/1.1 keep-alive connection per thread (``http.client``: a tenth of a
    general client's overhead per request). A connection the server closed while idle is reopened once and
    the lookup, a read, sent again. Not used when a proxy applies to the URL (``usable`` is False)."""

    def __init__(self, url: str, *, headers: dict[str, str], timeout: float) -> None:
        parts = urllib.parse.urlsplit(url)
        self.https = parts.scheme == "https"
        self.host, self.port = parts.hostname or "localhost", parts.port
        self.prefix = parts.path.rstrip("/")
        self.headers = {**headers, "Content-Type": "application/json", "Accept": "application/json"}
        self.timeout = timeout
        proxies = urllib.request.getproxies()                     # HTTP(S)_PROXY, ALL_PROXY, NO_PROXY
        proxied = (parts.scheme in proxies or "all" in proxies) and not urllib.request.proxy_bypass(parts.netloc)
        self.usable = parts.scheme in ("http", "https") and not proxied
        self._local = threading.local()

    def post(self, path: str, body: bytes) -> tuple[int, bytes, str]:
        """(status, body, Retry-After) of ``POST path``."""
        for attempt in (0, 1):
            connection: http.client.HTTPConnection | None = getattr(self._local, "connection", None)
            fresh = connection is None
            if connection is None:
                connection = self._local.connection = self._connect()
            try:
                connection.request("POST", self.prefix + path, body=body, headers=self.headers)
                response = connection.getresponse()
                data = response.read()
            except (http.client.RemoteDisconnected, ConnectionResetError, BrokenPipeError,
                    http.client.CannotSendRequest, http.client.ResponseNotReady):
                connection.close()
                self._local.connection = None
                if fresh or attempt:
                    raise
                continue
            except BaseException:
                connection.close()
                self._local.connection = None
                raise
            if response.will_close:
                connection.close()
                self._local.connection = None
            return response.status, data, response.getheader("retry-after", "")
        raise AssertionError("unreachable")

    def close(self) -> None:
        """Close this thread's connection (other threads' close when they are collected)."""
        connection = getattr(self._local, "connection", None)
        if connection is not None:
            connection.close()
            self._local.connection = None

    def _connect(self) -> http.client.HTTPConnection:
        if self.https:
            return http.client.HTTPSConnection(self.host, self.port, timeout=self.timeout, context=_tls_context())
        return http.client.HTTPConnection(self.host, self.port, timeout=self.timeout)


def _tls_context() -> Any:
    """The certificates httpx trusts (``SSL_CERT_FILE``/``SSL_CERT_DIR``, else certifi's), so online lookups
    and the other calls accept the same servers."""
    import os
    import ssl

    cafile, capath = os.environ.get("SSL_CERT_FILE"), os.environ.get("SSL_CERT_DIR")
    if not cafile and not capath:
        import certifi

        cafile = certifi.where()
    return ssl.create_default_context(cafile=cafile, capath=capath)


def _json_default(value: Any) -> Any:
    """Observation values orjson does not write itself (pandas timestamps, decimals, ...), as the rest of the
    API's JSON writes them."""
    from fastapi.encoders import jsonable_encoder

    encoded = jsonable_encoder(value)
    if encoded is value:
        raise TypeError(f"observations: a value of type {type(value).__name__} cannot be sent as JSON")
    return encoded


def _q(part: Any) -> str:
    """One URL path segment."""
    from urllib.parse import quote

    return quote(str(part), safe="")


def _asset(item: dict[str, Any]) -> dict[str, Any]:
    """The asset fields of a feature set as the server lists it (without its ``ref``, ``spec`` and what the
    server adds: models using it, its freshness state)."""
    return {k: v for k, v in item.items() if k not in ("ref", "spec", "used_by_models", "freshness")}


def _decoded(values: list[Any], kind: Any) -> list[Any]:
    from gristmill.spec.types import FeatureType

    if kind == FeatureType.DATETIME:
        return [None if v is None else datetime.fromisoformat(v) for v in values]
    if kind == FeatureType.BINARY:
        return [None if v is None else base64.b64decode(v) for v in values]
    if kind in (FeatureType.DOUBLE, FeatureType.FLOAT):
        return _floats(values)
    if kind == FeatureType.FLOAT_VECTOR:
        return [None if v is None else _floats(v) for v in values]
    return values


_NOT_FINITE = {"NaN": math.nan, "Infinity": math.inf, "-Infinity": -math.inf}


def _floats(values: list[Any]) -> list[Any]:
    """NaN and infinities come as strings (JSON has no such numbers): back to floats."""
    if not any(type(v) is str for v in values):
        return values
    return [_NOT_FINITE.get(v, v) if type(v) is str else v for v in values]


def _iso(value: Any) -> str | None:
    if value is None:
        return None
    return value.isoformat() if isinstance(value, datetime) else str(value)


def _job(item: dict[str, Any]) -> Any:
    from gristmill.registry.materialization import JobRecord, JobStatus, OnlineOutcome

    def when(value: str | None) -> datetime | None:
        return datetime.fromisoformat(value) if value else None

    online = item.get("online")

    name, version = VersionRef.parse(item["feature_set"])
    return JobRecord(id=item["id"], feature_set=name, version=version, start=datetime.fromisoformat(item["start"]),
                     end=datetime.fromisoformat(item["end"]), stores=tuple(item["stores"]),
                     status=JobStatus(item["status"]), created_at=when(item["created_at"]),  # type: ignore[arg-type]
                     started_at=when(item["started_at"]), finished_at=when(item["finished_at"]),
                     rows_read=item["rows_read"], rows_written=item["rows_written"],
                     bytes_written=item["bytes_written"], cpu_seconds=item["cpu_seconds"], error=item["error"],
                     online=None if online is None else OnlineOutcome(
                         keys_written=online["keys_written"], keys_expired=online["keys_expired"],
                         newest_event_time=when(online["newest_event_time"]), expires_at=when(online["expires_at"])))


def _param(value: Any) -> Any:
    """A query parameter's text (datetimes as ISO)."""
    return value.isoformat() if isinstance(value, datetime) else value
