"""Logic-less message templates and the sanitisers every piece of user text goes through.

Template syntax: ``{{ path }}`` or ``{{ path | filter | filter: "argument" ... }}``; whitespace inside the
braces is optional.

* ``path`` is a variable name matching ``[a-zA-Z_][a-zA-Z0-9_]*`` (a campaign variable or a profile field,
  :data:`PROFILE_FIELDS`), or ``attributes.<name>``: one key of the customer's free attributes (one level
  only; nothing else has a dot).
* Filters, applied left to right: ``upper``, ``lower``, ``capitalize``, ``trim``, ``default: "text"`` (the
  text when the value is missing or empty at that point), ``date: "%d %B %Y"`` (an ISO-8601 date or
  date-time value formatted with the directives of :data:`DATE_DIRECTIVES`; without an argument
  ``%Y-%m-%d``; an instant, a date-time with an offset, is shown in the recipient's ``timezone``; a value
  that is not a date counts as missing, so a later ``default`` applies).
* A filter argument is a string in double or single quotes, with no braces or quote of its own kind in it
  (inside an HTML attribute use single quotes: the HTML sanitiser escapes double quotes there).

There is nothing else: no expressions, loops, item access, includes, or format specs, and no escape
syntax. Any other ``{{ ... }}`` (``{{ user.name }}``, ``{{ }}``, ``{{ a | shout }}``) is a *malformed
placeholder* and is reported as an error rather than sent to customers verbatim. A ``{{`` without a
closing ``}}`` is ordinary text.

Two times of rendering: the campaign's variables are substituted when the campaign is created
(:meth:`CompiledTemplate.substitute`, which keeps every other placeholder as written), and the profile
of each recipient when its message is sent (:meth:`CompiledTemplate.render` on a template compiled once per
campaign content, :func:`compile_template`).

Guarantees:

* Rendering only ever does string substitution in one pass: values are inserted literally and the
  result is never re-scanned, so a value containing ``{{ x }}`` stays exactly that text. Nothing is
  evaluated, imported, opened or formatted (``str.format`` / ``%`` / ``strftime`` are never applied to
  template text or values; ``date`` uses its own table of directives).
* :func:`render` raises one :class:`~campaigns.errors.ValidationError` listing every missing variable (one
  without a default) and every malformed placeholder, not only the first.
* :meth:`CompiledTemplate.render` never raises for a value: a missing value with no default is the empty
  string (:meth:`CompiledTemplate.empty_slots` says which were), and every inserted value is cleaned for
  its destination (:class:`Clean`): HTML-escaped for email HTML, control characters removed everywhere,
  line breaks turned into spaces for one-line destinations (email subjects). The template text itself
  was sanitised when it was stored, so cleaning what is inserted is cleaning the output.
* :func:`sanitize_text` is idempotent. :func:`sanitize_html` output is always safe, but HTML5 parsing of
  badly nested markup means a second pass may re-nest it (``<li><select><li>``), so it is not promised
  to be idempotent: sanitise once, when the content is stored.
"""

from __future__ import annotations

import html
import re
import unicodedata
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import date, datetime, tzinfo
from enum import Enum
from functools import lru_cache
from typing import Any
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

import nh3

from campaigns.errors import ValidationError

__all__ = [
    "DATE_DIRECTIVES",
    "FILTERS",
    "IDENTIFIER",
    "PROFILE_FIELDS",
    "Clean",
    "CompiledTemplate",
    "Placeholder",
    "compile_template",
    "parse_placeholders",
    "render",
    "sanitize_html",
    "sanitize_text",
    "template_parameters_in_order",
    "template_problems",
    "template_variables",
    "template_variables_in_order",
]

IDENTIFIER = re.compile(r"[a-zA-Z_][a-zA-Z0-9_]*")
"""What a variable name may look like (ASCII only, so look-alike names cannot be smuggled in)."""

