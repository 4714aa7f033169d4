"""Job notifications (SPEC §6): when a materialization job ends, tell the people and systems a feature set
names in ``materialization_settings.notification``.

- ``email_on`` lists the events that notify: ``JobCompleted``, ``JobFailed``, ``JobCancelled`` (none: no
  notifications). They apply to both channels:
- ``webhooks``: each URL gets an HTTP POST of the event as JSON (``application/json``; see ``payload``);
- ``emails``: one message to all addresses, sent through the store's SMTP server (``featurestore.yaml``
  ``notifications.smtp``).

Delivery never fails a job: a webhook that does not answer 2xx or a mail server that refuses is logged as
a warning (logger ``gristmill.notify``) and reported back to the caller. Secrets never reach the log: a
webhook is named by its scheme and host only (``gristmill.auth.redact``), an address by its domain.

Settings may refer to environment variables (``${HOOK_TOKEN}`` in a webhook URL, an address, or the SMTP
``username``/``password``); they are resolved here, when sending, and a variable that is not set is a
delivery problem naming it. A webhook URL with ``user:password@`` sends them as HTTP basic
authentication (``urllib`` would take them for part of the host name).
"""

from __future__ import annotations

import base64
import json
import logging
import os
import smtplib
import urllib.error
import urllib.request
from email.message import EmailMessage
from typing import TYPE_CHECKING, Any
from urllib.parse import unquote, urlsplit, urlunsplit

from gristmill.auth.redact import MissingSecretError, redact_email, redact_url, resolve
from gristmill.spec.featureset import JobEvent

if TYPE_CHECKING:
    from gristmill.config import NotificationsConfig
    from gristmill.registry.materialization import JobRecord
    from gristmill.spec.featureset import FeatureSet

__all__ = ["EVENT_NAMES", "Notifier", "event_of", "payload"]

log = logging.getLogger("gristmill.notify")

#: the event of each final job status, and its display name
_EVENTS = {"Completed": JobEvent.JOB_COMPLETED, "Failed": JobEvent.JOB_FAILED, "Cancelled": JobEvent.JOB_CANCELLED}
EVENT_NAMES = {JobEvent.JOB_COMPLETED: "JobCompleted", JobEvent.JOB_FAILED: "JobFailed",
               JobEvent.JOB_CANCELLED: "JobCancelled"}


def event_of(job: JobRecord) -> JobEvent | None:
    """The event a job's final status raises (None while it is queued or running)."""
    return _EVENTS.get(job.status.value)


def payload(store: str, feature_set: FeatureSet, job: JobRecord) -> dict[str, Any]:
    """The JSON body of a notification.

    ``{"event": "JobFailed", "store": ..., "feature_set": "name:version", "job": {"id", "status", "start",
    "end", "stores", "created_at", "started_at", "finished_at", "rows_read", "rows_written",
    "bytes_written", "cpu_seconds", "error"}}``; times are ISO 8601 (window bounds naive UTC)."""
    event = event_of(job)

    def iso(value: Any) -> str | None:
        return value.isoformat() if value is not None else None

    return {
        "event": EVENT_NAMES[event] if event else job.status.value,
        "store": store,
        "feature_set": feature_set.ref,
        "job": {"id": job.id, "status": job.status.value, "start": iso(job.start), "end": iso(job.end),
                "stores": list(job.stores), "created_at": iso(job.created_at), "started_at": iso(job.started_at),
                "finished_at": iso(job.finished_at), "rows_read": job.rows_read, "rows_written": job.rows_written,
                "bytes_written": job.bytes_written, "cpu_seconds": round(job.cpu_seconds, 3), "error": job.error},
    }


