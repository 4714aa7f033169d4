"""Webhook URLs and e-mail addresses are secrets: redacted to Readers over real HTTP against ``gristmill
serve`` (SQLite and PostgreSQL registries), by ``gristmill show`` unless asked, in the plan and in the
``gristmill.notify`` log; ``${NAME}`` references resolve from the environment only when sending; a webhook's
``user:password@`` is sent as basic authentication (a real local HTTP server checks the header)."""

from __future__ import annotations

import base64
import logging
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any, ClassVar

import pytest
import yaml
from cli_support import assert_ok, gristmill
from serve_support import REGISTRIES, add_principals, make_store, registry_of, serve

import gristmill as gm

SECRET_HOOK = "https://alice:s3cr3t-pw@hooks.example.com/T0/B1?token=s3cr3t-token"
NOTIFICATION = {"email_on": ["JobFailed"], "emails": ["ops.lead@example.com", "${ONCALL_EMAIL}"],
                "webhooks": [SECRET_HOOK, "${HOOK_URL}"]}
SECRETS = ("s3cr3t", "alice", "ops.lead", "T0/B1")


@pytest.mark.parametrize("registry", REGISTRIES)
def test_readers_see_notification_settings_redacted(tmp_path: Path, request: pytest.FixtureRequest,
                                                    registry: str) -> None:
    store = make_store(tmp_path, registry=registry_of(request, registry), settings={"notification": NOTIFICATION})
    tokens = add_principals(store)
    with serve(store, tokens) as server:
        for who in ("reader", "materializer"):
            client = server.client(who)
            listed = client.get("/v1/feature-sets")
            one = client.get("/v1/feature-sets/fs1/1")
            assert listed.status_code == one.status_code == 200
            for answer in (listed, one):
                assert not [s for s in SECRETS if s in answer.text], (who, answer.text)
            notification = one.json()["materialization_settings"]["notification"]
            assert notification == {"email_on": ["jobfailed"], "emails": ["…@example.com", "${ONCALL_EMAIL}"],
                                    "webhooks": ["https://hooks.example.com/…", "${HOOK_URL}"]}
            page = server.browser(who).get("/ui/feature-sets/fs1/1")
            assert page.status_code == 200 and not [s for s in SECRETS if s in page.text]
        owner = server.client("owner").get("/v1/feature-sets/fs1/1").json()
        assert owner["materialization_settings"]["notification"]["webhooks"] == [SECRET_HOOK, "${HOOK_URL}"]
        assert owner["materialization_settings"]["notification"]["emails"][0] == "ops.lead@example.com"
        # the connected SDK gets what its principal may see
        remote = gm.FeatureStore.connect(server.url, token=tokens["reader"])
        hooks = remote.get_feature_set("fs1", 1).materialization_settings.notification.webhooks
        assert hooks == ["https://hooks.example.com/…", "${HOOK_URL}"]


def test_show_redacts_unless_asked(tmp_path: Path) -> None:
    store = make_store(tmp_path, settings={"notification": NOTIFICATION})
    shown = gristmill("show", "fs1:1", "--store", store.path)
    assert_ok(shown)
    assert not [s for s in SECRETS if s in shown.stdout], shown.stdout
    notification = yaml.safe_load(shown.stdout)["materialization_settings"]["notification"]
    assert notification["webhooks"] == ["https://hooks.example.com/…", "${HOOK_URL}"]
    full = gristmill("show", "fs1:1", "--show-secrets", "--store", store.path)
    assert_ok(full)
    assert yaml.safe_load(full.stdout)["materialization_settings"]["notification"]["webhooks"][0] == SECRET_HOOK


def test_the_plan_shows_no_secrets_and_notes_missing_variables(tmp_path: Path, monkeypatch: pytest.MonkeyPatch
                                                               ) -> None:
    monkeypatch.delenv("HOOK_URL", raising=False)
    monkeypatch.delenv("ONCALL_EMAIL", raising=False)
    store = make_store(tmp_path)
    repo = tmp_path / "repo"
    asset = yaml.safe_load((repo / "fs" / "FeatureSet.yaml").read_text())
    asset["materialization_settings"]["notification"] = NOTIFICATION
    (repo / "fs" / "FeatureSet.yaml").write_text(yaml.safe_dump(asset))
    text = "\n".join(store.plan(repo).lines())
    assert not [s for s in SECRETS if s in text], text
    assert "https://hooks.example.com/…" in text
    assert ("note: notification: environment variable HOOK_URL, ONCALL_EMAIL is not set here; set it where jobs "
            "run") in text


