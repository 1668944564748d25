"""Checkpoint and CheckpointRegion: regions, checkpoints with their servers' addresses, the
public IPv4/IPv6 lists, and Picket's fleet extensions for administrators (every server with
its state, Approve, Retire, PATCH of a checkpoint)."""

from __future__ import annotations

import time
from typing import Any
from xml.sax.saxutils import escape

from aiohttp import web
from pydantic import BaseModel, ConfigDict, Field, StrictBool, ValidationError

from controller.api.common import PREFIX, controller, fail, id_param, invalid, json_body, ok
from controller.api.common import principal as who_is
from controller.db.store import ServerRow, now_us
from shared.timefmt import iso

routes = web.RouteTableDef()

# the two address lists need no credentials (see controller/app.py)
PUBLIC_PATHS = frozenset({PREFIX + "/Checkpoint/Server/Ipv4", PREFIX + "/Checkpoint/Server/Ipv6"})


def _addresses_of(servers: list[ServerRow]) -> tuple[list[str], list[str]]:
    """The listed (upcoming or active) servers' addresses: pending and retired ones are not."""
    listed = [s for s in servers if s.listed()]
    return sorted({a for s in listed for a in s.ipv4}), sorted({a for s in listed for a in s.ipv6})


def _checkpoint_attributes(cp: dict[str, Any], servers: list[ServerRow]) -> dict[str, Any]:
    """Uptrends' attributes of a checkpoint, IPv6 addresses as plain strings."""
    mine = [s for s in servers if s.checkpoint_id == cp["id"]]
    ipv4, ipv6 = _addresses_of(mine)
    return {
        "CheckpointName": cp["name"],
        "Code": cp["code"],
        "Ipv4Addresses": ipv4,
        "IpV6Addresses": ipv6,
        "IsPrimaryCheckpoint": bool(cp["is_primary"]),
        "SupportsIpv6": bool(ipv6),
        "HasHighAvailability": sum(1 for s in mine if s.listed()) > 1,
    }


def _represent(cp: dict[str, Any], servers: list[ServerRow]) -> dict[str, Any]:
    mine = [s for s in servers if s.checkpoint_id == cp["id"]]
    return {
        "Id": cp["id"],
        "Type": "Checkpoint",
        "Attributes": {
            **_checkpoint_attributes(cp, servers),
            # Picket's
            "RegionId": cp["region_id"],
            "RegionName": cp["region_name"],
            "ServerIds": [s.id for s in mine],
            "ServersOnline": sum(1 for s in mine if s.online and s.state != "retired"),
        },
        "Links": {"Self": f"{PREFIX}/Checkpoint/{cp['id']}"},
    }


def _plain(cp: dict[str, Any], servers: list[ServerRow]) -> dict[str, Any]:
    """The un-enveloped Checkpoint of a region's listing (Uptrends spells it `Ipv6Addresses`)."""
    attributes = _checkpoint_attributes(cp, servers)
    attributes["Ipv6Addresses"] = attributes.pop("IpV6Addresses")
    return {"CheckpointId": cp["id"], **attributes}


def _meta() -> dict[str, Any]:
    return {"Timestamp": iso(time.time())}


def _admin(request: web.Request) -> None:
    if not who_is(request).is_admin:
        fail(403, "Only an operator with the administrator right may manage checkpoint servers")


# --- regions ------------------------------------------------------------------------------------


def _region(row: dict[str, Any]) -> dict[str, Any]:
    return {"Id": row["id"], "Name": row["name"], "ChildRegions": []}


async def _find_region(request: web.Request) -> dict[str, Any]:
    wanted = id_param(request, "checkpointRegionId")
    for row in await controller(request).store.regions():
        if row["id"] == wanted:
            return row
    fail(404, f"Checkpoint region {wanted} not found", "checkpointRegionId")


@routes.get(PREFIX + "/CheckpointRegion")
async def list_regions(request: web.Request) -> web.Response:
    return ok([_region(r) for r in await controller(request).store.regions()])


@routes.get(PREFIX + "/CheckpointRegion/{checkpointRegionId:\\d+}")
async def one_region(request: web.Request) -> web.Response:
    return ok(_region(await _find_region(request)))


@routes.get(PREFIX + "/CheckpointRegion/{checkpointRegionId:\\d+}/Checkpoint")
async def region_checkpoints(request: web.Request) -> web.Response:
    found = await _find_region(request)
    store = controller(request).store
    servers = await store.servers()
    checkpoints = [cp for cp in await store.checkpoints() if cp["region_id"] == found["id"]]
    return ok([_plain(cp, servers) for cp in checkpoints])


