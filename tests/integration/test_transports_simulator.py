"""Real transports against an in-process provider simulator on 127.0.0.1 (ephemeral ports).

Needs no external service: the simulator is the provider. Every wait is bounded.
"""

from __future__ import annotations

import asyncio
import logging
import os
import signal
import socket
import ssl
import sys
import time
import traceback
from collections.abc import AsyncIterator
from pathlib import Path

import httpx
import pytest
from pydantic import SecretStr

from campaigns.errors import (
    DeliveryError,
    PermanentDeliveryError,
    ThrottledError,
    TransientDeliveryError,
)
from campaigns.transports import (
    OutgoingMessage,
    SmsTransport,
    SmtpTransport,
    Transport,
    WhatsAppTransport,
    build_transports,
)
from simulator import ProviderSimulator

ROOT = Path(__file__).resolve().parents[2]
ADDRESS = {"whatsapp": "+15551230001", "sms": "+15551230002", "email": "ann@example.org"}


def outgoing(channel: str, n: int = 1, *, address: str | None = None, **kw: object) -> OutgoingMessage:
    values: dict[str, object] = {
        "message_id": f"{channel}-msg-{n}",
        "campaign_id": "camp-1",
        "recipient_id": f"rcpt-{n}",
        "channel": channel,
        "address": address or ADDRESS[channel],
        "body": f"Hello {n} ✓",
        "subject": "Spring sale",
        "locale": "en-US",
    }
    values.update(kw)
    return OutgoingMessage(**values)  # type: ignore[arg-type]


@pytest.fixture
async def sim() -> AsyncIterator[ProviderSimulator]:
    simulator = ProviderSimulator(permanent_failures=["+15550000404", "gone@example.org"])
    await simulator.start()
    try:
        yield simulator
    finally:
        await simulator.stop()


@pytest.fixture(params=["aiohttp", "httpx"])
def http_client(request: pytest.FixtureRequest) -> str:
    """Both HTTP client backends of the WhatsApp/SMS transports go through the same tests."""
    return str(request.param)


@pytest.fixture
async def transports(sim: ProviderSimulator, http_client: str) -> AsyncIterator[dict[str, Transport]]:
    built = build_transports(sim.provider_settings(timeout_s=5.0, http_client=http_client))
    try:
        yield built
    finally:
        for transport in built.values():
            await transport.aclose()


CHANNELS = ["whatsapp", "sms", "email"]


# ----------------------------------------------------------------------------- success


@pytest.mark.parametrize("channel", CHANNELS)
async def test_send_succeeds_and_simulator_logs_our_message_id(
    channel: str, sim: ProviderSimulator, transports: dict[str, Transport]
) -> None:
    before = time.time()
    receipt = await transports[channel].send(outgoing(channel))
    [logged] = sim.query(channel=channel)
    assert logged.message_id == f"{channel}-msg-1"
    assert logged.provider_message_id == receipt.provider_message_id
    assert logged.to == ADDRESS[channel]
    assert logged.body == "Hello 1 ✓"
    assert logged.accepted_at >= before
    expected_prefix = {"whatsapp": "wamid.", "sms": "SM", "email": "SIM"}[channel]
    assert receipt.provider_message_id is not None
    assert receipt.provider_message_id.startswith(expected_prefix)
    if channel == "email":
        assert logged.subject == "Spring sale"
        assert logged.sender == "campaigns@example.com"
    assert sim.stats()[channel]["accepted"] == 1


async def test_whatsapp_template_message(sim: ProviderSimulator, transports: dict[str, Transport]) -> None:
    message = outgoing("whatsapp", template_name="spring_sale", template_parameters=("Ann", "20%"))
    await transports["whatsapp"].send(message)
    [logged] = sim.query(channel="whatsapp")
    assert logged.template_name == "spring_sale"
    assert logged.body == "Ann 20%"
    assert logged.message_id == "whatsapp-msg-1"


# ----------------------------------------------------------------------------- failures


