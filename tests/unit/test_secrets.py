"""The secrets policy (shared.secrets): write-only in the API over PUT and PATCH, scrubbed from
what checks produce."""

from __future__ import annotations

import base64
import hashlib
import json
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from aiohttp.test_utils import TestClient

from agent.curl import CurlEngine
from agent.probes.api import MultiStepApiProbe
from agent.probes.base import Outcome, ProbeContext
from agent.runner import Unrunnable, monitor_of
from agent.scrub import scrub_outcome
from controller.api.common import CONTROLLER
from controller.app import Controller
from controller.db.store import Store
from controller.settings import ControllerSettings
from shared import secrets
from shared.errors import ErrorCode
from shared.messages import Assignment
from shared.monitors import MultiStepApiMonitor
from shared.secrets import MASK, Scrubber
from tests.helpers import Target, controller_client, free_port

PASSWORD = "unit-test-password"
ADMIN = {"Authorization": "Basic " + base64.b64encode(f"admin:{PASSWORD}".encode()).decode()}
FAKE_CERT = "-----BEGIN CERTIFICATE-----\nMIIB\n-----END CERTIFICATE-----\n"
FAKE_KEY = "-----BEGIN PRIVATE KEY-----\nkey-material-1\n-----END PRIVATE KEY-----\n"


@pytest.fixture
async def client(tmp_path: Path) -> AsyncIterator[TestClient[Any, Any]]:
    async with controller_client(tmp_path, PASSWORD) as (test_client, _ctl):
        yield test_client


def _headers(**values: str) -> list[dict[str, Any]]:
    return [{"Name": name.replace("_", "-"), "Value": value} for name, value in values.items()]


HEADERS = [
    *_headers(
        Authorization="Bearer tok-authorization",
        Proxy_Authorization="Basic tok-proxy",
        Cookie="session=tok-cookie",
        x_api_key="tok-api-key",  # any case
        X_Session_Token="tok-token",
        X_Client_Secret="tok-secret",
        X_Signing_Key="tok-key",
    ),
    {"Name": "X-Flagged", "Value": "tok-flagged", "IsSecret": True},
    {"Name": "X-Plain", "Value": "visible"},
]
SECRET_VALUES = [h["Value"] for h in HEADERS if h["Name"] != "X-Plain"]
HTTP = {
    "Name": "secret http",
    "MonitorType": "Http",
    "Url": "http://url-user:url-pass@127.0.0.1:9/path",
    "CheckInterval": 5,
    "AuthenticationType": "Basic",
    "Username": "svc",
    "Password": "tok-password",
    "ClientCertificate": FAKE_CERT,
    "ClientCertificateKey": FAKE_KEY,
    "RequestHeaders": HEADERS,
}


def _step(name: str, password: str, header: str, url_pass: str) -> dict[str, Any]:
    return {
        "StepType": "HttpRequest",
        "Name": name,
        "Url": f"http://u:{url_pass}@127.0.0.1:9/{name}",
        "RequestHeaders": [
            {"Key": "X-Api-Key", "Value": header},
            {"Key": "X-Note", "Value": f"plain-{name}"},
        ],
        "Authentication": {"AuthenticationType": "Basic", "UserName": "svc", "Password": password},
    }


FUNCTIONS = [
    {"Name": "sign", "Type": "JwtEncode", "JwtSigningKey": "tok-jwt"},
    {"Name": "mac", "Type": "Hash", "HashAlgorithm": "HMACSHA256", "HashKey": "tok-hmac"},
]
MSA = {
    "Name": "secret msa",
    "MonitorType": "MultiStepApi",
    "CheckInterval": 5,
    "MsaSteps": [_step("one", "tok-p1", "tok-h1", "tok-u1"), _step("two", "tok-p2", "tok-h2", "")],
    "UserDefinedFunctions": FUNCTIONS,
}
MSA_SECRETS = ["tok-p1", "tok-h1", "tok-u1", "tok-p2", "tok-h2", "tok-jwt", "tok-hmac"]


