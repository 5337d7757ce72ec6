"""WhatsApp template parameters at create time, on real PostgreSQL: the rendered values of the template's
variables are stored with the campaign content, in the template's variable order."""

from __future__ import annotations

import pytest

from campaigns.errors import ValidationError
from tests.integration.service_env import ServiceEnv, build_env

pytestmark = pytest.mark.postgres


@pytest.fixture
def env(database_settings):
    built = build_env(database_settings)
    yield built
    built.engine.dispose()


def _stored(env: ServiceEnv, campaign_id) -> list[tuple]:
    return env.rows(
        "SELECT template_name, template_parameters, body FROM campaign_messages WHERE campaign_id = :c",
        c=campaign_id,
    )


def test_whatsapp_template_values_are_stored_in_the_templates_variable_order(env):
    name = f"order-{env.tag}"
    env.service.add_template(
        env.admin, name=name, channel="whatsapp", approve=True,
        body="Hi {{ first_name }}, {{ discount }} off until {{ end_date }}. {{ first_name }}, see you!",
    )
    variables = {"end_date": "31 May", "discount": "20%", "first_name": "Ann", "unused": "x"}
    campaign_id = env.service.create_campaign(
        env.marketer, env.payload("whatsapp", template={"name": name}, variables=variables)
    )
    # Order of first appearance in the body (the provider template's {{1}}, {{2}}, {{3}}), not the
    # variables' order in the payload nor the alphabetical order templates.variables is stored in.
    assert _stored(env, campaign_id) == [
        (name, ["Ann", "20%", "31 May"], "Hi Ann, 20% off until 31 May. Ann, see you!")
    ]


def test_other_channels_and_inline_content_store_no_parameters(env):
    sms = env.service.create_campaign(env.marketer, env.payload("sms"))
    assert _stored(env, sms) == [(env.templates["sms"], [], "Save 20% today!")]
    inline = env.service.create_campaign(
        env.marketer, env.payload("whatsapp", template=None, content={"body": "Hello {{ discount }}"})
    )
    assert _stored(env, inline) == [(None, [], "Hello 20%")]


def test_an_empty_whatsapp_parameter_is_refused_at_create_time(env):
    with pytest.raises(ValidationError) as info:
        env.service.create_campaign(
            env.marketer, env.payload("whatsapp", variables={"discount": ""})
        )
    assert any(p.startswith("variables.discount: must not be empty") for p in info.value.problems)


def test_profile_placeholders_are_kept_for_send_time_and_campaign_variables_filled_now(env):
    name = f"profile-{env.tag}"
    env.service.add_template(
        env.admin, name=name, channel="whatsapp", approve=True,
        body="Hi {{ first_name | default: 'there' }}, {{ discount | upper }} off for {{ attributes.tier | "
             "default: 'member' }} members",
    )
    campaign_id = env.service.create_campaign(
        env.marketer, env.payload("whatsapp", template={"name": name}, variables={"discount": "spring20"})
    )
    assert _stored(env, campaign_id) == [(
        name, ["{{ first_name | default: 'there' }}", "SPRING20", "{{ attributes.tier | default: 'member' }}"],
        "Hi {{ first_name | default: 'there' }}, SPRING20 off for {{ attributes.tier | default: 'member' }} members",
    )]


def test_create_time_validation_lists_every_unknown_variable(env):
    body = "Hi {{ first_name }} {{ nickname }}, {{ attributes.tier }} {{ attributes.vip | default: 'no' }} {{ code }}"
    with pytest.raises(ValidationError) as info:
        env.service.create_campaign(env.marketer, env.payload(
            "sms", template=None, content={"body": body}, variables={"code": "{{ first_name }}"}))
    problems = info.value.problems
    assert [p.split(":")[0] for p in problems] == ["variables.code", "variables.attributes.tier", "variables.nickname"]
    assert "must not contain '{{'" in problems[0]
    assert "neither a campaign variable" in problems[1] and "profile field (customer_id, email" in problems[1]


def test_the_static_sms_text_must_fit_max_sms_segments(env):
    long_body = "Hi {{ first_name }}! " + "x" * 160
    with pytest.raises(ValidationError) as info:
        env.service.create_campaign(env.marketer, env.payload(
            "sms", template=None, content={"body": long_body}, max_sms_segments=1))
    assert info.value.problems == [
        "max_sms_segments: the text without its placeholders is already 2 GSM-7 segments (165 units), more than the "
        "1 allowed"]
    campaign_id = env.service.create_campaign(env.marketer, env.payload(
        "sms", template=None, content={"body": long_body}, max_sms_segments=2))
    estimate = env.service.content_estimate(env.marketer, campaign_id)
    assert estimate["segments"] == 2 and estimate["max_sms_segments"] == 2
    assert estimate["per_locale"]["en"] == {"encoding": "GSM-7", "units": 165, "segments": 2, "placeholders": 1}
    assert env.scalar("SELECT max_sms_segments FROM campaigns WHERE id = :c", c=campaign_id) == 2


def test_a_template_with_other_approved_locales_stores_one_content_row_per_locale(env):
    name = f"locales-{env.tag}"
    env.service.add_template(env.admin, name=name, channel="sms", approve=True,
                             body="Hi {{ first_name }}: {{ discount }}")
    env.service.add_template(env.admin, name=name, channel="sms", approve=True, locale="pt-BR",
                             body="Olá {{ first_name }}: {{ discount }}")
    env.service.add_template(env.admin, name=name, channel="sms", locale="es", body="Hola {{ discount }}")  # pending
    campaign_id = env.service.create_campaign(env.marketer, env.payload("sms", template={"name": name}))
    assert env.rows("SELECT locale, body FROM campaign_messages WHERE campaign_id = :c ORDER BY locale",
                    c=campaign_id) == [("en", "Hi {{ first_name }}: 20%"), ("pt-BR", "Olá {{ first_name }}: 20%")]


def test_a_whatsapp_text_header_stores_its_parameter(env):
    name = f"header-{env.tag}"
    env.service.add_template(env.admin, name=name, channel="whatsapp", approve=True,
                             subject="{{ first_name | default: 'Hello' }}, a gift", body="{{ discount }} off")
    campaign_id = env.service.create_campaign(env.marketer, env.payload("whatsapp", template={"name": name}))
    assert env.rows("SELECT header_parameters, template_parameters FROM campaign_messages WHERE campaign_id = :c",
                    c=campaign_id) == [(["{{ first_name | default: 'Hello' }}"], ["20%"])]
    with pytest.raises(ValidationError) as info:
        env.service.add_template(env.admin, name=f"{name}-2", channel="whatsapp", body="x",
                                 subject="{{ first_name }} {{ last_name }} " + "x" * 60)
    assert info.value.problems == ["subject: a WhatsApp header has at most 60 characters, got 93",
                                   "subject: a WhatsApp text header has at most one placeholder"]
