"""RBAC rules: the full operation x role matrix, and the errors."""

from __future__ import annotations

import itertools

import pytest

from campaigns.core.rbac import (
    DEFAULT_ROLES,
    OPERATION_PERMISSION,
    Permission,
    check_principal_name,
    permission_for,
    permissions_for_roles,
    require,
    require_operation,
    require_owner,
)
from campaigns.errors import PermissionDenied, ValidationError

P = Permission

# Which default role may perform which operation (the product's intent, written out by hand).
ALLOWED_ROLES: dict[str, set[str]] = {
    "create_campaign": {"admin", "marketer"},
    "schedule_campaign": {"admin", "marketer"},
    "pause_campaign": {"admin", "marketer"},
    "resume_campaign": {"admin", "marketer"},
    "cancel_campaign": {"admin", "marketer"},
    "get_campaign": {"admin", "marketer", "auditor"},
    "campaign_status": {"admin", "marketer", "auditor"},
    "update_metrics": {"admin", "marketer"},
    "read_audit_log": {"admin", "auditor"},
    "add_principal": {"admin"},
    "list_principals": {"admin"},
    "create_token": {"admin"},
    "revoke_token": {"admin"},
    "list_tokens": {"admin"},
    "add_template": {"admin"},
    "approve_template": {"admin"},
    "approve_content": {"admin"},
    "add_channel": {"admin"},
    "close_channel": {"admin"},
    "list_channels": {"admin", "marketer", "auditor"},
    "seed_customers": {"admin"},
    "import_customers": {"admin", "marketer"},
    "import_segment": {"admin", "marketer"},
    "list_dead_letters": {"admin", "auditor"},
    "list_events": {"admin", "auditor"},
    "list_rejected_commands": {"admin", "auditor"},
    "replay": {"admin"},
    "redrive_dead_letters": {"admin"},
}

MATRIX = list(itertools.product(sorted(ALLOWED_ROLES), sorted(DEFAULT_ROLES)))


def test_permission_values() -> None:
    assert {p.value for p in Permission} == {
        "campaigns.create",
        "campaigns.send",
        "campaigns.read",
        "campaigns.audit",
        "campaigns.manage_any",
        "content.send_unapproved",
        "principals.manage",
        "templates.manage",
        "channels.manage",
        "customers.manage",
        "customers.import",
        "pipeline.read",
        "pipeline.replay",
    }


def test_default_roles() -> None:
    assert DEFAULT_ROLES["admin"] == frozenset(Permission)
    assert DEFAULT_ROLES["marketer"] == {P.CAMPAIGNS_CREATE, P.CAMPAIGNS_SEND, P.CAMPAIGNS_READ, P.CUSTOMERS_IMPORT}
    assert DEFAULT_ROLES["auditor"] == {P.CAMPAIGNS_READ, P.CAMPAIGNS_AUDIT, P.PIPELINE_READ}


def test_every_operation_is_in_the_matrix() -> None:
    assert set(OPERATION_PERMISSION) == set(ALLOWED_ROLES)


def test_operation_permissions() -> None:
    assert OPERATION_PERMISSION["create_campaign"] == P.CAMPAIGNS_CREATE
    assert OPERATION_PERMISSION["update_metrics"] == P.CAMPAIGNS_SEND
    for op in ("schedule_campaign", "pause_campaign", "resume_campaign", "cancel_campaign"):
        assert OPERATION_PERMISSION[op] == P.CAMPAIGNS_SEND
    for op in ("get_campaign", "campaign_status"):
        assert OPERATION_PERMISSION[op] == P.CAMPAIGNS_READ
    assert OPERATION_PERMISSION["add_principal"] == P.PRINCIPALS_MANAGE
    assert OPERATION_PERMISSION["add_template"] == P.TEMPLATES_MANAGE
    assert OPERATION_PERMISSION["approve_template"] == P.TEMPLATES_MANAGE


