"""MonitorCheck: raw check results, paged with opaque cursors as Uptrends does."""

from __future__ import annotations

import base64
import binascii
import json
import time
from datetime import UTC, datetime
from typing import Any

from aiohttp import web

from controller.api.common import PREFIX, controller, fail, ok
from controller.assigner import Assigner
from controller.db.store import CONCURRENT, PARTIAL, CheckRow, GroupRow
from controller.ingest import LEVEL_NAMES, LEVELS_BY_NAME
from shared import jsonin
from shared.errors import INCONCLUSIVE_CODES
from shared.timefmt import iso, parse

routes = web.RouteTableDef()

MAX_TAKE = 100
INTERNAL_ATTRIBUTES = frozenset({"MonitorRevision", "AgentId", "ConfirmsCheckUid"})
HOUR = 3600.0
DAY = 24 * HOUR
PRESET_SECONDS = {
    **{f"Last{n}Hours": n * HOUR for n in (2, 6, 12, 24, 48)},
    **{f"Last{n}Days": n * DAY for n in (7, 30, 60, 90, 365)},
}


def represent(row: CheckRow, assigner: Assigner) -> dict[str, Any]:
    srv = assigner.server_by_id(row.server_id)
    attributes = {k: v for k, v in row.attributes.items() if k not in INTERNAL_ATTRIBUTES}
    attributes.update(
        {
            "MonitorGuid": row.monitor_guid,
            "Timestamp": iso(row.ts_us / 1e6),
            "ScheduledTime": iso(row.scheduled_us / 1e6),
            "ErrorCode": row.error_code,
            "ErrorLevel": LEVEL_NAMES.get(row.error_level, "NoError"),
            "ServerId": row.server_id,
            "CheckpointId": srv.checkpoint_id if srv else None,
            "IsPartialCheck": row.kind == PARTIAL,
            "IsConcurrentCheck": row.kind == CONCURRENT,
            # Picket's: a slot that says nothing about the target (shared/errors.py: 4, the
            # agent's canary failed too; 5, no selected checkpoint was live), and a second
            # result for a slot its checkpoint had already reported (a failover overlap)
            "IsInconclusive": row.error_code in INCONCLUSIVE_CODES,
            "IsDuplicateSlot": bool(row.attributes.get("IsDuplicateSlot", False)),
            # Picket's: its slot is in one of the monitor's maintenance periods (alerting
            # passes it by; docs/results.md)
            "InMaintenance": bool(row.attributes.get("InMaintenance", False)),
        }
    )
    self_link = f"{PREFIX}/MonitorCheck/{row.id}"
    kinds: tuple[str, ...] = ()
    if row.details and "Waterfall" in row.details:
        kinds = ("Http", "Waterfall")
    elif row.details and "StepResults" in row.details:
        kinds = ("MultiStepAPI",)
    if row.kind == CONCURRENT:
        kinds = ("Concurrent",)
    relationships = [
        {"Id": row.id, "Type": kind, "Links": {"Self": f"{self_link}/{kind}"}} for kind in kinds
    ]
    return {
        "Id": row.id,
        "Type": "MonitorCheck",
        "Attributes": attributes,
        "Relationships": relationships,
        "Links": {"Self": self_link},
    }


def _encode_cursor(row: CheckRow) -> str:
    raw = json.dumps([row.ts_us, row.id]).encode()
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


def _decode_cursor(text: str) -> tuple[int, int]:
    try:
        raw = base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))
        ts, ident = jsonin.loads(raw)
        key = int(ts), int(ident)
        if not (0 <= key[0] < 2**62 and 0 <= key[1] < 2**63):
            raise ValueError("out of range")
        return key
    except (binascii.Error, ValueError, TypeError, OverflowError):
        fail(400, "Cursor: is not a cursor this API returned", "Cursor")


def _time_param(request: web.Request, name: str) -> float | None:
    text = request.query.get(name)
    if not text:
        return None
    try:
        return parse(text)
    except ValueError as exc:
        fail(400, f"{name}: {exc}", name)


# what a timestamp can be written back as (ISO 8601 in UTC): 0001-01-01 to 9999-12-31
EARLIEST = datetime(1, 1, 1, tzinfo=UTC).timestamp()
# (.9995 s: a float this large holds .999 as .998999…, which would be written back as .998)
LATEST = datetime(9999, 12, 31, 23, 59, 59, 999_500, tzinfo=UTC).timestamp()


