"""Property-based: generated bodies and query strings at every endpoint of the API find no 500.

The endpoints are listed from the app's router, so a new one is covered without editing this
file. Runs against the real controller app on SQLite and on PostgreSQL.
"""

from __future__ import annotations

import base64
import json
import re
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any
from urllib.parse import quote

import pytest
from aiohttp.test_utils import TestClient, TestServer
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st
from yarl import URL

from controller.api.common import CONTROLLER
from controller.app import Controller, create_app
from controller.db.store import Store
from controller.settings import ControllerSettings
from tests.helpers import free_port

PASSWORD = "fuzz-test-password"
ADMIN = {"Authorization": "Basic " + base64.b64encode(f"admin:{PASSWORD}".encode()).decode()}
# query parameters some endpoint reads; random names are sent too
PARAMS = (
    "Take",
    "Sorting",
    "Cursor",
    "Start",
    "End",
    "PresetPeriod",
    "ErrorLevel",
    "filter",
    "description",
    "operatorGuid",
)
ODD_STRINGS = (
    "",
    " ",
    "\x00",
    "\ud800",
    "\udfff",
    "a\x00b",
    "é",
    "💥",
    "\u202e",
    "-1",
    "0",
    "1e309",
    "NaN",
    "Infinity",
    "9" * 400,
    "9" * 5000,  # more digits than int() converts
    "-" + "9" * 40,
    "null",
    "[]",
    "{}",
    "9999-12-31T23:59:59-05:00",
    "0001-01-01T00:00:00+05:00",
    "9999-12-31T23:59:59.999999-23:59",
    "0001-01-01T00:00:00+23:59",
    "2026-01-01T00:00:00",
    "Last24Hours",
    "All",
    "Ascending",
    "Confirmed",
    "Name,Nope",
    "Name,Hash,Url",
    "W1swXQ",
    base64.urlsafe_b64encode(b"[" * 2000).decode(),  # deeper than json.loads can
    base64.urlsafe_b64encode(b"[1e400, 1]").decode(),
)

odd_text = st.one_of(st.sampled_from(ODD_STRINGS), st.text(max_size=40))
# any JSON value: odd strings, huge and non-finite numbers, deep-ish nesting
json_values = st.recursive(
    st.one_of(
        st.none(),
        st.booleans(),
        st.integers(min_value=-(10**40), max_value=10**40),
        st.floats(allow_nan=True, allow_infinity=True),
        odd_text,
    ),
    lambda inner: st.one_of(
        st.lists(inner, max_size=4), st.dictionaries(odd_text, inner, max_size=4)
    ),
    max_leaves=12,
)

STEP = {"StepType": "HttpRequest", "Name": "s", "Url": "http://127.0.0.1:9/", "Method": "GET"}
VALID = {
    "Https": {"MonitorType": "Https", "Url": "https://127.0.0.1:9/"},
    "Http": {"MonitorType": "Http", "Url": "http://127.0.0.1:9/", "ErrorConditions": []},
    "DNS": {"MonitorType": "DNS", "DnsTestValue": "example.test"},
    "Connect": {"MonitorType": "Connect", "NetworkAddress": "127.0.0.1", "Port": 9},
    "Certificate": {"MonitorType": "Certificate", "Url": "https://127.0.0.1:9/"},
    "Ping": {"MonitorType": "Ping", "NetworkAddress": "127.0.0.1"},
    "MultiStepApi": {"MonitorType": "MultiStepApi", "MsaSteps": [STEP]},
    "Script": {
        "MonitorType": "MultiStepApi",
        "MultiStepApiTransactionScript": json.dumps({"MsaSteps": [STEP]}),
    },
}
FIELDS = sorted({k for body in VALID.values() for k in body} | {"Name", "Hash", "MonitorGuid"})
DEEP_SCRIPTS = st.sampled_from(
    [
        "[" * 100_000,
        "{" * 2_000,
        '{"MsaSteps": ' + "[" * 5_000 + "]" * 5_000 + "}",
        json.dumps({"MsaSteps": [{**STEP, "Url": "http://\ud800/"}]}),
        json.dumps({"MsaSteps": [{**STEP, "Body": "\x00"}]}),
        '{"Version": ' + "9" * 5000 + "}",
    ]
)


