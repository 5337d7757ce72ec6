"""Create-campaign payload validation."""

# The tables of expected messages below read best one case per line.
# ruff: noqa: E501

from __future__ import annotations

from datetime import UTC, datetime, timedelta, timezone
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from campaigns.core.payload import (
    CampaignDraft,
    Channel,
    InlineContent,
    TemplateRef,
    validate_create_payload,
)
from campaigns.core.retry import RetryPolicy
from campaigns.errors import ValidationError

NOW = datetime(2025, 3, 1, 12, 0, tzinfo=UTC)


def base(**overrides: Any) -> dict[str, Any]:
    payload: dict[str, Any] = {
        "name": "Spring sale",
        "channel": "whatsapp",
        "template": {"name": "spring_sale"},
        "segments": [12],
    }
    payload.update(overrides)
    return {k: v for k, v in payload.items() if v is not ...}


def problems_of(payload: object) -> list[str]:
    with pytest.raises(ValidationError) as info:
        validate_create_payload(payload, now=NOW)
    return info.value.problems


# --- happy paths ------------------------------------------------------------------------------------


def test_minimal_template_payload_gets_defaults() -> None:
    draft = validate_create_payload(base(), now=NOW)
    assert draft == CampaignDraft(
        name="Spring sale",
        channel=Channel.WHATSAPP,
        template=TemplateRef(name="spring_sale", version=None),
        content=None,
        segments=("12",),
        manual_recipients=(),
        start_at=None,
        batch_size=1000,
        retry_policy=RetryPolicy(max_retries=3, backoff_base_s=1.0, backoff_max_s=60.0, jitter=0.2),
        failure_threshold=0.5,
        failure_min_sample=20,
        locale="en",
        variables={},
    )


def test_full_email_payload() -> None:
    payload = {
        "name": "  Newsletter\x00 ",
        "channel": "email",
        "content": {
            "subject": "Hello {{ first_name }}",
            "body": '<p onclick="x()">Hi {{ first_name }}</p><script>alert(1)</script>',
        },
        "variables": {"discount": "20%\x07"},
        "segments": [1, "vip", 1, "1"],
        "manual_recipients": ["c-1", 42, "c-1", " c-2 "],
        "start_at": "2025-03-02T09:00:00+02:00",
        "batch_size": 500,
        "retry_policy": {"max_retries": 5, "backoff_base_s": 2, "backoff_max_s": 120, "jitter": 0},
        "failure_threshold": 0.25,
        "failure_min_sample": 100,
        "locale": "pt-BR",
    }
    draft = validate_create_payload(payload, now=NOW)
    assert draft.name == "Newsletter"
    assert draft.channel is Channel.EMAIL
    assert draft.template is None
    assert draft.content == InlineContent(body="<p>Hi {{ first_name }}</p>", subject="Hello {{ first_name }}")
    assert dict(draft.variables) == {"discount": "20%"}
    assert draft.segments == ("1", "vip")
    assert draft.manual_recipients == ("c-1", "42", "c-2")
    assert draft.start_at == datetime(2025, 3, 2, 7, 0, tzinfo=UTC)
    assert draft.start_at is not None and draft.start_at.tzinfo is UTC
    assert draft.batch_size == 500
    assert draft.retry_policy == RetryPolicy(5, 2.0, 120.0, 0.0)
    assert draft.failure_threshold == 0.25
    assert draft.failure_min_sample == 100
    assert draft.locale == "pt-BR"


def test_draft_is_frozen() -> None:
    draft = validate_create_payload(base(), now=NOW)
    with pytest.raises(AttributeError):
        draft.name = "x"  # type: ignore[misc]
    with pytest.raises(TypeError):
        draft.variables["x"] = "y"  # type: ignore[index]


def test_template_with_version_and_variables() -> None:
    draft = validate_create_payload(
        base(template={"name": "t", "version": 3}, variables={"code": "SPRING"}), now=NOW
    )
    assert draft.template == TemplateRef("t", 3)
    assert dict(draft.variables) == {"code": "SPRING"}


def test_nulls_mean_not_given() -> None:
    draft = validate_create_payload(
        base(start_at=None, batch_size=None, retry_policy=None, locale=None, manual_recipients=None), now=NOW
    )
    assert draft.batch_size == 1000 and draft.start_at is None and draft.locale == "en"


def test_manual_recipients_only() -> None:
    draft = validate_create_payload(base(segments=..., manual_recipients=["a"]), now=NOW)
    assert draft.segments == () and draft.manual_recipients == ("a",)


