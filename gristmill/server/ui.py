"""The web UI (SPEC §4): catalog search, feature set pages (versions, schema, lineage, data interval
timeline, jobs) and job monitoring, as server-rendered HTML on the REST server's routes and access rules.

Pages live under ``/ui``. A browser signs in once with a token (``/ui/login``) and gets a session token
of its own (12 hours, revoked at sign-out) in an HttpOnly, same-site cookie (Secure over https). Every
page then checks the same roles as the API, and shows only what the caller may read. No JavaScript:
pages are plain HTML with a little CSS, and the jobs page refreshes itself.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable
from datetime import datetime, timedelta
from html import escape
from typing import TYPE_CHECKING, Any
from urllib.parse import parse_qs, quote

from fastapi import FastAPI, Request
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import HTMLResponse, RedirectResponse, Response

from gristmill.auth import AccessDeniedError, Action, Resource
from gristmill.errors import GristmillError, NotFoundError

if TYPE_CHECKING:
    from gristmill.auth import AccessRecords
    from gristmill.server.visibility import Visibility
    from gristmill.store import FeatureStore

__all__ = ["COOKIE", "add_ui"]

COOKIE = "gristmill_token"

log = logging.getLogger("gristmill.server")

_STYLE = """
body{font-family:system-ui,sans-serif;margin:0;color:#1d2330;background:#f7f8fa}
header{background:#24324a;color:#fff;padding:.6rem 1.2rem;display:flex;gap:1.2rem;align-items:center}
header a{color:#fff;text-decoration:none}header .who{margin-left:auto;opacity:.8}
main{padding:1rem 1.2rem;max-width:1100px}h1{font-size:1.4rem}h2{font-size:1.1rem;margin-top:1.6rem}
table{border-collapse:collapse;width:100%;background:#fff}td,th{border:1px solid #dde1e8;padding:.3rem .5rem;
text-align:left;font-size:.9rem}th{background:#eef1f5}.muted{color:#6b7385}.error{color:#a12a2a}
.timeline{display:flex;height:1.2rem;border:1px solid #dde1e8;background:#fff}.timeline span{display:block}
.Complete{background:#3c9a5f}.Incomplete{background:#d0a02a}.Pending{background:#5a7fc4}.None{background:#e6e8ec}
.Completed{color:#2d7a49}.Failed{color:#a12a2a}.Running{color:#3b5fa6}.Cancelled{color:#8a6d1c}
input[type=text],input[type=password]{padding:.35rem;width:22rem}button{padding:.35rem .8rem}
"""


def add_ui(app: FastAPI, store: FeatureStore, access: AccessRecords, *, auth: bool,
           may: Callable[[str, Action, Resource], bool], anonymous: str,
           visible: Visibility) -> Callable[[Request, int, str], Response]:
    """Add the ``/ui`` pages to ``app``; returns the page for an HTTP error under ``/ui`` (an unknown page,
    a wrong method), in the pages' layout, for the app's error handler."""

    def caller(request: Request) -> str | None:
        if not auth:
            return anonymous
        try:
            return access.authenticate(request.cookies.get(COOKIE))
        except AccessDeniedError:
            return None

    def resource_of(name: str, version: str) -> Resource:
        feature_set = store._cached_feature_set(name, version)
        return Resource("featureset", name, version, tuple(e.name for e in feature_set.entity_refs))

    def page(title: str, who: str | None, body: str, *, status: int = 200, refresh: int | None = None) -> HTMLResponse:
        meta = f'<meta http-equiv="refresh" content="{refresh}">' if refresh else ""
        links = ('<a href="/ui">Catalog</a><a href="/ui/jobs">Jobs</a><a href="/ui/models">Models</a>'
                 if who else "")
        account = (f'<span class="who">{escape(who)} · <a href="/ui/logout">sign out</a></span>'
                   if who and auth else "")
        return HTMLResponse(
            f"<!doctype html><html><head><meta charset='utf-8'><title>{escape(title)} · Gristmill</title>{meta}"
            f"<style>{_STYLE}</style></head><body><header><strong>Gristmill · {escape(store.name)}</strong>"
            f"{links}{account}</header><main>{body}</main></body></html>", status_code=status)

    def signed_in(request: Request, render: Callable[[str], Response]) -> Response:
        who = caller(request)
        if who is None:
            return RedirectResponse(f"/ui/login?next={quote(str(request.url.path))}", status_code=303)
        try:
            return render(who)
        except NotFoundError as exc:
            return page("Not found", who, f"<h1>Not found</h1><p class='error'>{escape(str(exc))}</p>", status=404)
        except AccessDeniedError as exc:
            return page("Not allowed", who, f"<h1>Not allowed</h1><p class='error'>{escape(str(exc))}</p>",
                        status=403)
        except GristmillError as exc:
            return page("Error", who, f"<h1>Error</h1><p class='error'>{escape(str(exc))}</p>", status=400)

    @app.get("/ui/login", response_class=HTMLResponse, include_in_schema=False)
    def login_form(next: str = "/ui", error: str = "") -> HTMLResponse:
        message = f"<p class='error'>{escape(error)}</p>" if error else ""
        return page("Sign in", None, f"<h1>Sign in</h1>{message}<form method='post' action='/ui/login'>"
                                     f"<input type='hidden' name='next' value='{escape(next, quote=True)}'>"
                                     "<p><input type='password' name='token' placeholder='gm_… token' autofocus>"
                                     " <button>Sign in</button></p></form><p class='muted'>A token comes from "
                                     "<code>gristmill access token NAME</code>.</p>")

    @app.post("/ui/login", include_in_schema=False)
    async def login(request: Request) -> Response:
        if not _same_origin(request):                          # a cross-site form post
            return page("Sign in", None, "<h1>Sign in</h1><p class='error'>sign in from this server's own page"
                                         "</p>", status=403)
        form = parse_qs((await request.body()).decode("utf-8", "replace"))   # a plain form: no multipart needed
        token, next = form.get("token", [""])[0], form.get("next", ["/ui"])[0]
        try:
            # the browser gets a session of its own (12 hours at most, revoked at sign-out, ended with the
            # token it was signed in with), never the API token
            session = await run_in_threadpool(access.create_session, token, lasts=timedelta(hours=12))
        except AccessDeniedError as exc:
            return RedirectResponse(f"/ui/login?error={quote(str(exc))}&next={quote(next)}", status_code=303)
        target = next if next.startswith("/ui") else "/ui"
        response = RedirectResponse(target, status_code=303)
        response.set_cookie(COOKIE, session, httponly=True, samesite="strict", max_age=12 * 3600,
                            secure=_scheme(request) == "https")
        return response

    @app.get("/ui/logout", include_in_schema=False)
    def logout(request: Request) -> Response:
        session = request.cookies.get(COOKIE, "")
        parts = session.split("_", 2)
        if auth and len(parts) == 3 and parts[0] == "gm":
            try:
                principal = access.authenticate(session)
                if access.is_session(session):        # never an API token someone put in the cookie
                    access.revoke_token(parts[1], by=principal)
            except (AccessDeniedError, NotFoundError):
                pass
        response = RedirectResponse("/ui/login", status_code=303)
        response.delete_cookie(COOKIE)
        return response

    @app.get("/ui", response_class=HTMLResponse, include_in_schema=False)
    def catalog(request: Request, q: str = "") -> Response:
        def render(who: str) -> Response:
            sets = [fs for fs in store.list_feature_sets()
                    if may(who, Action.READ_CATALOG, resource_of(fs.name, fs.version))]
            rows = [[_link(f"/ui/feature-sets/{fs.name}/{fs.version}", fs.ref), fs.stage.value,
                     escape(fs.description or ""), escape(", ".join(fs.entities))] for fs in sets]
            body = (f"<h1>Catalog</h1><form action='/ui'><input type='text' name='q' value='{escape(q, quote=True)}' "
                    "placeholder='search features: name, description, tags'> <button>Search</button></form>")
            if q:
                readable: dict[tuple[str, str], bool] = {}
                found = []
                for f in store.search_features(q, limit=100_000):    # filter by access first, then cut to 200
                    key = (f.feature_set, f.version)
                    if key not in readable:
                        readable[key] = may(who, Action.READ_CATALOG, resource_of(*key))
                    if readable[key]:
                        found.append(f)
                        if len(found) >= 200:
                            break
                body += f"<h2>{len(found)} feature(s) matching “{escape(q)}”</h2>" + _table(
                    ["feature", "type", "description", "tags"],
                    [[_link(f"/ui/feature-sets/{f.feature_set}/{f.version}", f.ref), escape(f.type.value),
                      escape(f.description or ""), escape(_tags(f.tags))] for f in found])
            body += "<h2>Feature sets</h2>" + _table(["feature set", "stage", "description", "entities"], rows)
            return page("Catalog", who, body)

        return signed_in(request, render)

    @app.get("/ui/feature-sets/{name}/{version}", response_class=HTMLResponse, include_in_schema=False)
    def feature_set_page(request: Request, name: str, version: str) -> Response:
        def render(who: str) -> Response:
            resource = visible.feature_set(who, name, version)      # unreadable: as if missing
            fs = store.get_feature_set(name, version)
            spec = fs.spec
            versions = " ".join(_link(f"/ui/feature-sets/{name}/{v.version}", v.version) if v.version != version
                                else f"<strong>{escape(v.version)}</strong>"
                                for v in store.list_feature_sets(name=name))
            schema = [[escape(c.name), escape(c.type.value), "index column", ""] for c in spec.index_columns]
            schema.append([escape(spec.timestamp_column), "datetime", "timestamp", ""])
            schema += [[escape(f.name), escape(f.type.value), "feature", escape(f.description or "")]
                       for f in spec.features]
            models = [m for m in store.models_using(name, version) if visible.model_readable(who, m)]
            lineage = (", ".join(escape(m.ref) for m in models) if models
                       else "<span class='muted'>no registered model uses it</span>")
            body = (f"<h1>{escape(fs.ref)}</h1><p>{escape(fs.description or '')}</p>"
                    f"<p class='muted'>stage {escape(fs.stage.value)} · entities {escape(', '.join(fs.entities))}"
                    f" · tags {escape(_tags(fs.tags)) or '–'} · source {escape(spec.source.type.value)}"
                    f"{(' ' + escape(spec.source.path)) if spec.source.path else ''}</p>"
                    f"<p>Versions: {versions}</p><h2>Schema</h2>"
                    + _table(["column", "type", "role", "description"], schema)
                    + f"<h2>Lineage</h2><p>Used by: {lineage}</p>")
            if may(who, Action.READ_JOBS, resource):
                intervals = store.data_intervals(name, version)
                body += "<h2>Data intervals</h2>" + "".join(
                    f"<h3 class='muted'>{kind}</h3>" + _timeline(items) + _table(
                        ["start", "end", "status"], [[_when(i.start), _when(i.end), i.status.value] for i in items])
                    for kind, items in intervals.items() if items) + (
                    "" if any(intervals.values()) else "<p class='muted'>nothing materialized</p>")
                jobs = store.list_jobs(feature_set=name, version=version, limit=20)
                body += "<h2>Recent jobs</h2>" + _jobs_table(jobs)
            return page(fs.ref, who, body)

        return signed_in(request, render)

    @app.get("/ui/jobs", response_class=HTMLResponse, include_in_schema=False)
    def jobs_page(request: Request, status: str | None = None, done: str = "") -> Response:
        def render(who: str) -> Response:
            shown = visible.jobs(who, status=status or None, limit=200)      # filtered, then cut
            filters = " · ".join(_link(f"/ui/jobs?status={s}" if s else "/ui/jobs", s or "all")
                                 for s in ("", "Running", "Failed", "Completed", "Queued", "Cancelled"))
            actions = {job.id: _action(job) for job in shown if job_resource(job) is not None
                       and may(who, Action.MATERIALIZE, job_resource(job))}   # type: ignore[arg-type]
            notice = f"<p class='muted'>{escape(done)}</p>" if done else ""
            return page("Jobs", who, f"<h1>Jobs</h1>{notice}<p>{filters} <span class='muted'>(refreshes every 10 s)"
                                     f"</span></p>{_jobs_table(shown, actions)}", refresh=10)

        return signed_in(request, render)

    def job_resource(job: Any) -> Resource | None:
        try:
            return resource_of(job.feature_set, job.version)
        except NotFoundError:
            return None

    @app.post("/ui/jobs/{job_id}/{action}", include_in_schema=False)
    def job_action(request: Request, job_id: str, action: str) -> Response:
        """Cancel a queued or running job, or retry a failed or cancelled one's window (Materializer)."""
        def render(who: str) -> Response:
            if not _same_origin(request):
                raise AccessDeniedError("act from this server's own pages")
            job, resource = visible.job(who, job_id)
            if auth:
                access.check(who, Action.MATERIALIZE, resource)
            if action == "cancel":
                store.cancel_job(job_id, f"cancelled by {who} in the web UI")
                access.audit(who, "job.cancel", str(resource), allowed=True, detail=f"job {job_id} (web UI)")
                message = f"job {job_id} cancelled"
            elif action == "retry":
                # the new job is recorded here, atomically with the check that no job covers the window yet
                # (concurrent clicks make one job); the server's backfill workers run it, so a long window
                # never holds the request open
                feature_set = store.get_feature_set(job.feature_set, job.version)
                retry = store.materializer.retry_job(feature_set, job_id)
                request.app.state.limits.backfills.submit_job(feature_set, retry)   # the server's fixed pool
                access.audit(who, Action.MATERIALIZE.value, str(resource), allowed=True,
                             detail=f"retry of job {job_id} started as job {retry.id} (web UI)")
                message = f"retry of job {job_id} started as job {retry.id}; it appears below"
            else:
                raise NotFoundError(f"unknown job action '{action}'; use cancel or retry")
            return RedirectResponse(f"/ui/jobs?done={quote(message)}", status_code=303)

        return signed_in(request, render)

    @app.get("/ui/models", response_class=HTMLResponse, include_in_schema=False)
    def models_page(request: Request) -> Response:
        def render(who: str) -> Response:
            rows = []
            for model in store.list_models():
                if visible.model_readable(who, model):
                    # another store's feature sets have no page here: their names only
                    used = dict.fromkeys((f.feature_ref.store, f.feature_ref.feature_set_ref)
                                         for f in model.retrieval_spec.features)
                    sets = [escape(f"{other}/{ref}") if other else _link(f"/ui/feature-sets/{ref.name}/{ref.version}",
                                                                         str(ref))
                            for other, ref in used]
                    rows.append([escape(model.ref), escape(model.description or ""), ", ".join(sets),
                                 escape(", ".join(model.features))])
            return page("Models", who, "<h1>Models</h1>" + _table(["model", "description", "feature sets",
                                                                   "features"], rows))

        return signed_in(request, render)

    def error_page(request: Request, status: int, message: str) -> Response:
        title = "Not found" if status == 404 else "Error"
        return page(title, caller(request), f"<h1>{title}</h1><p class='error'>{escape(message)}</p>"
                                            "<p><a href='/ui'>Back to the catalog</a></p>", status=status)

    return error_page


def _scheme(request: Request) -> str:
    """``http`` or ``https`` as the browser sees it (``X-Forwarded-Proto`` behind a proxy)."""
    return request.headers.get("x-forwarded-proto", request.url.scheme).split(",")[0].strip().lower()


def _same_origin(request: Request) -> bool:
    """Whether a POST comes from this server's own pages: no ``Origin`` (not a browser form from elsewhere),
    or one naming this server, directly or through a proxy (``Host`` / ``X-Forwarded-Host``)."""
    origin = request.headers.get("origin")
    if not origin:
        return True
    hosts = {request.url.netloc, request.headers.get("host", ""), request.headers.get("x-forwarded-host", "")}
    return origin.rstrip("/") in {f"{scheme}://{host}" for host in hosts if host
                                  for scheme in ("http", "https", _scheme(request))}


def _link(href: str, text: str) -> str:
    return f"<a href='{escape(href, quote=True)}'>{escape(text)}</a>"


def _tags(tags: dict[str, str]) -> str:
    return ", ".join(f"{k}={v}" for k, v in tags.items())


def _when(value: datetime | None) -> str:
    return "" if value is None else escape(value.strftime("%Y-%m-%d %H:%M"))


def _table(header: list[str], rows: Iterable[list[str]]) -> str:
    body = "".join("<tr>" + "".join(f"<td>{cell}</td>" for cell in row) + "</tr>" for row in rows)
    head = "".join(f"<th>{escape(h)}</th>" for h in header)
    return f"<table><tr>{head}</tr>{body or f'<tr><td colspan={len(header)} class=muted>none</td></tr>'}</table>"


def _timeline(items: list[Any]) -> str:
    """The intervals as one bar, each segment as wide as its share of the covered time."""
    total = sum((i.end - i.start).total_seconds() for i in items) or 1.0
    spans = "".join(f"<span class='{i.status.value}' title='{_when(i.start)} – {_when(i.end)}: {i.status.value}' "
                    f"style='width:{100 * (i.end - i.start).total_seconds() / total:.3f}%'></span>" for i in items)
    return f"<div class='timeline'>{spans}</div>"


def _action(job: Any) -> str:
    """A cancel button for a queued or running job, a retry button for a failed or cancelled one."""
    verb = {"Queued": "cancel", "Running": "cancel", "Failed": "retry", "Cancelled": "retry"}.get(job.status.value)
    if verb is None:
        return ""
    return (f"<form method='post' action='/ui/jobs/{escape(job.id, quote=True)}/{verb}' style='margin:0'>"
            f"<button>{verb.capitalize()}</button></form>")


def _jobs_table(jobs: list[Any], actions: dict[str, str] | None = None) -> str:
    header = ["job", "feature set", "window", "stores", "status", "rows read", "rows written", "CPU s", "error"]
    rows = [[escape(j.id), _link(f"/ui/feature-sets/{j.feature_set}/{j.version}", j.ref),
             f"{_when(j.start)} – {_when(j.end)}", escape("+".join(j.stores)),
             f"<span class='{j.status.value}'>{j.status.value}</span>", str(j.rows_read), str(j.rows_written),
             f"{j.cpu_seconds:.2f}", escape(j.error or "")] for j in jobs]
    if actions:
        header.append("")
        for row, job in zip(rows, jobs, strict=True):
            row.append(actions.get(job.id, ""))
    return _table(header, rows)