def test_which_headers_are_secret() -> None:
    for name in ("Authorization", "proxy-authorization", "COOKIE", "X-Api-Key", "X-Auth-Token"):
        assert secrets.is_secret_header(name), name
    for name in ("X-Client-Secret", "x-signing-key", "Api-Key"):
        assert secrets.is_secret_header(name), name
    for name in ("Accept", "X-Tokenizer", "Keyboard", "X-Secretary", "Content-Type"):
        assert not secrets.is_secret_header(name), name
    assert secrets.is_secret_header("X-Anything", flagged=True)


def test_url_userinfo() -> None:
    assert secrets.mask_url("https://a:b@h:1/p?q=x@y") == "https://******@h:1/p?q=x@y"
    assert secrets.mask_url("https://h/p?email=a@b") == "https://h/p?email=a@b"
    assert secrets.mask_url("http://p%40ss@h/") == "http://******@h/"
    assert secrets.keep_url("http://******@h/new", "http://a:b@h/old") == "http://a:b@h/new"
    assert secrets.keep_url("http://h/new", "http://a:b@h/old") == "http://h/new"  # cleared
    assert secrets.keep_url("http://c:d@h/", "http://a:b@h/") == "http://c:d@h/"  # replaced


def test_secret_values_cover_the_forms_secrets_take() -> None:
    values = secrets.secret_values(HTTP)
    basic = base64.b64encode(b"svc:tok-password").decode()
    url_basic = base64.b64encode(b"url-user:url-pass").decode()
    for value in [*SECRET_VALUES, "tok-authorization", "tok-cookie", "tok-password", basic]:
        assert value in values, value
    assert {"url-user:url-pass", "url-pass", url_basic, FAKE_KEY} <= set(values)
    assert "visible" not in values and "svc" not in values
    assert secrets.secret_values({"Name": "x", "Url": "http://h/"}) == []
    assert not Scrubber(["ab", "xyz"]) and Scrubber(["abcd"])  # shorter ones are not scrubbed
    script = json.dumps({"MsaSteps": MSA["MsaSteps"], "UserDefinedFunctions": FUNCTIONS})
    values = secrets.secret_values({"MultiStepApiTransactionScript": script})
    assert set(MSA_SECRETS) <= set(values)


def test_scrub_outcome() -> None:
    scrubber = Scrubber.of(HTTP)
    outcome = Outcome(ErrorCode.HTTP_STATUS_MISMATCH, "echo: Bearer tok-authorization")
    outcome.body = b'{"headers": {"X-Api-Key": "tok-api-key", "Cookie": "session=tok-cookie"}}'
    outcome.details = {"Waterfall": [{"Url": "http://url-user:url-pass@h/", "Tags": ["tok-key"]}]}
    outcome.warnings = ["saw tok-secret"]
    scrub_outcome(outcome, scrubber)
    text = outcome.error_message + outcome.body.decode() + json.dumps(outcome.details)
    text += "".join(outcome.warnings)
    assert "tok-" not in text and "url-pass" not in text, text
    assert outcome.details == {"Waterfall": [{"Url": "http://******@h/", "Tags": [MASK]}]}


async def _stored(client: TestClient[Any, Any], guid: str) -> dict[str, Any]:
    row = await client.server.app[CONTROLLER].store.monitor(guid)
    assert row is not None
    return row.definition


async def _create(client: TestClient[Any, Any], body: dict[str, Any]) -> tuple[str, Any]:
    resp = await client.post("/api/v4/Monitor", json=body, headers=ADMIN)
    assert resp.status == 201, await resp.text()
    guid = (await resp.json())["MonitorGuid"]
    shown = await (await client.get(f"/api/v4/Monitor/{guid}", headers=ADMIN)).json()
    return guid, shown


async def _send(client: TestClient[Any, Any], method: str, guid: str, body: Any) -> None:
    # these round trips reuse one GET on purpose; the Hash check (409) has its own tests
    if isinstance(body, dict):
        body = {k: v for k, v in body.items() if k != "Hash"}
    resp = await client.request(method, f"/api/v4/Monitor/{guid}", json=body, headers=ADMIN)
    assert resp.status == 204, await resp.text()