@pytest.mark.parametrize("start_at", ["2025-03-01T12:00:00Z", "2025-03-01T12:00:00.123456+00:00"])
def test_start_at_forms(start_at: str) -> None:
    draft = validate_create_payload(base(start_at=start_at), now=NOW)
    assert draft.start_at is not None and draft.start_at.utcoffset() == timedelta(0)


def test_start_at_in_the_past_is_accepted() -> None:
    draft = validate_create_payload(base(start_at="2025-01-01T00:00:00Z"), now=NOW)
    assert draft.start_at == datetime(2025, 1, 1, tzinfo=UTC)


def test_start_at_datetime_object_is_accepted() -> None:
    start = datetime(2025, 4, 1, 8, 0, tzinfo=timezone(timedelta(hours=-3)))
    draft = validate_create_payload(base(start_at=start), now=NOW)
    assert draft.start_at == start


def test_start_at_horizon_is_exactly_max_ahead() -> None:
    limit = NOW + timedelta(days=365)
    assert validate_create_payload(base(start_at=limit.isoformat()), now=NOW).start_at == limit
    late = (limit + timedelta(seconds=1)).isoformat()
    assert problems_of(base(start_at=late))[0].startswith("start_at: must be at most 365 days ahead")
    assert validate_create_payload(base(start_at=late), now=NOW, max_ahead=timedelta(days=400)).start_at


@pytest.mark.parametrize(("channel", "limit"), [("whatsapp", 4096), ("sms", 1600), ("email", 100_000)])
def test_body_limits_per_channel(channel: str, limit: int) -> None:
    content: dict[str, str] = {"body": "x" * limit}
    if channel == "email":
        content["subject"] = "s"
    draft = validate_create_payload(base(channel=channel, template=..., content=content), now=NOW)
    assert draft.content is not None and len(draft.content.body) == limit
    content["body"] = "x" * (limit + 1)
    assert problems_of(base(channel=channel, template=..., content=content)) == [
        f"content.body: must be at most {limit} characters, got {limit + 1}"
    ]


def test_boundaries_accepted() -> None:
    draft = validate_create_payload(
        base(
            name="n" * 200,
            batch_size=10_000,
            retry_policy={"max_retries": 10, "backoff_base_s": 5, "backoff_max_s": 5, "jitter": 1},
            failure_threshold=0,
            failure_min_sample=0,
            manual_recipients=[str(i) for i in range(100_000)],
        ),
        now=NOW,
    )
    assert len(draft.manual_recipients) == 100_000
    assert validate_create_payload(base(batch_size=1, failure_threshold=1), now=NOW).batch_size == 1


