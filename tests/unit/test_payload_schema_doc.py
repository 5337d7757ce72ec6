"""docs/campaign-payload.schema.json and examples/ agree with campaigns/core/payload.py."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from pathlib import Path

import jsonschema
import pytest

from campaigns.core.payload import validate_create_payload
from campaigns.errors import ValidationError

ROOT = Path(__file__).resolve().parents[2]
NOW = datetime(2026, 12, 1, tzinfo=UTC)
EXAMPLES = sorted((ROOT / "examples").glob("campaign-*.json"))


@pytest.fixture(scope="module")
def validator():
    schema = json.loads((ROOT / "docs" / "campaign-payload.schema.json").read_text())
    jsonschema.Draft202012Validator.check_schema(schema)
    return jsonschema.Draft202012Validator(schema)


def test_there_is_an_example_per_channel():
    channels = {json.loads(p.read_text())["channel"] for p in EXAMPLES}
    assert channels == {"whatsapp", "sms", "email"}
    templates = {json.loads(p.read_text())["channel"] for p in (ROOT / "examples").glob("template-*.json")}
    assert templates == {"whatsapp", "sms", "email"}


@pytest.mark.parametrize("path", EXAMPLES, ids=lambda p: p.name)
def test_examples_are_valid_for_both(path, validator):
    payload = json.loads(path.read_text())
    assert list(validator.iter_errors(payload)) == []
    validate_create_payload(payload, now=NOW)


BASE = {"name": "n", "channel": "sms", "template": {"name": "t"}, "segments": [1]}


@pytest.mark.parametrize(
    "change",
    [
        {"batchsize": 10},  # unknown key
        {"channel": "pigeon"},
        {"name": ""},
        {"name": "two\nlines"},
        {"content": {"body": "b"}},  # both template and content
        {"template": None},  # neither
        {"segments": [], "manual_recipients": []},
        {"batch_size": 0},
        {"batch_size": 10_001},
        {"retry_policy": {"max_retries": 11}},
        {"retry_policy": {"backoff_base_s": 0}},
        {"failure_threshold": 1.5},
        {"locale": "english!"},
        {"variables": {"1bad": "x"}},
        {"template": None, "content": {"body": "b", "subject": "s"}},  # subject on sms
        {"channel": "email", "template": None, "content": {"body": "b"}},  # email without subject
        {"template": None, "content": {"body": "x" * 1601}},  # over the SMS limit
    ],
)
def test_schema_and_validator_refuse_the_same_payloads(change, validator):
    payload = {**BASE, **change}
    assert list(validator.iter_errors(payload)), f"the JSON Schema accepted {change}"
    with pytest.raises(ValidationError):
        validate_create_payload(payload, now=NOW)


@pytest.mark.parametrize(
    "change",
    [
        {},
        {"segments": None, "manual_recipients": ["cust-1", 2]},
        {"template": {"name": "t", "version": 3}},
        {"template": None, "content": {"body": "Hi {{ name }}"}, "variables": {"name": "Ann"}},
        {"channel": "email", "template": None, "content": {"body": "<p>x</p>", "subject": "s"}},
        {"retry_policy": {"max_retries": 0, "jitter": 0}, "failure_threshold": 0, "locale": "pt-BR"},
        {"start_at": "2026-12-24T09:00:00+01:00", "batch_size": 10_000},
    ],
)
def test_schema_and_validator_accept_the_same_payloads(change, validator):
    payload = {**BASE, **change}
    assert list(validator.iter_errors(payload)) == []
    validate_create_payload(payload, now=NOW)
