"""``Idempotency-Key`` through the HTTP API: concurrent and later retries of a create make one campaign, a key
reused with another request is refused, keys are per principal, a token's secret is never replayed, and a key
left in progress by a crashed server is taken over without a second campaign."""

from __future__ import annotations

import json
import uuid
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime, timedelta

import pytest

from api.idempotency import campaign_id_for, request_hash
from campaigns.settings import Settings
from tests.api.conftest import Api, campaign_count
from tests.api.test_contract import World
from tests.entrypoints.conftest import EntryPoints, query

pytestmark = [pytest.mark.kafka, pytest.mark.postgres]


def test_a_retried_create_makes_one_campaign(entry: EntryPoints, api: Api, settings: Settings):
    world = World(entry, api, settings)
    before = campaign_count(settings)
    body = json.dumps(world.payload(name="idempotent")).encode()
    key = str(uuid.uuid4())

    def create(_: int):
        return api.call("POST", "/v1/campaigns", token=world.admin, content=body,
                        headers={"Content-Type": "application/json", "Idempotency-Key": key})

    with ThreadPoolExecutor(8) as pool:
        answers = list(pool.map(create, range(8)))
    assert {a.status for a in answers} <= {201, 409}, [(a.status, a.body) for a in answers]
    created = {a.body["id"] for a in answers if a.status == 201}
    assert len(created) == 1, answers
    assert all(a.body["code"] == "idempotency-key-in-progress" for a in answers if a.status == 409)
    again = create(0)
    assert again.status == 201 and again.body["id"] in created and again.headers["idempotency-replayed"] == "true"
    assert again.headers["content-type"].startswith("application/json")
    assert campaign_count(settings) == before + 1
    assert query(settings, "SELECT count(*) FROM campaigns WHERE name = 'idempotent'")[0][0] == 1

    other = api.call("POST", "/v1/campaigns", token=world.admin, json_body=world.payload(name="else"),
                     headers={"Idempotency-Key": key})
    assert other.status == 422 and other.body["code"] == "idempotency-key-reused", other.body
    # Keys belong to their principal: alice's same key is her own request.
    hers = api.call("POST", "/v1/campaigns", token=world.tokens["marketer"], content=body,
                    headers={"Content-Type": "application/json", "Idempotency-Key": key})
    assert hers.status == 201 and hers.body["id"] not in created and hers.body["created_by"] == "alice"
    # Errors are not stored: the retry runs again.
    failing = {"Idempotency-Key": str(uuid.uuid4())}
    first = api.call("POST", f"/v1/campaigns/{hers.body['id']}/pause", token=world.admin, headers=failing)
    assert first.status == 409
    world.ok(api.call("POST", f"/v1/campaigns/{hers.body['id']}/schedule", token=world.tokens["marketer"],
                      json_body={"at": (datetime.now(UTC) + timedelta(hours=1)).isoformat()}), 200)
    second = api.call("POST", f"/v1/campaigns/{hers.body['id']}/pause", token=world.admin, headers=failing)
    assert second.status == 200 and second.body["status"] == "paused", second.body
    third = api.call("POST", f"/v1/campaigns/{hers.body['id']}/pause", token=world.admin, headers=failing)
    assert third.status == 200 and third.headers["idempotency-replayed"] == "true"


def test_token_secrets_are_never_replayed(entry: EntryPoints, api: Api, settings: Settings):
    world = World(entry, api, settings)
    headers = {"Idempotency-Key": "token-for-alice"}
    first = api.call("POST", "/v1/tokens", token=world.admin, json_body={"principal": "alice"}, headers=headers)
    assert first.status == 201 and first.body["token"].startswith("cmpt_")
    again = api.call("POST", "/v1/tokens", token=world.admin, json_body={"principal": "alice"}, headers=headers)
    assert again.status == 201 and again.body == {**first.body, "token": None}
    stored = json.dumps(query(settings, "SELECT response FROM api_idempotency_keys")[0:])
    assert first.body["token"] not in stored


def test_a_key_left_in_progress_by_a_crash_is_taken_over(entry: EntryPoints, api: Api, settings: Settings):
    """The first server inserted the key and the campaign, then died before storing the answer: after the stale
    time the retry finds that campaign (its id derives from principal and key) instead of making another."""
    world = World(entry, api, settings)
    payload = world.payload(name="crashed")
    body = json.dumps(payload).encode()
    key = "crash-1"
    campaign = campaign_id_for("harness-admin", key)
    from campaigns.db.engine import make_engine, make_sessionmaker
    from campaigns.service import CampaignService

    engine = make_engine(settings.database)
    try:
        CampaignService(make_sessionmaker(engine)).create_campaign("harness-admin", payload, campaign_id=campaign)
    finally:
        engine.dispose()
    query(settings, "INSERT INTO api_idempotency_keys (principal, key, method, path, request_hash, created_at) "
                    "VALUES ('harness-admin', %s, 'POST', '/v1/campaigns', %s, now() - interval '10 minutes')",
          key, request_hash("POST", "/v1/campaigns", body))
    before = campaign_count(settings)
    answer = api.call("POST", "/v1/campaigns", token=world.admin, content=body,
                      headers={"Content-Type": "application/json", "Idempotency-Key": key})
    assert answer.status == 201 and answer.body["id"] == str(campaign), answer.body
    assert campaign_count(settings) == before
