"""Maintenance periods: when each kind is in force (across midnight, weeks, months, daylight
saving), the /Monitor/{guid}/MaintenancePeriod API on SQLite and PostgreSQL, and the results
stored during a period flagged `InMaintenance`."""

from __future__ import annotations

import base64
import datetime as dt
import time
import uuid
import zoneinfo
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from aiohttp.test_utils import TestClient
from pydantic import ValidationError

from controller import maintenance as controller_maintenance
from controller.app import Controller
from shared.maintenance import MaintenancePeriod, Schedule, in_force, schedules
from shared.messages import CheckResult, ResultBatch
from tests.helpers import controller_client

PASSWORD = "unit-test-password"
ADMIN = {"Authorization": "Basic " + base64.b64encode(f"admin:{PASSWORD}".encode()).decode()}
API = "/api/v4"
UTC = zoneinfo.ZoneInfo("UTC")
AMSTERDAM = zoneinfo.ZoneInfo("Europe/Amsterdam")


def at(year: int, month: int, day: int, hour: int = 0, minute: int = 0, tz: Any = UTC) -> float:
    return dt.datetime(year, month, day, hour, minute, tzinfo=tz).timestamp()


def schedule(**fields: Any) -> Schedule:
    fields.setdefault("MaintenanceType", "DisableMonitoring")
    return Schedule.of(MaintenancePeriod.model_validate(fields))


# --- when a period is in force ---------------------------------------------------------------


def test_one_time_period_with_and_without_an_offset() -> None:
    local = schedule(
        ScheduleMode="OneTime",
        StartDateTime="2026-06-01T10:00:00",
        EndDateTime="2026-06-01T12:30:00",
        TimeZone="Europe/Amsterdam",  # +02:00 in June
    )
    assert not local.covers(at(2026, 6, 1, 7, 59))
    assert local.covers(at(2026, 6, 1, 8, 0))  # the start is in it
    assert local.covers(at(2026, 6, 1, 10, 29))
    assert not local.covers(at(2026, 6, 1, 10, 30))  # the end is not
    offset = schedule(
        ScheduleMode="OneTime",
        StartDateTime="2026-06-01T10:00:00Z",
        EndDateTime="2026-06-01T14:00:00+02:00",
        TimeZone="Europe/Amsterdam",  # the offsets given win
    )
    assert (offset.start, offset.end) == (at(2026, 6, 1, 10), at(2026, 6, 1, 12))


def test_daily_period_across_midnight() -> None:
    nightly = schedule(ScheduleMode="Daily", StartTime="22:00", EndTime="02:00")
    assert not nightly.covers(at(2026, 3, 10, 21, 59))
    assert nightly.covers(at(2026, 3, 10, 22, 0))
    assert nightly.covers(at(2026, 3, 10, 23, 59))
    assert nightly.covers(at(2026, 3, 11, 0, 0))  # after midnight: the window of the 10th
    assert nightly.covers(at(2026, 3, 11, 1, 59))
    assert not nightly.covers(at(2026, 3, 11, 2, 0))
    assert not nightly.covers(at(2026, 3, 11, 12, 0))
    windows = nightly.windows(at(2026, 3, 10, 12), at(2026, 3, 12, 12))
    assert windows == [
        (at(2026, 3, 10, 22), at(2026, 3, 11, 2)),
        (at(2026, 3, 11, 22), at(2026, 3, 12, 2)),
    ]
    # the same in the day: from start to end of that day
    lunch = schedule(ScheduleMode="Daily", StartTime="12:00", EndTime="13:00")
    assert lunch.covers(at(2026, 3, 10, 12, 30)) and not lunch.covers(at(2026, 3, 10, 13, 0))
    # start and end equal: 24 hours from the start
    whole = schedule(ScheduleMode="Daily", StartTime="06:00", EndTime="06:00")
    assert whole.covers(at(2026, 3, 10, 5, 59)) and whole.covers(at(2026, 3, 10, 6, 0))


def test_weekly_period_across_midnight() -> None:
    # 2026-03-15 is a Sunday
    assert dt.date(2026, 3, 15).strftime("%A") == "Sunday"
    sunday_night = schedule(
        ScheduleMode="Weekly", WeekDay="Sunday", StartTime="23:00", EndTime="01:00"
    )
    assert not sunday_night.covers(at(2026, 3, 14, 23, 30))  # Saturday
    assert sunday_night.covers(at(2026, 3, 15, 23, 30))
    assert sunday_night.covers(at(2026, 3, 16, 0, 30))  # Monday morning: Sunday's window
    assert not sunday_night.covers(at(2026, 3, 16, 23, 30))  # Monday night
    assert not sunday_night.covers(at(2026, 3, 17, 0, 30))
    assert sunday_night.covers(at(2026, 3, 22, 23, 0))  # the next Sunday
    assert len(sunday_night.windows(at(2026, 3, 1), at(2026, 4, 1))) == 5  # Sundays of March


