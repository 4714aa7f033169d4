"""The web UI (SPEC §4), as server-rendered HTML on the REST server's routes and access rules: the catalog
(filters, search), entity pages, feature set pages (schema, the transformation with highlighted code,
source, materialization settings, data interval timeline, backfill form, data preview, jobs, lineage,
versions side by side), jobs (history chart, filters, pages, cancel and retry), the lineage graph and
models. Charts and code views are drawn in ``ui_draw``.

Pages live under ``/ui``. A browser signs in once with a token (``/ui/login``) and gets a session token
of its own (12 hours, revoked at sign-out) in an HttpOnly, same-site cookie (Secure over https). Every
page then checks the same roles as the API, and shows only what the caller may read. No JavaScript:
pages are plain HTML and SVG with a little CSS, sent with a policy that lets no script run; the jobs page
refreshes itself. Form posts (backfill, cancel, retry) are refused when they come from another site.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable, Iterable
from datetime import datetime, timedelta
from html import escape
from typing import TYPE_CHECKING, Any
from urllib.parse import parse_qs, quote, urlencode

import yaml
from fastapi import FastAPI, Request
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import HTMLResponse, RedirectResponse, Response

from gristmill.auth import AccessDeniedError, Action, Resource
from gristmill.errors import GristmillError, NotFoundError
from gristmill.server.ui_draw import (
    CODE_STYLE,
    Node,
    code_block,
    histogram_svg,
    interval_id,
    jobs_chart,
    lineage_graph,
    side_by_side,
    timeline,
)
from gristmill.spec.refs import parse_name_and_version

if TYPE_CHECKING:
    from gristmill.auth import AccessRecords
    from gristmill.server.visibility import Visibility
    from gristmill.spec.featureset import FeatureSet
    from gristmill.spec.featureset_spec import FeatureSetSpec
    from gristmill.store import FeatureStore

__all__ = ["COOKIE", "add_ui"]

COOKIE = "gristmill_token"

log = logging.getLogger("gristmill.server")

_STYLE = """
*{box-sizing:border-box}
body{font-family:system-ui,sans-serif;margin:0;color:#1d2330;background:#f7f8fa;line-height:1.4}
a{color:#1f4fa3}a:focus-visible,button:focus-visible,input:focus-visible,select:focus-visible,summary:focus-visible,
tr:target{outline:3px solid #f0b429;outline-offset:2px}tr:target td{background:#fff3cd}
svg a:focus-visible rect{stroke:#b7791f;stroke-width:3}
.skip{position:absolute;left:-999px}.skip:focus{left:.5rem;top:.5rem;background:#fff;padding:.3rem;z-index:2}
header{background:#24324a;color:#fff;padding:.6rem 1.2rem;display:flex;flex-wrap:wrap;gap:.4rem 1.2rem;
align-items:center}header a{color:#fff;text-decoration:none}header a:hover{text-decoration:underline}
header nav{display:flex;flex-wrap:wrap;gap:.4rem 1rem}header .who{margin-left:auto;opacity:.85}
main{padding:1rem 1.2rem;max-width:1280px}h1{font-size:1.4rem;overflow-wrap:anywhere}
h2{font-size:1.1rem;margin-top:1.6rem}h3{font-size:1rem}
.scroll{overflow-x:auto;max-width:100%}.tall{max-height:24rem;overflow-y:auto;border:1px solid #dde1e8}
table{border-collapse:collapse;width:100%;background:#fff}td,th{border:1px solid #dde1e8;padding:.3rem .5rem;
text-align:left;font-size:.9rem;vertical-align:top;overflow-wrap:break-word}th{background:#eef1f5}
td.num,th.num{text-align:right;font-variant-numeric:tabular-nums;overflow-wrap:normal}
.muted{color:#5d6576}.nowrap{white-space:nowrap}
table.jobs td,table.jobs th{font-size:.82rem;padding:.25rem .35rem}.error{color:#a12a2a}
.notice{background:#e8f2ea;border:1px solid #b9d8c1;padding:.4rem .6rem}
.Completed{color:#2d7a49}.Failed{color:#a12a2a}.Running{color:#3b5fa6}.Cancelled{color:#8a6d1c}
input,select,button{font:inherit;max-width:100%}
input[type=text],input[type=password],input[type=search]{padding:.35rem;width:22rem}button{padding:.35rem .8rem}
form.filters{display:flex;flex-wrap:wrap;gap:.5rem 1rem;align-items:flex-end}
form.filters label,form.stack label,.field{display:flex;flex-direction:column;font-size:.85rem}
.field select{max-width:16rem}form.stack{display:flex;flex-wrap:wrap;gap:.5rem 1rem;align-items:flex-end}
fieldset{border:1px solid #dde1e8}
dl.facts{display:grid;grid-template-columns:max-content 1fr;gap:.2rem 1rem;margin:0}dl.facts dt{color:#5d6576}
dl.facts dd{margin:0;overflow-wrap:anywhere}
figure.chart{margin:.5rem 0;background:#fff;border:1px solid #dde1e8;padding:.4rem;overflow-x:auto}
svg{display:block;max-width:100%;height:auto}svg text{font-size:13px;fill:#1d2330}svg .muted{fill:#5d6576}
svg .axis{stroke:#8a92a3}svg .edge{fill:none;stroke:#8a92a3;stroke-width:1.5}
.s-Complete{fill:#3c9a5f;background:#3c9a5f}.s-Incomplete{fill:#d0a02a;background:#d0a02a}
.s-Pending{fill:#5a7fc4;background:#5a7fc4}.s-None{fill:#c9ced8;background:#c9ced8}
.j-Completed{fill:#3c9a5f}.j-Failed{fill:#c0392b}.j-Running{fill:#5a7fc4}.j-Queued{fill:#9aa3b5}
svg.histogram{display:inline-block;width:160px}svg .bin{fill:#5a7fc4}svg.histogram text{font-size:9px}
.fresh-fresh{color:#2d7a49}.fresh-stale{color:#a12a2a;font-weight:600}.fresh-never-materialized,.fresh-not-scheduled,.fresh-disabled{color:#5d6576}
.j-Cancelled{fill:#d0a02a}
.n-entity{fill:#fdf1d6;stroke:#c9a13b;background:#fdf1d6}.n-featureset{fill:#e3ecfa;stroke:#5a7fc4;background:#e3ecfa}
.n-derived{fill:#e6f4ea;stroke:#3c9a5f;background:#e6f4ea}.n-model{fill:#f3e6f5;stroke:#9a5aa8;background:#f3e6f5}
svg a:focus rect,svg a:hover rect{stroke-width:3}
.legend{display:flex;flex-wrap:wrap;gap:.3rem 1rem;font-size:.85rem}.legend i{display:inline-block;width:.9rem;
height:.9rem;margin-right:.3rem;vertical-align:middle}
.code{background:#fff;border:1px solid #dde1e8;overflow-x:auto}.code pre{margin:0;padding:.5rem;font-size:.85rem}
table.diff td{font-family:ui-monospace,monospace;font-size:.8rem;white-space:pre-wrap;width:50%}
table.diff td.changed{background:#fff3cd}table.diff td.blank{background:#f1f2f4}table.diff td.fold{color:#5d6576;
text-align:center}
.tag{display:inline-block;background:#eef1f5;border-radius:3px;padding:0 .3rem;margin:0 .2rem .2rem 0}
.pages{display:flex;gap:1rem;margin:.6rem 0}
@media (max-width:600px){main{padding:.8rem}input[type=text],input[type=password],input[type=search]{width:100%}
header .who{margin-left:0}}
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
        links = ('<nav aria-label="pages"><a href="/ui">Catalog</a><a href="/ui/lineage">Lineage</a>'
                 '<a href="/ui/jobs">Jobs</a><a href="/ui/models">Models</a><a href="/docs">API</a></nav>'
                 if who else "")
        account = (f'<span class="who">{escape(who)} · <a href="/ui/logout">sign out</a></span>'
                   if who and auth else "")
        return HTMLResponse(
            "<!doctype html><html lang='en'><head><meta charset='utf-8'>"
            "<meta name='viewport' content='width=device-width, initial-scale=1'>"
            f"<title>{escape(title)} · Gristmill</title>{meta}<style>{_STYLE}{CODE_STYLE}</style></head><body>"
            "<a class='skip' href='#main'>Skip to content</a>"
            f"<header><strong>Gristmill · {escape(store.name)}</strong>{links}{account}</header>"
            f"<main id='main'>{body}</main></body></html>", status_code=status, headers=_HEADERS)

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

    def readable_sets(who: str) -> list[FeatureSet]:
        return [fs for fs in store.list_feature_sets()
                if may(who, Action.READ_CATALOG, resource_of(fs.name, fs.version))]

    def entity_link(who: str, ref: str) -> str:
        """An entity reference, linked to its page when the caller may read the entity."""
        name, _, version = ref.partition(":")
        if may(who, Action.READ_CATALOG, Resource("entity", name)):
            return _link(f"/ui/entities/{name}/{version}", ref)
        return escape(ref)

    @app.get("/ui/login", response_class=HTMLResponse, include_in_schema=False)
    def login_form(next: str = "/ui", error: str = "") -> HTMLResponse:
        message = f"<p class='error' role='alert'>{escape(error)}</p>" if error else ""
        return page("Sign in", None, f"<h1>Sign in</h1>{message}<form method='post' action='/ui/login'>"
                                     f"<input type='hidden' name='next' value='{escape(next, quote=True)}'>"
                                     "<p><label for='token'>Token</label><br><input type='password' id='token' "
                                     "name='token' placeholder='gm_… token' autocomplete='off' autofocus>"
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

    def freshness_of(who: str, fs: FeatureSet) -> Any:
        """The feature set's freshness for a caller who may read its jobs (None otherwise, or unknown)."""
        if not may(who, Action.READ_JOBS, resource_of(fs.name, fs.version)):
            return None
        try:
            return store.freshness(fs.name, fs.version)
        except GristmillError as exc:
            log.warning("%s: freshness unknown: %s", fs.ref, exc)
            return None

    def statistics_section(fs: FeatureSet, who: str, resource: Resource) -> str:
        """Freshness per store, then the feature statistics the materialization jobs recorded (offline store,
        else online) for a caller who may read that store's data (they show values); never computed from the
        source here: the page stays fast."""
        body = "<h2 id='freshness'>Freshness</h2>"
        try:
            body += _freshness_table(store.freshness(fs.name, fs.version))
        except GristmillError as exc:
            body += f"<p class='muted'>unknown: {escape(str(exc))}</p>"
        body += "<h2 id='statistics'>Feature statistics</h2>"
        readable = [kind for kind, action in (("offline", Action.READ_OFFLINE), ("online", Action.READ_ONLINE))
                    if may(who, action, resource)]
        if not readable:
            return body + "<p class='muted'>they show the data's values: shown to readers of the data</p>"
        for kind in readable:
            try:
                found = store.feature_statistics(fs.name, fs.version, store=kind, recorded_only=True)
            except GristmillError as exc:
                return body + f"<p class='muted'>{escape(str(exc))}</p>"
            if found.windows:
                return body + f"<p class='muted'>{kind} store</p>" + _statistics_table(found)
        return body + ("<p class='muted'>none recorded yet: materialization jobs record them per window; for a "
                       f"feature set not materialized run <code>gristmill stats {escape(fs.ref)} --start ... "
                       "--end ...</code></p>")

    # -- catalog ------------------------------------------------------------------------------------------
    @app.get("/ui", response_class=HTMLResponse, include_in_schema=False)
    def catalog(request: Request, q: str = "", entity: str = "", tag: str = "", stage: str = "",
                materialized: str = "") -> Response:
        def render(who: str) -> Response:
            sets = readable_sets(who)
            # the filters offer only what the caller's feature sets hold: no name it may not read
            entity_names = sorted({e for fs in sets for e in fs.entities})
            tag_names = sorted({f"{k}={v}" for fs in sets for k, v in fs.tags.items()})
            stages = sorted({fs.stage.value for fs in sets})
            found: list[Any] = []
            matched_sets: set[tuple[str, str]] = set()
            if q:
                readable = {(fs.name, fs.version) for fs in sets}
                for f in store.search_features(q, limit=100_000):    # filter by access first, then cut to 200
                    if (f.feature_set, f.version) in readable:
                        matched_sets.add((f.feature_set, f.version))
                        if len(found) < 200:
                            found.append(f)
            terms = q.lower().split()
            shown = [fs for fs in sets
                     if (not entity or entity in fs.entities)
                     and (not tag or tag in {f"{k}={v}" for k, v in fs.tags.items()})
                     and (not stage or fs.stage.value == stage)
                     and (not materialized or (materialized == "yes") == bool(_materialized(fs)))
                     and (not terms or (fs.name, fs.version) in matched_sets
                          or all(t in _searchable(fs) for t in terms))]
            body = ("<h1>Catalog</h1><form class='filters' action='/ui' role='search'>"
                    f"<label>Search<input type='search' name='q' value='{escape(q, quote=True)}' "
                    "placeholder='name, description, tags'></label>"
                    + _select("entity", "Entity", entity, entity_names)
                    + _select("tag", "Tag", tag, tag_names)
                    + _select("stage", "Stage", stage, stages)
                    + _select("materialized", "Materialized", materialized, ["yes", "no"])
                    + "<button>Filter</button> <a href='/ui'>clear</a></form>")
            rows = [[_link(f"/ui/feature-sets/{fs.name}/{fs.version}", fs.ref), escape(fs.stage.value),
                     escape(fs.description or ""), ", ".join(entity_link(who, e) for e in fs.entities),
                     _tag_list(fs.tags), escape(_materialized(fs) or "no"), _freshness_cell(freshness_of(who, fs))]
                    for fs in shown]
            body += (f"<h2>Feature sets <span class='muted'>({len(shown)} of {len(sets)})</span></h2>"
                     + _table(["feature set", "stage", "description", "entities", "tags", "materialized",
                               "freshness"], rows))
            if q:
                body += f"<h2>{len(found)} feature(s) matching “{escape(q)}”</h2>" + _table(
                    ["feature", "type", "description", "tags"],
                    [[_link(f"/ui/feature-sets/{f.feature_set}/{f.version}#feature-{f.name}", f.ref),
                      escape(f.type.value), escape(f.description or ""), _tag_list(f.tags)] for f in found])
            entities = [e for e in store.list_entities() if may(who, Action.READ_CATALOG, Resource("entity", e.name))]
            body += "<h2>Entities</h2>" + _table(["entity", "index columns", "description"], [
                [_link(f"/ui/entities/{e.name}/{e.version}", e.ref),
                 escape(", ".join(f"{c.name}: {c.type.value}" for c in e.index_columns)),
                 escape(e.description or "")] for e in entities])
            return page("Catalog", who, body)

        return signed_in(request, render)

    @app.get("/ui/entities/{name}/{version}", response_class=HTMLResponse, include_in_schema=False)
    def entity_page(request: Request, name: str, version: str) -> Response:
        def render(who: str) -> Response:
            if not may(who, Action.READ_CATALOG, Resource("entity", name)):
                visible._audit_refusal(who, Resource("entity", name, version))
                raise NotFoundError(f"entity '{name}' version {version} not found")      # as if missing
            try:
                entity = store.get_entity(name, version)
            except NotFoundError:
                raise NotFoundError(f"entity '{name}' version {version} not found") from None
            keyed = [fs for fs in readable_sets(who) if entity.ref in fs.entities]
            body = (f"<h1>Entity {escape(entity.ref)}</h1><p>{escape(entity.description or '')}</p>"
                    f"<dl class='facts'><dt>stage</dt><dd>{escape(entity.stage.value)}</dd>"
                    f"<dt>tags</dt><dd>{_tag_list(entity.tags) or '–'}</dd></dl>"
                    "<h2>Index columns</h2>"
                    + _table(["column", "type"], [[escape(c.name), escape(c.type.value)] for c in entity.index_columns])
                    + "<h2>Feature sets keyed by it</h2>"
                    + _table(["feature set", "stage", "description", "materialized"], [
                        [_link(f"/ui/feature-sets/{fs.name}/{fs.version}", fs.ref), escape(fs.stage.value),
                         escape(fs.description or ""), escape(_materialized(fs) or "no")] for fs in keyed]))
            return page(f"Entity {entity.ref}", who, body)

        return signed_in(request, render)

    # -- a feature set --------------------------------------------------------------------------------------
    @app.get("/ui/feature-sets/{name}/{version}", response_class=HTMLResponse, include_in_schema=False)
    def feature_set_page(request: Request, name: str, version: str, compare: str = "", preview_start: str = "",
                         preview_end: str = "", done: str = "") -> Response:
        def render(who: str) -> Response:
            resource = visible.feature_set(who, name, version)      # unreadable: as if missing
            fs = store.get_feature_set(name, version)
            record = store.registry.get_feature_set(name, version)    # the registry's snapshot: spec and code
            spec = fs.spec
            shown = visible.shown(who, fs, fs.to_dict())              # secrets redacted unless an Owner
            all_versions = store.list_feature_sets(name=name)
            versions = " ".join(_link(f"/ui/feature-sets/{name}/{v.version}", v.version) if v.version != version
                                else f"<strong aria-current='page'>{escape(v.version)}</strong>"
                                for v in all_versions)
            notice = f"<p class='notice' role='status'>{escape(done)}</p>" if done else ""
            source = spec.source
            parent = spec.parent_ref
            source_text = (f"feature set {_link(f'/ui/feature-sets/{parent.name}/{parent.version}', str(parent))}"
                           if parent else escape(source.type.value)
                           + (f" <code>{escape(source.path)}</code>" if source.path else ""))
            body = (f"<h1>{escape(fs.ref)}</h1>{notice}<p>{escape(fs.description or '')}</p><dl class='facts'>"
                    f"<dt>stage</dt><dd>{escape(fs.stage.value)}</dd>"
                    f"<dt>entities</dt><dd>{', '.join(entity_link(who, e) for e in fs.entities) or '–'}</dd>"
                    f"<dt>tags</dt><dd>{_tag_list(fs.tags) or '–'}</dd><dt>source</dt><dd>{source_text}</dd>"
                    f"<dt>versions</dt><dd>{versions}</dd></dl>")
            if may(who, Action.READ_JOBS, resource):                 # as the statistics and freshness routes
                body += statistics_section(fs, who, resource)
            schema = [(c.name, [escape(c.name), escape(c.type.value), "index column", ""]) for c in spec.index_columns]
            schema.append((spec.timestamp_column, [escape(spec.timestamp_column), "datetime", "timestamp", ""]))
            schema += [(f.name, [escape(f.name), escape(f.type.value), "feature", escape(f.description or "")])
                       for f in spec.features]
            body += "<h2>Schema</h2>" + _table(["column", "type", "role", "description"], [r for _, r in schema],
                                               ids=[f"feature-{n}" for n, _ in schema])
            body += "<h2>Transformation</h2>" + _transformation(spec, record.code_files)
            body += "<h2>Source</h2>" + _source_facts(spec)
            body += "<h2>Materialization</h2>" + _settings(shown.get("materialization_settings") or {})
            intervals = store.data_intervals(name, version)
            if may(who, Action.READ_JOBS, resource):
                few = sum(len(items) for items in intervals.values()) <= SHOWN_INTERVALS
                body += "<h2>Data intervals</h2>" + (timeline(intervals, label=f"data intervals of {fs.ref}") + (
                    f"<details{' open' if few else ''}><summary>intervals as text</summary>" + "".join(
                        f"<h3 class='muted'>{kind}</h3>" + _table(
                            ["start", "end", "status"],
                            [[_when(i.start), _when(i.end), i.status.value] for i in items],
                            ids=[interval_id(kind, n) for n in range(len(items))])
                        for kind, items in intervals.items() if items) + "</details>")
                    if any(intervals.values()) else "<p class='muted'>nothing materialized</p>")
            if may(who, Action.MATERIALIZE, resource):
                body += _backfill_form(fs)
            if may(who, Action.READ_OFFLINE, resource):              # the preview shows data: a data reader only
                body += preview_section(fs, intervals, preview_start, preview_end)
            if may(who, Action.READ_JOBS, resource):
                jobs = store.list_jobs(feature_set=name, version=version, limit=20)
                body += (f"<h2>Recent jobs</h2><p>{_link(f'/ui/jobs?feature_set={fs.ref}', 'all jobs of ' + fs.ref)}"
                         "</p>" + _jobs_table(jobs))
            body += lineage_section(who, fs)
            if len(all_versions) > 1:
                body += _compare_section(who, fs, all_versions, compare)
            return page(fs.ref, who, body)

        def _compare_section(who: str, fs: FeatureSet, all_versions: list[FeatureSet], compare: str) -> str:
            others = [v.version for v in all_versions if v.version != fs.version]
            chosen = compare if compare in others else ""
            options = "".join(f"<option{' selected' if v == chosen else ''}>{escape(v)}</option>" for v in others)
            section = (f"<h2>Compare versions</h2><form class='stack' action='/ui/feature-sets/{_path(fs.name)}/"
                       f"{_path(fs.version)}#compare'><label>with version<select name='compare'>{options}</select>"
                       "</label><button>Compare</button></form>")
            if chosen:
                other = store.get_feature_set(fs.name, chosen)
                old, new = (other, fs) if _version_order(chosen) < _version_order(fs.version) else (fs, other)
                section += "<div id='compare'>" + side_by_side(
                    _spec_text(visible.shown(who, old, old.to_dict()), store.registry.get_feature_set(old.name,
                                                                                                      old.version)),
                    _spec_text(visible.shown(who, new, new.to_dict()), store.registry.get_feature_set(new.name,
                                                                                                      new.version)),
                    old_label=old.ref, new_label=new.ref) + "</div>"
            return section

        def preview_section(fs: FeatureSet, intervals: dict[str, list[Any]], start_text: str, end_text: str) -> str:
            end_default = store.now().replace(minute=0, second=0, microsecond=0)
            complete = [i.end for items in intervals.values() for i in items if i.status.value == "Complete"]
            if complete:
                end_default = max(complete)
            start_default = end_default - timedelta(days=1)
            section = ("<h2 id='preview'>Data preview</h2><form class='stack' action="
                       f"'/ui/feature-sets/{_path(fs.name)}/{_path(fs.version)}#preview'>"
                       f"<label>from<input type='datetime-local' name='preview_start' required "
                       f"value='{escape(start_text or _input_time(start_default), quote=True)}'></label>"
                       f"<label>to<input type='datetime-local' name='preview_end' required "
                       f"value='{escape(end_text or _input_time(end_default), quote=True)}'></label>"
                       f"<button>Preview</button></form><p class='muted'>computes the feature set over the window "
                       f"(nothing is stored) and shows its first {PREVIEW_ROWS} rows</p>")
            if not (start_text and end_text):
                return section
            try:                          # a window or a computation that fails is told in the section
                start, end = _parse_time(start_text, "preview_start"), _parse_time(end_text, "preview_end")
                if end <= start:
                    raise GristmillError("preview_end: must be after preview_start; pick a later 'to'")
                if end - start > PREVIEW_LONGEST:
                    raise GristmillError(f"preview window: at most {PREVIEW_LONGEST.days} days; pick a shorter "
                                         "window")
                reader = store.preview(fs.name, fs.version, start, end).to_batches(batch_rows=PREVIEW_ROWS)
                batch = next(iter(reader), None)
            except GristmillError as exc:
                return section + f"<p class='error' role='alert'>{escape(str(exc))}</p>"
            if batch is None or batch.num_rows == 0:
                return section + "<p class='muted'>no rows in this window</p>"
            rows = batch.slice(0, PREVIEW_ROWS).to_pylist()
            header = list(batch.schema.names)
            return section + (f"<p>{len(rows)} row(s) of [{_when(start)}, {_when(end)})</p><div class='tall'>" + _table(
                header, [[escape(_cell(row[c])) for c in header] for row in rows],
                numeric=[i for i, f in enumerate(batch.schema) if _is_number(f.type)]) + "</div>")

        return signed_in(request, render)

    def lineage_section(who: str, fs: FeatureSet) -> str:
        parent = fs.spec.parent_ref
        children = [r.asset for r in store.registry.list_feature_sets()
                    if (_parent_of(r.spec) == (fs.name, fs.version))
                    and may(who, Action.READ_CATALOG, resource_of(r.asset.name, r.asset.version))]
        models = [m for m in store.models_using(fs.name, fs.version) if visible.model_readable(who, m)]
        parts = []
        if parent:
            parts.append(f"derived from {_link(f'/ui/feature-sets/{parent.name}/{parent.version}', str(parent))}")
        if children:
            parts.append("derived feature sets: " + ", ".join(
                _link(f"/ui/feature-sets/{c.name}/{c.version}", c.ref) for c in children))
        used = (", ".join(_link(f"/ui/models#model-{m.name}-{m.version}", m.ref) for m in models) if models
                else "<span class='muted'>no registered model uses it</span>")
        parts.append(f"Used by: {used}")
        return ("<h2>Lineage</h2>" + "".join(f"<p>{p}</p>" for p in parts)
                + "<p><a href='/ui/lineage'>the whole lineage graph</a></p>")

    @app.post("/ui/feature-sets/{name}/{version}/backfill", include_in_schema=False)
    async def backfill(request: Request, name: str, version: str) -> Response:
        """Queue a backfill from the feature set page's form (Materializer), as ``POST .../backfill`` does."""
        form = parse_qs((await request.body()).decode("utf-8", "replace"))

        def render(who: str) -> Response:
            if not _same_origin(request):
                raise AccessDeniedError("act from this server's own pages")
            resource = visible.feature_set(who, name, version)
            if auth:
                access.check(who, Action.MATERIALIZE, resource)
            start = _parse_time(form["start"][0], "start") if form.get("start", [""])[0] else None
            end = _parse_time(form["end"][0], "end") if form.get("end", [""])[0] else None
            stores = form.get("stores") or None
            access.audit(who, Action.MATERIALIZE.value, str(resource), allowed=True,
                         detail=f"backfill [{start}, {end}) (web UI)")
            feature_set = store._cached_feature_set(name, version)
            jobs = request.app.state.limits.backfills.submit(feature_set, start=start, end=end, data_status=None,
                                                             stores=stores, allow_future=False)
            message = (f"backfill of {feature_set.ref} queued as job(s) {', '.join(j.id for j in jobs)}" if jobs
                       else f"nothing to backfill: {feature_set.ref} already holds that window")
            return RedirectResponse(f"/ui/jobs?feature_set={quote(feature_set.ref)}&done={quote(message)}",
                                    status_code=303)

        return await run_in_threadpool(signed_in, request, render)

    # -- jobs -------------------------------------------------------------------------------------------
    @app.get("/ui/jobs", response_class=HTMLResponse, include_in_schema=False)
    def jobs_page(request: Request, status: str | None = None, feature_set: str = "", page_number: str = "1",
                  done: str = "") -> Response:
        def render(who: str) -> Response:
            name, version = (parse_name_and_version(feature_set, what="feature_set", example="transactions:1")
                             if feature_set else (None, None))
            number = min(max(1, int(page_number) if page_number.isdigit() else 1), MOST_JOB_PAGES)
            found = visible.jobs(who, feature_set=name, version=version, status=status or None,
                                 limit=number * JOBS_PER_PAGE + 1)              # filtered, then cut
            shown = found[(number - 1) * JOBS_PER_PAGE:number * JOBS_PER_PAGE]
            sets = sorted(fs.ref for fs in readable_sets(who))
            filters = ("<form class='filters' action='/ui/jobs'>"
                       + _select("feature_set", "Feature set", feature_set, sets)
                       + _select("status", "Status", status or "", list(JOB_STATUSES))
                       + "<button>Filter</button> <a href='/ui/jobs'>clear</a></form>")
            actions = {job.id: _action(job) for job in shown if job_resource(job) is not None
                       and may(who, Action.MATERIALIZE, job_resource(job))}   # type: ignore[arg-type]
            notice = f"<p class='notice' role='status'>{escape(done)}</p>" if done else ""
            query = {k: v for k, v in (("feature_set", feature_set), ("status", status or "")) if v}
            pages = []
            if number > 1:
                pages.append(_link("/ui/jobs?" + urlencode({**query, "page_number": number - 1}), "← newer"))
            pages.append(f"<span>page {number}</span>")
            if len(found) > number * JOBS_PER_PAGE:
                pages.append(_link("/ui/jobs?" + urlencode({**query, "page_number": number + 1}), "older →"))
            going = any(not job.status.finished for job in shown)    # refresh only while something can change
            refreshing = "<p class='muted'>refreshes every 10 s while jobs are queued or running</p>" if going else ""
            return page("Jobs", who, f"<h1>Jobs</h1>{notice}{filters}{refreshing}"
                                     f"{jobs_chart(shown)}<nav class='pages' aria-label='job pages'>{''.join(pages)}"
                                     f"</nav>{_jobs_table(shown, actions)}", refresh=10 if going else None)

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

    # -- models and lineage ---------------------------------------------------------------------------------
    @app.get("/ui/models", response_class=HTMLResponse, include_in_schema=False)
    def models_page(request: Request) -> Response:
        def render(who: str) -> Response:
            rows, ids = [], []
            for model in store.list_models():
                if visible.model_readable(who, model):
                    # another store's feature sets have no page here: their names only
                    used = dict.fromkeys((f.feature_ref.store, f.feature_ref.feature_set_ref)
                                         for f in model.retrieval_spec.features)
                    sets = [escape(f"{other}/{ref}") if other else _link(f"/ui/feature-sets/{ref.name}/{ref.version}",
                                                                         str(ref))
                            for other, ref in used]
                    features = [escape(f.ref) if f.feature_ref.store else _link(
                        f"/ui/feature-sets/{f.feature_ref.feature_set}/{f.feature_ref.version}"
                        f"#feature-{f.feature_ref.feature}", f.ref) for f in model.retrieval_spec.features]
                    rows.append([escape(model.ref), escape(model.description or ""), ", ".join(sets),
                                 "<br>".join(features)])
                    ids.append(f"model-{model.name}-{model.version}")
            return page("Models", who, "<h1>Models</h1>" + _table(["model", "description", "feature sets",
                                                                   "features"], rows, ids=ids))

        return signed_in(request, render)

    @app.get("/ui/lineage", response_class=HTMLResponse, include_in_schema=False)
    def lineage_page(request: Request) -> Response:
        def render(who: str) -> Response:
            records = [r for r in store.registry.list_feature_sets()
                       if may(who, Action.READ_CATALOG, resource_of(r.asset.name, r.asset.version))]
            parents = {(r.asset.name, r.asset.version): _parent_of(r.spec) for r in records}

            def depth(key: tuple[str, str], seen: int = 0) -> int:
                parent = parents.get(key)
                return 0 if parent is None or parent not in parents or seen > 20 else 1 + depth(parent, seen + 1)

            entities = [e for e in store.list_entities() if may(who, Action.READ_CATALOG, Resource("entity", e.name))]
            nodes = [Node(f"e:{e.ref}", e.ref, f"/ui/entities/{e.name}/{e.version}", "entity", 0) for e in entities]
            edges: list[tuple[str, str]] = []
            shown_entities = {e.ref for e in entities}
            deepest = 0
            for r in records:
                key = (r.asset.name, r.asset.version)
                level = depth(key)
                deepest = max(deepest, level)
                nodes.append(Node(f"f:{r.asset.ref}", r.asset.ref, f"/ui/feature-sets/{key[0]}/{key[1]}",
                                  "derived" if level else "featureset", 1 + level))
                parent = parents[key]
                if parent is not None and parent in parents:
                    edges.append((f"f:{parent[0]}:{parent[1]}", f"f:{r.asset.ref}"))
                else:
                    edges += [(f"e:{e}", f"f:{r.asset.ref}") for e in r.asset.entities if e in shown_entities]
            models = [m for m in store.list_models() if visible.model_readable(who, m)]
            for m in models:
                nodes.append(Node(f"m:{m.ref}", m.ref, f"/ui/models#model-{m.name}-{m.version}", "model", 2 + deepest))
                for f in m.retrieval_spec.features:
                    if not f.feature_ref.store:
                        edges.append((f"f:{f.feature_ref.feature_set_ref}", f"m:{m.ref}"))
            edges = list(dict.fromkeys(edges))
            labels = {n.key: n for n in nodes}
            text = "".join(f"<li>{_link(labels[a].href, labels[a].label)} → {_link(labels[b].href, labels[b].label)}"
                           "</li>" for a, b in edges if a in labels and b in labels)
            legend = "".join(f"<span><i class='n-{k}' style='border:1px solid'></i>{label}</span>" for k, label in
                             (("entity", "entity"), ("featureset", "feature set"), ("derived", "derived feature set"),
                              ("model", "model")))
            body = ("<h1>Lineage</h1><p class='muted'>entities → feature sets → derived feature sets → models; "
                    "each box is a link</p>" + (lineage_graph(nodes, edges) or "<p class='muted'>nothing yet</p>")
                    + f"<p class='legend'>{legend}</p><h2>Edges</h2><ul>{text or '<li class=muted>none</li>'}</ul>")
            return page("Lineage", who, body)

        return signed_in(request, render)

    def error_page(request: Request, status: int, message: str) -> Response:
        title = "Not found" if status == 404 else "Error"
        return page(title, caller(request), f"<h1>{title}</h1><p class='error'>{escape(message)}</p>"
                                            "<p><a href='/ui'>Back to the catalog</a></p>", status=status)

    return error_page


#: rows a data preview shows at most, and its longest window
PREVIEW_ROWS = 100
PREVIEW_LONGEST = timedelta(days=31)
JOBS_PER_PAGE = 50
SHOWN_INTERVALS = 8                   # up to this many, the intervals' text table is open under the timeline
MOST_JOB_PAGES = 200                  # the newest 10,000 jobs the caller may read
JOB_STATUSES = ("Queued", "Running", "Completed", "Failed", "Cancelled")
#: no script runs on a page (nothing a user wrote can execute, even if escaping were missed); styles inline
_HEADERS = {"Content-Security-Policy": "default-src 'none'; style-src 'unsafe-inline'; img-src 'self'; "
                                       "form-action 'self'; frame-ancestors 'none'; base-uri 'none'",
            "X-Content-Type-Options": "nosniff", "Referrer-Policy": "same-origin"}


def _freshness_cell(freshness: Any) -> str:
    """A catalog cell: the feature set's freshness state (worst of its enabled stores), coloured."""
    if freshness is None:
        return "<span class='muted'>–</span>"
    state = freshness.state
    return f"<span class='fresh-{_css_word(state)}'>{escape(state)}</span>"


def _css_word(text: str) -> str:
    return "".join(c if c.isalnum() else "-" for c in text)


def _freshness_table(freshness: Any) -> str:
    rows = [[escape(f.store), _freshness_cell_state(f.state), _when(f.newest_event_time), _when(f.materialized_until),
             "–" if f.last_job_id is None else escape(f.last_job_id),
             _when(f.last_job_finished_at), _when(f.next_run), _when(f.stale_after)] for f in freshness.stores]
    return _table(["store", "state", "newest event time", "materialized until", "last successful job", "finished",
                   "next run", "stale after"], rows)


def _freshness_cell_state(state: str) -> str:
    return f"<span class='fresh-{_css_word(state)}'>{escape(state)}</span>"


def _statistics_table(statistics: Any) -> str:
    """Per feature: count, null %, min, max, mean and stddev over every window (merged exactly), and the
    approximate distinct count and a small histogram or the top values of the newest window (those do not
    merge across windows)."""
    summary, windows = statistics.summary, statistics.windows
    if summary is None or not windows:
        return ""
    newest = windows[-1]
    rows = []
    for f in summary.features:
        own = next((w for w in newest.features if w.name == f.name), None)
        shape = ("–" if own is None else histogram_svg(own.histogram) if own.histogram
                 else _top_values(own.top_values))
        distinct = "–" if own is None or own.distinct is None else f"≈{own.distinct:,}"
        rows.append([escape(f.name), escape(f.type.value), f"{f.count:,}", f"{f.null_percent:.1f} %",
                     _stat(f.min), _stat(f.max), _stat(f.mean), _stat(f.stddev), distinct, shape])
    span = f"{len(windows)} window(s), {summary.rows:,} rows, newest event {_when(summary.newest_event_time)}"
    if newest.sampled and newest.sample_rows:
        span += f"; sampled: {newest.sample_rows:,} rows"
    note = "" if len(windows) == 1 else (f"; distinct and distribution: the newest window "
                                         f"[{_when(newest.start)}, {_when(newest.end)})")
    return (f"<p class='muted'>{escape(span + note)}</p>"
            + _table(["feature", "type", "count", "null", "min", "max", "mean", "stddev", "distinct",
                      "distribution"], rows))


def _stat(value: Any) -> str:
    if value is None:
        return "–"
    if isinstance(value, float):
        return escape(f"{value:.6g}")
    if isinstance(value, datetime):
        return _when(value)
    return escape(str(value))


def _top_values(values: Any) -> str:
    if not values:
        return "<span class='muted'>–</span>"
    return "<br>".join(f"{escape(str(v.value))} <span class='muted'>({v.count:,})</span>" for v in values[:5])


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


def _path(part: str) -> str:
    return escape(quote(part, safe=""), quote=True)


def _tags(tags: dict[str, str]) -> str:
    return ", ".join(f"{k}={v}" for k, v in tags.items())


def _tag_list(tags: dict[str, str]) -> str:
    return "".join(f"<span class='tag'>{escape(k)}={escape(v)}</span>" for k, v in tags.items())


def _searchable(feature_set: FeatureSet) -> str:
    return " ".join([feature_set.name, feature_set.description or "", _tags(feature_set.tags)]).lower()


def _materialized(feature_set: FeatureSet) -> str:
    """Where the feature set is materialized (``offline + online``), empty when nowhere."""
    settings = feature_set.materialization_settings
    if settings is None:
        return ""
    return " + ".join(k for k, on in (("offline", settings.offline_enabled), ("online", settings.online_enabled))
                      if on)


def _parent_of(spec: dict[str, Any]) -> tuple[str, str] | None:
    """``(name, version)`` of the feature set a registered spec (as stored) derives from, if any."""
    source = spec.get("source") or {}
    if str(source.get("type", "")).lower() != "featureset":
        return None
    name, _, version = str(source.get("path") or "").strip().removeprefix("azureml:").partition(":")
    return (name, version) if name and version else None


def _version_order(version: str) -> tuple[int, str]:
    """A key ordering versions as numbers when they are numbers (``2`` before ``10``)."""
    return (int(version), version) if version.isdigit() else (1 << 62, version)


def _when(value: datetime | None) -> str:
    return "" if value is None else escape(value.strftime("%Y-%m-%d %H:%M"))


def _at(value: datetime | None) -> str:
    """A time in a table cell, kept on one line."""
    return "" if value is None else f"<span class='nowrap'>{_when(value)}</span>"


def _input_time(value: datetime) -> str:
    return value.strftime("%Y-%m-%dT%H:%M")


def _parse_time(text: str, field: str) -> datetime:
    try:
        return datetime.fromisoformat(text.strip())
    except ValueError:
        raise GristmillError(f"{field}: '{text}' is not a date and time; write it as 2024-01-31T00:00") from None


def _duration(seconds: float | None) -> str:
    if seconds is None:
        return ""
    if seconds < 60:
        return f"{seconds:.1f} s"
    minutes, rest = divmod(round(seconds), 60)
    return f"{minutes} min {rest} s" if minutes < 60 else f"{minutes // 60} h {minutes % 60} min"


def _cell(value: Any) -> str:
    if value is None:
        return ""
    if isinstance(value, float):
        return f"{value:.6g}"
    if isinstance(value, datetime):
        return value.strftime("%Y-%m-%d %H:%M:%S")
    text = str(value)
    return text if len(text) <= 200 else text[:199] + "…"


def _is_number(kind: Any) -> bool:
    import pyarrow as pa

    return bool(pa.types.is_integer(kind) or pa.types.is_floating(kind) or pa.types.is_decimal(kind))


def _select(name: str, label: str, chosen: str, options: Iterable[str]) -> str:
    items = "".join(f"<option{' selected' if o == chosen else ''}>{escape(o)}</option>" for o in options)
    return (f"<span class='field'><label for='f-{name}'>{escape(label)}</label><select id='f-{name}' name='{name}'>"
            f"<option value=''>any</option>{items}</select></span>")


def _table(header: list[str], rows: Iterable[list[str]], *, ids: list[str] | None = None,
           numeric: Iterable[int] = (), css: str = "") -> str:
    right = set(numeric)
    body = "".join(
        f"<tr{f' id={chr(39)}{escape(ids[n], quote=True)}{chr(39)}' if ids else ''}>"
        + "".join(f"<td class=num>{cell}</td>" if i in right else f"<td>{cell}</td>" for i, cell in enumerate(row))
        + "</tr>" for n, row in enumerate(rows))
    head = "".join(f"<th scope='col'{' class=num' if i in right else ''}>{escape(h)}</th>"
                   for i, h in enumerate(header))
    empty = f"<tr><td colspan={len(header)} class=muted>none</td></tr>"
    table = f"<table class='{css}'>" if css else "<table>"
    return f"<div class='scroll'>{table}<thead><tr>{head}</tr></thead><tbody>{body or empty}</tbody></table></div>"


def _facts(pairs: Iterable[tuple[str, str]]) -> str:
    return "<dl class='facts'>" + "".join(f"<dt>{escape(k)}</dt><dd>{v}</dd>" for k, v in pairs) + "</dl>"


def _source_facts(spec: FeatureSetSpec) -> str:
    source = spec.source
    pairs = [("type", escape(source.type.value))]
    if source.path:
        pairs.append(("path", f"<code>{escape(source.path)}</code>"))
    pairs.append(("timestamp column", escape(spec.timestamp_column) + (
        f" (format <code>{escape(source.timestamp_column.format)}</code>)"
        if source.timestamp_column and source.timestamp_column.format else "")))
    pairs += [("source delay", escape(str(spec.source_delay))),
              ("source lookback", escape(str(spec.source_lookback)) if spec.source_lookback else "–"),
              ("temporal join lookback", escape(str(spec.temporal_join_lookback)) if spec.temporal_join_lookback
               else "–")]
    if source.source_process_code:
        pairs.append(("source code", f"<code>{escape(source.source_process_code.process_class)}</code> in "
                                     f"<code>{escape(source.source_process_code.path)}</code>"))
    if source.kwargs:
        pairs.append(("arguments", _tag_list(source.kwargs)))
    return _facts(pairs)


def _transformation(spec: FeatureSetSpec, code_files: dict[str, str]) -> str:
    """The transformation itself: DSL windows as a table, SQL and Python highlighted (the registry's copy)."""
    transformation = spec.feature_transformation
    parts = []
    if transformation is None:
        parts.append("<p class='muted'>none: the source's columns are the features</p>")
    elif transformation.transformation_expressions:
        parts.append("<p>rolling windows (DSL)</p>" + _table(
            ["feature", "aggregation", "source column", "window"],
            [[escape(w.feature_name), escape(w.aggregation.value), escape(w.source_column or "–"),
              escape(str(w.window))] for w in transformation.transformation_expressions]))
    elif transformation.transformation_sql:
        parts.append("<p>SQL</p>" + code_block(transformation.transformation_sql, language="sql"))
    elif transformation.transformation_code:
        parts.append(f"<p>Python: <code>{escape(transformation.transformation_code.transformer_class)}</code></p>")
    for path, text in sorted(code_files.items()):
        parts.append(f"<h3><code>{escape(path)}</code></h3>"
                     + code_block(text, language="python" if path.endswith(".py") else "sql"))
    return "".join(parts)


def _settings(settings: dict[str, Any]) -> str:
    """Materialization settings as the caller may see them (secrets already redacted)."""
    schedule = settings.get("schedule")
    when = "–"
    if schedule:
        when = escape(f"every {schedule.get('interval', 1)} {schedule.get('frequency')}(s)"
                      + (f" from {schedule['start_time']}" if schedule.get("start_time") else "")
                      + f" ({schedule.get('time_zone', 'UTC')})")
    pairs = [("offline store", "yes" if settings.get("offline_enabled") else "no"),
             ("online store", "yes" if settings.get("online_enabled") else "no"), ("schedule", when)]
    for key in ("notification", "resource", "spark_configuration"):
        if settings.get(key):
            pairs.append((key.replace("_", " "), f"<code>{escape(json.dumps(settings[key], sort_keys=True))}</code>"))
    return _facts(pairs)


def _spec_text(asset: dict[str, Any], record: Any) -> str:
    """A version as text for the side-by-side diff: its asset fields, its spec and its code (as registered)."""
    parts = [yaml.safe_dump({k: v for k, v in asset.items() if k not in ("name", "version")}, sort_keys=False),
             yaml.safe_dump({"spec": record.spec}, sort_keys=False)]
    parts += [f"# {path}\n{text}" for path, text in sorted(record.code_files.items())]
    return "\n".join(parts)


def _backfill_form(feature_set: FeatureSet) -> str:
    settings = feature_set.materialization_settings
    stores = [k for k, on in (("offline", settings and settings.offline_enabled),
                              ("online", settings and settings.online_enabled)) if on]
    boxes = "".join(f"<label><span><input type='checkbox' name='stores' value='{k}' checked> {k}</span></label>"
                    for k in stores)
    return (f"<h2 id='backfill'>Backfill</h2><form class='stack' method='post' action='/ui/feature-sets/"
            f"{_path(feature_set.name)}/{_path(feature_set.version)}/backfill'>"
            "<label>from<input type='datetime-local' name='start' required></label>"
            "<label>to<input type='datetime-local' name='end' required></label>"
            f"<fieldset><legend>stores</legend>{boxes or '<span class=muted>none enabled</span>'}</fieldset>"
            "<button>Queue backfill</button></form><p class='muted'>the server's backfill workers run the "
            "jobs; they appear on the jobs page</p>")


def _action(job: Any) -> str:
    """A cancel button for a queued or running job, a retry button for a failed or cancelled one."""
    verb = {"Queued": "cancel", "Running": "cancel", "Failed": "retry", "Cancelled": "retry"}.get(job.status.value)
    if verb is None:
        return ""
    return (f"<form method='post' action='/ui/jobs/{escape(job.id, quote=True)}/{verb}' style='margin:0'>"
            f"<button aria-label='{verb} job {escape(job.id, quote=True)}'>{verb.capitalize()}</button></form>")


def _jobs_table(jobs: list[Any], actions: dict[str, str] | None = None) -> str:
    header = ["job", "feature set", "window", "stores", "status", "started", "finished", "duration", "rows read",
              "rows written", "cost (CPU s)", "error"]
    rows = [[escape(j.id), _link(f"/ui/feature-sets/{j.feature_set}/{j.version}", j.ref),
             f"{_at(j.start)} – {_at(j.end)}", escape("+".join(j.stores)),
             f"<span class='{j.status.value}'>{j.status.value}</span>", _at(j.started_at), _at(j.finished_at),
             _duration(j.wall_seconds), f"{j.rows_read:,}", f"{j.rows_written:,}",
             f"{j.cpu_seconds:.2f}", escape(j.error or "")] for j in jobs]
    if actions:
        header.append("action")
        for row, job in zip(rows, jobs, strict=True):
            row.append(actions.get(job.id, ""))
    return _table(header, rows, numeric=[7, 8, 9, 10], css="jobs")
