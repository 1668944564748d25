"""Controller and agent as separate processes, a private Mosquitto, SQLite and PostgreSQL."""

from __future__ import annotations

import itertools
from collections.abc import Awaitable, Callable
from typing import Any

import aiohttp
import aiomqtt
import pytest

from tests.e2e.conftest import Stack, ready
from tests.helpers import Api, Mosquitto, Proxy, Target, http_monitor, scrape, wait_for

pytestmark = pytest.mark.e2e

DELAY_MS = 150


async def test_monitor_end_to_end(
    database_url: str,
    stack: Stack,
    mosquitto: Mosquitto,
    target: Target,
    http: aiohttp.ClientSession,
) -> None:
    stack.controller(mosquitto.url, database_url)
    stack.agent(mosquitto.url)
    api = await ready(stack, http)

    # a monitor on a target that waits DELAY_MS before answering
    guid = await api.create_monitor(
        http_monitor(
            "slow target",
            f"{target.base}/slow?ms={DELAY_MS}",
            ErrorConditions=[{"ErrorConditionType": "HttpStatus", "Value": "200"}],
        )
    )
    _, monitor = await api.call("GET", f"/api/v4/Monitor/{guid}")
    assert monitor["CheckIntervalSeconds"] == 1 and "CheckInterval" not in monitor

    async def three_checks() -> list[dict[str, Any]] | None:
        checks = await api.checks(guid)
        return checks if len(checks) >= 3 else None

    checks = await wait_for(three_checks, "three stored checks")
    status, checkpoints = await api.call("GET", "/api/v4/Checkpoint")
    server_ids = checkpoints["Data"][0]["Attributes"]["ServerIds"]
    for check in checks:
        a = check["Attributes"]
        assert a["ErrorLevel"] == "NoError" and a["ErrorCode"] == 0, a
        assert a["HttpStatusCode"] == 200 and a["ResolvedIpAddress"] == "127.0.0.1"
        assert a["TotalTime"] >= DELAY_MS, a
        assert a["WaitTime"] >= DELAY_MS - 5, a  # the scripted delay lands in time-to-first-byte
        phases = ("ResolveTime", "ConnectionTime", "HttpsHandshakeTime", "SendTime")
        phases += ("WaitTime", "DownloadTime")
        assert all(a[p] >= 0 for p in phases)
        assert abs(sum(a[p] for p in phases) - a["TotalTime"]) < 1.0, a
        assert a["ServerId"] in server_ids and a["MonitorGuid"] == guid
        assert a["Timestamp"].endswith("Z") and len(a["Timestamp"]) == 24
    first_id = checks[0]["Id"]
    status, waterfall = await api.call("GET", f"/api/v4/MonitorCheck/{first_id}/Waterfall")
    assert status == 200, waterfall
    (element,) = waterfall["Data"]["Attributes"]["Elements"]
    assert (
        element["Url"] == f"{target.base}/slow?ms={DELAY_MS}" and element["HttpStatusCode"] == 200
    )
    assert element["WaitTime"] == checks[0]["Attributes"]["WaitTime"]
    status, details = await api.call("GET", f"/api/v4/MonitorCheck/{first_id}/Http")
    assert status == 200 and "200" in details["Data"]["Attributes"]["ResponseHeaders"]
    assert details["Data"]["Attributes"]["ResponseBody"] == ""  # bodies are kept for failures only
    status, server = await api.call("GET", f"/api/v4/Checkpoint/Server/{server_ids[0]}")
    assert status == 200 and server["Data"]["Attributes"]["Ip4Address"] == "127.0.0.1", server
    status, one = await api.call("GET", f"/api/v4/MonitorCheck/{checks[0]['Id']}")
    assert (
        status == 200
        and one["Data"]["Attributes"]["TotalTime"] == checks[0]["Attributes"]["TotalTime"]
    )

    # the target goes away: an Unconfirmed error, then a Confirmed one from the re-check
    await target.stop()

    async def confirmed() -> list[dict[str, Any]] | None:
        errors = [c for c in await api.checks(guid) if c["Attributes"]["ErrorLevel"] != "NoError"]
        return errors if any(e["Attributes"]["ErrorLevel"] == "Confirmed" for e in errors) else None

    errors = await wait_for(confirmed, "a confirmed error")
    first = errors[0]["Attributes"]
    assert first["ErrorLevel"] == "Unconfirmed" and not first["IsConfirmation"], first
    assert first["ErrorCode"] == 110 and first["ErrorDescription"] == "Connection refused"
    recheck = errors[1]["Attributes"]
    assert recheck["ErrorLevel"] == "Confirmed" and recheck["IsConfirmation"], recheck
    status, only_errors = await api.call(
        "GET",
        f"/api/v4/MonitorCheck/Monitor/{guid}",
        params={"ErrorLevel": "Confirmed", "PresetPeriod": "All"},
    )
    assert only_errors["Data"] and all(
        c["Attributes"]["ErrorLevel"] == "Confirmed" for c in only_errors["Data"]
    )

    # the public address lists, without credentials, in three formats
    async with http.get(f"{stack.api}/api/v4/Checkpoint/Server/Ipv4") as resp:
        assert resp.status == 200 and "127.0.0.1" in (await resp.json())["Data"]
    async with http.get(
        f"{stack.api}/api/v4/Checkpoint/Server/Ipv4", headers={"Accept": "text/plain"}
    ) as resp:
        assert (await resp.text()).splitlines() == ["127.0.0.1"]
    async with http.get(
        f"{stack.api}/api/v4/Checkpoint/Server/Ipv4", headers={"Accept": "application/xml"}
    ) as resp:
        assert "<string>127.0.0.1</string>" in await resp.text()

    # a malformed MQTT message is counted and dropped; the controller carries on
    async with aiomqtt.Client("127.0.0.1", mosquitto.port) as client:
        await client.publish("picket/v1/results/agent-1", b"{not json", qos=1)
        await client.publish("picket/v1/results/agent-1", b'{"v": 1, "batch_id": 3}', qos=1)

    async def dropped() -> float | None:
        metrics = await scrape(http, f"{stack.api}/metrics")
        value = metrics.get('picket_mqtt_messages_dropped_total{reason="malformed"}', 0)
        return value if value >= 2 else None

    await wait_for(dropped, "the controller to count two malformed messages")
    controller_metrics = await scrape(http, f"{stack.api}/metrics")
    assert controller_metrics["picket_agents_online"] == 1
    assert controller_metrics['picket_results_ingested_total{error_level="NoError"}'] >= 3
    agent_metrics = await scrape(http, stack.agent_metrics)
    assert agent_metrics['picket_agent_checks_total{outcome="ok",type="Http"}'] >= 3
    assert agent_metrics["picket_agent_schedule_lateness_seconds_count"] >= 3

    # deleting the monitor stops its checks on the agent
    status, _ = await api.call("DELETE", f"/api/v4/Monitor/{guid}")
    assert status == 204

    async def unassigned() -> bool:
        return (await scrape(http, stack.agent_metrics))["picket_agent_assignments"] == 0

    await wait_for(unassigned, "the agent to drop the deleted monitor")
    status, _ = await api.call("GET", f"/api/v4/Monitor/{guid}")
    assert status == 404
    codes = stack.stop_all()
    assert codes == {"agent-1": 0, "controller": 0}, codes
    for proc in stack.processes:
        assert "Traceback" not in proc.output(), proc.output()