def test_monthly_period_across_midnight_and_short_months() -> None:
    month_end = schedule(ScheduleMode="Monthly", MonthDay=31, StartTime="23:30", EndTime="00:30")
    assert month_end.covers(at(2026, 1, 31, 23, 45))
    assert month_end.covers(at(2026, 2, 1, 0, 15))  # into the next month
    assert month_end.covers(at(2026, 2, 28, 23, 45))  # February's last day stands for the 31st
    assert month_end.covers(at(2026, 3, 1, 0, 15))
    assert not month_end.covers(at(2026, 2, 27, 23, 45))
    assert month_end.covers(at(2026, 4, 30, 23, 45))  # April has 30 days
    assert not month_end.covers(at(2026, 3, 30, 23, 45))  # March has a 31st
    starts = [s for s, _ in month_end.windows(at(2026, 1, 1), at(2027, 1, 1))]
    # twelve, and the window of 2025-12-31 that runs into the new year
    assert len(starts) == 13 and starts[0] == at(2025, 12, 31, 23, 30)
    fifteenth = schedule(ScheduleMode="Monthly", MonthDay=15, StartTime="02:00", EndTime="03:00")
    assert fifteenth.covers(at(2026, 7, 15, 2, 30)) and not fifteenth.covers(at(2026, 7, 16, 2, 30))


def test_wall_clock_times_follow_daylight_saving() -> None:
    nightly = schedule(
        ScheduleMode="Daily", StartTime="01:00", EndTime="04:00", TimeZone="Europe/Amsterdam"
    )
    # winter (+01:00) and summer (+02:00): the window stays 01:00-04:00 local
    assert nightly.covers(at(2026, 1, 10, 0, 0)) and not nightly.covers(at(2026, 1, 10, 3, 0))
    assert nightly.covers(at(2026, 7, 10, 23, 0, tz=UTC) - 86_400)  # 01:00 CEST
    assert nightly.covers(at(2026, 7, 10, 1, 0, tz=AMSTERDAM))
    assert not nightly.covers(at(2026, 7, 10, 4, 0, tz=AMSTERDAM))
    # the spring-forward night (2026-03-29: 02:00 becomes 03:00) is an hour shorter
    start, end = nightly.windows(
        at(2026, 3, 29, 0, tz=AMSTERDAM), at(2026, 3, 29, 5, tz=AMSTERDAM)
    )[0]
    assert end - start == 2 * 3600
    # a start in the skipped hour is read with the offset before the change: 02:30 is 03:30
    skipped = schedule(
        ScheduleMode="Daily", StartTime="02:30", EndTime="05:00", TimeZone="Europe/Amsterdam"
    )
    start, _ = skipped.windows(at(2026, 3, 29, 0, tz=AMSTERDAM), at(2026, 3, 29, 6, tz=AMSTERDAM))[
        0
    ]
    assert start == at(2026, 3, 29, 3, 30, tz=AMSTERDAM)


def test_in_force_tells_the_types() -> None:
    periods = [
        MaintenancePeriod(
            ScheduleMode="Daily",
            StartTime="01:00",
            EndTime="02:00",
            MaintenanceType="DisableMonitoring",
        ),
        MaintenancePeriod(
            ScheduleMode="Daily",
            StartTime="01:30",
            EndTime="03:00",
            MaintenanceType="DisableNotifications",
        ),
    ]
    compiled = schedules(periods)
    assert in_force(compiled, at(2026, 5, 5, 0, 59)) == frozenset()
    assert in_force(compiled, at(2026, 5, 5, 1, 0)) == {"DisableMonitoring"}
    assert in_force(compiled, at(2026, 5, 5, 1, 45)) == {
        "DisableMonitoring",
        "DisableNotifications",
    }
    assert in_force(compiled, at(2026, 5, 5, 2, 30)) == {"DisableNotifications"}


