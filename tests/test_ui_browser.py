"""The web UI in a real browser: Playwright driving the system's Chromium (``/usr/bin/chromium``; ``.ci/run``
installs it) against a store served over real HTTP. Signs in, visits every page as an Owner and as a
scoped Reader, uses the filters, queues a backfill from the form, retries a failed job, checks the numbers
of the timeline and the jobs table for a small known data set, and that nothing a user wrote runs.

Screenshots of every page land in ``$GRISTMILL_UI_SCREENSHOTS`` (or a temporary folder the test prints)."""

from __future__ import annotations

import os
import re
import time
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

import pandas as pd
import pytest
import yaml
from app_server import served
from playwright.sync_api import Browser, Page, expect, sync_playwright

import gristmill as gm
from gristmill.auth import AccessRecords
from gristmill.server.app import create_app

CHROMIUM = "/usr/bin/chromium"
NOW = datetime(2024, 1, 10)
EVIL_DESCRIPTION = "<script>alert('description')</script>"
EVIL_TAG = "\"><img src=x onerror=alert('tag')>"
TRIPLER = """
class Tripler:
    def transform(self, frame):
        out = frame[["acct", "ts"]].copy()
        out["tripled"] = frame["f1"] * 3
        return out
"""


@dataclass
class Site:
    url: str
    store: gm.FeatureStore
    tokens: dict[str, str]
    browser: Browser
    shots: Path
    failed_job: str

    def page(self, who: str, *, width: int = 1200) -> Page:
        """A fresh browser context signed in as ``who`` through the sign-in form."""
        context = self.browser.new_context(viewport={"width": width, "height": 900})
        context.set_default_timeout(10_000)
        page = context.new_page()
        page.goto(f"{self.url}/ui/login")
        page.get_by_label("Token").fill(self.tokens[who])
        page.get_by_role("button", name="Sign in").click()
        page.wait_for_url(f"{self.url}/ui")
        return page

    def shot(self, page: Page, name: str) -> None:
        page.screenshot(path=str(self.shots / f"{name}.png"), full_page=True)


def _feature_set(repo: Path, name: str, spec: dict[str, Any], *, version: str = "1", code: dict[str, str] | None = None,
                 **asset: Any) -> None:
    folder = repo / f"{name}_v{version}"
    (folder / "spec").mkdir(parents=True)
    (folder / "FeatureSet.yaml").write_text(yaml.safe_dump({
        "name": name, "version": version, "specification": {"path": "./spec"}, "entities": ["account:1"], **asset}))
    (folder / "spec" / "FeatureSetSpec.yaml").write_text(yaml.safe_dump(spec))
    for path, text in (code or {}).items():
        (folder / "spec" / path).parent.mkdir(parents=True, exist_ok=True)
        (folder / "spec" / path).write_text(text)


