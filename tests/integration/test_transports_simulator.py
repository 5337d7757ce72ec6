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
from simulator import ProviderSimulator, template_registration

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
    simulator = ProviderSimulator(
        permanent_failures=["+15550000404", "gone@example.org"],
        templates=[{"name": "spring_sale", "language": "en_US", "parameters": 2}],
    )
    # Free-form WhatsApp text needs the customer service window: these numbers "wrote in" just now.
    for number in (ADDRESS["whatsapp"], "+15550000404"):
        simulator.record_inbound(number)
    await simulator.start()
    try:
        yield simulator
    finally:
        await simulator.stop()


@pytest.fixture(params=["aiohttp", "httpx", "http1"])
def http_client(request: pytest.FixtureRequest) -> str:
    """Every HTTP client backend of the WhatsApp/SMS transports goes through the same tests."""
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
    assert logged.template_language == "en_US"
    assert logged.template_parameters == ("Ann", "20%")
    assert logged.body == "Ann 20%"
    assert logged.message_id == "whatsapp-msg-1"
    assert sim.refused == []


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
        "--template-file",
        "examples/template-whatsapp.json",
        "--template",
        "welcome:pt_BR:1",
        "--open-service-window",
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
            templates = (await client.get(f"http://127.0.0.1:{http_port}/_control/templates")).json()
            config = (await client.get(f"http://127.0.0.1:{http_port}/_control/config")).json()
        assert health["ok"] is True and health["smtp_port"] > 0
        assert templates["templates"] == [
            {"name": "spring_sale_whatsapp", "language": "en", "parameters": 3},
            {"name": "welcome", "language": "pt_BR", "parameters": 1},
        ]
        assert config["open_service_window"] is True
        process.send_signal(signal.SIGTERM)
        assert await asyncio.wait_for(process.wait(), timeout=10) == 0
    finally:
        if process.returncode is None:
            process.kill()
            await process.wait()


# ----------------------------------------------------------------------------- provider rules

WA_PATH = "/whatsapp/v21.0/100000000000001/messages"


def _wa_headers(sim: ProviderSimulator) -> dict[str, str]:
    return {"Authorization": f"Bearer {sim.provider_settings().whatsapp_token.get_secret_value()}"}


def _sms_client(sim: ProviderSimulator) -> httpx.AsyncClient:
    settings = sim.provider_settings()
    auth = (settings.sms_account_sid, settings.sms_auth_token.get_secret_value())
    return httpx.AsyncClient(
        base_url=f"{sim.http_url}/sms/2010-04-01/Accounts/{settings.sms_account_sid}", auth=auth, timeout=5.0
    )


def _template_request(name: str = "spring_sale", language: str = "en_US", **template: object) -> dict:
    return {
        "messaging_product": "whatsapp",
        "to": ADDRESS["whatsapp"],
        "type": "template",
        "template": {"name": name, "language": {"code": language}, **template},
        "biz_opaque_callback_data": "raw-1",
    }


@pytest.mark.parametrize("parameters", [(), ("Ann",), ("Ann", "20%", "extra")])
async def test_template_with_the_wrong_parameter_count_is_refused_with_132000(
    parameters: tuple[str, ...], sim: ProviderSimulator, transports: dict[str, Transport]
) -> None:
    """What the sender did before issue 13 (no parameters) and any other count the template does not have."""
    message = outgoing("whatsapp", template_name="spring_sale", template_parameters=parameters)
    with pytest.raises(PermanentDeliveryError) as info:
        await transports["whatsapp"].send(message)
    assert info.value.reason == "template_params_mismatch"
    assert sim.query(channel="whatsapp") == []
    [refusal] = sim.query_refused(channel="whatsapp")
    assert (refusal.outcome, refusal.status, refusal.code) == ("invalid", 400, "132000")
    assert (refusal.to, refusal.message_id) == (ADDRESS["whatsapp"], "whatsapp-msg-1")
    assert refusal.reason == (
        "Number of parameters does not match the expected number of params: body: number of "
        f"localizable_params ({len(parameters)}) does not match the expected number of params (2)"
    )


