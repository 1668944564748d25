"""MonitorGroup: GET/POST /MonitorGroup, GET/PUT/DELETE /MonitorGroup/{guid}, its members,
Start/StopAllMonitors, Start/StopAllMonitorAlerts, AddMaintenancePeriodToAllMembers; and
GET /Monitor/MonitorGroup/{guid}, GET /Monitor/{guid}/MonitorGroup.

The built-in All Monitors group (`IsAll`) holds every monitor without member rows: it cannot be
renamed, deleted or given or rid of members. Starting, stopping and the alert switches change
each member monitor as a PUT would (`IsActive`, `GenerateAlert`), so the placement starts or
stops its checks on the agents at once."""

from __future__ import annotations

import uuid
from typing import Any

from aiohttp import web

from controller.api import maintenance as maintenance_api
from controller.api import monitors as monitor_api
from controller.api.common import PREFIX, controller, fail, json_body, ok
from controller.db.store import GroupRow, NameTaken, StoreRejected

routes = web.RouteTableDef()

GROUP = PREFIX + "/MonitorGroup/{monitorGroupGuid}"
# Uptrends' quota fields: Picket has no quotas (null or left out is accepted, as a GET-PUT
# round trip sends them)
QUOTA_FIELDS = (
    "BasicMonitorQuota",
    "BrowserMonitorQuota",
    "TransactionMonitorQuota",
    "ApiMonitorQuota",
    "ClassicQuota",
    "UnifiedCreditsQuota",
)
READ_ONLY = frozenset(
    {
        "MonitorGroupGuid",
        "UsedBasicMonitorQuota",
        "UsedBrowserMonitorQuota",
        "UsedTransactionMonitorQuota",
        "UsedApiMonitorQuota",
        "UsedClassicQuota",
        "UsedUnifiedCreditsQuota",
    }
)
KNOWN = READ_ONLY | {"Description", "IsAll", "IsQuotaUnlimited", *QUOTA_FIELDS}


def represent(row: GroupRow) -> dict[str, Any]:
    return {"MonitorGroupGuid": row.guid, "Description": row.description, "IsAll": row.is_all}


def _description(body: dict[str, Any]) -> str:
    """The group's name from a POST or PUT body; 400 naming the field that is wrong."""
    for name in body:
        if name not in KNOWN:
            shown = name or '""'  # a field named "" is named so
            fail(400, f"{shown}: is not a known field", shown)
    if body.get("IsAll") not in (None, False):
        fail(400, "IsAll: only the built-in All Monitors group has IsAll; send false", "IsAll")
    if body.get("IsQuotaUnlimited") not in (None, True):
        fail(
            400, "IsQuotaUnlimited: Picket has no monitor quotas; leave it out", "IsQuotaUnlimited"
        )
    for name in QUOTA_FIELDS:
        if body.get(name) is not None:
            fail(400, f"{name}: Picket has no monitor quotas; leave it out", name)
    description = body.get("Description")
    if description is None:
        fail(400, "Description: is required", "Description")
    if not isinstance(description, str):
        fail(400, "Description: must be a string", "Description")
    if not description.strip():
        fail(400, "Description: must not be blank", "Description")
    if len(description) > 200:
        fail(400, "Description: at most 200 characters", "Description")
    return description


async def _group(request: web.Request) -> GroupRow:
    guid = request.match_info["monitorGroupGuid"]
    row = await controller(request).store.monitor_group(guid.lower())
    if row is None:
        fail(404, f"MonitorGroup {guid} not found", "monitorGroupGuid")
    return row


def _not_all(group: GroupRow, what: str) -> None:
    if group.is_all:
        fail(
            400,
            f"monitorGroupGuid: {group.guid} is the built-in All Monitors group (IsAll), which "
            f"holds every monitor; it cannot {what}",
            "monitorGroupGuid",
        )


async def _save(request: web.Request, row: GroupRow, create: bool) -> bool:
    try:
        return await controller(request).store.save_monitor_group(row, create)
    except NameTaken:
        fail(
            400,
            f"Description: a monitor group named {row.description!r} exists already",
            "Description",
        )


@routes.get(PREFIX + "/MonitorGroup")
async def list_groups(request: web.Request) -> web.Response:
    return ok([represent(g) for g in await controller(request).store.monitor_groups()])


@routes.post(PREFIX + "/MonitorGroup")
async def create_group(request: web.Request) -> web.Response:
    body = await json_body(request)
    row = GroupRow(guid=str(uuid.uuid4()), description=_description(body), is_all=False)
    await _save(request, row, create=True)
    return ok(represent(row), status=201)


@routes.get(GROUP)
async def get_group(request: web.Request) -> web.Response:
    return ok(represent(await _group(request)))