def _build_store(root: Path) -> tuple[gm.FeatureStore, dict[str, str], str]:
    """Entity account:1; fs1:1 (3 rows, backfilled over [2024-01-01, 2024-01-10)) and fs1:2; spend:1 (DSL
    windows, scheduled), doubled:1 (SQL, derived from fs1:1), coded:1 (Python), fs2:1 (hostile description
    and tag); model m1:1; an Owner, a Reader of fs1 only and a Materializer; one failed job of fs1:1."""
    data = root / "data" / "rows.parquet"
    data.parent.mkdir(parents=True)
    pd.DataFrame({"acct": ["A", "A", "B"],
                  "ts": pd.Series([datetime(2024, 1, 8), datetime(2024, 1, 9, 12), datetime(2024, 1, 9)]).astype(
                      "datetime64[us]"),
                  "f1": [3.0, 5.0, 9.0]}).to_parquet(data)
    source = {"type": "parquet", "path": str(data), "timestamp_column": {"name": "ts"}}
    index = [{"name": "acct", "type": "string"}]
    both = {"offline_enabled": True, "online_enabled": True}
    repo = root / "repo"
    repo.mkdir()
    (repo / "account.yaml").write_text(yaml.safe_dump({"name": "account", "version": "1", "index_columns": index,
                                                       "description": "A card account"}))
    _feature_set(repo, "fs1", {"source": source, "index_columns": index, "temporal_join_lookback": {"days": 3650},
                               "features": [{"name": "f1", "type": "double", "description": "the amount"}]},
                 description="Raw amounts per account", tags={"team": "risk"}, materialization_settings=both)
    _feature_set(repo, "spend", {
        "source": source, "index_columns": index, "features": [{"name": "spend_3d", "type": "double"}],
        "feature_transformation": {"transformation_expressions": [{
            "transformation_type": "window", "feature_name": "spend_3d", "source_column": "f1",
            "aggregation": "sum", "window": {"days": 3}}]}},
        description="Spend over 3 days", tags={"team": "growth"}, stage="Production",
        materialization_settings={"offline_enabled": True, "schedule": {"frequency": "day", "interval": 1}})
    _feature_set(repo, "doubled", {
        "source": {"type": "featureset", "path": "fs1:1"}, "index_columns": index,
        "features": [{"name": "doubled", "type": "double"}],
        "feature_transformation": {"transformation_sql": "SELECT acct, ts, f1 * 2 AS doubled FROM source"}},
        description="Twice the amount")
    _feature_set(repo, "coded", {
        "source": source, "index_columns": index, "features": [{"name": "tripled", "type": "double"}],
        "feature_transformation": {"transformation_code": {"path": "./code", "transformer_class": "tripler.Tripler"}}},
        code={"code/tripler.py": TRIPLER}, description="Three times the amount")
    _feature_set(repo, "fs2", {"source": source, "index_columns": index,
                               "features": [{"name": "f1", "type": "double"}]},
                 description=EVIL_DESCRIPTION, tags={"note": EVIL_TAG},
                 materialization_settings={"offline_enabled": True})
    store = gm.FeatureStore.init(root / "store", clock=lambda: NOW)
    plan = store.apply(repo)
    assert plan.ok, str(plan)
    second = root / "repo2"
    second.mkdir()
    (second / "account.yaml").write_text((repo / "account.yaml").read_text())
    _feature_set(second, "fs1", {"source": source, "index_columns": index, "temporal_join_lookback": {"days": 30},
                                 "features": [{"name": "f1", "type": "double", "description": "the amount"}]},
                 version="2", description="Raw amounts, 30-day lookback", tags={"team": "risk"})
    assert store.apply(second).ok
    [job] = store.backfill("fs1", 1, start="2024-01-01", end="2024-01-10")
    assert job.status.value == "Completed", job.error
    records = store.materializer.records
    failed = records.create_job("fs1", "1", start=datetime(2024, 1, 9), end=datetime(2024, 1, 10), stores=["offline"])
    records.start_job(failed.id)
    records.fail_job(failed.id, "the source was unreachable")
    store.register_model("m1", 1, ["fs1:1:f1", "doubled:1:doubled"], description="churn model")
    access = AccessRecords(records)
    tokens = {}
    for name, role, scope in (("owner", "Owner", "store"), ("reader", "Reader", "featureset:fs1"),
                              ("operator", "Materializer", "featureset:fs1")):
        access.add_principal(name)
        access.grant(name, role, scope=scope, by="test")
        tokens[name] = access.create_token(name)
    return store, tokens, failed.id


@pytest.fixture(scope="module")
def site(tmp_path_factory: pytest.TempPathFactory, pytestconfig: pytest.Config) -> Iterator[Site]:
    assert Path(CHROMIUM).exists(), f"{CHROMIUM} is missing: apt-get install -y chromium (.ci/run does)"
    store, tokens, failed = _build_store(tmp_path_factory.mktemp("ui-browser"))
    shots = Path(os.environ.get("GRISTMILL_UI_SCREENSHOTS") or tmp_path_factory.mktemp("ui-screenshots"))
    shots.mkdir(parents=True, exist_ok=True)
    terminal = pytestconfig.pluginmanager.get_plugin("terminalreporter")
    if terminal is not None:                                    # shown even when output is captured
        terminal.write_line(f"\nweb UI screenshots: {shots}")
    print(f"web UI screenshots: {shots}")
    with served(create_app(store)) as url, sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox"])
        try:
            yield Site(url, store, tokens, browser, shots, failed)
        finally:
            browser.close()
            store.close()


def _no_sideways_scroll(page: Page) -> None:
    assert page.evaluate("document.documentElement.scrollWidth <= window.innerWidth"), page.url


