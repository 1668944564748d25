"""Operators, operator groups, off-duty schedules and time zones: every /Operator… and
/OperatorGroup… operation (but Authorization) and /Timezone, the built-in groups, who may
manage what, bad bodies, the login with Email, the migration of existing users, and who is
on duty at an instant, in each operator's time zone across daylight-saving changes.

The API tests run on SQLite and on a fresh PostgreSQL database."""

from __future__ import annotations

import base64
from collections.abc import AsyncIterator
from datetime import UTC, datetime, time
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa
from aiohttp.test_utils import TestClient

from controller import duty, timezones
from controller.app import Controller
from controller.auth import hash_password
from controller.db.store import Store
from tests.helpers import controller_client

PASSWORD = "operators-test-password"
P = "/api/v4"
AMSTERDAM = 1004  # Picket's TimeZoneId of Europe/Amsterdam
CHICAGO = 56  # Uptrends' "GMT-06:00* Central time"

Client = TestClient[Any, Any]


def basic(user: str, password: str) -> dict[str, str]:
    token = base64.b64encode(f"{user}:{password}".encode()).decode()
    return {"Authorization": "Basic " + token}


ADMIN = basic("admin", PASSWORD)


@pytest.fixture
async def api(tmp_path: Path, database_url: str) -> AsyncIterator[tuple[Client, Controller]]:
    async with controller_client(tmp_path, PASSWORD, database_url=database_url) as pair:
        yield pair


async def _json(response: Any, status: int) -> Any:
    text = await response.text()
    assert response.status == status, text
    return await response.json() if text else None


async def _operator(client: Client, **fields: Any) -> dict[str, Any]:
    body = {"FullName": "Olga Ops", "Email": "olga@example.org", "Password": "olga-pass-1"}
    body.update(fields)
    return await _json(await client.post(P + "/Operator", json=body, headers=ADMIN), 201)  # type: ignore[no-any-return]


async def _groups(client: Client) -> dict[str, dict[str, Any]]:
    found = await _json(await client.get(P + "/OperatorGroup", headers=ADMIN), 200)
    return {g["Description"]: g for g in found}


# --- every operation ----------------------------------------------------------------------------


async def test_every_operator_operation(api: tuple[Client, Controller]) -> None:
    client, _ = api
    created = await _operator(
        client, MobilePhone="+31 6 1234 5678", TimeZoneId=AMSTERDAM, CultureName="nl-NL"
    )
    guid = created["OperatorGuid"]
    assert "Password" not in created
    assert created["Email"] == "olga@example.org" and created["UserName"] == "olga@example.org"
    assert created["IsOnDuty"] is True and created["OnDutyNow"] is True
    assert created["IsAccountAdministrator"] is False and created["TimeZoneId"] == AMSTERDAM
    assert created["CultureName"] == "nl-NL" and created["Hash"]

    everyone = await _json(await client.get(P + "/Operator", headers=ADMIN), 200)
    assert [o["UserName"] for o in everyone] == ["admin", "olga@example.org"]
    assert everyone[0]["IsAccountAdministrator"] is True
    assert all("Password" not in o for o in everyone)

    one = await _json(await client.get(f"{P}/Operator/{guid}", headers=ADMIN), 200)
    assert one == created

    # PUT replaces: what is not sent is reset (the password is kept)
    put = {"OperatorGuid": guid, "FullName": "Olga O.", "Email": "Olga.Ops@Example.org"}
    await _json(await client.put(f"{P}/Operator/{guid}", json=put, headers=ADMIN), 204)
    one = await _json(await client.get(f"{P}/Operator/{guid}", headers=ADMIN), 200)
    assert one["FullName"] == "Olga O." and one["Email"] == "Olga.Ops@Example.org"
    assert one["MobilePhone"] == "" and one["TimeZoneId"] is None and one["CultureName"] == ""
    assert one["Hash"] != created["Hash"]

    # PATCH changes what is sent; `XxxSpecified: false` leaves Xxx alone
    patch = {
        "BackupEmail": "olga@backup.example.net",
        "IsOnDuty": False,
        "TimeZoneId": 0,
        "TimeZoneIdSpecified": False,
    }
    await _json(await client.patch(f"{P}/Operator/{guid}", json=patch, headers=ADMIN), 204)
    one = await _json(await client.get(f"{P}/Operator/{guid}", headers=ADMIN), 200)
    assert one["BackupEmail"] == "olga@backup.example.net" and one["IsOnDuty"] is False
    assert one["OnDutyNow"] is False and one["FullName"] == "Olga O."
    assert one["TimeZoneId"] is None

    groups = await _groups(client)
    assert groups["Everyone"]["IsEveryone"] and groups["Administrators"]["IsAdministratorsGroup"]
    mine = await _json(await client.get(f"{P}/Operator/{guid}/OperatorGroup", headers=ADMIN), 200)
    assert mine == [{"OperatorGroupGuid": groups["Everyone"]["OperatorGroupGuid"]}]

    await _json(await client.delete(f"{P}/Operator/{guid}", headers=ADMIN), 204)
    await _json(await client.get(f"{P}/Operator/{guid}", headers=ADMIN), 404)
    await _json(await client.delete(f"{P}/Operator/{guid}", headers=ADMIN), 404)
    await _json(await client.get(f"{P}/Operator/not-a-guid", headers=ADMIN), 404)