async def test_cloud_api_error_shapes(sim: ProviderSimulator) -> None:
    """The Graph API error object: message "(#code) title", type, code, error_data.details, fbtrace_id."""
    async with httpx.AsyncClient(base_url=sim.http_url, headers=_wa_headers(sim), timeout=5.0) as client:
        one = {"type": "body", "parameters": [{"type": "text", "text": "Ann"}]}
        answer = await client.post(WA_PATH, json=_template_request(components=[one]))
        assert answer.status_code == 400
        assert answer.json() == {
            "error": {
                "message": "(#132000) Number of parameters does not match the expected number of params",
                "type": "OAuthException",
                "code": 132000,
                "fbtrace_id": "SIMULATOR",
                "error_data": {
                    "messaging_product": "whatsapp",
                    "details": "body: number of localizable_params (1) does not match the expected number of "
                    "params (2)",
                },
            }
        }
        header = {"type": "header", "parameters": [{"type": "text", "text": "x"}]}
        two = {"type": "body", "parameters": [{"type": "text", "text": "Ann"}, {"type": "text", "text": "20%"}]}
        extra = await client.post(WA_PATH, json=_template_request(components=[header, two]))
        assert extra.json()["error"]["error_data"]["details"].startswith("header: number of localizable_params (1)")

        unknown = await client.post(WA_PATH, json=_template_request(name="autumn_sale"))
        assert (unknown.status_code, unknown.json()["error"]["code"]) == (400, 132001)
        assert unknown.json()["error"]["error_data"]["details"] == (
            "template name (autumn_sale) does not exist in en_US"
        )
        other_language = await client.post(WA_PATH, json=_template_request(language="pt_BR", components=[two]))
        assert other_language.json()["error"]["code"] == 132001

        empty = {"type": "body", "parameters": [{"type": "text", "text": ""}, {"type": "text", "text": "20%"}]}
        missing = await client.post(WA_PATH, json=_template_request(components=[empty]))
        assert missing.json()["error"]["code"] == 131008
        bad_component = await client.post(WA_PATH, json=_template_request(components=[{"type": "footer"}]))
        assert bad_component.json()["error"]["code"] == 100

        text = {"messaging_product": "whatsapp", "to": ADDRESS["whatsapp"], "type": "text", "text": {}}
        no_body = await client.post(WA_PATH, json=text)
        assert no_body.status_code == 400
        assert no_body.json()["error"]["message"] == "(#100) The parameter text['body'] is required."
        too_long = await client.post(WA_PATH, json={**text, "text": {"body": "x" * 4097}})
        assert too_long.json()["error"]["code"] == 100

        accepted = await client.post(WA_PATH, json=_template_request(components=[two]))
        assert accepted.status_code == 200
    assert [r.code for r in sim.query_refused()] == [
        "132000", "132000", "132001", "132001", "131008", "100", "100", "100"
    ]
    assert sim.stats()["whatsapp"]["permanent_errors"] == 8
    [logged] = sim.query(channel="whatsapp")
    assert logged.template_parameters == ("Ann", "20%")