def test_every_page_as_an_owner(site: Site) -> None:
    page = site.page("owner")
    hosts: set[str] = set()
    page.on("request", lambda request: hosts.add(urlparse(request.url).netloc))
    # the catalog: every feature set, filters, entities
    expect(page.get_by_role("heading", name="Catalog")).to_be_visible()
    for ref in ("fs1:1", "fs1:2", "spend:1", "doubled:1", "coded:1", "fs2:1"):
        expect(page.get_by_role("link", name=ref, exact=True)).to_be_visible()
    site.shot(page, "catalog")
    # keyboard: the first Tab reaches the skip link, which moves to the content
    page.keyboard.press("Tab")
    assert page.evaluate("document.activeElement.textContent") == "Skip to content"
    page.get_by_role("link", name="account:1").first.click()
    expect(page.get_by_role("heading", name="Entity account:1")).to_be_visible()
    expect(page.get_by_role("cell", name="acct", exact=True)).to_be_visible()
    assert page.get_by_role("link", name="spend:1").is_visible()       # keyed by it
    site.shot(page, "entity")
    # a feature set with DSL windows, a schedule and a backfill form
    page.goto(f"{site.url}/ui/feature-sets/spend/1")
    expect(page.get_by_role("cell", name="spend_3d").first).to_be_visible()
    expect(page.get_by_text("every 1 day(s)")).to_be_visible()
    expect(page.get_by_role("button", name="Queue backfill")).to_be_visible()
    # SQL and Python, highlighted on the server
    page.goto(f"{site.url}/ui/feature-sets/doubled/1")
    assert page.locator(".code .k, .code .kn").count() > 0                 # keywords in coloured spans
    expect(page.locator(".code")).to_contain_text("SELECT acct, ts, f1 * 2 AS doubled FROM source")
    expect(page.get_by_text("derived from")).to_be_visible()
    site.shot(page, "feature-set-sql")
    page.goto(f"{site.url}/ui/feature-sets/coded/1")
    expect(page.locator(".code")).to_contain_text("class Tripler")
    assert page.locator(".code .nc").count() == 1                           # the class name, highlighted
    # fs1: timeline, preview, versions side by side, lineage
    page.goto(f"{site.url}/ui/feature-sets/fs1/1")
    page.get_by_label("from", exact=True).first.fill("2024-01-09T00:00")
    page.get_by_label("to", exact=True).first.fill("2024-01-10T00:00")
    page.get_by_role("button", name="Preview").click()
    expect(page.get_by_text("2 row(s) of [2024-01-09 00:00, 2024-01-10 00:00)")).to_be_visible()
    cells = page.locator("#preview ~ .tall tbody tr").first.locator("td").all_inner_texts()
    assert cells == ["A", "2024-01-09 12:00:00", "5"], cells
    page.goto(f"{site.url}/ui/feature-sets/fs1/1?preview_start=2024-01-09T00:00&preview_end=2024-01-01T00:00")
    expect(page.get_by_role("alert")).to_have_text("preview_end: must be after preview_start; pick a later 'to'")
    page.get_by_label("with version").select_option("2")
    page.get_by_role("button", name="Compare").click()
    expect(page.locator("table.diff td.changed").first).to_be_visible()
    assert page.locator("table.diff td.changed", has_text="days: 30").count() == 1
    expect(page.get_by_role("link", name="m1:1")).to_be_visible()
    site.shot(page, "feature-set")
    # jobs, lineage, models, API docs
    page.goto(f"{site.url}/ui/jobs")
    expect(page.locator("figure.chart svg rect").first).to_be_attached()
    site.shot(page, "jobs")
    page.goto(f"{site.url}/ui/lineage")
    graph = page.locator("svg.lineage")
    for label in ("account:1", "fs1:1", "doubled:1", "m1:1"):
        expect(graph.locator("a", has_text=label)).to_be_attached()
    graph.locator("a", has_text="doubled:1").click()
    page.wait_for_url(f"{site.url}/ui/feature-sets/doubled/1")
    page.goto(f"{site.url}/ui/lineage")
    site.shot(page, "lineage")
    page.goto(f"{site.url}/ui/models")
    page.get_by_role("link", name="doubled:1:doubled").click()
    page.wait_for_url(re.compile(r".*/ui/feature-sets/doubled/1#feature-doubled$"))
    page.goto(f"{site.url}/ui/models")
    site.shot(page, "models")
    page.goto(f"{site.url}/docs")
    expect(page.locator(".swagger-ui")).to_be_visible()
    page.wait_for_load_state("networkidle")
    assert hosts == {urlparse(site.url).netloc}, hosts                     # nothing from another site
    page.context.close()


