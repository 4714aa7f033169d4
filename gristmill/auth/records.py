"""Access control in the registry database: principals, their tokens, role grants, and the audit log.

    principals    name -> kind (user | service), created, disabled
    tokens        id -> principal, SHA-256 of the secret, created, expires, revoked, last used
    grants        (principal, role, scope) -> granted at, by
    audit_log     one row per decision worth keeping: every denied action, every change of access,
                  every materialization started through the server. Refusals are throttled: one row
                  per principal, action and resource per minute, whose ``count`` says how many there
                  were (a flood of refused requests writes a row a minute, not a row a request)

A token is shown once, when created: ``gm_<id>_<secret>``. Only the hash of the secret is stored, so a
copy of the registry does not hand out access. Tables share the materialization tables' ``MetaData``
and are created with them, on first use.
"""

from __future__ import annotations

import atexit
import contextlib
import hashlib
import hmac
import secrets
import threading
import time
import weakref
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

import sqlalchemy as sa

from gristmill import loop_bridge
from gristmill.auth.roles import PERMISSIONS, AccessDeniedError, Action, Resource, Role, Scope
from gristmill.errors import GristmillError, NotFoundError
from gristmill.loop_bridge import TimedCache
from gristmill.registry.materialization import NAME, TIMESTAMP, MaterializationRecords, _aware_utc, metadata

__all__ = ["AccessRecords", "AuditEntry", "Grant", "Principal", "TokenInfo"]


principals = sa.Table(
    "principals", metadata,
    sa.Column("name", NAME, primary_key=True),
    sa.Column("kind", sa.String(10), nullable=False),
    sa.Column("created_at", TIMESTAMP, nullable=False),
    sa.Column("disabled", sa.Boolean, nullable=False),
)

tokens = sa.Table(
    "tokens", metadata,
    sa.Column("id", sa.String(16), primary_key=True),
    sa.Column("principal", NAME, nullable=False, index=True),
    sa.Column("secret_sha256", sa.String(64), nullable=False),
    sa.Column("created_at", TIMESTAMP, nullable=False),
    sa.Column("expires_at", TIMESTAMP, nullable=True),
    sa.Column("revoked_at", TIMESTAMP, nullable=True),
    sa.Column("last_used_at", TIMESTAMP, nullable=True),
    # a web UI session: the token it was signed in with; it dies with it (revoked, expired)
    sa.Column("session_of", sa.String(16), nullable=True),
)

grants = sa.Table(
    "grants", metadata,
    sa.Column("principal", NAME, primary_key=True),
    sa.Column("role", sa.String(20), primary_key=True),
    sa.Column("scope", sa.String(420), primary_key=True),
    sa.Column("granted_at", TIMESTAMP, nullable=False),
    sa.Column("granted_by", NAME, nullable=False),
)

audit_log = sa.Table(
    "audit_log", metadata,
    sa.Column("seq", sa.Integer, primary_key=True, autoincrement=True),
    sa.Column("at", TIMESTAMP, nullable=False),
    sa.Column("principal", NAME, nullable=False),
    sa.Column("action", sa.String(40), nullable=False),
    sa.Column("resource", sa.String(420), nullable=False),
    sa.Column("allowed", sa.Boolean, nullable=False),
    sa.Column("detail", sa.Text, nullable=True),
    sa.Column("count", sa.Integer, nullable=True),      # refusals this row stands for (null: 1)
)

PRINCIPAL_KINDS = ("user", "service")
#: the same refusal (principal, action, resource) is written once per this many seconds; repeats within it
#: only raise that row's ``count``
REFUSAL_WINDOW_SECONDS = 60.0
#: how often, at most, a row's ``count`` is brought up to date while its refusals go on
_COUNT_WRITE_SECONDS = 1.0


@dataclass(frozen=True)
class Principal:
    name: str
    kind: str
    created_at: datetime
    disabled: bool


@dataclass(frozen=True)
class TokenInfo:
    """What may be shown about a token: never its secret, nor the secret's hash."""

    id: str
    principal: str
    created_at: datetime
    expires_at: datetime | None
    revoked_at: datetime | None
    last_used_at: datetime | None
    session_of: str | None          # a web UI session: the id of the token it was signed in with

    def status(self, now: datetime) -> str:
        """``active``, ``revoked`` or ``expired`` at ``now`` (aware UTC)."""
        if self.revoked_at is not None:
            return "revoked"
        if self.expires_at is not None and self.expires_at <= now:
            return "expired"
        return "active"


