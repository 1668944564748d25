"""A secret sent in never comes back out: distinct secrets planted in every secret place of two
HTTP monitors and a multi-step monitor, whose loopback target answers with errors and echoes
the request (headers, URL) back, are found in no API answer, no stored row (but the monitor
definitions), no process's log and no /metrics page."""

from __future__ import annotations

import base64
import json
import secrets as random_tokens
import sqlite3
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any
from urllib.parse import quote

import aiohttp
import asyncpg
import pytest
from aiohttp import web

from tests.e2e.conftest import Stack, ready
from tests.helpers import Api, Mosquitto, free_port, wait_for

pytestmark = pytest.mark.e2e

PLACES = (
    "password",  # Password (Basic auth by libcurl)
    "urlpass",  # userinfo of the HTTP monitor's URL
    "proxyauth",  # Proxy-Authorization
    "cookie",  # Cookie
    "apikey",  # X-Api-Key
    "token",  # X-Session-Token (-Token)
    "secret",  # X-Client-Secret (-Secret)
    "key",  # X-Signing-Key (-Key)
    "flagged",  # X-Custom with IsSecret
    "clientkey",  # inside ClientCertificateKey
    "urlpass2",  # userinfo of the second HTTP monitor's URL (Basic auth from the URL)
    "apikey2",  # its X-Api-Key, echoed into a redirect to ftp:// (an error text with a URL)
    "stepurl",  # userinfo of a step's URL
    "bearer",  # a step's Authorization: Bearer
    "stepkey",  # a step's X-Api-Key
    "stepflag",  # a step's header with IsSecret
    "steppass",  # a step's Authentication.Password
    "stepcookie",  # a step's Cookie
    "jwt",  # JwtSigningKey
    "hmac",  # HashKey
    "scripturl",  # the same places inside a MultiStepApiTransactionScript
    "scriptkey",
    "scriptpass",
    "scriptjwt",
)


def _basic(user: str, password: str) -> str:
    return base64.b64encode(f"{user}:{password}".encode()).decode()


class EchoTarget:
    """Answers with errors and echoes the request (line and headers) back, in bodies and in
    redirect URLs."""

    def __init__(self) -> None:
        self.port = free_port()
        self._runner: web.AppRunner | None = None

    @staticmethod
    def _echo(request: web.Request) -> str:
        lines = [f"{request.method} {request.path_qs}"]
        lines += [f"{name}: {value}" for name, value in request.headers.items()]
        return "\n".join(lines)

    async def _first(self, request: web.Request) -> web.Response:
        key = quote(request.headers.get("X-Api-Key", ""))
        token = quote(request.headers.get("X-Session-Token", ""))
        raise web.HTTPFound(f"/second?echo={key}&t={token}")

    async def _failing(self, request: web.Request) -> web.Response:
        await request.read()
        return web.Response(status=500, text=self._echo(request))

    async def _to_ftp(self, request: web.Request) -> web.Response:
        auth = quote(request.headers.get("Authorization", ""))
        key = quote(request.headers.get("X-Api-Key", ""))
        raise web.HTTPFound(f"ftp://127.0.0.1/x?auth={auth}&key={key}&raw={auth}")

    async def _json_echo(self, request: web.Request) -> web.Response:
        return web.json_response({"headers": dict(request.headers), "url": request.path_qs})

    async def start(self) -> None:
        app = web.Application()
        app.router.add_get("/first", self._first)
        app.router.add_get("/second", self._failing)
        app.router.add_route("*", "/fail", self._failing)
        app.router.add_get("/ftp", self._to_ftp)
        app.router.add_get("/echo-ok", self._json_echo)
        self._runner = web.AppRunner(app, access_log=None)
        await self._runner.setup()
        await web.TCPSite(self._runner, "127.0.0.1", self.port).start()

    async def stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()


@pytest.fixture
async def echo_target() -> AsyncIterator[EchoTarget]:
    server = EchoTarget()
    await server.start()
    yield server
    await server.stop()


