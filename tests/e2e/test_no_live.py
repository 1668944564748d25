"""A monitor whose only agent is gone does not go dark: the controller stores one inconclusive
check per missed slot (error 5, no live checkpoint), none during its grace after a start, none
twice across a restart, and `?Inconclusive=false` hides them. When the agent returns, real
results resume; an agent cut off from the broker that ran the slots meanwhile replaces their
placeholders with its real results. SQLite and PostgreSQL, a private Mosquitto, real agents."""

from __future__ import annotations

import os
import signal
import time
from typing import Any

import aiohttp
import pytest

from shared.timefmt import parse
from tests.e2e.conftest import Stack, ready
from tests.helpers import Mosquitto, Proxy, Target, free_port, http_monitor, scrape, wait_for

pytestmark = pytest.mark.e2e

KEEPALIVE = 2
GRACE = 4.0  # seconds after a controller start with no inconclusive slot stored
INTERVAL = 2


def _controller(stack: Stack, broker_url: str, database_url: str) -> Any:
    return stack.controller(broker_url, database_url, PICKET_NO_LIVE_GRACE_SECONDS=str(GRACE))


def _agent(stack: Stack, broker_url: str) -> Any:
    return stack.agent(
        broker_url,
        "agent-a",
        PICKET_PRESENCE_KEEPALIVE_SECONDS=str(KEEPALIVE),
        PICKET_METRICS_LISTEN=f"127.0.0.1:{free_port()}",
        PICKET_WORKERS="1",
    )


