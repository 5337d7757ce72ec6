"""Logic-less message templates and the sanitisers every piece of user text goes through.

Template syntax: ``{{ name }}`` where ``name`` matches ``[a-zA-Z_][a-zA-Z0-9_]*``; whitespace inside the
braces is optional. There is nothing else: no expressions, filters, loops, attribute or item access,
includes, or format specs, and no escape syntax. Any other ``{{ ... }}`` (``{{ user.name }}``, ``{{ }}``,
``{{ a|upper }}``) is a *malformed placeholder* and is reported as an error rather than sent to customers
verbatim. A ``{{`` without a closing ``}}`` is ordinary text.

Guarantees:

* :func:`render` only ever does string substitution in one pass: values are inserted literally and the
  result is never re-scanned, so a value containing ``{{ x }}`` stays exactly that text. Nothing is
  evaluated, imported, opened or formatted (``str.format`` / ``%`` are never applied to template text).
* :func:`render` raises one :class:`~campaigns.errors.ValidationError` listing every missing variable and
  every malformed placeholder, not only the first.
* :func:`sanitize_text` is idempotent. :func:`sanitize_html` output is always safe, but HTML5 parsing of
  badly nested markup means a second pass may re-nest it (``<li><select><li>``), so it is not promised
  to be idempotent: sanitise once, when the content is stored.
"""

from __future__ import annotations

import html
import re
import unicodedata
from collections.abc import Mapping

import nh3

from campaigns.errors import ValidationError

__all__ = [
    "IDENTIFIER",
    "render",
    "sanitize_html",
    "sanitize_text",
    "template_problems",
    "template_variables",
    "template_variables_in_order",
]

IDENTIFIER = re.compile(r"[a-zA-Z_][a-zA-Z0-9_]*")
"""What a variable name may look like (ASCII only, so look-alike names cannot be smuggled in)."""

# Every ``{{ ... }}`` candidate; the inner text is checked against IDENTIFIER afterwards. Braces are
# excluded from the inner text so ``{{{x}}}`` is the placeholder ``{{x}}`` wrapped in literal braces.
_CANDIDATE = re.compile(r"\{\{([^{}]*)\}\}")

_NEWLINES = re.compile(r"\r\n?")


def _scan(text: str) -> tuple[frozenset[str], list[str]]:
    names: set[str] = set()
    malformed: list[str] = []
    for match in _CANDIDATE.finditer(text):
        inner = match.group(1).strip()
        if IDENTIFIER.fullmatch(inner):
            names.add(inner)
        else:
            malformed.append(match.group(0))
    return frozenset(names), malformed


def _malformed_problem(field: str, placeholder: str) -> str:
    return (
        f"{field}: malformed placeholder {placeholder!r} "
        "(use {{ name }} with letters, digits and underscores only)"
    )


def template_problems(text: str, *, field: str = "template") -> list[str]:
    """One problem per malformed placeholder in ``text`` (empty list when the template is well formed)."""
    _, malformed = _scan(text)
    return [_malformed_problem(field, p) for p in malformed]


def template_variables(text: str) -> frozenset[str]:
    """The variable names ``text`` uses.

    Raises :class:`ValidationError` listing every malformed placeholder, so a template that would be
    sent with ``{{ user.name }}`` in it is refused when it is stored, not when it is sent.
    """
    names, malformed = _scan(text)
    if malformed:
        raise ValidationError([_malformed_problem("template", p) for p in malformed])
    return names


def template_variables_in_order(text: str) -> tuple[str, ...]:
    """The variable names ``text`` uses, each once, in the order they first appear.

    This is the template's parameter order: a provider template registered from ``text`` has
    positional parameters ``{{1}}..{{n}}`` in this order (WhatsApp body parameters), so the values sent
    with each message must follow it. Raises :class:`ValidationError` for malformed placeholders, like
    :func:`template_variables`.
    """
    names: dict[str, None] = {}
    malformed: list[str] = []
    for match in _CANDIDATE.finditer(text):
        inner = match.group(1).strip()
        if IDENTIFIER.fullmatch(inner):
            names.setdefault(inner)
        else:
            malformed.append(match.group(0))
    if malformed:
        raise ValidationError([_malformed_problem("template", p) for p in malformed])
    return tuple(names)


def render(text: str, variables: Mapping[str, str], *, escape_html: bool = False) -> str:
    """``text`` with every ``{{ name }}`` replaced by ``variables[name]``.

    Extra variables are ignored. With ``escape_html`` (email HTML bodies) each value is HTML-escaped,
    quotes included, before insertion, so customer data cannot inject markup; the template itself is
    expected to have gone through :func:`sanitize_html` already. Raises :class:`ValidationError`
    listing every missing variable, every non-string value and every malformed placeholder.
    """
    names, malformed = _scan(text)
    problems = [_malformed_problem("template", p) for p in malformed]
    for name in sorted(names):
        if name not in variables:
            problems.append(f"variables.{name}: missing (the template uses {{{{ {name} }}}})")
        elif not isinstance(variables[name], str):
            problems.append(f"variables.{name}: must be a string, got {type(variables[name]).__name__}")
    if problems:
        raise ValidationError(problems)

    def substitute(match: re.Match[str]) -> str:
        value = variables[match.group(1).strip()]
        return html.escape(value, quote=True) if escape_html else value

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
