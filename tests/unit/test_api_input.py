"""Input the API must answer with a 4xx naming the field, never a 500, and edits that race.

Each test runs on SQLite and on a fresh PostgreSQL database.
"""

from __future__ import annotations

import asyncio
import base64
import json
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from aiohttp.test_utils import TestClient, TestServer

from controller.api.common import CONTROLLER
from controller.app import Controller, create_app
from controller.db.store import Store
from controller.settings import ControllerSettings
from tests.helpers import controller_client, free_port

PASSWORD = "input-test-password"
ADMIN = {"Authorization": "Basic " + base64.b64encode(f"admin:{PASSWORD}".encode()).decode()}
MONITOR = {
    "Name": "input test",
    "MonitorType": "Https",
    "Url": "https://127.0.0.1:9/health",
    "CheckInterval": 1,
}


@pytest.fixture
async def client(tmp_path: Path, database_url: str) -> AsyncIterator[TestClient[Any, Any]]:
    async with controller_client(tmp_path, PASSWORD, database_url=database_url) as (client, _):
        yield client


async def _create(client: TestClient[Any, Any], **fields: Any) -> dict[str, Any]:
    resp = await client.post("/api/v4/Monitor", json={**MONITOR, **fields}, headers=ADMIN)
    assert resp.status == 201, await resp.text()
    created: dict[str, Any] = await resp.json()
    return created


async def _error(resp: Any, status: int) -> tuple[str | None, str]:
    assert resp.status == status, await resp.text()
    message = (await resp.json())["Messages"][0]
    return message["Field"], message["Message"]


async def test_deeply_nested_bodies_are_a_400(client: TestClient[Any, Any]) -> None:
    guid = (await _create(client))["MonitorGuid"]
    for method, path in [
        ("POST", "/api/v4/Monitor"),
        ("PUT", f"/api/v4/Monitor/{guid}"),
        ("PATCH", f"/api/v4/Monitor/{guid}"),
    ]:
        resp = await client.request(method, path, data=b"[" * 100_000, headers=ADMIN)
        _field, message = await _error(resp, 400)
        assert "nested deeper than" in message
    script = {"MultiStepApiTransactionScript": "[" * 100_000}
    resp = await client.post(
        "/api/v4/Monitor",
        json={"Name": "deep", "MonitorType": "MultiStepApi", **script},
        headers=ADMIN,
    )
    field, message = await _error(resp, 400)
    assert field == "MultiStepApiTransactionScript" and "nested deeper than" in message
    resp = await client.post(
        "/api/v4/Monitor",
        json={
            "Name": "msa",
            "MonitorType": "MultiStepApi",
            "MultiStepApiTransactionScript": json.dumps(
                {"MsaSteps": [{"Name": "s", "Url": "https://127.0.0.1:9/"}]}
            ),
        },
        headers=ADMIN,
    )
    assert resp.status == 201, await resp.text()
    msa = await resp.json()
    for method in ("PUT", "PATCH"):  # the stored script is read to keep its secrets first
        resp = await client.request(
            method,
            f"/api/v4/Monitor/{msa['MonitorGuid']}",
            json={"Name": "msa", **script},
            headers=ADMIN,
        )
        field, message = await _error(resp, 400)
        assert field == "MultiStepApiTransactionScript" and "nested deeper than" in message


async def test_unstorable_text_is_a_400(client: TestClient[Any, Any]) -> None:
    for raw, field in [
        (b'{"Name": "\\u0000", "MonitorType": "Https"}', "Name"),
        (b'{"Name": "\\ud800", "MonitorType": "Https"}', "Name"),
        (b'{"Name": "a", "Notes": "\xed\xa0\x80", "MonitorType": "Https"}', "Notes"),
        (b'{"Name": ' + b"9" * 5000 + b"}", None),  # more digits than Python converts
    ]:
        resp = await client.post("/api/v4/Monitor", data=raw, headers=ADMIN)
        got, _message = await _error(resp, 400)
        assert got == field, raw[:40]
    resp = await client.get("/api/v4/Monitor/%00", headers=ADMIN)
    assert (await _error(resp, 400))[0] == "monitorGuid"
    nul_login = {"Authorization": "Basic " + base64.b64encode(b"admin\x00:x").decode()}
    resp = await client.get("/api/v4/Monitor", headers=nul_login)
    assert resp.status == 401
    for path in ("/api/v4/Checkpoint/" + "9" * 5000, "/api/v4/Checkpoint/Server/" + "9" * 30):
        resp = await client.get(path, headers=ADMIN)
        assert (await _error(resp, 404))[0] in ("checkpointId", "serverId")
    resp = await client.post("/api/v4/Register?description=%00", headers=ADMIN)
    assert (await _error(resp, 400))[0] == "description"


