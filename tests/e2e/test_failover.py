"""Two agents in one checkpoint on one private broker: an agent lost silently (frozen: no
packet, no closed socket) has its monitors moved to its peer within 2 x keepalive; restarted,
only its own share comes back; an agent cut off from the broker that keeps checking gives
second results for slots its peer ran, stored as duplicate slots. Clock offsets are measured
on the way. Also: a failed check while the connectivity canary fails too is inconclusive."""

from __future__ import annotations

import os
import signal
import time
from typing import Any

import aiohttp
import pytest

from shared.timefmt import parse
from tests.e2e.conftest import Stack, ready
from tests.helpers import Api, Mosquitto, Proxy, Target, free_port, http_monitor, scrape, wait_for

pytestmark = pytest.mark.e2e

KEEPALIVE = 2  # seconds: the broker sends the last will after 3 s of silence
# Mosquitto 2.0 looks at its clients' keepalives only every 6 s (keepalive__check runs when
# `last_keepalive_check + 5 < now`, in whole seconds), so the will comes 1.5 x keepalive to
# 1.5 x keepalive + 6 s (+1 for whole seconds) after the last packet; Picket's part is the move
DETECTION = 1.5 * KEEPALIVE + 6 + 1


def _agent(stack: Stack, broker_url: str, agent_id: str, **extra: str) -> Any:
    return stack.agent(
        broker_url,
        agent_id,
        PICKET_PRESENCE_KEEPALIVE_SECONDS=str(KEEPALIVE),
        PICKET_METRICS_LISTEN=f"127.0.0.1:{free_port()}",
        PICKET_WORKERS="1",
        **extra,
    )


async def _agent_of_server(api: Api, cache: dict[int, str], server_id: int) -> str:
    if server_id not in cache:
        status, body = await api.call("GET", f"/api/v4/Checkpoint/Server/{server_id}")
        assert status == 200, body
        cache[server_id] = body["Data"]["Attributes"]["AgentId"]
    return cache[server_id]


async def _checks_by_agent(
    api: Api, guids: list[str], servers: dict[int, str]
) -> dict[str, list[tuple[str, dict[str, Any]]]]:
    """Each monitor's checks, oldest first, with the agent that ran each."""
    found: dict[str, list[tuple[str, dict[str, Any]]]] = {}
    for guid in guids:
        found[guid] = [
            (await _agent_of_server(api, servers, c["Attributes"]["ServerId"]), c["Attributes"])
            for c in await api.checks(guid)
        ]
    return found