async def test_every_schedule_operation(api: tuple[Client, Controller]) -> None:
    client, _ = api
    guid = (await _operator(client))["OperatorGuid"]
    base = f"{P}/Operator/{guid}/DutySchedule"
    sent = [
        {"ScheduleMode": "Weekly", "WeekDay": "Thursday", "StartTime": "08:00", "EndTime": "16:30"},
        {"ScheduleMode": "Daily", "StartTime": "22:00", "EndTime": "07:00"},
        {"ScheduleMode": "Monthly", "MonthDay": 15, "StartTime": "8:00", "EndTime": "16:30"},
        {
            "ScheduleMode": "OneTime",
            "StartDateTime": "2026-12-24T18:00:00",
            "EndDateTime": "2026-12-27T08:00:00",
        },
        # the fields of another mode are not kept (generated clients send them all)
        {
            "Id": 0,
            "ScheduleMode": "Daily",
            "StartTime": "12:00",
            "EndTime": "13:00",
            "WeekDay": "Monday",
            "MonthDay": 3,
            "StartDateTime": None,
        },
    ]
    made = [await _json(await client.post(base, json=s, headers=ADMIN), 201) for s in sent]
    assert [m["ScheduleMode"] for m in made] == ["Weekly", "Daily", "Monthly", "OneTime", "Daily"]
    assert made[2] == {
        "Id": made[2]["Id"],
        "ScheduleMode": "Monthly",
        "MonthDay": 15,
        "StartTime": "08:00",
        "EndTime": "16:30",
    }
    assert made[4] == {
        "Id": made[4]["Id"],
        "ScheduleMode": "Daily",
        "StartTime": "12:00",
        "EndTime": "13:00",
    }
    listed = await _json(await client.get(base, headers=ADMIN), 200)
    assert listed == made

    changed = {
        "Id": made[0]["Id"],
        "ScheduleMode": "Weekly",
        "WeekDay": "Wednesday",
        "StartTime": "09:00",
        "EndTime": "17:00",
    }
    await _json(await client.put(f"{base}/{made[0]['Id']}", json=changed, headers=ADMIN), 204)
    listed = await _json(await client.get(base, headers=ADMIN), 200)
    assert listed[0] == changed
    await _json(await client.put(f"{base}/{made[1]['Id']}", json=changed, headers=ADMIN), 400)
    await _json(await client.put(f"{base}/999999", json=sent[1], headers=ADMIN), 404)
    await _json(await client.put(f"{base}/x", json=sent[1], headers=ADMIN), 404)

    await _json(await client.delete(f"{base}/{made[1]['Id']}", headers=ADMIN), 204)
    await _json(await client.delete(f"{base}/{made[1]['Id']}", headers=ADMIN), 404)
    listed = await _json(await client.get(base, headers=ADMIN), 200)
    assert [s["Id"] for s in listed] == [made[0]["Id"], made[2]["Id"], made[3]["Id"], made[4]["Id"]]

    # another operator's schedule is not reachable through this one
    other = (await _operator(client, Email="oscar@example.org"))["OperatorGuid"]
    url = f"{P}/Operator/{other}/DutySchedule/{made[0]['Id']}"
    await _json(await client.delete(url, headers=ADMIN), 404)


async def test_every_group_operation(api: tuple[Client, Controller]) -> None:
    client, _ = api
    olga = (await _operator(client))["OperatorGuid"]
    oscar = (await _operator(client, Email="oscar@example.org", FullName="Oscar"))["OperatorGuid"]
    made = await _json(
        await client.post(P + "/OperatorGroup", json={"Description": "Night shift"}, headers=ADMIN),
        201,
    )
    group = made["OperatorGroupGuid"]
    assert made == {
        "OperatorGroupGuid": group,
        "Description": "Night shift",
        "IsEveryone": False,
        "IsAdministratorsGroup": False,
    }
    url = f"{P}/OperatorGroup/{group}"
    assert await _json(await client.get(url, headers=ADMIN), 200) == made
    await _json(await client.put(url, json={"Description": "Nights"}, headers=ADMIN), 204)
    assert (await _json(await client.get(url, headers=ADMIN), 200))["Description"] == "Nights"
    assert list(await _groups(client)) == ["Everyone", "Administrators", "Nights"]

    assert await _json(await client.get(url + "/Member", headers=ADMIN), 200) == []
    for guid in (olga, oscar, olga):  # adding a member twice is no error
        await _json(await client.post(f"{url}/Member/{guid}", headers=ADMIN), 201)
    members = await _json(await client.get(url + "/Member", headers=ADMIN), 200)
    assert members == [{"OperatorGuid": olga}, {"OperatorGuid": oscar}]
    mine = await _json(await client.get(f"{P}/Operator/{olga}/OperatorGroup", headers=ADMIN), 200)
    assert [m["OperatorGroupGuid"] for m in mine][-1] == group

    # a schedule for every member; duty for every member
    schedule = {"ScheduleMode": "Daily", "StartTime": "23:00", "EndTime": "06:00"}
    await _json(
        await client.post(
            f"{url}/DutySchedule/AddDutyScheduleForAllMembers", json=schedule, headers=ADMIN
        ),
        204,
    )
    for guid in (olga, oscar):
        got = await _json(await client.get(f"{P}/Operator/{guid}/DutySchedule", headers=ADMIN), 200)
        assert [(s["StartTime"], s["EndTime"]) for s in got] == [("23:00", "06:00")]
    await _json(await client.post(url + "/AllOperatorsOffDuty", headers=ADMIN), 204)
    ops = await _json(await client.get(P + "/Operator", headers=ADMIN), 200)
    assert {o["UserName"]: o["IsOnDuty"] for o in ops} == {
        "admin": True,
        "olga@example.org": False,
        "oscar@example.org": False,
    }
    await _json(await client.post(url + "/AllOperatorsOnDuty", headers=ADMIN), 204)
    ops = await _json(await client.get(P + "/Operator", headers=ADMIN), 200)
    assert all(o["IsOnDuty"] for o in ops)
    missing = f"{P}/OperatorGroup/00000000-0000-0000-0000-000000000000/AllOperatorsOnDuty"
    error = await _json(await client.post(missing, headers=ADMIN), 404)
    assert error["Message"] and error["Messages"][0]["Field"] == "operatorGroupGuid"

    await _json(await client.delete(f"{url}/Member/{oscar}", headers=ADMIN), 204)
    await _json(await client.delete(f"{url}/Member/{oscar}", headers=ADMIN), 404)
    members = await _json(await client.get(url + "/Member", headers=ADMIN), 200)
    assert members == [{"OperatorGuid": olga}]

    # a deleted operator leaves its groups
    await _json(await client.delete(f"{P}/Operator/{olga}", headers=ADMIN), 204)
    assert await _json(await client.get(url + "/Member", headers=ADMIN), 200) == []

    await _json(await client.delete(url, headers=ADMIN), 204)
    await _json(await client.get(url, headers=ADMIN), 404)
    await _json(await client.get(url + "/Member", headers=ADMIN), 404)


