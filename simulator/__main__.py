"""``python3 -m simulator``: run the provider simulator until SIGINT/SIGTERM.

Credentials come from the project settings (``CAMPAIGNS_PROVIDERS__WHATSAPP_TOKEN`` etc.), so the real
transports configured by the same environment authenticate against it. Behaviour can be changed live
with ``POST /_control/config``.

WhatsApp templates must be registered before campaigns using them are sent, as they must be approved in
the business account for the real Cloud API: ``--template-file examples/template-whatsapp.json`` (the
file given to ``campaigns template add``) or ``--template NAME:LANGUAGE:PARAMETERS``, both repeatable, or
``POST /_control/templates`` while it runs. Free-form WhatsApp text is only accepted inside a number's
24-hour customer service window (``POST /_control/inbound``), unless ``--open-service-window``.

Delivery callbacks: ``--webhook-url http://127.0.0.1:8090`` (where ``campaigns webhooks`` listens) makes the
simulator report each accepted message's fate there, signed like the real providers (secrets from
``CAMPAIGNS_WEBHOOKS__*`` and ``CAMPAIGNS_PROVIDERS__SMS_AUTH_TOKEN``): ``--receipts delivered=0.9,read=0.5,
bounced=0.03,undelivered=0.02,complained=0.01``, ``--receipt-delay-ms 100-2000``, ``--bounce ADDRESSES``, and
``--seed`` makes every address's fate reproducible. ``GET /_control/callbacks`` counts what was acknowledged.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import logging
import signal
import sys
from pathlib import Path
from typing import Any

from campaigns.collector import tune_collector
from campaigns.errors import ValidationError
from campaigns.settings import load_settings

from .server import CHANNELS, ProviderSimulator, template_registration


def _latency(text: str) -> float | tuple[float, float]:
    if "-" in text:
        low, high = text.split("-", 1)
        return (float(low), float(high))
    return float(text)


def _per_channel_number(text: str) -> float | dict[str, float]:
    """``"50"`` for every channel, or ``"sms=10,whatsapp=80"``."""
    if "=" not in text:
        return float(text)
    values: dict[str, float] = {}
    for item in text.split(","):
        channel, _, number = item.partition("=")
        if channel.strip() not in CHANNELS:
            raise argparse.ArgumentTypeError(f"unknown channel {channel!r}; expected one of {CHANNELS}")
        values[channel.strip()] = float(number)
    return values


def _ratios(text: str) -> dict[str, float]:
    """``delivered=0.9,read=0.5,...``."""
    values: dict[str, float] = {}
    for item in filter(None, text.split(",")):
        name, _, number = item.partition("=")
        try:
            values[name.strip()] = float(number)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected NAME=RATIO, got {item!r}") from None
    return values


def _template_spec(text: str) -> dict[str, Any]:
    """``NAME:LANGUAGE:PARAMETERS``, e.g. ``spring_sale:en:2``."""
    name, _, rest = text.rpartition(":")
    name, _, language = name.rpartition(":")
    try:
        count = int(rest)
    except ValueError:
        count = -1
    if not name or not language or count < 0:
        raise argparse.ArgumentTypeError(f"expected NAME:LANGUAGE:PARAMETERS (e.g. spring_sale:en:2), got {text!r}")
    return {"name": name, "language": language, "parameters": count}


def _template_file(text: str) -> dict[str, Any]:
    """A project template file (JSON with name, channel, locale, body), as ``campaigns template add`` takes."""
    try:
        spec = json.loads(Path(text).read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise argparse.ArgumentTypeError(f"cannot read template file {text}: {exc}") from exc
    if not isinstance(spec, dict) or spec.get("channel") != "whatsapp":
        raise argparse.ArgumentTypeError(f"{text}: not a WhatsApp template (channel must be whatsapp)")
    name, body, locale = spec.get("name"), spec.get("body"), spec.get("locale", "en")
    if not isinstance(name, str) or not isinstance(body, str) or not isinstance(locale, str):
        raise argparse.ArgumentTypeError(f"{text}: name, body and locale must be strings")
    header = spec.get("subject")  # a WhatsApp template's text header
    try:
        return template_registration(name, locale, body, header if isinstance(header, str) else None)
    except ValidationError as exc:  # a malformed placeholder
        raise argparse.ArgumentTypeError(f"{text}: {exc}") from exc


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python3 -m simulator",
        description="Run the provider simulator (WhatsApp Cloud API, Twilio-style SMS, SMTP) until stopped.",
    )
    parser.add_argument(
        "--host", default="127.0.0.1", help="address to bind (default 127.0.0.1, loopback only)"
    )
    parser.add_argument("--http-port", type=int, default=18080)
    parser.add_argument("--smtp-port", type=int, default=18025)
    parser.add_argument("--latency-ms", type=_latency, default=0.0, help="fixed ms, or MIN-MAX")
    parser.add_argument(
        "--rate-limit",
        type=_per_channel_number,
        default=None,
        help="requests/s: N for every channel, or sms=10,whatsapp=80,email=20",
    )
    parser.add_argument(
        "--transient-error-rate",
        type=_per_channel_number,
        default=0.0,
        help="0..1 for every channel, or sms=0.1,...",
    )
    parser.add_argument("--seed", type=int, default=None, help="seed for injected errors and latency")
    parser.add_argument(
        "--permanent", default="", help="comma-separated addresses that always fail permanently"
    )
    parser.add_argument(
        "--template",
        dest="templates",
        action="append",
        type=_template_spec,
        default=[],
        metavar="NAME:LANGUAGE:PARAMETERS",
        help="register a WhatsApp template (repeatable), e.g. spring_sale:en:2",
    )
    parser.add_argument(
        "--template-file",
        dest="templates",
        action="append",
        type=_template_file,
        metavar="FILE",
        help="register the WhatsApp template of a project template file (repeatable)",
    )
    parser.add_argument(
        "--open-service-window",
        action="store_true",
        help="accept free-form WhatsApp text to every number (default: only within 24 h of its inbound message)",
    )
    parser.add_argument(
        "--webhook-url",
        default=None,
        help="send delivery callbacks (signed like the providers') to this receiver base URL, e.g. "
        "http://127.0.0.1:8090 (default: none)",
    )
    parser.add_argument("--receipt-delay-ms", type=_latency, default=0.0, help="before each callback: ms, or MIN-MAX")
    parser.add_argument(
        "--receipts",
        type=_ratios,
        default={},
        help="callback ratios, e.g. delivered=0.9,read=0.5,bounced=0.05,undelivered=0.02,complained=0.01 "
        "(delivered defaults to the rest; read/complained are shares of the delivered)",
    )
    parser.add_argument(
        "--bounce", default="", help="comma-separated addresses whose messages always hard-bounce (callbacks)"
    )
    parser.add_argument("--smtp-user", default=None, help="require SMTP AUTH with this user ...")
    parser.add_argument("--smtp-password", default=None, help="... and this password")
    parser.add_argument("--log-level", default="info")
    return parser


def _rates(value: float | dict[str, float] | None) -> Any:
    if isinstance(value, dict):
        return {k: int(v) if v else None for k, v in value.items()}
    return int(value) if value else None


async def _serve(args: argparse.Namespace) -> None:
    smtp_auth = None
    if args.smtp_user is not None:
        smtp_auth = (args.smtp_user, args.smtp_password or "")
    simulator = ProviderSimulator(
        host=args.host,
        http_port=args.http_port,
        smtp_port=args.smtp_port,
        credentials=load_settings().providers,
        webhook_secrets=load_settings().webhooks,
        smtp_auth=smtp_auth,
        latency_ms=args.latency_ms,
        rate_limit_per_s=_rates(args.rate_limit),
        transient_error_rate=args.transient_error_rate,
        seed=args.seed,
        permanent_failures=[a.strip() for a in args.permanent.split(",") if a.strip()],
        open_service_window=args.open_service_window,
        templates=args.templates,
        webhook_url=args.webhook_url,
        receipt_delay_ms=args.receipt_delay_ms,
        receipt_ratios=args.receipts,
        bounce_addresses=[a.strip() for a in args.bounce.split(",") if a.strip()],
    )
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        with contextlib.suppress(NotImplementedError):
            loop.add_signal_handler(sig, stop.set)
    await simulator.start()
    print(
        f"provider simulator: http://{args.host}:{simulator.http_port}"
        f" smtp {args.host}:{simulator.smtp_port}",
        flush=True,
    )
    try:
        await stop.wait()
    finally:
        await simulator.stop()


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    logging.basicConfig(level=args.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s %(message)s")
    if logging.getLogger().getEffectiveLevel() > logging.DEBUG:
        # aiosmtpd traces every SMTP command and reply at INFO (five lines per email): a protocol trace, shown only
        # with --log-level debug. It was a fifth of the simulator's CPU per email and most of its log.
        logging.getLogger("mail.log").setLevel(logging.WARNING)
    # Its requests are short-lived containers too: collected as the worker's are (campaigns/collector.py).
    tune_collector(load_settings().gc_young_threshold)
    try:
        asyncio.run(_serve(args))
    except ValueError as exc:
        print(f"simulator: {exc}", file=sys.stderr)
        return 2
    except OSError as exc:
        print(f"simulator: cannot bind: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