@pytest.mark.parametrize(
    ("fields", "field"),
    [
        ({"ScheduleMode": "Hourly"}, "ScheduleMode"),
        ({"MaintenanceType": "DisableEverything"}, "MaintenanceType"),
        ({"StartTime": "24:00"}, "StartTime"),
        ({"EndTime": "7:00"}, "EndTime"),
        ({"StartTime": None}, "StartTime"),
        ({"ScheduleMode": "Weekly"}, "WeekDay"),
        ({"ScheduleMode": "Weekly", "WeekDay": "Funday"}, "WeekDay"),
        ({"ScheduleMode": "Monthly"}, "MonthDay"),
        ({"ScheduleMode": "Monthly", "MonthDay": 0}, "MonthDay"),
        ({"ScheduleMode": "Monthly", "MonthDay": 32}, "MonthDay"),
        ({"ScheduleMode": "OneTime"}, "StartDateTime"),
        (
            {
                "ScheduleMode": "OneTime",
                "StartDateTime": "2026-01-02T00:00:00",
                "EndDateTime": "2026-01-01T00:00:00",
            },
            "EndDateTime",
        ),
        (
            {
                "ScheduleMode": "OneTime",
                "StartDateTime": "yesterday",
                "EndDateTime": "2026-01-01T00:00:00",
            },
            "StartDateTime",
        ),
        ({"TimeZone": "Mars/Olympus"}, "TimeZone"),
        ({"TimeZone": "../../etc/passwd"}, "TimeZone"),
        ({"Colour": "red"}, "Colour"),
        ({"Description": "x" * 1001}, "Description"),
    ],
)
def test_bad_periods_name_the_field(fields: dict[str, Any], field: str) -> None:
    base = {
        "ScheduleMode": "Daily",
        "StartTime": "01:00",
        "EndTime": "02:00",
        "MaintenanceType": "DisableMonitoring",
    }
    with pytest.raises(ValidationError) as caught:
        MaintenancePeriod.model_validate({**base, **fields})
    assert field in str(caught.value)


# --- the API ---------------------------------------------------------------------------------


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
) -> str | None:
    found = await call(client, method, path, body, status)
    assert found["Messages"][0]["Message"]
    field: str | None = found["Messages"][0]["Field"]
    return field


async def new_monitor(client: TestClient[Any, Any], name: str = "m") -> str:
    body = {
        "Name": name,
        "MonitorType": "Https",
        "Url": "https://127.0.0.1:9/",
        "CheckInterval": 1,
    }
    return str((await call(client, "POST", "/Monitor", body, 201))["MonitorGuid"])


NIGHTLY = {
    "ScheduleMode": "Daily",
    "StartTime": "22:00",
    "EndTime": "02:00",
    "MaintenanceType": "DisableNotifications",
}


async def test_period_operations(api: tuple[TestClient[Any, Any], Controller]) -> None:
    client, ctl = api
    guid = await new_monitor(client)
    path = f"/Monitor/{guid}/MaintenancePeriod"
    before = await call(client, "GET", f"/Monitor/{guid}")
    assert await call(client, "GET", path) == []

    created = await call(client, "POST", path, {**NIGHTLY, "Id": 999}, 201)  # Id is the server's
    assert created == {
        "Id": created["Id"],
        "ScheduleMode": "Daily",
        "MaintenanceType": "DisableNotifications",
        "StartDateTime": None,
        "EndDateTime": None,
        "WeekDay": None,
        "MonthDay": None,
        "StartTime": "22:00",
        "EndTime": "02:00",
        "Description": "",
        "TimeZoneId": 1000,
        "TimeZone": "Etc/UTC",
    }
    assert created["Id"] != 999
    one_time = await call(
        client,
        "POST",
        path,
        {
            "ScheduleMode": "OneTime",
            "StartDateTime": "2026-01-01T10:00:00",
            "EndDateTime": "2026-01-01T11:00:00",
            # a round trip sends every field: those of other modes are ignored
            "StartTime": "05:00",
            "WeekDay": "Monday",
            "MaintenanceType": "DisableMonitoring",
            "TimeZoneId": 1004,
            "TimeZone": "Asia/Tokyo",  # read-only: follows from the id
        },
        201,
    )
    assert one_time["StartTime"] is None and one_time["WeekDay"] is None
    assert (one_time["TimeZoneId"], one_time["TimeZone"]) == (1004, "Europe/Amsterdam")
    assert one_time["Id"] > created["Id"]
    assert await call(client, "GET", path) == [created, one_time]

    # the monitor keeps them in its definition (its agents get them) but does not show them
    monitor = await call(client, "GET", f"/Monitor/{guid}")
    assert "MaintenancePeriods" not in monitor and monitor["Hash"] != before["Hash"]
    row = ctl.assigner.monitors[guid]
    assert [p["Id"] for p in row.definition["MaintenancePeriods"]] == [
        created["Id"],
        one_time["Id"],
    ]
    # a PUT or PATCH of the monitor keeps them; a monitor body may not carry them
    await call(client, "PATCH", f"/Monitor/{guid}", {"Notes": "n"}, 204)
    put = {k: v for k, v in monitor.items() if k not in ("Hash",)}
    await call(client, "PUT", f"/Monitor/{guid}", {**put, "Notes": "p"}, 204)
    assert len(await call(client, "GET", path)) == 2
    for method in ("PUT", "PATCH"):
        field = await error(
            client, method, f"/Monitor/{guid}", {**put, "MaintenancePeriods": []}, 400
        )
        assert field == "MaintenancePeriods"
    field = await error(client, "GET", f"/Monitor/{guid}?filter=MaintenancePeriods", None, 400)
    assert field == "filter"

    # PUT replaces one period
    weekly = {
        "ScheduleMode": "Weekly",
        "WeekDay": "Saturday",
        "StartTime": "03:00",
        "EndTime": "04:00",
        "MaintenanceType": "DisableMonitoring",
        "Description": "backups",
    }
    await call(client, "PUT", f"{path}/{created['Id']}", {**weekly, "Id": created["Id"]}, 204)
    got = await call(client, "GET", path)
    assert got[0]["Id"] == created["Id"] and got[0]["WeekDay"] == "Saturday"
    assert got[0]["Description"] == "backups" and got[1] == one_time

    await call(client, "DELETE", f"{path}/{created['Id']}", status=204)
    assert await call(client, "GET", path) == [one_time]
    assert await error(client, "DELETE", f"{path}/{created['Id']}", None, 404) == (
        "maintenancePeriodId"
    )
    # a new period never gets an id used before
    again = await call(client, "POST", path, NIGHTLY, 201)
    assert again["Id"] not in (created["Id"], one_time["Id"])