@pytest.mark.parametrize("method", ["PUT", "PATCH"])
async def test_http_secrets_are_write_only(client: TestClient[Any, Any], method: str) -> None:
    guid, shown = await _create(client, HTTP)
    listed = await (await client.get("/api/v4/Monitor", headers=ADMIN)).json()
    for answer in (shown, listed):
        text = json.dumps(answer)
        for secret in [*SECRET_VALUES, "tok-password", "url-pass", "url-user", "key-material"]:
            assert secret not in text, secret
    assert shown["Password"] == MASK and shown["ClientCertificateKey"] == MASK
    assert shown["Url"] == "http://******@127.0.0.1:9/path"
    assert [h["Value"] for h in shown["RequestHeaders"]] == [MASK] * 8 + ["visible"]
    assert shown["RequestHeaders"][7]["IsSecret"] is True
    assert "IsSecret" not in shown["RequestHeaders"][0]  # Uptrends' {Name, Value} otherwise
    original = await _stored(client, guid)

    # `******` keeps: the GET answer sent back changes nothing
    await _send(client, method, guid, shown)
    assert await _stored(client, guid) == original

    # left out keeps: no Password, headers without Value; a new path keeps the userinfo
    body = {k: v for k, v in shown.items() if k not in ("Password", "ClientCertificateKey")}
    body["RequestHeaders"] = [{"Name": h["Name"].upper()} for h in HEADERS[:-1]] + [HEADERS[-1]]
    body["Url"] = "http://******@127.0.0.1:9/other"
    await _send(client, method, guid, body)
    stored = await _stored(client, guid)
    assert stored["Password"] == "tok-password" and stored["ClientCertificateKey"] == FAKE_KEY
    assert [h["Value"] for h in stored["RequestHeaders"]] == [*SECRET_VALUES, "visible"]
    assert stored["RequestHeaders"][7]["IsSecret"] is True  # a kept secret stays flagged
    assert stored["Url"] == "http://url-user:url-pass@127.0.0.1:9/other"

    # a new value replaces; `""` clears
    body = {
        "Password": "",
        "ClientCertificateKey": "",
        "Url": "http://127.0.0.1:9/other",
        "RequestHeaders": [
            {"Name": "Authorization", "Value": "Bearer new-token"},
            {"Name": "X-Api-Key", "Value": ""},
        ],
    }
    if method == "PUT":
        body = {**shown, **body}
    await _send(client, method, guid, body)
    stored = await _stored(client, guid)
    assert stored["Password"] == "" and stored["ClientCertificateKey"] == ""
    assert stored["Url"] == "http://127.0.0.1:9/other"
    assert stored["RequestHeaders"] == [
        {"Name": "Authorization", "Value": "Bearer new-token"},
        {"Name": "X-Api-Key", "Value": ""},
    ]
    shown = await (await client.get(f"/api/v4/Monitor/{guid}", headers=ADMIN)).json()
    assert shown["Password"] == "" and shown["RequestHeaders"][1]["Value"] == ""


