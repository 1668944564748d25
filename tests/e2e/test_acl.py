"""The production broker set-up: per-agent logins and deploy/mosquitto/picket.acl."""

from __future__ import annotations

import asyncio
from pathlib import Path

import aiohttp
import aiomqtt
import pytest

from tests.e2e.conftest import Stack, ready
from tests.e2e.test_flow import _at_least
from tests.helpers import REPO, Mosquitto, Target, http_monitor, scrape, wait_for

pytestmark = pytest.mark.e2e

USERS = {"picket-controller": "c-secret", "agent-1": "a1-secret", "agent-2": "a2-secret"}


async def test_agents_confined_to_their_own_topics(
    tmp_path: Path, stack: Stack, target: Target, http: aiohttp.ClientSession
) -> None:
    acl = (REPO / "deploy" / "mosquitto" / "picket.acl").read_text()
    broker = Mosquitto(tmp_path / "secure-broker", acl=acl, users=USERS)
    broker.start()
    try:
        stack.controller(
            broker.login_url("picket-controller", USERS["picket-controller"]),
            f"sqlite+aiosqlite:///{tmp_path / 'picket.db'}",
        )
        stack.agent(broker.login_url("agent-1", USERS["agent-1"]))
        api = await ready(stack, http)
        guid = await api.create_monitor(http_monitor("through the ACL", f"{target.base}/ok"))
        await wait_for(lambda: _at_least(api, guid, 2), "checks through the ACL")

        async def clock_measured() -> bool:
            # the clock round trip (agents/{id}/time, agents/{id}/clock) passes the ACL too
            values = await scrape(http, f"{stack.api}/metrics")
            return 'picket_agent_clock_offset_seconds{agent="agent-1"}' in values

        await wait_for(clock_measured, "agent-1's clock offset through the ACL")

        # another agent's login sees none of agent-1's assignments and cannot fake its results
        received: list[str] = []
        async with aiomqtt.Client(
            "127.0.0.1", broker.port, username="agent-2", password=USERS["agent-2"]
        ) as spy:
            await spy.subscribe("picket/v1/agents/agent-1/#", qos=1)
            await spy.subscribe("picket/v1/agents/agent-2/monitors/+", qos=1)

            async def listen() -> None:
                async for message in spy.messages:
                    received.append(message.topic.value)

            listener = asyncio.create_task(listen())
            await spy.publish("picket/v1/results/agent-1", b'{"v": 1}', qos=1)
            # meanwhile agent-1's assignment traffic goes on; wait for more of its checks
            await wait_for(lambda: _at_least(api, guid, 4), "more checks meanwhile")
            listener.cancel()
        assert not [t for t in received if "/agent-1/" in t], received
        metrics = await scrape(http, f"{stack.api}/metrics")
        # the forged batch never reached the controller (it would count it as malformed)
        assert metrics.get('picket_mqtt_messages_dropped_total{reason="malformed"}', 0) == 0
    finally:
        stack.stop_all()
        broker.stop()
    assert "Traceback" not in stack.processes[0].output()