# --- problems ---------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("overrides", "problem"),
    [
        ({"name": ""}, "name: must not be empty"),
        ({"name": " \x00\t "}, "name: must not be empty"),
        ({"name": "n" * 201}, "name: must be at most 200 characters, got 201"),
        ({"name": "two\nlines"}, "name: must be a single line (no line breaks or tabs)"),
        ({"name": 7}, "name: must be a string, got integer"),
        ({"name": ...}, "name: required"),
        ({"channel": "fax"}, "channel: must be one of whatsapp, sms, email, got 'fax'"),
        ({"channel": ...}, "channel: required (one of whatsapp, sms, email)"),
        ({"channel": ["sms"]}, "channel: must be one of whatsapp, sms, email, got array"),
        ({"template": ...}, "template: required (or give inline content instead)"),
        ({"content": {"body": "x"}}, "template: give either template or content, not both"),
        ({"template": "spring"}, 'template: must be an object like {"name": ..., "version": ...}, got string'),
        ({"template": {"version": 1}}, "template.name: required"),
        ({"template": {"name": "t", "version": 0}}, "template.version: must be between 1 and 2147483647, got 0"),
        ({"template": {"name": "t", "version": "1"}}, "template.version: must be an integer between 1 and 2147483647, got '1'"),
        ({"template": {"name": "t", "lang": "en"}}, "template.lang: unknown field (allowed: name, version)"),
        ({"variables": ["a"]}, "variables: must be an object of strings, got array"),
        ({"variables": {"a": 1}}, "variables.a: must be a string, got integer"),
        ({"variables": {"first.name": "x"}}, "variables: name 'first.name' is not valid (letters, digits and underscores, not starting with a digit)"),
        ({"segments": [], "manual_recipients": []}, "segments: give at least one segment or manual recipient"),
        ({"segments": ...}, "segments: give at least one segment or manual recipient"),
        ({"segments": "12"}, "segments: must be an array of ids, got string"),
        ({"segments": [1, True]}, "segments[1]: must be a string or integer id, got boolean"),
        ({"segments": [1.5]}, "segments[0]: must be a string or integer id, got number"),
        ({"segments": [" "]}, "segments[0]: must not be empty"),
        ({"manual_recipients": [None]}, "manual_recipients[0]: must be a string or integer id, got null"),
        ({"manual_recipients": ["x" * 201]}, "manual_recipients[0]: must be at most 200 characters, got 201"),
        ({"start_at": "2025-03-02T09:00:00"}, "start_at: must include a UTC offset or Z (e.g. 2025-05-01T09:00:00+02:00), got '2025-03-02T09:00:00'"),
        ({"start_at": "2025-03-02"}, "start_at: must include a UTC offset or Z (e.g. 2025-05-01T09:00:00+02:00), got '2025-03-02'"),
        ({"start_at": "tomorrow"}, "start_at: must be an ISO-8601 date-time with a UTC offset (e.g. 2025-05-01T09:00:00+02:00), got 'tomorrow'"),
        ({"start_at": 1740830400}, "start_at: must be an ISO-8601 date-time string (e.g. 2025-05-01T09:00:00+02:00), got integer"),
        ({"batch_size": 0}, "batch_size: must be between 1 and 10000, got 0"),
        ({"batch_size": 10_001}, "batch_size: must be between 1 and 10000, got 10001"),
        ({"batch_size": 10.0}, "batch_size: must be an integer between 1 and 10000, got 10.0"),
        ({"batch_size": True}, "batch_size: must be an integer between 1 and 10000, got true"),
        ({"retry_policy": 3}, "retry_policy: must be an object, got integer"),
        ({"retry_policy": {"max_retries": 11}}, "retry_policy.max_retries: must be between 0 and 10, got 11"),
        ({"retry_policy": {"max_retries": -1}}, "retry_policy.max_retries: must be between 0 and 10, got -1"),
        ({"retry_policy": {"backoff_base_s": 0}}, "retry_policy.backoff_base_s: must be greater than 0 and at most 86400, got 0"),
        ({"retry_policy": {"backoff_base_s": 120}}, "retry_policy.backoff_max_s: must be at least backoff_base_s (120), got 60.0"),
        ({"retry_policy": {"backoff_max_s": float("inf")}}, "retry_policy.backoff_max_s: must be a finite number, got inf"),
        ({"retry_policy": {"jitter": 1.5}}, "retry_policy.jitter: must be between 0 and 1, got 1.5"),
        ({"retry_policy": {"jitter": "0.1"}}, "retry_policy.jitter: must be a finite number, got '0.1'"),
        ({"retry_policy": {"max_tries": 1}}, "retry_policy.max_tries: unknown field (allowed: max_retries, backoff_base_s, backoff_max_s, jitter)"),
        ({"failure_threshold": 1.01}, "failure_threshold: must be between 0 and 1, got 1.01"),
        ({"failure_threshold": float("nan")}, "failure_threshold: must be between 0 and 1, got nan"),
        ({"failure_threshold": "half"}, "failure_threshold: must be a number between 0 and 1, got 'half'"),
        ({"failure_min_sample": -1}, "failure_min_sample: must be between 0 and 1000000, got -1"),
        ({"locale": "english!"}, "locale: must be a language tag like en, pt-BR or zh-Hant-TW, got 'english!'"),
        ({"locale": 1}, "locale: must be a language tag like en, pt-BR or zh-Hant-TW, got 1"),
        ({"batchsize": 10}, "batchsize: unknown field (allowed: name, channel, template, content, variables, segments, manual_recipients, start_at, batch_size, retry_policy, failure_threshold, failure_min_sample, locale, max_sms_segments)"),
        ({"max_sms_segments": 0}, "max_sms_segments: must be between 1 and 10, got 0"),
        ({"max_sms_segments": 2, "channel": "email", "content": {"subject": "s", "body": "b"}, "template": None}, "max_sms_segments: only sms campaigns have segments, not email"),
    ],
)  # fmt: skip
def test_single_problem(overrides: dict[str, Any], problem: str) -> None:
    assert problems_of(base(**overrides)) == [problem]