# --- checkpoints --------------------------------------------------------------------------------


@routes.get(PREFIX + "/Checkpoint")
async def list_checkpoints(request: web.Request) -> web.Response:
    ctl = controller(request)
    servers = await ctl.store.servers()
    data = [_represent(cp, servers) for cp in await ctl.store.checkpoints()]
    return ok({"Data": data, "Links": {"Self": f"{PREFIX}/Checkpoint"}, "Meta": _meta()})


@routes.get(PREFIX + "/Checkpoint/{checkpointId:\\d+}")
async def one_checkpoint(request: web.Request) -> web.Response:
    ctl = controller(request)
    wanted = id_param(request, "checkpointId")
    for cp in await ctl.store.checkpoints():
        if cp["id"] == wanted:
            data = _represent(cp, await ctl.store.servers())
            return ok(
                {"Data": data, "Links": {"Self": f"{PREFIX}/Checkpoint/{wanted}"}, "Meta": _meta()}
            )
    fail(404, f"Checkpoint {wanted} not found", "checkpointId")


class CheckpointPatch(BaseModel):
    model_config = ConfigDict(extra="forbid")
    Code: str | None = Field(default=None, min_length=1, max_length=100)
    IsPrimaryCheckpoint: StrictBool | None = None


@routes.patch(PREFIX + "/Checkpoint/{checkpointId:\\d+}")
async def patch_checkpoint(request: web.Request) -> web.Response:
    _admin(request)
    wanted = id_param(request, "checkpointId")
    try:
        patch = CheckpointPatch.model_validate(await json_body(request))
    except ValidationError as exc:
        raise invalid(exc) from None
    ctl = controller(request)
    if not await ctl.store.update_checkpoint(wanted, patch.Code, patch.IsPrimaryCheckpoint):
        fail(404, f"Checkpoint {wanted} not found", "checkpointId")
    if patch.IsPrimaryCheckpoint is not None:  # UsePrimaryCheckpointsOnly monitors may move
        await ctl.assigner.checkpoint_primary(wanted, patch.IsPrimaryCheckpoint)
    return web.Response(status=204)


# --- servers ------------------------------------------------------------------------------------


def _capabilities(srv: ServerRow, checkpoints: dict[int, dict[str, Any]], peers: int) -> list[str]:
    cp = checkpoints.get(srv.checkpoint_id)
    found = ["PrimaryServer"] if cp is None or cp["is_primary"] else []
    if srv.ipv6:
        found += ["IPv6", "NativeIPv6"]
    if peers > 1:
        found.append("HighAvailability")
    return found


async def _server_context(
    request: web.Request,
) -> tuple[list[ServerRow], dict[int, dict[str, Any]]]:
    store = controller(request).store
    return await store.servers(), {cp["id"]: cp for cp in await store.checkpoints()}


def _server_data(
    srv: ServerRow,
    servers: list[ServerRow],
    checkpoints: dict[int, dict[str, Any]],
    assigned: dict[str, int],
    now: int,
    clock_offset_ms: float | None,
) -> dict[str, Any]:
    peers = sum(1 for s in servers if s.checkpoint_id == srv.checkpoint_id and s.listed())
    count = assigned.get(srv.agent_id, 0)
    cp = checkpoints.get(srv.checkpoint_id, {})
    attributes = {
        "Ip4Address": srv.ipv4[0] if srv.ipv4 else None,
        "IpV6Address": srv.ipv6[0] if srv.ipv6 else None,
        "Capabilities": _capabilities(srv, checkpoints, peers),
        # Picket's
        "CheckpointId": srv.checkpoint_id,
        "CheckpointName": srv.checkpoint_name,
        "AgentId": srv.agent_id,
        "State": srv.shown_state(now),
        "Online": srv.online,
        "Ipv4Addresses": srv.ipv4,
        "Ipv6Addresses": srv.ipv6,
        "MonitorTypes": srv.probe_types,
        "AgentVersion": srv.version,
        "FirstSeen": iso(srv.first_seen_us / 1e6),
        "LastSeen": iso(srv.last_seen_us / 1e6),
        "ActivatesAt": (
            iso(srv.activate_after_us / 1e6)
            if srv.state == "upcoming" and srv.activate_after_us is not None
            else None
        ),
        "Capacity": srv.capacity,
        "AssignedMonitors": count,
        "Load": round(count / max(1, srv.capacity), 4),
        # the agent's clock minus the controller's (controller/clock.py); null until measured
        "ClockOffsetMilliseconds": clock_offset_ms,
        "RegionId": cp.get("region_id"),
    }
    return {
        "Id": srv.id,
        "Type": "CheckpointServer",
        "Attributes": attributes,
        "Links": {"Self": f"{PREFIX}/Checkpoint/Server/{srv.id}"},
    }