@pytest.mark.parametrize("channel", CHANNELS)
async def test_rate_limit_answers_throttled(
    channel: str, sim: ProviderSimulator, transports: dict[str, Transport]
) -> None:
    sim.configure(rate_limit_per_s={channel: 1})
    await transports[channel].send(outgoing(channel, 1))
    with pytest.raises(ThrottledError) as info:
        await transports[channel].send(outgoing(channel, 2))
    assert info.value.reason == "throttled"
    if channel != "email":  # HTTP 429 carries Retry-After; SMTP has no such field
        assert info.value.retry_after == 1.0
    assert sim.stats()[channel]["throttled"] == 1
    assert [m.message_id for m in sim.query(channel=channel)] == [f"{channel}-msg-1"]


@pytest.mark.parametrize("channel", CHANNELS)
async def test_injected_failure_is_transient(
    channel: str, sim: ProviderSimulator, transports: dict[str, Transport]
) -> None:
    sim.configure(fail_next={channel: 1}, transient_status=500)
    with pytest.raises(TransientDeliveryError) as info:
        await transports[channel].send(outgoing(channel))
    assert not isinstance(info.value, ThrottledError)
    expected = "temporary: 451 4.3.0" if channel == "email" else "server_error: 500"
    assert info.value.reason == expected
    await transports[channel].send(outgoing(channel))  # the retry goes through
    assert sim.stats()[channel]["transient_errors"] == 1
    assert sim.stats()[channel]["accepted"] == 1


@pytest.mark.parametrize(
    ("channel", "address", "reason"),
    [
        ("whatsapp", "+15550000404", "invalid_number"),  # error code 131026
        ("whatsapp", "not-a-number", "invalid_parameter"),  # error code 100
        ("sms", "+1 555 000-0404", "invalid_number"),  # punctuation does not hide it from the list
        ("sms", "5551234", "invalid_number"),  # not E.164: code 21211
        ("email", "gone@example.org", "invalid_address"),  # 550 5.1.1 at RCPT
        ("email", "Gone@Example.org", "invalid_address"),
    ],
)
async def test_invalid_address_is_permanent(
    channel: str, address: str, reason: str, sim: ProviderSimulator, transports: dict[str, Transport]
) -> None:
    with pytest.raises(PermanentDeliveryError) as info:
        await transports[channel].send(outgoing(channel, address=address))
    assert info.value.reason == reason
    assert sim.stats()[channel]["permanent_errors"] == 1
    assert sim.query(channel=channel) == []
    # The transport (and for email its pooled connection, after RSET) still works afterwards.
    await transports[channel].send(outgoing(channel, 2))
    assert len(sim.query(channel=channel)) == 1


async def test_wrong_credentials_are_permanent_and_never_leak(
    sim: ProviderSimulator, http_client: str, caplog: pytest.LogCaptureFixture
) -> None:
    secret = "wrong-secret-7d1e"
    settings = sim.provider_settings(
        whatsapp_token=SecretStr(secret), sms_auth_token=SecretStr(secret), http_client=http_client
    )
    caplog.set_level(logging.DEBUG)
    wa, sms = WhatsAppTransport(settings), SmsTransport(settings)
    errors: list[DeliveryError] = []
    for transport in (wa, sms):
        with pytest.raises(PermanentDeliveryError) as info:
            await transport.send(outgoing(transport.channel))
        assert info.value.reason == "unauthorized"
        errors.append(info.value)
        await transport.aclose()
    assert sim.stats()["whatsapp"]["unauthorized"] == 1
    assert sim.stats()["sms"]["unauthorized"] == 1
    real = sim.provider_settings().whatsapp_token.get_secret_value()
    texts = [caplog.text, repr(wa), repr(sms)]
    texts += [str(e) + repr(e) + "".join(traceback.format_exception(e)) for e in errors]
    for text in texts:
        assert secret not in text
        assert real not in text