async def test_free_form_text_needs_the_customer_service_window(
    sim: ProviderSimulator, transports: dict[str, Transport]
) -> None:
    stranger = "+15557770001"
    with pytest.raises(PermanentDeliveryError) as info:
        await transports["whatsapp"].send(outgoing("whatsapp", 1, address=stranger))
    assert info.value.reason == "outside_customer_window"  # error 131047
    [refusal] = sim.query_refused(to=stranger)
    assert (refusal.code, refusal.status, refusal.outcome) == ("131047", 400, "invalid")
    assert "more than 24 hours have passed" in refusal.reason

    # A template message needs no window: it is how a business starts a conversation.
    template = outgoing("whatsapp", 2, address=stranger, template_name="spring_sale", template_parameters=("a", "b"))
    await transports["whatsapp"].send(template)

    # The customer wrote in 23 h ago: free-form text is allowed; 25 h ago: it is not.
    sim.record_inbound("+1 555 777 0001", at=time.time() - 23 * 3600)
    await transports["whatsapp"].send(outgoing("whatsapp", 3, address=stranger))
    sim.record_inbound("+15557770002", at=time.time() - 25 * 3600)
    with pytest.raises(PermanentDeliveryError):
        await transports["whatsapp"].send(outgoing("whatsapp", 4, address="+15557770002"))

    # Harnesses that send free-form text to audiences that never wrote in open the window for everyone.
    sim.configure(open_service_window=True)
    await transports["whatsapp"].send(outgoing("whatsapp", 5, address="+15557770003"))
    accepted = [m.message_id for m in sim.query(channel="whatsapp")]
    assert accepted == ["whatsapp-msg-2", "whatsapp-msg-3", "whatsapp-msg-5"]
    assert [r.message_id for r in sim.query_refused()] == ["whatsapp-msg-1", "whatsapp-msg-4"]


@pytest.mark.parametrize(
    ("form", "code", "message"),
    [
        ({"From": "+15550000000", "Body": "hi"}, 21604, "A 'To' phone number is required."),
        ({"To": "+15551230002", "Body": "hi"}, 21603, "A 'From' phone number is required."),
        ({"To": "+15551230002", "From": "+15550000000"}, 21602, "Message body is required."),
        ({"To": "+15551230002", "From": "+15550000000", "Body": ""}, 21602, "Message body is required."),
        (
            {"To": "555-1234", "From": "+15550000000", "Body": "hi"},
            21211,
            "The 'To' number 555-1234 is not a valid phone number.",
        ),
        (
            {"To": "+15551230002", "From": "+15550000000", "Body": "x" * 1601},
            21617,
            "The concatenated message body exceeds the 1600 character limit.",
        ),
    ],
)
async def test_sms_missing_or_bad_fields_are_refused_like_twilio(
    form: dict[str, str], code: int, message: str, sim: ProviderSimulator
) -> None:
    async with _sms_client(sim) as client:
        answer = await client.post("/Messages.json", data=form, headers={"Idempotency-Key": "key-1"})
    assert answer.status_code == 400
    assert answer.json() == {
        "code": code,
        "message": message,
        "more_info": f"https://www.twilio.com/docs/errors/{code}",
        "status": 400,
    }
    [refusal] = sim.query_refused(channel="sms")
    assert (refusal.outcome, refusal.status, refusal.code, refusal.reason) == ("invalid", 400, str(code), message)
    assert refusal.to == (form.get("To") or None) and refusal.message_id == "key-1"
    assert sim.query(channel="sms") == []


async def test_sms_messaging_service_sid_instead_of_from(sim: ProviderSimulator) -> None:
    service_sid = "MG" + "0" * 32
    async with _sms_client(sim) as client:
        answer = await client.post(
            "/Messages.json", data={"To": "+15551230002", "MessagingServiceSid": service_sid, "Body": "hi"}
        )
    assert answer.status_code == 201
    [logged] = sim.query(channel="sms")
    assert logged.sender == service_sid


def _raw_email(*, drop: tuple[str, ...] = (), extra: str = "", body: str = "Hello\r\n") -> bytes:
    headers = {
        "From": "campaigns@example.com",
        "To": "ann@example.org",
        "Subject": "Spring sale",
        "Date": "Mon, 01 Dec 2025 10:00:00 +0000",
        "Message-ID": "<raw-1@example.com>",
    }
    head = "".join(f"{k}: {v}\r\n" for k, v in headers.items() if k not in drop)
    return (head + extra + "\r\n" + body).encode()


_NOT_5322 = "Message is not RFC 5322 compliant: "
_MIME = "MIME-Version: 1.0\r\n"
_ALT = 'Content-Type: multipart/alternative; boundary="b1"\r\n'


