"""Monitor groups over the REST API, on SQLite and PostgreSQL: the 13 /MonitorGroup operations,
the built-in All Monitors group, the group listings of /Monitor and /MonitorCheck, and
Start/StopAllMonitors reaching the placement (the retained assignments on a real broker)."""

from __future__ import annotations

import asyncio
import base64
import contextlib
import uuid
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiomqtt
import pytest
from aiohttp.test_utils import TestClient

from controller import maintenance
from controller.app import Controller
from shared import topics
from shared.messages import Hello
from tests.helpers import Mosquitto, controller_client, wait_for

PASSWORD = "unit-test-password"
ADMIN = {"Authorization": "Basic " + base64.b64encode(f"admin:{PASSWORD}".encode()).decode()}
API = "/api/v4"


def _monitor(name: str, **fields: Any) -> dict[str, Any]:
    return {
        "Name": name,
        "MonitorType": "Https",
        "Url": "https://127.0.0.1:9/health",
        "CheckInterval": 1,
        **fields,
    }


@pytest.fixture
async def api(
    tmp_path: Path, database_url: str
) -> AsyncIterator[tuple[TestClient[Any, Any], Controller]]:
    async with controller_client(tmp_path, PASSWORD, database_url=database_url) as parts:
        yield parts


async def call(
    client: TestClient[Any, Any], method: str, path: str, body: Any = None, status: int = 200
) -> Any:
    resp = await client.request(method, API + path, json=body, headers=ADMIN)
    text = await resp.text()
    assert resp.status == status, (method, path, resp.status, text)
    return await resp.json() if text and resp.content_type == "application/json" else None


async def error(
    client: TestClient[Any, Any], method: str, path: str, body: Any, status: int
) -> tuple[str | None, str]:
    found = await call(client, method, path, body, status)
    message = found["Messages"][0]
    return message["Field"], message["Message"]


async def new_monitor(client: TestClient[Any, Any], name: str, **fields: Any) -> str:
    created = await call(client, "POST", "/Monitor", _monitor(name, **fields), 201)
    return str(created["MonitorGuid"])


async def the_all_group(client: TestClient[Any, Any]) -> dict[str, Any]:
    groups = await call(client, "GET", "/MonitorGroup")
    (found,) = [g for g in groups if g["IsAll"]]
    return dict(found)


async def test_group_crud_and_members(api: tuple[TestClient[Any, Any], Controller]) -> None:
    client, ctl = api
    everything = await the_all_group(client)
    assert everything["Description"] == "All Monitors"
    uuid.UUID(everything["MonitorGroupGuid"])

    created = await call(client, "POST", "/MonitorGroup", {"Description": "web"}, 201)
    guid = created["MonitorGroupGuid"]
    assert created == {"MonitorGroupGuid": guid, "Description": "web", "IsAll": False}
    assert await call(client, "GET", f"/MonitorGroup/{guid}") == created
    assert await call(client, "GET", f"/MonitorGroup/{guid.upper()}") == created
    groups = await call(client, "GET", "/MonitorGroup")
    assert groups == [everything, created]  # All Monitors first

    # PUT renames (a GET body sent back works: the guid and IsAll false may be in it)
    await call(client, "PUT", f"/MonitorGroup/{guid}", {**created, "Description": "www"}, 204)
    assert (await call(client, "GET", f"/MonitorGroup/{guid}"))["Description"] == "www"

    a = await new_monitor(client, "a")
    b = await new_monitor(client, "b")
    assert await call(client, "GET", f"/MonitorGroup/{guid}/Member") == []
    assert await call(client, "POST", f"/MonitorGroup/{guid}/Member/{a}", status=201) is None
    await call(client, "POST", f"/MonitorGroup/{guid}/Member/{a}", status=201)  # again: one
    await call(client, "POST", f"/MonitorGroup/{guid}/Member/{b.upper()}", status=201)
    assert await call(client, "GET", f"/MonitorGroup/{guid}/Member") == [
        {"MonitorGuid": a},
        {"MonitorGuid": b},
    ]
    all_guid = everything["MonitorGroupGuid"]
    assert await call(client, "GET", f"/MonitorGroup/{all_guid}/Member") == [
        {"MonitorGuid": a},
        {"MonitorGuid": b},
    ]
    assert await call(client, "GET", f"/Monitor/{a}/MonitorGroup") == [all_guid, guid]
    listed = await call(client, "GET", f"/Monitor/MonitorGroup/{guid}?filter=Name")
    assert listed == [{"Name": "a"}, {"Name": "b"}]
    # the alerting side's question: which monitors does a group hold
    assert await maintenance.group_monitors(ctl.store, guid) == [a, b]
    assert await maintenance.group_monitors(ctl.store, all_guid) == [a, b]
    assert await maintenance.group_monitors(ctl.store, str(uuid.uuid4())) is None

    await call(client, "DELETE", f"/MonitorGroup/{guid}/Member/{a}", status=204)
    assert await call(client, "GET", f"/MonitorGroup/{guid}/Member") == [{"MonitorGuid": b}]
    field, _ = await error(client, "DELETE", f"/MonitorGroup/{guid}/Member/{a}", None, 404)
    assert field == "monitorGuid"

    # a deleted monitor leaves its groups
    await call(client, "DELETE", f"/Monitor/{b}", status=204)
    assert await call(client, "GET", f"/MonitorGroup/{guid}/Member") == []
    assert await call(client, "GET", f"/MonitorGroup/{all_guid}/Member") == [{"MonitorGuid": a}]

    await call(client, "DELETE", f"/MonitorGroup/{guid}", status=204)
    field, _ = await error(client, "GET", f"/MonitorGroup/{guid}", None, 404)
    assert field == "monitorGroupGuid"
    assert await call(client, "GET", f"/Monitor/{a}/MonitorGroup") == [all_guid]