@dataclass(frozen=True)
class Grant:
    principal: str
    role: Role
    scope: Scope
    granted_at: datetime
    granted_by: str


@dataclass(frozen=True)
class AuditEntry:
    at: datetime
    principal: str
    action: str
    resource: str
    allowed: bool
    detail: str | None
    count: int = 1                  # a throttled refusal: how many times it happened in its minute


@dataclass
class _Refusals:
    """The audit row of one principal, action and resource's refusals in the current minute."""

    seq: int
    started: float
    count: int = 1
    written: int = 1                # the count the row holds
    written_at: float = 0.0


class AccessRecords:
    """Principals, tokens, grants and the audit log of one registry; ``check`` is the one authorization
    decision every door (server, CLI) goes through."""

    def __init__(self, records: MaterializationRecords, *, cache_seconds: float = 0.0) -> None:
        """``cache_seconds`` > 0 (the server) remembers a token's principal and a principal's grants that
        long: revocations and new grants then take effect within that time, and a lookup skips two
        registry round trips."""
        self.records = records
        self.cache_seconds = cache_seconds
        self._tokens: TimedCache[str, str] = TimedCache(cache_seconds)
        self._grants_of: TimedCache[str, list[Grant]] = TimedCache(cache_seconds)
        self._refusals: dict[str, float] = {}
        self._denials: dict[tuple[str, str, str], _Refusals] = {}
        self._denials_lock = threading.RLock()
        # the last second's refusal counts reach the audit log when the process ends (a server stopping)
        this = weakref.ref(self)
        atexit.register(lambda: _flush_at_exit(this))

    # -- principals and tokens ------------------------------------------------------------------------
    def add_principal(self, name: str, *, kind: str = "user", by: str = "local") -> Principal:
        if kind not in PRINCIPAL_KINDS:
            raise GristmillError(f"principal kind {kind!r} must be one of {', '.join(PRINCIPAL_KINDS)}")
        if not name or any(c.isspace() for c in name):
            raise GristmillError(f"principal name {name!r} must be non-empty and without spaces")
        with self.records._transaction(write=True) as conn:
            if conn.execute(sa.select(principals.c.name).where(principals.c.name == name)).first():
                raise GristmillError(f"principal {name} exists already")
            conn.execute(sa.insert(principals).values(name=name, kind=kind, created_at=_now(), disabled=False))
            _audit(conn, by, "access.principal.add", f"{kind} {name}", allowed=True)
        return self.principal(name)

    def principal(self, name: str) -> Principal:
        with self.records._transaction() as conn:
            row = conn.execute(sa.select(principals).where(principals.c.name == name)).mappings().one_or_none()
        if row is None:
            raise NotFoundError(f"principal {name} not found; add it with `gristmill access add {name}`")
        return Principal(row["name"], row["kind"], _aware_utc(row["created_at"]), bool(row["disabled"]))

    def list_principals(self) -> list[Principal]:
        with self.records._transaction() as conn:
            rows = conn.execute(sa.select(principals).order_by(principals.c.name)).mappings().all()
        return [Principal(r["name"], r["kind"], _aware_utc(r["created_at"]), bool(r["disabled"])) for r in rows]

    def remove_principal(self, name: str, *, by: str = "local") -> tuple[int, int]:
        """Remove a principal with its tokens (and web UI sessions) and its grants; returns how many
        tokens and grants went. Its audit log entries stay."""
        with self.records._transaction(write=True) as conn:
            row = conn.execute(sa.select(principals.c.kind).where(principals.c.name == name)).first()
            if row is None:
                raise NotFoundError(f"principal {name} not found (`gristmill access list` shows them)")
            removed_tokens = conn.execute(sa.delete(tokens).where(tokens.c.principal == name)).rowcount
            removed_grants = conn.execute(sa.delete(grants).where(grants.c.principal == name)).rowcount
            conn.execute(sa.delete(principals).where(principals.c.name == name))
            _audit(conn, by, "access.principal.remove", f"{row[0]} {name}", allowed=True,
                   detail=f"{removed_tokens} token(s) and {removed_grants} grant(s) removed")
        self._tokens.clear()                # its tokens and grants must stop working now, not in a few seconds
        self._grants_of.clear()
        return removed_tokens, removed_grants

    def list_tokens(self, principal: str | None = None) -> list[TokenInfo]:
        """Every token (and web UI session), oldest first, optionally of one principal."""
        query = sa.select(tokens.c.id, tokens.c.principal, tokens.c.created_at, tokens.c.expires_at,
                          tokens.c.revoked_at, tokens.c.last_used_at, tokens.c.session_of
                          ).order_by(tokens.c.created_at, tokens.c.id)
        if principal is not None:
            self.principal(principal)
            query = query.where(tokens.c.principal == principal)
        with self.records._transaction() as conn:
            rows = conn.execute(query).mappings().all()

        def when(value: Any) -> datetime | None:
            return None if value is None else _aware_utc(value)

        return [TokenInfo(r["id"], r["principal"], _aware_utc(r["created_at"]), when(r["expires_at"]),
                          when(r["revoked_at"]), when(r["last_used_at"]), r["session_of"]) for r in rows]

    def create_token(self, principal: str, *, expires_in: timedelta | None = None, by: str = "local") -> str:
        """A new token for ``principal``; the secret is returned once and only its hash is kept."""
        self.principal(principal)
        return self._new_token(principal, expires_at=_now() + expires_in if expires_in is not None else None,
                               session_of=None, by=by)

    def create_session(self, token: str, *, lasts: timedelta) -> str:
        """A web UI session for the principal of ``token``: it ends at ``lasts``, at ``token``'s own expiry,
        or when ``token`` is revoked, whichever comes first. Sessions cannot start other sessions."""
        principal = self.authenticate(token)
        token_id = token.split("_", 2)[1]
        with self.records._transaction() as conn:
            parent = conn.execute(sa.select(tokens).where(tokens.c.id == token_id)).mappings().one()
        if parent["session_of"] is not None:
            raise AccessDeniedError("sign in with an API token (gristmill access token NAME), not a session")
        ends = _now() + lasts
        if parent["expires_at"] is not None:
            ends = min(ends, _aware_utc(parent["expires_at"]))
        return self._new_token(principal, expires_at=ends, session_of=token_id, by=principal)

    def is_session(self, token: str) -> bool:
        parts = token.split("_", 2)
        if len(parts) != 3:
            return False
        with self.records._transaction() as conn:
            row = conn.execute(sa.select(tokens.c.session_of).where(tokens.c.id == parts[1])).first()
        return row is not None and row[0] is not None

    def _new_token(self, principal: str, *, expires_at: datetime | None, session_of: str | None, by: str) -> str:
        token_id, secret = secrets.token_hex(6), secrets.token_urlsafe(24)
        with self.records._transaction(write=True) as conn:
            conn.execute(sa.insert(tokens).values(
                id=token_id, principal=principal, secret_sha256=_sha256(secret), created_at=_now(),
                expires_at=expires_at, revoked_at=None, last_used_at=None, session_of=session_of))
            what = "access.session.create" if session_of else "access.token.create"
            _audit(conn, by, what, f"token:{token_id} of {principal}", allowed=True)
        return f"gm_{token_id}_{secret}"

    def revoke_token(self, token_id: str, *, by: str = "local") -> None:
        with self.records._transaction(write=True) as conn:
            if not conn.execute(sa.update(tokens).where(tokens.c.id == token_id).values(revoked_at=_now())).rowcount:
                raise NotFoundError(f"token {token_id} not found")
            _audit(conn, by, "access.token.revoke", f"token:{token_id}", allowed=True)
        self._tokens.clear()

    def authenticate(self, token: str | None) -> str:
        """The principal a bearer token belongs to, or ``AccessDeniedError`` (unknown, expired, revoked)."""
        return self._tokens.get(token or "", lambda: self._authenticate(token))   # errors are not remembered

    def _authenticate(self, token: str | None) -> str:
        parts = (token or "").split("_", 2)
        if len(parts) != 3 or parts[0] != "gm":
            raise AccessDeniedError("a valid token is required: send 'Authorization: Bearer gm_...' (create one "
                                    "with `gristmill access token NAME`)")
        token_id, secret = parts[1], parts[2]
        with self.records._transaction() as conn:                 # a read: refusals take no write lock
            row = conn.execute(sa.select(tokens, principals.c.disabled).join(
                principals, principals.c.name == tokens.c.principal).where(tokens.c.id == token_id)
            ).mappings().one_or_none()
            parent = None if row is None or row["session_of"] is None else conn.execute(
                sa.select(tokens).where(tokens.c.id == row["session_of"])).mappings().one_or_none()
        problem = None
        if row is None or not hmac.compare_digest(row["secret_sha256"], _sha256(secret)):
            problem = "the token is not valid"
        elif row["revoked_at"] is not None:
            problem = f"token {token_id} was revoked"
        elif row["expires_at"] is not None and _aware_utc(row["expires_at"]) <= _now():
            ended = _aware_utc(row["expires_at"])
            problem = f"token {token_id} expired at {ended:%Y-%m-%d %H:%M} UTC; create a new one"
        elif row["disabled"]:
            problem = f"principal {row['principal']} is disabled"
        elif row["session_of"] is not None and (parent is None or parent["revoked_at"] is not None):
            problem = "this session's sign-in token was revoked; sign in again"
        if problem is not None:
            self._audit_refused_token(token_id[:40] if row is not None else "(unknown)", problem)
            raise AccessDeniedError(problem)
        last = row["last_used_at"]
        if last is None or _now() - _aware_utc(last) > timedelta(minutes=1):      # a write at most once a minute
            with self.records._transaction(write=True) as conn:
                conn.execute(sa.update(tokens).where(tokens.c.id == token_id).values(last_used_at=_now()))
        return str(row["principal"])

    def _audit_refused_token(self, token_id: str, problem: str) -> None:
        """Record a refused token, at most once a minute per token id; made-up ids share one bucket, so a
        flood of them writes one row a minute."""
        loop_bridge.blocking_io()          # on the event loop: before any change, the call runs again on a thread
        now = time.monotonic()
        last = self._refusals.get(token_id)
        if last is not None and now - last < 60:
            return
        if len(self._refusals) > 10_000:
            self._refusals.clear()
        self._refusals[token_id] = now
        self.audit("?", "authenticate", f"token:{token_id}", allowed=False, detail=problem)

    # -- grants ---------------------------------------------------------------------------------------
    def grant(self, principal: str, role: Role | str, scope: Scope | str = "store", *, by: str) -> Grant:
        role = role if isinstance(role, Role) else Role.parse(role)
        scope = scope if isinstance(scope, Scope) else Scope.parse(scope)
        self.principal(principal)
        with self.records._transaction(write=True) as conn:
            key = (grants.c.principal == principal, grants.c.role == role.value, grants.c.scope == str(scope))
            if not conn.execute(sa.select(grants.c.role).where(*key)).first():
                conn.execute(sa.insert(grants).values(principal=principal, role=role.value, scope=str(scope),
                                                      granted_at=_now(), granted_by=by))
            _audit(conn, by, "access.grant", f"{principal} {role.value} on {scope}", allowed=True)
        self._grants_of.discard(principal)
        return next(g for g in self.grants(principal) if g.role == role and g.scope == scope)

    def revoke(self, principal: str, role: Role | str, scope: Scope | str = "store", *, by: str) -> None:
        role = role if isinstance(role, Role) else Role.parse(role)
        scope = scope if isinstance(scope, Scope) else Scope.parse(scope)
        with self.records._transaction(write=True) as conn:
            removed = conn.execute(sa.delete(grants).where(grants.c.principal == principal,
                                                           grants.c.role == role.value,
                                                           grants.c.scope == str(scope))).rowcount
            if not removed:
                raise NotFoundError(f"{principal} has no {role.value} grant on {scope}")
            _audit(conn, by, "access.revoke", f"{principal} {role.value} on {scope}", allowed=True)
        self._grants_of.discard(principal)

    def grants(self, principal: str | None = None) -> list[Grant]:
        if principal is not None:
            return self._grants_of.get(principal, lambda: self._grants(principal))
        return self._grants(None)

    def _grants(self, principal: str | None) -> list[Grant]:
        query = sa.select(grants).order_by(grants.c.principal, grants.c.scope, grants.c.role)
        if principal is not None:
            query = query.where(grants.c.principal == principal)
        with self.records._transaction() as conn:
            rows = conn.execute(query).mappings().all()
        return [Grant(r["principal"], Role(r["role"]), Scope.parse(r["scope"]), _aware_utc(r["granted_at"]),
                      r["granted_by"]) for r in rows]

    # -- decisions ------------------------------------------------------------------------------------
    def allowed(self, principal: str, action: Action, resource: Resource) -> bool:
        return any(action in PERMISSIONS[g.role] and resource.covered_by(g.scope) for g in self.grants(principal))

    def check(self, principal: str, action: Action, resource: Resource) -> None:
        """Allow, or refuse with ``AccessDeniedError`` naming the roles that would allow it (and log it)."""
        if self.allowed(principal, action, resource):
            return
        enough = [role.value for role, actions in PERMISSIONS.items() if action in actions]
        held = ", ".join(f"{g.role.value} on {g.scope}" for g in self.grants(principal)) or "no roles"
        message = (f"{principal} may not {action.value} on {resource}: it holds {held}; it needs "
                   f"{' or '.join(enough)} on {resource} or a scope containing it (an Owner grants it with "
                   f"`gristmill access grant {principal} ROLE --scope ...`)")
        self._audit_refusal(principal, action.value, str(resource), message)
        raise AccessDeniedError(message)

    def _audit_refusal(self, principal: str, action: str, resource: str, detail: str) -> None:
        """Record a refusal: a new row the first time in ``REFUSAL_WINDOW_SECONDS`` for this principal,
        action and resource, else one more in that row's ``count`` (written at most once a second, and
        whenever the audit log is read)."""
        loop_bridge.blocking_io()          # on the event loop: before any change, the call runs again on a thread
        key = (principal, action, resource)
        now = time.monotonic()
        with self._denials_lock:
            current = self._denials.get(key)
            if current is not None and now - current.started < REFUSAL_WINDOW_SECONDS:
                current.count += 1
                if now - current.written_at < _COUNT_WRITE_SECONDS:
                    return
                update: tuple[int, int] | None = (current.seq, current.count)
                current.written, current.written_at = current.count, now
            else:
                update = None
        if update is not None:
            self._write_count(*update)
            return
        if current is not None and current.count > current.written:
            self._write_count(current.seq, current.count)          # the end of the last minute's refusals
        with self.records._transaction(write=True) as conn:
            seq = _audit(conn, principal, action, resource, allowed=False, detail=detail)
        with self._denials_lock:
            if len(self._denials) > 10_000:
                self.flush_refusals()
                self._denials.clear()
            self._denials[key] = _Refusals(seq=seq, started=now, written_at=now)

    def flush_refusals(self) -> None:
        """Write the counts of throttled refusals that their rows do not show yet."""
        with self._denials_lock:
            pending = [(r.seq, r.count) for r in self._denials.values() if r.count > r.written]
            for refusals in self._denials.values():
                refusals.written = refusals.count
        for seq, count in pending:
            self._write_count(seq, count)

    def _write_count(self, seq: int, count: int) -> None:
        with self.records._transaction(write=True) as conn:
            conn.execute(sa.update(audit_log).where(audit_log.c.seq == seq).values({audit_log.c["count"]: count}))

    def audit(self, principal: str, action: str, resource: str, *, allowed: bool, detail: str | None = None) -> None:
        with self.records._transaction(write=True) as conn:
            _audit(conn, principal, action, resource, allowed=allowed, detail=detail)

    def audit_entries(self, *, limit: int = 100, denied_only: bool = False) -> list[AuditEntry]:
        self.flush_refusals()
        query = sa.select(audit_log).order_by(audit_log.c.seq.desc()).limit(max(limit, 0))
        if denied_only:
            query = query.where(audit_log.c.allowed.is_(False))
        with self.records._transaction() as conn:
            rows = conn.execute(query).mappings().all()
        return [AuditEntry(_aware_utc(r["at"]), r["principal"], r["action"], r["resource"], bool(r["allowed"]),
                           r["detail"], r["count"] or 1) for r in rows]


def _audit(conn: sa.Connection, principal: str, action: str, resource: str, *, allowed: bool,
           detail: str | None = None) -> int:
    """Insert an audit row; returns its ``seq``."""
    result = conn.execute(sa.insert(audit_log).values(at=_now(), principal=principal, action=action,
                                                      resource=resource, allowed=allowed, detail=detail))
    return int(result.inserted_primary_key[0])


def _flush_at_exit(reference: weakref.ReferenceType[AccessRecords]) -> None:
    records = reference()
    if records is not None and records._denials:
        with contextlib.suppress(GristmillError):
            records.flush_refusals()


def _sha256(secret: str) -> str:
    return hashlib.sha256(secret.encode()).hexdigest()


def _now() -> datetime:
    return datetime.now(UTC)