def _definitions(port: int, s: dict[str, str]) -> list[dict[str, Any]]:
    base = f"127.0.0.1:{port}"
    key = f"-----BEGIN PRIVATE KEY-----\n{s['clientkey']}\n-----END PRIVATE KEY-----\n"
    http = {
        "Name": "secret http",
        "MonitorType": "Http",
        "Url": f"http://url-user:{s['urlpass']}@{base}/first",
        "CheckIntervalSeconds": 1,
        "AuthenticationType": "Basic",
        "Username": "svc",
        "Password": s["password"],
        "ClientCertificate": "-----BEGIN CERTIFICATE-----\nMIIB\n-----END CERTIFICATE-----\n",
        "ClientCertificateKey": key,
        "RequestHeaders": [
            {"Name": "Proxy-Authorization", "Value": f"Basic {s['proxyauth']}"},
            {"Name": "Cookie", "Value": f"sid={s['cookie']}"},
            {"Name": "X-Api-Key", "Value": s["apikey"]},
            {"Name": "X-Session-Token", "Value": s["token"]},
            {"Name": "X-Client-Secret", "Value": s["secret"]},
            {"Name": "X-Signing-Key", "Value": s["key"]},
            {"Name": "X-Custom", "Value": s["flagged"], "IsSecret": True},
        ],
    }
    ftp = {
        "Name": "secret redirect",
        "MonitorType": "Http",
        "Url": f"http://ftp-user:{s['urlpass2']}@{base}/ftp",
        "CheckIntervalSeconds": 1,
        "RequestHeaders": [{"Name": "X-Api-Key", "Value": s["apikey2"]}],
    }
    status_200 = {"Source": "ResponseStatusCode", "Comparison": "Equal", "TargetValue": "200"}
    msa = {
        "Name": "secret steps",
        "MonitorType": "MultiStepApi",
        "CheckIntervalSeconds": 1,
        "MsaSteps": [
            {
                "StepType": "HttpRequest",
                "Name": "login",
                "Url": f"http://step-user:{s['stepurl']}@{base}/echo-ok?q=1",
                "Method": "GET",
                "RequestHeaders": [
                    {"Key": "Authorization", "Value": f"Bearer {s['bearer']}"},
                    {"Key": "X-Api-Key", "Value": s["stepkey"]},
                    {"Key": "X-Custom", "Value": s["stepflag"], "IsSecret": True},
                ],
                "Variables": [
                    {"Source": "ResponseBodyJson", "Property": "headers.X-Api-Key", "Name": "k"}
                ],
                "Assertions": [status_200],
            },
            {
                "StepType": "HttpRequest",
                "Name": "order",
                "Url": f"http://{base}/fail",
                "Method": "POST",
                "Body": "echoed {{k}}",
                "RequestHeaders": [{"Key": "Cookie", "Value": f"c={s['stepcookie']}"}],
                "Authentication": {
                    "AuthenticationType": "Basic",
                    "UserName": "svc",
                    "Password": s["steppass"],
                },
                "Assertions": [
                    {
                        "Source": "ResponseBodyText",
                        "Comparison": "ContainsText",
                        "TargetValue": "never there",
                    },
                    status_200,
                ],
            },
        ],
        "UserDefinedFunctions": [
            {"Name": "sign", "Type": "JwtEncode", "JwtSigningKey": s["jwt"]},
            {"Name": "mac", "Type": "Hash", "HashAlgorithm": "HMACSHA256", "HashKey": s["hmac"]},
        ],
    }
    script = {
        "MsaSteps": [
            {
                "StepType": "HttpRequest",
                "Name": "scripted",
                "Url": f"http://script-user:{s['scripturl']}@{base}/fail",
                "Method": "GET",
                "RequestHeaders": [{"Key": "X-Api-Key", "Value": s["scriptkey"]}],
                "Authentication": {
                    "AuthenticationType": "Basic",
                    "UserName": "svc",
                    "Password": s["scriptpass"],
                },
                "Assertions": [status_200],
            }
        ],
        "UserDefinedFunctions": [
            {"Name": "sign", "Type": "JwtEncode", "JwtSigningKey": s["scriptjwt"]}
        ],
        "Version": 2,
    }
    msa_script = {
        "Name": "secret script",
        "MonitorType": "MultiStepApi",
        "CheckIntervalSeconds": 1,
        "MultiStepApiTransactionScript": json.dumps(script),
    }
    return [http, ftp, msa, msa_script]