PROFILE_FIELDS = frozenset(
    {"customer_id", "first_name", "last_name", "email", "phone", "whatsapp", "locale", "timezone", "unsubscribe_url"}
)
"""The customer's own fields a template may use without a default (``attributes.<name>`` needs one: free
attributes have no schema that promises them). A field the customer has no value for renders empty.
``unsubscribe_url`` is the recipient's one-click unsubscribe link (email only; empty on other channels)."""

ATTRIBUTES = "attributes"

# Every ``{{ ... }}`` candidate; the inner text is parsed afterwards. Braces are excluded from the inner
# text so ``{{{x}}}`` is the placeholder ``{{x}}`` wrapped in literal braces.
_CANDIDATE = re.compile(r"\{\{([^{}]*)\}\}")
_PATH = re.compile(r"\s*([a-zA-Z_][a-zA-Z0-9_]*)(?:\.([a-zA-Z_][a-zA-Z0-9_]*))?\s*")
_FILTER = re.compile(r"\|\s*([a-z_]+)\s*(?::\s*(?:\"([^\"]*)\"|'([^']*)')\s*)?")

_NEWLINES = re.compile(r"\r\n?")
# Unicode Cc (C0, DEL, C1) and lone surrogates (Cs), as sanitize_text removes them, as one regex (fast).
_CONTROL_EXCEPT_NL_TAB = re.compile("[\x00-\x08\x0b-\x1f\x7f-\x9f\ud800-\udfff]")
_LINE_BREAKS_AND_TABS = re.compile("[\r\n\t\v\f\x1c-\x1e\x85\u2028\u2029]+")

_MONTHS: tuple[str, ...] = (
    "January",
    "February",
    "March",
    "April",
    "May",
    "June",
    "July",
    "August",
    "September",
    "October",
    "November",
    "December",
)
_DAYS: tuple[str, ...] = ("Monday", "Tuesday", "Wednesday", "Thursday", "Friday", "Saturday", "Sunday")
DATE_DIRECTIVES: Mapping[str, Callable[[datetime], str]] = {
    "Y": lambda d: f"{d.year:04d}",
    "y": lambda d: f"{d.year % 100:02d}",
    "m": lambda d: f"{d.month:02d}",
    "d": lambda d: f"{d.day:02d}",
    "e": lambda d: str(d.day),
    "B": lambda d: _MONTHS[d.month - 1],
    "b": lambda d: _MONTHS[d.month - 1][:3],
    "A": lambda d: _DAYS[d.weekday()],
    "a": lambda d: _DAYS[d.weekday()][:3],
    "H": lambda d: f"{d.hour:02d}",
    "M": lambda d: f"{d.minute:02d}",
    "S": lambda d: f"{d.second:02d}",
    "%": lambda d: "%",
}
"""``date`` filter directives (English names, whatever the process locale): ``%Y %y %m %d %e`` (day without
padding) ``%B %b %A %a %H %M %S %%``. Any other ``%x`` is a malformed placeholder."""

_DIRECTIVE = re.compile(r"%(.?)")
DEFAULT_DATE_FORMAT = "%Y-%m-%d"

FILTERS = ("upper", "lower", "capitalize", "trim", "default", "date")
_NO_ARGUMENT = frozenset({"upper", "lower", "capitalize", "trim"})


