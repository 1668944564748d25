"""Monitor: GET/POST /Monitor, GET/PUT/PATCH/DELETE /Monitor/{monitorGuid}."""

from __future__ import annotations

import copy
import uuid
from collections.abc import Callable
from typing import Any

from aiohttp import web
from pydantic import ValidationError

from controller.api.common import PREFIX, ApiError, controller, fail, invalid, json_body, ok
from controller.db.store import MonitorRow, NameTaken, RevisionChanged, now_us
from shared import monitors, regex, secrets
from shared.timefmt import iso

routes = web.RouteTableDef()


def revision_of(definition: dict[str, Any]) -> str:
    return secrets.revision(definition)  # keyed: the Hash tells nothing about the secrets


def validate(
    raw: dict[str, Any], periods: list[dict[str, Any]] | None = None
) -> monitors.MonitorBase:
    """A monitor from a body, with the maintenance periods it keeps (`periods`, as stored)."""
    if monitors.PERIODS in raw:
        fail(
            400,
            f"{monitors.PERIODS}: is not a monitor field; maintenance periods are managed at "
            "/Monitor/{monitorGuid}/MaintenancePeriod",
            monitors.PERIODS,
        )
    monitor_type = raw.get("MonitorType")
    if not isinstance(monitor_type, str) or not monitor_type:
        fail(400, "MonitorType: is required", "MonitorType")
    model = monitors.model_for(monitor_type)
    if model is None:
        supported = ", ".join(monitors.monitor_types())
        fail(
            400,
            f"MonitorType: {monitor_type!r} is not supported (supported: {supported})",
            "MonitorType",
        )
    payload = {k: v for k, v in raw.items() if k not in monitors.READ_ONLY_FIELDS}
    if periods:
        payload[monitors.PERIODS] = periods
    try:
        return model.model_validate(payload, context=regex.FROM_OUTSIDE)
    except ValidationError as exc:
        raise invalid(exc) from None


def _model(monitor_type: str) -> type[monitors.MonitorBase]:
    return monitors.model_for(monitor_type) or monitors.MonitorBase


def represent(row: MonitorRow) -> dict[str, Any]:
    body = {"MonitorGuid": row.guid, **_model(row.monitor_type).redact(row.definition)}
    body.pop(monitors.PERIODS, None)
    # GET returns the interval field that was set, not both
    for key in ("CheckInterval", "CheckIntervalSeconds"):
        if body.get(key) is None:
            body.pop(key, None)
    body["Hash"] = row.revision
    body["CreatedDate"] = iso(row.created_us / 1e6)
    body["LastModifiedDate"] = iso(row.modified_us / 1e6)
    return body


def periods_of(row: MonitorRow) -> list[dict[str, Any]]:
    """The monitor's maintenance periods as stored (shared/maintenance.py)."""
    return list(row.definition.get(monitors.PERIODS) or [])


def _row(guid: str, model: monitors.MonitorBase, created_us: int) -> MonitorRow:
    definition = model.definition()
    return MonitorRow(
        guid=guid,
        name=model.Name,
        monitor_type=model.MonitorType,
        is_active=model.IsActive,
        definition=definition,
        revision=revision_of(definition),
        created_us=created_us,
        modified_us=now_us(),
    )


async def _existing(request: web.Request) -> MonitorRow:
    guid = request.match_info["monitorGuid"]
    row = await controller(request).store.monitor(guid.lower())
    if row is None:
        fail(404, f"Monitor {guid} not found", "monitorGuid")
    return row


def _check_body_guid(body: dict[str, Any], guid: str) -> None:
    given = body.get("MonitorGuid")
    if given is not None and str(given).lower() != guid:
        fail(400, "MonitorGuid: does not match the monitor in the URL", "MonitorGuid")


async def _save(
    request: web.Request, row: MonitorRow, create: bool, expected_revision: str | None = None
) -> None:
    ctl = controller(request)
    try:
        saved = await ctl.assigner.save_monitor(row, create, expected_revision)
    except NameTaken:
        fail(400, f"Name: a monitor named {row.name!r} exists already", "Name")
    if not saved:
        fail(404, f"Monitor {row.guid} not found (deleted meanwhile)", "monitorGuid")


# a PUT or PATCH re-reads and retries when another edit won the race (compare-and-swap)
EDIT_ATTEMPTS = 20


def _sent_hash(body: dict[str, Any]) -> str | None:
    """The `Hash` a client sends back (from its GET): it edits that revision, or gets 409."""
    sent = body.get("Hash")
    if sent is None or sent == "":
        return None
    if not isinstance(sent, str):
        fail(400, "Hash: must be the Hash a GET of this monitor returned", "Hash")
    return sent


def _check_hash(sent: str | None, current: MonitorRow) -> None:
    if sent is not None and sent != current.revision:
        fail(
            409,
            f"Hash: the monitor was changed since {sent!r} was read (now {current.revision!r});"
            " GET it again and apply the change to that",
            "Hash",
        )


async def _edit(
    request: web.Request, build: Callable[[MonitorRow, dict[str, Any]], MonitorRow]
) -> web.Response:
    """A PUT or PATCH: `build` makes the new row from the stored one and the body, and the
    save succeeds only if the stored revision is still the one read; else read and retry."""
    current = await _existing(request)
    sent = await json_body(request)
    sent_hash = _sent_hash(sent)
    for attempt in range(EDIT_ATTEMPTS):
        if attempt:
            current = await _existing(request)
        _check_hash(sent_hash, current)
        row = build(current, copy.deepcopy(sent))
        try:
            await _save(request, row, create=False, expected_revision=current.revision)
        except RevisionChanged:
            continue
        return web.Response(status=204)
    fail(
        409,
        f"Hash: monitor {current.guid} kept changing during {EDIT_ATTEMPTS} attempts; try again",
        "Hash",
    )