async def _failed_checks(api: Api, guid: str, least: int) -> list[dict[str, Any]] | None:
    failed = [c for c in await api.checks(guid) if c["Attributes"]["ErrorLevel"] != "NoError"]
    return failed if len(failed) >= least else None


async def _stored_rows(database_url: str) -> list[str]:
    """Every stored row as text, but the monitor definitions."""
    rows: list[str] = []
    if database_url.startswith("sqlite"):
        path = database_url.split("///", 1)[1]
        with sqlite3.connect(path) as db:
            tables = [r[0] for r in db.execute("SELECT name FROM sqlite_master WHERE type='table'")]
            for table in tables:
                columns = [r[1] for r in db.execute(f'PRAGMA table_info("{table}")')]
                wanted = [c for c in columns if not (table == "monitor" and c == "definition")]
                select = ", ".join(f'"{c}"' for c in wanted)
                rows += [f"{table}: {r!r}" for r in db.execute(f'SELECT {select} FROM "{table}"')]
        return rows
    conn = await asyncpg.connect(database_url.replace("postgresql+asyncpg://", "postgresql://"))
    try:
        tables = await conn.fetch(
            "SELECT table_name FROM information_schema.tables WHERE table_schema = 'public'"
        )
        for (table,) in tables:
            columns = await conn.fetch(
                "SELECT column_name FROM information_schema.columns WHERE table_name = $1", table
            )
            wanted = [c for (c,) in columns if not (table == "monitor" and c == "definition")]
            select = ", ".join(f'"{c}"' for c in wanted)
            for row in await conn.fetch(f'SELECT {select} FROM "{table}"'):
                rows.append(f"{table}: {tuple(row.values())!r}")
    finally:
        await conn.close()
    return rows