@pytest.mark.parametrize(
    ("message", "reply"),
    [
        (_raw_email(drop=("Date",)), "550 5.7.1 " + _NOT_5322 + "missing Date header"),
        (_raw_email(drop=("From",)), "550 5.7.1 " + _NOT_5322 + "missing From header"),
        (_raw_email(drop=("Message-ID",)), "550 5.7.1 " + _NOT_5322 + "missing Message-ID header"),
        (_raw_email(extra="From: other@example.com\r\n"), "550 5.7.1 " + _NOT_5322 + "2 of From header"),
        (_raw_email(extra="Date: soon\r\n", drop=("Date",)), "550 5.7.1 " + _NOT_5322 + "the Date header"),
        (_raw_email(extra="From: nobody\r\n", drop=("From",)), "550 5.7.1 " + _NOT_5322 + "the From header"),
        (
            _raw_email(extra="Message-ID: raw-1\r\n", drop=("Message-ID",)),
            "550 5.7.1 " + _NOT_5322 + "the Message-ID header",
        ),
        (b"this is not a message\r\nat all\r\n", "554 5.6.0 " + _NOT_5322 + "header line 1"),
        (_raw_email(extra="Subject\u00e9: x\r\n"), "554 5.6.0 " + _NOT_5322 + "header line 6"),
        (_raw_email(extra="X-Note: caf\u00e9\r\n"), "554 5.6.0 " + _NOT_5322 + "8-bit header"),
        (_raw_email(body="x" * 999 + "\r\n"), "554 5.6.0 " + _NOT_5322 + "a line is longer"),
        (_raw_email(extra=_MIME + 'Content-Type: multipart/alternative\r\n'), "554 5.6.0 MIME: multipart without a"),
        (_raw_email(extra=_MIME + _ALT, body="--b1\r\nContent-Type: text/plain\r\n\r\nHi\r\n"),
         "554 5.6.0 MIME: the multipart body has no closing boundary"),
        (_raw_email(extra=_MIME + _ALT, body="no parts at all\r\n"), "554 5.6.0 MIME: the multipart body has no part"),
        (_raw_email(extra=_MIME + _ALT, body="--b1\r\nContent-Type: text/plain\r\n\r\nHi\r\n--b1--\r\n"),
         "554 5.6.0 MIME: multipart/alternative needs at least two text parts"),
        (_raw_email(extra="List-Unsubscribe: https://u.example/x\r\n"), "550 5.7.1 List-Unsubscribe must be"),
        (_raw_email(extra="List-Unsubscribe: <mailto:u@example.com>\r\nList-Unsubscribe-Post: "
                          "List-Unsubscribe=One-Click\r\n"), "550 5.7.1 List-Unsubscribe-Post needs an http(s) URI"),
        (_raw_email(extra="List-Unsubscribe: <https://u.example/x>\r\nList-Unsubscribe-Post: yes\r\n"),
         "550 5.7.1 List-Unsubscribe-Post must be List-Unsubscribe=One-Click"),
    ],
)
async def test_malformed_email_is_refused_at_data(message: bytes, reply: str, sim: ProviderSimulator) -> None:
    import aiosmtplib

    client = aiosmtplib.SMTP(hostname="127.0.0.1", port=sim.smtp_port, timeout=5)
    await client.connect()
    try:
        with pytest.raises(aiosmtplib.SMTPDataError) as info:
            await client.sendmail("campaigns@example.com", ["ann@example.org"], message)
        await client.quit()
    finally:
        client.close()
    assert f"{info.value.code} {info.value.message}".startswith(reply)
    assert sim.query(channel="email") == []
    [refusal] = sim.query_refused(channel="email")
    assert (refusal.outcome, refusal.to) == ("invalid", "ann@example.org")
    assert f"{refusal.status} {refusal.code} {refusal.reason}".startswith(reply)
    assert sim.stats()["email"]["permanent_errors"] == 1