@pytest.mark.parametrize("method", ["PUT", "PATCH"])
@pytest.mark.parametrize("form", ["steps", "script"])
async def test_multi_step_secrets_are_write_only(
    client: TestClient[Any, Any], method: str, form: str
) -> None:
    body: dict[str, Any] = dict(MSA)
    if form == "script":
        script = {"MsaSteps": body.pop("MsaSteps"), "Version": 2}
        script["UserDefinedFunctions"] = body.pop("UserDefinedFunctions")
        body["MultiStepApiTransactionScript"] = json.dumps(script)
    guid, shown = await _create(client, body)
    text = json.dumps(shown)
    for secret in MSA_SECRETS:
        assert secret not in text, secret
    assert "plain-one" in text and "svc" in text

    def steps_of(definition: dict[str, Any]) -> dict[str, Any]:
        if form == "script":
            return dict(json.loads(definition["MultiStepApiTransactionScript"]))
        return definition

    seen = steps_of(shown)
    assert seen["MsaSteps"][0]["Url"] == "http://******@127.0.0.1:9/one"
    assert seen["MsaSteps"][0]["Authentication"]["Password"] == MASK
    assert seen["MsaSteps"][0]["RequestHeaders"][0]["Value"] == MASK
    assert seen["UserDefinedFunctions"][1]["HashKey"] == MASK
    original = steps_of(await _stored(client, guid))

    # `******` keeps, also with the steps in another order
    seen["MsaSteps"].reverse()
    edited = json.dumps(seen) if form == "script" else None
    field = "MultiStepApiTransactionScript" if form == "script" else "MsaSteps"
    value = edited if edited is not None else seen["MsaSteps"]
    await _send(
        client, method, guid, {**shown, field: value} if method == "PUT" else {field: value}
    )
    stored = steps_of(await _stored(client, guid))
    for step in stored["MsaSteps"]:
        step["Authentication"].pop("PasswordSpecified", None)  # GET says whether one is set
    for step in original["MsaSteps"]:
        step["Authentication"].pop("PasswordSpecified", None)
    assert stored["MsaSteps"] == list(reversed(original["MsaSteps"]))
    assert stored["UserDefinedFunctions"] == original["UserDefinedFunctions"]

    # `""` clears, a new value replaces
    seen["MsaSteps"][0]["Authentication"]["Password"] = ""
    seen["MsaSteps"][1]["RequestHeaders"][0]["Value"] = "tok-new"
    seen["UserDefinedFunctions"][0]["JwtSigningKey"] = ""
    value = json.dumps(seen) if form == "script" else seen["MsaSteps"]
    patch: dict[str, Any] = {field: value}
    if form == "steps":
        patch["UserDefinedFunctions"] = seen["UserDefinedFunctions"]
    await _send(client, method, guid, {**shown, **patch} if method == "PUT" else patch)
    stored = steps_of(await _stored(client, guid))
    assert stored["MsaSteps"][0]["Authentication"]["Password"] == ""
    assert stored["MsaSteps"][1]["RequestHeaders"][0]["Value"] == "tok-new"
    assert stored["MsaSteps"][1]["Authentication"]["Password"] == "tok-p1"  # kept
    assert stored["UserDefinedFunctions"][0]["JwtSigningKey"] == ""
    assert stored["UserDefinedFunctions"][1]["HashKey"] == "tok-hmac"


async def _refused(
    client: TestClient[Any, Any], method: str, guid: str, body: Any
) -> list[str | None]:
    resp = await client.request(method, f"/api/v4/Monitor/{guid}", json=body, headers=ADMIN)
    answer = await resp.json()
    assert resp.status == 400, answer
    fields = [m["Field"] for m in answer["Messages"] if "send the secret itself" in m["Message"]]
    assert fields, answer
    return fields


@pytest.mark.parametrize("method", ["PUT", "PATCH"])
async def test_kept_secrets_do_not_follow_the_url_elsewhere(
    client: TestClient[Any, Any], method: str
) -> None:
    """Whoever may edit a monitor must not get its credentials by pointing it at a server of
    theirs: a stored secret is kept only while the URL keeps its scheme, host and port."""
    guid, shown = await _create(client, HTTP)
    original = await _stored(client, guid)
    elsewhere = {**shown, "Url": "http://******@127.0.0.2:9/path"}
    fields = await _refused(client, method, guid, elsewhere)
    assert "Url" in fields and "Password" in fields, fields
    assert sum(1 for f in fields if f and f.startswith("RequestHeaders")) == 8, fields
    if method == "PATCH":  # the URL alone: what is left out stays, so it is checked too
        fields = await _refused(client, method, guid, {"Url": "http://127.0.0.2:9/path"})
        assert "Password" in fields and any(f and "RequestHeaders" in f for f in fields)
    assert await _stored(client, guid) == original
    # sent again, they go: the new host gets what the editor knows, nothing more
    again = {
        **shown,
        "Url": "http://127.0.0.2:9/path",
        "Password": "new-password",
        "RequestHeaders": [{"Name": "Authorization", "Value": "Bearer mine"}],
    }
    await _send(client, method, guid, again)
    stored = await _stored(client, guid)
    assert stored["Password"] == "new-password" and stored["ClientCertificateKey"] == FAKE_KEY
    # the same host, another path and `******`: kept as before
    await _send(client, method, guid, {**again, "Url": "http://127.0.0.2:9/other"})
    assert (await _stored(client, guid))["Password"] == "new-password"


