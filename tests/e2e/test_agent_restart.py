"""An agent restarted while the broker is away goes on checking with the assignments it saved,
and reconciles them once the broker is back."""

from __future__ import annotations

import itertools
import time

import aiohttp
import pytest

from shared.timefmt import parse
from tests.e2e.conftest import Stack, ready
from tests.helpers import Mosquitto, Target, http_monitor, scrape, wait_for

pytestmark = pytest.mark.e2e

HTTP_OK = 'picket_agent_checks_total{outcome="ok",type="Http"}'
CONNECT_OK = 'picket_agent_checks_total{outcome="ok",type="Connect"}'


async def test_an_agent_restarted_without_broker_checks_with_its_saved_assignments(
    stack: Stack, mosquitto: Mosquitto, target: Target, http: aiohttp.ClientSession
) -> None:
    stack.controller(mosquitto.url, f"sqlite+aiosqlite:///{stack.workdir / 'picket.db'}")
    agent = stack.agent(mosquitto.url)
    api = await ready(stack, http)
    kept = await api.create_monitor(http_monitor("kept", f"{target.base}/ok"))
    # another type, so the agent's counters tell the two monitors apart
    deleted = await api.create_monitor(
        {
            "Name": "deleted while away",
            "MonitorType": "Connect",
            "NetworkAddress": "127.0.0.1",
            "Port": target.port,
            "CheckIntervalSeconds": 1,
        }
    )

    async def metrics() -> dict[str, float]:
        return await scrape(http, stack.agent_metrics)

    async def both_stored() -> bool:
        return len(await api.checks(kept)) >= 2 and len(await api.checks(deleted)) >= 2

    await wait_for(both_stored, "stored checks of both monitors")
    saved = stack.workdir / "agent-data" / "assignments" / "agent-1.json"
    assert saved.exists() and saved.stat().st_mode & 0o777 == 0o600
    assert agent.stop() == 0
    mosquitto.stop()

    # the agent comes back while the broker is away: it checks with what it saved
    restarted_at = time.time()
    agent = stack.agent(mosquitto.url)

    async def checking_offline() -> bool:
        values = await metrics()
        return (
            values["picket_agent_mqtt_connected"] == 0
            and values["picket_agent_assignments"] == 2
            and values.get(HTTP_OK, 0) >= 3
            and values.get(CONNECT_OK, 0) >= 3
            and values["picket_agent_outbox_results"] >= 4
        )

    await wait_for(checking_offline, "checks with the saved assignments, broker away", 90)
    status, _ = await api.call("DELETE", f"/api/v4/Monitor/{deleted}")
    assert status == 204

    mosquitto.start()  # the same port: controller and agent reconnect on their own

    async def reconciled() -> bool:
        values = await metrics()
        return (
            values["picket_agent_mqtt_connected"] == 1 and values["picket_agent_assignments"] == 1
        )

    await wait_for(reconciled, "the agent to drop the monitor deleted while it was away", 90)
    connect_checks = (await metrics()).get(CONNECT_OK, 0)
    status, _ = await api.call("PATCH", f"/api/v4/Monitor/{kept}", json={"IsActive": False})
    assert status == 204

    async def quiet_and_drained() -> bool:
        values = await metrics()
        return (
            values["picket_agent_assignments"] == 0 and values["picket_agent_outbox_results"] == 0
        )

    await wait_for(quiet_and_drained, "the agent to stop and deliver everything", 90)
    assert (await metrics()).get(CONNECT_OK, 0) == connect_checks, "the deleted monitor stopped"

    async def all_stored() -> bool:  # the workers' counts reach /metrics within a second
        since = [
            c
            for c in await api.checks(kept)
            if parse(c["Attributes"]["ScheduledTime"]) >= restarted_at
        ]
        return len(since) == (await metrics()).get(HTTP_OK, 0)

    await wait_for(all_stored, "every check of the restarted agent to be stored")
    slots = sorted(
        round(parse(c["Attributes"]["ScheduledTime"]), 3) for c in await api.checks(kept)
    )
    assert len(slots) == len(set(slots)), "a result was stored twice"
    after = [s for s in slots if s >= restarted_at]
    gaps = [round(b - a, 3) for a, b in itertools.pairwise(after)]
    assert all(gap == 1.0 for gap in gaps), f"missing slots after the restart: {gaps}"
    assert "Traceback" not in agent.output()
    assert "assignments saved" in agent.output()