async def test_cleanup_drops_one_time_periods_that_ended(
    api: tuple[TestClient[Any, Any], Controller],
) -> None:
    client, _ = api
    guid = await new_monitor(client)
    path = f"/Monitor/{guid}/MaintenancePeriod"

    def one_time(start: str, end: str, zone: int = 1000) -> dict[str, Any]:
        return {
            "ScheduleMode": "OneTime",
            "StartDateTime": start,
            "EndDateTime": end,
            "MaintenanceType": "DisableMonitoring",
            "TimeZoneId": zone,
        }

    old = await call(
        client, "POST", path, one_time("2025-01-01T10:00:00", "2025-01-01T11:00:00"), 201
    )
    edge = await call(
        client, "POST", path, one_time("2025-02-28T23:00:00", "2025-03-01T00:00:00"), 201
    )
    spans = await call(
        client, "POST", path, one_time("2025-02-28T23:00:00", "2025-03-01T00:30:00"), 201
    )
    # 2025-02-28 23:30 in New York is 2025-03-01 04:30 UTC: it ends on the 28th there
    east = await call(
        client,
        "POST",
        path,
        one_time("2025-02-28T22:00:00", "2025-02-28T23:30:00", 1053),  # New York
        201,
    )
    daily = await call(client, "POST", path, NIGHTLY, 201)
    await call(client, "POST", f"{path}/Cleanup/2025-03-01", status=204)
    kept = [p["Id"] for p in await call(client, "GET", path)]
    assert kept == [spans["Id"], daily["Id"]], (old, edge, east)
    await call(client, "POST", f"{path}/Cleanup/2025-03-01", status=204)  # nothing left to drop
    for bad in ("2025-13-01", "01-03-2025", "2025-3-1", "today"):
        assert await error(client, "POST", f"{path}/Cleanup/{bad}", None, 400) == "beforeDate"
    nobody = str(uuid.uuid4())
    assert await error(
        client, "POST", f"/Monitor/{nobody}/MaintenancePeriod/Cleanup/2025-03-01", None, 404
    ) == ("monitorGuid")


