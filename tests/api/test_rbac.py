"""The RBAC matrix through the HTTP API: every operation as admin, marketer and auditor, allowed exactly when the
role holds the operation's documented permission (``x-permission`` in /openapi.json, which must be the one
``campaigns.core.rbac`` maps the operation to), and the ownership rule: a marketer manages only her own campaigns."""

from __future__ import annotations

import json

import httpx
import pytest

from campaigns.core.rbac import DEFAULT_ROLES
from campaigns.settings import Settings
from tests.api.conftest import Api, start_api
from tests.api.test_contract import CASES, World, operations, send
from tests.entrypoints.conftest import EntryPoints

pytestmark = [pytest.mark.kafka, pytest.mark.postgres]

OWN_TOKENS = ("POST", "/v1/tokens/{token_id}/revoke")  # the case revokes alice's token: she may revoke her own


def test_rbac_matrix_through_the_api(entry: EntryPoints, api: Api, settings: Settings):
    document = api.call("GET", "/openapi.json").body
    world = World(entry, api, settings)
    denied_seen, allowed_seen = 0, 0
    for role in ("admin", "marketer", "auditor"):
        granted = {p.value for p in DEFAULT_ROLES[role]}
        token = world.tokens[role]
        # Campaigns the cases need are made by the role itself when it may create them (ownership), else the admin.
        world.acting = token if "campaigns.create" in granted else None
        for key, op in sorted(operations(document).items()):
            permission = op.get("x-permission")
            case = CASES[key]
            if permission is None or case.get("sse"):
                continue
            method, template = key
            path, body = case["ok"](world)
            answer = send(api, method, path, body, token)
            allowed = permission in granted or (key == OWN_TOKENS and role == "marketer")
            expected = case["status"] if allowed else 403
            assert answer.status == expected, f"{role} {method} {template}: {answer.status} {answer.body}"
            if allowed:
                allowed_seen += 1
            else:
                denied_seen += 1
                assert answer.body["code"] == "permission-denied" and answer.body["exit_code"] == 3, answer.body
                assert permission in answer.body["detail"], answer.body
        for template in ("/v1/stream/campaigns",):  # campaigns.read: every role
            status, _, snapshot = api.first_event(template, token)
            assert status == 200 and snapshot is not None
    assert denied_seen > 20 and allowed_seen > 20, (denied_seen, allowed_seen)


def test_a_marketer_manages_only_her_own_campaigns(entry: EntryPoints, api: Api, settings: Settings):
    world = World(entry, api, settings)
    admins = world.scheduled()
    alice = world.tokens["marketer"]
    refused = api.call("POST", f"/v1/campaigns/{admins}/pause", token=alice)
    assert refused.status == 403 and refused.body["code"] == "permission-denied", refused.body
    assert api.call("GET", f"/v1/campaigns/{admins}", token=alice).status == 200  # reading is not owner-bound
    world.acting = alice
    hers = world.scheduled()
    assert api.call("POST", f"/v1/campaigns/{hers}/pause", token=alice).body["status"] == "paused"
    # The admin holds campaigns.manage_any.
    assert api.call("POST", f"/v1/campaigns/{hers}/cancel", token=world.admin).body["status"] == "cancelled"
    audit = api.call("GET", "/v1/audit", token=world.tokens["auditor"], params={"campaign": hers}).body["items"]
    assert [(e["principal"], e["action"]) for e in audit][-2:] == [("alice", "pause_campaign"),
                                                                    ("harness-admin", "cancel_campaign")], audit


def test_an_event_stream_ends_when_its_token_is_revoked(entry: EntryPoints, settings: Settings):
    api = start_api(entry, CAMPAIGNS_API__STREAM_RECHECK_S="0.5")
    try:
        world = World(entry, api, settings)
        token = world.tokens["marketer"]
        token_id = token.split("_")[1]
        events: list[tuple[str, str]] = []
        with httpx.Client(base_url=api.base, timeout=30) as client, client.stream(
                "GET", "/v1/stream/campaigns", headers={"Authorization": f"Bearer {token}"}) as response:
            assert response.status_code == 200
            event = ""
            for line in response.iter_lines():
                if line.startswith("event:"):
                    event = line[6:].strip()
                elif line.startswith("data:"):
                    events.append((event, line[5:].strip()))
                    if event == "snapshot" and len(events) == 1:
                        revoked = api.call("POST", f"/v1/tokens/{token_id}/revoke", token=world.admin)
                        assert revoked.status == 200, revoked.body
        assert events[0][0] == "snapshot" and events[-1][0] == "end", events
        assert json.loads(events[-1][1])["code"] == "unauthenticated"
        assert api.call("GET", "/v1/stream/campaigns", token=token).status == 401
    finally:
        api.close()
