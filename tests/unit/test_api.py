"""The REST API in-process over real localhost sockets, on SQLite, with no broker reachable."""

from __future__ import annotations

import base64
import json
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from aiohttp.test_utils import TestClient

from controller.api.common import CONTROLLER
from tests.helpers import controller_client

PASSWORD = "unit-test-password"


def _auth(user: str, password: str) -> dict[str, str]:
    return {"Authorization": "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode()}


ADMIN = _auth("admin", PASSWORD)


@pytest.fixture
async def client(tmp_path: Path) -> AsyncIterator[TestClient[Any, Any]]:
    async with controller_client(tmp_path, PASSWORD) as (test_client, _ctl):
        yield test_client


MONITOR = {
    "Name": "api test",
    "MonitorType": "Https",
    "Url": "https://127.0.0.1:9/health",
    "CheckInterval": 1,
}


async def test_auth_and_errors(client: TestClient[Any, Any]) -> None:
    resp = await client.get("/api/v4/Monitor")
    assert resp.status == 401 and resp.headers["WWW-Authenticate"].startswith("Basic")
    assert (await resp.json())["Messages"][0]["Message"]
    resp = await client.get("/api/v4/Monitor", headers=_auth("admin", "wrong"))
    assert resp.status == 401
    resp = await client.get("/api/v4/Nothing", headers=ADMIN)
    assert resp.status == 404 and "Messages" in await resp.json()
    resp = await client.get("/api/v4/Checkpoint/Server/Ipv6")  # anonymous
    assert resp.status == 200 and (await resp.json())["Data"] == []


async def test_register_gives_a_working_api_account(client: TestClient[Any, Any]) -> None:
    resp = await client.post("/api/v4/Register?description=ci", headers=ADMIN)
    assert resp.status == 201
    account = await resp.json()
    assert account["OperatorName"] == "Administrator" and account["AccountId"]
    api = _auth(account["UserName"], account["Password"])
    resp = await client.get("/api/v4/Monitor", headers=api)
    assert resp.status == 200 and await resp.json() == []
    resp = await client.post("/api/v4/Register", headers=api)
    assert resp.status == 403  # an API account cannot mint more accounts


async def test_monitor_lifecycle(client: TestClient[Any, Any]) -> None:
    resp = await client.post("/api/v4/Monitor", json=MONITOR, headers=ADMIN)
    assert resp.status == 201, await resp.text()
    created = await resp.json()
    guid = created["MonitorGuid"]
    assert created["CheckInterval"] == 1 and "CheckIntervalSeconds" not in created
    assert created["CreatedDate"].endswith("Z") and created["Hash"]

    resp = await client.patch(
        f"/api/v4/Monitor/{guid}", json={"CheckIntervalSeconds": 30}, headers=ADMIN
    )
    assert resp.status == 204
    got = await (await client.get(f"/api/v4/Monitor/{guid}", headers=ADMIN)).json()
    assert got["CheckIntervalSeconds"] == 30 and "CheckInterval" not in got
    assert got["Hash"] != created["Hash"] and got["Url"] == MONITOR["Url"]

    resp = await client.put(
        f"/api/v4/Monitor/{guid}", json={**MONITOR, "Name": "renamed"}, headers=ADMIN
    )
    assert resp.status == 204
    got = await (await client.get(f"/api/v4/Monitor/{guid}", headers=ADMIN)).json()
    assert got["Name"] == "renamed" and got["CheckInterval"] == 1

    listed = await (await client.get("/api/v4/Monitor?filter=Name", headers=ADMIN)).json()
    assert listed == [{"Name": "renamed"}]

    resp = await client.patch(
        f"/api/v4/Monitor/{guid}", json={"MonitorType": "Http"}, headers=ADMIN
    )
    assert resp.status == 400
    assert (await resp.json())["Messages"][0]["Field"] == "MonitorType"

    resp = await client.delete(f"/api/v4/Monitor/{guid}", headers=ADMIN)
    assert resp.status == 204
    resp = await client.get(f"/api/v4/Monitor/{guid}", headers=ADMIN)
    assert resp.status == 404
    resp = await client.get(f"/api/v4/MonitorCheck/Monitor/{guid}", headers=ADMIN)
    assert resp.status == 404


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({**MONITOR, "Url": "http://127.0.0.1/"}, "Url"),
        ({**MONITOR, "Name": ""}, "Name"),
        ({**MONITOR, "MonitorType": "Gopher"}, "MonitorType"),
        ({key: v for key, v in MONITOR.items() if key != "MonitorType"}, "MonitorType"),
        ({**MONITOR, "TimeoutSeconds": 500}, "TimeoutSeconds"),
        ({**MONITOR, "CheckIntervalSeconds": 10}, "CheckIntervalSeconds"),
        ({**MONITOR, "RequestHeaders": [{"Name": "bad header"}]}, "RequestHeaders[0].Name"),
        (
            {**MONITOR, "ErrorConditions": [{"ErrorConditionType": "HttpStatus"}]},
            "ErrorConditions[0]",
        ),
        ({**MONITOR, "Typo": True}, "Typo"),
    ],
)
async def test_invalid_monitors_name_the_field(
    client: TestClient[Any, Any], body: dict[str, Any], field: str
) -> None:
    resp = await client.post("/api/v4/Monitor", json=body, headers=ADMIN)
    assert resp.status == 400
    messages = (await resp.json())["Messages"]
    assert field in [m["Field"] for m in messages], messages
    assert all(m["Message"] for m in messages)