class Notifier:
    """Sends the notifications of one feature store."""

    def __init__(self, store: str, config: NotificationsConfig) -> None:
        self.store = store
        self.config = config

    def job_ended(self, feature_set: FeatureSet, job: JobRecord) -> list[str]:
        """Notify about ``job`` if its feature set asks for its event; returns the delivery problems."""
        settings = feature_set.materialization_settings
        wanted = settings.notification if settings is not None else None
        event = event_of(job)
        if wanted is None or event is None or event not in wanted.email_on:
            return []
        body = payload(self.store, feature_set, job)
        problems = [problem for url in wanted.webhooks if (problem := self._post(url, body))]
        if wanted.emails:
            problem = self._mail(wanted.emails, body)
            if problem:
                problems.append(problem)
        for problem in problems:
            log.warning("%s: job %s: %s notification not delivered: %s", feature_set.ref, job.id,
                        body["event"], problem)
        return problems

    def _post(self, url: str, body: dict[str, Any]) -> str | None:
        shown = f"webhook {redact_url(url)}"
        try:
            target, headers = _with_basic_auth(resolve(url, what=shown))
        except MissingSecretError as exc:
            return str(exc)
        request = urllib.request.Request(target, data=json.dumps(body).encode(), method="POST",
                                         headers={"Content-Type": "application/json",
                                                  "User-Agent": "gristmill-notifier", **headers})
        try:
            with urllib.request.urlopen(request, timeout=self.config.timeout_seconds) as response:
                if not 200 <= response.status < 300:
                    return f"{shown} answered HTTP {response.status}"
        except urllib.error.HTTPError as exc:
            return f"{shown} answered HTTP {exc.code}"
        except (urllib.error.URLError, OSError, ValueError) as exc:
            # the reason never repeats the URL (urllib's messages name the host at most)
            reason = getattr(exc, "reason", exc)
            return f"{shown} unreachable: {type(reason).__name__ if isinstance(reason, ValueError) else reason}"
        return None

    def _mail(self, addresses: list[str], body: dict[str, Any]) -> str | None:
        smtp = self.config.smtp
        shown = ", ".join(redact_email(address) for address in addresses)
        if smtp is None:
            return (f"e-mail to {shown} not sent: no mail server configured; add "
                    "notifications: {smtp: {host: ..., port: ...}} to featurestore.yaml")
        try:
            recipients = [resolve(address, what=f"e-mail address {redact_email(address)}") for address in addresses]
            username = resolve(smtp.username, what="notifications.smtp.username") if smtp.username else None
            password = (resolve(smtp.password, what="notifications.smtp.password") if smtp.password is not None
                        else os.environ.get(smtp.password_env or "", ""))
        except MissingSecretError as exc:
            return str(exc)
        job = body["job"]
        message = EmailMessage()
        message["From"] = smtp.sender
        message["To"] = ", ".join(recipients)
        message["Subject"] = f"[gristmill] {body['event']}: {body['feature_set']} [{job['start']}, {job['end']})"
        lines = [f"{body['event']} in feature store {body['store']}: {body['feature_set']}",
                 f"job {job['id']} over [{job['start']}, {job['end']}) into {' + '.join(job['stores'])}",
                 f"status {job['status']}; rows read {job['rows_read']}, written {job['rows_written']}; "
                 f"{job['cpu_seconds']} CPU s"]
        if job["error"]:
            lines.append(f"error: {job['error']}")
        message.set_content("\n".join(lines) + "\n\n" + json.dumps(body, indent=2) + "\n")
        try:
            with smtplib.SMTP(smtp.host, smtp.port, timeout=self.config.timeout_seconds) as server:
                if smtp.starttls:
                    server.starttls()
                if username:
                    server.login(username, password)
                server.send_message(message)
        except smtplib.SMTPRecipientsRefused:          # its text lists the addresses
            return f"mail server {smtp.host}:{smtp.port} refused the recipients {shown}"
        except (smtplib.SMTPException, OSError) as exc:
            reason = str(exc)
            for address in recipients:
                reason = reason.replace(address, redact_email(address))
            return f"mail server {smtp.host}:{smtp.port} refused or unreachable: {reason}"
        return None


def _with_basic_auth(url: str) -> tuple[str, dict[str, str]]:
    """``url`` without its ``user:password@`` part, and the ``Authorization`` header that carries them."""
    parts = urlsplit(url)
    if parts.username is None and parts.password is None:
        return url, {}
    netloc = parts.netloc.rpartition("@")[2]
    credentials = f"{unquote(parts.username or '')}:{unquote(parts.password or '')}".encode()
    header = "Basic " + base64.b64encode(credentials).decode("ascii")
    return urlunsplit(parts._replace(netloc=netloc)), {"Authorization": header}
