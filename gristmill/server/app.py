"""The REST server (``gristmill serve``): a thin HTTP door onto one ``FeatureStore`` (SPEC §4), with token
authentication and role checks on every route (SPEC §6).

Every route but ``/health`` needs ``Authorization: Bearer gm_...``. A route first authenticates the token
(401 when missing or invalid), then asks ``AccessRecords.check`` for its action on its resource (403, and
an audit log entry, when refused). Lists only show what the caller may read. Errors are JSON
``{"error": "..."}`` with the message a user can act on: 400 for a bad request, 404 for an unknown name or
route, 405 for a wrong method, 422 for a request that does not match its schema (naming the field); under
``/ui`` they are HTML pages instead. The OpenAPI document is at ``/openapi.json``, browsable at ``/docs``
(Swagger UI) and ``/redoc``, both served from files installed with Gristmill, so they work offline.
"""

from __future__ import annotations

import base64
import contextlib
import io
import logging
import os
from datetime import datetime
from typing import TYPE_CHECKING, Any

import pyarrow.parquet as pq
from fastapi import Depends, FastAPI, Query, Request
from fastapi.concurrency import run_in_threadpool
from fastapi.encoders import jsonable_encoder
from fastapi.exceptions import RequestValidationError
from fastapi.responses import HTMLResponse, JSONResponse, Response
from pydantic import BaseModel, Field, StrictBool
from starlette.exceptions import HTTPException

from gristmill.auth import AccessDeniedError, AccessRecords, Action, Resource
from gristmill.auth.roles import STORE
from gristmill.errors import ConfigError, GristmillError, NotFoundError, StoreUnavailableError, install_hint
from gristmill.server.inputs import FEATURE_REFERENCE, MAX_FEATURES, ListLimit, SampleRows, harden
from gristmill.server.limits import add_limits
from gristmill.server.online import ONLINE_PATH, OnlineLane, OnlineQuery, encode_answer, json_safe_floats
from gristmill.server.visibility import Visibility
from gristmill.spec.refs import FeatureRef, parse_name_and_version
from gristmill.spec.types import FeatureType

if TYPE_CHECKING:
    from gristmill.registry.materialization import JobRecord
    from gristmill.spec.featureset import FeatureSet
    from gristmill.store import FeatureStore

__all__ = ["ANONYMOUS", "SERVE_AUTH", "SERVE_STORE", "app_from_environment", "create_app"]

log = logging.getLogger("gristmill.server")

ANONYMOUS = "anonymous"          # the caller when the server runs without authentication
PARQUET = "application/vnd.apache.parquet"
#: where the Swagger UI and ReDoc files are served from (the copies the fastapi-offline package ships)
DOCS_ASSETS = "/docs-assets"
#: how long the server trusts what it read about a token or a principal's grants (revocations and new
#: grants take effect within this time)
CACHE_SECONDS = 5.0
#: the ``Retry-After`` of a 503 (a store that cannot be reached): seconds a client should wait before retrying
RETRY_AFTER_SECONDS = 5
#: feature lists of up to this many references, once a caller was allowed to read them, are parsed once and
#: remembered (up to CACHED_FEATURE_LISTS lists; then the memory starts over)
CACHED_FEATURE_LISTS_UP_TO = 100
CACHED_FEATURE_LISTS = 1_024


class OnlineRequest(BaseModel):
    """``features``: ``feature_set:version:feature`` names; ``entities``: one list of values per index
    column (extra columns pass through to the output)."""

    features: list[FEATURE_REFERENCE] = Field(min_length=1, max_length=MAX_FEATURES,
                                              examples=[["transactions:1:amount_7d_sum"]])
    entities: dict[str, list[Any]] = Field(examples=[{"account_id": ["A00001", "A00002"]}])
    full_feature_names: StrictBool = False
    now: datetime | None = Field(default=None, description="Answer as of this time (UTC when naive) instead of "
                                 "the server's clock; a key whose stored value is newer is refused (400).")
    explain: StrictBool = Field(default=False, description="Add `notes`: why keys got no value (expired, never "
                          "materialized, not in the store); one more store read per feature set with such keys.")