@dataclass(frozen=True, slots=True)
class Placeholder:
    """One well-formed ``{{ ... }}``: the variable it reads, its filters (name, argument or None) and the
    ``default`` text if any filter gives one. ``source`` is the placeholder as written."""

    name: str  # "first_name" or "attributes.tier"
    filters: tuple[tuple[str, str | None], ...]
    source: str

    @property
    def default(self) -> str | None:
        for name, argument in self.filters:
            if name == "default":
                return argument
        return None

    @property
    def expression(self) -> str:
        """A normalised text of the placeholder (whitespace aside, equal placeholders have equal expressions)."""
        return "|".join([self.name, *(f"{n}:{a!r}" if a is not None else n for n, a in self.filters)])

    def apply(self, value: str | None, timezone: str | None = None) -> tuple[str | None, bool]:
        """The filters applied to ``value`` (None: missing); and whether the result is the template's own
        text (a ``default``) rather than the value. ``timezone`` (an IANA name) is where ``date`` shows an
        instant."""
        from_template = False
        for name, argument in self.filters:
            if name == "default":
                if not value:
                    value, from_template = argument, True
            elif value is None:
                continue
            elif name == "upper":
                value = value.upper()
            elif name == "lower":
                value = value.lower()
            elif name == "capitalize":
                value = value[:1].upper() + value[1:]
            elif name == "trim":
                value = value.strip()
            elif name == "date":
                value = _format_date(value, argument or DEFAULT_DATE_FORMAT, timezone)
        return value, from_template


@lru_cache(maxsize=512)
def _zone(name: str) -> tzinfo | None:
    try:
        return ZoneInfo(name)
    except (ZoneInfoNotFoundError, ValueError):
        return None


def _format_date(value: str, fmt: str, timezone: str | None = None) -> str | None:
    """``value`` (ISO 8601 date or date-time) formatted with ``fmt``; None if it is not one. An instant (a
    date-time with an offset) is shown in ``timezone`` when that is a known IANA zone; a date or a local
    date-time as written."""
    text = value.strip()
    try:
        moment = datetime.fromisoformat(text)
        if moment.tzinfo is not None and timezone:
            zone = _zone(timezone)
            if zone is not None:
                moment = moment.astimezone(zone)
    except ValueError:
        try:
            day = date.fromisoformat(text)
        except ValueError:
            return None
        moment = datetime(day.year, day.month, day.day)  # noqa: DTZ001 - a calendar date, no instant
    return _DIRECTIVE.sub(lambda m: DATE_DIRECTIVES[m.group(1)](moment), fmt)


def _parse(inner: str, source: str) -> Placeholder | None:
    path = _PATH.match(inner)
    if path is None:
        return None
    head, key = path.group(1), path.group(2)
    if (key is not None) != (head == ATTRIBUTES):  # attributes.x only, and never attributes as a whole
        return None
    name = f"{head}.{key}" if key is not None else head
    filters: list[tuple[str, str | None]] = []
    position = path.end()
    while position < len(inner):
        match = _FILTER.match(inner, position)
        if match is None:
            return None
        filter_name = match.group(1)
        argument = match.group(2) if match.group(2) is not None else match.group(3)
        if filter_name not in FILTERS:
            return None
        if filter_name in _NO_ARGUMENT and argument is not None:
            return None
        if filter_name == "default" and argument is None:
            return None
        if (
            filter_name == "date"
            and argument is not None
            and any(m.group(1) not in DATE_DIRECTIVES for m in _DIRECTIVE.finditer(argument))
        ):
            return None
        filters.append((filter_name, argument))
        position = match.end()
    return Placeholder(name, tuple(filters), source)


def parse_placeholders(text: str) -> tuple[list[Placeholder], list[str]]:
    """Every placeholder of ``text`` in order, and the malformed ones (as written)."""
    found: list[Placeholder] = []
    malformed: list[str] = []
    for match in _CANDIDATE.finditer(text):
        placeholder = _parse(match.group(1), match.group(0))
        if placeholder is None:
            malformed.append(match.group(0))
        else:
            found.append(placeholder)
    return found, malformed


def _scan(text: str) -> tuple[frozenset[str], list[str]]:
    found, malformed = parse_placeholders(text)
    return frozenset(p.name for p in found), malformed


def _malformed_problem(field: str, placeholder: str) -> str:
    return (
        f"{field}: malformed placeholder {placeholder!r} (use {{{{ name }}}} or {{{{ attributes.name }}}}, "
        f'optionally with filters: {" | ".join(FILTERS)}, e.g. {{{{ first_name | default: "there" }}}})'
    )