def test_every_page_fits_400_pixels(site: Site) -> None:
    page = site.page("owner", width=400)
    for path in ("/ui", "/ui/entities/account/1", "/ui/feature-sets/fs1/1?compare=2&preview_start=2024-01-09T00:00"
                 "&preview_end=2024-01-10T00:00", "/ui/feature-sets/doubled/1", "/ui/feature-sets/coded/1",
                 "/ui/jobs", "/ui/lineage", "/ui/models"):
        page.goto(site.url + path)
        _no_sideways_scroll(page)
    site.shot(page, "models-400px")
    page.goto(f"{site.url}/ui/feature-sets/fs1/1")
    site.shot(page, "feature-set-400px")
    page.context.close()


def test_a_scoped_reader_sees_only_its_feature_sets(site: Site) -> None:
    page = site.page("reader")
    links = page.locator("main table a").all_inner_texts()
    assert {"fs1:1", "fs1:2"} <= set(links) and not {"spend:1", "doubled:1", "fs2:1"} & set(links)
    site.shot(page, "catalog-reader")
    hidden = page.goto(f"{site.url}/ui/feature-sets/fs2/1")
    hidden_text = page.locator("main").inner_text()
    missing = page.goto(f"{site.url}/ui/feature-sets/fs9/1")
    assert hidden is not None and missing is not None and hidden.status == missing.status == 404
    assert hidden_text == page.locator("main").inner_text().replace("fs9", "fs2")
    assert page.goto(f"{site.url}/ui/entities/account/1").status == 404      # entity:account is not in its scope
    page.goto(f"{site.url}/ui/feature-sets/fs1/1")
    expect(page.get_by_role("button", name="Preview")).to_be_visible()       # a Reader reads data
    assert page.get_by_role("button", name="Queue backfill").count() == 0    # but does not materialize
    expect(page.get_by_text("no registered model uses it")).to_be_visible()  # m1 also reads doubled
    page.goto(f"{site.url}/ui/jobs")
    assert page.get_by_role("button", name=re.compile("Retry|Cancel")).count() == 0
    assert set(page.locator("main table tbody td:nth-child(2)").all_inner_texts()) == {"fs1:1"}
    page.goto(f"{site.url}/ui/lineage")
    assert set(page.locator("svg.lineage a text").all_text_contents()) == {"fs1:1", "fs1:2"}
    page.goto(f"{site.url}/ui/models")
    assert "m1:1" not in page.locator("main").inner_text()
    site.shot(page, "jobs-reader")
    page.context.close()
    # a Materializer may queue jobs but not read data: no preview
    operator = site.page("operator")
    operator.goto(f"{site.url}/ui/feature-sets/fs1/1")
    expect(operator.get_by_role("button", name="Queue backfill")).to_be_visible()
    assert operator.get_by_role("button", name="Preview").count() == 0
    preview = operator.goto(f"{site.url}/ui/feature-sets/fs1/1?preview_start=2024-01-09T00:00"
                            "&preview_end=2024-01-10T00:00")
    assert preview is not None and preview.status == 200 and "row(s) of" not in operator.content()
    operator.context.close()


