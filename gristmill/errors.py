"""The exception tree. Every error a user can cause is a ``GristmillError`` with a message that says
what was wrong (file, field or argument) and how to fix it.

    GristmillError
    ├── SpecError              an invalid YAML file or spec object (names file, field, fix)
    ├── RegistryError          catalog problems
    │   ├── NotFoundError      unknown entity / feature set / version / feature
    │   └── ImmutableError     an edit of a registered version that needs a new version
    │       └── DataLossError  a change that drops materialized data, not allowed explicitly
    ├── RetrievalError         bad retrieval request (features, observations, columns)
    ├── SourceError            a source that cannot be read (missing file, missing column, bad type)
    ├── TransformationError    user transformation code or SQL failed or returned the wrong schema
    ├── OfflineStoreError      the offline store could not take a write (e.g. endless concurrent commits)
    ├── StoreUnavailableError  a store or server that cannot be reached now: the request was fine, retry later
    │   └── OnlineStoreError   the online store (Redis, SQLite) cannot be reached or used
    └── ConfigError            a bad featurestore.yaml or store argument

(``OnlineStoreError`` lives with the online stores.) The server answers ``StoreUnavailableError`` with 503 and
``Retry-After``; a connected store raises it for 503 answers and for a server it cannot reach.
"""

from __future__ import annotations


def install_hint(extra: str) -> str:
    """How to install one of Gristmill's optional parts: from a package index, or in a source checkout.

    >>> install_hint("server")
    "pip install 'gristmill[server]' (in a source checkout: pip install -e '.[server]')"
    """
    return f"pip install 'gristmill[{extra}]' (in a source checkout: pip install -e '.[{extra}]')"


class GristmillError(Exception):
    """Base class of every error Gristmill raises on purpose."""


class SpecError(GristmillError, ValueError):
    """An invalid specification file or object."""


class ConfigError(GristmillError, ValueError):
    """An invalid store configuration."""


class RegistryError(GristmillError):
    """A catalog operation that cannot be done."""


class NotFoundError(RegistryError, LookupError):
    """An entity, feature set, version or feature that does not exist."""


class ImmutableError(RegistryError):
    """A change to a registered version that only a new version may make."""


class DataLossError(ImmutableError):
    """A change that would drop materialized data (a store disabled) unless data loss is allowed."""


class RetrievalError(GristmillError, ValueError):
    """A retrieval request that cannot be answered as asked."""


class SourceError(GristmillError):
    """A source that cannot be read as its specification says."""


class TransformationError(GristmillError):
    """A transformation that failed or produced output that does not match the declared features."""


class OfflineStoreError(GristmillError):
    """The offline store could not take a write; the message says why and what to do."""


class StoreUnavailableError(GristmillError):
    """A store (or the server) cannot be reached right now; the request itself was fine, so retrying it later
    may succeed. ``retry_after``: seconds the server suggested waiting (None: no suggestion)."""

    def __init__(self, message: str, *, retry_after: float | None = None) -> None:
        super().__init__(message)
        self.retry_after = retry_after


class RegistryUnavailableError(RegistryError, StoreUnavailableError):
    """The registry database cannot be reached or failed (down, locked, its tables gone); the request itself
    was fine (the server answers 503)."""