async def test_the_built_in_groups(api: tuple[Client, Controller]) -> None:
    client, _ = api
    groups = await _groups(client)
    everyone = f"{P}/OperatorGroup/{groups['Everyone']['OperatorGroupGuid']}"
    admins = f"{P}/OperatorGroup/{groups['Administrators']['OperatorGroupGuid']}"
    admin_guid = (await _json(await client.get(P + "/Operator", headers=ADMIN), 200))[0][
        "OperatorGuid"
    ]
    olga = (await _operator(client))["OperatorGuid"]

    # every operator is in Everyone, always
    members = await _json(await client.get(everyone + "/Member", headers=ADMIN), 200)
    assert members == [{"OperatorGuid": admin_guid}, {"OperatorGuid": olga}]
    await _json(await client.post(f"{everyone}/Member/{olga}", headers=ADMIN), 201)
    error = await _json(await client.delete(f"{everyone}/Member/{olga}", headers=ADMIN), 400)
    assert error["Messages"][0]["Field"] == "operatorGuid"
    assert await _json(await client.get(admins + "/Member", headers=ADMIN), 200) == [
        {"OperatorGuid": admin_guid}
    ]

    for url in (everyone, admins):
        await _json(await client.delete(url, headers=ADMIN), 400)
        await _json(await client.put(url, json={"Description": "x"}, headers=ADMIN), 400)
    # the built-in admin stays an administrator; nobody deletes itself or the admin
    await _json(await client.delete(f"{admins}/Member/{admin_guid}", headers=ADMIN), 400)
    await _json(await client.delete(f"{P}/Operator/{admin_guid}", headers=ADMIN), 403)
    await _json(await client.post(f"{admins}/Member/{olga}", headers=ADMIN), 201)
    olga_login = basic("olga@example.org", "olga-pass-1")
    await _json(await client.delete(f"{P}/Operator/{olga}", headers=olga_login), 403)
    await _json(await client.delete(f"{P}/Operator/{admin_guid}", headers=olga_login), 403)

    # AllOperatorsOffDuty on Everyone: nobody is on duty
    await _json(await client.post(everyone + "/AllOperatorsOffDuty", headers=ADMIN), 204)
    ops = await _json(await client.get(P + "/Operator", headers=ADMIN), 200)
    assert [o["IsOnDuty"] for o in ops] == [False, False]


async def test_timezones(api: tuple[Client, Controller]) -> None:
    client, _ = api
    listed = await _json(await client.get(P + "/Timezone", headers=ADMIN), 200)
    by_id = {z["TimezoneId"]: z for z in listed}
    assert len(by_id) == len(listed) == len(timezones.ZONES)
    assert by_id[CHICAGO]["OffsetFromUtc"] == -360 and by_id[CHICAGO]["HasDaylightSaving"]
    assert by_id[CHICAGO]["DaylightSavingOffset"] == 60
    assert by_id[AMSTERDAM]["Description"] == "GMT+01:00 Netherlands"
    assert by_id[AMSTERDAM]["IanaName"] == "Europe/Amsterdam"
    utc = by_id[timezones.UTC_ID]
    assert utc["OffsetFromUtc"] == 0 and not utc["HasDaylightSaving"]
    assert "DaylightSavingOffset" not in utc
    india = next(z for z in listed if z["IanaName"] == "Asia/Kolkata")
    assert india["OffsetFromUtc"] == 330 and india["Description"].startswith("GMT+05:30")
    assert (
        await _json(await client.get(f"{P}/Timezone/{AMSTERDAM}", headers=ADMIN), 200)
        == (by_id[AMSTERDAM])
    )
    await _json(await client.get(f"{P}/Timezone/4", headers=ADMIN), 404)
    await _json(await client.get(f"{P}/Timezone/x", headers=ADMIN), 404)
    await _json(await client.get(P + "/Timezone"), 401)


# --- who may do what ----------------------------------------------------------------------------


