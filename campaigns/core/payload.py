"""Validation of a create-campaign payload (a parsed JSON object) into a frozen :class:`CampaignDraft`.

The payload (every key but ``name``, ``channel``, one of ``template`` / ``content`` and one of
``segments`` / ``manual_recipients`` is optional; ``null`` means "not given")::

    {
      "name": "Spring sale",                       # 1..200 characters, one line
      "channel": "whatsapp" | "sms" | "email",
      "template": {"name": "spring_sale", "version": 3},   # version optional (>= 1)
      "content": {"subject": "...", "body": "..."},        # instead of template; subject: email only,
                                                           # required there
      "variables": {"discount": "20%"},            # campaign-level values for {{ placeholders }}
      "segments": [12, "vip"],                     # segment ids (ints or strings, kept as strings)
      "manual_recipients": ["cust-1", 42],         # customer ids, at most 100,000
      "start_at": "2025-05-01T09:00:00+02:00",     # ISO-8601 with a UTC offset
      "batch_size": 1000,                          # 1..10,000
      "retry_policy": {"max_retries": 3, "backoff_base_s": 1.0, "backoff_max_s": 60, "jitter": 0.2},
      "failure_threshold": 0.5,                    # fraction of failed sends that fails the campaign
      "failure_min_sample": 20,                    # ... once at least this many outcomes are in
      "locale": "en",
      "max_sms_segments": 2                        # sms only, 1..10: a message longer once rendered fails
    }

Guarantees:

* :func:`validate_create_payload` returns a :class:`CampaignDraft` or raises one
  :class:`~campaigns.errors.ValidationError` whose ``problems`` list *every* problem found, each as
  ``"<field>: <what is wrong>, got <what was given>"``. Whatever the input (any JSON-like value), no other
  exception escapes (property-tested).
* Unknown keys, at any level, are errors (a typo such as ``batchsize`` is never silently ignored).
* Every text field is sanitised: control characters removed (:func:`~campaigns.core.templates.sanitize_text`);
  email bodies are HTML-sanitised (:func:`~campaigns.core.templates.sanitize_html`). Length limits apply
  to the sanitised text. Placeholders in inline content must be well formed.
* Segment and recipient ids are strings, de-duplicated, in first-seen order.
* An email subject is one line once rendered: a variable the inline ``content.subject`` uses may not
  contain a line break (a header injection, and a late per-recipient failure at the SMTP server), and the
  rendered subject fits ``SUBJECT_MAX``. :func:`email_subject_problems` applies the same rule to a stored
  template's subject, for the caller that looks the template up.
* ``start_at`` is returned in UTC. A start time in the past is accepted (it means "as soon as it is
  scheduled"); one more than ``max_ahead`` (default 365 days) after ``now`` is refused.
* Whether a template exists and is approved is *not* checked here (that needs the database).
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from types import MappingProxyType

from campaigns.core._values import kind, shown
from campaigns.core.retry import RetryPolicy, policy_problems
from campaigns.core.templates import (
    IDENTIFIER,
    render,
    sanitize_html,
    sanitize_text,
    template_problems,
    template_variables,
)
from campaigns.core.vocabulary import Channel
from campaigns.errors import ValidationError

__all__ = [
    "BODY_LIMITS",
    "DEFAULT_BATCH_SIZE",
    "MAX_BATCH_SIZE",
    "MAX_MANUAL_RECIPIENTS",
    "MAX_SCHEDULE_AHEAD",
    "CampaignDraft",
    "Channel",
    "InlineContent",
    "TemplateRef",
    "email_subject_problems",
    "validate_create_payload",
]


BODY_LIMITS: Mapping[Channel, int] = MappingProxyType(
    {Channel.WHATSAPP: 4096, Channel.SMS: 1600, Channel.EMAIL: 100_000}
)
"""Most characters a message body may have, per channel (WhatsApp text limit, 10 concatenated SMS
segments, a generous email)."""

NAME_MAX = 200
SUBJECT_MAX = 998  # RFC 5322 line-length limit
TEMPLATE_NAME_MAX = 200
ID_MAX = 200
MAX_SEGMENTS = 1_000
MAX_MANUAL_RECIPIENTS = 100_000
MAX_VARIABLES = 100
VARIABLE_VALUE_MAX = 4096
MIN_BATCH_SIZE = 1
MAX_BATCH_SIZE = 10_000
DEFAULT_BATCH_SIZE = 1000
DEFAULT_FAILURE_THRESHOLD = 0.5
DEFAULT_FAILURE_MIN_SAMPLE = 20
MAX_FAILURE_MIN_SAMPLE = 1_000_000
DEFAULT_LOCALE = "en"
MAX_SMS_SEGMENTS = 10
MAX_SCHEDULE_AHEAD = timedelta(days=365)

# Bad list items reported individually before the rest are summarised, so one bad 100,000-entry list
# gives a readable error.
_MAX_ITEM_PROBLEMS = 10

# Anything a mail header would take as the end of a line (after sanitize_text only \n, U+2028 and U+2029
# can remain; the rest are listed for subjects that did not go through it).
_LINE_BREAK = re.compile("[\r\n\v\f\x1c-\x1e\x85\u2028\u2029]")

_LOCALE = re.compile(r"[A-Za-z]{2,3}(?:[-_][A-Za-z0-9]{1,8})*")
_LOCALE_MAX = 35

_TOP_LEVEL_KEYS = (
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
    "max_sms_segments",
)
_TEMPLATE_KEYS = ("name", "version")
_CONTENT_KEYS = ("subject", "body")
_RETRY_KEYS = ("max_retries", "backoff_base_s", "backoff_max_s", "jitter")


@dataclass(frozen=True, slots=True)
class TemplateRef:
    """A stored template by name; ``version`` None means the latest approved version."""

    name: str
    version: int | None = None


@dataclass(frozen=True, slots=True)
class InlineContent:
    """Message content given in the payload. ``body`` is sanitised (HTML for email); ``subject`` is set
    for email only."""

    body: str
    subject: str | None = None


@dataclass(frozen=True, slots=True)
class CampaignDraft:
    """A validated, sanitised create-campaign request. Exactly one of ``template`` / ``content`` is set;
    ``segments`` and ``manual_recipients`` are not both empty."""

    name: str
    channel: Channel
    template: TemplateRef | None
    content: InlineContent | None
    segments: tuple[str, ...]
    manual_recipients: tuple[str, ...]
    start_at: datetime | None
    batch_size: int = DEFAULT_BATCH_SIZE
    retry_policy: RetryPolicy = field(default_factory=RetryPolicy)
    failure_threshold: float = DEFAULT_FAILURE_THRESHOLD
    failure_min_sample: int = DEFAULT_FAILURE_MIN_SAMPLE
    locale: str = DEFAULT_LOCALE
    variables: Mapping[str, str] = field(default_factory=lambda: MappingProxyType({}))
    max_sms_segments: int | None = None  # sms: the most segments one rendered message may have (None: 10)


def validate_create_payload(
    payload: object, *, now: datetime, max_ahead: timedelta = MAX_SCHEDULE_AHEAD
) -> CampaignDraft:
    """Validate and sanitise ``payload``; return the draft or raise one :class:`ValidationError`.

    ``now`` (timezone-aware) is the reference for the ``start_at`` horizon; a naive ``now`` is a
    programming error (``ValueError``).
    """
    if now.tzinfo is None or now.utcoffset() is None:
        raise ValueError("now must be timezone-aware")
    if not isinstance(payload, Mapping):
        raise ValidationError([f"payload: must be a JSON object, got {kind(payload)}"])
    huge = _huge_integers(payload)
    if huge:  # no field takes them, and Python cannot even print one over 4,300 digits
        raise ValidationError(huge)

    p: list[str] = []
    for key in payload:
        if key not in _TOP_LEVEL_KEYS:
            p.append(_unknown(key, "", _TOP_LEVEL_KEYS))

    def get(key: str) -> object:
        return payload.get(key)

    name = _text(p, get("name"), "name", max_len=NAME_MAX, required=True, single_line=True)
    channel = _channel(p, get("channel"))

    template_raw, content_raw = get("template"), get("content")
    template: TemplateRef | None = None
    content: InlineContent | None = None
    if template_raw is not None and content_raw is not None:
        p.append("template: give either template or content, not both")
    elif template_raw is None and content_raw is None:
        p.append("template: required (or give inline content instead)")
    elif template_raw is not None:
        template = _template(p, template_raw)
    else:
        content = _content(p, content_raw, channel)

    variables = _variables(p, get("variables"))
    segments = _ids(p, get("segments"), "segments", MAX_SEGMENTS, allow_int=True)
    recipients = _ids(p, get("manual_recipients"), "manual_recipients", MAX_MANUAL_RECIPIENTS, allow_int=True)
    if segments is not None and recipients is not None and not segments and not recipients:
        p.append("segments: give at least one segment or manual recipient")

    start_at = _start_at(p, get("start_at"), now, max_ahead)
    batch_size = _int(p, get("batch_size"), "batch_size", MIN_BATCH_SIZE, MAX_BATCH_SIZE, DEFAULT_BATCH_SIZE)
    retry_policy = _retry_policy(p, get("retry_policy"))
    failure_threshold = _fraction(p, get("failure_threshold"), "failure_threshold", DEFAULT_FAILURE_THRESHOLD)
    failure_min_sample = _int(
        p,
        get("failure_min_sample"),
        "failure_min_sample",
        0,
        MAX_FAILURE_MIN_SAMPLE,
        DEFAULT_FAILURE_MIN_SAMPLE,
    )
    locale = _locale(p, get("locale"))
    max_sms_segments = _int(p, get("max_sms_segments"), "max_sms_segments", 1, MAX_SMS_SEGMENTS, None)
    if max_sms_segments is not None and channel is not None and channel is not Channel.SMS:
        p.append(f"max_sms_segments: only sms campaigns have segments, not {channel.value}")
    if channel is Channel.EMAIL and content is not None and content.subject is not None and variables is not None:
        p.extend(email_subject_problems(content.subject, variables, field="content.subject"))

    if p:
        raise ValidationError(p)
    # Every helper reports a problem whenever it returns None for a required value, so with no problems
    # these hold; the asserts tell mypy.
    assert name is not None and channel is not None and segments is not None and recipients is not None
    assert variables is not None and retry_policy is not None and locale is not None
    assert batch_size is not None and failure_threshold is not None and failure_min_sample is not None
    return CampaignDraft(
        name=name,
        channel=channel,
        template=template,
        content=content,
        segments=segments,
        manual_recipients=recipients,
        start_at=start_at,
        batch_size=batch_size,
        retry_policy=retry_policy,
        failure_threshold=failure_threshold,
        failure_min_sample=failure_min_sample,
        locale=locale,
        variables=variables,
        max_sms_segments=max_sms_segments,
    )


def email_subject_problems(subject: str, variables: Mapping[str, str], *, field: str = "subject") -> list[str]:
    """Why the email subject template ``subject``, rendered with ``variables``, would not be one header
    line of at most ``SUBJECT_MAX`` characters; empty when it would.

    A line break in the template itself is reported on ``field``, one in a value on that variable
    (``variables.<name>``). Variables the subject uses but ``variables`` lacks, and malformed placeholders,
    are not reported here: rendering reports them.
    """
    problems: list[str] = []
    if _LINE_BREAK.search(subject):
        problems.append(f"{field}: must be a single line (no line breaks)")
    try:
        used = template_variables(subject)
    except ValidationError:
        return problems
    for name in sorted(used):
        value = variables.get(name)
        if isinstance(value, str) and _LINE_BREAK.search(value):
            problems.append(
                f"variables.{name}: contains a line break, and the email subject ({field}) uses it; "
                "a subject must be a single line"
            )
    if problems or not used <= set(variables):
        return problems
    rendered = render(subject, variables)
    if len(rendered) > SUBJECT_MAX:
        problems.append(f"{field}: at most {SUBJECT_MAX} characters once rendered, got {len(rendered)}")
    return problems


# --- helpers: each appends its problems to ``p`` and returns None when the value is unusable ---------


def _huge_integers(payload: Mapping[object, object]) -> list[str]:
    """One problem per integer (value or key, at any depth) of more than ``ID_MAX`` digits."""
    limit_bits = int(ID_MAX / 0.30103) + 1  # a bit length past which the number has more than ID_MAX digits
    problems: list[str] = []
    stack: list[tuple[str, object]] = [("", payload)]
    while stack and len(problems) < _MAX_ITEM_PROBLEMS:
        path, value = stack.pop()
        items: list[tuple[str, object]] = []
        if isinstance(value, Mapping):
            for key, item in value.items():
                if _is_huge(key, limit_bits):
                    problems.append(f"{path or 'payload'}: a key is an integer of more than {ID_MAX} digits")
                    continue
                name = key if isinstance(key, str) and len(key) <= 40 else shown(key)
                items.append((f"{path}.{name}" if path else str(name), item))
        elif isinstance(value, list | tuple):
            items = [(f"{path}[{i}]", item) for i, item in enumerate(value)]
        elif _is_huge(value, limit_bits):
            problems.append(f"{path}: an integer of more than {ID_MAX} digits; no field takes one that long")
        stack.extend(reversed(items))
    return problems


def _is_huge(value: object, limit_bits: int) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value.bit_length() > limit_bits


def _unknown(key: object, prefix: str, allowed: tuple[str, ...]) -> str:
    name = key if isinstance(key, str) and len(key) <= 40 else shown(key)
    return f"{prefix}{name}: unknown field (allowed: {', '.join(allowed)})"


def _text(
    p: list[str],
    value: object,
    field_name: str,
    *,
    max_len: int,
    required: bool = False,
    single_line: bool = False,
    clean: Callable[[str], str] = sanitize_text,
) -> str | None:
    """A sanitised, stripped, non-empty string of at most ``max_len`` characters."""
    if value is None:
        if required:
            p.append(f"{field_name}: required")
        return None
    if not isinstance(value, str):
        p.append(f"{field_name}: must be a string, got {kind(value)}")
        return None
    if len(value) > max_len:
        p.append(f"{field_name}: must be at most {max_len} characters, got {len(value)}")
        return None
    text = clean(value).strip()
    if not text:
        p.append(f"{field_name}: must not be empty")
        return None
    if len(text) > max_len:  # sanitising HTML can grow text (escaping)
        p.append(f"{field_name}: must be at most {max_len} characters after sanitising, got {len(text)}")
        return None
    if single_line and ("\n" in text or "\t" in text):
        p.append(f"{field_name}: must be a single line (no line breaks or tabs)")
        return None
    return text


def _channel(p: list[str], value: object) -> Channel | None:
    allowed = ", ".join(c.value for c in Channel)
    if value is None:
        p.append(f"channel: required (one of {allowed})")
        return None
    if isinstance(value, str):
        try:
            return Channel(value)
        except ValueError:
            pass
    p.append(f"channel: must be one of {allowed}, got {shown(value)}")
    return None


def _check_keys(p: list[str], value: Mapping[object, object], prefix: str, allowed: tuple[str, ...]) -> None:
    for key in value:
        if key not in allowed:
            p.append(_unknown(key, prefix, allowed))


def _template(p: list[str], value: object) -> TemplateRef | None:
    if not isinstance(value, Mapping):
        p.append(f'template: must be an object like {{"name": ..., "version": ...}}, got {kind(value)}')
        return None
    _check_keys(p, value, "template.", _TEMPLATE_KEYS)
    name = _text(
        p, value.get("name"), "template.name", max_len=TEMPLATE_NAME_MAX, required=True, single_line=True
    )
    version_raw = value.get("version")
    version: int | None = None
    if version_raw is not None:
        version = _int(p, version_raw, "template.version", 1, 2**31 - 1, None)
    if name is None or (version_raw is not None and version is None):
        return None
    return TemplateRef(name=name, version=version)


def _content(p: list[str], value: object, channel: Channel | None) -> InlineContent | None:
    if not isinstance(value, Mapping):
        p.append(f'content: must be an object like {{"body": ...}}, got {kind(value)}')
        return None
    _check_keys(p, value, "content.", _CONTENT_KEYS)
    ok = True
    # Without a valid channel the per-channel rules cannot be applied; the channel problem is reported.
    limit = BODY_LIMITS[channel] if channel is not None else max(BODY_LIMITS.values())
    clean = sanitize_html if channel is Channel.EMAIL else sanitize_text
    body = _text(p, value.get("body"), "content.body", max_len=limit, required=True, clean=clean)
    if body is not None:
        problems = template_problems(body, field="content.body")
        p.extend(problems)
        ok = ok and not problems
    subject_raw = value.get("subject")
    subject: str | None = None
    if channel is Channel.EMAIL:
        subject = _text(
            p, subject_raw, "content.subject", max_len=SUBJECT_MAX, required=True, single_line=True
        )
        if subject is not None:
            problems = template_problems(subject, field="content.subject")
            p.extend(problems)
            ok = ok and not problems
        ok = ok and subject is not None
    elif subject_raw is not None and channel is not None:
        p.append(f"content.subject: only email messages have a subject, not {channel.value}")
        ok = False
    if body is None or not ok:
        return None
    return InlineContent(body=body, subject=subject)


def _variables(p: list[str], value: object) -> Mapping[str, str] | None:
    if value is None:
        return MappingProxyType({})
    if not isinstance(value, Mapping):
        p.append(f"variables: must be an object of strings, got {kind(value)}")
        return None
    if len(value) > MAX_VARIABLES:
        p.append(f"variables: at most {MAX_VARIABLES} variables, got {len(value)}")
        return None
    result: dict[str, str] = {}
    before = len(p)
    for key, raw in value.items():
        if not isinstance(key, str) or not IDENTIFIER.fullmatch(key):
            p.append(
                f"variables: name {shown(key)} is not valid (letters, digits and underscores, "
                "not starting with a digit)"
            )
            continue
        if not isinstance(raw, str):
            p.append(f"variables.{key}: must be a string, got {kind(raw)}")
            continue
        if len(raw) > VARIABLE_VALUE_MAX:
            p.append(f"variables.{key}: must be at most {VARIABLE_VALUE_MAX} characters, got {len(raw)}")
            continue
        result[key] = sanitize_text(raw)
    return MappingProxyType(result) if len(p) == before else None


def _ids(
    p: list[str], value: object, field_name: str, max_items: int, *, allow_int: bool
) -> tuple[str, ...] | None:
    """A list of ids (non-empty strings, or integers when ``allow_int``) as de-duplicated strings."""
    if value is None:
        return ()
    if not isinstance(value, list | tuple):
        p.append(f"{field_name}: must be an array of ids, got {kind(value)}")
        return None
    if len(value) > max_items:
        p.append(f"{field_name}: at most {max_items} entries, got {len(value)}")
        return None
    seen: dict[str, None] = {}
    bad = 0
    for index, item in enumerate(value):
        problem: str | None = None
        if isinstance(item, int) and not isinstance(item, bool) and allow_int:
            seen.setdefault(str(item), None)
            continue
        if isinstance(item, str):
            text = sanitize_text(item).strip()
            if not text:
                problem = "must not be empty"
            elif len(text) > ID_MAX:
                problem = f"must be at most {ID_MAX} characters, got {len(text)}"
            else:
                seen.setdefault(text, None)
                continue
        else:
            wanted = "a string or integer id" if allow_int else "a string id"
            problem = f"must be {wanted}, got {kind(item)}"
        bad += 1
        if bad <= _MAX_ITEM_PROBLEMS:
            p.append(f"{field_name}[{index}]: {problem}")
    if bad > _MAX_ITEM_PROBLEMS:
        p.append(f"{field_name}: {bad - _MAX_ITEM_PROBLEMS} more invalid entries not listed")
    return tuple(seen) if bad == 0 else None


def _start_at(p: list[str], value: object, now: datetime, max_ahead: timedelta) -> datetime | None:
    if value is None:
        return None
    example = "e.g. 2025-05-01T09:00:00+02:00"
    if isinstance(value, datetime):
        parsed = value
    elif isinstance(value, str):
        try:
            parsed = datetime.fromisoformat(value.strip())
        except ValueError:
            p.append(
                f"start_at: must be an ISO-8601 date-time with a UTC offset ({example}), got {shown(value)}"
            )
            return None
    else:
        p.append(f"start_at: must be an ISO-8601 date-time string ({example}), got {kind(value)}")
        return None
    if parsed.tzinfo is None or parsed.utcoffset() is None:
        p.append(f"start_at: must include a UTC offset or Z ({example}), got {shown(value)}")
        return None
    try:
        utc = parsed.astimezone(UTC)
    except OverflowError:
        p.append(f"start_at: out of range, got {shown(value)}")
        return None
    horizon = now + max_ahead
    if utc > horizon:
        p.append(
            f"start_at: must be at most {max_ahead.days} days ahead (before {horizon.isoformat()}), "
            f"got {utc.isoformat()}"
        )
        return None
    return utc


def _int(p: list[str], value: object, field_name: str, lo: int, hi: int, default: int | None) -> int | None:
    if value is None:
        return default
    if isinstance(value, bool) or not isinstance(value, int):
        p.append(f"{field_name}: must be an integer between {lo} and {hi}, got {shown(value)}")
        return None
    if not lo <= value <= hi:
        p.append(f"{field_name}: must be between {lo} and {hi}, got {shown(value)}")
        return None
    return value


def _fraction(p: list[str], value: object, field_name: str, default: float) -> float | None:
    if value is None:
        return default
    if isinstance(value, bool) or not isinstance(value, int | float):
        p.append(f"{field_name}: must be a number between 0 and 1, got {shown(value)}")
        return None
    if not 0 <= value <= 1:  # also false for NaN
        p.append(f"{field_name}: must be between 0 and 1, got {shown(value)}")
        return None
    return float(value)


def _retry_policy(p: list[str], value: object) -> RetryPolicy | None:
    if value is None:
        return RetryPolicy()
    if not isinstance(value, Mapping):
        p.append(f"retry_policy: must be an object, got {kind(value)}")
        return None
    _check_keys(p, value, "retry_policy.", _RETRY_KEYS)
    defaults = RetryPolicy()

    def pick(key: str, default: object) -> object:
        given = value.get(key)
        return default if given is None else given

    max_retries = pick("max_retries", defaults.max_retries)
    base = pick("backoff_base_s", defaults.backoff_base_s)
    cap = pick("backoff_max_s", defaults.backoff_max_s)
    jitter = pick("jitter", defaults.jitter)
    problems = policy_problems(max_retries, base, cap, jitter, prefix="retry_policy")
    if problems:
        p.extend(problems)
        return None
    # policy_problems has checked the types; the isinstance checks narrow them for mypy.
    assert isinstance(max_retries, int) and isinstance(base, int | float)
    assert isinstance(cap, int | float) and isinstance(jitter, int | float)
    return RetryPolicy(
        max_retries=max_retries, backoff_base_s=float(base), backoff_max_s=float(cap), jitter=float(jitter)
    )


def _locale(p: list[str], value: object) -> str | None:
    if value is None:
        return DEFAULT_LOCALE
    if not isinstance(value, str) or len(value) > _LOCALE_MAX or not _LOCALE.fullmatch(value):
        p.append(f"locale: must be a language tag like en, pt-BR or zh-Hant-TW, got {shown(value)}")
        return None
    return value