class OnlineAnswer(BaseModel):
    """``columns``: the observation columns as sent, then one list of values per feature (null for a key
    without a value; datetimes ISO 8601, binary base64, NaN and infinities as the strings ``"NaN"``,
    ``"Infinity"``, ``"-Infinity"``); ``types``: each feature column's type; ``notes`` when ``explain``."""

    columns: dict[str, list[Any]]
    types: dict[str, str]
    notes: list[str] | None = None


class BackfillRequest(BaseModel):
    start: datetime | None = None
    end: datetime | None = None
    data_status: list[str] | None = None
    stores: list[str] | None = Field(default=None, examples=[["offline", "online"]])
    allow_future: bool = Field(default=False, description="Allow a window that ends after now (it holds no data "
                               "yet); refused (400) otherwise.")


class _Denied(Exception):
    def __init__(self, status: int, message: str) -> None:
        self.status, self.message = status, message


#: environment variables naming the store and whether auth is on, for the processes of ``serve --workers N``
SERVE_STORE, SERVE_AUTH = "GRISTMILL_SERVE_STORE", "GRISTMILL_SERVE_AUTH"


def app_from_environment() -> FastAPI:
    """The app of one process of ``gristmill serve --workers N``: the store and auth setting from the
    environment the command set."""
    from gristmill.store import FeatureStore

    return served_app(FeatureStore(os.environ[SERVE_STORE]), auth=os.environ.get(SERVE_AUTH, "1") != "0")


def served_app(store: FeatureStore, *, auth: bool = True) -> FastAPI:
    """The app of a server process (``gristmill serve``): ``create_app``, then what the process holds at start
    (modules, the app, the store) is left out of Python's garbage collections from now on. A full collection
    walks every object: with all that loaded it paused the server for about 60 ms every second under load,
    which was the whole of the online route's p99 at 16 connections (3-4 ms after this)."""
    import gc

    app = create_app(store, auth=auth)
    gc.collect()
    gc.freeze()
    return app


