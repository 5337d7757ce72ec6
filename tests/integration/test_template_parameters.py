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