async def test_only_administrators_manage(api: tuple[Client, Controller]) -> None:
    client, _ = api
    olga = (await _operator(client))["OperatorGuid"]
    oscar = (await _operator(client, Email="oscar@example.org"))["OperatorGuid"]
    groups = await _groups(client)
    admins = groups["Administrators"]["OperatorGroupGuid"]
    group = f"{P}/OperatorGroup/{groups['Everyone']['OperatorGroupGuid']}"
    me = basic("olga@example.org", "olga-pass-1")
    schedule = {"ScheduleMode": "Daily", "StartTime": "22:00", "EndTime": "07:00"}

    # reading is allowed
    for path in (
        "/Operator",
        f"/Operator/{oscar}",
        f"/Operator/{oscar}/OperatorGroup",
        f"/Operator/{oscar}/DutySchedule",
        "/OperatorGroup",
        f"/OperatorGroup/{admins}",
        f"/OperatorGroup/{admins}/Member",
        "/Timezone",
    ):
        await _json(await client.get(P + path, headers=me), 200)

    refused = [
        ("POST", "/Operator", {"Email": "new@example.org"}),
        ("PUT", f"/Operator/{oscar}", {"Email": "oscar@example.org"}),
        ("PATCH", f"/Operator/{oscar}", {"IsOnDuty": False}),
        ("PATCH", f"/Operator/{olga}", {"IsOnDuty": False}),  # itself too, for now
        ("DELETE", f"/Operator/{oscar}", None),
        ("POST", f"/Operator/{oscar}/DutySchedule", schedule),
        ("PUT", f"/Operator/{oscar}/DutySchedule/1", schedule),
        ("DELETE", f"/Operator/{oscar}/DutySchedule/1", None),
        ("POST", "/OperatorGroup", {"Description": "Mine"}),
        ("PUT", f"/OperatorGroup/{admins}", {"Description": "Mine"}),
        ("DELETE", f"/OperatorGroup/{admins}", None),
        ("POST", f"/OperatorGroup/{admins}/Member/{olga}", None),
        ("DELETE", f"/OperatorGroup/{admins}/Member/{olga}", None),
        ("POST", f"{group[len(P) :]}/DutySchedule/AddDutyScheduleForAllMembers", schedule),
        ("POST", f"{group[len(P) :]}/AllOperatorsOnDuty", None),
        ("POST", f"{group[len(P) :]}/AllOperatorsOffDuty", None),
    ]
    for method, path, body in refused:
        response = await client.request(method, P + path, json=body, headers=me)
        error = await _json(response, 403)
        assert "Administrators" in error["Messages"][0]["Message"], (method, path)

    # made an administrator: allowed at once (its remembered login is forgotten)
    await _json(await client.post(f"{P}/OperatorGroup/{admins}/Member/{olga}", headers=ADMIN), 201)
    await _json(
        await client.patch(f"{P}/Operator/{oscar}", json={"IsOnDuty": False}, headers=me), 204
    )
    await _json(
        await client.delete(f"{P}/OperatorGroup/{admins}/Member/{olga}", headers=ADMIN), 204
    )
    await _json(
        await client.patch(f"{P}/Operator/{oscar}", json={"IsOnDuty": True}, headers=me), 403
    )


# --- logins -------------------------------------------------------------------------------------


async def test_operators_log_in_with_their_email(api: tuple[Client, Controller]) -> None:
    client, _ = api
    guid = (await _operator(client))["OperatorGuid"]
    for login in ("olga@example.org", "Olga@Example.ORG"):
        await _json(await client.get(P + "/Operator", headers=basic(login, "olga-pass-1")), 200)
    await _json(await client.get(P + "/Operator", headers=basic("olga@example.org", "wrong")), 401)
    await _json(await client.get(P + "/Operator", headers=ADMIN), 200)

    # a new Email is the new login; a new password replaces the old
    url = f"{P}/Operator/{guid}"
    patch = {"Email": "olga@new.example.org", "Password": "olga-pass-2"}
    await _json(await client.patch(url, json=patch, headers=ADMIN), 204)
    await _json(await client.get(url, headers=basic("olga@example.org", "olga-pass-1")), 401)
    await _json(await client.get(url, headers=basic("olga@new.example.org", "olga-pass-1")), 401)
    await _json(await client.get(url, headers=basic("olga@new.example.org", "olga-pass-2")), 200)

    # no native login: refused like a wrong password
    await _json(await client.patch(url, json={"AllowNativeLogin": False}, headers=ADMIN), 204)
    await _json(await client.get(url, headers=basic("olga@new.example.org", "olga-pass-2")), 401)

    # an operator made without a password cannot log in until one is set
    bare = await _operator(client, Email="nopass@example.org", Password=None)
    await _json(await client.get(url, headers=basic("nopass@example.org", "!")), 401)
    await _json(await client.get(url, headers=basic("nopass@example.org", "")), 401)
    set_password = {"Password": "finally-set"}
    await _json(
        await client.patch(
            f"{P}/Operator/{bare['OperatorGuid']}", json=set_password, headers=ADMIN
        ),
        204,
    )
    await _json(await client.get(url, headers=basic("nopass@example.org", "finally-set")), 200)

    # the built-in admin keeps its name, and may have an Email as well
    admin_guid = (await _json(await client.get(P + "/Operator", headers=ADMIN), 200))[0][
        "OperatorGuid"
    ]
    await _json(
        await client.patch(
            f"{P}/Operator/{admin_guid}", json={"Email": "root@example.org"}, headers=ADMIN
        ),
        204,
    )
    await _json(await client.get(url, headers=ADMIN), 200)
    await _json(await client.get(url, headers=basic("root@example.org", PASSWORD)), 200)
    admin = await _json(await client.get(f"{P}/Operator/{admin_guid}", headers=ADMIN), 200)
    assert admin["UserName"] == "admin" and admin["Email"] == "root@example.org"