async def test_our_email_is_well_formed(sim: ProviderSimulator, transports: dict[str, Transport]) -> None:
    """The SMTP transport's messages pass the checks, whatever the subject and body hold."""
    for n, (subject, body) in enumerate([
        ("Spring sale \u2014 20% off \U0001f33c", "<p>Ol\u00e1 <b>Ana</b></p>"),
        ("x" * 900, "line\n" * 50 + "y" * 5000),
        ("", ""),
    ]):
        await transports["email"].send(outgoing("email", n, subject=subject, body=body))
    await transports["email"].send(outgoing(
        "email", 3, subject="Hi Ann", body="<p>Hi <b>Ann</b></p>", text_body="Hi Ann",
        list_unsubscribe=("https://u.example/unsubscribe?token=u1.1.email.x.y", "mailto:u@example.com?subject=x")))
    assert len(sim.query(channel="email")) == 4
    last = sim.query(channel="email")[-1]
    assert (last.body, last.html_body) == ("Hi Ann", "<p>Hi <b>Ann</b></p>")
    assert last.headers["list-unsubscribe-post"] == "List-Unsubscribe=One-Click"
    assert sim.refused == []


async def test_every_refused_request_is_logged_with_time_recipient_and_reason(
    sim: ProviderSimulator, transports: dict[str, Transport], http_client: str
) -> None:
    started = time.time()
    sim.configure(rate_limit_per_s={"sms": 1})
    await transports["sms"].send(outgoing("sms", 1))
    with pytest.raises(ThrottledError):
        await transports["sms"].send(outgoing("sms", 2))  # 429
    sim.configure(rate_limit_per_s=None, fail_next={"whatsapp": 1, "email": 1})
    with pytest.raises(TransientDeliveryError):
        await transports["whatsapp"].send(outgoing("whatsapp", 3))  # 503
    with pytest.raises(TransientDeliveryError):
        await transports["email"].send(outgoing("email", 4))  # 451
    with pytest.raises(PermanentDeliveryError):
        await transports["email"].send(outgoing("email", 5, address="gone@example.org"))  # 550 at RCPT
    with pytest.raises(PermanentDeliveryError):
        await transports["sms"].send(outgoing("sms", 6, address="+15550000404"))  # 400, permanent address
    bad = WhatsAppTransport(sim.provider_settings(whatsapp_token=SecretStr("nope-token"), http_client=http_client))
    with pytest.raises(PermanentDeliveryError):
        await bad.send(outgoing("whatsapp", 7))  # 401
    await bad.aclose()

    refused = sim.query_refused()
    assert [(r.channel, r.outcome, r.status, r.code, r.to, r.message_id) for r in refused] == [
        ("sms", "throttled", 429, "20429", ADDRESS["sms"], "sms-msg-2"),
        ("whatsapp", "transient", 503, "131016", ADDRESS["whatsapp"], "whatsapp-msg-3"),
        ("email", "transient", 451, "4.3.0", ADDRESS["email"], "email-msg-4"),
        ("email", "rejected", 550, "5.1.1", "gone@example.org", None),  # refused before the message was sent
        ("sms", "rejected", 400, "21211", "+15550000404", "sms-msg-6"),
        ("whatsapp", "unauthorized", 401, "190", ADDRESS["whatsapp"], "whatsapp-msg-7"),
    ]
    times = [r.refused_at for r in refused]
    assert times == sorted(times) and started <= times[0] and times[-1] <= time.time()
    assert all(r.reason for r in refused)
    assert "nope-token" not in repr(refused)
    # Accepted and refused requests together: exactly what reached the provider, and when.
    assert [m.message_id for m in sim.query()] == ["sms-msg-1"]

    async with httpx.AsyncClient(base_url=sim.http_url, timeout=5.0) as client:
        listed = (await client.get("/_control/refused", params={"channel": "email"})).json()
        assert listed["count"] == 2
        assert listed["refused"][0] == refused[2].as_dict()
        assert isinstance(listed["refused"][0]["refused_at"], float)
        by_id = (await client.get("/_control/refused", params={"message_id": "sms-msg-2"})).json()
        assert [r["status"] for r in by_id["refused"]] == [429]
        later = (await client.get("/_control/refused", params={"since": refused[3].refused_at})).json()
        assert [r["code"] for r in later["refused"]] == ["21211", "190"]
        assert (await client.get("/_control/refused", params={"channel": "fax"})).status_code == 400
        await client.post("/_control/reset")
        assert (await client.get("/_control/refused")).json() == {"count": 0, "refused": []}