def _clamped(moment: float | None) -> float | None:
    """A valid time whose UTC year is 0 or 10000 (`9999-12-31T23:59:59-05:00`) means "from
    the beginning" or "until the end": answered as the first or last representable instant."""
    return None if moment is None else min(max(moment, EARLIEST), LATEST)


def _period(request: web.Request, now: float) -> tuple[float | None, float | None]:
    start = _time_param(request, "Start")
    end = _time_param(request, "End")
    preset = request.query.get("PresetPeriod")
    if preset and (start is not None or end is not None):
        fail(400, "PresetPeriod: give PresetPeriod or Start/End, not both", "PresetPeriod")
    if start is not None or end is not None:
        if start is not None and end is not None and end <= start:
            fail(400, "End: must be later than Start", "End")
        return _clamped(start), _clamped(end)
    preset = preset or "Last24Hours"
    if preset == "All":
        return None, None
    if preset == "CurrentDay":
        midnight = datetime.fromtimestamp(now, UTC).replace(
            hour=0, minute=0, second=0, microsecond=0
        )
        return midnight.timestamp(), None
    if preset not in PRESET_SECONDS:
        supported = ", ".join(["All", "CurrentDay", *PRESET_SECONDS])
        fail(
            400,
            f"PresetPeriod: {preset!r} is not supported (supported: {supported})",
            "PresetPeriod",
        )
    return now - PRESET_SECONDS[preset], None


@routes.get(PREFIX + "/MonitorCheck/Monitor/{monitorGuid}")
async def monitor_checks(request: web.Request) -> web.Response:
    guid = request.match_info["monitorGuid"].lower()
    if await controller(request).store.monitor(guid) is None:
        fail(404, f"Monitor {request.match_info['monitorGuid']} not found", "monitorGuid")
    return await _page(request, guid)


@routes.get(PREFIX + "/MonitorCheck/MonitorGroup/{monitorGroupGuid}")
async def group_checks(request: web.Request) -> web.Response:
    """The checks of a group's monitors (every monitor for All Monitors), paged together."""
    text = request.match_info["monitorGroupGuid"]
    group = await controller(request).store.monitor_group(text.lower())
    if group is None:
        fail(404, f"MonitorGroup {text} not found", "monitorGroupGuid")
    return await _page(request, group)


async def _page(request: web.Request, whose: str | GroupRow) -> web.Response:
    ctl = controller(request)
    q = request.query
    try:
        take = int(q.get("Take", MAX_TAKE))
    except ValueError:
        fail(400, "Take: must be a whole number from 0 to 100", "Take")
    if not 0 <= take <= MAX_TAKE:
        fail(400, "Take: must be a whole number from 0 to 100", "Take")
    sorting = q.get("Sorting", "Descending")
    if sorting not in ("Ascending", "Descending"):
        fail(400, "Sorting: must be Ascending or Descending", "Sorting")
    level_name = q.get("ErrorLevel", "NoError")
    if level_name not in LEVELS_BY_NAME:
        fail(400, "ErrorLevel: must be NoError, Unconfirmed or Confirmed", "ErrorLevel")
    inconclusive_text = q.get("Inconclusive")
    if inconclusive_text not in (None, "true", "false", "True", "False"):
        fail(400, "Inconclusive: must be true or false", "Inconclusive")
    inconclusive = None if inconclusive_text is None else inconclusive_text.lower() == "true"
    now = time.time()
    start, end = _period(request, now)
    after = _decode_cursor(q["Cursor"]) if q.get("Cursor") else None
    rows = await ctl.store.checks_page(
        whose,
        start_us=int(start * 1e6) if start is not None else None,
        end_us=int(end * 1e6) if end is not None else None,
        min_level=LEVELS_BY_NAME[level_name],
        descending=sorting == "Descending",
        after=after,
        limit=take + 1,
        inconclusive=inconclusive,
    )
    page, more = rows[:take], len(rows) > take
    links: dict[str, str] = {"Self": str(request.rel_url)}
    cursors: dict[str, str] = {}
    if q.get("Cursor"):
        cursors["Self"] = q["Cursor"]
    if page:
        last = _encode_cursor(page[-1])
        # an ascending reader keeps the last cursor to poll for new checks later
        if more or sorting == "Ascending":
            cursors["Next"] = last
            links["Next"] = str(request.rel_url.update_query({"Cursor": last}))
    period: dict[str, str | int | None] = {
        "From": iso(start) if start is not None else None,
        "To": iso(end) if end is not None else None,
        "MaximumRetentionDays": ctl.settings.result_retention_days,
    }
    return ok(
        {
            "Data": [represent(r, ctl.assigner) for r in page],
            "Links": links,
            "Cursors": cursors,
            "Meta": {"Timestamp": iso(now), "Period": period},
        }
    )