async def test_a_bad_regular_expression_is_shown_as_written(
    client: TestClient[Any, Any],
) -> None:
    pattern = r"\d{3}-(ERROR\s"
    condition = {
        "ErrorConditionType": "ContentMatch",
        "Value": pattern,
        "MatchType": "ErrorWhenContainsRegex",
    }
    resp = await client.post(
        "/api/v4/Monitor", json={**MONITOR, "ErrorConditions": [condition]}, headers=ADMIN
    )
    assert resp.status == 400
    (message,) = (await resp.json())["Messages"]
    assert message["Field"] == "ErrorConditions[0]"
    assert f'"{pattern}"' in message["Message"], message  # not its repr: no doubled backslashes
    function = {"Name": "f", "Type": "Regex", "Regex": pattern}
    step = {"StepType": "HttpRequest", "Url": "http://127.0.0.1:9/"}
    msa = {"Name": "m", "MonitorType": "MultiStepApi", "MsaSteps": [step]}
    resp = await client.post(
        "/api/v4/Monitor", json={**msa, "UserDefinedFunctions": [function]}, headers=ADMIN
    )
    assert resp.status == 400
    (message,) = (await resp.json())["Messages"]
    assert f'Regex "{pattern}" is invalid' in message["Message"], message


async def test_bad_bodies_and_duplicates(client: TestClient[Any, Any]) -> None:
    resp = await client.post("/api/v4/Monitor", data=b"{oops", headers=ADMIN)
    assert resp.status == 400 and "not valid JSON" in (await resp.json())["Messages"][0]["Message"]
    resp = await client.post("/api/v4/Monitor", json=[1], headers=ADMIN)
    assert resp.status == 400
    assert (await client.post("/api/v4/Monitor", json=MONITOR, headers=ADMIN)).status == 201
    resp = await client.post("/api/v4/Monitor", json=MONITOR, headers=ADMIN)
    assert resp.status == 400 and (await resp.json())["Messages"][0]["Field"] == "Name"


async def test_check_queries_validate_their_parameters(client: TestClient[Any, Any]) -> None:
    created = await (await client.post("/api/v4/Monitor", json=MONITOR, headers=ADMIN)).json()
    path = f"/api/v4/MonitorCheck/Monitor/{created['MonitorGuid']}"
    page = await (await client.get(path, headers=ADMIN)).json()
    assert page["Data"] == [] and "Next" not in page["Cursors"] and page["Meta"]["Period"]["From"]
    for query, field in [
        ("Take=101", "Take"),
        ("Take=x", "Take"),
        ("Sorting=Up", "Sorting"),
        ("Start=yesterday", "Start"),
        ("Cursor=%%%", "Cursor"),
        ("ErrorLevel=Bad", "ErrorLevel"),
        ("PresetPeriod=Forever", "PresetPeriod"),
        ("Start=2026-01-02T00:00:00&End=2026-01-01T00:00:00", "End"),
    ]:
        resp = await client.get(f"{path}?{query}", headers=ADMIN)
        assert resp.status == 400, query
        assert (await resp.json())["Messages"][0]["Field"] == field, query
    resp = await client.get("/api/v4/MonitorCheck/12345", headers=ADMIN)
    assert resp.status == 404
    resp = await client.get("/api/v4/Checkpoint/7", headers=ADMIN)
    assert resp.status == 404