def _placeholders(checks: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [c["Attributes"] for c in checks if c["Attributes"]["ErrorCode"] == 5]


def _real(checks: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [
        c["Attributes"]
        for c in checks
        if c["Attributes"]["ErrorCode"] != 5 and not c["Attributes"].get("IsConfirmation")
    ]


def _slot_ms(attributes: dict[str, Any]) -> int:
    return round(parse(attributes["ScheduledTime"]) * 1000)


def _no_slot_twice(checks: list[dict[str, Any]]) -> None:
    """No slot has two placeholders, nor a placeholder and a real result."""
    held = [_slot_ms(a) for a in _placeholders(checks)]
    assert len(held) == len(set(held)), held
    assert not set(held) & {_slot_ms(a) for a in _real(checks)}


async def _inconclusive_metric(http: aiohttp.ClientSession, stack: Stack) -> float:
    values = await scrape(http, stack.api + "/metrics")
    return values.get('picket_inconclusive_slots_total{reason="no_live_checkpoint"}', 0.0)


async def test_a_monitor_whose_only_agent_is_killed_gets_inconclusive_slots(
    stack: Stack,
    mosquitto: Mosquitto,
    target: Target,
    http: aiohttp.ClientSession,
    database_url: str,
) -> None:
    controller = _controller(stack, mosquitto.url, database_url)
    agent = _agent(stack, mosquitto.url)
    api = await ready(stack, http)
    guid = await api.create_monitor(
        http_monitor("alone", f"{target.base}/ok", CheckIntervalSeconds=INTERVAL)
    )

    async def checked() -> bool:
        return bool(_real(await api.checks(guid)))

    await wait_for(checked, "a real check", 60)
    killed_at = time.time()
    os.kill(agent.proc.pid, signal.SIGKILL)
    agent.proc.wait()

    async def inconclusive(after: float, count: int) -> list[dict[str, Any]] | None:
        found = [
            a for a in _placeholders(await api.checks(guid)) if parse(a["ScheduledTime"]) > after
        ]
        return found if len(found) >= count else None

    held = await wait_for(lambda: inconclusive(killed_at, 3), "three inconclusive slots", 60)
    for attributes in held:
        assert attributes["ErrorLevel"] == "NoError"
        assert attributes["IsInconclusive"] is True
        assert attributes["ServerId"] is None and attributes["CheckpointId"] is None
        assert attributes["ErrorDescription"] == "Inconclusive: no selected checkpoint was live"
        assert attributes["Timestamp"] == attributes["ScheduledTime"]
    checks = await api.checks(guid)
    # none for a slot when the server was live (before it was lost)
    assert all(parse(a["ScheduledTime"]) > killed_at for a in _placeholders(checks))
    hidden = await api.checks(guid, Inconclusive="false")
    assert hidden and all(c["Attributes"]["ErrorCode"] != 5 for c in hidden)
    assert await api.checks(guid, ErrorLevel="Unconfirmed") == []
    assert await _inconclusive_metric(http, stack) >= 3

    # the controller restarts: none in its grace, none twice
    assert controller.stop() == 0
    stopped_at = time.time()
    restarted_at = time.time()
    _controller(stack, mosquitto.url, database_url)
    await wait_for(
        lambda: inconclusive(restarted_at + GRACE, 2), "inconclusive slots after a restart", 60
    )
    checks = await api.checks(guid)
    in_grace = [
        a["ScheduledTime"]
        for a in _placeholders(checks)
        if stopped_at < parse(a["ScheduledTime"]) < restarted_at + GRACE
    ]
    assert in_grace == []
    _no_slot_twice(checks)

    # the agent returns: real results resume, and no slot has both
    back_at = time.time()
    _agent(stack, mosquitto.url)

    async def resumed() -> list[dict[str, Any]] | None:
        checks = await api.checks(guid)
        after = [a for a in _real(checks) if parse(a["Timestamp"]) > back_at]
        return checks if len(after) >= 3 else None

    checks = await wait_for(resumed, "real results after the agent returned", 60)
    _no_slot_twice(checks)
    first_back = min(_slot_ms(a) for a in _real(checks) if parse(a["Timestamp"]) > back_at)
    assert all(_slot_ms(a) < first_back for a in _placeholders(checks))


async def test_an_agent_cut_off_replaces_the_placeholders_with_its_results(
    stack: Stack,
    mosquitto: Mosquitto,
    target: Target,
    http: aiohttp.ClientSession,
    database_url: str,
) -> None:
    proxy = Proxy(mosquitto.port)
    await proxy.start()
    _controller(stack, mosquitto.url, database_url)
    _agent(stack, proxy.url)
    api = await ready(stack, http)
    guid = await api.create_monitor(
        http_monitor("cut", f"{target.base}/ok", CheckIntervalSeconds=INTERVAL)
    )

    async def checked() -> bool:
        checks = await api.checks(guid)
        # past the controller's grace: the slots of the cut are stored
        return len(_real(checks)) >= 3

    await wait_for(checked, "real checks", 60)
    # the partition: the broker publishes the agent's last will, no checkpoint is live, and
    # the agent, which does not know yet, goes on checking into its outbox
    await proxy.cut()
    cut_at = time.time()

    async def held() -> bool:
        found = _placeholders(await api.checks(guid))
        return len([a for a in found if parse(a["ScheduledTime"]) > cut_at]) >= 3

    await wait_for(held, "inconclusive slots while the agent is cut off", 60)
    await proxy.start()  # it reconnects and delivers what it checked meanwhile
    try:

        async def replaced() -> float | None:
            values = await scrape(http, stack.api + "/metrics")
            return values.get("picket_inconclusive_slots_withdrawn_total", 0.0) or None

        await wait_for(replaced, "placeholders replaced by the agent's real results", 90)
        back = time.time()

        async def resumed() -> list[dict[str, Any]] | None:
            checks = await api.checks(guid)
            after = [a for a in _real(checks) if parse(a["Timestamp"]) > back]
            return checks if len(after) >= 2 else None

        checks = await wait_for(resumed, "real results after the reconnection", 60)
        _no_slot_twice(checks)
        # the slots of the cut have real results now (what its outbox held)
        assert any(parse(a["ScheduledTime"]) > cut_at for a in _real(checks))
    finally:
        stack.stop_all()
        await proxy.cut()