def test_filters_narrow_the_catalog_and_the_jobs(site: Site) -> None:
    page = site.page("owner")

    def shown() -> set[str]:
        return set(page.locator("main table").first.locator("tbody td:first-child a").all_inner_texts())

    page.get_by_label("Tag", exact=True).select_option("team=growth")
    page.get_by_role("button", name="Filter").click()
    assert shown() == {"spend:1"}
    page.goto(f"{site.url}/ui")
    page.get_by_label("Stage", exact=True).select_option("production")
    page.get_by_role("button", name="Filter").click()
    assert shown() == {"spend:1"}
    page.goto(f"{site.url}/ui")
    page.get_by_label("Materialized", exact=True).select_option("no")
    page.get_by_role("button", name="Filter").click()
    assert shown() == {"doubled:1", "coded:1", "fs1:2"}
    page.goto(f"{site.url}/ui")
    page.get_by_label("Entity", exact=True).select_option("account:1")
    page.get_by_label("Search").fill("three times")
    page.get_by_role("button", name="Filter").click()
    assert shown() == {"coded:1"}
    page.goto(f"{site.url}/ui?q=tripled")                                      # a feature's name finds its set
    assert shown() == {"coded:1"} and page.get_by_role("link", name="coded:1:tripled").is_visible()
    page.goto(f"{site.url}/ui/jobs")
    page.get_by_label("Status", exact=True).select_option("Failed")
    page.get_by_role("button", name="Filter").click()
    statuses = page.locator("main table tbody td:nth-child(5)").all_inner_texts()
    assert statuses and set(statuses) == {"Failed"}
    page.get_by_label("Feature set", exact=True).select_option("spend:1")
    page.get_by_label("Status", exact=True).select_option("")
    page.get_by_role("button", name="Filter").click()
    assert set(page.locator("main table tbody td:nth-child(2)").all_inner_texts()) <= {"spend:1", "none"}
    page.context.close()


def test_the_timeline_and_the_jobs_table_show_the_numbers(site: Site) -> None:
    page = site.page("owner")
    page.goto(f"{site.url}/ui/feature-sets/fs1/1")
    titles = page.locator("svg.timeline rect title").all_text_contents()
    # the backfill made [01-01, 01-10) Complete in both stores; the failed job left its day Incomplete offline
    assert titles == ["offline: 2024-01-01 00:00 – 2024-01-09 00:00 Complete",
                      "offline: 2024-01-09 00:00 – 2024-01-10 00:00 Incomplete",
                      "online: 2024-01-01 00:00 – 2024-01-10 00:00 Complete"]
    widths = page.locator("svg.timeline rect").evaluate_all("rs => rs.map(r => Number(r.getAttribute('width')))")
    assert widths[0] == pytest.approx(8 * widths[1], rel=0.01)                  # 8 days against 1
    assert widths[2] == pytest.approx(9 * widths[1], rel=0.01)
    failed = page.locator("svg.timeline a", has=page.locator("rect.s-Incomplete"))
    failed.focus()                                             # reachable with the keyboard, window in words
    assert failed.evaluate("a => a === document.activeElement")
    assert failed.get_attribute("aria-label") == "offline: 2024-01-09 00:00 – 2024-01-10 00:00 Incomplete"
    page.keyboard.press("Enter")                               # (or a tap) goes to its row in the text table
    page.wait_for_url(re.compile(r".*#interval-offline-1$"))
    expect(page.locator("tr:target")).to_have_text(re.compile("2024-01-09 00:00.*2024-01-10 00:00.*Incomplete"))
    [job] = [j for j in site.store.list_jobs(feature_set="fs1", version=1) if j.status.value == "Completed"
             and j.start == datetime(2024, 1, 1)]
    # 3 rows read; written: the 3 rows offline and the newest row of each of the 2 accounts online
    assert (job.rows_read, job.rows_written, job.online.keys_written) == (3, 5, 2)
    page.goto(f"{site.url}/ui/jobs?feature_set=fs1:1&status=Completed")
    row = page.locator("main table tbody tr", has_text=job.id)
    cells = row.locator("td").all_inner_texts()
    assert cells[2] == "2024-01-01 00:00 – 2024-01-10 00:00" and cells[4] == "Completed"
    assert cells[8:10] == ["3", "5"] and cells[10] == f"{job.cpu_seconds:.2f}"
    assert re.fullmatch(r"\d+\.\d s", cells[7]), cells[7]
    chart = page.locator("figure.chart svg rect title", has_text=f"job {job.id}")
    assert chart.count() == 2                                  # one bar of duration, one of rows
    assert ": 5;" in (chart.nth(1).text_content() or "")
    page.context.close()