async def test_secrets_are_write_only(client: TestClient[Any, Any]) -> None:
    body = {
        **MONITOR,
        "AuthenticationType": "Basic",
        "Username": "svc",
        "Password": "hunter2",
    }
    resp = await client.post("/api/v4/Monitor", json=body, headers=ADMIN)
    assert resp.status == 201, await resp.text()
    created = await resp.json()
    assert created["Password"] == "******" and created["Username"] == "svc"
    guid = created["MonitorGuid"]
    got = await (await client.get(f"/api/v4/Monitor/{guid}", headers=ADMIN)).json()
    assert "hunter2" not in json.dumps(got)
    # a GET-edit-PUT round trip keeps the secret it could not see
    resp = await client.put(f"/api/v4/Monitor/{guid}", json={**got, "Notes": "x"}, headers=ADMIN)
    assert resp.status == 204, await resp.text()
    store = client.server.app[CONTROLLER].store
    stored = await store.monitor(guid)
    assert stored is not None and stored.definition["Password"] == "hunter2"
    resp = await client.patch(f"/api/v4/Monitor/{guid}", json={"Password": "new"}, headers=ADMIN)
    assert resp.status == 204
    stored = await store.monitor(guid)
    assert stored is not None and stored.definition["Password"] == "new"
    resp = await client.post(
        "/api/v4/Monitor",
        json={**MONITOR, "Name": "n2", "AuthenticationType": "NTLM"},
        headers=ADMIN,
    )
    assert resp.status == 400 and (await resp.json())["Messages"][0]["Field"] == "Username"


async def test_multi_step_secrets_are_write_only(client: TestClient[Any, Any]) -> None:
    step = {
        "StepType": "HttpRequest",
        "Name": "login",
        "Url": "https://127.0.0.1:9/login",
        "Authentication": {"AuthenticationType": "Basic", "UserName": "svc", "Password": "s3cret"},
    }
    body = {
        "Name": "msa",
        "MonitorType": "MultiStepApi",
        "CheckInterval": 5,
        "MsaSteps": [step],
        "UserDefinedFunctions": [{"Name": "sign", "Type": "JwtEncode", "JwtSigningKey": "k3y"}],
    }
    resp = await client.post("/api/v4/Monitor", json=body, headers=ADMIN)
    assert resp.status == 201, await resp.text()
    guid = (await resp.json())["MonitorGuid"]
    shown = await (await client.get(f"/api/v4/Monitor/{guid}", headers=ADMIN)).json()
    text = json.dumps(shown)
    assert "s3cret" not in text and "k3y" not in text
    assert shown["MsaSteps"][0]["Authentication"]["PasswordSpecified"] is True
    store = client.server.app[CONTROLLER].store
    for method in ("put", "patch"):
        edited = {**shown, "Notes": method} if method == "put" else {"MsaSteps": shown["MsaSteps"]}
        resp = await getattr(client, method)(f"/api/v4/Monitor/{guid}", json=edited, headers=ADMIN)
        assert resp.status == 204, await resp.text()
        stored = await store.monitor(guid)
        assert stored is not None
        assert stored.definition["MsaSteps"][0]["Authentication"]["Password"] == "s3cret"
        assert stored.definition["UserDefinedFunctions"][0]["JwtSigningKey"] == "k3y"
    resp = await client.put(
        f"/api/v4/Monitor/{guid}", json={**shown, "MsaSteps": "abc", "Hash": None}, headers=ADMIN
    )
    assert resp.status == 400