@routes.get(PREFIX + "/Checkpoint/Server")
async def list_servers(request: web.Request) -> web.Response:
    _admin(request)
    servers, checkpoints = await _server_context(request)
    ctl = controller(request)
    assigned = ctl.assigner.assigned_per_agent()
    now = now_us()
    data = [
        _server_data(s, servers, checkpoints, assigned, now, ctl.clock.offset_ms(s.agent_id))
        for s in servers
    ]
    return ok({"Data": data, "Links": {"Self": f"{PREFIX}/Checkpoint/Server"}, "Meta": _meta()})


def _one(
    srv: ServerRow, servers: list[ServerRow], checkpoints: dict[int, dict[str, Any]], ctl: Any
) -> web.Response:
    assigned = ctl.assigner.assigned_per_agent()
    offset = ctl.clock.offset_ms(srv.agent_id)
    data = _server_data(srv, servers, checkpoints, assigned, now_us(), offset)
    return ok({"Data": data, "Links": data["Links"], "Meta": _meta()})


@routes.get(PREFIX + "/Checkpoint/Server/{serverId:\\d+}")
async def one_server(request: web.Request) -> web.Response:
    wanted = id_param(request, "serverId")
    servers, checkpoints = await _server_context(request)
    for srv in servers:
        if srv.id == wanted:
            return _one(srv, servers, checkpoints, controller(request))
    fail(404, f"Checkpoint server {wanted} not found", "serverId")


async def _set_state(request: web.Request, state: str) -> web.Response:
    _admin(request)
    wanted = id_param(request, "serverId")
    ctl = controller(request)
    before = next((s.state for s in ctl.assigner.servers.values() if s.id == wanted), None)
    updated = await ctl.assigner.set_state(wanted, state)
    if updated is None:
        fail(404, f"Checkpoint server {wanted} not found", "serverId")
    await ctl.ingest.confirmers_changed()  # a confirmer retired is asked of no more
    if state == "retired" and before != "retired":
        await ctl.server_retired(updated)
    elif before == "retired" and state != "retired":
        await ctl.server_returned(updated)
    servers, checkpoints = await _server_context(request)
    srv = next(s for s in servers if s.id == wanted)
    return _one(srv, servers, checkpoints, ctl)


@routes.post(PREFIX + "/Checkpoint/Server/{serverId:\\d+}/Approve")
async def approve_server(request: web.Request) -> web.Response:
    """A pending or upcoming server takes checks now; a retired one returns."""
    return await _set_state(request, "active")


@routes.post(PREFIX + "/Checkpoint/Server/{serverId:\\d+}/Retire")
async def retire_server(request: web.Request) -> web.Response:
    """The server leaves the address lists, its monitors move to its peers, and its broker
    login, if enrolment made it, is deleted (retried until the broker has done it)."""
    return await _set_state(request, "retired")


async def _addresses(request: web.Request, family: str) -> web.Response:
    servers = await controller(request).store.servers()
    # upcoming servers' too: users open firewalls before a server runs checks
    ipv4, ipv6 = _addresses_of(servers)
    addresses = ipv4 if family == "Ipv4" else ipv6
    accept = request.headers.get("Accept", "")
    if "application/xml" in accept or "text/xml" in accept:
        items = "".join(f"<string>{escape(a)}</string>" for a in addresses)
        xml = (
            '<?xml version="1.0" encoding="utf-8"?>'
            f"<ListStringResponse><Data>{items}</Data>"
            f"<Links><Self>{PREFIX}/Checkpoint/Server/{family}</Self></Links></ListStringResponse>"
        )
        return web.Response(text=xml, content_type="application/xml")
    if "text/plain" in accept and "application/json" not in accept:
        return web.Response(text="".join(a + "\n" for a in addresses), content_type="text/plain")
    return ok(
        {
            "Data": addresses,
            "Links": {"Self": f"{PREFIX}/Checkpoint/Server/{family}"},
            "Meta": _meta(),
        }
    )


@routes.get(PREFIX + "/Checkpoint/Server/Ipv4")
async def ipv4_list(request: web.Request) -> web.Response:
    return await _addresses(request, "Ipv4")


@routes.get(PREFIX + "/Checkpoint/Server/Ipv6")
async def ipv6_list(request: web.Request) -> web.Response:
    return await _addresses(request, "Ipv6")