async def test_all_monitors_group_cannot_be_changed(
    api: tuple[TestClient[Any, Any], Controller],
) -> None:
    client, _ = api
    everything = await the_all_group(client)
    all_guid = everything["MonitorGroupGuid"]
    a = await new_monitor(client, "a")
    for method, path, body in [
        ("PUT", f"/MonitorGroup/{all_guid}", {"Description": "mine"}),
        ("DELETE", f"/MonitorGroup/{all_guid}", None),
        ("POST", f"/MonitorGroup/{all_guid}/Member/{a}", None),
        ("DELETE", f"/MonitorGroup/{all_guid}/Member/{a}", None),
    ]:
        field, message = await error(client, method, path, body, 400)
        assert field == "monitorGroupGuid" and "All Monitors" in message, (method, path)
    assert await the_all_group(client) == everything
    # a second IsAll group cannot be made
    field, _ = await error(
        client, "POST", "/MonitorGroup", {"Description": "x", "IsAll": True}, 400
    )
    assert field == "IsAll"


async def test_bad_bodies_and_unknown_ids(api: tuple[TestClient[Any, Any], Controller]) -> None:
    client, _ = api
    group = (await call(client, "POST", "/MonitorGroup", {"Description": "g"}, 201))[
        "MonitorGroupGuid"
    ]
    for body, field in [
        ({}, "Description"),
        ({"Description": ""}, "Description"),
        ({"Description": "   "}, "Description"),
        ({"Description": 5}, "Description"),
        ({"Description": "x" * 201}, "Description"),
        ({"Description": "g"}, "Description"),  # taken
        ({"Description": "h", "Colour": "red"}, "Colour"),
        ({"Description": "h", "BasicMonitorQuota": 5}, "BasicMonitorQuota"),
        ({"Description": "h", "IsQuotaUnlimited": False}, "IsQuotaUnlimited"),
    ]:
        found, _ = await error(client, "POST", "/MonitorGroup", body, 400)
        assert found == field, body
    # quota fields left null, as a round trip sends them, are fine
    await call(
        client,
        "POST",
        "/MonitorGroup",
        {"Description": "h", "IsQuotaUnlimited": True, "BasicMonitorQuota": None},
        201,
    )
    resp = await client.post(f"{API}/MonitorGroup", data=b"[1]", headers=ADMIN)
    assert resp.status == 400
    found, _ = await error(
        client, "PUT", f"/MonitorGroup/{group}", {"Description": "h"}, 400
    )  # taken by the second group
    assert found == "Description"
    found, _ = await error(
        client,
        "PUT",
        f"/MonitorGroup/{group}",
        {"Description": "k", "MonitorGroupGuid": str(uuid.uuid4())},
        400,
    )
    assert found == "MonitorGroupGuid"

    nobody = str(uuid.uuid4())
    a = await new_monitor(client, "a")
    for method, path in [
        ("GET", f"/MonitorGroup/{nobody}"),
        ("PUT", f"/MonitorGroup/{nobody}"),
        ("DELETE", f"/MonitorGroup/{nobody}"),
        ("GET", f"/MonitorGroup/{nobody}/Member"),
        ("POST", f"/MonitorGroup/{nobody}/Member/{a}"),
        ("DELETE", f"/MonitorGroup/{nobody}/Member/{a}"),
        ("POST", f"/MonitorGroup/{nobody}/StartAllMonitors"),
        ("POST", f"/MonitorGroup/{nobody}/StopAllMonitors"),
        ("POST", f"/MonitorGroup/{nobody}/StartAllMonitorAlerts"),
        ("POST", f"/MonitorGroup/{nobody}/StopAllMonitorAlerts"),
        ("GET", f"/Monitor/MonitorGroup/{nobody}"),
        ("GET", f"/MonitorCheck/MonitorGroup/{nobody}"),
        ("GET", "/MonitorGroup/not-a-guid"),
    ]:
        found, _ = await error(client, method, path, {"Description": "z"}, 404)
        assert found == "monitorGroupGuid", (method, path)
    for method, path in [
        ("POST", f"/MonitorGroup/{group}/Member/{nobody}"),
        ("DELETE", f"/MonitorGroup/{group}/Member/{nobody}"),
        ("GET", f"/Monitor/{nobody}/MonitorGroup"),
    ]:
        found, _ = await error(client, method, path, None, 404)
        assert found == "monitorGuid", (method, path)
    period = {
        "ScheduleMode": "Daily",
        "StartTime": "01:00",
        "EndTime": "02:00",
        "MaintenanceType": "DisableNotifications",
    }
    found, _ = await error(
        client, "POST", f"/MonitorGroup/{nobody}/AddMaintenancePeriodToAllMembers", period, 404
    )
    assert found == "monitorGroupGuid"
    found, _ = await error(
        client,
        "POST",
        f"/MonitorGroup/{group}/AddMaintenancePeriodToAllMembers",
        {**period, "ScheduleMode": "Hourly"},
        400,
    )
    assert found == "ScheduleMode"