async def test_migration_keeps_existing_users(database_url: str, tmp_path: Path) -> None:
    """A database of the previous schema, with an administrator, another operator whose user
    name is an email address, and an API account: all still log in after the upgrade."""
    from alembic import command
    from alembic.config import Config
    from sqlalchemy.ext.asyncio import create_async_engine

    from controller.db import migrate

    def upgrade_to(revision: str) -> Any:
        def run(connection: Any) -> None:
            config = Config()
            config.set_main_option("script_location", str(migrate.MIGRATIONS))
            config.attributes["connection"] = connection
            command.upgrade(config, revision)

        return run

    engine = create_async_engine(database_url)
    hashed = hash_password("old-password")
    try:
        async with engine.begin() as conn:
            await conn.run_sync(upgrade_to("0006"))
            for guid, name, admin in (
                ("g-root", "admin", True),
                ("g-bob", "bob", True),
                ("g-carol", "Carol@Example.org", False),
            ):
                await conn.execute(
                    sa.text(
                        "INSERT INTO operator (guid, username, full_name, password_hash, "
                        "is_admin, created_us) VALUES (:g, :n, :n, :h, :a, 1)"
                    ),
                    {"g": guid, "n": name, "h": hashed, "a": admin},
                )
            await conn.execute(
                sa.text(
                    "INSERT INTO api_account (username, password_hash, operator_guid, "
                    "description, created_us) VALUES ('api-carol', :h, 'g-carol', 'API', 1)"
                ),
                {"h": hashed},
            )
    finally:
        await engine.dispose()

    async with controller_client(tmp_path, "old-password", database_url=database_url) as (
        client,
        _,
    ):
        for login in ("admin", "bob", "carol@example.org", "Carol@Example.org", "api-carol"):
            await _json(
                await client.get(P + "/Operator", headers=basic(login, "old-password")), 200
            )
        old = basic("admin", "old-password")
        listed = await _json(await client.get(P + "/Operator", headers=old), 200)
        ops = {o["UserName"]: o for o in listed}
        assert ops["Carol@Example.org"]["Email"] == "Carol@Example.org"
        assert ops["bob"]["Email"] == ""
        groups = await _json(await client.get(P + "/OperatorGroup", headers=old), 200)
        admins = next(g for g in groups if g["IsAdministratorsGroup"])["OperatorGroupGuid"]
        url = f"{P}/OperatorGroup/{admins}/Member"
        members = await _json(await client.get(url, headers=old), 200)
        assert {m["OperatorGuid"] for m in members} == {"g-root", "g-bob"}
        # bob manages; carol (and her API account) reads only
        await _json(
            await client.post(
                P + "/OperatorGroup",
                json={"Description": "x"},
                headers=basic("bob", "old-password"),
            ),
            201,
        )
        for login in ("carol@example.org", "api-carol"):
            await _json(
                await client.post(
                    P + "/OperatorGroup",
                    json={"Description": "y"},
                    headers=basic(login, "old-password"),
                ),
                403,
            )


# --- bad input ----------------------------------------------------------------------------------


BAD_OPERATORS = [
    ({"Email": "not-an-email"}, "Email"),
    ({"Email": "a@b"}, "Email"),
    ({"Email": ""}, "Email"),
    ({"FullName": "No Email"}, "Email"),
    ({"Email": 12}, "Email"),
    ({"Email": "x@example.org", "BackupEmail": "nope"}, "BackupEmail"),
    ({"Email": "x@example.org", "MobilePhone": 31612345678}, "MobilePhone"),
    ({"Email": "x@example.org", "MobilePhone": "call me"}, "MobilePhone"),
    ({"Email": "x@example.org", "Password": "short"}, "Password"),
    ({"Email": "x@example.org", "Password": 12345678}, "Password"),
    ({"Email": "x@example.org", "CultureName": "xx-XX"}, "CultureName"),
    ({"Email": "x@example.org", "SmsProvider": "Pigeon"}, "SmsProvider"),
    ({"Email": "x@example.org", "TimeZoneId": 9999}, "TimeZoneId"),
    ({"Email": "x@example.org", "TimeZoneId": "1004"}, "TimeZoneId"),
    ({"Email": "x@example.org", "IsOnDuty": "yes"}, "IsOnDuty"),
    ({"Email": "x@example.org", "OperatorRole": "Boss"}, "OperatorRole"),
    ({"Email": "x@example.org", "SetupMode": "Invitation"}, "SetupMode"),
    ({"Email": "x@example.org", "AllowSingleSignon": True}, "AllowSingleSignon"),
    ({"Email": "x@example.org", "Typo": 1}, "Typo"),
    ({"Email": "olga@example.org"}, "Email"),  # taken
    ({"Email": "OLGA@example.org"}, "Email"),  # taken, in another case
]


@pytest.mark.parametrize(("body", "field"), BAD_OPERATORS)
async def test_bad_operator_bodies(
    api: tuple[Client, Controller], body: dict[str, Any], field: str
) -> None:
    client, _ = api
    olga = (await _operator(client))["OperatorGuid"]
    oscar = (await _operator(client, Email="oscar@example.org"))["OperatorGuid"]
    error = await _json(await client.post(P + "/Operator", json=body, headers=ADMIN), 400)
    assert error["Messages"][0]["Field"] == field, error
    # the same through PUT of another operator (an Email taken by olga); PATCH when it sets
    # the field
    error = await _json(await client.put(f"{P}/Operator/{oscar}", json=body, headers=ADMIN), 400)
    assert error["Messages"][0]["Field"] == field, error
    if field in body:
        error = await _json(
            await client.patch(f"{P}/Operator/{oscar}", json={field: body[field]}, headers=ADMIN),
            400,
        )
        assert error["Messages"][0]["Field"] == field, error
    assert olga