async def test_connection_refused_is_transient(http_client: str) -> None:
    with socket.socket() as probe:  # a port nobody listens on (bound, then released)
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    async with ProviderSimulator() as sim:
        settings = sim.provider_settings(
            whatsapp_base_url=f"http://127.0.0.1:{port}/whatsapp",
            sms_base_url=f"http://127.0.0.1:{port}/sms",
            smtp_port=port,
            timeout_s=2.0,
            http_client=http_client,
        )
    for transport in build_transports(settings).values():
        with pytest.raises(TransientDeliveryError) as info:
            await transport.send(outgoing(transport.channel))
        assert info.value.reason == "connect_error"
        await transport.aclose()


async def test_timeout_after_acceptance_then_sms_retry_is_deduplicated(
    sim: ProviderSimulator, http_client: str
) -> None:
    """The provider accepted but answered too late: the retry must not become a second SMS."""
    sim.configure(latency_ms=1200)
    slow = SmsTransport(sim.provider_settings(timeout_s=0.3, http_client=http_client))
    with pytest.raises(TransientDeliveryError) as info:
        await slow.send(outgoing("sms"))
    assert info.value.reason == "timeout"
    await sim.wait_for_messages(1, channel="sms", timeout=5)  # accepted on arrival, answer lost
    await slow.aclose()

    sim.configure(latency_ms=0)
    patient = SmsTransport(sim.provider_settings(timeout_s=5.0, http_client=http_client))
    receipt = await patient.send(outgoing("sms"))
    await patient.aclose()
    [logged] = sim.query(channel="sms")
    assert receipt.provider_message_id == logged.provider_message_id
    assert sim.stats()["sms"]["idempotent_replays"] == 1
    assert sim.stats()["sms"]["duplicates"] == 0


async def test_smtp_timeout_during_data_is_ambiguous(sim: ProviderSimulator) -> None:
    """SMTP has no idempotency key: a DATA timeout is reported as `timeout` (may have been queued)."""
    sim.configure(latency_ms=1200)
    transport = SmtpTransport(sim.provider_settings(timeout_s=0.3))
    with pytest.raises(TransientDeliveryError) as info:
        await transport.send(outgoing("email"))
    assert info.value.reason == "timeout"
    await sim.wait_for_messages(1, channel="email", timeout=5)
    await transport.aclose()


# ----------------------------------------------------------------------------- idempotency


async def test_sms_duplicate_idempotency_key_is_not_logged_twice(
    sim: ProviderSimulator, transports: dict[str, Transport]
) -> None:
    first = await transports["sms"].send(outgoing("sms"))
    second = await transports["sms"].send(outgoing("sms"))
    assert first == second
    assert len(sim.query(channel="sms")) == 1
    stats = sim.stats()["sms"]
    assert (stats["accepted"], stats["idempotent_replays"], stats["duplicates"]) == (1, 1, 0)


async def test_failed_sms_key_is_not_remembered(
    sim: ProviderSimulator, transports: dict[str, Transport]
) -> None:
    sim.configure(fail_next={"sms": 1})
    with pytest.raises(TransientDeliveryError):
        await transports["sms"].send(outgoing("sms"))
    await transports["sms"].send(outgoing("sms"))
    assert len(sim.query(channel="sms")) == 1
    assert sim.stats()["sms"]["idempotent_replays"] == 0


@pytest.mark.parametrize("channel", ["whatsapp", "email"])
async def test_resend_without_provider_idempotency_is_counted_as_duplicate(
    channel: str, sim: ProviderSimulator, transports: dict[str, Transport]
) -> None:
    """WhatsApp and SMTP do not de-duplicate: the simulator makes a double send visible."""
    await transports[channel].send(outgoing(channel))
    await transports[channel].send(outgoing(channel))
    assert len(sim.query(channel=channel, message_id=f"{channel}-msg-1")) == 2
    assert sim.stats()[channel]["duplicates"] == 1


# ----------------------------------------------------------------------------- rate limit and concurrency


