"""WhatsApp template campaigns end to end on real Kafka and PostgreSQL, sent by the real WhatsApp transport
to the provider simulator, which checks every request against the registered template as the Cloud API
does (issue 13: the rendered values used to be lost on the way and the simulator accepted the request)."""

from __future__ import annotations

import collections

import psycopg2

from simulator.server import template_registration
from simulator.thread import SimulatorThread
from streams.worker import Worker
from tests.helpers import wait_for

BODY = ("Hi {{ first_name }}! {{ discount }} off everything until {{ end_date }}. "
        "{{ first_name }}, reply STOP to opt out.")
VARIABLES = {"end_date": "31 May", "discount": "20%", "first_name": "Ann"}
STAGES = ("scheduler", "expander", "senders", "tally", "completion")


def log_rows(settings, campaign_id) -> list[tuple[str, str | None]]:
    with psycopg2.connect(settings.database.dsn()) as conn, conn.cursor() as cur:
        cur.execute("SELECT status, failure_reason FROM campaign_recipient_log WHERE campaign_id = %s",
                    (str(campaign_id),))
        return cur.fetchall()


def finished(service, campaign_id):
    view = service.get_campaign("marketer-1", campaign_id)
    return view.status in ("completed", "failed", "cancelled") and view


def create(service, segments, template: str, **extra) -> object:
    campaign_id = service.create_campaign("marketer-1", {
        "name": "whatsapp-template", "channel": "whatsapp", "template": {"name": template},
        "variables": VARIABLES, "segments": segments, "batch_size": 100,
        "retry_policy": {"max_retries": 2, "backoff_base_s": 0.1, "backoff_max_s": 0.5, "jitter": 0.1},
        **extra,
    })
    service.schedule_campaign("marketer-1", campaign_id)
    return campaign_id


def test_template_parameters_reach_the_provider_with_every_message(settings, service, audience):
    _, segments = audience(200)
    service.add_template(None, name="spring_params", channel="whatsapp", body=BODY, approve=True)
    registration = template_registration("spring_params", "en", BODY)
    assert registration["parameters"] == 3
    # The first 10 requests fail transiently: their retries (through the retry tiers) must carry the
    # parameters too.
    with SimulatorThread(templates=[registration], fail_next={"whatsapp": 10}) as simulator:
        campaign_id = create(service, segments[:1], "spring_params")
        worker_settings = settings.model_copy(update={"providers": simulator.provider_settings()})
        with Worker(worker_settings, stages=STAGES, channels=("whatsapp",), rate_limits=False) as worker:
            view = wait_for(lambda: finished(service, campaign_id), timeout=90, what="campaign finished")
        assert worker.errors == []
        accepted = simulator.query(channel="whatsapp")
        refused = list(simulator.refused)

    rows = log_rows(settings, campaign_id)
    assert view.status == "completed"
    sent = sum(1 for status, _ in rows if status == "sent")
    assert sent > 0 and {status for status, _ in rows} <= {"sent", "skipped"}
    assert [(r.outcome, r.code) for r in refused] == [("transient", "131016")] * 10
    assert {r.message_id for r in refused} <= {m.message_id for m in accepted}
    assert len(accepted) == sent
    assert collections.Counter(m.message_id for m in accepted).most_common(1)[0][1] == 1
    for message in accepted:
        # The template's variable order (first appearance), not the payload's or the alphabet's.
        assert message.template_parameters == ("Ann", "20%", "31 May")
        assert (message.template_name, message.template_language) == ("spring_params", "en")


def test_a_template_sent_with_the_wrong_parameter_count_is_refused_by_the_provider(settings, service, audience):
    """The provider's template has four body parameters, ours three: every request is refused with 132000,
    recorded as a permanent failure (no retry: the same request would be refused again)."""
    _, segments = audience(60)
    service.add_template(None, name="spring_drift", channel="whatsapp", body=BODY, approve=True)
    with SimulatorThread(templates=[{"name": "spring_drift", "language": "en", "parameters": 4}]) as simulator:
        campaign_id = create(service, segments[:1], "spring_drift", failure_threshold=1.0)
        worker_settings = settings.model_copy(update={"providers": simulator.provider_settings()})
        with Worker(worker_settings, stages=STAGES, channels=("whatsapp",), rate_limits=False) as worker:
            view = wait_for(lambda: finished(service, campaign_id), timeout=90, what="campaign finished")
        assert worker.errors == []
        accepted = simulator.query(channel="whatsapp")
        refused = list(simulator.refused)

    rows = log_rows(settings, campaign_id)
    failed = [reason for status, reason in rows if status == "failed"]
    assert view.status == "completed"  # threshold 1.0: the campaign runs to the end
    assert accepted == []
    assert failed and set(failed) == {"template_params_mismatch"}
    assert len(refused) == len(failed)  # one request per recipient: a permanent error is not retried
    assert len({r.message_id for r in refused}) == len(refused)
    assert {(r.code, r.status, r.outcome) for r in refused} == {("132000", 400, "invalid")}
    assert {r.reason for r in refused} == {
        "Number of parameters does not match the expected number of params: "
        "body: number of localizable_params (3) does not match the expected number of params (4)"
    }