async def test_other_bad_operator_requests(api: tuple[Client, Controller]) -> None:
    client, _ = api
    olga = (await _operator(client))["OperatorGuid"]
    url = f"{P}/Operator/{olga}"
    other = "00000000-0000-0000-0000-000000000000"
    error = await _json(await client.patch(url, json={"OperatorGuid": other}, headers=ADMIN), 400)
    assert error["Messages"][0]["Field"] == "OperatorGuid"
    for bad in (b"", b"[]", b"{", b'"x"'):
        await _json(await client.patch(url, data=bad, headers=ADMIN), 400)
    await _json(await client.patch(f"{P}/Operator/{other}", json={}, headers=ADMIN), 404)
    # the round trip of a GET is accepted as it is (read-only fields included)
    got = await _json(await client.get(url, headers=ADMIN), 200)
    await _json(await client.put(url, json=got, headers=ADMIN), 204)
    assert await _json(await client.get(url, headers=ADMIN), 200) == got


BAD_SCHEDULES = [
    ({}, "ScheduleMode"),
    ({"ScheduleMode": "Hourly", "StartTime": "01:00", "EndTime": "02:00"}, "ScheduleMode"),
    ({"ScheduleMode": "Daily", "StartTime": "01:00"}, "EndTime"),
    ({"ScheduleMode": "Daily", "StartTime": "25:00", "EndTime": "02:00"}, "StartTime"),
    ({"ScheduleMode": "Daily", "StartTime": "1:00 PM", "EndTime": "02:00"}, "StartTime"),
    ({"ScheduleMode": "Daily", "StartTime": 100, "EndTime": "02:00"}, "StartTime"),
    ({"ScheduleMode": "Weekly", "StartTime": "01:00", "EndTime": "02:00"}, "WeekDay"),
    (
        {"ScheduleMode": "Weekly", "WeekDay": "Funday", "StartTime": "01:00", "EndTime": "02:00"},
        "WeekDay",
    ),
    ({"ScheduleMode": "Monthly", "StartTime": "01:00", "EndTime": "02:00"}, "MonthDay"),
    (
        {"ScheduleMode": "Monthly", "MonthDay": 32, "StartTime": "01:00", "EndTime": "02:00"},
        "MonthDay",
    ),
    (
        {"ScheduleMode": "Monthly", "MonthDay": 0, "StartTime": "01:00", "EndTime": "02:00"},
        "MonthDay",
    ),
    ({"ScheduleMode": "OneTime", "StartDateTime": "2026-01-01T00:00:00"}, "EndDateTime"),
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
            "StartDateTime": "2026-01-01T00:00:00Z",
            "EndDateTime": "2026-01-02T00:00:00",
        },
        "StartDateTime",
    ),
    (
        {
            "ScheduleMode": "OneTime",
            "StartDateTime": "tomorrow",
            "EndDateTime": "2026-01-02T00:00:00",
        },
        "StartDateTime",
    ),
    (
        {"ScheduleMode": "Daily", "StartTime": "01:00", "EndTime": "02:00", "Color": "red"},
        "Color",
    ),
]


@pytest.mark.parametrize(("body", "field"), BAD_SCHEDULES)
async def test_bad_schedules(
    api: tuple[Client, Controller], body: dict[str, Any], field: str
) -> None:
    client, _ = api
    olga = (await _operator(client))["OperatorGuid"]
    base = f"{P}/Operator/{olga}/DutySchedule"
    error = await _json(await client.post(base, json=body, headers=ADMIN), 400)
    assert error["Messages"][0]["Field"] == field, error
    good = {"ScheduleMode": "Daily", "StartTime": "01:00", "EndTime": "02:00"}
    made = await _json(await client.post(base, json=good, headers=ADMIN), 201)
    error = await _json(await client.put(f"{base}/{made['Id']}", json=body, headers=ADMIN), 400)
    assert error["Messages"][0]["Field"] == field, error
    everyone = (await _groups(client))["Everyone"]["OperatorGroupGuid"]
    url = f"{P}/OperatorGroup/{everyone}/DutySchedule/AddDutyScheduleForAllMembers"
    error = await _json(await client.post(url, json=body, headers=ADMIN), 400)
    assert error["Messages"][0]["Field"] == field, error