async def test_failover_within_two_keepalives_and_only_a_share_returns(
    stack: Stack, mosquitto: Mosquitto, target: Target, http: aiohttp.ClientSession
) -> None:
    stack.controller(mosquitto.url, f"sqlite+aiosqlite:///{stack.workdir / 'picket.db'}")
    first = _agent(stack, mosquitto.url, "agent-a")
    _agent(stack, mosquitto.url, "agent-b")
    api = await ready(stack, http)
    interval = 5  # short, so a result from the peer soon follows the move
    guids = [
        await api.create_monitor(
            http_monitor(f"m{n}", f"{target.base}/ok", CheckIntervalSeconds=interval)
        )
        for n in range(16)
    ]
    servers: dict[int, str] = {}

    async def placed() -> dict[str, str] | None:
        checks = await _checks_by_agent(api, guids, servers)
        if not all(checks.values()):
            return None
        return {guid: runs[-1][0] for guid, runs in checks.items()}

    owner = await wait_for(placed, "a check of every monitor", 90)
    mine = {g for g, agent in owner.items() if agent == "agent-a"}
    theirs = set(guids) - mine
    assert mine and theirs, owner  # rendezvous shares 16 monitors out over both

    # the clock offset of each server, measured over MQTT, shown with the server and results
    async def offsets() -> list[float] | None:
        found = []
        for server_id in list(servers):
            _status, body = await api.call("GET", f"/api/v4/Checkpoint/Server/{server_id}")
            value = body["Data"]["Attributes"]["ClockOffsetMilliseconds"]
            if value is None:
                return None
            found.append(value)
        return found if len(found) == 2 else None

    for value in await wait_for(offsets, "clock offsets of both servers", 60):
        assert abs(value) < 1000  # one host, one clock: off by at most the round trip
    metrics = await scrape(http, stack.api + "/metrics")
    assert 'picket_agent_clock_offset_seconds{agent="agent-a"}' in metrics

    async def a_result_with_offset() -> bool:
        checks = await api.checks(guids[0])
        return "ClockOffsetMilliseconds" in checks[-1]["Attributes"]

    await wait_for(a_result_with_offset, "a result carrying its agent's clock offset", 30)

    # agent-a freezes: its connection stays open, silent; only the keepalive can tell
    os.kill(first.proc.pid, signal.SIGSTOP)
    lost = time.time()

    async def moved() -> float | None:
        values = await scrape(http, stack.api + "/metrics")
        done = values.get('picket_monitors_moved_total{reason="failover"}', 0)
        return time.time() if done >= len(mine) else None

    moved_at = await wait_for(moved, "agent-a's monitors to move to agent-b", 60)
    # the bound is the broker's detection (DETECTION; 2 x keepalive for keepalives of 14 s and
    # more) and Picket's move; a loaded machine gets a little more
    assert moved_at - lost <= DETECTION + 3, moved_at - lost
    values = await scrape(http, stack.api + "/metrics")
    assert values["picket_failovers_total"] == 1
    assert values['picket_monitors_moved_total{reason="failover"}'] == len(mine)

    async def peer_checks() -> dict[str, float] | None:
        checks = await _checks_by_agent(api, sorted(mine), servers)
        firsts = {}
        for guid, runs in checks.items():
            after = [parse(a["Timestamp"]) for agent, a in runs if agent == "agent-b"]
            after = [t for t in after if t > lost]
            if not after:
                return None
            firsts[guid] = min(after)
        return firsts

    firsts = await wait_for(peer_checks, "results of agent-a's monitors from agent-b", 60)
    # within the detection bound and the next slot: at most ceil(bound / interval) slots missed
    for first_at in firsts.values():
        assert first_at - lost <= DETECTION + interval + 3, first_at - lost

    # it dies (kill -9), and starts again: only its own share comes back
    os.kill(first.proc.pid, signal.SIGKILL)
    first.proc.wait()
    restarted = time.time()
    _agent(stack, mosquitto.url, "agent-a")

    async def returned() -> bool:
        values = await scrape(http, stack.api + "/metrics")
        return values.get('picket_monitors_moved_total{reason="return"}', 0) >= len(mine)

    await wait_for(returned, "agent-a's share to return to it", 60)

    async def back_on_a() -> bool:
        checks = await _checks_by_agent(api, sorted(mine), servers)
        return all(
            any(agent == "agent-a" and parse(a["Timestamp"]) > restarted for agent, a in runs)
            for runs in checks.values()
        )

    await wait_for(back_on_a, "agent-a to check its own monitors again", 60)
    values = await scrape(http, stack.api + "/metrics")
    assert values['picket_monitors_moved_total{reason="return"}'] == len(mine)
    # agent-b's own monitors never moved: no check of them from agent-a
    checks = await _checks_by_agent(api, sorted(theirs), servers)
    assert all(agent == "agent-b" for runs in checks.values() for agent, _ in runs)


