"""Contract tests driven by ``/openapi.json`` of a ``campaigns api`` subprocess on the real services.

For every operation of the document: its success answer validates against the documented schema, and every
error status it documents is produced, as an RFC 9457 problem whose ``code`` and ``exit_code`` are the documented
ones (the CLI's exit codes). A route added without a case here fails the test, as does a documented error that
nothing produces. Bad input (malformed JSON, huge and deeply nested bodies, wrong types, unknown fields) gets a
problem, never a 500, and writes nothing.
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from typing import Any

import jsonschema
import pytest

from campaigns.core.rbac import DEFAULT_ROLES
from campaigns.core.unsubscribe import make_token
from campaigns.settings import Settings
from tests.api.conftest import Answer, Api, campaign_count, start_api
from tests.entrypoints.conftest import REPO_ROOT, EntryPoints, query

pytestmark = [pytest.mark.kafka, pytest.mark.postgres]

EXIT_CODES = {"malformed-request": 2, "unauthenticated": 3, "permission-denied": 3, "not-found": 4,
              "method-not-allowed": 2, "transition-not-allowed": 4, "request-too-large": 2,
              "unsupported-media-type": 2, "invalid-input": 2, "idempotency-key-reused": 2,
              "internal-error": 1, "service-unavailable": 5}
STATUS_CODES = {400: {"malformed-request"}, 401: {"unauthenticated"}, 403: {"permission-denied"},
                404: {"not-found"}, 409: {"transition-not-allowed", "idempotency-key-in-progress"},
                413: {"request-too-large"}, 415: {"unsupported-media-type"},
                422: {"invalid-input", "idempotency-key-reused"}, 429: {"rate-limited"},
                503: {"service-unavailable"}}


def operations(document: dict[str, Any]) -> dict[tuple[str, str], dict[str, Any]]:
    return {(method.upper(), path): op for path, ops in document["paths"].items() for method, op in ops.items()}


def check_schema(document: dict[str, Any], op: dict[str, Any], answer: Answer, what: str) -> None:
    documented = op["responses"].get(str(answer.status))
    assert documented is not None, f"{what}: status {answer.status} is not documented: {answer.body}"
    content = documented.get("content", {})
    kind = "application/problem+json" if answer.status >= 400 else "application/json"
    assert answer.status < 400 or set(content) == {kind}, f"{what}: {answer.status} must be a problem: {content}"
    if kind in content and content[kind].get("schema"):
        schema = {**content[kind]["schema"], "components": document["components"]}
        jsonschema.validate(answer.body, schema, cls=jsonschema.Draft202012Validator)


def check_problem(answer: Answer, status: int, what: str) -> None:
    assert answer.status == status, f"{what}: expected {status}, got {answer.status}: {answer.body}"
    problem = answer.problem
    assert problem["status"] == status and problem["type"] == f"/problems/{problem['code']}", problem
    assert problem["code"] in STATUS_CODES[status], problem
    assert problem.get("exit_code") == EXIT_CODES.get(problem["code"]), problem
    assert problem["title"] and problem["detail"] and "Traceback" not in json.dumps(problem), problem


class World:
    """Principals, a channel, customers, templates and campaigns, made through the API (and `seed`)."""

    def __init__(self, entry: EntryPoints, api: Api, settings: Settings) -> None:
        self.entry, self.api, self.settings = entry, api, settings
        self.admin = entry.token_for(None)
        # A role with only customers.manage (no route needs it), to see 403 on routes every default role may use.
        query(settings, "INSERT INTO roles (name) VALUES ('nobody') ON CONFLICT DO NOTHING")
        query(settings, "INSERT INTO role_permissions (role_name, permission) VALUES ('nobody', 'customers.manage') "
                        "ON CONFLICT DO NOTHING")
        self.tokens: dict[str, str] = {"admin": self.admin}
        self.acting: str | None = None  # whose token the cases' set-up acts with (None: the admin's)
        for name, role in (("alice", "marketer"), ("audrey", "auditor"), ("nemo", "nobody")):
            self.ok(self.api.call("POST", "/v1/principals", token=self.admin, json_body={"name": name, "role": role}),
                    201)
            created = self.ok(self.api.call("POST", "/v1/tokens", token=self.admin, json_body={"principal": name}),
                              201)
            self.tokens[role] = created["token"]
        self.ok(self.api.call("POST", "/v1/channels", token=self.admin,
                              json_body={"kind": "sms", "rate_per_s": 100, "burst": 20}), 200)
        self.segments = json.loads(entry.cli("seed", "--customers", "60").stdout)["segments"]
        template = json.loads((REPO_ROOT / "examples" / "template-sms.json").read_text())
        self.ok(self.api.call("POST", "/v1/templates", token=self.admin, json_body={**template, "approve": True}),
                201)
        entry.cli("topics", "create")

    def ok(self, answer: Answer, status: int) -> Any:
        assert answer.status == status, answer
        return answer.body

    def payload(self, **changes: Any) -> dict[str, Any]:
        """A campaign on the approved SMS template (schedulable by whoever creates it)."""
        payload = json.loads((REPO_ROOT / "examples" / "campaign-sms.json").read_text())
        del payload["start_at"], payload["manual_recipients"]
        payload["segments"] = [self.segments[-1]]
        payload.update(changes)
        return payload

    def inline_campaign(self, token: str) -> str:
        """A campaign with inline content: made by a marketer, it waits for an approver."""
        payload = json.loads((REPO_ROOT / "examples" / "campaign-inline-sms.json").read_text())
        payload["segments"] = [self.segments[-1]]
        return self.ok(self.api.call("POST", "/v1/campaigns", token=token, json_body=payload), 201)["id"]

    @property
    def actor(self) -> str:
        return self.acting or self.admin

    def campaign(self, token: str | None = None, **changes: Any) -> str:
        return self.ok(self.api.call("POST", "/v1/campaigns", token=token or self.actor,
                                     json_body=self.payload(**changes)), 201)["id"]

    def scheduled(self) -> str:
        campaign = self.campaign()
        at = (datetime.now(UTC) + timedelta(hours=1)).isoformat()
        self.ok(self.api.call("POST", f"/v1/campaigns/{campaign}/schedule", token=self.actor,
                              json_body={"at": at}), 200)
        return campaign

    def pending_template(self) -> str:
        return self.ok(self.api.call("POST", "/v1/templates", token=self.admin, json_body={
            "name": f"t-{uuid.uuid4().hex[:8]}", "channel": "sms", "body": "Hi {{ name }}"}), 201)["id"]

    def token_id(self, principal: str = "alice") -> str:
        created = self.ok(self.api.call("POST", "/v1/tokens", token=self.admin, json_body={"principal": principal}),
                          201)
        return created["id"]


Request = tuple[str, Any]  # (path, JSON body or None)
Make = Callable[[World], Request]
MISSING = "00000000-0000-4000-8000-000000000000"


def transition_case(action: str, ready: Callable[[World], str], refused: Callable[[World], str]) -> dict[str, Any]:
    return {"ok": lambda w: (f"/v1/campaigns/{ready(w)}/{action}", None), "status": 200,
            404: lambda w: (f"/v1/campaigns/{MISSING}/{action}", None),
            409: lambda w: (f"/v1/campaigns/{refused(w)}/{action}", None),
            422: lambda w: (f"/v1/campaigns/not-a-uuid/{action}", None)}


def paused(w: World) -> str:
    campaign = w.scheduled()
    w.ok(w.api.call("POST", f"/v1/campaigns/{campaign}/pause", token=w.actor), 200)
    return campaign


def cancelled(w: World) -> str:
    campaign = w.campaign()
    w.ok(w.api.call("POST", f"/v1/campaigns/{campaign}/cancel", token=w.actor), 200)
    return campaign


def unsubscribe_link(w: World | None, customer_id: int) -> str:
    """A one-click unsubscribe URI as the sender makes it (signed with the API's default secret)."""
    return "/unsubscribe?token=" + make_token(Settings().unsubscribe.secret_bytes(), customer_id, "email", uuid.uuid4())


def soon() -> str:
    return (datetime.now(UTC) + timedelta(hours=1)).isoformat()


# One case per operation: how to call it successfully, and how to provoke the errors that depend on the route
# (401, 403, 400, 413, 415, 429 and 503 are provoked the same way for every route that documents them).
class Csv(bytes):
    """A CSV request body (sent as ``text/csv``; every other body is JSON)."""


def send(api: Api, method: str, path: str, body: Any, token: str | None, **kw: Any) -> Answer:
    if isinstance(body, Csv):
        return api.call(method, path, token=token, content=bytes(body), headers={"Content-Type": "text/csv"}, **kw)
    return api.call(method, path, token=token, json_body=body, **kw)


CASES: dict[tuple[str, str], dict[str, Any]] = {
    ("GET", "/healthz"): {"ok": lambda w: ("/healthz", None), "status": 200},
    ("POST", "/unsubscribe"): {  # no bearer token: the link's signed token is the credential
        "ok": lambda w: (unsubscribe_link(w, 1), None), "status": 200,
        403: lambda w: (unsubscribe_link(w, 1)[:-3] + "AAA", None),
        404: lambda w: (unsubscribe_link(w, 2**62), None),
        422: lambda w: ("/unsubscribe", None)},
    ("GET", "/v1/me"): {"ok": lambda w: ("/v1/me", None), "status": 200},
    ("GET", "/v1/campaigns"): {"ok": lambda w: ("/v1/campaigns?limit=2&status=draft&channel=sms", None),
                               "status": 200, 422: lambda w: ("/v1/campaigns?limit=0", None)},
    ("POST", "/v1/campaigns"): {"ok": lambda w: ("/v1/campaigns", w.payload()), "status": 201,
                                422: lambda w: ("/v1/campaigns", w.payload(zzz=1))},
    ("GET", "/v1/campaigns/{campaign_id}"): {
        "ok": lambda w: (f"/v1/campaigns/{w.campaign()}", None), "status": 200,
        404: lambda w: (f"/v1/campaigns/{MISSING}", None), 422: lambda w: ("/v1/campaigns/not-a-uuid", None)},
    ("GET", "/v1/campaigns/{campaign_id}/status"): {
        "ok": lambda w: (f"/v1/campaigns/{w.campaign()}/status", None), "status": 200,
        404: lambda w: (f"/v1/campaigns/{MISSING}/status", None),
        422: lambda w: ("/v1/campaigns/not-a-uuid/status", None)},
    ("POST", "/v1/campaigns/{campaign_id}/schedule"): {
        "ok": lambda w: (f"/v1/campaigns/{w.campaign()}/schedule", {"at": soon()}), "status": 200,
        404: lambda w: (f"/v1/campaigns/{MISSING}/schedule", {"at": soon()}),
        409: lambda w: (f"/v1/campaigns/{cancelled(w)}/schedule", {"at": soon()}),
        422: lambda w: (f"/v1/campaigns/{w.campaign()}/schedule", {"at": "tomorrow"})},
    ("POST", "/v1/campaigns/{campaign_id}/pause"): transition_case("pause", World.scheduled, World.campaign),
    ("POST", "/v1/campaigns/{campaign_id}/resume"): transition_case("resume", paused, World.campaign),
    ("POST", "/v1/campaigns/{campaign_id}/cancel"): transition_case("cancel", World.campaign, cancelled),
    ("POST", "/v1/campaigns/{campaign_id}/approve"): {
        # alice (a marketer) cannot approve her own inline content: it waits for an admin
        "ok": lambda w: (f"/v1/campaigns/{w.inline_campaign(w.tokens['marketer'])}/approve", None), "status": 200,
        404: lambda w: (f"/v1/campaigns/{MISSING}/approve", None),
        409: lambda w: (f"/v1/campaigns/{w.campaign()}/approve", None),
        422: lambda w: ("/v1/campaigns/not-a-uuid/approve", None)},
    ("POST", "/v1/campaigns/{campaign_id}/receipts"): {
        "ok": lambda w: (f"/v1/campaigns/{w.campaign()}/receipts", {"delivered": 2, "read": 1}), "status": 202,
        404: lambda w: (f"/v1/campaigns/{MISSING}/receipts", {"delivered": 1}),
        422: lambda w: (f"/v1/campaigns/{w.campaign()}/receipts", {"delivered": -1})},
    ("GET", "/v1/templates"): {"ok": lambda w: ("/v1/templates?channel=sms", None), "status": 200,
                               422: lambda w: ("/v1/templates?channel=fax", None)},
    ("POST", "/v1/templates"): {
        "ok": lambda w: ("/v1/templates", {"name": "welcome", "channel": "sms", "body": "Hi {{ name }}",
                                           "approve": True}), "status": 201,
        422: lambda w: ("/v1/templates", {"name": "x", "channel": "sms", "body": "Hi", "subject": "no"})},
    ("POST", "/v1/templates/{template_id}/approve"): {
        "ok": lambda w: (f"/v1/templates/{w.pending_template()}/approve", None), "status": 200,
        404: lambda w: ("/v1/templates/999999999/approve", None), 422: lambda w: ("/v1/templates/0/approve", None)},
    ("GET", "/v1/channels"): {"ok": lambda w: ("/v1/channels", None), "status": 200},
    ("POST", "/v1/channels"): {"ok": lambda w: ("/v1/channels", {"kind": "sms", "rate_per_s": 50, "burst": 10}),
                               "status": 200,
                               422: lambda w: ("/v1/channels", {"kind": "sms", "rate_per_s": "fast", "burst": 1})},
    ("POST", "/v1/channels/{kind}/close"): {
        "ok": lambda w: ("/v1/channels/sms/close", None), "status": 200,
        404: lambda w: ("/v1/channels/email/close", None), 422: lambda w: ("/v1/channels/fax/close", None)},
    ("GET", "/v1/principals"): {"ok": lambda w: ("/v1/principals", None), "status": 200},
    ("POST", "/v1/principals"): {"ok": lambda w: ("/v1/principals", {"name": "bob", "role": "marketer"}),
                                 "status": 201,
                                 422: lambda w: ("/v1/principals", {"name": "system", "role": "admin"})},
    ("GET", "/v1/tokens"): {"ok": lambda w: ("/v1/tokens?principal=alice", None), "status": 200,
                            422: lambda w: ("/v1/tokens?principal=" + "x" * 129, None)},
    ("POST", "/v1/tokens"): {"ok": lambda w: ("/v1/tokens", {"principal": "alice", "expires_in_s": 3600}),
                             "status": 201, 404: lambda w: ("/v1/tokens", {"principal": "ghost"}),
                             422: lambda w: ("/v1/tokens", {"principal": "alice", "expires_in_s": 1})},
    ("POST", "/v1/tokens/{token_id}/revoke"): {
        "ok": lambda w: (f"/v1/tokens/{w.token_id()}/revoke", None), "status": 200,
        "forbidden_role": "auditor",  # alice's token: she (the marketer) may revoke her own
        404: lambda w: ("/v1/tokens/0123456789abcdef/revoke", None),
        422: lambda w: ("/v1/tokens/not-a-token-id/revoke", None)},
    ("GET", "/v1/audit"): {"ok": lambda w: ("/v1/audit?limit=5", None), "status": 200,
                           422: lambda w: ("/v1/audit?since=yesterday", None)},
    ("GET", "/v1/dead-letters"): {"ok": lambda w: ("/v1/dead-letters?limit=5", None), "status": 200,
                                  422: lambda w: ("/v1/dead-letters?limit=0", None)},
    ("POST", "/v1/dead-letters/redrive"): {"ok": lambda w: ("/v1/dead-letters/redrive", {"dry_run": True}),
                                           "status": 200,
                                           422: lambda w: ("/v1/dead-letters/redrive", {"campaign": "x"})},
    ("POST", "/v1/customers/import"): {
        "ok": lambda w: ("/v1/customers/import", Csv(f"external_id,email\nc-{uuid.uuid4().hex[:8]},a@example.com\n"
                                                     .encode())), "status": 200,
        422: lambda w: ("/v1/customers/import", Csv(b"external_id,email\nc-1,not-an-email\n"))},
    ("GET", "/v1/stream/campaigns"): {"ok": lambda w: ("/v1/stream/campaigns", None), "status": 200, "sse": True},
    ("GET", "/v1/stream/campaigns/{campaign_id}"): {
        "ok": lambda w: (f"/v1/stream/campaigns/{w.campaign()}", None), "status": 200, "sse": True,
        404: lambda w: (f"/v1/stream/campaigns/{MISSING}", None),
        422: lambda w: ("/v1/stream/campaigns/not-a-uuid", None)},
}


def lacking(permission: str | None) -> str | None:
    """A role of the test's world without ``permission`` (``nobody`` has only customers.manage)."""
    if permission is None:
        return None
    for role in ("marketer", "auditor"):
        if permission not in {p.value for p in DEFAULT_ROLES[role]}:
            return role
    return "nobody"


def test_every_route_and_every_documented_error(entry: EntryPoints, api: Api, settings: Settings):
    document = api.call("GET", "/openapi.json").body
    assert document["openapi"].startswith("3.1"), document["openapi"]
    ops = operations(document)
    assert set(ops) == set(CASES), f"routes without a case: {set(ops) - set(CASES)}; stale: {set(CASES) - set(ops)}"
    world = World(entry, api, settings)
    seen: dict[tuple[str, str], set[int]] = {key: set() for key in ops}

    def call(method: str, path: str, body: Any, token: str | None, **kw: Any) -> Answer:
        return send(api, method, path, body, token, **kw)

    for key, op in sorted(ops.items()):
        method, template = key
        case = CASES[key]
        what = f"{method} {template}"
        documented = {int(s) for s in op["responses"]}
        path, body = case["ok"](world)
        if case.get("sse"):
            status, kind, snapshot = api.first_event(path, world.admin)
            assert status == 200 and kind.startswith("text/event-stream") and snapshot and "at" in snapshot, \
                (what, status, snapshot)
        else:
            answer = call(method, path, body, world.admin)
            assert answer.status == case["status"], (what, answer)
            check_schema(document, op, answer, what)
        seen[key].add(case["status"])
        for status in sorted(documented - {case["status"]}):
            if status in (429, 503):
                continue  # provoked below, on a server without a database
            if status == 401:
                answer = call(method, path, body, None)
            elif status == 403 and 403 not in case:
                role = case.get("forbidden_role") or lacking(op.get("x-permission"))
                assert role is not None, f"{what} documents 403 but no permission"
                p, b = case["ok"](world)
                answer = call(method, p, b, world.tokens[role])
            elif status == 400:
                answer = api.call(method, path, token=world.admin, content=b'{"name": ',
                                  headers={"Content-Type": "application/json"})
            elif status == 413:
                answer = api.call(method, path, token=world.admin, content=b" " * (1024 * 1024 + 1),
                                  headers={"Content-Type": "application/json"})
            elif status == 415:
                answer = api.call(method, path, token=world.admin, content=b"{}",
                                  headers={"Content-Type": "text/plain"})
            else:
                assert status in case, f"{what} documents {status}: add how to provoke it to CASES"
                p, b = case[status](world)
                answer = call(method, p, b, world.admin)
            check_problem(answer, status, f"{what} ({status})")
            check_schema(document, op, answer, what)
            seen[key].add(status)
    assert all(seen[key] >= {int(s) for s in ops[key]["responses"]} - {429, 503} for key in ops), seen


def test_the_documented_create_payload_is_the_docs_schema_and_fits_the_examples(api: Api):
    from jsonschema import Draft202012Validator

    shipped = json.loads((REPO_ROOT / "api" / "campaign-payload.schema.json").read_text())
    assert shipped == json.loads((REPO_ROOT / "docs" / "campaign-payload.schema.json").read_text()), \
        "api/campaign-payload.schema.json must be a copy of docs/campaign-payload.schema.json"
    document = api.call("GET", "/openapi.json").body
    body = document["paths"]["/v1/campaigns"]["post"]["requestBody"]["content"]["application/json"]["schema"]
    schema = {**body, "components": document["components"]}
    for example in sorted((REPO_ROOT / "examples").glob("campaign-*.json")):
        Draft202012Validator(schema).validate(json.loads(example.read_text()))
    assert not Draft202012Validator(schema).is_valid({"name": "x", "channel": "fax"})


def test_outages_and_rate_limits_on_every_route(entry: EntryPoints, api: Api):
    """503 (PostgreSQL unreachable) and 429 (over the token's rate) on every route that documents them, from a
    second server whose database port is closed and whose rate is one request per minute."""
    document = api.call("GET", "/openapi.json").body
    broken = start_api(entry, CAMPAIGNS_DATABASE__PORT="1", CAMPAIGNS_API__RATE_PER_S="0.0167",
                       CAMPAIGNS_API__BURST="1")
    try:
        for (method, template), op in sorted(operations(document).items()):
            documented = {int(s) for s in op["responses"]}
            if not documented & {429, 503}:
                continue
            path = template.replace("{campaign_id}", MISSING).replace("{template_id}", "1") \
                .replace("{kind}", "sms").replace("{token_id}", "0123456789abcdef")
            if template == "/unsubscribe":  # a valid link, so the database is what fails
                path = unsubscribe_link(None, 1)
            token = f"cmpt_{uuid.uuid4().hex[:16]}_{'x' * 43}"  # a bucket of its own per route
            body = None if method != "POST" else Csv(b"external_id\nc-1\n") if "/import" in template else {}
            first = send(broken, method, path, body, token)
            assert 503 in documented
            check_problem(first, 503, f"{method} {template}")
            assert first.headers.get("retry-after"), first.headers
            second = send(broken, method, path, body, token)
            check_problem(second, 429, f"{method} {template}")
            assert int(second.headers["retry-after"]) >= 1
        assert "Traceback" not in broken.proc.log_text(), broken.proc.log_text()[-3000:]
    finally:
        broken.close()


def test_bad_input_never_a_500_and_nothing_written(entry: EntryPoints, api: Api, settings: Settings):
    world = World(entry, api, settings)
    before = campaign_count(settings)
    good = world.payload()
    cases: list[tuple[bytes, str, int]] = [
        (b'{"name": "x", ', "application/json", 400),                        # malformed
        (b"[" * 50_000 + b"]" * 50_000, "application/json", 400),           # nested far too deep
        (json.dumps({**good, "segments": nested(40)}).encode(), "application/json", 400),  # over the depth limit
        (b"1" * 5000, "application/json", 400),                             # an integer over Python's digit limit
        (b" " * (2 * 1024 * 1024), "application/json", 413),                # huge
        (json.dumps({**good, "segments": "all"}).encode(), "application/json", 422),   # wrong type
        (json.dumps({**good, "priority": 1}).encode(), "application/json", 422),       # unknown field
        (json.dumps([good]).encode(), "application/json", 422),             # not an object
        (b"\xff\xfe\x00", "application/json", 400),                          # not UTF-8
        (json.dumps(good).encode(), "application/x-www-form-urlencoded", 415),
    ]
    for content, kind, status in cases:
        answer = api.call("POST", "/v1/campaigns", token=world.admin, content=content,
                          headers={"Content-Type": kind})
        check_problem(answer, status, f"POST /v1/campaigns with {content[:40]!r}")
    # A body without Content-Length (chunked) over the limit is cut while it is read.
    chunks = (b" " * 65536 for _ in range(40))
    answer = api.client.post("/v1/campaigns", content=chunks, headers={
        "Authorization": f"Bearer {world.admin}", "Content-Type": "application/json"})
    assert answer.status_code == 413, answer.text
    assert campaign_count(settings) == before, "a refused request wrote a campaign"


def nested(depth: int) -> Any:
    value: Any = 1
    for _ in range(depth):
        value = [value]
    return value


def test_keyset_pages_cover_every_campaign_once(entry: EntryPoints, api: Api, settings: Settings):
    world = World(entry, api, settings)
    made = {world.campaign() for _ in range(7)}
    seen: list[str] = []
    cursor = None
    while True:
        params = {"limit": 3, **({"cursor": cursor} if cursor else {})}
        page = world.ok(api.call("GET", "/v1/campaigns", token=world.admin, params=params), 200)
        seen += [c["id"] for c in page["items"]]
        if len(seen) == 3:
            world.campaign()  # created meanwhile: newer than the cursor, so not in the later pages
        cursor = page["next_cursor"]
        if cursor is None:
            break
    assert len(seen) == len(set(seen)) and set(seen) == made, (seen, made)
    bad = api.call("GET", "/v1/campaigns", token=world.admin, params={"cursor": "garbage"})
    check_problem(bad, 422, "a cursor the API did not make")