class _App(FastAPI):
    """The server's app: online lookups go to its fast lane (``server/online.py``) before any of the
    framework's own layers; everything else, and what the lane hands back, to the framework."""

    online_lane: OnlineLane | None = None

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if self.online_lane is not None and scope["type"] == "http":
            await self.online_lane(scope, receive, send)
        else:
            await super().__call__(scope, receive, send)

    async def framework(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        """The framework's handling of a request (routes, middleware, exception handlers)."""
        await super().__call__(scope, receive, send)


def create_app(store: FeatureStore, *, auth: bool = True, fast_online: bool = True) -> FastAPI:
    """The HTTP app of ``store``. ``auth=False`` (local development only) lets every caller do everything
    as ``anonymous``. ``fast_online=False`` leaves online lookups to the framework's route (same answers,
    slower: for comparisons)."""
    access = AccessRecords(store.materializer.records, cache_seconds=CACHE_SECONDS)
    visible = Visibility(store, access, auth=auth)       # unreadable = missing; secrets to Owners only
    app = _App(title=f"Gristmill feature store {store.name}", version="1",
                  description="Online features, catalog, search and materialization jobs of one feature store.",
                  docs_url=None, redoc_url=None)
    _add_docs(app)
    harden(app)
    limits = add_limits(app, store)

    def principal_of(authorization: str) -> str:
        """The caller of an ``Authorization`` header (401 unless it holds a valid bearer token)."""
        if not auth:
            return ANONYMOUS
        token = authorization[7:].strip() if authorization.lower().startswith("bearer ") else None
        try:
            return access.authenticate(token)
        except AccessDeniedError as exc:
            raise _Denied(401, str(exc)) from None

    def caller(request: Request) -> str:
        return principal_of(request.headers.get("authorization", ""))

    def check(principal: str, action: Action, resource: Resource) -> None:
        if auth:
            try:
                access.check(principal, action, resource)
            except AccessDeniedError as exc:
                raise _Denied(403, str(exc)) from None

    def may(principal: str, action: Action, resource: Resource) -> bool:
        return not auth or access.allowed(principal, action, resource)

    def feature_set_resource(name: str, version: str) -> tuple[FeatureSet, Resource]:
        feature_set = store._cached_feature_set(name, version)   # entities never change within a version
        return feature_set, _resource(feature_set)

    @app.exception_handler(_Denied)
    def denied(request: Request, exc: _Denied) -> JSONResponse:
        headers = {"WWW-Authenticate": "Bearer"} if exc.status == 401 else None
        return JSONResponse({"error": exc.message}, status_code=exc.status, headers=headers)

    @app.exception_handler(GristmillError)
    def user_error(request: Request, exc: GristmillError) -> JSONResponse:
        return JSONResponse({"error": str(exc)}, status_code=404 if isinstance(exc, NotFoundError) else 400)

    @app.exception_handler(StoreUnavailableError)
    def unavailable(request: Request, exc: StoreUnavailableError) -> JSONResponse:
        """A store that cannot be reached is the server's trouble, not the caller's: 503, try again later."""
        retry = RETRY_AFTER_SECONDS if exc.retry_after is None else max(1, round(exc.retry_after))
        return JSONResponse({"error": str(exc)}, status_code=503, headers={"Retry-After": str(retry)})

    @app.exception_handler(RequestValidationError)
    def malformed(request: Request, exc: RequestValidationError) -> JSONResponse:
        return JSONResponse({"error": _validation_message(exc)}, status_code=422)

    @app.exception_handler(HTTPException)
    def http_error(request: Request, exc: HTTPException) -> Response:
        """Unknown routes (404) and wrong methods (405): JSON like every API error, a page under ``/ui``."""
        if exc.status_code == 404:
            message = f"no route {request.method} {request.url.path}; the routes are listed at /docs"
            if request.url.path == "/ui" or request.url.path.startswith("/ui/"):
                message = f"there is no page {request.url.path}"
        elif exc.status_code == 405:
            allowed = (exc.headers or {}).get("Allow") or (exc.headers or {}).get("allow") or "another method"
            message = f"{request.url.path} does not take {request.method}; use {allowed}"
        else:
            message = str(exc.detail)
        if request.url.path == "/ui" or request.url.path.startswith("/ui/"):
            return ui_error(request, exc.status_code, message)
        return JSONResponse({"error": message}, status_code=exc.status_code, headers=exc.headers)

    Caller = Depends(caller)

    @app.get("/health", tags=["server"])
    def health() -> dict[str, str]:
        return {"status": "ok", "store": store.name}

    @app.get("/v1/whoami", tags=["access"])
    def whoami(principal: str = Caller) -> dict[str, Any]:
        grants = [] if not auth else [{"role": g.role.value, "scope": str(g.scope)} for g in access.grants(principal)]
        return {"principal": principal, "grants": grants}

    @app.get("/v1/entities", tags=["catalog"])
    def entities(principal: str = Caller) -> list[dict[str, Any]]:
        return [e.to_dict() for e in store.list_entities()
                if may(principal, Action.READ_CATALOG, Resource("entity", e.name))]

    @app.get("/v1/feature-sets", tags=["catalog"])
    def feature_sets(principal: str = Caller) -> list[dict[str, Any]]:
        """The feature sets the caller may read; ``freshness`` is their freshness state (``/freshness``) for
        callers who may read their jobs, else null."""
        return [visible.shown(principal, fs, _summary(fs)) | {"freshness": freshness_state(principal, fs)}
                for fs in store.list_feature_sets() if may(principal, Action.READ_CATALOG, _resource(fs))]

    def freshness_state(principal: str, fs: FeatureSet) -> str | None:
        if not may(principal, Action.READ_JOBS, _resource(fs)):
            return None
        try:
            return store.freshness(fs.name, fs.version).state
        except GristmillError as exc:          # e.g. its spec folder gone: the list still answers
            log.warning("%s: freshness unknown: %s", fs.ref, exc)
            return None

    @app.get("/v1/feature-sets/{name}/{version}", tags=["catalog"])
    def feature_set(name: str, version: str, principal: str = Caller) -> dict[str, Any]:
        visible.feature_set(principal, name, version)
        fs = store.get_feature_set(name, version)            # fresh: description, tags, settings may change
        used_by = [m.ref for m in store.models_using(name, version) if visible.model_readable(principal, m)]
        return {**visible.shown(principal, fs, _summary(fs)), "used_by_models": used_by, "spec": fs.spec.to_dict()}

    @app.get("/v1/models", tags=["catalog"])
    def models(principal: str = Caller) -> list[dict[str, Any]]:
        return [m.to_dict() | {"ref": m.ref} for m in store.list_models() if visible.model_readable(principal, m)]

    @app.get("/v1/models/{name}/{version}", tags=["catalog"])
    def model(name: str, version: str, principal: str = Caller) -> dict[str, Any]:
        found = visible.model(principal, name, version)
        return found.to_dict() | {"ref": found.ref}

    @app.get("/v1/features/search", tags=["catalog"])
    def search(q: str = "", limit: ListLimit = 50, principal: str = Caller) -> list[dict[str, Any]]:
        found: list[dict[str, Any]] = []
        readable: dict[tuple[str, str], bool] = {}
        for info in store.search_features(q, limit=100_000):       # filter by access first, then cut to limit
            if len(found) >= limit:
                break
            key = (info.feature_set, info.version)
            if key not in readable:
                readable[key] = may(principal, Action.READ_CATALOG, feature_set_resource(*key)[1])
            if readable[key]:
                found.append({"feature": info.ref, "feature_set": f"{info.feature_set}:{info.version}",
                              "name": info.name, "type": info.type.value, "description": info.description,
                              "tags": info.tags})
        return found

    parsed_lists: dict[tuple[str, ...], tuple[tuple[str, str], ...]] = {}

    def may_read_features(principal: str, action: Action, features: list[str]) -> None:
        """Refuse references to another feature store's features, and features the caller may not read."""
        named = tuple(features)
        feature_sets = parsed_lists.get(named)
        if feature_sets is None:
            other, feature_sets = _feature_sets_named(named, store.name)
            if other is not None:
                raise GristmillError(f"features: '{other}' belongs to another feature store; this server serves "
                                     f"{store.name} only: ask that store's server")
        for name, version in feature_sets:
            check(principal, action, visible.feature_set(principal, name, version))
        if len(named) <= CACHED_FEATURE_LISTS_UP_TO and named not in parsed_lists:   # remembered once allowed
            if len(parsed_lists) >= CACHED_FEATURE_LISTS:
                parsed_lists.clear()
            parsed_lists[named] = feature_sets

    def online_answer(principal: str, query: OnlineQuery, *, now: datetime | None = None) -> bytes:
        """The online route's work, shared by its fast lane and the framework's route: the answer's JSON."""
        may_read_features(principal, Action.READ_ONLINE, query.features)
        limits.check_keys(query.entities)
        result = store.get_online_features(query.features, query.entities,
                                           full_feature_names=query.full_feature_names, now=now, explain=query.explain)
        types = result.types
        answer: dict[str, Any] = {"columns": {name: _json_values(values, types.get(name))
                                              for name, values in result.to_dict().items()},
                                  "types": {name: kind.value for name, kind in types.items()}}
        if query.explain:
            answer["notes"] = result.notes
        return encode_answer(answer)

    @app.post(ONLINE_PATH, tags=["online"], response_model=OnlineAnswer)
    def online_features(body: OnlineRequest, principal: str = Caller) -> Response:
        query = OnlineQuery(body.features, body.entities, full_feature_names=body.full_feature_names,
                            explain=body.explain)
        return Response(online_answer(principal, query, now=body.now), media_type="application/json")

    @app.post("/v1/offline/features", tags=["offline"],
              responses={200: {"content": {PARQUET: {}}, "description": "the training data as Parquet"}})
    async def offline_features(request: Request, features: str, timestamp_column: str,
                               full_feature_names: bool = False, as_known_at: bool = False,
                               aggregation_mode: str = "per_event", principal: str = Caller) -> Response:
        """Point-in-time training data: the body is the observations as Parquet, the answer Parquet too
        (``features`` comma-separated ``feature_set:version:feature``). Bounded: see docs/server.md, "Limits and
        hardening" (413 for a body or row count over the limit, 503 when too many retrievals run)."""
        names = [f.strip() for f in features.split(",") if f.strip()]

        # who may ask is checked, and the body read (bounded in size and time), before a retrieval slot is taken:
        # a slow or unauthorized upload never holds one
        await run_in_threadpool(may_read_features, principal, Action.READ_OFFLINE, names)
        body = await limits.read_body(request)
        limits.check_rows(body)

        def retrieve() -> bytes:
            try:
                observations = pq.read_table(io.BytesIO(body))
            except Exception as exc:
                raise GristmillError(f"the request body must be the observations as Parquet ({exc})") from None
            table = store.get_offline_features(names, observations, timestamp_column,
                                               full_feature_names=full_feature_names, as_known_at=as_known_at,
                                               aggregation_mode=aggregation_mode).to_arrow()
            out = io.BytesIO()
            pq.write_table(table, out)
            return out.getvalue()

        async with contextlib.asynccontextmanager(limits.retrieval_slot)():
            answer = await run_in_threadpool(retrieve)
        return Response(answer, media_type=PARQUET)

    @app.get("/v1/feature-sets/{name}/{version}/intervals", tags=["materialization"])
    def intervals(name: str, version: str, principal: str = Caller) -> dict[str, Any]:
        check(principal, Action.READ_JOBS, visible.feature_set(principal, name, version))
        return {kind: [{"start": i.start, "end": i.end, "status": i.status.value} for i in items]
                for kind, items in store.data_intervals(name, version).items()}

    @app.get("/v1/feature-sets/{name}/{version}/statistics", tags=["materialization"])
    async def statistics(name: str, version: str, store_kind: str = Query("offline", alias="store"),
                         start: str | None = None, end: str | None = None, sample_rows: SampleRows = None,
                         principal: str = Caller) -> dict[str, Any]:
        """Feature statistics: those materialization jobs recorded per window (``store``: offline or online)
        and their merged summary; computed from the source over ``[start, end)`` from at most
        ``sample_rows`` rows when given, or when nothing is recorded (that computation takes a retrieval
        slot, as training-data requests do)."""
        resource = await run_in_threadpool(visible.feature_set, principal, name, version)
        # min, max, top values and histograms show the data: readers of the store's data only
        check(principal, Action.READ_ONLINE if store_kind == "online" else Action.READ_OFFLINE, resource)

        def compute(recorded_only: bool) -> dict[str, Any] | None:
            found = store.feature_statistics(name, version, store=store_kind, start=start, end=end,
                                             sample_rows=sample_rows, recorded_only=recorded_only)
            return jsonable_encoder(found.to_dict()) if found.windows or not recorded_only else None

        if sample_rows is None:                 # recorded statistics are a registry read: no retrieval slot
            recorded = await run_in_threadpool(compute, True)
            if recorded is not None:
                return recorded
        async with contextlib.asynccontextmanager(limits.retrieval_slot)():
            return await run_in_threadpool(compute, False) or {}

    @app.get("/v1/feature-sets/{name}/{version}/freshness", tags=["materialization"])
    def freshness(name: str, version: str, principal: str = Caller) -> dict[str, Any]:
        """How current each store's data is: fresh, stale, never materialized, not scheduled or disabled."""
        check(principal, Action.READ_JOBS, visible.feature_set(principal, name, version))
        return store.freshness(name, version).to_dict()

    @app.post("/v1/feature-sets/{name}/{version}/backfill", tags=["materialization"], status_code=202)
    def backfill(name: str, version: str, body: BackfillRequest, principal: str = Caller) -> list[dict[str, Any]]:
        """Queue the jobs of a backfill and answer at once (202) with them, Queued: the server's backfill
        workers run them (follow them at ``/v1/jobs/{id}``)."""
        resource = visible.feature_set(principal, name, version)
        check(principal, Action.MATERIALIZE, resource)
        access.audit(principal, Action.MATERIALIZE.value, str(resource), allowed=True,
                     detail=f"backfill [{body.start}, {body.end})")
        jobs = limits.backfills.submit(feature_set_resource(name, version)[0], start=body.start, end=body.end,
                                       data_status=body.data_status, stores=body.stores,
                                       allow_future=body.allow_future)
        return [_job(j) for j in jobs]

    @app.get("/v1/jobs", tags=["materialization"])
    def jobs(feature_set: str | None = None, status: str | None = None, limit: ListLimit = 100,
             principal: str = Caller) -> list[dict[str, Any]]:
        name, version = (parse_name_and_version(feature_set, what="feature_set", example="transactions:1")
                         if feature_set else (None, None))
        return [_job(j) for j in visible.jobs(principal, feature_set=name, version=version,
                                              status=status, limit=limit)]     # filtered, then cut

    @app.get("/v1/jobs/{job_id}", tags=["materialization"])
    def job(job_id: str, principal: str = Caller) -> dict[str, Any]:
        record, resource = visible.job(principal, job_id)
        check(principal, Action.READ_JOBS, resource)
        return _job(record)

    @app.post("/v1/jobs/{job_id}/cancel", tags=["materialization"])
    def cancel(job_id: str, principal: str = Caller) -> dict[str, Any]:
        resource = visible.job(principal, job_id)[1]
        check(principal, Action.MATERIALIZE, resource)
        access.audit(principal, "job.cancel", str(resource), allowed=True, detail=f"job {job_id}")
        return _job(store.cancel_job(job_id, f"cancelled by {principal}"))

    @app.get("/v1/audit", tags=["access"])
    def audit(limit: ListLimit = 100, denied_only: bool = False, principal: str = Caller) -> list[dict[str, Any]]:
        check(principal, Action.READ_AUDIT, STORE)
        return [{"at": e.at, "principal": e.principal, "action": e.action, "resource": e.resource,
                 "allowed": e.allowed, "count": e.count, "detail": e.detail}
                for e in access.audit_entries(limit=limit, denied_only=denied_only)]

    from gristmill.server.ui import add_ui

    ui_error = add_ui(app, store, access, auth=auth, may=may, anonymous=ANONYMOUS, visible=visible)
    if fast_online:
        # lookups run on the event loop when the online store can wait for its replies there (Redis)
        online_store = store.online_store
        on_loop = getattr(online_store, "loop_reads", False)
        app.online_lane = OnlineLane(app.framework, principal=principal_of, answer=online_answer,
                                     most_bytes=store.config.limits.request_max_bytes,
                                     handlers=app.exception_handlers, on_loop=on_loop)
        if on_loop:
            app.router.on_shutdown.append(online_store.close_loop_channels)
    return app


def _add_docs(app: FastAPI) -> None:
    """``/docs`` (Swagger UI) and ``/redoc`` with their scripts and styles served by this server, not a CDN."""
    from importlib.resources import files

    from fastapi.openapi.docs import get_redoc_html, get_swagger_ui_html, get_swagger_ui_oauth2_redirect_html
    from fastapi.staticfiles import StaticFiles

    try:
        assets = files("fastapi_offline") / "static"
    except ModuleNotFoundError:
        raise ConfigError(f"the server's API docs need the fastapi-offline package: {install_hint('server')}") from None
    app.mount(DOCS_ASSETS, StaticFiles(directory=str(assets)), name="docs-assets")
    title = f"{app.title} · API"

    @app.get("/docs", include_in_schema=False)
    def swagger_ui(request: Request) -> HTMLResponse:
        root = request.scope.get("root_path", "")
        return get_swagger_ui_html(openapi_url=f"{root}{app.openapi_url}", title=title,
                                   swagger_js_url=f"{root}{DOCS_ASSETS}/swagger-ui-bundle.js",
                                   swagger_css_url=f"{root}{DOCS_ASSETS}/swagger-ui.css",
                                   swagger_favicon_url=f"{root}{DOCS_ASSETS}/favicon.png",
                                   oauth2_redirect_url=f"{root}{app.swagger_ui_oauth2_redirect_url}")

    @app.get(app.swagger_ui_oauth2_redirect_url or "/docs/oauth2-redirect", include_in_schema=False)
    def swagger_ui_redirect() -> HTMLResponse:
        return get_swagger_ui_oauth2_redirect_html()

    @app.get("/redoc", include_in_schema=False)
    def redoc(request: Request) -> HTMLResponse:
        root = request.scope.get("root_path", "")
        return get_redoc_html(openapi_url=f"{root}{app.openapi_url}", title=title,
                              redoc_js_url=f"{root}{DOCS_ASSETS}/redoc.standalone.js",
                              redoc_favicon_url=f"{root}{DOCS_ASSETS}/favicon.png", with_google_fonts=False)


def _validation_message(exc: RequestValidationError) -> str:
    """FastAPI's validation errors as one line naming each field: ``features: List should have at least 1
    item after validation, not 0``."""
    problems = []
    for error in exc.errors():
        where, *path = error.get("loc", ()) or ("body",)
        if where == "body" and (not path or error.get("type") == "json_invalid"):
            field = "request body"
        else:
            field = ".".join(str(part) for part in path) or str(where)
            if where in ("query", "path", "header", "cookie"):
                field = f"{field} ({where} parameter)"
        problems.append(f"{field}: {error.get('msg', 'invalid')}")
    return "; ".join(problems) or "the request does not match the API (see /docs)"


def _feature_sets_named(features: tuple[str, ...], home: str) -> tuple[str | None, tuple[tuple[str, str], ...]]:
    """(the first reference to a store other than ``home``, the feature sets named) of a feature list; invalid
    references raise as ``FeatureRef.parse`` does."""
    refs = [FeatureRef.parse(f) for f in features]
    other = next((ref.text for ref in refs if ref.store not in (None, home)), None)
    return other, tuple(dict.fromkeys((ref.feature_set, ref.version) for ref in refs))


def _json_values(values: list[Any], kind: FeatureType | None) -> list[Any]:
    """Feature values as JSON: datetimes ISO 8601, binary base64, NaN and infinities as strings (``types``
    tells a client which); observation columns pass through as the request sent them."""
    if kind is None:
        return values
    if kind == FeatureType.BINARY:
        return [None if v is None else base64.b64encode(v).decode() for v in values]
    if kind in (FeatureType.DOUBLE, FeatureType.FLOAT):
        return json_safe_floats(values)
    if kind == FeatureType.FLOAT_VECTOR:
        return [None if v is None else json_safe_floats(list(v)) for v in values]
    return values


def _entity_names(feature_set: FeatureSet) -> list[str]:
    return [ref.name for ref in feature_set.entity_refs]


def _resource(feature_set: FeatureSet) -> Resource:
    return Resource("featureset", feature_set.name, feature_set.version, tuple(_entity_names(feature_set)))


def _summary(feature_set: FeatureSet) -> dict[str, Any]:
    return jsonable_encoder(feature_set.to_dict() | {"ref": feature_set.ref})


def _job(job: JobRecord) -> dict[str, Any]:
    return jsonable_encoder({"id": job.id, "feature_set": job.ref, "start": job.start, "end": job.end,
                             "stores": list(job.stores), "status": job.status.value, "created_at": job.created_at,
                             "started_at": job.started_at, "finished_at": job.finished_at,
                             "rows_read": job.rows_read, "rows_written": job.rows_written,
                             "bytes_written": job.bytes_written, "cpu_seconds": job.cpu_seconds,
                             "error": job.error, "online": None if job.online is None else {
                                 "keys_written": job.online.keys_written, "keys_expired": job.online.keys_expired,
                                 "newest_event_time": job.online.newest_event_time,
                                 "expires_at": job.online.expires_at}})