async def test_no_secret_comes_back_out(
    database_url: str,
    stack: Stack,
    mosquitto: Mosquitto,
    echo_target: EchoTarget,
    http: aiohttp.ClientSession,
) -> None:
    planted = {place: f"{place}Z{random_tokens.token_hex(8)}" for place in PLACES}
    forms = {
        **planted,
        "basic(password)": _basic("svc", planted["password"]),
        "basic(urlpass)": _basic("url-user", planted["urlpass"]),
        "basic(urlpass2)": _basic("ftp-user", planted["urlpass2"]),
        "basic(stepurl)": _basic("step-user", planted["stepurl"]),
        "basic(steppass)": _basic("svc", planted["steppass"]),
        "basic(scriptpass)": _basic("svc", planted["scriptpass"]),
        "basic(scripturl)": _basic("script-user", planted["scripturl"]),
    }
    debug = {"PICKET_LOG_LEVEL": "DEBUG"}
    stack.controller(mosquitto.url, database_url, **debug)
    stack.agent(mosquitto.url, **debug)
    api = await ready(stack, http)
    answers: list[tuple[str, Any]] = []

    async def get(path: str, **params: str) -> Any:
        status, body = await api.call("GET", path, params=params)
        assert status == 200, (path, body)
        answers.append((path, body))
        return body

    guids = []
    for definition in _definitions(echo_target.port, planted):
        status, created = await api.call("POST", "/api/v4/Monitor", json=definition)
        assert status == 201, created
        answers.append(("POST /Monitor", created))
        guids.append(created["MonitorGuid"])
    http_guid, ftp_guid, msa_guid, script_guid = guids

    # failed checks of each, the HTTP one's with its echoed body and a two-hop waterfall
    http_failed = await wait_for(lambda: _failed_checks(api, http_guid, 3), "failed HTTP checks")
    ftp_failed = await wait_for(lambda: _failed_checks(api, ftp_guid, 2), "failed redirects")
    msa_failed = await wait_for(lambda: _failed_checks(api, msa_guid, 2), "failed step checks")
    msa_failed += await wait_for(lambda: _failed_checks(api, script_guid, 2), "failed scripts")

    await get("/api/v4/Monitor")
    for guid in guids:
        await get(f"/api/v4/Monitor/{guid}")
        await get(f"/api/v4/MonitorCheck/Monitor/{guid}", PresetPeriod="All")
    for check in http_failed + ftp_failed:
        await get(f"/api/v4/MonitorCheck/{check['Id']}")
        await get(f"/api/v4/MonitorCheck/{check['Id']}/Waterfall")
        await get(f"/api/v4/MonitorCheck/{check['Id']}/Http")
    for check in msa_failed:
        await get(f"/api/v4/MonitorCheck/{check['Id']}")
        await get(f"/api/v4/MonitorCheck/{check['Id']}/MultiStepAPI")

    # the places were really exercised: echoes came back, and were scrubbed
    last = http_failed[-1]["Id"]
    details = await get(f"/api/v4/MonitorCheck/{last}/Http")
    body = details["Data"]["Attributes"]["ResponseBody"]
    assert "GET /second?echo=******&t=******" in body and "X-Api-Key: ******" in body, body
    assert "Authorization: Basic ******" in body and "X-Custom: ******" in body, body
    waterfall = await get(f"/api/v4/MonitorCheck/{last}/Waterfall")
    elements = waterfall["Data"]["Attributes"]["Elements"]
    assert len(elements) == 2 and elements[1]["Url"].startswith("http://******@127.0.0.1"), elements
    assert "/second?echo=******" in elements[1]["Url"], elements
    assert ftp_failed[-1]["Attributes"]["ErrorMessage"].startswith(
        "redirect to a non-HTTP URL: ftp://127.0.0.1/x?auth="
    ), ftp_failed[-1]
    last_of_first = [c for c in msa_failed if c["Attributes"]["MonitorGuid"] == msa_guid][-1]
    steps = await get(f"/api/v4/MonitorCheck/{last_of_first['Id']}/MultiStepAPI")
    login, order = steps["Data"]["Attributes"]["StepResults"]
    assert login["Passed"] and not order["Passed"] and order["StepExecuted"], steps
    assert "******" in order["ResponseBody"] and order["RequestBody"] == "echoed ******", order
    assert "Cookie: ******" in order["RequestHeaders"], order
    assert "the value was" in last_of_first["Attributes"]["ErrorMessage"], last_of_first

    # every API answer, the /metrics pages, every stored row, the logs of every process
    agent_metrics = await (await http.get(stack.agent_metrics)).text()
    controller_metrics = await (await http.get(f"{stack.api}/metrics")).text()
    rows = await _stored_rows(database_url)
    assert any(row.startswith("monitor_check:") for row in rows)
    codes = stack.stop_all()
    assert codes == {"agent-1": 0, "controller": 0}, codes
    places: list[tuple[str, str]] = [
        (f"API {path}", json.dumps(body, ensure_ascii=False)) for path, body in answers
    ]
    places += [("agent /metrics", agent_metrics), ("controller /metrics", controller_metrics)]
    places += [("database", "\n".join(rows))]
    places += [(f"log of {p.name}", p.output()) for p in stack.processes]
    places += [("log of mosquitto", mosquitto.log())]
    outbox = Path(stack.workdir / "agent-data" / "outbox")
    places += [(f"outbox {f.name}", f.read_text()) for f in outbox.rglob("*") if f.is_file()]
    for process in stack.processes:
        assert "DEBUG" in process.output(), process.name  # logged at debug level
    leaks = [
        f"{form} in {where}"
        for where, text in places
        for form, value in forms.items()
        if value in text
    ]
    assert not leaks, leaks