@pytest.mark.parametrize("channel", CHANNELS)
async def test_simulator_enforces_rate_limit_under_concurrency(
    channel: str, sim: ProviderSimulator, transports: dict[str, Transport]
) -> None:
    limit = 20
    sim.configure(rate_limit_per_s={channel: limit})
    started = time.monotonic()
    results = await asyncio.wait_for(
        asyncio.gather(
            *(transports[channel].send(outgoing(channel, n)) for n in range(100)), return_exceptions=True
        ),
        timeout=30,
    )
    throttled = [r for r in results if isinstance(r, ThrottledError)]
    others = [r for r in results if isinstance(r, BaseException) and not isinstance(r, ThrottledError)]
    assert others == []
    elapsed = time.monotonic() - started
    accepted = sorted(m.accepted_at for m in sim.query(channel=channel))
    assert len(accepted) + len(throttled) == 100
    assert throttled  # the burst outran the limit
    assert len(accepted) <= limit * (int(elapsed) + 1)
    # No 1-second window holds more than `limit` acceptances (5 ms slack: wall vs monotonic clock).
    for i, start in enumerate(accepted):
        in_window = [t for t in accepted[i:] if t < start + 0.995]
        assert len(in_window) <= limit
    stats = sim.stats()[channel]
    assert (stats["accepted"], stats["throttled"]) == (len(accepted), len(throttled))


@pytest.mark.parametrize("channel", CHANNELS)
async def test_100_concurrent_sends_all_delivered_once(
    channel: str, sim: ProviderSimulator, transports: dict[str, Transport]
) -> None:
    receipts = await asyncio.wait_for(
        asyncio.gather(*(transports[channel].send(outgoing(channel, n)) for n in range(100))), timeout=30
    )
    assert len({r.provider_message_id for r in receipts}) == 100
    assert len(sim.query(channel=channel)) == 100
    assert sim.stats()[channel]["duplicates"] == 0
    if channel == "email":
        assert sim.smtp_connections_opened <= sim.provider_settings().smtp_pool_size


async def test_transient_error_rate_is_deterministic_with_a_seed(
    sim: ProviderSimulator, transports: dict[str, Transport]
) -> None:
    sim.configure(transient_error_rate={"sms": 0.5}, seed=7)

    async def pattern() -> list[bool]:
        outcome = []
        for n in range(30):
            try:
                await transports["sms"].send(outgoing("sms", n))
                outcome.append(True)
            except TransientDeliveryError:
                outcome.append(False)
        return outcome

    first = await pattern()
    sim.reset()  # re-seeds the draw and forgets idempotency keys
    assert await pattern() == first
    assert 5 < first.count(False) < 25


# ----------------------------------------------------------------------------- SMTP connection handling


async def test_smtp_reuses_connections(sim: ProviderSimulator) -> None:
    transport = SmtpTransport(sim.provider_settings(smtp_pool_size=2))
    for n in range(20):
        await transport.send(outgoing("email", n))
    assert sim.smtp_connections_opened == 1  # sequential sends: one warm connection
    await asyncio.gather(*(transport.send(outgoing("email", 100 + n)) for n in range(20)))
    assert sim.smtp_connections_opened == 2
    await transport.aclose()
    assert len(sim.query(channel="email")) == 40


async def test_smtp_recovers_when_the_server_drops_idle_connections(sim: ProviderSimulator) -> None:
    transport = SmtpTransport(sim.provider_settings(smtp_pool_size=1))
    await transport.send(outgoing("email", 1))
    assert sim.drop_smtp_connections() == 1
    await transport.send(outgoing("email", 2))
    assert [m.message_id for m in sim.query(channel="email")] == ["email-msg-1", "email-msg-2"]
    assert sim.stats()["email"]["duplicates"] == 0
    assert sim.smtp_connections_opened == 2
    await transport.aclose()


