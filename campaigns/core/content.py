"""A campaign's stored content, compiled once and rendered per recipient at send time (pure).

The campaign service stores content with the campaign's variables already substituted and every profile
placeholder (``{{ first_name }}``, ``{{ attributes.tier | default: "member" }}``) kept; the sender compiles
each content row once per campaign (:class:`CompiledContent`) and renders it for each recipient's profile
(:meth:`CompiledContent.render`), which costs a few microseconds per message.

Guarantees of :meth:`CompiledContent.render`:

* values are cleaned for where they go (``campaigns.core.templates.Clean``): email HTML escaped, email
  subject on one line, control characters removed everywhere;
* email gets a plain-text alternative rendered from a text version of the HTML made once at compile time
  (links become ``text (url)``), so both parts carry the same values;
* WhatsApp template parameters are single lines without tabs or runs of more than three spaces (the Cloud API
  refuses others, error 132018);
* a WhatsApp template parameter that renders empty, or an SMS longer than the campaign's
  ``max_sms_segments`` once rendered, is a :class:`Refusal` with a reason saying so, never a message: the
  provider would refuse the first, and the second would cost more than the campaign allows.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from html.parser import HTMLParser
from typing import Any
from urllib.parse import quote

from campaigns.core.sms import MAX_SEGMENTS, SmsEstimate, estimate
from campaigns.core.templates import Clean, CompiledTemplate, compile_template
from campaigns.errors import ValidationError

__all__ = [
    "CompiledContent",
    "Refusal",
    "Rendered",
    "html_to_text",
    "list_unsubscribe",
    "pick_locale",
    "unrendered_fields",
]


def unrendered_fields() -> dict[str, Any]:
    """A RecipientMessage's address and content fields as the expansion writes them and every retry carries them:
    empty. The sender reads the address and renders the stored content at each claim, so no record on the message
    topics, their retry tiers or the dead-letter topic copies a body (an email's HTML) or an address.

    A new dict each call, its array a list: the codec's compiled path takes lists only (a tuple sends every
    encode down the checked path, ~27x slower)."""
    return {"address": "", "subject": None, "body": "", "template_name": None, "template_parameters": [], "locale": ""}


@dataclass(frozen=True, slots=True)
class Rendered:
    """One recipient's message: what the transport sends."""

    subject: str | None
    body: str
    text_body: str | None = None  # email: the text/plain alternative
    parameters: tuple[str, ...] = ()  # WhatsApp template body parameters, in order
    header_parameters: tuple[str, ...] = ()  # WhatsApp template text header parameter (at most one)
    sms: SmsEstimate | None = None


@dataclass(frozen=True, slots=True)
class Refusal:
    """Why this recipient's message is not sent (recorded as a permanent failure with this reason)."""

    reason: str


class CompiledContent:
    """One stored content row (a campaign, a locale) compiled for per-recipient rendering.

    Raises :class:`ValidationError` for content that does not compile (stored content always does: the
    service validated it).
    """

    __slots__ = (
        "_body",
        "_header",
        "_parameters",
        "_subject",
        "_text",
        "channel",
        "locale",
        "max_sms_segments",
        "template_name",
    )

    def __init__(
        self,
        channel: str,
        locale: str,
        subject: str | None,
        body: str,
        template_name: str | None,
        parameters: Sequence[str] = (),
        max_sms_segments: int | None = None,
        header_parameters: Sequence[str] = (),
    ) -> None:
        self.channel = channel
        self.locale = locale
        self.template_name = template_name
        self.max_sms_segments = max_sms_segments or MAX_SEGMENTS
        self._subject = compile_template(subject) if subject else None
        self._body = compile_template(body)
        self._parameters = tuple(compile_template(p) for p in parameters)
        self._header = tuple(compile_template(p) for p in header_parameters)
        self._text: CompiledTemplate | None = None
        if channel == "email":
            try:
                self._text = compile_template(html_to_text(body))
            except ValidationError:  # an entity that decodes to braces: render the text from the HTML instead
                self._text = None

    def render(self, values: Mapping[str, Any]) -> Rendered | Refusal:
        """The message for the recipient whose profile is ``values``, or why it is not sent."""
        channel = self.channel
        if channel == "email":
            body = self._body.render(values, Clean.HTML)
            text = self._text.render(values, Clean.TEXT) if self._text is not None else html_to_text(body)
            subject = self._subject.render(values, Clean.LINE) if self._subject is not None else None
            return Rendered(subject, body, text)
        if channel == "whatsapp":
            if not self.template_name:
                return Rendered(None, self._body.render(values, Clean.TEXT))
            # The Cloud API refuses a parameter with a line break, a tab or more than 4 spaces in a row (132018).
            parameters = tuple(_one_param(p.render(values, Clean.LINE)) for p in self._parameters)
            header = tuple(_one_param(p.render(values, Clean.LINE)) for p in self._header)
            for template, value in zip((*self._parameters, *self._header), (*parameters, *header), strict=True):
                if not value.strip():
                    return Refusal(
                        f"empty_parameter: {template.text} is empty for this recipient (the Cloud API "
                        "refuses empty parameters; give it a default)"
                    )
            # The provider renders a template message from its parameters: the body is not sent, so it is
            # kept as stored (the record shows the template text).
            return Rendered(None, self._body.text, parameters=parameters, header_parameters=header)
        body = self._body.render(values, Clean.TEXT)
        sms = estimate(body)
        if sms.segments > self.max_sms_segments:
            return Refusal(
                f"too_many_segments: {sms.segments} {sms.encoding} segments once rendered, the campaign "
                f"allows {self.max_sms_segments} (max_sms_segments)"
            )
        return Rendered(None, body, sms=sms)


