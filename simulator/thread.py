"""Run the provider simulator on its own event loop in a background thread (demo, tests, benchmarks)."""

from __future__ import annotations

import asyncio
import threading
from typing import Any

from simulator.server import ProviderSimulator


class SimulatorThread:
    """``with SimulatorThread(**config) as simulator:`` — started on ephemeral 127.0.0.1 ports by default.

    Reading ``simulator.messages`` / ``stats()`` from another thread is safe for inspection (appends are
    atomic); change its configuration with :meth:`configure`, which runs on the simulator's loop.
    """

    def __init__(self, **config: Any) -> None:
        self.simulator = ProviderSimulator(**config)
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, name="simulator", daemon=True)

    def __enter__(self) -> ProviderSimulator:
        self._thread.start()
        asyncio.run_coroutine_threadsafe(self.simulator.start(), self._loop).result(30)
        return self.simulator

    def configure(self, **changes: Any) -> None:
        async def apply() -> None:
            self.simulator.configure(**changes)

        asyncio.run_coroutine_threadsafe(apply(), self._loop).result(10)

    def register_template(self, name: str, language: str, parameters: int = 0) -> None:
        """:meth:`ProviderSimulator.register_template`, run on the simulator's loop."""

        async def apply() -> None:
            self.simulator.register_template(name, language, parameters)

        asyncio.run_coroutine_threadsafe(apply(), self._loop).result(10)

    def record_inbound(self, number: str, at: float | None = None) -> None:
        """:meth:`ProviderSimulator.record_inbound`, run on the simulator's loop."""

        async def apply() -> None:
            self.simulator.record_inbound(number, at)

        asyncio.run_coroutine_threadsafe(apply(), self._loop).result(10)

    def __exit__(self, *exc: object) -> None:
        asyncio.run_coroutine_threadsafe(self.simulator.stop(), self._loop).result(30)
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(10)