async def test_extreme_periods_are_answered(client: TestClient[Any, Any]) -> None:
    guid = (await _create(client))["MonitorGuid"]
    path = f"/api/v4/MonitorCheck/Monitor/{guid}"
    for query, expected in [
        ("Start=9999-12-31T23:59:59-05:00", ("9999-12-31T23:59:59.999Z", None)),
        ("Start=0001-01-01T00:00:00%2B05:00", ("0001-01-01T00:00:00.000Z", None)),
        ("End=0001-01-01T00:00:00%2B05:00", (None, "0001-01-01T00:00:00.000Z")),
        ("End=9999-12-31T23:59:59-05:00", (None, "9999-12-31T23:59:59.999Z")),
    ]:
        resp = await client.get(f"{path}?{query}", headers=ADMIN)
        assert resp.status == 200, (query, await resp.text())
        page = await resp.json()
        assert page["Data"] == []
        assert (page["Meta"]["Period"]["From"], page["Meta"]["Period"]["To"]) == expected
    deep_cursor = base64.urlsafe_b64encode(b"[" * 2000).decode()
    resp = await client.get(f"{path}?Cursor={deep_cursor}", headers=ADMIN)
    assert (await _error(resp, 400))[0] == "Cursor"


async def test_filter_names_real_fields(client: TestClient[Any, Any]) -> None:
    guid = (await _create(client))["MonitorGuid"]
    listed = await (await client.get("/api/v4/Monitor?filter=name,Hash", headers=ADMIN)).json()
    assert len(listed) == 1 and set(listed[0]) == {"Name", "Hash"}
    # a field of another monitor type is a field: this monitor just has none
    listed = await (await client.get("/api/v4/Monitor?filter=DnsQuery", headers=ADMIN)).json()
    assert listed == [{}]
    for path in ("/api/v4/Monitor", f"/api/v4/Monitor/{guid}"):
        resp = await client.get(f"{path}?filter=Name,Nmae", headers=ADMIN)
        field, message = await _error(resp, 400)
        assert field == "filter" and "'Nmae'" in message
    one = await (await client.get(f"/api/v4/Monitor/{guid}?filter=Url", headers=ADMIN)).json()
    assert one == {"Url": MONITOR["Url"]}


CHANGES: list[dict[str, Any]] = [
    {"Name": "renamed"},
    {"Notes": "a note"},
    {"TimeoutSeconds": 17},
    {"CheckIntervalSeconds": 45},
    {"UserAgent": "picket-test"},
    {"RequestBody": "hello"},
    {"HttpMethod": "Post"},
    {"MonitorMode": "Staging"},
    {"GenerateAlert": False},
    {"CustomFields": [{"Name": "team", "Value": "ops"}]},
]


async def test_concurrent_patches_of_different_fields_all_apply(
    client: TestClient[Any, Any],
) -> None:
    guid = (await _create(client))["MonitorGuid"]
    for _round in range(3):
        await client.put(f"/api/v4/Monitor/{guid}", json=MONITOR, headers=ADMIN)
        responses = await asyncio.gather(
            *(
                client.patch(f"/api/v4/Monitor/{guid}", json=change, headers=ADMIN)
                for change in CHANGES
            )
        )
        assert [r.status for r in responses] == [204] * len(CHANGES)
        got = await (await client.get(f"/api/v4/Monitor/{guid}", headers=ADMIN)).json()
        for change in CHANGES:
            for key, value in change.items():
                assert got[key] == value, (key, got)
        stored = await client.server.app[CONTROLLER].store.monitor(guid)
        assert stored is not None and stored.revision == got["Hash"]