def _one_param(text: str) -> str:
    return _SPACE_RUN.sub("   ", text) if "    " in text else text


def pick_locale(available: Sequence[str], wanted: str | None, default: str) -> str | None:
    """The content locale for a recipient who prefers ``wanted``: that one, else one of the same language
    (``pt-BR`` -> ``pt``, ``pt`` -> ``pt-BR``), else the campaign's ``default``, else any; None if there is
    no content at all."""
    if wanted in available:
        return wanted
    if wanted:
        language = re.split(r"[-_]", wanted, maxsplit=1)[0].lower()
        for locale in available:
            if re.split(r"[-_]", locale, maxsplit=1)[0].lower() == language:
                return locale
    if default in available:
        return default
    return available[0] if available else None


def list_unsubscribe(url: str, mailto: str, token: str) -> tuple[str, str]:
    """(https link, mailto link) for the ``List-Unsubscribe`` header of a message carrying ``token``."""
    separator = "&" if "?" in url else "?"
    if not _URL_SAFE.fullmatch(token):  # tokens are (digits, letters, . _ -): quoting is the rare path
        token = quote(token, safe="")
    return f"{url}{separator}token={token}", f"mailto:{mailto}?subject=unsubscribe%20{token}"


_BLOCKS = frozenset(
    {
        "p",
        "div",
        "br",
        "li",
        "tr",
        "h1",
        "h2",
        "h3",
        "h4",
        "h5",
        "h6",
        "table",
        "ul",
        "ol",
        "blockquote",
        "hr",
        "section",
        "article",
        "header",
        "footer",
    }
)
_SPACE_RUN = re.compile(r" {4,}")
_URL_SAFE = re.compile(r"[A-Za-z0-9._~-]*")
_SPACES = re.compile(r"[ \t\f\v]+")
_BLANK_LINES = re.compile(r"\n[ \t]*(?:\n[ \t]*)+")


class _Text(HTMLParser):
    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.out: list[str] = []
        self._links: list[str | None] = []
        self._skip = 0

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        if tag in ("style", "script", "head", "title"):
            self._skip += 1
        elif tag in _BLOCKS:
            self.out.append("\n")
        if tag == "li":
            self.out.append("- ")
        if tag == "a":
            self._links.append(dict(attrs).get("href"))
            self._link_start = len(self.out)

    def handle_endtag(self, tag: str) -> None:
        if tag in ("style", "script", "head", "title"):
            self._skip = max(0, self._skip - 1)
        elif tag in _BLOCKS:
            self.out.append("\n")
        if tag == "a" and self._links:
            href = self._links.pop()
            label = "".join(self.out[self._link_start :]).strip()
            if href and href != label and not href.startswith("#"):
                self.out.append(f" ({href})")

    def handle_data(self, data: str) -> None:
        if not self._skip:
            self.out.append(data.replace("\n", " "))


def html_to_text(markup: str) -> str:
    """A plain-text rendition of (sanitised) HTML: text kept, block elements on their own lines, links as
    ``text (url)``, entities decoded, runs of blank lines and spaces collapsed."""
    parser = _Text()
    parser.feed(markup)
    parser.close()
    text = _SPACES.sub(" ", "".join(parser.out))
    text = "\n".join(line.strip() for line in text.split("\n"))
    return _BLANK_LINES.sub("\n\n", text).strip()
