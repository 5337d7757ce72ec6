"""Logic-less templates and sanitisers."""

from __future__ import annotations

from html.parser import HTMLParser

import pytest
from hypothesis import given
from hypothesis import strategies as st

from campaigns.core.templates import (
    Clean,
    compile_template,
    render,
    sanitize_html,
    sanitize_text,
    template_parameters_in_order,
    template_problems,
    template_variables,
    template_variables_in_order,
)
from campaigns.errors import ValidationError

names = st.from_regex(r"[a-zA-Z_][a-zA-Z0-9_]{0,10}", fullmatch=True)


def test_variables_found_with_or_without_spaces() -> None:
    text = "Hi {{name}}, {{ discount }} off {{   code\t}} ({{name}})"
    assert template_variables(text) == {"name", "discount", "code"}


def test_variables_in_order_of_first_appearance() -> None:
    """The provider template's parameter order ({{1}}, {{2}}, ...): first appearance, each name once."""
    text = "Hi {{ name }}, {{discount}} off until {{ end_date }} ({{ name }}, {{ discount }})"
    assert template_variables_in_order(text) == ("name", "discount", "end_date")
    assert template_variables_in_order("no placeholders {{ unclosed") == ()
    with pytest.raises(ValidationError, match="malformed placeholder"):
        template_variables_in_order("Hi {{ user.name }}")


@given(st.lists(names, max_size=8), st.text(alphabet="ab {}", max_size=20))
def test_variables_in_order_are_the_variables(order: list[str], filler: str) -> None:
    text = filler.join(f"{{{{ {n} }}}}" for n in order)
    try:
        ordered = template_variables_in_order(text)
    except ValidationError:
        with pytest.raises(ValidationError):
            template_variables(text)
        return
    assert set(ordered) == template_variables(text)
    assert len(ordered) == len(set(ordered))


def test_no_placeholders() -> None:
    assert template_variables("plain text { not } {{ unclosed") == frozenset()
    assert render("plain {text} {{ unclosed", {}) == "plain {text} {{ unclosed"


@pytest.mark.parametrize(
    "placeholder",
    [
        "{{ user.name }}",
        "{{ }}",
        "{{ 1abc }}",
        "{{ a|shout }}",
        "{{ a | upper: 'x' }}",
        "{{ a | default }}",
        '{{ a | default: "x }}',
        "{{ a | date: '%Y %Q' }}",
        "{{ attributes.x.y }}",
        "{{ attributes }}",
        "{{ profile.x }}",
        "{{ a b }}",
        "{{ __import__('os') }}",
        "{{ x[0] }}",
        "{{ naïve }}",
    ],
)
def test_malformed_placeholders_are_errors(placeholder: str) -> None:
    text = f"Hello {placeholder}!"
    with pytest.raises(ValidationError) as info:
        template_variables(text)
    assert placeholder in str(info.value)
    assert template_problems(text, field="content.body")[0].startswith("content.body: malformed placeholder")
    with pytest.raises(ValidationError):
        render(text, {"user": "x", "a": "x", "x": "x"})


# --- filters, defaults, attributes, compiled templates ----------------------------------------------


PROFILE = {
    "first_name": "ana",
    "last_name": None,
    "attributes": {"tier": "gold", "points": 1200, "vip": True, "since": "2024-03-05", "nested": {"a": 1}},
}


@pytest.mark.parametrize(
    ("template", "expected"),
    [
        ("Hi {{ first_name }}", "Hi ana"),
        ("Hi {{ first_name | upper }}", "Hi ANA"),
        ("Hi {{first_name|capitalize}}!", "Hi Ana!"),
        ('Hi {{ last_name | default: "there" }}', "Hi there"),
        ("Hi {{ last_name | default: 'there' | upper }}", "Hi THERE"),
        ("Hi {{ last_name }}.", "Hi ."),
        ("{{ attributes.tier | upper }} {{ attributes.points }} {{ attributes.vip }}", "GOLD 1200 true"),
        ("{{ attributes.nested | default: 'n/a' }}", "n/a"),
        ("{{ attributes.missing | default: 'member' }}", "member"),
        ("since {{ attributes.since | date: '%e %B %Y' }}", "since 5 March 2024"),
        ("{{ attributes.since | date }}", "2024-03-05"),
        ("{{ attributes.tier | date | default: 'no date' }}", "no date"),
        ("{{ attributes.since | date: '%a %d/%m/%y %%' }}", "Tue 05/03/24 %"),
    ],
)
def test_filters_defaults_and_attributes(template: str, expected: str) -> None:
    assert compile_template(template).render(PROFILE) == expected