async def test_bad_group_bodies_and_limits(api: tuple[Client, Controller]) -> None:
    client, _ = api
    for body, field in (
        ({}, "Description"),
        ({"Description": ""}, "Description"),
        ({"Description": "   "}, "Description"),
        ({"Description": "x" * 201}, "Description"),
        ({"Description": 5}, "Description"),
        ({"Description": "x", "IsEveryone": True}, "IsEveryone"),
        ({"Description": "x", "IsAdministratorsGroup": True}, "IsAdministratorsGroup"),
        ({"Description": "x", "Members": []}, "Members"),
    ):
        error = await _json(await client.post(P + "/OperatorGroup", json=body, headers=ADMIN), 400)
        assert error["Messages"][0]["Field"] == field, error
    made = await _json(
        await client.post(P + "/OperatorGroup", json={"Description": "g"}, headers=ADMIN), 201
    )
    url = f"{P}/OperatorGroup/{made['OperatorGroupGuid']}"
    other = {"Description": "h", "OperatorGroupGuid": "00000000-0000-0000-0000-000000000000"}
    error = await _json(await client.put(url, json=other, headers=ADMIN), 400)
    assert error["Messages"][0]["Field"] == "OperatorGroupGuid"
    missing = "00000000-0000-0000-0000-000000000000"
    error = await _json(await client.post(f"{url}/Member/{missing}", headers=ADMIN), 404)
    assert error["Messages"][0]["Field"] == "operatorGuid"
    error = await _json(
        await client.post(f"{P}/OperatorGroup/{missing}/Member/x", headers=ADMIN), 404
    )
    assert error["Messages"][0]["Field"] == "operatorGroupGuid"

    # the number of schedules per operator is bounded; a group add adds to none past it
    from controller.api.operators import MAX_SCHEDULES_PER_OPERATOR

    olga = (await _operator(client))["OperatorGuid"]
    await _json(await client.post(f"{url}/Member/{olga}", headers=ADMIN), 201)
    schedule = {"ScheduleMode": "Daily", "StartTime": "01:00", "EndTime": "02:00"}
    base = f"{P}/Operator/{olga}/DutySchedule"
    for _ in range(MAX_SCHEDULES_PER_OPERATOR):
        await _json(await client.post(base, json=schedule, headers=ADMIN), 201)
    await _json(await client.post(base, json=schedule, headers=ADMIN), 400)
    error = await _json(
        await client.post(
            f"{url}/DutySchedule/AddDutyScheduleForAllMembers", json=schedule, headers=ADMIN
        ),
        400,
    )
    assert error["Messages"][0]["Field"] == "operatorGroupGuid"
    listed = await _json(await client.get(base, headers=ADMIN), 200)
    assert len(listed) == MAX_SCHEDULES_PER_OPERATOR


# --- who is on duty -----------------------------------------------------------------------------


def _at(text: str) -> datetime:
    return datetime.fromisoformat(text).replace(tzinfo=UTC)


def _op(zone: int | None, *schedules: duty.OffDuty, on: bool = True) -> duty.DutyOperator:
    return duty.DutyOperator("g", "n", "e@example.org", None, None, on, zone, schedules)


def _daily(start: str, end: str) -> duty.OffDuty:
    return duty.OffDuty(
        1, "Daily", start_time=time.fromisoformat(start), end_time=time.fromisoformat(end)
    )


def test_a_daily_night_across_daylight_saving_changes_in_amsterdam() -> None:
    """Off duty 22:00-07:00 Amsterdam time, every night: the same wall-clock times when the
    clocks go forward (29 March 2026) and back (25 October 2026)."""
    op = _op(AMSTERDAM, _daily("22:00", "07:00"))
    cases = [
        # winter, UTC+1: 22:00 CET is 21:00Z, 07:00 CET is 06:00Z
        ("2026-03-27T20:59:59", True),
        ("2026-03-27T21:00:00", False),
        ("2026-03-28T05:59:59", False),
        ("2026-03-28T06:00:00", True),
        # the night of the change: starts 22:00 CET (21:00Z), ends 07:00 CEST (05:00Z)
        ("2026-03-28T21:00:00", False),
        ("2026-03-29T04:30:00", False),  # 06:30 CEST
        ("2026-03-29T05:00:00", True),  # 07:00 CEST (06:00 if it were still CET)
        ("2026-03-29T05:30:00", True),
        # summer, UTC+2: 22:00 CEST is 20:00Z
        ("2026-03-29T19:59:59", True),
        ("2026-03-29T20:00:00", False),  # 22:00 CEST (21:00 if it were still CET)
        ("2026-03-29T20:30:00", False),
        ("2026-03-30T05:00:00", True),
        # back: starts 22:00 CEST (20:00Z), ends 07:00 CET (06:00Z)
        ("2026-10-24T20:00:00", False),
        ("2026-10-25T05:30:00", False),  # 06:30 CET (07:30 if it were still CEST)
        ("2026-10-25T06:00:00", True),
        ("2026-10-25T20:30:00", True),  # 21:30 CET
        ("2026-10-25T21:00:00", False),
    ]
    for text, on_duty in cases:
        assert op.on_duty_at(_at(text)) is on_duty, text


def test_wall_times_in_the_gap_and_the_overlap() -> None:
    # 02:30 does not exist on 29 March in Amsterdam: read with the offset before (03:30 CEST)
    op = _op(AMSTERDAM, _daily("02:30", "04:00"))
    assert op.on_duty_at(_at("2026-03-29T01:15:00"))  # 03:15 CEST
    assert not op.on_duty_at(_at("2026-03-29T01:45:00"))  # 03:45 CEST
    assert op.on_duty_at(_at("2026-03-29T02:00:00"))  # 04:00 CEST
    # 02:30 exists twice on 25 October: its first occurrence (CEST, 00:30Z) starts it
    op = _op(AMSTERDAM, _daily("02:30", "03:00"))
    assert op.on_duty_at(_at("2026-10-25T00:29:00"))
    assert not op.on_duty_at(_at("2026-10-25T00:30:00"))
    assert not op.on_duty_at(_at("2026-10-25T01:59:00"))  # 02:59 CET
    assert op.on_duty_at(_at("2026-10-25T02:00:00"))  # 03:00 CET