@routes.get(PREFIX + "/MonitorCheck/{monitorCheckId}")
async def one_check(request: web.Request) -> web.Response:
    row = await _check_for_detail(request)
    return ok({"Data": represent(row, controller(request).assigner)})


async def _check_for_detail(request: web.Request) -> CheckRow:
    text = request.match_info["monitorCheckId"]
    try:
        check_id = int(text)
    except ValueError:
        fail(400, "monitorCheckId: must be a whole number", "monitorCheckId")
    row = await controller(request).store.check(check_id) if 0 < check_id < 2**63 else None
    if row is None:
        fail(404, f"MonitorCheck {text} not found", "monitorCheckId")
    return row


def _http_details(row: CheckRow) -> dict[str, Any]:
    details = row.details or {}
    if "Waterfall" not in details:
        fail(404, f"MonitorCheck {row.id} has no HTTP details", "monitorCheckId")
    return details


@routes.get(PREFIX + "/MonitorCheck/{monitorCheckId}/Http")
async def http_details(request: web.Request) -> web.Response:
    row = await _check_for_detail(request)
    details = _http_details(row)
    last = details["Waterfall"][-1] if details["Waterfall"] else {}
    attributes = {  # the final response's, i.e. the last hop's (older rows kept them apart)
        "ResponseBody": row.response_body or "",
        "ResponseHeaders": details.get("ResponseHeaders", last.get("ResponseHeaders", "")),
        "Url": details.get("Url", last.get("Url", "")),
        "HttpVersion": details.get("HttpVersion", last.get("HttpVersion", "")),
    }
    links = {"Self": f"{PREFIX}/MonitorCheck/{row.id}/Http"}
    return ok({"Data": {"Id": row.id, "Type": "Http", "Attributes": attributes, "Links": links}})


@routes.get(PREFIX + "/MonitorCheck/{monitorCheckId}/Waterfall")
async def waterfall(request: web.Request) -> web.Response:
    row = await _check_for_detail(request)
    details = _http_details(row)
    attributes = {"Elements": details["Waterfall"], "DomainGroupNames": []}
    links = {"Self": f"{PREFIX}/MonitorCheck/{row.id}/Waterfall"}
    return ok(
        {"Data": {"Id": row.id, "Type": "Waterfall", "Attributes": attributes, "Links": links}}
    )


@routes.get(PREFIX + "/MonitorCheck/{monitorCheckId}/MultiStepAPI")
async def multi_step_details(request: web.Request) -> web.Response:
    row = await _check_for_detail(request)
    details = row.details or {}
    if "StepResults" not in details:
        fail(404, f"MonitorCheck {row.id} is not a multi-step API check", "monitorCheckId")
    attributes = {
        "StepResults": details["StepResults"],
        "TotalSteps": details.get("TotalSteps", len(details["StepResults"])),
        "PassedSteps": details.get("PassedSteps", 0),
    }
    links = {"Self": f"{PREFIX}/MonitorCheck/{row.id}/MultiStepAPI"}
    return ok(
        {"Data": {"Id": row.id, "Type": "MultiStepAPI", "Attributes": attributes, "Links": links}}
    )


# partial checks of a slot started this close to it (the longest time limit, 120 s, and clock
# differences between agents): the bound of the index scan that finds them
PARTIALS_WITHIN_US = 600_000_000


@routes.get(PREFIX + "/MonitorCheck/{monitorCheckId}/Concurrent")
async def concurrent_partials(request: web.Request) -> web.Response:
    """A concurrent check's partial checks, one per checkpoint that reported."""
    row = await _check_for_detail(request)
    if row.kind != CONCURRENT:
        fail(404, f"MonitorCheck {row.id} is not a concurrent check", "monitorCheckId")
    ctl = controller(request)
    partials = await ctl.store.partial_checks(row, PARTIALS_WITHIN_US)
    return ok(
        {
            "Data": [represent(p, ctl.assigner) for p in partials],
            "Links": {"Self": f"{PREFIX}/MonitorCheck/{row.id}/Concurrent"},
            "Meta": {"Count": len(partials)},
        }
    )