def test_date_shows_an_instant_in_the_recipients_timezone() -> None:
    template = compile_template("{{ attributes.at | date: '%a %e %b %H:%M' }}")
    at = {"attributes": {"at": "2026-12-01T23:30:00+00:00"}}
    assert template.render({**at, "timezone": "UTC"}) == "Tue 1 Dec 23:30"
    assert template.render({**at, "timezone": "Europe/Madrid"}) == "Wed 2 Dec 00:30"
    assert template.render({**at, "timezone": "America/Sao_Paulo"}) == "Tue 1 Dec 20:30"
    assert template.render({**at, "timezone": "Not/AZone"}) == "Tue 1 Dec 23:30"  # unknown: as written
    local = {"attributes": {"at": "2026-12-01T23:30:00"}, "timezone": "Asia/Tokyo"}
    assert template.render(local) == "Tue 1 Dec 23:30"  # a local time has no instant to convert


def test_compiled_render_cleans_values_for_the_destination() -> None:
    values = {"first_name": "<b>Ann\r\nie\x00\x1b</b>", "attributes": {}}
    assert compile_template("Hi {{ first_name }}").render(values, Clean.TEXT) == "Hi <b>Ann\nie</b>"
    assert compile_template("Hi {{ first_name }}").render(values, Clean.LINE) == "Hi <b>Ann ie</b>"
    assert compile_template("<p>{{ first_name }}</p>").render(values, Clean.HTML) == (
        "<p>&lt;b&gt;Ann\nie&lt;/b&gt;</p>"
    )


def test_a_default_is_template_text_not_escaped_again() -> None:
    # The stored HTML template was sanitised as a whole: its default is already HTML.
    assert compile_template("{{ first_name | default: 'Tom &amp; Jerry' }}").render({}, Clean.HTML) == (
        "Tom &amp; Jerry"
    )


def test_substitute_keeps_recipient_placeholders() -> None:
    template = compile_template("{{ discount }} off, {{ first_name | default: 'friend' }}! {{ code | upper }}")
    stored = template.substitute({"discount": "20%", "code": "spring"})
    assert stored == "20% off, {{ first_name | default: 'friend' }}! SPRING"
    assert compile_template(stored).render({"first_name": "Bo"}) == "20% off, Bo! SPRING"


def test_empty_slots() -> None:
    template = compile_template("{{ first_name }} {{ last_name | default: 'x' }} {{ attributes.tier }}")
    assert template.empty_slots({"first_name": "", "attributes": {}}) == ["{{ first_name }}", "{{ attributes.tier }}"]


def test_parameters_in_order_by_expression() -> None:
    order = template_parameters_in_order("{{ a }} {{ a|upper }} {{ a }} {{ b }}")
    assert [p.source for p in order] == ["{{ a }}", "{{ a|upper }}", "{{ b }}"]
    assert template_variables_in_order("{{ a }} {{ a|upper }} {{ b }}") == ("a", "b")


def test_strict_render_accepts_a_default_for_a_missing_variable() -> None:
    assert render("Hi {{ who | default: 'you' }}", {}) == "Hi you"
    assert render("<p>{{ who }}</p>", {"who": "<i>"}, escape_html=True) == "<p>&lt;i&gt;</p>"


@given(st.dictionaries(names, st.text(max_size=20), max_size=5), st.text(max_size=60))
def test_compiled_values_are_never_re_expanded(values: dict[str, str], filler: str) -> None:
    text = filler.replace("{", "(").replace("}", ")") + "".join(f"[{{{{ {k} }}}}]" for k in values)
    out = compile_template(text).render(values, Clean.TEXT)
    for key, value in values.items():
        cleaned = value.replace("\r\n", "\n").replace("\r", "\n")
        cleaned = "".join(
            ch
            for ch in cleaned
            if ch in "\n\t" or not (ord(ch) < 0x20 or 0x7F <= ord(ch) <= 0x9F or 0xD800 <= ord(ch) <= 0xDFFF)
        )
        assert f"[{cleaned}]" in out, key


