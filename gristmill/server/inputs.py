"""What the server accepts and how its OpenAPI document describes it: bounded URLs and list limits, the
``{"error": ...}`` body of every refusal, the bearer-token security scheme and the Parquet body of the
offline route (so generated clients and schemathesis see the API as it answers)."""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable
from typing import Annotated, Any

from fastapi import FastAPI, Query, Request
from fastapi.responses import JSONResponse, Response
from pydantic import Field
from starlette.requests import ClientDisconnect

from gristmill.spec.common import MAX_NAME_LENGTH, MAX_VERSION_LENGTH

__all__ = ["FEATURE_REFERENCE", "MAX_FEATURES", "MAX_LIST_LIMIT", "MAX_SAMPLE_ROWS", "MAX_URL_LENGTH", "ListLimit",
           "SampleRows", "harden"]

#: the longest request URL (path and query) the server reads; longer ones are answered 414
MAX_URL_LENGTH = 8_192
#: the most items a list route (jobs, audit, search) returns at once
MAX_LIST_LIMIT = 10_000
#: the most features one online request may name
MAX_FEATURES = 1_000
#: the longest ``[store/]feature_set:version:feature`` reference
MAX_REFERENCE_LENGTH = 3 * MAX_NAME_LENGTH + MAX_VERSION_LENGTH + 3

ListLimit = Annotated[int, Query(ge=1, le=MAX_LIST_LIMIT, description=f"at most {MAX_LIST_LIMIT:,} items")]
#: the most source rows one on-demand statistics request may read
MAX_SAMPLE_ROWS = 1_000_000
SampleRows = Annotated[int | None, Query(ge=1, le=MAX_SAMPLE_ROWS,
                                         description=f"compute from the source, from at most this many rows "
                                                     f"(at most {MAX_SAMPLE_ROWS:,})")]
FEATURE_REFERENCE = Annotated[str, Field(min_length=1, max_length=MAX_REFERENCE_LENGTH)]

PARQUET = "application/vnd.apache.parquet"
ERROR_SCHEMA: dict[str, Any] = {
    "title": "Error", "type": "object", "required": ["error"], "additionalProperties": False,
    "properties": {"error": {"type": "string", "description": "what was wrong and how to fix it"}},
}
#: the refusals every authenticated route may answer, with what they mean
ERRORS: dict[str, str] = {
    "400": "Bad request: the message names the parameter or field and the fix",
    "401": "Missing, invalid, expired or revoked token",
    "403": "The token's principal has no role that allows this action on this resource",
    "404": "Unknown (or unreadable) feature set, version, entity, model or job",
    "422": "The request does not match its schema (the message names the field)",
    "503": "A store (e.g. the Redis online store) cannot be reached; retry after `Retry-After` seconds",
}
BODY_ERRORS: dict[str, str] = {"413": "The request body or its rows exceed the server's limits"}
BEARER = "bearer"


log = logging.getLogger("gristmill.server")


def harden(app: FastAPI) -> None:
    """Refuse over-long URLs (414) and describe errors, security and bodies in the OpenAPI document."""

    @app.middleware("http")
    async def bounded_url(request: Request, call_next: Callable[[Request], Awaitable[Response]]) -> Response:
        length = len(request.url.path) + len(request.url.query)
        if length > MAX_URL_LENGTH:
            return JSONResponse({"error": f"the URL has {length:,} characters, more than the limit of "
                                          f"{MAX_URL_LENGTH:,}; names are at most {MAX_NAME_LENGTH} characters"},
                                status_code=414)
        return await call_next(request)

    @app.exception_handler(UnicodeError)
    def unpaired_surrogate(request: Request, exc: UnicodeError) -> JSONResponse:
        # JSON may carry "\ud800" (a lone surrogate), which no store can encode: the request's text is invalid
        return JSONResponse({"error": "the request holds text that is not valid Unicode (an unpaired surrogate such "
                                      "as \\ud800); send valid UTF-8 text"}, status_code=400)

    @app.exception_handler(ClientDisconnect)
    def client_left(request: Request, exc: ClientDisconnect) -> Response:
        log.debug("%s %s: the client disconnected before its body arrived", request.method, request.url.path)
        return Response(status_code=400)          # nobody reads it; without a handler it is logged as an error

    generate = app.openapi

    def openapi() -> dict[str, Any]:
        if app.openapi_schema:
            return app.openapi_schema
        document = generate()
        _describe(document)
        app.openapi_schema = document
        return document

    app.openapi = openapi  # type: ignore[method-assign]


def _describe(document: dict[str, Any]) -> None:
    components = document.setdefault("components", {})
    components.setdefault("schemas", {})["Error"] = ERROR_SCHEMA
    components.setdefault("securitySchemes", {})[BEARER] = {
        "type": "http", "scheme": "bearer",
        "description": "A token made with `gristmill access token` (Authorization: Bearer gm_...)"}
    error = {"application/json": {"schema": {"$ref": "#/components/schemas/Error"}}}
    for path, item in document.get("paths", {}).items():
        for method, operation in item.items():
            if path == "/health":
                operation["security"] = []
                continue
            operation["security"] = [{BEARER: []}]
            responses = operation.setdefault("responses", {})
            codes = {**ERRORS, **(BODY_ERRORS if method in ("post", "put", "patch") else {})}
            for code, description in codes.items():
                responses[code] = {"description": description, "content": error}
            responses["503"]["headers"] = {"Retry-After": {"description": "seconds to wait before retrying",
                                                           "schema": {"type": "integer"}}}
    offline = document.get("paths", {}).get("/v1/offline/features", {}).get("post")
    if offline is not None:
        offline["requestBody"] = {
            "required": True, "description": "the observations as a Parquet file (any compression)",
            "content": {PARQUET: {"schema": {"type": "string", "format": "binary"}}}}
    # FastAPI's own validation-error schemas are unused: every refusal is {"error": ...}
    for name in ("HTTPValidationError", "ValidationError"):
        components["schemas"].pop(name, None)