async def test_template_and_inbound_control_endpoints(sim: ProviderSimulator) -> None:
    async with httpx.AsyncClient(base_url=sim.http_url, timeout=5.0) as client:
        registered = await client.post(
            "/_control/templates",
            json=[{"name": "welcome", "language": "en", "parameters": 1}, {"name": "bye", "language": "en"}],
        )
        assert registered.status_code == 200
        assert registered.json()["templates"] == [
            {"name": "bye", "language": "en", "parameters": 0},
            {"name": "spring_sale", "language": "en_US", "parameters": 2},
            {"name": "welcome", "language": "en", "parameters": 1},
        ]
        for bad in ({"name": "x"}, {"name": "x", "language": "en", "parameters": -1}, [{"nme": "x"}], "x"):
            answer = await client.post("/_control/templates", json=bad)
            assert answer.status_code == 400 and "template registration" in answer.json()["error"]
        assert len((await client.get("/_control/templates")).json()["templates"]) == 3

        assert not sim.in_service_window("+15557770009")
        inbound = await client.post("/_control/inbound", json={"from": ["+15557770009", "15557770010"]})
        assert inbound.json() == {"ok": True, "recorded": 2}
        assert sim.in_service_window("+1 555 777 0009") and sim.in_service_window("+15557770010")
        for bad in ({"from": "not a number"}, {"from": "+15557770011", "at": "yesterday"}, {"to": "+1555"}):
            assert (await client.post("/_control/inbound", json=bad)).status_code == 400
        assert not sim.in_service_window("+15557770011")
        await client.post("/_control/reset")  # templates and inbound messages are account/customer state
        assert len((await client.get("/_control/templates")).json()["templates"]) == 3
        assert sim.in_service_window("+15557770009")
        config = await client.post("/_control/config", json={"service_window_s": 10, "open_service_window": True})
        assert config.json()["service_window_s"] == 10.0 and config.json()["open_service_window"] is True
        assert (await client.post("/_control/config", json={"open_service_window": "yes"})).status_code == 400
        assert (await client.post("/_control/config", json={"service_window_s": 0})).status_code == 400


def test_template_registration_of_a_project_template() -> None:
    import json as _json

    spec = _json.loads((ROOT / "examples" / "template-whatsapp.json").read_text())
    assert template_registration(spec["name"], "en-US", spec["body"]) == {
        "name": "spring_sale_whatsapp", "language": "en_US", "parameters": 3
    }
    assert template_registration("t", "en", "Hi {{ a }} and {{ a }}, {{ b }}")["parameters"] == 2


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--template", "welcome:en"], "expected NAME:LANGUAGE:PARAMETERS"),
        (["--template-file", "examples/template-sms.json"], "not a WhatsApp template"),
        (["--template-file", "examples/nope.json"], "cannot read template file"),
    ],
)
def test_cli_refuses_bad_template_options(args: list[str], message: str) -> None:
    import subprocess

    done = subprocess.run(
        [sys.executable, "-m", "simulator", "--http-port", "0", "--smtp-port", "0", *args],
        cwd=ROOT, env={**os.environ, "PYTHONPATH": str(ROOT)}, capture_output=True, text=True, timeout=60,
    )
    assert done.returncode == 2 and message in done.stderr

