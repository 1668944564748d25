"""A DisableMonitoring maintenance period stops a real agent's checks on its own, with the
controller and the broker both down when the period begins and ends; checks resume at its end.
A DisableNotifications period keeps checking and flags the results."""

from __future__ import annotations

import datetime as dt
import time
from typing import Any

import aiohttp
import pytest

from shared.timefmt import parse
from tests.e2e.conftest import Stack, ready
from tests.helpers import Api, Mosquitto, Target, http_monitor, scrape, wait_for

pytestmark = pytest.mark.e2e

WINDOW_SECONDS = 6.0


def _utc(moment: float) -> str:
    return dt.datetime.fromtimestamp(moment, dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def _assignments_logged(stack: Stack, guid: str) -> int:
    """How often the agent has logged taking a new revision of the monitor."""
    text = (stack.workdir / "agent-1.log").read_text(errors="replace")
    return text.count(f"monitor {guid} (")


async def _scheduled(api: Api, guid: str) -> list[float]:
    return [parse(c["Attributes"]["ScheduledTime"]) for c in await api.checks(guid)]


async def test_disable_monitoring_needs_neither_controller_nor_broker(
    database_url: str,
    stack: Stack,
    mosquitto: Mosquitto,
    target: Target,
    http: aiohttp.ClientSession,
) -> None:
    controller = stack.controller(mosquitto.url, database_url)
    stack.agent(mosquitto.url)
    api = await ready(stack, http)
    guid = await api.create_monitor(http_monitor("maintained", f"{target.base}/ok"))

    async def some_checks() -> list[float] | None:
        found = await _scheduled(api, guid)
        return found if len(found) >= 2 else None

    await wait_for(some_checks, "the first checks")

    # a period from a few seconds ahead; if the agent got it too late, again further ahead
    lead = 4.0
    period_id: int | None = None
    for _attempt in range(4):
        known = _assignments_logged(stack, guid)
        start = float(int(time.time() + lead)) + 1.0  # whole seconds, as StartDateTime has
        end = start + WINDOW_SECONDS
        body = {
            "ScheduleMode": "OneTime",
            "StartDateTime": _utc(start),
            "EndDateTime": _utc(end),
            "MaintenanceType": "DisableMonitoring",
        }
        if period_id is None:
            status, created = await api.call(
                "POST", f"/api/v4/Monitor/{guid}/MaintenancePeriod", json=body
            )
            assert status == 201, created
            period_id = created["Id"]
        else:
            status, text = await api.call(
                "PUT", f"/api/v4/Monitor/{guid}/MaintenancePeriod/{period_id}", json=body
            )
            assert status == 204, text

        async def taken(known: int = known) -> bool:
            return _assignments_logged(stack, guid) > known

        await wait_for(taken, "the agent to take the monitor with its period")
        had_it_at = time.time()
        if had_it_at < start - 0.5:
            break
        lead *= 3
    else:
        pytest.fail("the agent never had the period before it began")

    # controller and broker go away before the period begins
    assert controller.stop() == 0
    mosquitto.kill()

    async def window_over() -> bool:
        return time.time() > end + 2.5

    await wait_for(window_over, "the period to end", within=lead + WINDOW_SECONDS + 30)
    skipped = await scrape(http, stack.agent_metrics)
    assert skipped['picket_agent_slots_skipped_total{reason="maintenance"}'] >= WINDOW_SECONDS - 1

    # back: the agent delivers what it checked meanwhile
    mosquitto.start()
    stack.controller(mosquitto.url, database_url)

    async def after_the_period() -> list[float] | None:
        try:
            found = await _scheduled(api, guid)
        except AssertionError:  # the controller is starting
            return None
        before = any(start - 2 <= s < start for s in found)
        return found if before and any(s >= end + 2 for s in found) else None

    # the outbox delivers what was checked while the broker was away, in its own time
    scheduled = await wait_for(after_the_period, "checks from before and after the period")
    inside = [s for s in scheduled if start <= s < end]
    assert inside == [], f"checks ran in the period {start}-{end}: {inside}"
    assert any(end <= s < end + 2 for s in scheduled), "checks did not resume at its end"


async def test_disable_notifications_keeps_checking_and_flags(
    stack: Stack,
    mosquitto: Mosquitto,
    target: Target,
    http: aiohttp.ClientSession,
) -> None:
    stack.controller(mosquitto.url, f"sqlite+aiosqlite:///{stack.workdir / 'picket.db'}")
    stack.agent(mosquitto.url)
    api = await ready(stack, http)
    guid = await api.create_monitor(http_monitor("noisy", f"{target.base}/status/500"))
    now = time.time()
    status, created = await api.call(
        "POST",
        f"/api/v4/Monitor/{guid}/MaintenancePeriod",
        json={
            "ScheduleMode": "OneTime",
            "StartDateTime": _utc(now - 3600),
            "EndDateTime": _utc(now + 3600),
            "MaintenanceType": "DisableNotifications",
        },
    )
    assert status == 201, created

    async def flagged() -> list[dict[str, Any]] | None:
        checks = [c["Attributes"] for c in await api.checks(guid)]
        marked = [a for a in checks if a["InMaintenance"]]
        return marked if len(marked) >= 2 else None

    for attributes in await wait_for(flagged, "flagged checks"):
        assert attributes["ErrorCode"] != 0 and attributes["HttpStatusCode"] == 500
