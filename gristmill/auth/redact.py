"""Secrets in settings: how they are shown, and how ``${NAME}`` references to the environment resolve.

Webhook URLs are credentials (a token in the path or query, a user and password before the host), and
e-mail addresses are personal data, so both are shown in full only to whom may change them:

- ``redact_url("https://user:pw@hooks.example.com/T0/B1?token=x")`` → ``"https://hooks.example.com/…"``:
  scheme and host only (a port stays; a URL that is just a ``${NAME}`` reference stays as written, since
  a variable's name is no secret);
- ``redact_email("ops@example.com")`` → ``"…@example.com"``;
- ``redact_settings(asset_dict)`` applies both to a feature set's ``materialization_settings.notification``.

A setting may name an environment variable instead of holding the secret: ``${HOOK_TOKEN}`` anywhere in a
webhook URL, an e-mail address or an SMTP setting is replaced by the variable's value when a notification
is sent (``resolve``), never earlier, so the registry and every answer about a feature set only ever hold
the reference. A variable that is not set is a ``MissingSecretError`` naming it.
"""

from __future__ import annotations

import os
import re
from collections.abc import Iterable, Mapping
from typing import Any
from urllib.parse import urlsplit

from gristmill.errors import ConfigError

__all__ = ["MissingSecretError", "missing_variables", "redact_email", "redact_settings", "redact_url",
           "resolve"]

#: ``${NAME}``: a reference to the environment variable NAME (letters, digits, underscores)
REFERENCE = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)\}")
HIDDEN = "…"


class MissingSecretError(ConfigError):
    """A ``${NAME}`` reference whose environment variable is not set in the process that needs it."""


def references(text: str) -> list[str]:
    """The environment variables ``text`` refers to, in order of appearance."""
    return list(dict.fromkeys(REFERENCE.findall(text)))


def missing_variables(texts: Iterable[str], environ: Mapping[str, str] | None = None) -> list[str]:
    """The variables referred to in ``texts`` that are not set (in ``environ``, default ``os.environ``)."""
    env = os.environ if environ is None else environ
    return list(dict.fromkeys(name for text in texts for name in references(text) if name not in env))


def resolve(text: str, *, what: str, environ: Mapping[str, str] | None = None) -> str:
    """``text`` with every ``${NAME}`` replaced by that environment variable's value; ``what`` names the
    setting in the error when a variable is missing (e.g. ``"webhook https://hooks.example.com/…"``)."""
    env = os.environ if environ is None else environ
    missing = [name for name in references(text) if name not in env]
    if missing:
        names = ", ".join(missing)
        raise MissingSecretError(f"{what}: environment variable {names} is not set; set it in the environment "
                                 "of the process that runs jobs (gristmill scheduler, serve, backfill)")
    return REFERENCE.sub(lambda match: env[match.group(1)], text)


def redact_url(url: str) -> str:
    """Scheme and host of ``url`` (and its port), the rest replaced by ``…``; never the user, password,
    path or query. A URL that is only a ``${NAME}`` reference is shown as written."""
    text = url.strip()
    if REFERENCE.fullmatch(text):
        return text
    try:
        parts = urlsplit(text)
        scheme, host, port = parts.scheme, parts.hostname or "", parts.port
    except ValueError:                             # e.g. a port that is not a number
        return HIDDEN
    if not scheme or not host or REFERENCE.search(host):
        return HIDDEN
    if ":" in host:                                # an IPv6 address keeps its brackets
        host = f"[{host}]"
    return f"{scheme}://{host}{f':{port}' if port else ''}/{HIDDEN}"


def redact_email(address: str) -> str:
    """The domain of an e-mail address (``…@example.com``); a ``${NAME}`` reference as written."""
    text = address.strip()
    if REFERENCE.fullmatch(text):
        return text
    _, at, domain = text.rpartition("@")
    return f"{HIDDEN}@{domain}" if at and domain and REFERENCE.search(domain) is None else HIDDEN


def redact_settings(asset: dict[str, Any]) -> dict[str, Any]:
    """A copy of a feature set's dict (``FeatureSet.to_dict()`` or an answer built on it) with the webhook
    URLs and e-mail addresses of ``materialization_settings.notification`` redacted."""
    settings = asset.get("materialization_settings")
    notification = settings.get("notification") if isinstance(settings, dict) else None
    if not isinstance(notification, dict):
        return asset
    hidden = {**notification,
              "webhooks": [redact_url(str(url)) for url in notification.get("webhooks") or []],
              "emails": [redact_email(str(address)) for address in notification.get("emails") or []]}
    return {**asset, "materialization_settings": {**settings, "notification": hidden}}