@pytest.mark.parametrize(("operation", "role"), MATRIX, ids=[f"{o}-{r}" for o, r in MATRIX])
def test_operation_role_matrix(operation: str, role: str) -> None:
    granted = DEFAULT_ROLES[role]
    if role in ALLOWED_ROLES[operation]:
        require_operation("alice", granted, operation)
        require("alice", granted, permission_for(operation))
    else:
        with pytest.raises(PermissionDenied) as info:
            require_operation("alice", granted, operation)
        assert info.value.principal == "alice"
        assert info.value.permission == OPERATION_PERMISSION[operation].value
        assert "'alice' lacks permission" in str(info.value)
        assert OPERATION_PERMISSION[operation].value in str(info.value)


@pytest.mark.parametrize("permission", list(Permission))
def test_unknown_principal(permission: Permission) -> None:
    with pytest.raises(PermissionDenied) as info:
        require("mallory", None, permission)
    assert str(info.value).startswith("unknown principal 'mallory'")
    assert info.value.permission == permission.value


def test_principal_with_no_roles_is_denied() -> None:
    with pytest.raises(PermissionDenied):
        require("bob", frozenset(), P.CAMPAIGNS_READ)


def test_permissions_for_roles() -> None:
    assert permissions_for_roles(["marketer", "auditor"]) == {
        P.CAMPAIGNS_CREATE, P.CAMPAIGNS_SEND, P.CAMPAIGNS_READ, P.CAMPAIGNS_AUDIT, P.PIPELINE_READ,
        P.CUSTOMERS_IMPORT,
    }
    assert permissions_for_roles(["no-such-role"]) == frozenset()
    assert permissions_for_roles([]) == frozenset()


def test_unknown_operation_is_a_key_error_naming_the_known_ones() -> None:
    with pytest.raises(KeyError, match="create_campaign"):
        permission_for("drop_database")


def test_tables_are_read_only() -> None:
    with pytest.raises(TypeError):
        DEFAULT_ROLES["intern"] = frozenset(Permission)  # type: ignore[index]
    with pytest.raises(TypeError):
        OPERATION_PERMISSION["drop_database"] = P.CAMPAIGNS_READ  # type: ignore[index]


def test_ownership_rule() -> None:
    require_owner("alice", DEFAULT_ROLES["marketer"], "alice")
    require_owner("root", DEFAULT_ROLES["admin"], "alice")  # campaigns.manage_any
    with pytest.raises(PermissionDenied, match=r"belongs to 'root'.*manages only its own") as info:
        require_owner("alice", DEFAULT_ROLES["marketer"], "root", "campaign X")
    assert info.value.permission == "campaigns.manage_any"
    with pytest.raises(PermissionDenied, match="unknown principal"):
        require_owner("mallory", None, "mallory")


def test_marketers_cannot_send_unapproved_content_by_default() -> None:
    assert P.CONTENT_SEND_UNAPPROVED in DEFAULT_ROLES["admin"]
    assert P.CONTENT_SEND_UNAPPROVED not in DEFAULT_ROLES["marketer"]
    assert P.CAMPAIGNS_MANAGE_ANY not in DEFAULT_ROLES["marketer"]


@pytest.mark.parametrize("name", ["system", "SYSTEM", "System", "operator", "Operator", "anonymous",
                                  "system.scheduler", "system-1", "operator@ops", "", " alice", "alice bob",
                                  "al\u0456ce", "a" * 129, "-alice", "alice\n", None, 42])
def test_reserved_and_malformed_principal_names_are_refused(name: object) -> None:
    with pytest.raises(ValidationError):
        check_principal_name(name)


@pytest.mark.parametrize("name", ["alice", "marketer-1", "bob@example.com", "ops.oncall", "systematic", "a" * 128,
                                  "crm+sync_2"])
def test_ordinary_names_are_accepted(name: str) -> None:
    assert check_principal_name(name) == name