@given(st.text(max_size=200))
def test_compile_never_raises_anything_but_validation_error(text: str) -> None:
    try:
        compile_template(text).render({"attributes": {}})
    except ValidationError:
        pass


def test_render_substitutes() -> None:
    assert render("Hi {{ name }}, {{discount}} off", {"name": "Ana", "discount": "20%"}) == "Hi Ana, 20% off"


def test_extra_variables_are_ignored() -> None:
    assert render("Hi {{ name }}", {"name": "Ana", "unused": "x"}) == "Hi Ana"


def test_render_lists_every_missing_variable() -> None:
    with pytest.raises(ValidationError) as info:
        render("{{ a }} {{ b }} {{ c }} {{ a }}", {"b": "x"})
    assert info.value.problems == [
        "variables.a: missing (the template uses {{ a }})",
        "variables.c: missing (the template uses {{ c }})",
    ]


def test_render_reports_malformed_and_missing_together() -> None:
    with pytest.raises(ValidationError) as info:
        render("{{ a.b }} {{ c }}", {})
    assert len(info.value.problems) == 2


def test_non_string_value_is_an_error() -> None:
    with pytest.raises(ValidationError, match=r"variables\.n: must be a string, got int"):
        render("{{ n }}", {"n": 3})  # type: ignore[dict-item]


def test_values_are_not_re_expanded() -> None:
    out = render("Hi {{ name }} and {{ other }}", {"name": "{{ other }}", "other": "{{name}}"})
    assert out == "Hi {{ other }} and {{name}}"


@pytest.mark.parametrize(
    "value",
    [
        "{0.__class__}",
        "%(name)s %s",
        "\\1 \\g<0>",
        "${HOME}",
        "{{ __import__('os').system('id') }}",
        "{% for x in y %}",
    ],
)
def test_values_are_inserted_literally(value: str) -> None:
    assert render("[{{ v }}]", {"v": value}) == f"[{value}]"


def test_format_string_syntax_in_the_template_is_plain_text() -> None:
    assert render("{0} {name} %s {{ v }}", {"v": "x", "name": "no"}) == "{0} {name} %s x"


def test_html_escaping_of_values() -> None:
    variables = {"url": '" onclick="x', "name": "<b>&"}
    out = render('<a href="{{ url }}">{{ name }}</a>', variables, escape_html=True)
    assert out == '<a href="&quot; onclick=&quot;x">&lt;b&gt;&amp;</a>'


@given(st.dictionaries(names, st.text(max_size=30), max_size=5))
def test_render_round_trip(variables: dict[str, str]) -> None:
    text = "|".join(f"{{{{ {k} }}}}" for k in variables)
    assert template_variables(text) == set(variables)
    assert render(text, variables) == "|".join(variables.values())


@given(st.text(max_size=200), st.dictionaries(names, st.text(max_size=20), max_size=5))
def test_render_never_raises_anything_but_validation_error(text: str, variables: dict[str, str]) -> None:
    try:
        render(text, variables)
    except ValidationError:
        pass


# --- sanitisers -------------------------------------------------------------------------------------


def test_sanitize_text_removes_control_characters() -> None:
    assert sanitize_text("a\x00b\x07c\x1bd\x7fe\x85f\x9fg") == "abcdefg"


def test_sanitize_text_keeps_newline_tab_and_unicode() -> None:
    text = "Olá\tmundo\n¡hola! 👩\u200d💻 שלום\u200f"
    assert sanitize_text(text) == text


def test_sanitize_text_normalises_carriage_returns() -> None:
    assert sanitize_text("a\r\nb\rc\n") == "a\nb\nc\n"


def test_sanitize_text_removes_lone_surrogates() -> None:
    assert sanitize_text("a\ud800b") == "ab"


