"""Roles, actions and scopes (SPEC §6): who may do what, where.

Roles are granted to principals (users and service principals) at a scope. Each role allows a fixed set
of actions, in one table:

==============  ==========================================================================
role            actions
==============  ==========================================================================
Owner           everything, including managing access and reading the audit log
Contributor     read and change the catalog, read features (online and offline) and jobs, materialize
Materializer    read the catalog and jobs, materialize (backfill, cancel jobs)
Reader          read the catalog, features (online and offline) and jobs
==============  ==========================================================================

``Developer`` is accepted for Contributor and ``Consumer`` for Reader (the names managed stores use).

Scopes: ``store`` (everything), ``featureset:NAME`` (every version), ``featureset:NAME:VERSION``,
``entity:NAME`` (the entity and every feature set keyed by it).
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum
from typing import Final

from gristmill.errors import GristmillError

__all__ = ["PERMISSIONS", "AccessDeniedError", "Action", "Resource", "Role", "Scope"]


class AccessDeniedError(GristmillError, PermissionError):
    """A principal asked for an action its roles do not allow (or gave no valid token)."""


class Role(StrEnum):
    OWNER = "Owner"
    CONTRIBUTOR = "Contributor"
    MATERIALIZER = "Materializer"
    READER = "Reader"

    @classmethod
    def parse(cls, value: str) -> Role:
        wanted = {"developer": "contributor", "consumer": "reader"}.get(value.strip().lower(), value.strip().lower())
        for role in cls:
            if role.value.lower() == wanted:
                return role
        names = ", ".join(r.value for r in cls)
        raise GristmillError(f"role {value!r} is not one of {names} (Developer = Contributor, Consumer = Reader)")


class Action(StrEnum):
    READ_CATALOG = "catalog.read"
    WRITE_CATALOG = "catalog.write"
    READ_ONLINE = "online.read"
    READ_OFFLINE = "offline.read"          # point-in-time training data
    READ_JOBS = "jobs.read"
    MATERIALIZE = "materialize"
    MANAGE_ACCESS = "access.manage"
    READ_AUDIT = "audit.read"


_READ = frozenset({Action.READ_CATALOG, Action.READ_ONLINE, Action.READ_OFFLINE, Action.READ_JOBS})
PERMISSIONS: Final[dict[Role, frozenset[Action]]] = {
    Role.OWNER: frozenset(Action),
    Role.CONTRIBUTOR: _READ | {Action.WRITE_CATALOG, Action.MATERIALIZE},
    Role.MATERIALIZER: frozenset({Action.READ_CATALOG, Action.READ_JOBS, Action.MATERIALIZE}),
    Role.READER: _READ,
}


@dataclass(frozen=True)
class Scope:
    """Where a grant applies: ``store``, ``featureset:NAME[:VERSION]`` or ``entity:NAME``."""

    kind: str                    # store | featureset | entity
    name: str = ""
    version: str = ""

    @classmethod
    def parse(cls, text: str) -> Scope:
        parts = text.strip().split(":")
        kind = parts[0].lower().replace("_", "").replace("-", "")
        if kind == "store" and len(parts) == 1:
            return cls("store")
        if kind in ("featureset", "fs") and len(parts) in (2, 3) and all(parts[1:]):
            return cls("featureset", parts[1], parts[2] if len(parts) == 3 else "")
        if kind == "entity" and len(parts) == 2 and parts[1]:
            return cls("entity", parts[1])
        raise GristmillError(f"scope {text!r} must be store, featureset:NAME, featureset:NAME:VERSION or "
                             "entity:NAME")

    def __str__(self) -> str:
        return ":".join(p for p in (self.kind, self.name, self.version) if p)


@dataclass(frozen=True)
class Resource:
    """What an action is applied to: the store, a feature set version (with its entities) or an entity."""

    kind: str                    # store | featureset | entity
    name: str = ""
    version: str = ""
    entities: tuple[str, ...] = ()      # a feature set's entity names

    def covered_by(self, scope: Scope) -> bool:
        if scope.kind == "store":
            return True
        if scope.kind == "featureset":
            return self.kind == "featureset" and self.name == scope.name and scope.version in ("", self.version)
        return scope.kind == "entity" and (scope.name in self.entities if self.kind == "featureset"
                                           else self.kind == "entity" and self.name == scope.name)

    def __str__(self) -> str:
        return ":".join(p for p in (self.kind, self.name, self.version) if p)


STORE = Resource("store")