async def test_smtp_auth(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG)
    password = "smtp-pass-51c2"
    async with ProviderSimulator(smtp_auth=("mailer", password)) as sim:
        good = SmtpTransport(sim.provider_settings(smtp_username="mailer", smtp_password=SecretStr(password)))
        await good.send(outgoing("email"))
        await good.aclose()
        bad = SmtpTransport(sim.provider_settings(smtp_username="mailer", smtp_password=SecretStr("nope-9a")))
        with pytest.raises(PermanentDeliveryError) as info:
            await bad.send(outgoing("email", 2))
        await bad.aclose()
        anonymous = SmtpTransport(sim.provider_settings())
        with pytest.raises(PermanentDeliveryError) as refused:
            await anonymous.send(outgoing("email", 3))
        await anonymous.aclose()
        assert len(sim.query(channel="email")) == 1
    assert info.value.reason == "unauthorized"
    assert refused.value.reason == "unauthorized"  # 530 5.7.0 Authentication required
    for text in (caplog.text, "".join(traceback.format_exception(info.value)), repr(bad)):
        assert password not in text and "nope-9a" not in text


def _self_signed_cert(directory: Path) -> tuple[Path, Path]:
    import datetime as dt

    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "127.0.0.1")])
    now = dt.datetime.now(dt.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(now + dt.timedelta(days=1))
        .add_extension(
            x509.SubjectAlternativeName([x509.IPAddress(__import__("ipaddress").ip_address("127.0.0.1"))]),
            critical=False,
        )
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(key, hashes.SHA256())
    )
    cert_path, key_path = directory / "cert.pem", directory / "key.pem"
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
        )
    )
    return cert_path, key_path


async def test_smtp_starttls_with_auth(tmp_path: Path) -> None:
    cert_path, key_path = _self_signed_cert(tmp_path)
    server_tls = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    server_tls.load_cert_chain(cert_path, key_path)
    async with ProviderSimulator(smtp_auth=("mailer", "pw-1"), smtp_tls_context=server_tls) as sim:
        settings = sim.provider_settings(
            smtp_starttls=True,
            smtp_cert_bundle=str(cert_path),
            smtp_username="mailer",
            smtp_password=SecretStr("pw-1"),
        )
        transport = SmtpTransport(settings)
        await transport.send(outgoing("email"))
        await transport.aclose()
        plain = SmtpTransport(sim.provider_settings(smtp_username="mailer", smtp_password=SecretStr("pw-1")))
        with pytest.raises(PermanentDeliveryError) as info:  # AUTH is only offered after STARTTLS
            await plain.send(outgoing("email", 2))
        assert info.value.reason == "unsupported_by_server"
        await plain.aclose()
        assert [m.message_id for m in sim.query(channel="email")] == ["email-msg-1"]


# ----------------------------------------------------------------------------- control API and CLI


async def test_http_control_endpoints(sim: ProviderSimulator, transports: dict[str, Transport]) -> None:
    async with httpx.AsyncClient(base_url=sim.http_url, timeout=5.0) as client:
        response = await client.post(
            "/_control/config", json={"rate_limit_per_s": {"sms": 1}, "latency_ms": [0, 1]}
        )
        assert response.status_code == 200
        assert response.json()["rate_limit_per_s"] == {"whatsapp": None, "sms": 1, "email": None}
        bad = await client.post("/_control/config", json={"transient_error_rate": 2})
        assert bad.status_code == 400 and "transient_error_rate" in bad.json()["error"]
        unknown = await client.post("/_control/config", json={"nope": 1})
        assert unknown.status_code == 400

        await transports["sms"].send(outgoing("sms", 1))
        with pytest.raises(ThrottledError):
            await transports["sms"].send(outgoing("sms", 2))
        marker = time.time()
        await transports["email"].send(outgoing("email", 3))

        stats = (await client.get("/_control/stats")).json()
        assert stats["sms"]["accepted"] == 1 and stats["sms"]["throttled"] == 1
        listed = (await client.get("/_control/messages", params={"channel": "sms"})).json()
        assert listed["count"] == 1
        assert listed["messages"][0]["message_id"] == "sms-msg-1"
        assert listed["messages"][0]["to"] == ADDRESS["sms"]
        assert isinstance(listed["messages"][0]["accepted_at"], float)
        recent = (await client.get("/_control/messages", params={"since": marker})).json()
        assert [m["message_id"] for m in recent["messages"]] == ["email-msg-3"]
        assert (await client.get("/_control/messages", params={"since": "x"})).status_code == 400

        assert (await client.post("/_control/reset")).status_code == 200
        assert (await client.get("/_control/messages")).json()["count"] == 0
        assert (await client.get("/_control/stats")).json()["sms"]["accepted"] == 0
        assert (await client.get("/_control/config")).json()["rate_limit_per_s"]["sms"] == 1  # config kept