@given(st.text())
def test_sanitize_text_properties(s: str) -> None:
    clean = sanitize_text(s)
    assert sanitize_text(clean) == clean
    clean.encode("utf-8")  # always encodable
    assert all(ch in "\n\t" or ord(ch) >= 0x20 for ch in clean)
    assert "\x7f" not in clean


def test_sanitize_html_removes_scripts_and_handlers() -> None:
    dirty = (
        '<p onclick="steal()">Hi {{ name }}</p><script>alert(1)</script>'
        '<a href="javascript:alert(1)">x</a><img src="https://cdn.example/a.png" onerror="x()">'
    )
    clean = sanitize_html(dirty)
    assert "script" not in clean
    assert "onclick" not in clean
    assert "onerror" not in clean
    assert "javascript" not in clean
    assert "<p>Hi {{ name }}</p>" in clean
    assert '<img src="https://cdn.example/a.png">' in clean


def test_sanitize_html_keeps_placeholders_in_links() -> None:
    clean = sanitize_html('<a href="https://shop.example/?u={{ customer_id }}">Shop</a>')
    assert "{{ customer_id }}" in clean
    assert template_variables(clean) == {"customer_id"}


def test_sanitize_html_removes_control_characters() -> None:
    assert sanitize_html("<b>a\x00b</b>") == "<b>ab</b>"


html_pieces = st.sampled_from(
    [
        *"<>/\"'=&ab {}\n",
        "<p>",
        "</p>",
        "<b>",
        "<script>",
        "</script>",
        "<style>",
        "<a href=",
        "javascript:",
        " onclick=",
        "<img src=x",
        "<svg>",
        "<math>",
        "<select>",
        "<li>",
        "<!--",
        "-->",
        "<![CDATA[",
        "<iframe>",
        "\x00",
    ]
)


class _TagCollector(HTMLParser):
    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.tags: list[tuple[str, list[tuple[str, str | None]]]] = []
        self.comments: list[str] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.tags.append((tag, attrs))

    def handle_comment(self, data: str) -> None:
        self.comments.append(data)


def _assert_safe(markup: str) -> None:
    parser = _TagCollector()
    parser.feed(markup)
    parser.close()
    assert not parser.comments
    for tag, attrs in parser.tags:
        assert tag not in {"script", "style", "iframe", "svg", "math", "object", "embed"}
        for name, value in attrs:
            assert not name.startswith("on")
            assert not (value or "").strip().lower().startswith("javascript:")


@given(st.lists(html_pieces, max_size=40).map("".join))
def test_sanitize_html_output_is_safe(s: str) -> None:
    clean = sanitize_html(s)
    assert "\x00" not in clean
    _assert_safe(clean)
    _assert_safe(sanitize_html(clean))


placeholder_names = st.sampled_from(["a", "b", "first_name", "attributes.tier"])
filters = st.lists(
    st.sampled_from(["upper", "lower", "trim", "capitalize", "default: 'd'", 'default: "e f"']), max_size=3
)
safe_values = st.text(alphabet="abcXYZ <>&\"' é", max_size=8)


@given(
    st.lists(st.tuples(st.text(alphabet="xy .,<>", max_size=5), placeholder_names, filters), max_size=6),
    st.dictionaries(st.sampled_from(["a", "b"]), safe_values),
    st.fixed_dictionaries({"first_name": st.none() | safe_values, "tier": st.none() | safe_values}),
    st.sampled_from(list(Clean)),
)
def test_create_time_then_send_time_equals_rendering_everything_at_once(parts, campaign, profile, clean):
    """Two-phase rendering (campaign variables at create, the profile at send) gives what one pass with every
    value would: the create-time pass keeps profile placeholders exactly and never creates new ones."""
    text = "".join(f"{lit}{{{{ {name}{''.join(' | ' + f for f in fs)} }}}}" for lit, name, fs in parts)
    values = {"first_name": profile["first_name"], "attributes": {"tier": profile["tier"]} if profile["tier"] else {}}
    at_once = compile_template(text).render({**campaign, **values}, clean)
    stored = compile_template(text).substitute(campaign, clean)
    assert compile_template(stored).render(values, clean) == at_once