def _known_fields() -> dict[str, str]:
    """Every monitor field name, by its lower-case form."""
    names = set(monitors.READ_ONLY_FIELDS)
    for type_name in monitors.monitor_types():
        names.update(_model(type_name).model_fields)
    names.discard(monitors.PERIODS)
    return {name.lower(): name for name in names}


def _filter(request: web.Request) -> list[str]:
    """`filter=Name,IsActive`: the fields to return (in any case, as .NET reads them); a field
    no monitor type has is a 400 (it would otherwise answer a list of empty objects)."""
    known = _known_fields()
    wanted = [f.strip() for f in request.query.get("filter", "").split(",") if f.strip()]
    unknown = [f for f in wanted if f.lower() not in known]
    if unknown:
        fail(400, f"filter: {', '.join(map(repr, unknown))} is not a monitor field", "filter")
    return [known[f.lower()] for f in wanted]


def _only(item: dict[str, Any], wanted: list[str]) -> dict[str, Any]:
    return {k: item[k] for k in wanted if k in item} if wanted else item


@routes.get(PREFIX + "/Monitor")
async def list_monitors(request: web.Request) -> web.Response:
    return ok(listed(request, await controller(request).store.monitors()))


@routes.post(PREFIX + "/Monitor")
async def create_monitor(request: web.Request) -> web.Response:
    model = validate(await json_body(request))
    stamp = now_us()
    row = _row(str(uuid.uuid4()), model, stamp)
    await _save(request, row, create=True)
    return ok(represent(row), status=201)


@routes.get(PREFIX + "/Monitor/{monitorGuid}")
async def get_monitor(request: web.Request) -> web.Response:
    wanted = _filter(request)
    return ok(_only(represent(await _existing(request)), wanted))


@routes.put(PREFIX + "/Monitor/{monitorGuid}")
async def replace_monitor(request: web.Request) -> web.Response:
    def build(current: MonitorRow, body: dict[str, Any]) -> MonitorRow:
        _check_body_guid(body, current.guid)
        body.setdefault("MonitorType", current.monitor_type)
        if body["MonitorType"] != current.monitor_type:
            fail(400, "MonitorType: cannot be changed", "MonitorType")
        _model(current.monitor_type).keep_secrets(body, current.definition)
        return _row(current.guid, validate(body, periods_of(current)), current.created_us)

    return await _edit(request, build)


@routes.patch(PREFIX + "/Monitor/{monitorGuid}")
async def update_monitor(request: web.Request) -> web.Response:
    def build(current: MonitorRow, body: dict[str, Any]) -> MonitorRow:
        _check_body_guid(body, current.guid)
        if body.get("MonitorType", current.monitor_type) != current.monitor_type:
            fail(400, "MonitorType: cannot be changed", "MonitorType")
        _model(current.monitor_type).keep_secrets(body, current.definition, patch=True)
        if monitors.PERIODS in body:
            validate(body)  # refused
        merged = {**current.definition, **body}
        merged.pop(monitors.PERIODS, None)
        # switching between minutes and seconds: the field sent wins
        if "CheckInterval" in body and "CheckIntervalSeconds" not in body:
            merged["CheckIntervalSeconds"] = None
        if "CheckIntervalSeconds" in body and "CheckInterval" not in body:
            merged["CheckInterval"] = None
        return _row(current.guid, validate(merged, periods_of(current)), current.created_us)

    return await _edit(request, build)


@routes.delete(PREFIX + "/Monitor/{monitorGuid}")
async def delete_monitor(request: web.Request) -> web.Response:
    current = await _existing(request)
    ctl = controller(request)
    if not await ctl.assigner.delete_monitor(current.guid):
        fail(404, f"Monitor {current.guid} not found", "monitorGuid")
    return web.Response(status=204)


async def modify(
    request: web.Request,
    guid: str,
    change: Callable[[dict[str, Any]], dict[str, Any] | None],
) -> bool:
    """Change a stored monitor through the placement (its agents get the new revision), as a
    compare-and-swap that re-reads and retries when another edit won the race. `change` gets
    a copy of the stored definition and returns the new one (None: nothing to change). False:
    no such monitor (or deleted meanwhile)."""
    ctl = controller(request)
    for _attempt in range(EDIT_ATTEMPTS):
        current = await ctl.store.monitor(guid)
        if current is None:
            return False
        changed = change(copy.deepcopy(current.definition))
        if changed is None:
            return True
        periods = changed.pop(monitors.PERIODS, None) or []
        try:
            model = validate(changed, periods)
        except ApiError as exc:  # a stored definition a newer rule refuses
            exc.messages = [(f, f"monitor {guid}: {m}") for f, m in exc.messages]
            raise
        row = _row(guid, model, current.created_us)
        try:
            return await ctl.assigner.save_monitor(row, False, current.revision)
        except RevisionChanged:
            continue
        except NameTaken:  # the name cannot have changed; another monitor took it meanwhile
            fail(409, f"monitor {guid}: its name is taken by another monitor", "Name")
    fail(409, f"monitor {guid} kept changing during {EDIT_ATTEMPTS} attempts; try again")


def listed(request: web.Request, rows: list[MonitorRow]) -> list[dict[str, Any]]:
    """Monitors as GET /Monitor lists them, with its `filter`."""
    wanted = _filter(request)
    return [_only(represent(r), wanted) for r in rows]