@pytest.mark.parametrize(
    ("content", "channel", "problem"),
    [
        ({"body": "hi", "subject": "s"}, "sms", "content.subject: only email messages have a subject, not sms"),
        ({"body": "hi"}, "email", "content.subject: required"),
        ({"body": "hi", "subject": "a\nBcc: x@y"}, "email", "content.subject: must be a single line (no line breaks or tabs)"),
        ({"body": "hi {{ user.name }}"}, "sms", "content.body: malformed placeholder '{{ user.name }}' (use {{ name }} or {{ attributes.name }}, optionally with filters: upper | lower | capitalize | trim | default | date, e.g. {{ first_name | default: \"there\" }})"),
        ({"body": ""}, "sms", "content.body: must not be empty"),
        ({"body": "<script>x</script>", "subject": "s"}, "email", "content.body: must not be empty"),
        ({}, "sms", "content.body: required"),
        ({"body": "hi", "html": "<p>"}, "sms", "content.html: unknown field (allowed: subject, body)"),
        ("hi", "sms", 'content: must be an object like {"body": ...}, got string'),
    ],
)  # fmt: skip
def test_content_problems(content: object, channel: str, problem: str) -> None:
    assert problems_of(base(channel=channel, template=..., content=content)) == [problem]


def test_too_many_manual_recipients() -> None:
    assert problems_of(base(manual_recipients=["a"] * 100_001)) == [
        "manual_recipients: at most 100000 entries, got 100001"
    ]


def test_many_bad_ids_are_summarised() -> None:
    problems = problems_of(base(manual_recipients=[None] * 25))
    assert len(problems) == 11
    assert problems[-1] == "manual_recipients: 15 more invalid entries not listed"


def test_all_problems_are_collected() -> None:
    problems = problems_of(
        {
            "name": "",
            "channel": "fax",
            "batch_size": 0,
            "retry_policy": {"max_retries": 99, "jitter": -1},
            "failure_threshold": 2,
            "locale": "",
            "extra": 1,
        }
    )
    assert problems == [
        "extra: unknown field (allowed: name, channel, template, content, variables, segments, "
        "manual_recipients, start_at, batch_size, retry_policy, failure_threshold, failure_min_sample, locale, "
        "max_sms_segments)",
        "name: must not be empty",
        "channel: must be one of whatsapp, sms, email, got 'fax'",
        "template: required (or give inline content instead)",
        "segments: give at least one segment or manual recipient",
        "batch_size: must be between 1 and 10000, got 0",
        "retry_policy.max_retries: must be between 0 and 10, got 99",
        "retry_policy.jitter: must be between 0 and 1, got -1",
        "failure_threshold: must be between 0 and 1, got 2",
        "locale: must be a language tag like en, pt-BR or zh-Hant-TW, got ''",
    ]


def test_error_message_joins_problems() -> None:
    with pytest.raises(
        ValidationError, match=r"^invalid input: batch_size: must be between 1 and 10000, got 0$"
    ):
        validate_create_payload(base(batch_size=0), now=NOW)


@pytest.mark.parametrize("payload", [None, [], "x", 1, 1.5, True])
def test_non_object_payload(payload: object) -> None:
    assert problems_of(payload)[0].startswith("payload: must be a JSON object, got ")


def test_naive_now_is_a_programming_error() -> None:
    with pytest.raises(ValueError, match="timezone-aware"):
        validate_create_payload(base(), now=datetime(2025, 1, 1))  # noqa: DTZ001


def test_long_values_are_shortened_in_messages() -> None:
    (problem,) = problems_of(base(channel="x" * 1000))
    assert "(1000 characters)" in problem and len(problem) < 200


def test_start_at_out_of_range_offset() -> None:
    (problem,) = problems_of(base(start_at="0001-01-01T00:00:00+01:00"))
    assert problem.startswith("start_at: out of range")


# --- property: any JSON-like input gives a draft or a ValidationError ---------------------------------

json_scalars = (
    st.none()
    | st.booleans()
    | st.integers()
    | st.floats(allow_nan=True, allow_infinity=True)
    | st.text(max_size=30)
)
json_values = st.recursive(
    json_scalars,
    lambda children: (
        st.lists(children, max_size=5) | st.dictionaries(st.text(max_size=10), children, max_size=5)
    ),
    max_leaves=20,
)
keys = st.sampled_from(
    [
        "name",
        "channel",
        "template",
        "content",
        "variables",
        "segments",
        "manual_recipients",
        "start_at",
        "batch_size",
        "retry_policy",
        "failure_threshold",
        "failure_min_sample",
        "locale",
        "other",
    ]
)
# Values that are often valid, so the deep paths run too.
plausible = st.one_of(
    json_values,
    st.sampled_from(
        ["whatsapp", "sms", "email", "Sale", "2025-03-02T09:00:00Z", "2025-03-02T09:00:00", "en"]
    ),
    st.fixed_dictionaries({"name": st.text(max_size=10)}, optional={"version": json_scalars}),
    st.fixed_dictionaries(
        {"body": st.text(max_size=50)},
        optional={"subject": st.text(max_size=20), "extra": json_scalars},
    ),
    st.fixed_dictionaries(
        {},
        optional={
            "max_retries": json_scalars,
            "backoff_base_s": json_scalars,
            "backoff_max_s": json_scalars,
            "jitter": json_scalars,
        },
    ),
    st.lists(st.integers() | st.text(max_size=8) | st.none(), max_size=5),
    st.dictionaries(st.text(max_size=8), st.text(max_size=8) | st.integers(), max_size=3),
    st.datetimes(timezones=st.none() | st.timezones()),
)


