"""A broker with SASL/SCRAM and ACLs (``CAMPAIGNS_KAFKA_SASL=1 ops/kafka/kafka.sh``, a private one on free ports):
clients configured only through ``KafkaSettings`` (security protocol, mechanism, credentials) authenticate, a
principal writes the topics its ACLs allow, the broker refuses a write outside them, and a wrong password is
refused. The shared broker of ``make services`` stays PLAINTEXT (docs/security.md)."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from confluent_kafka import KafkaError, Producer
from confluent_kafka.admin import (
    AclBinding,
    AclOperation,
    AclPermissionType,
    AdminClient,
    NewTopic,
    ResourcePatternType,
    ResourceType,
    ScramCredentialInfo,
    ScramMechanism,
    UserScramCredentialUpsertion,
)

from campaigns.settings import KafkaSettings
from tests.faults.services import PrivateKafka

pytestmark = pytest.mark.kafka

TOPICS = ("campaign.commands", "campaign.messages.sms", "campaign.messages.sms.retry.1", "delivery.outcomes")
# Who may write what (a part of the plan in docs/security.md): the sender writes its retry tiers, the dead
# letters and outcomes, never commands; an upstream system writes commands and nothing else.
WRITES = {
    "sender": [("campaign.messages.", ResourcePatternType.PREFIXED),
               ("delivery.outcomes", ResourcePatternType.LITERAL)],
    "upstream": [("campaign.commands", ResourcePatternType.LITERAL)],
}
PASSWORDS = {"sender": "sender pw = 1", "upstream": "upstream-pw-2"}


class SaslKafka(PrivateKafka):
    def __init__(self) -> None:
        super().__init__()
        self.env["CAMPAIGNS_KAFKA_SASL"] = "1"

    def settings(self, user: str, password: str) -> KafkaSettings:
        return KafkaSettings(bootstrap_servers=self.bootstrap, security_protocol="SASL_PLAINTEXT",
                             sasl_mechanism="SCRAM-SHA-512", sasl_username=user, sasl_password=password)

    def admin(self) -> KafkaSettings:
        return self.settings("admin", (self.state / "kafka" / "admin.password").read_text().strip())


@pytest.fixture(scope="module")
def broker() -> Iterator[SaslKafka]:
    kafka = SaslKafka()
    try:
        kafka.start()
        admin = AdminClient(kafka.admin().as_librdkafka())
        for future in admin.create_topics([NewTopic(t, 1, 1) for t in TOPICS]).values():
            future.result(timeout=60)
        upserts = [UserScramCredentialUpsertion(user, ScramCredentialInfo(ScramMechanism.SCRAM_SHA_512, 8192),
                                                password.encode()) for user, password in PASSWORDS.items()]
        for future in admin.alter_user_scram_credentials(upserts).values():
            future.result(timeout=60)
        bindings = [AclBinding(ResourceType.TOPIC, name, pattern, f"User:{user}", "*", AclOperation.WRITE,
                               AclPermissionType.ALLOW) for user, topics in WRITES.items() for name, pattern in topics]
        for future in admin.create_acls(bindings).values():
            future.result(timeout=60)
        yield kafka
    finally:
        kafka.close()


def write(settings: KafkaSettings, topic: str) -> KafkaError | None:
    """Produce one record (idempotent producer, as the pipeline's); the delivery error, or None."""
    errors: list[KafkaError | None] = []
    producer = Producer(settings.as_librdkafka(**{"enable.idempotence": True, "message.timeout.ms": 20000}))
    producer.produce(topic, b"value", b"key", on_delivery=lambda err, msg: errors.append(err))
    assert producer.flush(30) == 0, "the record was neither delivered nor refused within 30 s"
    return errors[0]


@pytest.mark.parametrize(("user", "allowed", "forbidden"), [
    ("sender", "campaign.messages.sms.retry.1", "campaign.commands"),
    ("upstream", "campaign.commands", "delivery.outcomes"),
])
def test_a_principal_writes_only_what_its_acls_allow(broker: SaslKafka, user: str, allowed: str, forbidden: str):
    settings = broker.settings(user, PASSWORDS[user])
    assert write(settings, allowed) is None
    refused = write(settings, forbidden)
    assert refused is not None and refused.code() == KafkaError.TOPIC_AUTHORIZATION_FAILED, refused


def test_a_wrong_password_and_no_credentials_are_refused(broker: SaslKafka):
    for settings, expected in ((broker.settings("sender", "not the password"), KafkaError._AUTHENTICATION),
                               (KafkaSettings(bootstrap_servers=broker.bootstrap), None)):
        errors: list[KafkaError] = []
        producer = Producer(settings.as_librdkafka(**{"message.timeout.ms": 5000, "error_cb": errors.append}))
        refused: list[KafkaError | None] = []
        producer.produce("campaign.messages.sms", b"v", b"k", on_delivery=lambda err, msg, out=refused: out.append(err))
        producer.flush(20)
        assert refused and refused[0] is not None, "a record was delivered without valid credentials"
        if expected is not None:  # SCRAM with a wrong password: the broker says so
            assert any(e.code() == expected for e in errors), errors
