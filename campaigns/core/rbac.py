"""Role-based access rules: which permission each operation needs, and the check itself.

Guarantees:

* Every operation the service API and the ``campaign.commands`` consumer expose is listed in
  :data:`OPERATION_PERMISSION`; the API and the command path use the same table, so a command can never
  do what the acting principal could not do through the API.
* :func:`require` either returns ``None`` or raises :class:`~campaigns.errors.PermissionDenied`; it never
  looks anything up itself. The caller resolves the principal's granted permissions (from the
  ``principals`` / ``roles`` tables, or :data:`DEFAULT_ROLES` via :func:`permissions_for_roles`) and
  passes ``None`` for a principal it does not know.
* The tables are read-only mappings.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from enum import StrEnum
from types import MappingProxyType

from campaigns.errors import PermissionDenied

__all__ = [
    "DEFAULT_ROLES",
    "OPERATION_PERMISSION",
    "Permission",
    "permission_for",
    "permissions_for_roles",
    "require",
    "require_operation",
]


class Permission(StrEnum):
    """A permission; values are the strings stored in ``role_permissions``."""

    CAMPAIGNS_CREATE = "campaigns.create"
    CAMPAIGNS_SEND = "campaigns.send"
    CAMPAIGNS_READ = "campaigns.read"
    CAMPAIGNS_AUDIT = "campaigns.audit"
    PRINCIPALS_MANAGE = "principals.manage"
    TEMPLATES_MANAGE = "templates.manage"


DEFAULT_ROLES: Mapping[str, frozenset[Permission]] = MappingProxyType(
    {
        "admin": frozenset(Permission),
        "marketer": frozenset(
            {Permission.CAMPAIGNS_CREATE, Permission.CAMPAIGNS_SEND, Permission.CAMPAIGNS_READ}
        ),
        "auditor": frozenset({Permission.CAMPAIGNS_READ, Permission.CAMPAIGNS_AUDIT}),
    }
)
"""The roles seeded by the first migration: admin has everything; marketers create, send and read;
auditors read and audit."""

OPERATION_PERMISSION: Mapping[str, Permission] = MappingProxyType(
    {
        "create_campaign": Permission.CAMPAIGNS_CREATE,
        "schedule_campaign": Permission.CAMPAIGNS_SEND,
        "pause_campaign": Permission.CAMPAIGNS_SEND,
        "resume_campaign": Permission.CAMPAIGNS_SEND,
        "cancel_campaign": Permission.CAMPAIGNS_SEND,
        "get_campaign": Permission.CAMPAIGNS_READ,
        "campaign_status": Permission.CAMPAIGNS_READ,
        # Writing delivery metrics back is part of sending, not of reading.
        "update_metrics": Permission.CAMPAIGNS_SEND,
        "read_audit_log": Permission.CAMPAIGNS_AUDIT,
        "add_principal": Permission.PRINCIPALS_MANAGE,
        "add_template": Permission.TEMPLATES_MANAGE,
        "approve_template": Permission.TEMPLATES_MANAGE,
    }
)
"""Operation name -> the one permission it needs."""


def permission_for(operation: str) -> Permission:
    """The permission ``operation`` needs.

    Raises ``KeyError`` for an operation that is not in :data:`OPERATION_PERMISSION` (a programming
    error: every exposed operation must be listed, so nothing is reachable unchecked).
    """
    try:
        return OPERATION_PERMISSION[operation]
    except KeyError:
        known = ", ".join(sorted(OPERATION_PERMISSION))
        raise KeyError(f"unknown operation {operation!r}; known operations: {known}") from None


def permissions_for_roles(
    roles: Iterable[str], role_table: Mapping[str, frozenset[Permission]] = DEFAULT_ROLES
) -> frozenset[Permission]:
    """The union of the permissions of ``roles``; roles missing from ``role_table`` grant nothing."""
    granted: frozenset[Permission] = frozenset()
    for role in roles:
        granted |= role_table.get(role, frozenset())
    return granted


def require(principal: str, granted: frozenset[Permission] | None, needed: Permission) -> None:
    """Return if ``granted`` contains ``needed``; raise :class:`PermissionDenied` otherwise.

    ``granted`` is ``None`` when the principal is unknown; the error then says
    ``unknown principal '<name>'``.
    """
    if granted is None:
        raise PermissionDenied(principal, str(needed), reason=f"unknown principal {principal!r}")
    if needed not in granted:
        raise PermissionDenied(principal, str(needed))


def require_operation(principal: str, granted: frozenset[Permission] | None, operation: str) -> None:
    """:func:`require` the permission :func:`permission_for` ``operation`` names."""
    require(principal, granted, permission_for(operation))
