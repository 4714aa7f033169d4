"""Access control (SPEC §6): principals with tokens, roles granted at a scope, and an audit log."""

from gristmill.auth.records import AccessRecords, AuditEntry, Grant, Principal, TokenInfo
from gristmill.auth.roles import PERMISSIONS, AccessDeniedError, Action, Resource, Role, Scope

__all__ = ["PERMISSIONS", "AccessDeniedError", "AccessRecords", "Action", "AuditEntry", "Grant", "Principal",
           "Resource", "Role", "Scope", "TokenInfo"]