async def test_broker_outage_loses_no_result(
    stack: Stack, mosquitto: Mosquitto, target: Target, http: aiohttp.ClientSession
) -> None:
    """Kill the broker mid-run: every scheduled slot is stored exactly once."""
    stack.controller(mosquitto.url, f"sqlite+aiosqlite:///{stack.workdir / 'picket.db'}")
    stack.agent(mosquitto.url)
    api = await ready(stack, http)
    guid = await api.create_monitor(http_monitor("every second", f"{target.base}/ok"))
    await wait_for(lambda: _at_least(api, guid, 2), "two stored checks")

    async def checks_run() -> float:
        metrics = await scrape(http, stack.agent_metrics)
        return metrics.get('picket_agent_checks_total{outcome="ok",type="Http"}', 0.0)

    mosquitto.kill()

    async def disconnected() -> bool:
        return (await scrape(http, stack.agent_metrics))["picket_agent_mqtt_connected"] == 0

    await wait_for(disconnected, "the agent to notice the broker is gone")
    before = await checks_run()

    async def three_more() -> bool:
        return await checks_run() >= before + 3

    await wait_for(three_more, "three checks while the broker is down")
    outbox = (await scrape(http, stack.agent_metrics))["picket_agent_outbox_results"]
    assert outbox >= 1, "results made during the outage wait in the outbox"
    mosquitto.start()

    async def drained() -> bool:
        metrics = await scrape(http, stack.agent_metrics)
        return (
            metrics["picket_agent_mqtt_connected"] == 1
            and metrics["picket_agent_outbox_results"] == 0
        )

    await wait_for(drained, "the outbox to drain after the broker returns")
    status, _ = await api.call("PATCH", f"/api/v4/Monitor/{guid}", json={"IsActive": False})
    assert status == 204

    async def stopped() -> bool:
        return (await scrape(http, stack.agent_metrics))["picket_agent_assignments"] == 0

    await wait_for(stopped, "the agent to stop the paused monitor")
    await wait_for(drained, "the last results to be acknowledged")

    async def all_stored() -> bool:  # the workers' counts reach /metrics within a second
        return len(await api.checks(guid)) == await checks_run()

    await wait_for(all_stored, "every check the agent ran to be stored")
    checks = await api.checks(guid)
    slots = sorted(round(_epoch(c["Attributes"]["ScheduledTime"]), 3) for c in checks)
    assert len(slots) == len(set(slots)), "a slot was stored twice"
    gaps = [round(b - a, 3) for a, b in itertools.pairwise(slots)]
    assert all(gap == 1.0 for gap in gaps), f"missing slots: {gaps}"