async def test_an_agent_cut_off_gives_duplicate_slots_counted_once(
    stack: Stack, mosquitto: Mosquitto, target: Target, http: aiohttp.ClientSession
) -> None:
    proxy = Proxy(mosquitto.port)
    await proxy.start()
    stack.controller(mosquitto.url, f"sqlite+aiosqlite:///{stack.workdir / 'picket.db'}")
    _agent(stack, proxy.url, "agent-a")  # the one to be cut off
    _agent(stack, mosquitto.url, "agent-b")
    api = await ready(stack, http)
    guids = [
        await api.create_monitor(http_monitor(f"m{n}", f"{target.base}/ok", CheckIntervalSeconds=2))
        for n in range(8)
    ]
    servers: dict[int, str] = {}

    async def both_checking() -> dict[str, str] | None:
        checks = await _checks_by_agent(api, guids, servers)
        if not all(checks.values()):
            return None
        owner = {guid: runs[-1][0] for guid, runs in checks.items()}
        return owner if len(set(owner.values())) == 2 else None

    owner = await wait_for(both_checking, "checks of every monitor from both agents", 90)
    mine = sorted(g for g, agent in owner.items() if agent == "agent-a")

    # the partition: the broker sees agent-a go (its last will), agent-b takes its monitors,
    # and agent-a, which does not know yet, goes on checking them into its outbox
    await proxy.cut()

    async def taken_over() -> bool:
        values = await scrape(http, stack.api + "/metrics")
        return values.get('picket_monitors_moved_total{reason="failover"}', 0) >= len(mine)

    await wait_for(taken_over, "agent-b to take agent-a's monitors", 60)
    cut_at = time.time()

    async def peer_ran_some() -> bool:
        checks = await _checks_by_agent(api, mine, servers)
        return all(
            sum(1 for agent, a in runs if agent == "agent-b" and parse(a["Timestamp"]) > cut_at)
            >= 2
            for runs in checks.values()
        )

    await wait_for(peer_ran_some, "agent-b to run two slots of each", 60)
    await proxy.start()  # agent-a reconnects and delivers what it checked meanwhile
    try:
        await _duplicates_flagged(api, stack, mine, servers, http)
    finally:
        stack.stop_all()
        await proxy.cut()  # its relays end with the agent's connection


async def _duplicates_flagged(
    api: Api, stack: Stack, mine: list[str], servers: dict[int, str], http: aiohttp.ClientSession
) -> None:
    async def duplicates() -> list[dict[str, Any]] | None:
        checks = await _checks_by_agent(api, mine, servers)
        found = [a for runs in checks.values() for agent, a in runs if a["IsDuplicateSlot"]]
        return found or None

    flagged = await wait_for(duplicates, "duplicate slots from the agent that was cut off", 90)
    assert all(a["ErrorCode"] == 0 for a in flagged)
    values = await scrape(http, stack.api + "/metrics")
    assert values["picket_duplicate_slots_total"] >= len(flagged)
    # each slot of the checkpoint counts once: without the duplicates, no slot twice
    checks = await _checks_by_agent(api, mine, servers)
    for runs in checks.values():
        slots = [
            a["ScheduledTime"]
            for _agent_id, a in runs
            if not a["IsDuplicateSlot"] and not a.get("IsConfirmation")
        ]
        assert len(slots) == len(set(slots)), slots


async def test_a_failure_while_the_canary_fails_too_is_inconclusive(
    stack: Stack, mosquitto: Mosquitto, http: aiohttp.ClientSession
) -> None:
    closed = free_port()  # nothing listens: the target fails, and so does the canary
    stack.controller(mosquitto.url, f"sqlite+aiosqlite:///{stack.workdir / 'picket.db'}")
    stack.agent(mosquitto.url, PICKET_CANARY=f"127.0.0.1:{free_port()}")
    api = await ready(stack, http)
    guid = await api.create_monitor(http_monitor("down", f"http://127.0.0.1:{closed}/"))

    async def inconclusive() -> list[dict[str, Any]] | None:
        checks = await api.checks(guid)
        return checks if len(checks) >= 3 else None

    checks = await wait_for(inconclusive, "three checks", 60)
    for check in checks:
        attributes = check["Attributes"]
        assert attributes["ErrorCode"] == 4, attributes
        assert attributes["ErrorLevel"] == "NoError"
        assert attributes["IsInconclusive"] is True
        assert attributes["InconclusiveErrorCode"] == 110
        assert "canary" in attributes["ErrorDescription"]
    assert await api.checks(guid, Inconclusive="false") == []
    assert len(await api.checks(guid, Inconclusive="true")) >= 3
    assert await api.checks(guid, ErrorLevel="Unconfirmed") == []
    values = await scrape(http, stack.api + "/metrics")
    assert values['picket_inconclusive_slots_total{reason="canary"}'] >= 3
    assert values.get("picket_confirmation_requests_total", 0) == 0
    status, body = await api.call(
        "GET", f"/api/v4/MonitorCheck/Monitor/{guid}", params={"Inconclusive": "maybe"}
    )
    assert status == 400 and "Inconclusive" in str(body)