def template_problems(text: str, *, field: str = "template") -> list[str]:
    """One problem per malformed placeholder in ``text`` (empty list when the template is well formed)."""
    _, malformed = _scan(text)
    return [_malformed_problem(field, p) for p in malformed]


def template_variables(text: str) -> frozenset[str]:
    """The variable names ``text`` uses (``attributes.x`` for attributes), with a default or not.

    Raises :class:`ValidationError` listing every malformed placeholder, so a template that would be
    sent with ``{{ user.name }}`` in it is refused when it is stored, not when it is sent.
    """
    names, malformed = _scan(text)
    if malformed:
        raise ValidationError([_malformed_problem("template", p) for p in malformed])
    return names


def template_variables_in_order(text: str) -> tuple[str, ...]:
    """The variable names ``text`` uses, each once, in the order they first appear.

    Raises :class:`ValidationError` for malformed placeholders, like :func:`template_variables`.
    """
    return tuple(dict.fromkeys(p.name for p in template_parameters_in_order(text)))


def template_parameters_in_order(text: str) -> tuple[Placeholder, ...]:
    """The distinct placeholders of ``text`` (by :attr:`Placeholder.expression`) in order of first appearance.

    This is the template's parameter order: a provider template registered from ``text`` has positional
    parameters ``{{1}}..{{n}}`` in this order (WhatsApp body parameters), so the values sent with each
    message must follow it. Raises :class:`ValidationError` for malformed placeholders.
    """
    found, malformed = parse_placeholders(text)
    if malformed:
        raise ValidationError([_malformed_problem("template", p) for p in malformed])
    unique: dict[str, Placeholder] = {}
    for placeholder in found:
        unique.setdefault(placeholder.expression, placeholder)
    return tuple(unique.values())


class Clean(Enum):
    """How inserted values are cleaned for where the rendered text goes."""

    TEXT = "text"  # SMS, WhatsApp, email text: control characters removed (\n and \t kept), \r\n -> \n
    LINE = "line"  # a header such as an email subject: also every line break and tab becomes one space
    HTML = "html"  # email HTML: TEXT, then HTML-escaped (quotes included)


def _clean_text(value: str) -> str:
    if value.isprintable():  # the usual case (no control character, no line break): nothing to do
        return value
    if "\r" in value:
        value = _NEWLINES.sub("\n", value)
    return _CONTROL_EXCEPT_NL_TAB.sub("", value)


def _clean_line(value: str) -> str:
    if value.isprintable():
        return value
    return _CONTROL_EXCEPT_NL_TAB.sub("", _LINE_BREAKS_AND_TABS.sub(" ", value))


def _clean_html(value: str) -> str:
    return html.escape(_clean_text(value), quote=True)


_CLEANERS: Mapping[Clean, Callable[[str], str]] = {
    Clean.TEXT: _clean_text,
    Clean.LINE: _clean_line,
    Clean.HTML: _clean_html,
}


def lookup(values: Mapping[str, Any], name: str) -> str | None:
    """The value of ``name`` (``attributes.x`` reads ``values["attributes"]["x"]``) as text, or None when
    missing. Attribute values that are numbers or booleans become their JSON text; objects and arrays are
    missing (a template cannot walk into them)."""
    if name.startswith("attributes."):
        attributes = values.get(ATTRIBUTES)
        value = attributes.get(name[11:]) if isinstance(attributes, Mapping) else None
    else:
        value = values.get(name)
    return value if value is None or value.__class__ is str else _as_text(value)


def _as_text(value: object) -> str | None:
    if isinstance(value, str):
        return value
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        return str(value)
    return None


def _capitalize(value: str) -> str:
    return value[:1].upper() + value[1:]