async def test_wait_for_messages_is_bounded(sim: ProviderSimulator, transports: dict[str, Transport]) -> None:
    sender = asyncio.create_task(transports["sms"].send(outgoing("sms")))
    [message] = await sim.wait_for_messages(1, channel="sms", timeout=5)
    assert message.message_id == "sms-msg-1"
    await sender
    with pytest.raises(TimeoutError):
        await sim.wait_for_messages(2, channel="sms", timeout=0.05)

    bad = SmsTransport(sim.provider_settings(sms_auth_token=SecretStr("wrong")))
    refused = asyncio.create_task(bad.send(outgoing("sms", 2)))
    await sim.wait_until(lambda: sim.stats()["sms"]["unauthorized"] == 1, timeout=5)
    with pytest.raises(PermanentDeliveryError):
        await refused
    await bad.aclose()


def test_simulator_config_is_validated_and_normalised() -> None:
    sim = ProviderSimulator(latency_ms=5, rate_limit_per_s=50, fail_next={"sms": 2})
    assert sim.config.latency_ms == (5.0, 5.0)
    assert sim.config.rate_limit_per_s == {"whatsapp": 50, "sms": 50, "email": 50}
    config = sim.configure(
        latency_ms={"min": 1, "max": 3},
        rate_limit_per_s={"sms": 10},  # a mapping names the limited channels; the others are unlimited
        transient_error_rate=0.25,
        permanent_failures=["+1 (555) 000-0001", "Ann@Example.org"],
        fail_next={"email": 1},  # a mapping only touches the channels it names
    )
    assert config.latency_ms == (1.0, 3.0)
    assert config.rate_limit_per_s == {"whatsapp": None, "sms": 10, "email": None}
    assert config.transient_error_rate == {"whatsapp": 0.25, "sms": 0.25, "email": 0.25}
    assert config.permanent_failures == {"15550000001", "ann@example.org"}
    assert sim._config_view()["fail_next"] == {"whatsapp": 0, "sms": 2, "email": 1}
    for bad in [
        {"latency_ms": [5, 1]},
        {"latency_ms": -1},
        {"rate_limit_per_s": 2.5},
        {"rate_limit_per_s": {"fax": 1}},
        {"transient_error_rate": 1.5},
        {"permanent_failures": "+15550000001"},
        {"fail_next": -1},
        {"transient_status": 404},
        {"seed": "x"},
        {"colour": "blue"},
    ]:
        with pytest.raises(ValueError):
            sim.configure(**bad)
    assert sim.config == config  # a refused change leaves the config as it was


async def test_cli_serves_until_sigterm() -> None:
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "simulator",
        "--http-port",
        "0",
        "--smtp-port",
        "0",
        "--log-level",
        "warning",
        cwd=ROOT,
        env=env,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    try:
        assert process.stdout is not None
        line = (await asyncio.wait_for(process.stdout.readline(), timeout=20)).decode()
        assert line.startswith("provider simulator: http://127.0.0.1:"), line
        http_port = int(line.split("http://127.0.0.1:")[1].split()[0])
        async with httpx.AsyncClient(timeout=5.0) as client:
            health = (await client.get(f"http://127.0.0.1:{http_port}/_control/health")).json()
        assert health["ok"] is True and health["smtp_port"] > 0
        process.send_signal(signal.SIGTERM)
        assert await asyncio.wait_for(process.wait(), timeout=10) == 0
    finally:
        if process.returncode is None:
            process.kill()
            await process.wait()