@routes.put(GROUP)
async def replace_group(request: web.Request) -> web.Response:
    group = await _group(request)
    body = await json_body(request)
    given = body.get("MonitorGroupGuid")
    if given is not None and str(given).lower() != group.guid:
        fail(
            400, "MonitorGroupGuid: does not match the monitor group in the URL", "MonitorGroupGuid"
        )
    _not_all(group, "be changed")
    row = GroupRow(guid=group.guid, description=_description(body), is_all=False)
    if not await _save(request, row, create=False):
        fail(404, f"MonitorGroup {group.guid} not found (deleted meanwhile)", "monitorGroupGuid")
    return web.Response(status=204)


@routes.delete(GROUP)
async def delete_group(request: web.Request) -> web.Response:
    group = await _group(request)
    _not_all(group, "be deleted")
    if not await controller(request).store.delete_monitor_group(group.guid):
        fail(404, f"MonitorGroup {group.guid} not found", "monitorGroupGuid")
    return web.Response(status=204)


@routes.get(GROUP + "/Member")
async def members(request: web.Request) -> web.Response:
    group = await _group(request)
    guids = await controller(request).store.group_monitor_guids(group)
    return ok([{"MonitorGuid": g} for g in guids])


async def _member_monitor(request: web.Request) -> str:
    guid = request.match_info["monitorGuid"]
    if await controller(request).store.monitor(guid.lower()) is None:
        fail(404, f"Monitor {guid} not found", "monitorGuid")
    return guid.lower()


@routes.post(GROUP + "/Member/{monitorGuid}")
async def add_member(request: web.Request) -> web.Response:
    group = await _group(request)
    monitor_guid = await _member_monitor(request)
    _not_all(group, "be given members (every monitor is in it)")
    try:
        await controller(request).store.add_group_member(group.guid, monitor_guid)
    except StoreRejected:  # the monitor or group deleted meanwhile: a foreign key refused
        fail(404, f"Monitor {monitor_guid} or its group was deleted meanwhile", "monitorGuid")
    return web.Response(status=201)


@routes.delete(GROUP + "/Member/{monitorGuid}")
async def remove_member(request: web.Request) -> web.Response:
    group = await _group(request)
    monitor_guid = await _member_monitor(request)
    _not_all(group, "lose members (every monitor is in it)")
    if not await controller(request).store.remove_group_member(group.guid, monitor_guid):
        fail(
            404,
            f"Monitor {monitor_guid} is not a member of monitor group {group.guid}",
            "monitorGuid",
        )
    return web.Response(status=204)


async def _set_on_members(request: web.Request, field: str, value: bool) -> web.Response:
    """Set IsActive or GenerateAlert on every member, each saved through the placement."""
    group = await _group(request)
    for guid in await controller(request).store.group_monitor_guids(group):

        def change(definition: dict[str, Any]) -> dict[str, Any] | None:
            if definition.get(field, True) is value:
                return None
            definition[field] = value
            return definition

        await monitor_api.modify(request, guid, change)  # False: deleted meanwhile, skipped
    return web.Response(status=204)


@routes.post(GROUP + "/StartAllMonitors")
async def start_all(request: web.Request) -> web.Response:
    return await _set_on_members(request, "IsActive", True)


@routes.post(GROUP + "/StopAllMonitors")
async def stop_all(request: web.Request) -> web.Response:
    return await _set_on_members(request, "IsActive", False)


@routes.post(GROUP + "/StartAllMonitorAlerts")
async def start_alerts(request: web.Request) -> web.Response:
    return await _set_on_members(request, "GenerateAlert", True)


@routes.post(GROUP + "/StopAllMonitorAlerts")
async def stop_alerts(request: web.Request) -> web.Response:
    return await _set_on_members(request, "GenerateAlert", False)


@routes.post(GROUP + "/AddMaintenancePeriodToAllMembers")
async def add_maintenance(request: web.Request) -> web.Response:
    """The period is added to each member as a period of its own (with its own Id)."""
    group = await _group(request)
    raw = await json_body(request)
    maintenance_api.validate(request, raw, 0)  # a bad body is refused before any member
    for guid in await controller(request).store.group_monitor_guids(group):
        await maintenance_api.add_period(request, guid, raw)  # None: deleted meanwhile
    return web.Response(status=204)


@routes.get(PREFIX + "/Monitor/MonitorGroup/{monitorGroupGuid}")
async def monitors_in_group(request: web.Request) -> web.Response:
    group = await _group(request)
    store = controller(request).store
    wanted = set(await store.group_monitor_guids(group))
    rows = [m for m in await store.monitors() if m.guid in wanted]
    return ok(monitor_api.listed(request, rows))


@routes.get(PREFIX + "/Monitor/{monitorGuid}/MonitorGroup")
async def groups_of_monitor(request: web.Request) -> web.Response:
    guid = await _member_monitor(request)
    return ok(await controller(request).store.groups_of_monitor(guid))