async def test_bad_bodies_and_unknown_ids(api: tuple[TestClient[Any, Any], Controller]) -> None:
    client, _ = api
    guid = await new_monitor(client)
    path = f"/Monitor/{guid}/MaintenancePeriod"
    period = await call(client, "POST", path, NIGHTLY, 201)
    for body, field in [
        ({**NIGHTLY, "ScheduleMode": "Hourly"}, "ScheduleMode"),
        ({**NIGHTLY, "ScheduleMode": None}, "ScheduleMode"),
        ({k: v for k, v in NIGHTLY.items() if k != "MaintenanceType"}, "MaintenanceType"),
        ({**NIGHTLY, "MaintenanceType": "Pause"}, "MaintenanceType"),
        ({**NIGHTLY, "StartTime": "22:60"}, "StartTime"),
        ({**NIGHTLY, "EndTime": None}, "EndTime"),
        ({**NIGHTLY, "EndTime": 2}, "EndTime"),
        ({**NIGHTLY, "ScheduleMode": "Weekly"}, "WeekDay"),
        ({**NIGHTLY, "ScheduleMode": "Monthly", "MonthDay": 40}, "MonthDay"),
        ({**NIGHTLY, "ScheduleMode": "Monthly", "MonthDay": "1"}, "MonthDay"),
        ({**NIGHTLY, "ScheduleMode": "OneTime"}, "StartDateTime"),
        ({**NIGHTLY, "TimeZoneId": 999_999}, "TimeZoneId"),
        ({**NIGHTLY, "TimeZoneId": "1004"}, "TimeZoneId"),
        ({**NIGHTLY, "TimeZoneId": True}, "TimeZoneId"),
        ({**NIGHTLY, "Extra": 1}, "Extra"),
        ({**NIGHTLY, "": 1}, '""'),
    ]:
        assert await error(client, "POST", path, body, 400) == field, body
        assert await error(client, "PUT", f"{path}/{period['Id']}", body, 400) == field, body
    assert await error(client, "PUT", f"{path}/{period['Id']}", {**NIGHTLY, "Id": 7}, 400) == "Id"
    resp = await client.post(API + path, data=b"[]", headers=ADMIN)
    assert resp.status == 400
    assert await call(client, "GET", path) == [period]  # nothing changed

    nobody = str(uuid.uuid4())
    for method in ("GET", "POST"):
        field = await error(client, method, f"/Monitor/{nobody}/MaintenancePeriod", NIGHTLY, 404)
        assert field == "monitorGuid"
    for method in ("PUT", "DELETE"):
        field = await error(
            client, method, f"/Monitor/{nobody}/MaintenancePeriod/{period['Id']}", NIGHTLY, 404
        )
        assert field == "monitorGuid"
        for ident in ("123456", "x", "-1", "99999999999999999999"):
            field = await error(client, method, f"{path}/{ident}", NIGHTLY, 404)
            assert field == "maintenancePeriodId", (method, ident)


async def test_results_in_a_period_are_flagged(
    api: tuple[TestClient[Any, Any], Controller],
) -> None:
    """DisableNotifications keeps checking and flags what it stores; a result from a
    DisableMonitoring period (an agent that had not got the period yet) is flagged too."""
    client, ctl = api
    guid = await new_monitor(client)
    now = time.time()
    start = dt.datetime.fromtimestamp(now - 3600, UTC).strftime("%Y-%m-%dT%H:%M:%S")
    end = dt.datetime.fromtimestamp(now + 3600, UTC).strftime("%Y-%m-%dT%H:%M:%S")
    await call(
        client,
        "POST",
        f"/Monitor/{guid}/MaintenancePeriod",
        {
            "ScheduleMode": "OneTime",
            "StartDateTime": start,
            "EndDateTime": end,
            "MaintenanceType": "DisableNotifications",
        },
        201,
    )
    ctl.assigner.history.opened(guid, "agent-a", int((now - 7200) * 1e6))

    def result(scheduled: float, code: int = 0) -> CheckResult:
        return CheckResult(
            uid=uuid.uuid4().hex,
            monitor_guid=guid,
            monitor_type="Https",
            scheduled_at=scheduled,
            started_at=scheduled,
            error_code=code,
            error_description="",
        )

    batch = ResultBatch(
        batch_id=uuid.uuid4().hex,
        agent="agent-a",
        results=[result(now - 5400), result(now - 60, code=1), result(now + 3 * 3600)],
    )
    await ctl.ingest.process([batch])
    page = await call(
        client, "GET", f"/MonitorCheck/Monitor/{guid}?PresetPeriod=All&Sorting=Ascending"
    )
    flags = [d["Attributes"]["InMaintenance"] for d in page["Data"]]
    assert flags == [False, True, False]
    assert page["Data"][1]["Attributes"]["ErrorCode"] == 1  # checked and stored all the same

    # the alerting side's question, answered from the monitor as the controller has it
    monitor = ctl.assigner.monitors[guid]
    assert controller_maintenance.in_force(monitor, now) == {"DisableNotifications"}
    assert controller_maintenance.notifications_disabled(monitor, now)
    assert not controller_maintenance.monitoring_disabled(monitor, now)
    assert not controller_maintenance.notifications_disabled(monitor, now + 2 * 3600)