async def test_kept_step_secrets_do_not_follow_the_step_url_elsewhere(
    client: TestClient[Any, Any],
) -> None:
    guid, shown = await _create(client, MSA)
    steps = shown["MsaSteps"]
    steps[0]["Url"] = "http://127.0.0.2:9/one"
    fields = await _refused(client, "PATCH", guid, {"MsaSteps": steps})
    assert len(fields) == 2, fields  # its header and its password; step two is untouched
    # a step that takes its host from a variable: changing where variables come from moves it
    templated = {
        **MSA,
        "Name": "templated",
        "PredefinedVariables": [{"Key": "base", "Value": "http://127.0.0.1:9"}],
        "MsaSteps": [_step("one", "tok-p1", "tok-h1", "")],
    }
    templated["MsaSteps"][0]["Url"] = "{{base}}/login"
    guid, shown = await _create(client, templated)
    evil = [{"Key": "base", "Value": "http://127.0.0.2:9"}]
    fields = await _refused(client, "PATCH", guid, {"PredefinedVariables": evil})
    assert len(fields) == 2, fields
    fields = await _refused(client, "PUT", guid, {**shown, "PredefinedVariables": evil})
    assert len(fields) == 2, fields
    await _send(client, "PATCH", guid, {"Notes": "unrelated edit"})  # nothing moved: kept
    stored = await _stored(client, guid)
    assert stored["MsaSteps"][0]["Authentication"]["Password"] == "tok-p1"
    creating = {**HTTP, "Name": "masked on create", "Password": MASK}
    resp = await client.post("/api/v4/Monitor", json=creating, headers=ADMIN)
    assert resp.status == 400 and (await resp.json())["Messages"][0]["Field"] == "Password"


async def test_secrets_made_from_variables_are_scrubbed(target: Target) -> None:
    """A step's credential built from a variable ({{token}}) is known only while it runs."""
    monitor = MultiStepApiMonitor.model_validate(
        {
            "Name": "made",
            "MonitorType": "MultiStepApi",
            "PredefinedVariables": [{"Key": "token", "Value": "dyn-token-4711"}],
            "MsaSteps": [
                {
                    "Url": f"{target.base}/echo",
                    "RequestHeaders": [{"Key": "Authorization", "Value": "Bearer {{token}}"}],
                    "Assertions": [
                        {"Source": "ResponseBodyText", "Comparison": "Equal", "TargetValue": "x"}
                    ],
                }
            ],
        }
    )
    assert "dyn-token-4711" not in secrets.secret_values(monitor.definition())
    curl = CurlEngine(10)
    try:
        probe = MultiStepApiProbe(ProbeContext(curl=curl, max_body_bytes=1 << 20))
        outcome = await probe.check(monitor)
    finally:
        curl.close()
    assert outcome.error_code == ErrorCode.ASSERTION_FAILED
    (step,) = outcome.details["StepResults"] if outcome.details else [None]
    assert '"Authorization": "******"' in step["ResponseBody"], step
    text = json.dumps(outcome.details) + outcome.error_message + outcome.description
    assert "dyn-token-4711" not in text, text


async def test_the_hash_gives_no_way_to_test_a_guessed_secret(
    client: TestClient[Any, Any],
) -> None:
    guid, shown = await _create(client, HTTP)
    stored = await _stored(client, guid)  # what someone who guessed every secret would hash
    plain = hashlib.sha256(json.dumps(stored, sort_keys=True).encode()).hexdigest()[:16]
    assert shown["Hash"] != plain
    await _send(client, "PATCH", guid, {"Password": "changed-only-the-secret"})
    again = await (await client.get(f"/api/v4/Monitor/{guid}", headers=ADMIN)).json()
    assert again["Hash"] != shown["Hash"]  # still changes with a secret: agents get the edit


