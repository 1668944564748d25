"""One check of a monitor at a time, through the whole system: a Connect monitor whose time
limit is longer than its interval, against a server that accepts and never answers."""

from __future__ import annotations

import asyncio
from typing import Any

import aiohttp
import pytest

from tests.e2e.conftest import Stack, ready
from tests.helpers import Mosquitto, wait_for

pytestmark = pytest.mark.e2e


class SilentServer:
    """Accepts connections, never answers; counts how many are open at once."""

    def __init__(self) -> None:
        self.open = 0
        self.most = 0
        self.port = 0
        self._server: asyncio.Server | None = None

    async def start(self) -> None:
        self._server = await asyncio.start_server(self._serve, "127.0.0.1", 0)
        self.port = int(self._server.sockets[0].getsockname()[1])

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.open += 1
        self.most = max(self.most, self.open)
        try:
            await reader.read()  # until the agent gives up and closes
        finally:
            self.open -= 1
            writer.close()

    async def stop(self) -> None:
        if self._server is not None:
            self._server.close()


async def test_a_check_longer_than_its_interval_never_overlaps(
    database_url: str, stack: Stack, mosquitto: Mosquitto, http: aiohttp.ClientSession
) -> None:
    server = SilentServer()
    await server.start()
    try:
        stack.controller(mosquitto.url, database_url)
        stack.agent(mosquitto.url)
        api = await ready(stack, http)
        guid = await api.create_monitor(
            {
                "Name": "slow connect",
                "MonitorType": "Connect",
                "NetworkAddress": "127.0.0.1",
                "Port": server.port,
                "ExpectString": "hello",
                "CheckIntervalSeconds": 1,
                "TimeoutSeconds": 3,
            }
        )

        async def four_checks() -> list[dict[str, Any]] | None:
            checks = await api.checks(guid)
            return checks if len(checks) >= 4 else None

        checks = await wait_for(four_checks, "four stored checks", within=120)
        attributes = [c["Attributes"] for c in checks]
        assert server.most == 1, f"{server.most} checks of one monitor at once"
        assert all(a["ErrorCode"] == 120 for a in attributes), attributes
        # the first failure asked for one re-check; the failures before its result asked for
        # none, and after it the error is Confirmed: no more
        confirmations = [a for a in attributes if a["IsConfirmation"]]
        assert len(confirmations) == 1, attributes
        assert any(a.get("SkippedSlots", 0) >= 2 for a in attributes), attributes
    finally:
        await server.stop()
