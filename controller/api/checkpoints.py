"""Checkpoint: the checkpoints with their servers' addresses, and the public IPv4/IPv6 lists."""

from __future__ import annotations

import time
from typing import Any
from xml.sax.saxutils import escape

from aiohttp import web

from controller.api.common import PREFIX, controller, fail, id_param, ok
from controller.db.store import ServerRow
from shared.timefmt import iso

routes = web.RouteTableDef()

# the two address lists need no credentials (see controller/app.py)
PUBLIC_PATHS = frozenset({PREFIX + "/Checkpoint/Server/Ipv4", PREFIX + "/Checkpoint/Server/Ipv6"})


def _represent(cp: dict[str, Any], servers: list[ServerRow]) -> dict[str, Any]:
    mine = [s for s in servers if s.checkpoint_id == cp["id"]]
    ipv4 = sorted({a for s in mine for a in s.ipv4})
    ipv6 = sorted({a for s in mine for a in s.ipv6})
    return {
        "Id": cp["id"],
        "Type": "Checkpoint",
        "Attributes": {
            "CheckpointName": cp["name"],
            "Code": cp["code"],
            "Ipv4Addresses": ipv4,
            "IpV6Addresses": ipv6,
            "IsPrimaryCheckpoint": True,
            "SupportsIpv6": bool(ipv6),
            "HasHighAvailability": len(mine) > 1,
            "RegionId": cp["region_id"],
            "RegionName": cp["region_name"],
            "ServerIds": [s.id for s in mine],
            "ServersOnline": sum(1 for s in mine if s.online),
        },
        "Links": {"Self": f"{PREFIX}/Checkpoint/{cp['id']}"},
    }


def _meta() -> dict[str, Any]:
    return {"Timestamp": iso(time.time())}


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


@routes.get(PREFIX + "/Checkpoint/Server/{serverId:\\d+}")
async def one_server(request: web.Request) -> web.Response:
    wanted = id_param(request, "serverId")
    ctl = controller(request)
    for srv in await ctl.store.servers():
        if srv.id == wanted:
            capabilities = ["PrimaryServer"] + (["IPv6", "NativeIPv6"] if srv.ipv6 else [])
            attributes = {
                "Ip4Address": srv.ipv4[0] if srv.ipv4 else None,
                "IpV6Address": srv.ipv6[0] if srv.ipv6 else None,
                "Capabilities": capabilities,
                "CheckpointId": srv.checkpoint_id,
                "AgentId": srv.agent_id,
                "Online": srv.online,
                "MonitorTypes": srv.probe_types,
                # the agent's clock minus the controller's (controller/clock.py); null until
                # measured
                "ClockOffsetMilliseconds": ctl.clock.offset_ms(srv.agent_id),
            }
            link = f"{PREFIX}/Checkpoint/Server/{wanted}"
            data = {"Id": wanted, "Type": "CheckpointServer", "Attributes": attributes}
            return ok({"Data": data, "Links": {"Self": link}, "Meta": _meta()})
    fail(404, f"Checkpoint server {wanted} not found", "serverId")


async def _addresses(request: web.Request, family: str) -> web.Response:
    servers = await controller(request).store.servers()
    # every registered server, online or not: users open firewalls before a server runs checks
    addresses = sorted({a for s in servers for a in (s.ipv4 if family == "Ipv4" else s.ipv6)})
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