class _Hook(BaseHTTPRequestHandler):
    received: ClassVar[list[dict[str, Any]]] = []
    status: ClassVar[int] = 200

    def do_POST(self) -> None:
        self.rfile.read(int(self.headers["Content-Length"]))
        type(self).received.append({"path": self.path, "authorization": self.headers.get("Authorization")})
        self.send_response(type(self).status if self.headers.get("Authorization") else 401)
        self.end_headers()

    def log_message(self, *args: Any) -> None:
        pass


@pytest.fixture
def hook() -> Iterator[tuple[int, type[_Hook]]]:
    handler = type("Hook", (_Hook,), {"received": [], "status": 200})
    server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield server.server_address[1], handler
    server.shutdown()
    server.server_close()


def _failing_store(tmp_path: Path, notification: dict[str, Any], smtp: dict[str, Any] | None = None
                   ) -> gm.FeatureStore:
    """A store whose fs1 notifies on failure; its source is then removed, so a backfill fails."""
    store = make_store(tmp_path, settings={"notification": notification})
    if smtp is not None:
        config = yaml.safe_load((store.path / "featurestore.yaml").read_text())
        config["notifications"] = {"smtp": smtp}
        (store.path / "featurestore.yaml").write_text(yaml.safe_dump(config))
        store = gm.FeatureStore(store.path)
    (tmp_path / "data" / "rows.parquet").unlink()
    return store


def test_webhook_credentials_are_sent_as_basic_auth_and_env_secrets_resolve_when_sending(
        tmp_path: Path, hook: Any, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture) -> None:
    port, received = hook
    monkeypatch.setenv("GM_TEST_HOOK_TOKEN", "tok-123")
    url = f"http://alice:p%40ss@127.0.0.1:{port}/hook?token=${{GM_TEST_HOOK_TOKEN}}"
    store = _failing_store(tmp_path, {"email_on": ["JobFailed"], "webhooks": [url]})
    # the registry holds the reference, never the value
    assert store.get_feature_set("fs1", 1).materialization_settings.notification.webhooks == [url]
    with caplog.at_level(logging.WARNING, logger="gristmill.notify"):
        [job] = store.backfill("fs1", 1, start="2024-01-01", end="2024-01-10")
    assert job.status.value == "Failed"
    assert received.received == [{"path": "/hook?token=tok-123",
                                  "authorization": "Basic " + base64.b64encode(b"alice:p@ss").decode()}]
    assert caplog.text == ""
    # a webhook that refuses: the warning names scheme and host only
    received.status = 500
    with caplog.at_level(logging.WARNING, logger="gristmill.notify"):
        store.backfill("fs1", 1, job_id=job.id)
    assert f"webhook http://127.0.0.1:{port}/… answered HTTP 500" in caplog.text
    assert "alice" not in caplog.text and "tok-123" not in caplog.text and "token" not in caplog.text
    # a variable that is not set: a clear warning at send time, and the job's outcome stands
    monkeypatch.delenv("GM_TEST_HOOK_TOKEN")
    caplog.clear()
    failed = store.list_jobs(feature_set="fs1", limit=1)[0]
    with caplog.at_level(logging.WARNING, logger="gristmill.notify"):
        [again] = store.backfill("fs1", 1, job_id=failed.id)
    assert again.status.value == "Failed" and "Name or service" not in caplog.text
    assert (f"webhook http://127.0.0.1:{port}/…: environment variable GM_TEST_HOOK_TOKEN is not set; set it in "
            "the environment of the process that runs jobs") in caplog.text
    assert len(received.received) == 2


def test_smtp_password_and_addresses_from_the_environment(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                          caplog: pytest.LogCaptureFixture) -> None:
    monkeypatch.delenv("GM_TEST_SMTP_PASSWORD", raising=False)
    store = _failing_store(tmp_path, {"email_on": ["JobFailed"], "emails": ["oncall@example.com"]},
                           smtp={"host": "127.0.0.1", "port": 9, "username": "gm",
                                 "password": "${GM_TEST_SMTP_PASSWORD}"})
    with caplog.at_level(logging.WARNING, logger="gristmill.notify"):
        [job] = store.backfill("fs1", 1, start="2024-01-01", end="2024-01-10")
    assert job.status.value == "Failed"
    assert "notifications.smtp.password: environment variable GM_TEST_SMTP_PASSWORD is not set" in caplog.text
    assert "oncall@" not in caplog.text