@st.composite
def monitor_bodies(draw: st.DrawFn) -> bytes:
    """A valid monitor of some type, then a field or two set to something generated."""
    body: dict[str, Any] = {
        "Name": draw(odd_text) or "m",
        **draw(st.sampled_from(list(VALID.values()))),
    }
    for _ in range(draw(st.integers(0, 2))):
        field = draw(st.one_of(st.sampled_from(FIELDS), odd_text))
        body[field] = draw(json_values)
    if draw(st.booleans()) and body.get("MonitorType") == "MultiStepApi":
        body.pop("MsaSteps", None)
        body["MultiStepApiTransactionScript"] = draw(DEEP_SCRIPTS)
    return json.dumps(body).encode()


raw_bodies = st.one_of(
    st.sampled_from(
        [
            b"[" * 100_000,
            b'{"a":' * 50_000,
            b'{"Name": ' + b"9" * 5_000 + b"}",
            b'{"Name": "\xed\xa0\x80"}',
            b'{"\\ud800": 1}',
            b'{"Name": "\\u0000"}',
            b"\xff\xfe{",
            b"NaN",
        ]
    ),
    st.binary(max_size=64),
)
bodies = st.one_of(
    st.none(),
    raw_bodies,
    json_values.map(lambda v: json.dumps(v).encode()),
    monitor_bodies(),
)


def _utf8(text: str) -> bytes:
    return text.encode("utf-8", "surrogatepass")


def _encode(text: str) -> str:
    return quote(_utf8(text), safe="")


def _routes(client: TestClient[Any, Any]) -> list[tuple[str, str]]:
    found = set()
    for route in client.server.app.router.routes():
        info = route.resource.get_info() if route.resource else {}
        template = info.get("formatter") or info.get("path")
        if template and route.method != "*":
            found.add((route.method, template))
    return sorted(found)


@pytest.fixture
async def fuzz_client(tmp_path: Path, database_url: str) -> AsyncIterator[TestClient[Any, Any]]:
    controller_settings = ControllerSettings(
        data_dir=tmp_path,
        database_url=database_url,
        admin_password=PASSWORD,
        broker_url=f"mqtt://127.0.0.1:{free_port()}",  # nobody there: publishes are refused
    )
    store = await Store.open(controller_settings.resolved_database_url())
    app = create_app(Controller(controller_settings, store))
    async with TestClient(TestServer(app)) as test_client:
        yield test_client
    await store.close()


async def _known_ids(client: TestClient[Any, Any]) -> list[str]:
    """Ids that exist, so requests reach past the 404s: a monitor and its checks."""
    created = await client.post(
        "/api/v4/Monitor", json={"Name": "fuzz target", **VALID["Https"]}, headers=ADMIN
    )
    assert created.status == 201, await created.text()
    guid = (await created.json())["MonitorGuid"]
    store = client.server.app[CONTROLLER].store
    details = [{"Waterfall": [{"Url": "https://127.0.0.1:9/"}]}, {"StepResults": []}, None]
    await store.insert_checks(
        [
            {
                "uid": f"fuzz{n}",
                "monitor_guid": guid,
                "server_id": None,
                "ts_us": 1_700_000_000_000_000 + n,
                "scheduled_us": 1_700_000_000_000_000,
                "error_level": 0,
                "error_code": 0,
                "attributes": "{}",
                "response_body": None,
                "details": json.dumps(detail) if detail is not None else None,
            }
            for n, detail in enumerate(details)
        ]
    )
    msa = await client.post(
        "/api/v4/Monitor", json={"Name": "fuzz script", **VALID["Script"]}, headers=ADMIN
    )
    assert msa.status == 201, await msa.text()
    admin = await store.operator_by_username("admin")
    assert admin is not None
    # an alert definition with an integration on its first level
    definition = await client.post(
        "/api/v4/AlertDefinition", json={"AlertName": "fuzz alerts"}, headers=ADMIN
    )
    assert definition.status == 201, await definition.text()
    definition_guid = (await definition.json())["AlertDefinitionGuid"]
    hook = await client.post(
        "/api/v4/Integration",
        json={"Type": "GenericWebhook", "Name": "fuzz hook", "Url": "http://127.0.0.1:9/"},
        headers=ADMIN,
    )
    assert hook.status == 201, await hook.text()
    hook_guid = (await hook.json())["IntegrationGuid"]
    added = await client.post(
        f"/api/v4/AlertDefinition/{definition_guid}/EscalationLevel/1/Integration",
        json={"IntegrationGuid": hook_guid},
        headers=ADMIN,
    )
    assert added.status == 201, await added.text()
    return [
        guid,
        (await msa.json())["MonitorGuid"],
        admin["guid"],
        definition_guid,
        hook_guid,
        "1",
        "2",
        "3",
    ]