def test_an_invalid_assignment_is_described_without_its_values() -> None:
    monitor = {**HTTP, "Password": ["tok-in-a-list"], "RequestHeaders": "tok-as-text"}
    assignment = Assignment(
        monitor_guid="g",
        revision="r",
        monitor=monitor,
        schedule={"interval_seconds": 60, "offset_seconds": 0},  # type: ignore[arg-type]
    )
    with pytest.raises(Unrunnable) as caught:
        monitor_of(assignment, ["Http"])
    assert "Password" in str(caught.value) and "RequestHeaders" in str(caught.value)
    assert "tok-" not in str(caught.value), caught.value


async def test_odd_bodies_get_400_not_500(client: TestClient[Any, Any]) -> None:
    guid, _ = await _create(client, MSA)
    http_guid, _ = await _create(client, HTTP)
    odd_steps: list[Any] = [
        [{"Name": ["x"], "Authentication": {"Id": {"a": 1}, "Password": MASK}}],
        [{"Name": {"n": 1}, "Url": 5, "RequestHeaders": "x"}, 7, None],
        "steps",
    ]
    for steps in odd_steps:
        for method in ("PUT", "PATCH"):
            body = {"MsaSteps": steps, "UserDefinedFunctions": [{"Name": [1], "HashKey": MASK}]}
            resp = await client.request(method, f"/api/v4/Monitor/{guid}", json=body, headers=ADMIN)
            assert resp.status == 400, await resp.text()
    for headers in ([{"Name": 5, "Value": MASK}], [{"Key": None}], "x", [None]):
        resp = await client.patch(
            f"/api/v4/Monitor/{http_guid}", json={"RequestHeaders": headers}, headers=ADMIN
        )
        assert resp.status == 400, await resp.text()


async def test_a_database_error_does_not_quote_a_definition(database_url: str) -> None:
    """SQLAlchemy's error text quotes the statement's parameters (a definition with its
    secrets) unless the engine hides them; that text reaches logs (a 500's traceback, ingest
    and retention warnings)."""
    from controller.db.store import MonitorRow

    store = await Store.open(database_url)
    try:
        definition = {"Name": "a", "MonitorType": "Http", "Password": "db-error-secret-4711"}
        row = MonitorRow("g-1", "a", "Http", True, definition, "r1", 1, 1)
        assert await store.save_monitor(row, create=True)
        again = MonitorRow("g-1", "b", "Http", True, definition, "r2", 1, 1)  # same key
        with pytest.raises(Exception) as caught:
            await store.save_monitor(again, create=True)
        assert "db-error-secret-4711" not in str(caught.value), str(caught.value)
        assert "db-error-secret-4711" not in repr(caught.value.__cause__)
    finally:
        await store.close()


async def test_a_new_sqlite_database_is_readable_by_its_owner_only(tmp_path: Path) -> None:
    """The database holds the monitors' secrets: a new file (and its WAL) gets mode 0600,
    whatever the umask."""
    from controller.db.store import MonitorRow

    path = tmp_path / "data" / "picket.db"
    store = await Store.open(f"sqlite+aiosqlite:///{path}")
    try:
        row = MonitorRow("g-1", "a", "Http", True, {"Password": "x" * 8}, "r1", 1, 1)
        assert await store.save_monitor(row, create=True)
        for file in (path, path.with_name("picket.db-wal")):
            assert file.stat().st_mode & 0o777 == 0o600, (file, oct(file.stat().st_mode))
    finally:
        await store.close()


async def test_a_definition_stored_before_the_mask_was_refused_is_still_placed(
    tmp_path: Path,
) -> None:
    """A monitor stored with a literal `******` secret (accepted before) fails today's
    validation; placing it must not raise (that stopped every placement behind it)."""
    from controller.db.store import MonitorRow

    settings = ControllerSettings(
        data_dir=tmp_path, admin_password=PASSWORD, broker_url=f"mqtt://127.0.0.1:{free_port()}"
    )
    store = await Store.open(settings.resolved_database_url())
    try:
        definition = {**HTTP, "Password": MASK, "CheckIntervalSeconds": 30}
        definition.pop("CheckInterval")
        row = MonitorRow("g-old", "old", "Http", True, definition, "r1", 1, 1)
        assignment = Controller(settings, store).assigner.assignment(row)
        assert assignment.schedule.interval_seconds == 30
    finally:
        await store.close()