async def test_alert_switches_and_maintenance_for_all_members(
    api: tuple[TestClient[Any, Any], Controller],
) -> None:
    client, _ = api
    group = (await call(client, "POST", "/MonitorGroup", {"Description": "g"}, 201))[
        "MonitorGroupGuid"
    ]
    a = await new_monitor(client, "a")
    b = await new_monitor(client, "b")
    outside = await new_monitor(client, "outside")
    for m in (a, b):
        await call(client, "POST", f"/MonitorGroup/{group}/Member/{m}", status=201)

    await call(client, "POST", f"/MonitorGroup/{group}/StopAllMonitorAlerts", status=204)
    for m, expected in ((a, False), (b, False), (outside, True)):
        assert (await call(client, "GET", f"/Monitor/{m}"))["GenerateAlert"] is expected
    await call(client, "POST", f"/MonitorGroup/{group}/StartAllMonitorAlerts", status=204)
    for m in (a, b):
        assert (await call(client, "GET", f"/Monitor/{m}"))["GenerateAlert"] is True

    period = {
        "ScheduleMode": "Weekly",
        "WeekDay": "Sunday",
        "StartTime": "23:00",
        "EndTime": "01:00",
        "MaintenanceType": "DisableMonitoring",
        "Description": "patching",
    }
    await call(
        client, "POST", f"/MonitorGroup/{group}/AddMaintenancePeriodToAllMembers", period, 204
    )
    got_a = await call(client, "GET", f"/Monitor/{a}/MaintenancePeriod")
    got_b = await call(client, "GET", f"/Monitor/{b}/MaintenancePeriod")
    assert await call(client, "GET", f"/Monitor/{outside}/MaintenancePeriod") == []
    assert len(got_a) == len(got_b) == 1 and got_a[0]["Id"] != got_b[0]["Id"]
    for got in (got_a[0], got_b[0]):
        assert {k: got[k] for k in period} == period and got["TimeZone"] == "Etc/UTC"

    # the All Monitors group reaches every monitor
    all_guid = (await the_all_group(client))["MonitorGroupGuid"]
    await call(client, "POST", f"/MonitorGroup/{all_guid}/StopAllMonitorAlerts", status=204)
    for m in (a, b, outside):
        assert (await call(client, "GET", f"/Monitor/{m}"))["GenerateAlert"] is False