_TRANSFORMS: Mapping[str, Callable[[str], str]] = {
    "upper": str.upper,
    "lower": str.lower,
    "trim": str.strip,
    "capitalize": _capitalize,
}


class _Slot:
    """A placeholder prepared for rendering: its lookup and filters resolved once, at compile time."""

    __slots__ = ("attribute", "name", "placeholder", "steps")

    def __init__(self, placeholder: Placeholder) -> None:
        self.placeholder = placeholder
        self.name = placeholder.name
        self.attribute = placeholder.name[11:] if placeholder.name.startswith("attributes.") else None
        # (transform, default, date format): a default step has no transform, a date step only its format
        steps: list[tuple[Callable[[str], str] | None, str | None, str | None]] = []
        for name, argument in placeholder.filters:
            if name == "default":
                steps.append((None, argument, None))
            elif name == "date":
                steps.append((None, None, argument or DEFAULT_DATE_FORMAT))
            else:
                steps.append((_TRANSFORMS[name], None, None))
        self.steps = tuple(steps)

    def value(self, values: Mapping[str, Any]) -> tuple[str | None, bool]:
        """The filtered value, and whether it is the template's own text (a default)."""
        if self.attribute is None:
            value = values.get(self.name)
        else:
            attributes = values.get(ATTRIBUTES)
            value = attributes.get(self.attribute) if isinstance(attributes, Mapping) else None
        if value is not None and value.__class__ is not str:
            value = _as_text(value)
        from_template = False
        for transform, default, date_format in self.steps:
            if transform is not None:
                if value is not None:
                    value = transform(value)
            elif date_format is not None:
                if value is not None:
                    timezone = values.get("timezone")
                    value = _format_date(value, date_format, timezone if isinstance(timezone, str) else None)
            elif not value:
                value, from_template = default, True
        return value, from_template


class CompiledTemplate:
    """A template parsed once: render it per recipient with :meth:`render` (a few microseconds).

    Build it with :func:`compile_template`. Immutable; safe to share between threads.
    """

    __slots__ = ("_parts", "placeholders", "text")

    def __init__(self, text: str, parts: tuple[str | Placeholder, ...]) -> None:
        self.text = text
        self._parts: tuple[str | _Slot, ...] = tuple(p if isinstance(p, str) else _Slot(p) for p in parts)
        self.placeholders: tuple[Placeholder, ...] = tuple(p for p in parts if isinstance(p, Placeholder))

    @property
    def static(self) -> bool:
        """True when there is nothing to substitute."""
        return not self.placeholders

    def static_text(self) -> str:
        """The text without its placeholders (what every rendering contains)."""
        return "".join(p for p in self._parts if isinstance(p, str))

    def render(self, values: Mapping[str, Any], clean: Clean = Clean.TEXT) -> str:
        """The text with every placeholder replaced by its filtered value, cleaned as ``clean`` says; a
        value that is missing and has no default is the empty string. Single pass, never raises."""
        cleaner = _CLEANERS[clean]
        out: list[str] = []
        append = out.append
        for part in self._parts:
            if isinstance(part, str):
                append(part)
                continue
            value, from_template = part.value(values)
            if value:
                # A default is the template's own text, sanitised with it when stored (in HTML already
                # escaped): inserted as is. Values come from customers: cleaned for the destination.
                append(value if from_template else cleaner(value))
        return "".join(out)

    def empty_slots(self, values: Mapping[str, Any]) -> list[str]:
        """The placeholders (as written) that render empty for ``values``."""
        return [p.placeholder.source for p in self._parts if not isinstance(p, str) and not p.value(values)[0]]

    def substitute(self, values: Mapping[str, Any], clean: Clean = Clean.TEXT) -> str:
        """The text with the placeholders whose variable is in ``values`` rendered, and every other
        placeholder kept as written (the create-time pass: campaign variables in, profile fields left)."""
        out: list[str] = []
        for part in self._parts:
            if isinstance(part, str):
                out.append(part)
            elif part.name in values:
                value, from_template = part.value(values)
                out.append("" if not value else value if from_template else _CLEANERS[clean](value))
            else:
                out.append(part.placeholder.source)
        return "".join(out)


