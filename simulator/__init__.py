"""Local provider simulator: WhatsApp Cloud API, Twilio-style SMS and an SMTP sink in one process.

Run it with ``python3 -m simulator --http-port 18080 --smtp-port 18025``, or in-process::

    async with ProviderSimulator(rate_limit_per_s={"sms": 50}) as sim:
        transports = build_transports(sim.provider_settings())
        ...
        assert sim.stats()["sms"]["duplicates"] == 0

See :mod:`simulator.server` for the protocol each endpoint speaks and how failures are injected.
"""

from __future__ import annotations

from .server import (
    CHANNELS,
    ChannelStats,
    ProviderSimulator,
    ReceivedMessage,
    RefusedRequest,
    SimulatorConfig,
    normalize_address,
    template_registration,
)

__all__ = [
    "CHANNELS",
    "ChannelStats",
    "ProviderSimulator",
    "ReceivedMessage",
    "RefusedRequest",
    "SimulatorConfig",
    "normalize_address",
    "template_registration",
]
