"""Alert definitions over the REST API, on SQLite and PostgreSQL: the 26 /AlertDefinition
operations, the four escalation levels, members and level members and level integrations,
bad bodies naming the field, 404s, 403 for non-administrators' writes, bounds, cascades when
what a definition names is deleted; and controller/alerting/definitions.py, the view alerting
reads (definitions applying to a monitor directly, through a group, through All Monitors),
seeing changes made here and through another controller."""

from __future__ import annotations

import base64
import uuid
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from aiohttp.test_utils import TestClient

from controller.alerting.definitions import AlertDefinitions
from controller.api import alert_definitions
from controller.app import Controller
from tests.helpers import controller_client

PASSWORD = "alert-definitions-test-password"
API = "/api/v4"
Client = TestClient[Any, Any]


def basic(user: str, password: str) -> dict[str, str]:
    return {"Authorization": "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode()}


ADMIN = basic("admin", PASSWORD)


@pytest.fixture
async def api(tmp_path: Path, database_url: str) -> AsyncIterator[tuple[Client, Controller]]:
    async with controller_client(tmp_path, PASSWORD, database_url=database_url) as parts:
        yield parts


async def call(
    client: Client,
    method: str,
    path: str,
    body: Any = None,
    status: int = 200,
    headers: dict[str, str] | None = None,
) -> Any:
    resp = await client.request(
        method, API + path, json=body, headers=ADMIN if headers is None else headers
    )
    text = await resp.text()
    assert resp.status == status, (method, path, body, resp.status, text)
    return await resp.json() if text and resp.content_type == "application/json" else None


async def error(
    client: Client, method: str, path: str, body: Any, status: int
) -> tuple[str | None, str]:
    found = await call(client, method, path, body, status)
    message = found["Messages"][0]
    assert message["Message"]
    return message["Field"], message["Message"]


async def new_definition(client: Client, name: str = "On call", **fields: Any) -> str:
    created = await call(client, "POST", "/AlertDefinition", {"AlertName": name, **fields}, 201)
    return str(created["AlertDefinitionGuid"])


async def new_monitor(client: Client, name: str) -> str:
    body = {"Name": name, "MonitorType": "Https", "Url": "https://127.0.0.1:9/health"}
    created = await call(client, "POST", "/Monitor", body, 201)
    return str(created["MonitorGuid"])


async def new_group(client: Client, name: str) -> str:
    created = await call(client, "POST", "/MonitorGroup", {"Description": name}, 201)
    return str(created["MonitorGroupGuid"])


async def all_monitors(client: Client) -> str:
    groups = await call(client, "GET", "/MonitorGroup")
    return str(next(g for g in groups if g["IsAll"])["MonitorGroupGuid"])


async def new_operator(client: Client, email: str, password: str = "operator-pass-1") -> str:
    body = {"FullName": email, "Email": email, "Password": password}
    created = await call(client, "POST", "/Operator", body, 201)
    return str(created["OperatorGuid"])


async def new_operator_group(client: Client, name: str) -> str:
    created = await call(client, "POST", "/OperatorGroup", {"Description": name}, 201)
    return str(created["OperatorGroupGuid"])


async def new_webhook(client: Client, name: str = "hook", **fields: Any) -> str:
    body = {
        "Type": "GenericWebhook",
        "Name": name,
        "Url": "http://127.0.0.1:9/hook",
        "VariableValues": {"team": "web", "Priority": "P3"},
        **fields,
    }
    created = await call(client, "POST", "/Integration", body, 201)
    return str(created["IntegrationGuid"])


async def new_email(client: Client, name: str = "mail") -> str:
    created = await call(client, "POST", "/Integration", {"Type": "Email", "Name": name}, 201)
    return str(created["IntegrationGuid"])


# --- the definition -----------------------------------------------------------------------------


async def test_definition_operations(api: tuple[Client, Controller]) -> None:
    client, _ = api
    assert await call(client, "GET", "/AlertDefinition") == []
    created = await call(client, "POST", "/AlertDefinition", {"AlertName": " Web team "}, 201)
    guid = created["AlertDefinitionGuid"]
    assert uuid.UUID(guid)
    assert created == {
        "AlertDefinitionGuid": guid,
        "Hash": created["Hash"],
        "AlertName": "Web team",
        "IsActive": True,
    }
    off = await new_definition(client, "Night", IsActive=False)
    listed = await call(client, "GET", "/AlertDefinition")
    assert [d["AlertDefinitionGuid"] for d in listed] == [guid, off]
    assert listed[1]["IsActive"] is False
    assert await call(client, "GET", f"/AlertDefinition/{guid}") == created
    assert (await call(client, "GET", f"/AlertDefinition/{guid.upper()}")) == created

    # PUT as Uptrends' knowledge base shows it: the guid and IsActive; the name is kept
    body = {"AlertDefinitionGuid": guid, "IsActive": False}
    await call(client, "PUT", f"/AlertDefinition/{guid}", body, 204)
    now = await call(client, "GET", f"/AlertDefinition/{guid}")
    assert now["AlertName"] == "Web team" and now["IsActive"] is False
    assert now["Hash"] != created["Hash"]
    # a GET sent back is accepted
    await call(client, "PUT", f"/AlertDefinition/{guid}", {**now, "AlertName": "Web"}, 204)
    await call(client, "PATCH", f"/AlertDefinition/{guid}", {"IsActive": True}, 204)
    now = await call(client, "GET", f"/AlertDefinition/{guid}")
    assert now["AlertName"] == "Web" and now["IsActive"] is True
    await call(client, "PATCH", f"/AlertDefinition/{guid}", {}, 204)

    await call(client, "DELETE", f"/AlertDefinition/{guid}", None, 204)
    await call(client, "GET", f"/AlertDefinition/{guid}", None, 404)
    await call(client, "DELETE", f"/AlertDefinition/{guid}", None, 404)
    assert [d["AlertDefinitionGuid"] for d in await call(client, "GET", "/AlertDefinition")] == [
        off
    ]


async def test_definition_bad_input(api: tuple[Client, Controller]) -> None:
    client, _ = api
    guid = await new_definition(client)
    cases: list[tuple[str, str, Any, str, str]] = [
        ("POST", "/AlertDefinition", {}, "AlertName", "required"),
        ("POST", "/AlertDefinition", {"AlertName": "  "}, "AlertName", "blank"),
        ("POST", "/AlertDefinition", {"AlertName": "x" * 201}, "AlertName", "200"),
        ("POST", "/AlertDefinition", {"AlertName": 5}, "AlertName", "string"),
        ("POST", "/AlertDefinition", {"AlertName": "a", "IsActive": "yes"}, "IsActive", ""),
        ("POST", "/AlertDefinition", {"AlertName": "a", "Nope": 1}, "Nope", "not a known"),
        ("PUT", f"/AlertDefinition/{guid}", {"AlertName": "a"}, "IsActive", "required"),
        (
            "PUT",
            f"/AlertDefinition/{guid}",
            {"AlertDefinitionGuid": str(uuid.uuid4()), "IsActive": True},
            "AlertDefinitionGuid",
            "does not match",
        ),
        (
            "PATCH",
            f"/AlertDefinition/{guid}",
            {"AlertDefinitionGuid": "nonsense"},
            "AlertDefinitionGuid",
            "does not match",
        ),
    ]
    for method, path, body, field, words in cases:
        found_field, message = await error(client, method, path, body, 400)
        assert found_field == field, (body, message)
        assert words in message, (body, message)
    resp = await client.post(API + "/AlertDefinition", data=b"[1]", headers=ADMIN)
    assert resp.status == 400
    for path in (f"/AlertDefinition/{uuid.uuid4()}", "/AlertDefinition/not-a-guid"):
        field, _ = await error(client, "GET", path, None, 404)
        assert field == "alertDefinitionGuid"
        await call(client, "PATCH", path, {"IsActive": True}, 404)
        await call(client, "GET", path + "/Member", None, 404)
        await call(client, "GET", path + "/EscalationLevel", None, 404)
    assert len(await call(client, "GET", "/AlertDefinition")) == 1


# --- escalation levels --------------------------------------------------------------------------


async def test_escalation_levels(api: tuple[Client, Controller]) -> None:
    client, _ = api
    guid = await new_definition(client)
    base = f"/AlertDefinition/{guid}/EscalationLevel"
    levels = await call(client, "GET", base)
    assert [lv["Id"] for lv in levels] == [1, 2, 3, 4]
    for level in levels:
        assert level["IsActive"] is False
        assert level["EscalationMode"] == "AlertOnErrorCount"
        assert level["IncludeTraceRoute"] is False
        assert set(level) == {
            "Id",
            "EscalationMode",
            "ThresholdErrorCount",
            "ThresholdMinutes",
            "IsActive",
            "Message",
            "NumberOfReminders",
            "ReminderDelay",
            "IncludeTraceRoute",
            "Hash",
        }
    assert await call(client, "GET", f"{base}/2") == levels[1]

    first = {
        "Id": 1,
        "EscalationMode": "AlertOnErrorCount",
        "ThresholdErrorCount": 2,
        "IsActive": True,
        "Message": "Call the web team",
        "NumberOfReminders": 3,
        "ReminderDelay": 15,
    }
    await call(client, "PUT", f"{base}/1", first, 204)
    one = await call(client, "GET", f"{base}/1")
    assert {k: one[k] for k in first} == first
    assert one["ThresholdMinutes"] == alert_definitions.LEVEL_DEFAULTS["threshold_minutes"]
    assert one["Hash"] != levels[0]["Hash"]
    # PATCH changes what it sends
    patch = {"EscalationMode": "AlertOnErrorDuration", "ThresholdMinutes": 30}
    await call(client, "PATCH", f"{base}/2", {**patch, "IsActive": True}, 204)
    two = await call(client, "GET", f"{base}/2")
    assert two["EscalationMode"] == "AlertOnErrorDuration" and two["ThresholdMinutes"] == 30
    assert two["IsActive"] is True and two["Message"] == ""
    await call(client, "PATCH", f"{base}/1", {"Message": "new"}, 204)
    one = await call(client, "GET", f"{base}/1")
    assert one["Message"] == "new" and one["NumberOfReminders"] == 3
    # PUT replaces: what is left out takes its default
    await call(client, "PUT", f"{base}/1", {"IsActive": True}, 204)
    one = await call(client, "GET", f"{base}/1")
    assert one["Message"] == "" and one["NumberOfReminders"] == 0 and one["IsActive"] is True
    # a GET sent back is accepted
    await call(client, "PUT", f"{base}/2", two, 204)
    assert await call(client, "GET", f"{base}/2") == two

    cases: list[tuple[str, str, Any, str, str]] = [
        ("PUT", "1", {"Message": "x"}, "IsActive", "required"),
        ("PATCH", "1", {"EscalationMode": "AlertOnMood"}, "EscalationMode", ""),
        ("PATCH", "1", {"ThresholdErrorCount": 0}, "ThresholdErrorCount", ""),
        ("PATCH", "1", {"ThresholdErrorCount": 10**12}, "ThresholdErrorCount", ""),
        ("PATCH", "1", {"ThresholdMinutes": -1}, "ThresholdMinutes", ""),
        ("PATCH", "1", {"ThresholdMinutes": "5"}, "ThresholdMinutes", ""),
        ("PATCH", "1", {"NumberOfReminders": 2}, "ReminderDelay", "at least 1"),
        ("PATCH", "1", {"NumberOfReminders": 101, "ReminderDelay": 5}, "NumberOfReminders", ""),
        ("PATCH", "1", {"Message": "x" * 2001}, "Message", ""),
        ("PATCH", "1", {"IncludeTraceRoute": True}, "IncludeTraceRoute", "traceroute"),
        ("PATCH", "1", {"Id": 2}, "Id", "does not match"),
        ("PATCH", "1", {"Level": 2}, "Level", "not a known"),
        ("PATCH", "1", {"IsActive": 1}, "IsActive", ""),
    ]
    for method, level, body, field, words in cases:
        found_field, message = await error(client, method, f"{base}/{level}", body, 400)
        assert found_field == field, (body, message)
        assert words in message, (body, message)
    for level in ("0", "5", "-1", "x", "99999999999999999999"):
        found_field, _ = await error(client, "GET", f"{base}/{level}", None, 404)
        assert found_field == "escalationLevelId"
        await call(client, "PATCH", f"{base}/{level}", {"IsActive": True}, 404)
        await call(client, "GET", f"{base}/{level}/Member", None, 404)
    await call(client, "GET", f"/AlertDefinition/{uuid.uuid4()}/EscalationLevel/1", None, 404)
    # no POST or DELETE of levels: there are always four
    assert (await client.post(API + base, json={}, headers=ADMIN)).status == 405
    assert (await client.delete(API + f"{base}/1", headers=ADMIN)).status == 405


# --- members ------------------------------------------------------------------------------------


async def test_members(api: tuple[Client, Controller]) -> None:
    client, _ = api
    guid = await new_definition(client)
    web = await new_monitor(client, "web")
    db = await new_monitor(client, "db")
    group = await new_group(client, "backend")
    everything = await all_monitors(client)
    base = f"/AlertDefinition/{guid}/Member"
    assert await call(client, "GET", base) == []
    added = await call(client, "POST", f"{base}/Monitor/{web}", None, 201)
    assert added == {"AlertDefinition": guid, "Monitor": web}
    added = await call(client, "POST", f"{base}/MonitorGroup/{group}", None, 201)
    assert added == {"AlertDefinition": guid, "MonitorGroup": group}
    await call(client, "POST", f"{base}/Monitor/{db.upper()}", None, 201)
    await call(client, "POST", f"{base}/Monitor/{web}", None, 201)  # again: still one
    await call(client, "POST", f"{base}/MonitorGroup/{everything}", None, 201)
    assert await call(client, "GET", base) == [
        {"MonitorGuid": web, "MonitorGroupGuid": None},
        {"MonitorGuid": None, "MonitorGroupGuid": group},
        {"MonitorGuid": db, "MonitorGroupGuid": None},
        {"MonitorGuid": None, "MonitorGroupGuid": everything},
    ]
    await call(client, "DELETE", f"{base}/Monitor/{web}", None, 204)
    await call(client, "DELETE", f"{base}/MonitorGroup/{everything}", None, 204)
    field, _ = await error(client, "DELETE", f"{base}/Monitor/{web}", None, 404)
    assert field == "monitorGuid"
    field, _ = await error(client, "DELETE", f"{base}/MonitorGroup/{everything}", None, 404)
    assert field == "monitorGroupGuid"
    assert await call(client, "GET", base) == [
        {"MonitorGuid": None, "MonitorGroupGuid": group},
        {"MonitorGuid": db, "MonitorGroupGuid": None},
    ]
    for unknown in (str(uuid.uuid4()), "nope"):
        field, _ = await error(client, "POST", f"{base}/Monitor/{unknown}", None, 404)
        assert field == "monitorGuid"
        field, _ = await error(client, "POST", f"{base}/MonitorGroup/{unknown}", None, 404)
        assert field == "monitorGroupGuid"
    other = f"/AlertDefinition/{uuid.uuid4()}/Member"
    field, _ = await error(client, "POST", f"{other}/Monitor/{web}", None, 404)
    assert field == "alertDefinitionGuid"
    await call(client, "DELETE", f"{other}/MonitorGroup/{group}", None, 404)


async def test_level_members(api: tuple[Client, Controller]) -> None:
    client, _ = api
    guid = await new_definition(client)
    rita = await new_operator(client, "rita@example.org")
    team = await new_operator_group(client, "web team")
    base = f"/AlertDefinition/{guid}/EscalationLevel/2/Member"
    assert await call(client, "GET", base) == []
    added = await call(client, "POST", f"{base}/Operator/{rita}", None, 201)
    assert added == {"AlertDefinition": guid, "Escalationlevel": 2, "Operator": rita}
    added = await call(client, "POST", f"{base}/OperatorGroup/{team}", None, 201)
    assert added == {"AlertDefinition": guid, "Escalationlevel": 2, "OperatorGroup": team}
    await call(client, "POST", f"{base}/Operator/{rita}", None, 201)  # again: still one
    assert await call(client, "GET", base) == [
        {"OperatorGuid": rita, "OperatorGroupGuid": None},
        {"OperatorGuid": None, "OperatorGroupGuid": team},
    ]
    # levels are apart
    assert await call(client, "GET", f"/AlertDefinition/{guid}/EscalationLevel/1/Member") == []
    await call(client, "DELETE", f"{base}/Operator/{rita}", None, 204)
    field, _ = await error(client, "DELETE", f"{base}/Operator/{rita}", None, 404)
    assert field == "operatorGuid"
    await call(client, "DELETE", f"{base}/OperatorGroup/{team}", None, 204)
    field, _ = await error(client, "DELETE", f"{base}/OperatorGroup/{team}", None, 404)
    assert field == "operatorGroupGuid"
    assert await call(client, "GET", base) == []
    for unknown in (str(uuid.uuid4()), "nope"):
        field, _ = await error(client, "POST", f"{base}/Operator/{unknown}", None, 404)
        assert field == "operatorGuid"
        field, _ = await error(client, "POST", f"{base}/OperatorGroup/{unknown}", None, 404)
        assert field == "operatorGroupGuid"
    field, _ = await error(
        client,
        "POST",
        f"/AlertDefinition/{guid}/EscalationLevel/7/Member/Operator/{rita}",
        None,
        404,
    )
    assert field == "escalationLevelId"


# --- level integrations -------------------------------------------------------------------------


async def test_level_integrations(api: tuple[Client, Controller]) -> None:
    client, _ = api
    guid = await new_definition(client)
    hook = await new_webhook(client)
    mail = await new_email(client)
    base = f"/AlertDefinition/{guid}/EscalationLevel/1/Integration"
    assert await call(client, "GET", base) == []
    created = await call(
        client,
        "POST",
        base,
        {"IntegrationGuid": hook, "SendOkAlerts": False, "VariableValues": {"team": "db"}},
        201,
    )
    assert created == {
        "IntegrationGuid": hook,
        "Name": "hook",
        "Type": "GenericWebhook",
        "Kind": "Webhook",
        "ExtraEmailAddresses": "",
        "StatusHubServiceList": [],
        "IntegrationServices": [],
        "IsActive": True,
        "SendOkAlerts": False,
        "SendReminderAlerts": True,
        "VariableValues": {"team": "db"},
        "Hash": created["Hash"],
    }
    mailed = await call(
        client,
        "POST",
        base,
        {
            "IntegrationGuid": mail.upper(),
            "ExtraEmailAddresses": ["ops@example.org", "boss@example.org"],
            "ExtraEmailAddressesSpecified": True,
            "StatusHubServiceList": [],
        },
        201,
    )
    assert mailed["ExtraEmailAddresses"] == "ops@example.org, boss@example.org"
    assert mailed["Type"] == "Email" and "Kind" not in mailed
    assert [i["IntegrationGuid"] for i in await call(client, "GET", base)] == [hook, mail]
    assert await call(client, "GET", f"{base}/{hook}") == created
    assert await call(client, "GET", f"/AlertDefinition/{guid}/EscalationLevel/2/Integration") == []

    field, message = await error(client, "POST", base, {"IntegrationGuid": hook}, 409)
    assert field == "IntegrationGuid" and "already" in message

    # PATCH changes what it sends; PUT resets what it leaves out
    await call(client, "PATCH", f"{base}/{hook}", {"SendReminderAlerts": False}, 204)
    now = await call(client, "GET", f"{base}/{hook}")
    assert now["SendOkAlerts"] is False and now["SendReminderAlerts"] is False
    assert now["VariableValues"] == {"team": "db"} and now["Hash"] != created["Hash"]
    await call(client, "PUT", f"{base}/{hook}", {"IsActive": False}, 204)
    now = await call(client, "GET", f"{base}/{hook}")
    assert now["IsActive"] is False and now["SendOkAlerts"] is True
    assert now["VariableValues"] == {}
    await call(client, "PUT", f"{base}/{hook}", {**created, "IsActive": True}, 204)  # GET back
    assert await call(client, "GET", f"{base}/{hook}") == created
    # ExtraEmailAddressesSpecified false: the addresses sent are not set
    body = {"ExtraEmailAddresses": [], "ExtraEmailAddressesSpecified": False}
    await call(client, "PATCH", f"{base}/{mail}", body, 204)
    kept = await call(client, "GET", f"{base}/{mail}")
    assert kept["ExtraEmailAddresses"] == "ops@example.org, boss@example.org"
    await call(client, "PATCH", f"{base}/{mail}", {"ExtraEmailAddresses": "a@example.org"}, 204)
    assert (await call(client, "GET", f"{base}/{mail}"))["ExtraEmailAddresses"] == "a@example.org"

    cases: list[tuple[str, str, Any, int, str, str]] = [
        ("POST", base, {}, 400, "IntegrationGuid", "required"),
        ("POST", base, {"IntegrationGuid": str(uuid.uuid4())}, 400, "IntegrationGuid", "no "),
        ("POST", base, {"IntegrationGuid": "x"}, 400, "IntegrationGuid", "not a guid"),
        ("POST", base, {"IntegrationGuid": 5}, 400, "IntegrationGuid", ""),
        (
            "PATCH",
            f"{base}/{hook}",
            {"VariableValues": {"region": "eu"}},
            400,
            "VariableValues.region",
            "no variable",
        ),
        (
            "PATCH",
            f"{base}/{hook}",
            {"VariableValues": {"@monitor.name": "x"}},
            400,
            "VariableValues",
            "not a variable name",
        ),
        (
            "PATCH",
            f"{base}/{hook}",
            {"VariableValues": {"team": 5}},
            400,
            "VariableValues.team",
            "",
        ),
        (
            "PATCH",
            f"{base}/{hook}",
            {"ExtraEmailAddresses": ["ops@example.org"]},
            400,
            "ExtraEmailAddresses",
            "only an Email",
        ),
        (
            "PATCH",
            f"{base}/{mail}",
            {"ExtraEmailAddresses": ["not an address"]},
            400,
            "ExtraEmailAddresses",
            "not an e-mail",
        ),
        (
            "PATCH",
            f"{base}/{mail}",
            {"ExtraEmailAddresses": 7},
            400,
            "ExtraEmailAddresses",
            "",
        ),
        (
            "PATCH",
            f"{base}/{mail}",
            {"StatusHubServiceList": [{"MonitorGuid": hook}]},
            400,
            "StatusHubServiceList",
            "StatusHub",
        ),
        ("PATCH", f"{base}/{mail}", {"SendOkAlerts": "no"}, 400, "SendOkAlerts", ""),
        ("PUT", f"{base}/{mail}", {"IntegrationGuid": hook}, 400, "IntegrationGuid", "match"),
        ("PUT", f"{base}/{mail}", {"Bogus": 1}, 400, "Bogus", "not a known"),
        ("GET", f"{base}/{uuid.uuid4()}", None, 404, "integrationGuid", "not on"),
        ("GET", f"{base}/nope", None, 404, "integrationGuid", ""),
        ("PATCH", f"{base}/{uuid.uuid4()}", {}, 404, "integrationGuid", ""),
        ("DELETE", f"{base}/{uuid.uuid4()}", None, 404, "integrationGuid", ""),
    ]
    for method, path, body, status, field, words in cases:
        found_field, message = await error(client, method, path, body, status)
        assert found_field == field, (body, message)
        assert words in message, (body, message)
    # names match the integration's variables without regard to case
    await call(client, "PATCH", f"{base}/{hook}", {"VariableValues": {"priority": "P1"}}, 204)

    await call(client, "DELETE", f"{base}/{hook}", None, 204)
    await call(client, "GET", f"{base}/{hook}", None, 404)
    await call(client, "DELETE", f"{base}/{hook}", None, 404)
    assert [i["IntegrationGuid"] for i in await call(client, "GET", base)] == [mail]


# --- permissions and bounds ---------------------------------------------------------------------


async def test_only_administrators_write(api: tuple[Client, Controller]) -> None:
    client, _ = api
    guid = await new_definition(client)
    monitor = await new_monitor(client, "web")
    group = await new_group(client, "backend")
    rita = await new_operator(client, "rita@example.org", "rita-pass-1")
    team = await new_operator_group(client, "team")
    hook = await new_webhook(client)
    level = f"/AlertDefinition/{guid}/EscalationLevel/1"
    await call(client, "POST", f"{level}/Integration", {"IntegrationGuid": hook}, 201)
    reader = basic("rita@example.org", "rita-pass-1")
    for path in (
        "/AlertDefinition",
        f"/AlertDefinition/{guid}",
        f"/AlertDefinition/{guid}/Member",
        f"/AlertDefinition/{guid}/EscalationLevel",
        level,
        f"{level}/Member",
        f"{level}/Integration",
        f"{level}/Integration/{hook}",
    ):
        await call(client, "GET", path, None, 200, reader)
    writes: list[tuple[str, str, Any]] = [
        ("POST", "/AlertDefinition", {"AlertName": "mine"}),
        ("PUT", f"/AlertDefinition/{guid}", {"IsActive": False}),
        ("PATCH", f"/AlertDefinition/{guid}", {"IsActive": False}),
        ("DELETE", f"/AlertDefinition/{guid}", None),
        ("POST", f"/AlertDefinition/{guid}/Member/Monitor/{monitor}", None),
        ("DELETE", f"/AlertDefinition/{guid}/Member/Monitor/{monitor}", None),
        ("POST", f"/AlertDefinition/{guid}/Member/MonitorGroup/{group}", None),
        ("DELETE", f"/AlertDefinition/{guid}/Member/MonitorGroup/{group}", None),
        ("PUT", level, {"IsActive": True}),
        ("PATCH", level, {"IsActive": True}),
        ("POST", f"{level}/Member/Operator/{rita}", None),
        ("DELETE", f"{level}/Member/Operator/{rita}", None),
        ("POST", f"{level}/Member/OperatorGroup/{team}", None),
        ("DELETE", f"{level}/Member/OperatorGroup/{team}", None),
        ("POST", f"{level}/Integration", {"IntegrationGuid": hook}),
        ("PUT", f"{level}/Integration/{hook}", {}),
        ("PATCH", f"{level}/Integration/{hook}", {}),
        ("DELETE", f"{level}/Integration/{hook}", None),
    ]
    for method, path, body in writes:
        await call(client, method, path, body, 403, reader)
    # nothing changed
    assert len(await call(client, "GET", "/AlertDefinition")) == 1
    assert (await call(client, "GET", level))["IsActive"] is False
    assert len(await call(client, "GET", f"{level}/Integration")) == 1
    await call(client, "GET", "/AlertDefinition", None, 401, {})


async def test_bounds(api: tuple[Client, Controller], monkeypatch: pytest.MonkeyPatch) -> None:
    client, _ = api
    monkeypatch.setattr(alert_definitions, "MAX_DEFINITIONS", 2)
    monkeypatch.setattr(alert_definitions, "MAX_MEMBERS", 2)
    monkeypatch.setattr(alert_definitions, "MAX_LEVEL_MEMBERS", 1)
    monkeypatch.setattr(alert_definitions, "MAX_LEVEL_INTEGRATIONS", 1)
    guid = await new_definition(client, "one")
    await new_definition(client, "two")
    field, message = await error(client, "POST", "/AlertDefinition", {"AlertName": "x"}, 400)
    assert field == "AlertName" and "2 alert definitions" in message
    members = f"/AlertDefinition/{guid}/Member"
    await call(client, "POST", f"{members}/Monitor/{await new_monitor(client, 'a')}", None, 201)
    await call(client, "POST", f"{members}/MonitorGroup/{await all_monitors(client)}", None, 201)
    field, message = await error(
        client, "POST", f"{members}/Monitor/{await new_monitor(client, 'b')}", None, 400
    )
    assert field == "monitorGuid" and "2 members" in message
    level = f"/AlertDefinition/{guid}/EscalationLevel/3"
    operator = await new_operator(client, "a@example.org")
    await call(client, "POST", f"{level}/Member/Operator/{operator}", None, 201)
    field, _ = await error(
        client,
        "POST",
        f"{level}/Member/OperatorGroup/{await new_operator_group(client, 'g')}",
        None,
        400,
    )
    assert field == "operatorGroupGuid"
    await call(
        client, "POST", f"{level}/Integration", {"IntegrationGuid": await new_email(client)}, 201
    )
    field, _ = await error(
        client, "POST", f"{level}/Integration", {"IntegrationGuid": await new_webhook(client)}, 400
    )
    assert field == "IntegrationGuid"


# --- cascades -----------------------------------------------------------------------------------


async def test_deleting_what_a_definition_names_removes_it(
    api: tuple[Client, Controller],
) -> None:
    client, _ = api
    guid = await new_definition(client)
    monitor = await new_monitor(client, "web")
    group = await new_group(client, "backend")
    rita = await new_operator(client, "rita@example.org")
    team = await new_operator_group(client, "team")
    hook = await new_webhook(client)
    members = f"/AlertDefinition/{guid}/Member"
    level = f"/AlertDefinition/{guid}/EscalationLevel/1"
    await call(client, "POST", f"{members}/Monitor/{monitor}", None, 201)
    await call(client, "POST", f"{members}/MonitorGroup/{group}", None, 201)
    await call(client, "POST", f"{level}/Member/Operator/{rita}", None, 201)
    await call(client, "POST", f"{level}/Member/OperatorGroup/{team}", None, 201)
    await call(client, "POST", f"{level}/Integration", {"IntegrationGuid": hook}, 201)

    await call(client, "DELETE", f"/Monitor/{monitor}", None, 204)
    await call(client, "DELETE", f"/MonitorGroup/{group}", None, 204)
    await call(client, "DELETE", f"/Operator/{rita}", None, 204)
    await call(client, "DELETE", f"/OperatorGroup/{team}", None, 204)
    await call(client, "DELETE", f"/Integration/{hook}", None, 204)
    assert await call(client, "GET", members) == []
    assert await call(client, "GET", f"{level}/Member") == []
    assert await call(client, "GET", f"{level}/Integration") == []

    # and deleting the definition takes its levels and members with it
    monitor = await new_monitor(client, "db")
    await call(client, "POST", f"{members}/Monitor/{monitor}", None, 201)
    await call(client, "DELETE", f"/AlertDefinition/{guid}", None, 204)
    await call(client, "GET", f"{level}", None, 404)
    again = await new_definition(client)
    await call(client, "POST", f"/AlertDefinition/{again}/Member/Monitor/{monitor}", None, 201)


# --- the view alerting reads --------------------------------------------------------------------


async def test_definitions_for_a_monitor(api: tuple[Client, Controller]) -> None:
    client, ctl = api
    view = ctl.alert_definitions
    web = await new_monitor(client, "web")
    db = await new_monitor(client, "db")
    lone = await new_monitor(client, "lone")
    backend = await new_group(client, "backend")
    await call(client, "POST", f"/MonitorGroup/{backend}/Member/{db}", None, 201)
    rita = await new_operator(client, "rita@example.org")
    team = await new_operator_group(client, "team")
    hook = await new_webhook(client)

    direct = await new_definition(client, "direct")
    grouped = await new_definition(client, "grouped")
    everything = await new_definition(client, "everything")
    off = await new_definition(client, "off", IsActive=False)
    await call(client, "POST", f"/AlertDefinition/{direct}/Member/Monitor/{web}", None, 201)
    await call(
        client, "POST", f"/AlertDefinition/{grouped}/Member/MonitorGroup/{backend}", None, 201
    )
    await call(
        client,
        "POST",
        f"/AlertDefinition/{everything}/Member/MonitorGroup/{await all_monitors(client)}",
        None,
        201,
    )
    await call(client, "POST", f"/AlertDefinition/{off}/Member/Monitor/{web}", None, 201)

    def names(found: tuple[Any, ...]) -> list[str]:
        return [d.name for d in found]

    assert names(await view.for_monitor(web)) == ["direct", "everything"]
    assert names(await view.for_monitor(db.upper())) == ["grouped", "everything"]
    assert names(await view.for_monitor(lone)) == ["everything"]

    # levels with what hangs from them
    level = f"/AlertDefinition/{direct}/EscalationLevel/2"
    body = {
        "IsActive": True,
        "EscalationMode": "AlertOnErrorDuration",
        "ThresholdMinutes": 10,
        "NumberOfReminders": 2,
        "ReminderDelay": 30,
        "Message": "wake up",
    }
    await call(client, "PUT", level, body, 204)
    await call(client, "POST", f"{level}/Member/Operator/{rita}", None, 201)
    await call(client, "POST", f"{level}/Member/OperatorGroup/{team}", None, 201)
    integration = {"IntegrationGuid": hook, "SendOkAlerts": False, "VariableValues": {"team": "x"}}
    await call(client, "POST", f"{level}/Integration", integration, 201)
    (found,) = [d for d in await view.for_monitor(web) if d.guid == direct]
    assert [lv.id for lv in found.levels] == [1, 2, 3, 4]
    assert [lv.id for lv in found.active_levels] == [2]
    two = found.level(2)
    assert (two.mode, two.threshold_minutes, two.number_of_reminders) == (
        "AlertOnErrorDuration",
        10,
        2,
    )
    assert (two.reminder_delay_minutes, two.message) == (30, "wake up")
    assert two.operators == (rita,) and two.operator_groups == (team,)
    (sent,) = two.active_integrations
    assert sent.integration_guid == hook and sent.send_ok_alerts is False
    assert sent.send_reminder_alerts is True and dict(sent.variable_values) == {"team": "x"}
    assert found.monitors == {web} and not found.all_monitors

    # cached: a second look loads nothing
    loads = view.loads
    await view.for_monitor(web)
    assert view.loads == loads
    # a change through this API is seen at once
    await call(client, "PATCH", f"/AlertDefinition/{direct}", {"IsActive": False}, 204)
    assert names(await view.for_monitor(web)) == ["everything"]
    # so is a monitor joining a group (the revision moved; this view checks it every look)
    fresh = AlertDefinitions(ctl.store, check_seconds=0)
    assert names(await fresh.for_monitor(lone)) == ["everything"]
    await call(client, "POST", f"/MonitorGroup/{backend}/Member/{lone}", None, 201)
    assert names(await fresh.for_monitor(lone)) == ["grouped", "everything"]
    loads = fresh.loads
    assert names(await fresh.for_monitor(lone)) == ["grouped", "everything"]
    assert fresh.loads == loads  # nothing changed: the revision was read, nothing loaded
    # and a deletion cascading into a definition
    await call(client, "DELETE", f"/MonitorGroup/{backend}", None, 204)
    assert names(await fresh.for_monitor(db)) == ["everything"]


async def test_another_controller_sees_changes(api: tuple[Client, Controller]) -> None:
    """Two views on one database, as two controllers have: a change made through one is seen
    by the other once its check interval has passed (here a clock the test moves)."""
    client, ctl = api
    now = [0.0]
    other = AlertDefinitions(ctl.store, check_seconds=1.0, clock=lambda: now[0])
    web = await new_monitor(client, "web")
    assert await other.for_monitor(web) == ()
    guid = await new_definition(client, "late")
    await call(client, "POST", f"/AlertDefinition/{guid}/Member/Monitor/{web}", None, 201)
    assert await other.for_monitor(web) == ()  # within the interval: the cached snapshot
    now[0] += 1.0
    assert [d.guid for d in await other.for_monitor(web)] == [guid]
    await call(client, "DELETE", f"/Monitor/{web}", None, 204)
    now[0] += 1.0
    assert (await other.snapshot()).definitions[0].monitors == frozenset()
