"""Regions, checkpoints and servers as Uptrends has them, and the fleet's extensions: server
states (pending, upcoming, active, offline, retired), Approve, Retire, PATCH of a checkpoint,
the address lists, placement only on servers that can take checks, and the fleet metrics.
In-process over real localhost sockets, on SQLite, with no broker reachable."""

from __future__ import annotations

import base64
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import pytest
from aiohttp.test_utils import TestClient, TestServer

from controller.app import Controller, create_app
from controller.auth import hash_password
from controller.db.store import MonitorRow, Store
from controller.settings import ControllerSettings
from shared.messages import Hello, TimeReply
from tests.helpers import free_port, wait_for

PASSWORD = "unit-test-password"


def _auth(user: str, password: str) -> dict[str, str]:
    return {"Authorization": "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode()}


ADMIN = _auth("admin", PASSWORD)
BOB = _auth("bob", "bob-password")

Fleet = tuple[TestClient[Any, Any], Controller]
MakeFleet = Callable[..., Awaitable[Fleet]]


@pytest.fixture
async def make_fleet(tmp_path: Path) -> AsyncIterator[MakeFleet]:
    opened: list[tuple[TestClient[Any, Any], Store]] = []

    async def make(**settings: Any) -> Fleet:
        config = ControllerSettings(
            data_dir=tmp_path,
            admin_password=PASSWORD,
            broker_url=f"mqtt://127.0.0.1:{free_port()}",  # nobody there
            **settings,
        )
        store = await Store.open(config.resolved_database_url())
        await store.create_operator("guid-bob", "bob", "Bob", hash_password("bob-password"), False)
        ctl = Controller(config, store)
        client = TestClient(TestServer(create_app(ctl)))
        await client.start_server()
        opened.append((client, store))
        return client, ctl

    yield make
    for client, store in opened:
        await client.close()
        await store.close()


def hello(agent: str, checkpoint: str, region: str, v4: str, v6: str = "") -> Hello:
    return Hello(
        agent=agent,
        checkpoint=checkpoint,
        region=region,
        ipv4=[v4],
        ipv6=[v6] if v6 else [],
        version="1.2.3",
        probe_types=["Http", "Https"],
        capacity=100,
    )


MONITOR = MonitorRow(
    guid="11111111-1111-1111-1111-111111111111",
    name="m",
    monitor_type="Https",
    is_active=True,
    definition={
        "Name": "m",
        "MonitorType": "Https",
        "Url": "https://127.0.0.1:9/",
        "CheckInterval": 1,
    },
    revision="r1",
    created_us=0,
    modified_us=0,
)


async def get(client: TestClient[Any, Any], path: str, headers: dict[str, str] = ADMIN) -> Any:
    resp = await client.get("/api/v4" + path, headers=headers)
    assert resp.status == 200, (path, resp.status, await resp.text())
    return await resp.json()


async def test_regions_checkpoints_and_servers_have_uptrends_shapes(make_fleet: MakeFleet) -> None:
    client, ctl = await make_fleet()
    await ctl.assigner.on_hello(
        hello("ams-1", "Amsterdam", "Europe", "198.51.100.1", "2001:db8::1")
    )
    await ctl.assigner.on_hello(hello("ams-2", "Amsterdam", "Europe", "198.51.100.2"))
    await ctl.assigner.on_hello(hello("nyc-1", "New York", "North America", "198.51.100.3"))

    regions = await get(client, "/CheckpointRegion")
    assert [r["Name"] for r in regions] == ["Europe", "North America"]
    for r in regions:
        assert set(r) == {"Id", "Name", "ChildRegions"} and isinstance(r["Id"], int)
    europe = regions[0]["Id"]
    assert await get(client, f"/CheckpointRegion/{europe}") == regions[0]

    plain = await get(client, f"/CheckpointRegion/{europe}/Checkpoint")
    assert plain == [
        {
            "CheckpointId": plain[0]["CheckpointId"],
            "CheckpointName": "Amsterdam",
            "Code": "Amsterdam",
            "Ipv4Addresses": ["198.51.100.1", "198.51.100.2"],
            "Ipv6Addresses": ["2001:db8::1"],  # plain strings, Uptrends' form since 2023
            "IsPrimaryCheckpoint": True,
            "SupportsIpv6": True,
            "HasHighAvailability": True,
        }
    ]
    cp_id = plain[0]["CheckpointId"]
    one = await get(client, f"/Checkpoint/{cp_id}")
    attributes = one["Data"]["Attributes"]
    assert one["Data"]["Id"] == cp_id and one["Data"]["Type"] == "Checkpoint"
    assert attributes["IpV6Addresses"] == ["2001:db8::1"]
    assert attributes["RegionId"] == europe and attributes["RegionName"] == "Europe"
    listing = await get(client, "/Checkpoint")
    assert [c["Attributes"]["CheckpointName"] for c in listing["Data"]] == [
        "Amsterdam",
        "New York",
    ]

    server_id = ctl.assigner.servers["ams-1"].id
    srv = (await get(client, f"/Checkpoint/Server/{server_id}", headers=BOB))["Data"]
    assert srv["Id"] == server_id and srv["Type"] == "CheckpointServer"
    assert srv["Attributes"]["Ip4Address"] == "198.51.100.1"
    assert srv["Attributes"]["IpV6Address"] == "2001:db8::1"
    assert set(srv["Attributes"]["Capabilities"]) == {
        "PrimaryServer",
        "IPv6",
        "NativeIPv6",
        "HighAvailability",
    }

    for path, field in (
        ("/CheckpointRegion/999", "checkpointRegionId"),
        ("/CheckpointRegion/999/Checkpoint", "checkpointRegionId"),
        ("/Checkpoint/999", "checkpointId"),
        ("/Checkpoint/Server/999", "serverId"),
    ):
        resp = await client.get("/api/v4" + path, headers=ADMIN)
        assert resp.status == 404, path
        assert (await resp.json())["Messages"][0]["Field"] == field


async def test_server_list_approve_retire_and_patch_are_for_administrators(
    make_fleet: MakeFleet,
) -> None:
    client, ctl = await make_fleet()
    await ctl.assigner.on_hello(hello("ams-1", "Amsterdam", "Europe", "198.51.100.1"))
    server_id = ctl.assigner.servers["ams-1"].id
    cp_id = ctl.assigner.servers["ams-1"].checkpoint_id
    for method, path in (
        ("GET", "/Checkpoint/Server"),
        ("POST", f"/Checkpoint/Server/{server_id}/Approve"),
        ("POST", f"/Checkpoint/Server/{server_id}/Retire"),
        ("PATCH", f"/Checkpoint/{cp_id}"),
    ):
        resp = await client.request(method, "/api/v4" + path, headers=BOB, json={"Code": "x"})
        assert resp.status == 403, (method, path)

    servers = (await get(client, "/Checkpoint/Server"))["Data"]
    assert len(servers) == 1
    attributes = servers[0]["Attributes"]
    assert attributes["State"] == "active" and attributes["AgentId"] == "ams-1"
    assert attributes["AgentVersion"] == "1.2.3" and attributes["Capacity"] == 100
    assert attributes["AssignedMonitors"] == 0 and attributes["Load"] == 0
    assert attributes["ClockOffsetMilliseconds"] is None
    assert attributes["LastSeen"].endswith("Z")

    resp = await client.patch(
        f"/api/v4/Checkpoint/{cp_id}",
        headers=ADMIN,
        json={"Code": "AMS", "IsPrimaryCheckpoint": False},
    )
    assert resp.status == 204, await resp.text()
    attributes = (await get(client, f"/Checkpoint/{cp_id}"))["Data"]["Attributes"]
    assert attributes["Code"] == "AMS" and attributes["IsPrimaryCheckpoint"] is False
    srv = (await get(client, f"/Checkpoint/Server/{server_id}"))["Data"]["Attributes"]
    assert "PrimaryServer" not in srv["Capabilities"]
    for body, field in (
        ({"Code": ""}, "Code"),
        ({"IsPrimaryCheckpoint": "yes"}, "IsPrimaryCheckpoint"),
        ({"Name": "x"}, "Name"),
    ):
        resp = await client.patch(f"/api/v4/Checkpoint/{cp_id}", headers=ADMIN, json=body)
        assert resp.status == 400
        assert (await resp.json())["Messages"][0]["Field"] == field
    resp = await client.patch("/api/v4/Checkpoint/999", headers=ADMIN, json={"Code": "x"})
    assert resp.status == 404
    resp = await client.post("/api/v4/Checkpoint/Server/999/Retire", headers=ADMIN)
    assert resp.status == 404


async def test_upcoming_server_is_listed_at_once_and_takes_checks_after_the_delay(
    make_fleet: MakeFleet,
) -> None:
    client, ctl = await make_fleet(server_activation_seconds=2)
    ctl.assigner.monitors[MONITOR.guid] = MONITOR
    await ctl.assigner.on_hello(
        hello("ams-1", "Amsterdam", "Europe", "198.51.100.1", "2001:db8::1")
    )
    srv = ctl.assigner.servers["ams-1"]
    assert srv.state == "upcoming"
    assert not srv.can_take_checks(time.time_ns() // 1000)
    assert ctl.assigner.placement(MONITOR) == set()  # no checks yet
    assert (await get(client, "/Checkpoint/Server/Ipv4", headers={}))["Data"] == ["198.51.100.1"]
    assert (await get(client, "/Checkpoint/Server/Ipv6", headers={}))["Data"] == ["2001:db8::1"]
    listed = (await get(client, "/Checkpoint/Server"))["Data"][0]["Attributes"]
    assert listed["State"] == "upcoming" and listed["ActivatesAt"]

    async def active() -> bool:  # the controller's activation task does it
        return ctl.assigner.servers["ams-1"].state == "active"

    await wait_for(active, "the upcoming server to become active", within=30)
    assert ctl.assigner.placement(MONITOR) == {"ams-1"}
    listed = (await get(client, "/Checkpoint/Server"))["Data"][0]["Attributes"]
    assert listed["State"] == "active" and listed["ActivatesAt"] is None
    # kept across a restart of the controller (stored, not only in memory)
    assert (await ctl.store.server_by_agent("ams-1")).state == "active"  # type: ignore[union-attr]


async def test_upcoming_server_can_be_approved_early(make_fleet: MakeFleet) -> None:
    client, ctl = await make_fleet(server_activation_seconds=86_400)
    ctl.assigner.monitors[MONITOR.guid] = MONITOR
    await ctl.assigner.on_hello(hello("ams-1", "Amsterdam", "Europe", "198.51.100.1"))
    assert ctl.assigner.placement(MONITOR) == set()
    server_id = ctl.assigner.servers["ams-1"].id
    resp = await client.post(f"/api/v4/Checkpoint/Server/{server_id}/Approve", headers=ADMIN)
    assert resp.status == 200
    assert (await resp.json())["Data"]["Attributes"]["State"] == "active"
    assert ctl.assigner.placement(MONITOR) == {"ams-1"}


async def test_pending_server_waits_for_approval(make_fleet: MakeFleet) -> None:
    client, ctl = await make_fleet(require_approval=True)
    ctl.assigner.monitors[MONITOR.guid] = MONITOR
    await ctl.assigner.on_hello(hello("ams-1", "Amsterdam", "Europe", "198.51.100.1"))
    assert ctl.assigner.servers["ams-1"].state == "pending"
    assert ctl.assigner.placement(MONITOR) == set()
    assert (await get(client, "/Checkpoint/Server/Ipv4", headers={}))["Data"] == []
    server_id = ctl.assigner.servers["ams-1"].id
    srv = (await get(client, f"/Checkpoint/Server/{server_id}"))["Data"]["Attributes"]
    assert srv["State"] == "pending"
    # a second hello does not make it active
    await ctl.assigner.on_hello(hello("ams-1", "Amsterdam", "Europe", "198.51.100.1"))
    assert ctl.assigner.servers["ams-1"].state == "pending"

    resp = await client.post(f"/api/v4/Checkpoint/Server/{server_id}/Approve", headers=ADMIN)
    assert resp.status == 200
    assert ctl.assigner.placement(MONITOR) == {"ams-1"}
    assert (await get(client, "/Checkpoint/Server/Ipv4", headers={}))["Data"] == ["198.51.100.1"]


async def test_an_enrolled_agent_needs_no_second_approval(make_fleet: MakeFleet) -> None:
    _client, ctl = await make_fleet(require_approval=True)
    await ctl.store.create_enrolment("e" * 64, "Amsterdam", "Europe", 2**62)
    assert (await ctl.store.use_enrolment("e" * 64, "ams-1", "k"))[0] == "ok"
    await ctl.on_hello(hello("ams-1", "Amsterdam", "Europe", "198.51.100.1"))
    await ctl.on_hello(hello("ams-2", "Amsterdam", "Europe", "198.51.100.2"))
    assert ctl.assigner.servers["ams-1"].state == "active"
    assert ctl.assigner.servers["ams-2"].state == "pending"
    # and its token fixed its checkpoint
    await ctl.on_hello(hello("ams-1", "Elsewhere", "Europe", "198.51.100.1"))
    assert ctl.assigner.servers["ams-1"].checkpoint_name == "Amsterdam"


async def test_retired_server_leaves_the_lists_and_takes_no_checks(make_fleet: MakeFleet) -> None:
    client, ctl = await make_fleet()
    ctl.assigner.monitors[MONITOR.guid] = MONITOR
    await ctl.assigner.on_hello(hello("ams-1", "Amsterdam", "Europe", "198.51.100.1"))
    await ctl.assigner.on_hello(hello("ams-2", "Amsterdam", "Europe", "198.51.100.2"))
    assert len(ctl.assigner.placement(MONITOR)) == 1
    chosen = next(iter(ctl.assigner.placement(MONITOR)))
    other = "ams-2" if chosen == "ams-1" else "ams-1"
    server_id = ctl.assigner.servers[chosen].id
    resp = await client.post(f"/api/v4/Checkpoint/Server/{server_id}/Retire", headers=ADMIN)
    assert resp.status == 200
    assert (await resp.json())["Data"]["Attributes"]["State"] == "retired"
    assert ctl.assigner.placement(MONITOR) == {other}
    addresses = (await get(client, "/Checkpoint/Server/Ipv4", headers={}))["Data"]
    assert addresses == [ctl.assigner.servers[other].ipv4[0]]
    cp = (await get(client, "/Checkpoint"))["Data"][0]["Attributes"]
    assert cp["HasHighAvailability"] is False
    # its hello again does not bring it back; an approval does
    await ctl.assigner.on_hello(hello(chosen, "Amsterdam", "Europe", "198.51.100.9"))
    assert ctl.assigner.servers[chosen].state == "retired"
    assert ctl.assigner.placement(MONITOR) == {other}


async def test_fleet_metrics(make_fleet: MakeFleet) -> None:
    client, ctl = await make_fleet(require_approval=True)
    await ctl.assigner.on_hello(hello("ams-1", "Amsterdam", "Europe", "198.51.100.1"))
    await ctl.assigner.on_hello(hello("ams-2", "Amsterdam", "Europe", "198.51.100.2"))
    await ctl.assigner.set_state(ctl.assigner.servers["ams-2"].id, "active")
    ctl.assigner._published[(MONITOR.guid, "ams-2")] = "r1"  # as a publish would record it
    resp = await client.get("/metrics")
    text = await resp.text()
    assert 'picket_servers{checkpoint="Amsterdam",state="pending"} 1.0' in text
    assert 'picket_servers{checkpoint="Amsterdam",state="active"} 1.0' in text
    assert 'picket_assignments{agent="ams-2"} 1.0' in text
    assert 'picket_assignments{agent="ams-1"} 0.0' in text


async def test_a_retired_server_leaves_the_per_agent_metrics(make_fleet: MakeFleet) -> None:
    """Its assignment count, clock offset and round trip series go, and so do its clock
    samples; it is no longer sampled. The other agent's series stay."""
    client, ctl = await make_fleet()
    for agent, v4 in (("ams-1", "198.51.100.1"), ("ams-2", "198.51.100.2")):
        await ctl.assigner.on_hello(hello(agent, "Amsterdam", "Europe", v4))
        await ctl.assigner.on_state(agent, True)
        await ctl.clock.probe(agent)  # publish refused (no broker): the request is still noted
        nonce = ctl.clock._pending[agent][0]
        reply = TimeReply(nonce=nonce, agent_time=time.time())
        ctl.clock.on_reply(agent, reply.model_dump_json().encode(), time.time())
    text = await (await client.get("/metrics")).text()
    for agent in ("ams-1", "ams-2"):
        assert f'picket_assignments{{agent="{agent}"}}' in text
        assert f'picket_agent_clock_offset_seconds{{agent="{agent}"}}' in text
        assert f'picket_agent_clock_round_trip_seconds{{agent="{agent}"}}' in text
    assert ctl.clock.offset_ms("ams-1") is not None

    server_id = ctl.assigner.servers["ams-1"].id
    resp = await client.post(f"/api/v4/Checkpoint/Server/{server_id}/Retire", headers=ADMIN)
    assert resp.status == 200
    text = await (await client.get("/metrics")).text()
    assert 'agent="ams-1"' not in text, text
    assert 'picket_agent_clock_offset_seconds{agent="ams-2"}' in text
    assert 'picket_assignments{agent="ams-2"}' in text
    assert ctl.clock.offset_ms("ams-1") is None
    assert ctl.online_agents() == ["ams-2"]


async def test_refused_hellos_are_counted_each_and_logged_rarely(
    make_fleet: MakeFleet, caplog: pytest.LogCaptureFixture
) -> None:
    """An enrolled agent naming another checkpoint than its token fixed, again and again: every
    hello counted, the log line rate-limited (shared.logs.LogLimit: one per 10 s)."""
    client, ctl = await make_fleet()
    await ctl.store.create_enrolment("e" * 64, "Amsterdam", "Europe", 2**62)
    assert (await ctl.store.use_enrolment("e" * 64, "ams-1", "k"))[0] == "ok"
    started = time.monotonic()
    for _ in range(100):
        await ctl.on_hello(hello("ams-1", "Elsewhere", "Europe", "198.51.100.1"))
    elapsed = time.monotonic() - started
    lines = [r for r in caplog.records if "hello of agent ams-1 refused" in r.getMessage()]
    assert 1 <= len(lines) <= 1 + int(elapsed // 10), len(lines)
    assert "ams-1" not in ctl.assigner.servers
    metrics = await (await client.get("/metrics")).text()
    assert 'picket_hellos_refused_total{field="checkpoint"} 100.0' in metrics
