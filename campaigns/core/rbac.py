"""Role-based access rules: which permission each operation needs, and the check itself.

Guarantees:

* Every operation the service API and the ``campaign.commands`` consumer expose is listed in
  :data:`OPERATION_PERMISSION`; the API and the command path use the same table, so a command can never
  do what the acting principal could not do through the API.
* :func:`require` either returns ``None`` or raises :class:`~campaigns.errors.PermissionDenied`; it never
  looks anything up itself. The caller resolves the principal's granted permissions (from the
  ``principals`` / ``roles`` tables, or :data:`DEFAULT_ROLES` via :func:`permissions_for_roles`) and
  passes ``None`` for a principal it does not know.
* :func:`require_owner` is the ownership rule: a principal manages only the campaigns it created unless it
  holds :attr:`Permission.CAMPAIGNS_MANAGE_ANY` (admins do; marketers do not).
* :func:`check_principal_name` refuses the names the code itself uses as actors (:data:`RESERVED_NAMES`), so
  nobody can register ``system`` or ``operator`` and appear in the audit log as an internal actor.
* The tables are read-only mappings.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from enum import StrEnum
from types import MappingProxyType

from campaigns.errors import PermissionDenied, ValidationError

__all__ = [
    "DEFAULT_ROLES",
    "OPERATION_PERMISSION",
    "RESERVED_NAMES",
    "Permission",
    "check_principal_name",
    "permission_for",
    "permissions_for_roles",
    "require",
    "require_operation",
    "require_owner",
]


class Permission(StrEnum):
    """A permission; values are the strings stored in ``role_permissions``."""

    CAMPAIGNS_CREATE = "campaigns.create"
    CAMPAIGNS_SEND = "campaigns.send"
    CAMPAIGNS_READ = "campaigns.read"
    CAMPAIGNS_MANAGE_ANY = "campaigns.manage_any"  # act on campaigns other principals created
    CONTENT_SEND_UNAPPROVED = "content.send_unapproved"  # inline content goes out without an approval
    CAMPAIGNS_AUDIT = "campaigns.audit"  # read the audit log
    PRINCIPALS_MANAGE = "principals.manage"  # principals, their roles and their API tokens
    TEMPLATES_MANAGE = "templates.manage"  # templates, and approving a campaign's inline content
    CHANNELS_MANAGE = "channels.manage"  # provider accounts, their limits and breakers
    CUSTOMERS_MANAGE = "customers.manage"  # bulk-load customers and segments
    CUSTOMERS_IMPORT = "customers.import"  # import customers and segment members (CSV files, import commands)
    PIPELINE_READ = "pipeline.read"  # read the dead letters, campaign events and rejected commands
    PIPELINE_REPLAY = "pipeline.replay"  # re-drive topic ranges and dead letters


DEFAULT_ROLES: Mapping[str, frozenset[Permission]] = MappingProxyType(
    {
        "admin": frozenset(Permission),
        "marketer": frozenset(
            {Permission.CAMPAIGNS_CREATE, Permission.CAMPAIGNS_SEND, Permission.CAMPAIGNS_READ,
             Permission.CUSTOMERS_IMPORT}
        ),
        "auditor": frozenset(
            {Permission.CAMPAIGNS_READ, Permission.CAMPAIGNS_AUDIT, Permission.PIPELINE_READ}
        ),
    }
)
"""The default roles (migrations 0001, 0006 and 0011 seed them): admin has everything; marketers create, send and
read, only their own campaigns and only approved content, and import their audience; auditors read campaigns,
the audit log and the pipeline's event, rejected-command and dead-letter topics."""

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
        "list_principals": Permission.PRINCIPALS_MANAGE,
        "create_token": Permission.PRINCIPALS_MANAGE,
        "revoke_token": Permission.PRINCIPALS_MANAGE,
        "list_tokens": Permission.PRINCIPALS_MANAGE,
        "add_template": Permission.TEMPLATES_MANAGE,
        "approve_template": Permission.TEMPLATES_MANAGE,
        "approve_content": Permission.TEMPLATES_MANAGE,
        "add_channel": Permission.CHANNELS_MANAGE,
        "close_channel": Permission.CHANNELS_MANAGE,
        "list_channels": Permission.CAMPAIGNS_READ,
        "seed_customers": Permission.CUSTOMERS_MANAGE,
        "import_customers": Permission.CUSTOMERS_IMPORT,
        "import_segment": Permission.CUSTOMERS_IMPORT,
        "list_dead_letters": Permission.PIPELINE_READ,
        "list_events": Permission.PIPELINE_READ,
        "list_rejected_commands": Permission.PIPELINE_READ,
        "replay": Permission.PIPELINE_REPLAY,
        "redrive_dead_letters": Permission.PIPELINE_REPLAY,
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


def require_owner(
    principal: str, granted: frozenset[Permission] | None, owner: str, campaign: str = "the campaign"
) -> None:
    """The ownership rule: return if ``principal`` created the campaign (``owner``) or holds
    :attr:`Permission.CAMPAIGNS_MANAGE_ANY`; raise :class:`PermissionDenied` otherwise. Call it after the
    operation's own permission was checked."""
    if granted is None:
        raise PermissionDenied(principal, str(Permission.CAMPAIGNS_MANAGE_ANY),
                               reason=f"unknown principal {principal!r}")
    if principal != owner and Permission.CAMPAIGNS_MANAGE_ANY not in granted:
        raise PermissionDenied(
            principal, str(Permission.CAMPAIGNS_MANAGE_ANY),
            reason=f"{campaign} belongs to {owner!r}: principal {principal!r} manages only its own campaigns "
                   f"and lacks {str(Permission.CAMPAIGNS_MANAGE_ANY)!r}",
        )


RESERVED_NAMES: frozenset[str] = frozenset({"system", "operator", "anonymous", "recipient"})
"""Names no principal may have: ``system`` (the scheduler, analytics and in-process programs act as it) and
``operator`` (what older audit rows name for database-level changes), plus names that would read as an
internal actor in the audit log. Compared case-insensitively."""

_NAME = re.compile(r"[a-z0-9][a-z0-9._@+-]{0,127}", re.I)


def check_principal_name(name: object) -> str:
    """``name`` if it may be registered as a principal, else :class:`ValidationError`.

    1..128 characters of ASCII letters, digits and ``. _ @ + -``, starting with a letter or digit (no
    spaces, no look-alike Unicode, nothing that needs quoting in a log line), and not a reserved name
    (:data:`RESERVED_NAMES`, any case, also with a ``system.``/``system:`` style prefix).
    """
    if not isinstance(name, str) or not _NAME.fullmatch(name):
        raise ValidationError(
            f"name: {name!r} is not a valid principal name: 1..128 ASCII letters, digits and . _ @ + -, "
            "starting with a letter or digit"
        )
    folded = name.casefold()
    stem = re.split(r"[._@+-]", folded, maxsplit=1)[0]
    if folded in RESERVED_NAMES or stem in {"system", "operator"}:
        raise ValidationError(
            f"name: {name!r} is reserved (the code uses {', '.join(sorted(RESERVED_NAMES))} and system.* / "
            "operator.* as internal actors); choose another name"
        )
    return name
