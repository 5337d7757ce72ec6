"""``POST /v1/customers/import`` (text/csv) through a ``campaigns api`` subprocess: the same checks and sink as
``campaigns import customers``: all or nothing with every problem listed, upsert counts, once per Idempotency-Key."""

from __future__ import annotations

import pytest

from campaigns.settings import Settings
from tests.api.conftest import Api
from tests.api.test_contract import World
from tests.entrypoints.conftest import EntryPoints, query

pytestmark = [pytest.mark.kafka, pytest.mark.postgres]


def post_csv(api: Api, token: str, body: bytes, **headers: str):
    return api.call(
        "POST",
        "/v1/customers/import",
        token=token,
        content=body,
        headers={"Content-Type": "text/csv; charset=utf-8", **headers},
    )


def test_csv_import_over_http(entry: EntryPoints, api: Api, settings: Settings):
    world = World(entry, api, settings)
    token = world.tokens["marketer"]
    bad = b"external_id,email,phone,tier\nh-1,a@example.com,+14155550100,gold\nh-2,nope,12,silver\nh-1,,,\n"
    answer = post_csv(api, token, bad)
    assert answer.status == 422 and answer.body["code"] == "invalid-input", answer.body
    assert answer.body["errors"] == [
        "line 3: email: 'nope' is not an email address (name@domain.tld)",
        "line 3: phone: '12' is not an E.164 number (+ then 7 to 15 digits, e.g. +14155550100)",
    ]
    assert query(settings, "SELECT count(*) FROM customers WHERE external_ref LIKE %s", "h-%") == [(0,)]

    good = "external_id,email,first_name,tier\nh-1,a@example.com,Zoë,gold\nh-2,b@example.com,,silver\n".encode()
    first = post_csv(api, token, good, **{"Idempotency-Key": "import-1"})
    assert first.status == 200, first.body
    assert first.body == {"kind": "customers", "rows": 2, "inserted": 2, "updated": 0, "unchanged": 0}
    again = post_csv(api, token, good, **{"Idempotency-Key": "import-1"})
    assert again.status == 200 and again.body == first.body and again.headers.get("idempotency-replayed") == "true"
    plain = post_csv(api, token, good)  # no key: a second import, nothing changes
    assert plain.body == {"kind": "customers", "rows": 2, "inserted": 0, "updated": 0, "unchanged": 2}
    assert query(settings, "SELECT first_name, attributes FROM customers WHERE external_ref = 'h-1'") == [
        ("Zoë", {"tier": "gold"})
    ]
    audit = query(
        settings, "SELECT count(*) FROM audit_log WHERE action = 'import_customers' AND detail->>'via' = 'api'"
    )
    assert audit == [(2,)]
    wrong_type = api.call("POST", "/v1/customers/import", token=token, json_body={"rows": []})
    assert wrong_type.status == 415 and "text/csv" in wrong_type.body["detail"]
    denied = post_csv(api, world.tokens["auditor"], good)
    assert denied.status == 403 and "customers.import" in denied.body["detail"]