async def _at_least(api: Api, guid: str, count: int) -> bool:
    return len(await api.checks(guid)) >= count


def _epoch(text: str) -> float:
    from shared.timefmt import parse

    return parse(text)


async def test_agent_keeps_results_across_restart_without_broker(
    stack: Stack, mosquitto: Mosquitto, target: Target, http: aiohttp.ClientSession
) -> None:
    """An agent stopped while the broker is away writes its results to disk and sends them later."""
    stack.controller(mosquitto.url, f"sqlite+aiosqlite:///{stack.workdir / 'picket.db'}")
    agent = stack.agent(mosquitto.url)
    api = await ready(stack, http)
    guid = await api.create_monitor(http_monitor("m", f"{target.base}/ok"))
    await wait_for(lambda: _at_least(api, guid, 1), "a stored check")
    mosquitto.kill()

    async def pending() -> bool:
        metrics = await scrape(http, stack.agent_metrics)
        return metrics["picket_agent_outbox_results"] >= 2

    await wait_for(pending, "results waiting in the outbox")
    stored_before = len(await api.checks(guid))
    assert agent.stop() == 0
    assert "Traceback" not in agent.output()
    outbox_files = list((stack.workdir / "agent-data" / "outbox" / "agent-1").glob("*.json"))
    assert outbox_files, "unsent results are on disk"
    mosquitto.start()
    stack.agent(mosquitto.url)

    async def delivered() -> bool:
        metrics = await scrape(http, stack.agent_metrics)
        return (
            metrics["picket_agent_outbox_results"] == 0
            and len(await api.checks(guid)) > stored_before + 1
        )

    await wait_for(delivered, "the restarted agent to deliver its saved results")


async def test_agent_reconciles_assignments_after_a_partition(
    stack: Stack, mosquitto: Mosquitto, target: Target, http: aiohttp.ClientSession
) -> None:
    """A monitor deleted while the agent is cut off stops when the agent reconnects (sync)."""
    proxy = Proxy(mosquitto.port)
    await proxy.start()
    stack.controller(mosquitto.url, f"sqlite+aiosqlite:///{stack.workdir / 'picket.db'}")
    stack.agent(proxy.url)
    api = await ready(stack, http)
    guids = []
    for name in ("kept", "deleted while away"):
        guids.append(await api.create_monitor(http_monitor(name, f"{target.base}/ok")))

    async def assignments() -> float:
        return (await scrape(http, stack.agent_metrics))["picket_agent_assignments"]

    await wait_for(lambda: _equals(assignments, 2), "two assignments on the agent")
    await proxy.cut()

    async def disconnected() -> bool:
        return (await scrape(http, stack.agent_metrics))["picket_agent_mqtt_connected"] == 0

    await wait_for(disconnected, "the agent to lose the broker")
    status, _ = await api.call("DELETE", f"/api/v4/Monitor/{guids[1]}")
    assert status == 204
    assert await assignments() == 2  # it cannot know yet
    await proxy.start()
    await wait_for(lambda: _equals(assignments, 1), "the agent to drop the deleted monitor")
    await wait_for(lambda: _at_least(api, guids[0], 3), "the kept monitor to go on")
    await proxy.cut()


async def _equals(probe: Callable[[], Awaitable[float]], value: float) -> bool:
    return await probe() == value
