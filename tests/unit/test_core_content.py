"""Stored content compiled once and rendered per recipient, per channel."""

from __future__ import annotations

import timeit

from campaigns.core.content import CompiledContent, Refusal, Rendered, html_to_text, list_unsubscribe, pick_locale

ANA = {"customer_id": "1", "first_name": "Ana", "last_name": "Lima", "attributes": {"tier": "gold"}}
NOBODY = {"customer_id": "2", "first_name": None, "attributes": {}}


def test_email_renders_html_text_and_subject_per_recipient() -> None:
    content = CompiledContent(
        "email",
        "en",
        "Hi {{ first_name | default: 'there' }}, 20% off",
        '<p>Hello <b>{{ first_name }}</b> &amp; welcome</p><p><a href="https://s.example/?t={{ attributes.tier | '
        "default: 'none' }}\">shop</a></p>",
        None,
    )
    hostile = {"first_name": "<script>x</script>\r\nBcc: evil@example.com", "attributes": {}}
    out = content.render(hostile)
    assert isinstance(out, Rendered)
    assert out.subject == "Hi <script>x</script> Bcc: evil@example.com, 20% off"  # one line
    assert "<script>" not in out.body and "&lt;script&gt;" in out.body
    assert out.text_body == (
        "Hello <script>x</script>\nBcc: evil@example.com & welcome\n\nshop (https://s.example/?t=none)"
    )
    ana = content.render(ANA)
    assert isinstance(ana, Rendered)
    assert ana.subject == "Hi Ana, 20% off"
    assert "https://s.example/?t=gold" in ana.body and "shop (https://s.example/?t=gold)" in ana.text_body


def test_whatsapp_parameters_per_recipient_and_empty_ones_refused() -> None:
    content = CompiledContent(
        "whatsapp",
        "en",
        None,
        "Hi {{ first_name }}, {{ attributes.tier | upper }}",
        "promo",
        ["{{ first_name }}", "{{ attributes.tier | default: 'member' | upper }}", "20%"],
    )
    # The provider renders a template message from its parameters: the body stays the stored template text.
    assert content.render(ANA) == Rendered(
        None, "Hi {{ first_name }}, {{ attributes.tier | upper }}", parameters=("Ana", "GOLD", "20%")
    )
    spaced = content.render({"first_name": "Ann\r\n  Lee\t    x", "attributes": {"tier": "a"}})
    assert isinstance(spaced, Rendered) and spaced.parameters[0] == "Ann   Lee   x"  # one line, no 4-space run
    refused = content.render(NOBODY)
    assert isinstance(refused, Refusal)
    assert refused.reason.startswith("empty_parameter: {{ first_name }}")


def test_sms_segments_are_enforced_after_rendering() -> None:
    content = CompiledContent("sms", "en", None, "Hi {{ first_name }}! " + "x" * 150, None, max_sms_segments=1)
    ok = content.render({"first_name": "Al"})
    assert isinstance(ok, Rendered) and ok.sms is not None and ok.sms.segments == 1
    too_long = content.render({"first_name": "Bartholomew"})
    assert isinstance(too_long, Refusal) and too_long.reason.startswith("too_many_segments: 2 GSM-7 segments")
    assert isinstance(content.render({"first_name": "Zoë"}), Rendered | Refusal)


def test_pick_locale() -> None:
    assert pick_locale(["en", "pt-BR"], "pt-BR", "en") == "pt-BR"
    assert pick_locale(["en", "pt"], "pt-BR", "en") == "pt"
    assert pick_locale(["en", "pt-BR"], "pt", "en") == "pt-BR"
    assert pick_locale(["en", "es"], "fr", "en") == "en"
    assert pick_locale(["es"], "fr", "en") == "es"
    assert pick_locale([], "fr", "en") is None


def test_html_to_text() -> None:
    assert (
        html_to_text("<h1>Sale</h1><ul><li>one</li><li>two</li></ul><p>a  b\n c</p>")
        == "Sale\n\n- one\n\n- two\n\na b c"
    )


def test_list_unsubscribe() -> None:
    https, mailto = list_unsubscribe("https://x.example/unsubscribe", "u@x.example", "u1.5.email.ab.cd")
    assert https == "https://x.example/unsubscribe?token=u1.5.email.ab.cd"
    assert mailto == "mailto:u@x.example?subject=unsubscribe%20u1.5.email.ab.cd"


def test_render_costs_a_few_microseconds() -> None:
    """A sanity bound far above the measured cost (bench/render.py measures it); not a speed verdict."""
    content = CompiledContent(
        "sms",
        "en",
        None,
        "Hi {{ first_name | default: 'there' }}, your {{ attributes.tier }} discount is waiting: 20% off until Friday.",
        None,
    )
    seconds = min(timeit.repeat(lambda: content.render(ANA), number=200, repeat=3)) / 200
    assert seconds < 0.001
