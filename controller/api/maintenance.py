"""Maintenance periods: GET/POST /Monitor/{guid}/MaintenancePeriod, PUT/DELETE
…/MaintenancePeriod/{id}, POST …/MaintenancePeriod/Cleanup/{beforeDate}.

A monitor's periods are kept in its definition, so a change reaches its agents as a new
revision of the monitor (shared/maintenance.py says how each period is read)."""

from __future__ import annotations

import datetime as dt
import re
from typing import Any, NoReturn

from aiohttp import web
from pydantic import ValidationError

from controller import timezones
from controller.api import monitors as monitor_api
from controller.api.common import (
    PREFIX,
    controller,
    fail,
    id_param,
    invalid,
    json_body,
    ok,
)
from shared import maintenance
from shared.monitors import PERIODS

routes = web.RouteTableDef()

_FIELD_FIRST = re.compile(r"^([A-Za-z]+)(?:, [A-Za-z]+)*: ")
BASE = PREFIX + "/Monitor/{monitorGuid}/MaintenancePeriod"


def validate(request: web.Request, raw: dict[str, Any], ident: int) -> dict[str, Any]:
    """A period from a body (its Id set to `ident`), as stored; a 400 names the field."""
    body = dict(raw)
    body["Id"] = ident
    # the zone is chosen by its TimeZoneId; the IANA name shown beside it follows from it
    body.pop("TimeZone", None)
    zone_id = body.get("TimeZoneId")
    if zone_id is None:
        zone_id = body["TimeZoneId"] = controller(request).settings.time_zone_id
    zone = timezones.get(zone_id) if type(zone_id) is int else None
    if zone is None:
        fail(
            400,
            f"TimeZoneId: {str(zone_id)[:20]} is not a TimezoneId of GET /api/v4/Timezone",
            "TimeZoneId",
        )
    body["TimeZone"] = zone.iana
    try:
        period = maintenance.MaintenancePeriod.model_validate(body)
    except ValidationError as exc:
        error = invalid(exc)
        # the checks across fields name theirs first in the message ("StartTime: ...")
        error.messages = [(field or _named(message), message) for field, message in error.messages]
        raise error from None
    return period.model_dump(mode="json")


def _named(message: str) -> str | None:
    match = _FIELD_FIRST.match(message)
    return match[1] if match else None


def _guid(request: web.Request) -> str:
    return request.match_info["monitorGuid"].lower()


def _missing(request: web.Request) -> NoReturn:
    fail(404, f"Monitor {request.match_info['monitorGuid']} not found", "monitorGuid")


async def add_period(request: web.Request, guid: str, raw: dict[str, Any]) -> dict[str, Any] | None:
    """Add a period (validated, with a new Id) to a monitor; None: no such monitor."""
    ctl = controller(request)
    if await ctl.store.monitor(guid) is None:
        return None
    period = validate(request, raw, 0)  # before an id is spent on a bad body
    period["Id"] = await ctl.store.new_maintenance_period_id(guid)

    def change(definition: dict[str, Any]) -> dict[str, Any]:
        periods = list(definition.get(PERIODS) or [])
        if len(periods) >= maintenance.MAX_PERIODS:
            fail(
                400,
                f"{PERIODS}: monitor {guid} has {maintenance.MAX_PERIODS} maintenance periods "
                "already, the most it may have; delete or clean up old ones first",
                PERIODS,
            )
        definition[PERIODS] = [*periods, period]
        return definition

    if not await monitor_api.modify(request, guid, change):
        return None
    return period


@routes.get(BASE)
async def list_periods(request: web.Request) -> web.Response:
    row = await controller(request).store.monitor(_guid(request))
    if row is None:
        _missing(request)
    return ok(monitor_api.periods_of(row))


@routes.post(BASE)
async def create_period(request: web.Request) -> web.Response:
    raw = await json_body(request)
    period = await add_period(request, _guid(request), raw)
    if period is None:
        _missing(request)
    return ok(period, status=201)


@routes.put(BASE + "/{maintenancePeriodId}")
async def replace_period(request: web.Request) -> web.Response:
    ident = id_param(request, "maintenancePeriodId")
    raw = await json_body(request)
    given = raw.get("Id")
    if given not in (None, 0, ident):
        fail(400, "Id: does not match the maintenance period in the URL", "Id")
    period = validate(request, raw, ident)
    found = False

    def change(definition: dict[str, Any]) -> dict[str, Any]:
        nonlocal found
        periods = list(definition.get(PERIODS) or [])
        for index, existing in enumerate(periods):
            if existing.get("Id") == ident:
                found = True
                periods[index] = period
        definition[PERIODS] = periods
        return definition

    if not await monitor_api.modify(request, _guid(request), change):
        _missing(request)
    if not found:
        _no_period(request)
    return web.Response(status=204)


def _no_period(request: web.Request) -> NoReturn:
    fail(
        404,
        f"Maintenance period {request.match_info['maintenancePeriodId']} of monitor "
        f"{request.match_info['monitorGuid']} not found",
        "maintenancePeriodId",
    )


@routes.delete(BASE + "/{maintenancePeriodId}")
async def delete_period(request: web.Request) -> web.Response:
    ident = id_param(request, "maintenancePeriodId")
    found = False

    def change(definition: dict[str, Any]) -> dict[str, Any] | None:
        nonlocal found
        periods = list(definition.get(PERIODS) or [])
        kept = [p for p in periods if p.get("Id") != ident]
        found = len(kept) != len(periods)
        if not found:
            return None
        definition[PERIODS] = kept
        return definition

    if not await monitor_api.modify(request, _guid(request), change):
        _missing(request)
    if not found:
        _no_period(request)
    return web.Response(status=204)


@routes.post(BASE + "/Cleanup/{beforeDate}")
async def cleanup(request: web.Request) -> web.Response:
    """Delete the monitor's one-time periods that ended before the date (its midnight in each
    period's time zone); recurring periods stay."""
    text = request.match_info["beforeDate"]
    try:
        if not re.fullmatch(r"\d{4}-\d{2}-\d{2}", text):
            raise ValueError
        before = dt.date.fromisoformat(text)
    except ValueError:
        fail(400, f"beforeDate: {text[:40]!r} is not a date as yyyy-MM-dd", "beforeDate")

    def ended(period: dict[str, Any]) -> bool:
        if period.get("ScheduleMode") != "OneTime":
            return False
        schedule = maintenance.Schedule.of(maintenance.MaintenancePeriod.model_validate(period))
        midnight = dt.datetime.combine(before, dt.time(), tzinfo=schedule.tz)
        return schedule.end <= midnight.timestamp()

    def change(definition: dict[str, Any]) -> dict[str, Any] | None:
        periods = list(definition.get(PERIODS) or [])
        kept = [p for p in periods if not ended(p)]
        if len(kept) == len(periods):
            return None
        definition[PERIODS] = kept
        return definition

    if not await monitor_api.modify(request, _guid(request), change):
        _missing(request)
    return web.Response(status=204)