@settings(
    max_examples=400,
    deadline=None,
    database=None,
    suppress_health_check=[
        HealthCheck.function_scoped_fixture,
        HealthCheck.too_slow,
        HealthCheck.data_too_large,
    ],
)
@given(data=st.data())
async def test_no_input_gets_a_500(fuzz_client: TestClient[Any, Any], data: st.DataObject) -> None:
    client = fuzz_client
    if not hasattr(client, "fuzz_ids"):
        client.fuzz_ids = await _known_ids(client)  # type: ignore[attr-defined]
    routes = _routes(client)
    assert len(routes) >= 14, routes  # the router was read: every resource's routes
    method, template = data.draw(st.sampled_from(routes), label="route")
    ids = st.sampled_from(client.fuzz_ids)  # type: ignore[attr-defined]
    path = re.sub(
        r"\{[^}]+\}",
        lambda _: _encode(data.draw(st.one_of(ids, odd_text), label="path value")),
        template,
    )
    query = data.draw(
        st.dictionaries(
            st.one_of(st.sampled_from(PARAMS), odd_text), st.one_of(ids, odd_text), max_size=4
        ),
        label="query",
    )
    if query:
        path += "?" + "&".join(f"{_encode(k)}={_encode(v)}" for k, v in query.items())
    # longer request lines are refused by aiohttp's HTTP parser (a plain-text 400)
    assume(len(path) < 8000)
    body = data.draw(bodies, label="body") if method in ("POST", "PUT", "PATCH") else None
    headers = {**ADMIN, "Content-Type": "application/json"}
    if data.draw(st.integers(0, 9), label="odd credentials") == 0:
        credentials = data.draw(
            st.one_of(
                st.sampled_from(["\x00:x", "admin\x00:x", ":", "admin:", "\ud800:x"]),
                odd_text,
                st.binary(max_size=40),
            ),
            label="credentials",
        )
        raw = credentials if isinstance(credentials, bytes) else _utf8(credentials)
        headers["Authorization"] = "Basic " + base64.b64encode(raw).decode()
    resp = await client.request(method, URL(path, encoded=True), data=body, headers=headers)
    text = await resp.text(errors="replace")
    assert resp.status < 500, (method, path, body[:300] if body else None, resp.status, text)
    if resp.status >= 400 and method != "HEAD":
        messages = json.loads(text)["Messages"]
        assert messages and all(m["Message"] for m in messages), text
    if (
        resp.status == 400 and method != "HEAD"
    ):  # names the field, unless the body as a whole is what is wrong
        whole = ("The request body", "The request is nested")
        assert all(m["Field"] or m["Message"].startswith(whole) for m in messages), text


@pytest.mark.parametrize(
    "body",
    [
        b"[" * 100_000,
        json.dumps(
            {
                "Name": "deep",
                "MonitorType": "MultiStepApi",
                "MultiStepApiTransactionScript": "[" * 100_000,
            }
        ).encode(),
    ],
)
async def test_deep_nesting_is_a_400(fuzz_client: TestClient[Any, Any], body: bytes) -> None:
    for method, path in [("POST", "/api/v4/Monitor")]:
        resp = await fuzz_client.request(method, path, data=body, headers=ADMIN)
        assert resp.status == 400, await resp.text()
        assert "nested deeper than" in (await resp.json())["Messages"][0]["Message"]