def compile_template(text: str) -> CompiledTemplate:
    """``text`` parsed into literal pieces and placeholders; :class:`ValidationError` listing every
    malformed placeholder."""
    parts: list[str | Placeholder] = []
    malformed: list[str] = []
    position = 0
    for match in _CANDIDATE.finditer(text):
        placeholder = _parse(match.group(1), match.group(0))
        if placeholder is None:
            malformed.append(match.group(0))
            continue
        if match.start() > position:
            parts.append(text[position : match.start()])
        parts.append(placeholder)
        position = match.end()
    if malformed:
        raise ValidationError([_malformed_problem("template", p) for p in malformed])
    if position < len(text):
        parts.append(text[position:])
    return CompiledTemplate(text, tuple(parts))


def render(text: str, variables: Mapping[str, str], *, escape_html: bool = False) -> str:
    """``text`` with every placeholder replaced by its filtered value from ``variables`` (strict).

    Extra variables are ignored. With ``escape_html`` (email HTML bodies) each value is HTML-escaped,
    quotes included, before insertion, so customer data cannot inject markup; the template itself is
    expected to have gone through :func:`sanitize_html` already. Raises :class:`ValidationError`
    listing every missing variable without a default, every non-string value and every malformed
    placeholder. Values are inserted as given (no control-character cleaning: they were sanitised when
    they were accepted).
    """
    found, malformed = parse_placeholders(text)
    problems = [_malformed_problem("template", p) for p in malformed]
    for name in sorted({p.name for p in found if p.default is None}):
        if name not in variables:
            problems.append(f"variables.{name}: missing (the template uses {{{{ {name} }}}})")
    for name in sorted({p.name for p in found}):
        if name in variables and not isinstance(variables[name], str):
            problems.append(f"variables.{name}: must be a string, got {type(variables[name]).__name__}")
    if problems:
        raise ValidationError(problems)

    def substitute(match: re.Match[str]) -> str:
        placeholder = _parse(match.group(1), match.group(0))
        assert placeholder is not None
        value, from_template = placeholder.apply(variables.get(placeholder.name))
        if not value:
            return ""
        return html.escape(value, quote=True) if escape_html and not from_template else value

    # re.sub with a function: the replacement is used verbatim (no backslash or group processing) and
    # the output is not scanned again, so values are never expanded.
    return _CANDIDATE.sub(substitute, text)


def sanitize_text(s: str) -> str:
    """``s`` without control characters, keeping ``\\n`` and ``\\t``.

    ``\\r\\n`` and lone ``\\r`` become ``\\n`` first (so line breaks survive); every other character of
    Unicode category Cc (C0, DEL, C1) is removed, and so are lone surrogates (Cs), which cannot be encoded
    as UTF-8 and would otherwise fail later in Avro encoding or a provider call. Format characters (Cf,
    e.g. the zero-width joiner inside emoji sequences and bidi marks needed by RTL text) are kept.
    """
    s = _NEWLINES.sub("\n", s)
    return "".join(ch for ch in s if ch in "\n\t" or unicodedata.category(ch) not in ("Cc", "Cs"))


def sanitize_html(s: str) -> str:
    """``s`` made safe to send as an HTML email body.

    Control characters are removed as in :func:`sanitize_text`, then ``nh3.clean`` (ammonia) applies its
    default allow-list: scripts, styles, event handlers, ``javascript:`` URLs and unknown tags are
    removed, links get ``rel="noopener noreferrer"``. ``{{ name }}`` placeholders, also inside ``href``
    values, survive unchanged. Inline ``style`` attributes are removed by the defaults.
    """
    return nh3.clean(sanitize_text(s))