async def test_a_stale_hash_is_a_409(client: TestClient[Any, Any]) -> None:
    created = await _create(client)
    guid, first_hash = created["MonitorGuid"], created["Hash"]
    path = f"/api/v4/Monitor/{guid}"
    resp = await client.patch(path, json={"Notes": "one", "Hash": first_hash}, headers=ADMIN)
    assert resp.status == 204  # the Hash it read is current: applied
    for method, body in [
        ("PATCH", {"Notes": "two", "Hash": first_hash}),
        ("PUT", {**MONITOR, "Notes": "two", "Hash": first_hash}),
        ("PUT", {**MONITOR, "Notes": "two", "Hash": "0" * 16}),
    ]:
        resp = await client.request(method, path, json=body, headers=ADMIN)
        field, message = await _error(resp, 409)
        assert field == "Hash" and (first_hash in message or "0" * 16 in message)
    got = await (await client.get(path, headers=ADMIN)).json()
    assert got["Notes"] == "one"
    resp = await client.put(
        path, json={**MONITOR, "Notes": "three", "Hash": got["Hash"]}, headers=ADMIN
    )
    assert resp.status == 204
    resp = await client.patch(path, json={"Hash": 5}, headers=ADMIN)
    assert (await _error(resp, 400))[0] == "Hash"
    # without a Hash, an edit applies to whatever is stored (as before)
    resp = await client.patch(path, json={"Notes": "four"}, headers=ADMIN)
    assert resp.status == 204


async def test_condition_fields_without_meaning_are_refused(client: TestClient[Any, Any]) -> None:
    def body(**condition: Any) -> dict[str, Any]:
        return {
            **MONITOR,
            "ErrorConditions": [{"ErrorConditionType": "ContentMatch", "Value": "ok", **condition}],
        }

    for condition, field in [
        ({"Percentage": "50"}, "ErrorConditions[0].Percentage"),
        ({"Level": "Warning"}, "ErrorConditions[0].Level"),
        ({"Effect": "Maybe"}, "ErrorConditions[0].Effect"),
    ]:
        resp = await client.post("/api/v4/Monitor", json=body(**condition), headers=ADMIN)
        got, message = await _error(resp, 400)
        assert got == field, message
        if "Effect" not in condition:
            assert "not supported" in message
    # as Uptrends exports them: null (or an empty Percentage) is accepted
    created = await _create(
        client, **body(Percentage="", Level=None, Effect="Indicate") | {"Name": "indicate"}
    )
    assert created["ErrorConditions"][0]["Effect"] == "Indicate"
    assert created["ErrorConditions"][0]["Percentage"] is None


def test_constant_fields_are_documented_as_fixed() -> None:
    """Fields the API answers with a constant say so in docs/api.md (see "No constant presented
    as data"); when one becomes real, its line there changes with it."""
    text = " ".join((Path(__file__).parents[2] / "docs" / "api.md").read_text().split())
    for phrase in [
        '`AccountId` is always `"1"` (fixed',
        "the last is fixed to the same as Tls12_Tls11_Tls10",
        "fixed: `StaleTime` is 0",
        "`UrlIsBlocked` false (Picket blocks no URLs)",
        "`ChildRegions` is always empty",
        "ClockOffsetMilliseconds (null until measured)",
        "`Percentage` and `Level` are refused",
    ]:
        assert phrase in text, phrase


async def test_patches_through_two_controllers_all_apply(
    client: TestClient[Any, Any], tmp_path: Path, database_url: str
) -> None:
    """A second controller on the same database: its process-local lock does not help, the
    compare-and-swap in the database does."""
    settings = ControllerSettings(
        data_dir=tmp_path / "second",
        database_url=database_url,
        admin_password=PASSWORD,
        broker_url=f"mqtt://127.0.0.1:{free_port()}",
    )
    store = await Store.open(settings.resolved_database_url())
    try:
        async with TestClient(TestServer(create_app(Controller(settings, store)))) as second:
            guid = (await _create(client))["MonitorGuid"]
            responses = await asyncio.gather(
                *(
                    (client, second)[n % 2].patch(
                        f"/api/v4/Monitor/{guid}", json=change, headers=ADMIN
                    )
                    for n, change in enumerate(CHANGES)
                )
            )
            assert [r.status for r in responses] == [204] * len(CHANGES)
            got = await (await second.get(f"/api/v4/Monitor/{guid}", headers=ADMIN)).json()
            for change in CHANGES:
                for key, value in change.items():
                    assert got[key] == value, (key, got)
    finally:
        await store.close()
