"""The librdkafka configuration every client is built from (``KafkaSettings.as_librdkafka``): consumer-group
timeouts from settings, and librdkafka's own log routed through the project's logging."""

from __future__ import annotations

import logging
import pickle
import time

import pydantic
import pytest

from campaigns.logs import LIBRDKAFKA_LOGGER, LibrdkafkaLog
from campaigns.settings import KafkaSettings, Settings


def test_consumer_configs_get_the_group_timeouts_from_settings(monkeypatch):
    monkeypatch.setenv("CAMPAIGNS_KAFKA__SESSION_TIMEOUT_MS", "9000")
    monkeypatch.setenv("CAMPAIGNS_KAFKA__MAX_POLL_INTERVAL_MS", "60000")
    kafka = Settings().kafka
    conf = kafka.as_librdkafka(**{"group.id": "g", "enable.auto.commit": False})
    assert conf["session.timeout.ms"] == 9000
    assert conf["max.poll.interval.ms"] == 60000
    assert conf["heartbeat.interval.ms"] == 3000  # at most a third of the session timeout
    assert kafka.model_copy(update={"session_timeout_ms": 6000}).as_librdkafka(**{"group.id": "g"})[
        "heartbeat.interval.ms"
    ] == 2000
    # An explicit override still wins (a stage that knows better).
    assert kafka.as_librdkafka(**{"group.id": "g", "max.poll.interval.ms": 70000})["max.poll.interval.ms"] == 70000


def test_defaults_are_librdkafkas_and_producers_get_no_consumer_properties():
    kafka = KafkaSettings()
    assert (kafka.session_timeout_ms, kafka.max_poll_interval_ms) == (45_000, 300_000)
    producer = kafka.as_librdkafka(**{"acks": "all"})
    assert not {"session.timeout.ms", "max.poll.interval.ms", "heartbeat.interval.ms"} & set(producer)


def test_a_poll_interval_shorter_than_the_session_is_refused_with_the_variables_to_change():
    with pytest.raises(pydantic.ValidationError, match="CAMPAIGNS_KAFKA__MAX_POLL_INTERVAL_MS"):
        KafkaSettings(session_timeout_ms=60_000, max_poll_interval_ms=30_000)


def test_every_client_config_logs_through_the_project_logger():
    conf = KafkaSettings().as_librdkafka()
    assert isinstance(conf["logger"], LibrdkafkaLog)
    assert pickle.loads(pickle.dumps(conf))["logger"].name == LIBRDKAFKA_LOGGER  # configs cross processes


def test_librdkafka_levels_are_kept_and_self_retried_conditions_are_info(caplog):
    log = LibrdkafkaLog()
    caplog.set_level(logging.DEBUG, logger=LIBRDKAFKA_LOGGER)
    log.log(logging.WARNING, "%s [%s] %s", "GETPID", "campaigns#producer-3",
            "[thrd:main]: Failed to acquire idempotence PID from broker 127.0.0.1:19092/1: "
            "Broker: Coordinator load in progress: retrying")
    log.log(logging.ERROR, "%s [%s] %s", "FAIL", "campaigns#consumer-1", "[thrd:x]: Connect to ipv4#1.2.3.4 failed")
    log.log(logging.WARNING, "%s [%s] %s", "CONFWARN", "campaigns#producer-1", "[thrd:app]: unknown property")
    assert [(r.levelno, r.getMessage().split()[0]) for r in caplog.records] == [
        (logging.INFO, "GETPID"), (logging.ERROR, "FAIL"), (logging.WARNING, "CONFWARN")]
    assert all(r.name == LIBRDKAFKA_LOGGER for r in caplog.records)


def test_a_real_client_logs_through_logging_and_prints_nothing_raw(caplog, capfd):
    """A producer pointed at a closed port: librdkafka's connection errors arrive as log records of
    ``campaigns.librdkafka`` (at error level), and no raw ``%3|...`` line reaches stderr."""
    from producers.kafka import KafkaProducer

    caplog.set_level(logging.DEBUG, logger=LIBRDKAFKA_LOGGER)
    producer = KafkaProducer(KafkaSettings(bootstrap_servers="127.0.0.1:1"))
    deadline = time.monotonic() + 10
    while not caplog.records and time.monotonic() < deadline:
        producer.poll()
        time.sleep(0.05)
    records = [r for r in caplog.records if r.name == LIBRDKAFKA_LOGGER]
    assert records and records[0].levelno == logging.ERROR and "127.0.0.1:1" in records[0].getMessage()
    assert "%3|" not in capfd.readouterr().err


def test_sasl_and_tls_settings_pass_through_to_librdkafka_and_secrets_stay_hidden():
    from pydantic import ValidationError as SettingsError

    kafka = KafkaSettings(security_protocol="SASL_SSL", sasl_mechanism="SCRAM-SHA-512", sasl_username="sender",
                          sasl_password="p4ss word=1", ssl_ca_location="/etc/kafka/ca.pem")
    conf = kafka.as_librdkafka(**{"acks": "all"})
    assert {k: conf[k] for k in ("security.protocol", "sasl.mechanism", "sasl.username", "sasl.password",
                                 "ssl.ca.location")} == {
        "security.protocol": "SASL_SSL", "sasl.mechanism": "SCRAM-SHA-512", "sasl.username": "sender",
        "sasl.password": "p4ss word=1", "ssl.ca.location": "/etc/kafka/ca.pem"}
    assert "p4ss" not in repr(kafka) and "p4ss" not in str(kafka.model_dump())
    assert not {k for k in KafkaSettings().as_librdkafka() if k.startswith(("sasl.", "ssl.", "security."))}
    with pytest.raises(SettingsError, match="SASL_MECHANISM"):
        KafkaSettings(security_protocol="SASL_PLAINTEXT")


def test_stage_consumers_prefetch_a_bounded_amount():
    """Memory flat whatever the campaign's size: a few batches ahead per partition, 8 MB per consumer, and fetch
    responses (kept whole while any of their records is queued) of at most 256 KB per partition, 1 MB in all."""
    conf = KafkaSettings().stage_consumer("g")
    assert conf["queued.min.messages"] == 2000
    assert conf["queued.max.messages.kbytes"] == 8192
    assert conf["max.partition.fetch.bytes"] == 262_144 and conf["fetch.max.bytes"] == 1_048_576
    assert KafkaSettings().stage_consumer("g", **{"queued.min.messages": 10})["queued.min.messages"] == 10