async def test_group_checks_are_paged_together(
    api: tuple[TestClient[Any, Any], Controller],
) -> None:
    client, ctl = api
    group = (await call(client, "POST", "/MonitorGroup", {"Description": "g"}, 201))[
        "MonitorGroupGuid"
    ]
    a = await new_monitor(client, "a")
    b = await new_monitor(client, "b")
    c = await new_monitor(client, "c")
    for m in (a, b):
        await call(client, "POST", f"/MonitorGroup/{group}/Member/{m}", status=201)
    base = 1_700_000_000_000_000
    rows = []
    for i in range(9):
        guid = (a, b, c)[i % 3]
        rows.append(
            {
                "uid": uuid.uuid4().hex,
                "monitor_guid": guid,
                "server_id": None,
                "ts_us": base + i * 1_000_000,
                "scheduled_us": base + i * 1_000_000,
                "error_level": 2 if i == 4 else 0,
                "error_code": 1 if i == 4 else 0,
                "attributes": "{}",
                "response_body": None,
                "details": None,
                "check_kind": 0,
            }
        )
    await ctl.store.insert_checks(rows)

    async def pages(group_guid: str, **query: str) -> list[dict[str, Any]]:
        found: list[dict[str, Any]] = []
        params = {"Take": "2", "PresetPeriod": "All", **query}
        while True:
            page = await call(
                client,
                "GET",
                f"/MonitorCheck/MonitorGroup/{group_guid}?"
                + "&".join(f"{k}={v}" for k, v in params.items()),
            )
            found.extend(page["Data"])
            if "Next" not in page["Cursors"]:
                return found
            params["Cursor"] = page["Cursors"]["Next"]

    newest_first = await pages(group)
    assert [d["Attributes"]["MonitorGuid"] for d in newest_first] == [b, a, b, a, b, a]
    stamps = [d["Attributes"]["Timestamp"] for d in newest_first]
    assert stamps == sorted(stamps, reverse=True)
    assert all(d["Attributes"]["InMaintenance"] is False for d in newest_first)
    oldest_first = await pages(group, Sorting="Ascending")
    assert [d["Id"] for d in oldest_first] == [d["Id"] for d in reversed(newest_first)]
    errors = await pages(group, ErrorLevel="Confirmed")
    assert [d["Attributes"]["MonitorGuid"] for d in errors] == [b]
    all_guid = (await the_all_group(client))["MonitorGroupGuid"]
    assert len(await pages(all_guid)) == 9
    found, _ = await error(client, "GET", f"/MonitorCheck/MonitorGroup/{group}?Take=101", None, 400)
    assert found == "Take"


# --- Start/StopAllMonitors reach the placement: the retained assignments on a real broker ---


def _hello(agent: str) -> Hello:
    return Hello(
        agent=agent,
        checkpoint="Amsterdam",
        region="Europe",
        ipv4=["198.51.100.1"],
        version="1.2.3",
        probe_types=["Http", "Https"],
        capacity=100,
    )


async def test_start_and_stop_all_monitors_reach_the_agents(
    tmp_path: Path, database_url: str, mosquitto: Mosquitto
) -> None:
    async with (
        controller_client(
            tmp_path, PASSWORD, database_url=database_url, broker_url=mosquitto.url
        ) as (client, ctl),
        aiomqtt.Client("127.0.0.1", port=mosquitto.port, identifier="watcher") as watcher,
    ):
        await asyncio.wait_for(ctl.bus.session.connected.wait(), 30)
        await ctl.assigner.on_hello(_hello("agent-1"))
        group = (await call(client, "POST", "/MonitorGroup", {"Description": "g"}, 201))[
            "MonitorGroupGuid"
        ]
        a = await new_monitor(client, "a")
        b = await new_monitor(client, "b")
        outside = await new_monitor(client, "outside")
        for m in (a, b):
            await call(client, "POST", f"/MonitorGroup/{group}/Member/{m}", status=201)

        retained: dict[str, bytes] = {}

        async def listen() -> None:
            await watcher.subscribe(topics.assignments_of("agent-1"), qos=1)
            async for message in watcher.messages:
                retained[str(message.topic).rsplit("/", 1)[1]] = bytes(message.payload or b"")

        listener = asyncio.create_task(listen())
        try:

            async def assigned(*guids: str) -> bool:
                return all(retained.get(g) for g in guids)

            await wait_for(lambda: assigned(a, b, outside), "the three assignments")
            await call(client, "POST", f"/MonitorGroup/{group}/StopAllMonitors", status=204)

            async def removed() -> bool:
                return retained.get(a) == b"" and retained.get(b) == b""

            await wait_for(removed, "the group's assignments removed")
            assert retained[outside]
            assert not ctl.assigner.placement(ctl.assigner.monitors[a])
            assert (await call(client, "GET", f"/Monitor/{a}"))["IsActive"] is False

            await call(client, "POST", f"/MonitorGroup/{group}/StartAllMonitors", status=204)
            await wait_for(lambda: assigned(a, b), "the group's assignments back")
            assert ctl.assigner.placement(ctl.assigner.monitors[b]) == {"agent-1"}
            assert (await call(client, "GET", f"/Monitor/{b}"))["IsActive"] is True
        finally:
            listener.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await listener