def test_a_backfill_from_the_form_and_a_retry(site: Site) -> None:
    page = site.page("owner")
    page.goto(f"{site.url}/ui/feature-sets/spend/1")
    form = page.locator("form", has=page.get_by_role("button", name="Queue backfill"))
    form.get_by_label("from").fill("2024-01-05T00:00")
    form.get_by_label("to").fill("2024-01-10T00:00")
    form.get_by_role("button", name="Queue backfill").click()
    page.wait_for_url(re.compile(r".*/ui/jobs\?feature_set=spend"))
    notice = page.get_by_role("status").inner_text()
    [job_id] = re.findall(r"job\(s\) (\w+)", notice)
    deadline = time.monotonic() + 20
    while "Completed" not in page.locator("main table tbody tr", has_text=job_id).inner_text():
        assert time.monotonic() < deadline, page.locator("main table").inner_text()
        time.sleep(0.2)
        page.reload()
    site.shot(page, "jobs-after-backfill")
    page.goto(f"{site.url}/ui/jobs?status=Failed")
    page.get_by_role("button", name=f"retry job {site.failed_job}").click()
    page.wait_for_url(re.compile(r".*/ui/jobs\?done="))
    expect(page.get_by_role("status")).to_contain_text(f"retry of job {site.failed_job} started as job")
    retry_id = re.findall(r"as job (\w+)", page.get_by_role("status").inner_text())[0]
    expect(page.locator("main table tbody tr", has_text=retry_id)).to_be_visible()
    page.context.close()


def test_nothing_a_user_wrote_runs(site: Site) -> None:
    page = site.page("owner")
    dialogs: list[str] = []
    page.on("dialog", lambda dialog: (dialogs.append(dialog.message), dialog.dismiss()))
    page.goto(f"{site.url}/ui?q=fs2")
    expect(page.get_by_text(EVIL_DESCRIPTION).first).to_be_visible()
    page.goto(f"{site.url}/ui/feature-sets/fs2/1")
    expect(page.get_by_text(EVIL_DESCRIPTION)).to_be_visible()
    expect(page.get_by_text(f"note={EVIL_TAG}")).to_be_visible()
    assert page.locator("main img, main script").count() == 0
    page.goto(f"{site.url}/ui/lineage")
    page.goto(f"{site.url}/ui/jobs")
    site.shot(page, "feature-set-hostile-text")
    assert dialogs == []
    page.context.close()


def test_statistics_and_freshness_show_the_numbers(site: Site) -> None:
    """fs1:1's jobs recorded statistics of the rows they wrote (f1: 3, 5, 9 over the whole backfill; other tests
    re-run its last day, whose statistics then replace the overlapping window's): the page shows the SDK's
    numbers (exact values tested in tests/jobs/test_statistics.py); freshness per store, and in the catalog."""
    page = site.page("reader")
    for _ in range(10):     # a backfill of another test may still finish meanwhile: page and SDK read together
        page.goto(f"{site.url}/ui/feature-sets/fs1/1")
        row = page.locator("#statistics ~ div table tbody tr", has_text="f1").first
        cells = row.locator("td").all_inner_texts()
        recorded = site.store.feature_statistics("fs1", 1)
        f1 = recorded.summary.feature("f1")
        newest = recorded.windows[-1].feature("f1")
        if cells[2] == str(f1.count):
            break
        time.sleep(0.5)
    assert f1.count in (2, 3) and f1.max == 9.0
    assert cells[:8] == ["f1", "double", str(f1.count), "0.0 %", f"{f1.min:.6g}", "9", f"{f1.mean:.6g}",
                         f"{f1.stddev:.6g}"], cells
    assert cells[8] == f"≈{newest.distinct}"
    bars = row.locator("svg.histogram rect.bin")
    counts = [int((t or "").rsplit(": ", 1)[1]) for t in bars.locator("title").all_text_contents()]
    assert sum(counts) == newest.count and bars.count() >= 2
    freshness = page.locator("#freshness ~ div table").first
    expect(freshness.locator("tbody tr", has_text="online")).to_contain_text("not scheduled")
    expect(freshness.locator("tbody tr", has_text="online")).to_contain_text("2024-01-09 12:00")  # newest event
    page.goto(f"{site.url}/ui")
    expect(page.locator("main table tbody tr", has_text="fs1:1").first).to_contain_text("not scheduled")
    page.context.close()