def test_weekly_monthly_and_one_time_periods_in_their_zones() -> None:
    weekly = duty.OffDuty(
        1, "Weekly", week_day=duty.WEEKDAYS.index("Friday"), start_time=time(18), end_time=time(8)
    )
    op = _op(CHICAGO, weekly)  # Central time: UTC-6 in winter, UTC-5 in summer
    assert op.on_duty_at(_at("2026-01-09T23:59:00"))  # Friday 17:59 CST
    assert not op.on_duty_at(_at("2026-01-10T00:00:00"))  # Friday 18:00 CST
    assert not op.on_duty_at(_at("2026-01-10T13:59:00"))  # Saturday 07:59 CST
    assert op.on_duty_at(_at("2026-01-10T14:00:00"))  # Saturday 08:00 CST
    assert op.on_duty_at(_at("2026-01-16T12:00:00"))  # another Friday, 06:00
    assert not op.on_duty_at(_at("2026-07-10T23:00:00"))  # Friday 18:00 CDT
    assert op.on_duty_at(_at("2026-07-11T13:00:00"))  # Saturday 08:00 CDT

    monthly = duty.OffDuty(1, "Monthly", month_day=31, start_time=time(9), end_time=time(17))
    op = _op(None, monthly)  # no time zone: UTC
    assert not op.on_duty_at(_at("2026-01-31T09:00:00"))
    assert op.on_duty_at(_at("2026-01-30T09:00:00"))
    assert not op.on_duty_at(_at("2026-02-28T12:00:00"))  # a shorter month: its last day
    assert not op.on_duty_at(_at("2026-04-30T16:59:00"))
    assert op.on_duty_at(_at("2026-04-30T17:00:00"))

    once = duty.OffDuty(
        1, "OneTime", start=datetime(2026, 12, 24, 18), end=datetime(2026, 12, 27, 8)
    )
    op = _op(timezones.ZONES[1040].id, once)  # Japan, UTC+9
    assert op.on_duty_at(_at("2026-12-24T08:59:59"))
    assert not op.on_duty_at(_at("2026-12-24T09:00:00"))
    assert not op.on_duty_at(_at("2026-12-26T22:59:59"))
    assert op.on_duty_at(_at("2026-12-26T23:00:00"))

    # IsOnDuty off: never on duty; no schedules: always
    assert not _op(None, on=False).on_duty_at(_at("2026-06-01T12:00:00"))
    assert _op(None).on_duty_at(_at("2026-06-01T12:00:00"))
    with pytest.raises(ValueError):
        _op(None).on_duty_at(datetime(2026, 6, 1, 12))


async def test_on_duty_operators_of_groups_and_operators(api: tuple[Client, Controller]) -> None:
    """What alerting asks: the operators of some groups and operators who are on duty at t,
    each once, with the schedules set through the API in their own time zones."""
    client, ctl = api
    ams = (await _operator(client, Email="ams@example.org", TimeZoneId=AMSTERDAM))["OperatorGuid"]
    chi = (await _operator(client, Email="chi@example.org", TimeZoneId=CHICAGO))["OperatorGuid"]
    off = (await _operator(client, Email="off@example.org", IsOnDuty=False))["OperatorGuid"]
    made = await _json(
        await client.post(P + "/OperatorGroup", json={"Description": "Night"}, headers=ADMIN), 201
    )
    night = made["OperatorGroupGuid"]
    for guid in (ams, chi, off):
        await _json(
            await client.post(f"{P}/OperatorGroup/{night}/Member/{guid}", headers=ADMIN), 201
        )
    schedule = {"ScheduleMode": "Daily", "StartTime": "22:00", "EndTime": "07:00"}
    url = f"{P}/OperatorGroup/{night}/DutySchedule/AddDutyScheduleForAllMembers"
    await _json(await client.post(url, json=schedule, headers=ADMIN), 204)

    async def on_duty(at: str, operators: list[str], groups: list[str]) -> list[str]:
        found = await duty.on_duty_operators(ctl.store, _at(at), operators, groups)
        return [op.email or "" for op in found]

    # 23:00Z: Amsterdam sleeps (00:00), Chicago works (17:00)
    assert await on_duty("2026-01-15T23:00:00", [], [night]) == ["chi@example.org"]
    # 05:00Z: Amsterdam (06:00) and Chicago (23:00) sleep
    assert await on_duty("2026-01-15T05:00:00", [], [night]) == []
    assert await on_duty("2026-01-15T06:30:00", [], [night]) == ["ams@example.org"]
    # the same operator named twice, and through a group: once
    assert await on_duty("2026-01-15T23:00:00", [chi, chi], [night]) == ["chi@example.org"]
    everyone = (await _groups(client))["Everyone"]["OperatorGroupGuid"]
    # 12:00Z: the admin (no Email) and Amsterdam (13:00) work; Chicago sleeps (06:00)
    assert await on_duty("2026-01-15T12:00:00", [], [everyone]) == ["", "ams@example.org"]
    found = await duty.on_duty_operators(ctl.store, _at("2026-01-15T12:00:00"), [ams], [night])
    assert [op.guid for op in found] == [ams]
    assert await on_duty("2026-01-15T12:00:00", ["no-such-guid"], []) == []
    with pytest.raises(ValueError):
        await duty.on_duty_operators(ctl.store, datetime(2026, 1, 15), [ams])


async def test_store_create_operator_keeps_its_old_form(tmp_path: Path) -> None:
    """Older callers (tests, ensure_admin) make operators by user name, administrator or not."""
    store = await Store.open(f"sqlite+aiosqlite:///{tmp_path / 'p.db'}")
    try:
        await store.create_operator("g-1", "bob", "Bob", hash_password("x" * 8), True)
        await store.create_operator("g-2", "eve", "Eve", hash_password("x" * 8), False)
        bob = await store.operator_by_login("bob")
        eve = await store.operator_by_login("eve")
        assert bob is not None and bob["is_admin"] and eve is not None and not eve["is_admin"]
    finally:
        await store.close()