def _check(payload: object) -> None:
    try:
        draft = validate_create_payload(payload, now=NOW)
    except ValidationError as exc:
        assert exc.problems
        assert all(isinstance(p, str) and p for p in exc.problems)
    else:
        assert isinstance(draft, CampaignDraft)
        assert (draft.template is None) != (draft.content is None)
        assert draft.segments or draft.manual_recipients


# Generating these inputs costs far more than validating them; these counts keep the suite quick.
@settings(max_examples=150)
@given(json_values)
def test_arbitrary_json_never_crashes(payload: object) -> None:
    _check(payload)


@settings(max_examples=250)
@given(st.dictionaries(keys, plausible, max_size=14))
def test_arbitrary_objects_never_crash(payload: dict[str, object]) -> None:
    _check(payload)


@settings(max_examples=200)
@given(
    channel=st.sampled_from(["whatsapp", "sms", "email"]),
    body=st.text(max_size=200),
    subject=st.text(max_size=30),
    name=st.text(max_size=30),
    ids=st.lists(st.integers() | st.text(max_size=10), max_size=10),
)
def test_inline_content_never_crashes(
    channel: str, body: str, subject: str, name: str, ids: list[object]
) -> None:
    payload = {
        "name": name,
        "channel": channel,
        "content": {"body": body, "subject": subject},
        "segments": ids,
    }
    _check(payload)


# --- integers too long to print, email subjects that would not be one line -------------------------


@pytest.mark.parametrize(
    ("payload", "problem"),
    [
        (base(batch_size=10**5000), "batch_size: an integer of more than 200 digits; no field takes one that long"),
        (base(retry_policy={"max_retries": -(10**300)}), "retry_policy.max_retries: an integer of more than 200 digits"),
        (base(segments=[1, 10**4400]), "segments[1]: an integer of more than 200 digits"),
        (base(channel=10**4400, locale=10**4400), "channel: an integer of more than 200 digits"),
    ],
)
def test_integers_of_thousands_of_digits_are_one_problem_not_a_crash(payload: object, problem: str) -> None:
    problems = problems_of(payload)
    assert any(p.startswith(problem) for p in problems), problems
    assert "Exceeds the limit" not in str(problems)


def email(subject: str, **variables: str) -> dict[str, Any]:
    return base(channel="email", template=..., content={"subject": subject, "body": "<p>Hi</p>"},
                variables=variables)


@pytest.mark.parametrize("value", ["20%\nBcc: everyone@example.com", "a\r\nb", "a\u2028b"])
def test_an_email_subject_variable_with_a_line_break_is_refused(value: str) -> None:
    problems = problems_of(email("Sale: {{ discount }} off", discount=value))
    assert problems == [
        "variables.discount: contains a line break, and the email subject (content.subject) uses it; "
        "a subject must be a single line"
    ]


def test_line_breaks_in_variables_the_subject_does_not_use_are_fine() -> None:
    draft = validate_create_payload(email("Sale: {{ discount }} off", discount="20%", note="two\nlines"), now=NOW)
    assert draft.content is not None and draft.content.subject == "Sale: {{ discount }} off"


def test_a_rendered_subject_longer_than_the_rfc_line_is_refused() -> None:
    problems = problems_of(email("Sale: {{ a }}{{ b }}", a="x" * 600, b="y" * 600))
    assert problems == ["content.subject: at most 998 characters once rendered, got 1206"]


def test_email_subject_problems_checks_a_stored_templates_subject() -> None:
    from campaigns.core.payload import email_subject_problems

    assert email_subject_problems("Hi {{ name }}", {"name": "Ann"}, field="template.subject") == []
    assert email_subject_problems("Hi\nthere", {}, field="template.subject") == [
        "template.subject: must be a single line (no line breaks)"]
    assert email_subject_problems("Hi {{ name }}", {"name": "A\nB"}, field="template.subject") == [
        "variables.name: contains a line break, and the email subject (template.subject) uses it; "
        "a subject must be a single line"]
    assert email_subject_problems("Hi {{ name }}", {}, field="template.subject") == []  # missing: render says so
