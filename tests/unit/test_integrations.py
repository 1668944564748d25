"""Integrations: every /Integration operation on SQLite and PostgreSQL, bad bodies naming the
field, secrets never coming back out, and the Test endpoint against real receivers on
loopback: an aiohttp server for the HTTP kinds (body shapes, HMAC signature, idempotency key,
template variables substituted and escaped), aiosmtpd with STARTTLS and a login for e-mail,
and the classification of failures (500, 429 with Retry-After, 400, a redirect, a refused
port, a receiver slower than the time limit; SMTP 4xx and 5xx)."""

from __future__ import annotations

import asyncio
import base64
import dataclasses
import hashlib
import hmac
import json
import ssl
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from email import message_from_bytes
from pathlib import Path
from typing import Any

import aiohttp
import pytest
import trustme
from aiohttp import web
from aiohttp.test_utils import TestClient
from aiosmtpd.controller import Controller as SmtpServer
from aiosmtpd.smtp import AuthResult, LoginPassword

from controller.app import Controller
from controller.integrations import KINDS, alertmanager, base, pagerduty, template
from tests.helpers import controller_client, free_port

PASSWORD = "integrations-test-password"
P = "/api/v4"
HMAC_SECRET = "hmac-secret-0123456789"
TOKEN = "Bearer tok-4f9a8b7c6d5e"
SLACK_SECRET = "T0001/B0002/slacksecretpath42"
ROUTING_KEY = "R0UT1NGKEY0123456789abcdef012345"
SMTP_USER, SMTP_PASSWORD = "mailer", "smtp-pass-9876"
TIMEOUT = 1.0  # the controller's per-send limit in these tests

Client = TestClient[Any, Any]


def basic(user: str, password: str) -> dict[str, str]:
    return {"Authorization": "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode()}


ADMIN = basic("admin", PASSWORD)


# --- an HTTP receiver on loopback ---------------------------------------------------------------


@dataclass
class Received:
    method: str
    path: str
    headers: dict[str, str]
    body: bytes

    def json(self) -> Any:
        return json.loads(self.body)


class Receiver:
    """Answers by the first path segment: ok, accepted, error (500, echoing the request's
    credentials and path), busy (429, Retry-After: 7), bad (400), moved (302), slow (no answer
    until the test ends)."""

    def __init__(self) -> None:
        self.requests: list[Received] = []
        self.release = asyncio.Event()
        self._runner: web.AppRunner | None = None
        self.port = 0

    @property
    def base(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    async def _handle(self, request: web.Request) -> web.StreamResponse:
        body = await request.read()
        self.requests.append(Received(request.method, request.path, dict(request.headers), body))
        behaviour = request.match_info["behaviour"]
        if behaviour == "accepted":
            return web.json_response({"status": "success"}, status=202)
        if behaviour == "error":
            echo = f"broken; you sent {request.headers.get('Authorization')} to {request.path}"
            return web.Response(status=500, text=echo)
        if behaviour == "busy":
            return web.Response(status=429, text="slow down", headers={"Retry-After": "7"})
        if behaviour == "bad":
            return web.Response(status=400, text="invalid_payload")
        if behaviour == "moved":
            return web.Response(status=302, headers={"Location": self.base + "/ok"})
        if behaviour == "slow":
            await self.release.wait()
        return web.Response(status=200, text="ok")

    async def start(self) -> None:
        app = web.Application()
        app.router.add_route("*", "/{behaviour}{rest:.*}", self._handle)
        self._runner = web.AppRunner(app, access_log=None)
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", 0)
        await site.start()
        self.port = self._runner.addresses[0][1]

    async def stop(self) -> None:
        self.release.set()
        if self._runner is not None:
            await self._runner.cleanup()

    def last(self) -> Received:
        assert self.requests, "the receiver got nothing"
        return self.requests[-1]


@pytest.fixture
async def receiver() -> AsyncIterator[Receiver]:
    server = Receiver()
    await server.start()
    yield server
    await server.stop()


# --- an SMTP server with STARTTLS and a login -----------------------------------------------------


class Mailbox:
    def __init__(self) -> None:
        self.messages: list[tuple[str, list[str], bytes, bool]] = []

    async def handle_RCPT(
        self, server: Any, session: Any, envelope: Any, address: str, options: Any
    ) -> str:
        if address.startswith("busy@"):
            return "451 4.3.0 mailbox busy, try later"
        if address.startswith("gone@"):
            return "550 5.1.1 no such user"
        envelope.rcpt_tos.append(address)
        return "250 OK"

    async def handle_DATA(self, server: Any, session: Any, envelope: Any) -> str:
        tls = session.ssl is not None
        self.messages.append((envelope.mail_from, list(envelope.rcpt_tos), envelope.content, tls))
        return "250 Message accepted"


def _login(server: Any, session: Any, envelope: Any, mechanism: str, data: Any) -> AuthResult:
    good = isinstance(data, LoginPassword) and (data.login, data.password) == (
        SMTP_USER.encode(),
        SMTP_PASSWORD.encode(),
    )
    return AuthResult(success=good, handled=False)


@dataclass
class Smtp:
    port: int
    ca_file: Path
    mailbox: Mailbox


@pytest.fixture
def smtp(tmp_path: Path) -> Iterator[Smtp]:
    ca = trustme.CA()
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ca.issue_cert("127.0.0.1").configure_cert(context)
    ca_file = tmp_path / "smtp-ca.pem"
    ca.cert_pem.write_to_path(str(ca_file))
    mailbox = Mailbox()
    port = free_port()
    server = SmtpServer(
        mailbox,
        hostname="127.0.0.1",
        port=port,
        tls_context=context,
        require_starttls=True,
        authenticator=_login,
        auth_require_tls=True,
        auth_required=True,
    )
    server.start()
    yield Smtp(port, ca_file, mailbox)
    server.stop()


# --- the controller -----------------------------------------------------------------------------


@pytest.fixture
async def api(
    tmp_path: Path, database_url: str, smtp: Smtp
) -> AsyncIterator[tuple[Client, Controller]]:
    async with controller_client(
        tmp_path,
        PASSWORD,
        database_url=database_url,
        notify_timeout_seconds=TIMEOUT,
        smtp_host="127.0.0.1",
        smtp_port=smtp.port,
        smtp_security="starttls",
        smtp_username=SMTP_USER,
        smtp_password=SMTP_PASSWORD,
        smtp_from="picket@example.org",
        smtp_ca_file=str(smtp.ca_file),
    ) as pair:
        yield pair


async def _json(response: Any, status: int) -> Any:
    text = await response.text()
    assert response.status == status, text
    return json.loads(text) if text else None


async def _create(client: Client, **body: Any) -> dict[str, Any]:
    return await _json(await client.post(P + "/Integration", json=body, headers=ADMIN), 201)  # type: ignore[no-any-return]


async def _test(client: Client, guid: str) -> dict[str, Any]:
    return await _json(  # type: ignore[no-any-return]
        await client.post(f"{P}/Integration/{guid}/Test", headers=ADMIN), 200
    )


def _webhook(receiver: Receiver, path: str = "/ok/hook", **fields: Any) -> dict[str, Any]:
    return {
        "Type": "GenericWebhook",
        "Name": "Ops webhook",
        "Url": receiver.base + path,
        "Headers": [{"Name": "Authorization", "Value": TOKEN}, {"Name": "X-Team", "Value": "ops"}],
        "HmacSecret": HMAC_SECRET,
        **fields,
    }


def _no_secrets(text: str) -> None:
    for secret in (
        HMAC_SECRET,
        TOKEN,
        "tok-4f9a8b7c6d5e",
        SLACK_SECRET,
        ROUTING_KEY,
        SMTP_PASSWORD,
    ):
        assert secret not in text, f"{secret!r} leaked into {text[:300]!r}"


# --- the template renderer (no database) --------------------------------------------------------


def test_templates_substitute_named_variables_once_and_escape_them() -> None:
    n = base.sample(datetime(2026, 1, 2, 3, 4, 5, tzinfo=UTC))
    json_body = '{"d": "{{@alert.description}}", "m": "{{ @MONITOR.name }}", "x": "{{mine}}"}'
    custom = {"mine": "{{@monitor.guid}} & <b>"}
    rendered = json.loads(template.render(json_body, n, custom, template.escape_for("json")))
    assert rendered["d"] == n.error_description  # quotes and a line break survive as data
    assert rendered["m"] == "Picket test monitor"
    assert rendered["x"] == "{{@monitor.guid}} & <b>"  # a value is never expanded again
    xml = template.render("<d>{{mine}}</d>", n, custom, template.escape_for("text/xml"))
    assert xml == "<d>{{@monitor.guid}} &amp; &lt;b&gt;</d>"
    form = template.render("a={{mine}}", n, custom, template.escape_for("x-www-form-urlencoded"))
    assert form == "a=%7B%7B%40monitor.guid%7D%7D+%26+%3Cb%3E"
    assert template.unknown_names("{{@alert.type}} {{nope}} {{mine}}", custom) == ["nope"]


def test_retry_after_reads_seconds_and_dates() -> None:
    now = datetime(2026, 1, 1, tzinfo=UTC)
    assert base.retry_after("120") == 120.0
    assert base.retry_after("Thu, 01 Jan 2026 00:01:30 GMT", now) == 90.0
    assert base.retry_after("soon") is None and base.retry_after(None) is None
    assert base.retry_after("99999999") == base.MAX_RETRY_AFTER


# --- CRUD and secrets ---------------------------------------------------------------------------


async def test_every_operation_and_secrets_never_come_back(
    api: tuple[Client, Controller], receiver: Receiver
) -> None:
    client, _ = api
    created = await _create(client, **_webhook(receiver), VariableValues={"team": "blue"})
    guid = created["IntegrationGuid"]
    assert created["Type"] == "GenericWebhook" and created["Kind"] == "Webhook"
    assert created["HmacSecret"] == "******" and created["Hash"]
    assert created["Headers"][0] == {"Name": "Authorization", "Value": "******", "IsSecret": False}
    assert created["Headers"][1]["Value"] == "ops"
    assert created["ExtraEmailAddresses"] == "" and created["IntegrationServices"] == []
    assert created["VariableValues"] == {"team": "blue"}
    slack = await _create(
        client, Type="Slack", Name="Chat", Url=f"{receiver.base}/ok/services/{SLACK_SECRET}"
    )
    assert slack["Url"] == f"{receiver.base}/******" and "Kind" not in slack

    listed = await _json(await client.get(P + "/Integration", headers=ADMIN), 200)
    assert [i["IntegrationGuid"] for i in listed] == [guid, slack["IntegrationGuid"]]
    for shown in (
        listed,
        await _json(await client.get(f"{P}/Integration/{guid}", headers=ADMIN), 200),
    ):
        _no_secrets(json.dumps(shown))

    # PUT what was read: the secrets are kept, and still used
    back = {**created, "Name": "Ops webhook 2"}
    await _json(await client.put(f"{P}/Integration/{guid}", json=back, headers=ADMIN), 204)
    await _json(
        await client.put(f"{P}/Integration/{slack['IntegrationGuid']}", json=slack, headers=ADMIN),
        204,
    )
    assert (await _test(client, guid))["Outcome"] == "Sent"
    got = receiver.last()
    assert got.headers["Authorization"] == TOKEN
    stamp = got.headers["X-Picket-Timestamp"]
    expected = hmac.new(HMAC_SECRET.encode(), f"{stamp}.".encode() + got.body, hashlib.sha256)
    assert got.headers["X-Picket-Signature"] == "v1=" + expected.hexdigest()
    assert (await _test(client, slack["IntegrationGuid"]))["Outcome"] == "Sent"
    assert receiver.last().path == f"/ok/services/{SLACK_SECRET}"

    # PATCH one field; the Hash changes with any edit
    await _json(
        await client.patch(f"{P}/Integration/{guid}", json={"Method": "PUT"}, headers=ADMIN), 204
    )
    now = await _json(await client.get(f"{P}/Integration/{guid}", headers=ADMIN), 200)
    assert now["Method"] == "PUT" and now["Name"] == "Ops webhook 2"
    assert now["Hash"] != created["Hash"] and now["HmacSecret"] == "******"

    # pointed elsewhere, a masked credential header must be sent again
    moved = {**now, "Url": f"http://127.0.0.1:{free_port()}/ok"}
    refused = await _json(
        await client.put(f"{P}/Integration/{guid}", json=moved, headers=ADMIN), 400
    )
    assert refused["Messages"][0]["Field"] == "Headers[0].Value"
    # its kind cannot change
    kind = await _json(
        await client.patch(f"{P}/Integration/{guid}", json={"Type": "Slack"}, headers=ADMIN),
        400,
    )
    assert kind["Messages"][0]["Field"] == "Type"

    # other operators read, only administrators manage
    operator = {"FullName": "Rita", "Email": "rita@example.org", "Password": "rita-pass-1"}
    await _json(await client.post(P + "/Operator", json=operator, headers=ADMIN), 201)
    rita = basic("rita@example.org", "rita-pass-1")
    assert (await client.get(P + "/Integration", headers=rita)).status == 200
    for method, path in (
        ("POST", "/Integration"),
        ("PUT", f"/Integration/{guid}"),
        ("PATCH", f"/Integration/{guid}"),
        ("DELETE", f"/Integration/{guid}"),
        ("POST", f"/Integration/{guid}/Test"),
    ):
        answer = await client.request(method, P + path, json=_webhook(receiver), headers=rita)
        assert answer.status == 403, (method, path)

    await _json(await client.delete(f"{P}/Integration/{guid}", headers=ADMIN), 204)
    await _json(await client.get(f"{P}/Integration/{guid}", headers=ADMIN), 404)
    await _json(await client.delete(f"{P}/Integration/{guid}", headers=ADMIN), 404)
    await _json(await client.get(f"{P}/Integration/not-a-guid", headers=ADMIN), 404)


async def test_bad_bodies_name_the_field(
    api: tuple[Client, Controller], receiver: Receiver
) -> None:
    client, _ = api
    cases: list[tuple[dict[str, Any], str, str]] = [
        ({"Name": "x"}, "Type", "required"),
        ({"Type": "Sms", "Name": "x"}, "Type", "Picket does not send SMS"),
        ({"Type": "Phone", "Name": "x"}, "Type", "phone calls"),
        ({"Type": "Statushub", "Name": "x"}, "Type", "StatusHub"),
        ({"Type": "Carrier pigeon", "Name": "x"}, "Type", "is not one of"),
        ({**_webhook(receiver), "Kind": "Fax"}, "Kind", "is not one of"),
        ({"Type": "Slack", "Kind": "MicrosoftTeams", "Name": "x"}, "Kind", "only a Generic"),
        ({**_webhook(receiver), "Url": "ftp://127.0.0.1/x"}, "Url", "http:// or https://"),
        ({**_webhook(receiver), "Url": "not a url"}, "Url", ""),
        ({**_webhook(receiver), "BodyTemplate": '{"a": "{{nope}}"}'}, "BodyTemplate", "{{nope}}"),
        (
            {**_webhook(receiver), "BodyTemplate": '{"a": {{@monitor.name}}}'},
            "BodyTemplate",
            "not JSON",
        ),
        ({**_webhook(receiver), "Method": "GET", "BodyTemplate": "x"}, "BodyTemplate", "GET"),
        ({**_webhook(receiver), "Method": "DELETE"}, "Method", ""),
        (
            {**_webhook(receiver), "Headers": [{"Name": "Idempotency-Key", "Value": "1"}]},
            "Headers[0].Name",
            "set by Picket",
        ),
        ({**_webhook(receiver), "HmacSecret": "******"}, "HmacSecret", "******"),
        ({**_webhook(receiver), "VariableValues": {"@x": "1"}}, "VariableValues", "variable"),
        ({**_webhook(receiver), "Colour": "red"}, "Colour", "not a known field"),
        ({**_webhook(receiver), "Name": ""}, "Name", ""),
        (
            {"Type": "Slack", "Name": "x", "Url": "https://h/x", "ExtraEmailAddresses": "a@b.c"},
            "ExtraEmailAddresses",
            "only an Email",
        ),
        (
            {"Type": "Email", "Name": "x", "ExtraEmailAddresses": "nobody"},
            "ExtraEmailAddresses",
            "e-mail",
        ),
        ({"Type": "PagerDuty", "Name": "x"}, "RoutingKey", "required"),
        ({"Type": "PagerDuty", "Name": "x", "RoutingKey": "a b"}, "RoutingKey", "integration key"),
        (
            {
                "Type": "GenericWebhook",
                "Kind": "Alertmanager",
                "Name": "x",
                "Url": "https://h",
                "Labels": {"alertname": "x"},
            },
            "Labels",
            "set by Picket",
        ),
        ({"Type": "GenericWebhook", "Kind": "MicrosoftTeams", "Name": "x"}, "Url", "required"),
        (
            {**_webhook(receiver), "StatusHubServiceList": [{"MonitorGuid": "x"}]},
            "StatusHubServiceList",
            "StatusHub",
        ),
    ]
    for body, field, words in cases:
        answer = await _json(await client.post(P + "/Integration", json=body, headers=ADMIN), 400)
        message = answer["Messages"][0]
        assert message["Field"] == field, (body, answer)
        assert words in message["Message"], (body, answer)
        _no_secrets(json.dumps(answer))
    assert await _json(await client.get(P + "/Integration", headers=ADMIN), 200) == []


# --- delivery to each kind ----------------------------------------------------------------------


async def test_webhook_template_signature_and_idempotency_key(
    api: tuple[Client, Controller], receiver: Receiver
) -> None:
    client, ctl = api
    body_template = (
        '{"type": "{{@alert.type}}", "monitor": "{{@monitor.name}}", '
        '"error": "{{@alert.description}}", "team": "{{team}}", "key": "{{@incident.key}}"}'
    )
    created = await _create(
        client,
        **_webhook(receiver, BodyTemplate=body_template),
        VariableValues={"team": 'ops "blue" \\ {{@monitor.guid}}'},
    )
    outcome = await _test(client, created["IntegrationGuid"])
    assert outcome["Outcome"] == "Sent" and outcome["Status"] == 200, outcome
    got = receiver.last()
    assert got.method == "POST" and got.headers["Content-Type"] == "application/json"
    assert got.headers["Idempotency-Key"] == outcome["IdempotencyKey"]
    assert got.headers["X-Team"] == "ops" and got.headers["Authorization"] == TOKEN
    sent = got.json()
    assert sent["type"] == "Test" and sent["monitor"] == "Picket test monitor"
    assert sent["error"] == base.sample().error_description  # quotes, <>, & and a newline
    assert sent["team"] == 'ops "blue" \\ {{@monitor.guid}}'
    assert sent["key"] == outcome["IdempotencyKey"]
    stamp = int(got.headers["X-Picket-Timestamp"])
    assert abs(stamp - datetime.now(UTC).timestamp()) < 600
    mac = hmac.new(HMAC_SECRET.encode(), f"{stamp}.".encode() + got.body, hashlib.sha256)
    assert hmac.compare_digest(got.headers["X-Picket-Signature"], "v1=" + mac.hexdigest())
    # a second test is another notification: another key
    again = await _test(client, created["IntegrationGuid"])
    assert again["IdempotencyKey"] != outcome["IdempotencyKey"]
    # without a template: Picket's JSON document
    plain = await _create(client, Type="GenericWebhook", Name="Plain", Url=receiver.base + "/ok")
    assert (await _test(client, plain["IntegrationGuid"]))["Outcome"] == "Sent"
    doc = receiver.last().json()
    assert doc["AlertType"] == "Test" and doc["MonitorName"] == "Picket test monitor"
    assert doc["IdempotencyKey"] == receiver.last().headers["Idempotency-Key"]
    assert "X-Picket-Signature" not in receiver.last().headers
    figures = await (await client.get("/metrics")).text()
    assert 'picket_notifications_total{kind="webhook",outcome="sent"} 3.0' in figures
    assert 'picket_notification_send_seconds_count{kind="webhook"} 3.0' in figures
    _no_secrets(figures)
    assert ctl.metrics.notifications.labels("webhook", "sent")._value.get() == 3


async def test_slack_teams_pagerduty_alertmanager_bodies(
    api: tuple[Client, Controller], receiver: Receiver
) -> None:
    client, _ = api
    slack = await _create(
        client, Type="Slack", Name="Chat", Url=f"{receiver.base}/ok/services/{SLACK_SECRET}"
    )
    assert (await _test(client, slack["IntegrationGuid"]))["Outcome"] == "Sent"
    message = receiver.last().json()
    assert "Picket test monitor" in message["text"]
    assert message["blocks"][0]["type"] == "section"
    assert "&lt;angle brackets&gt; &amp;" in message["blocks"][1]["text"]["text"]

    for card_format in ("AdaptiveCard", "MessageCard"):
        teams = await _create(
            client,
            Type="GenericWebhook",
            Kind="MicrosoftTeams",
            Name=f"Teams {card_format}",
            Url=f"{receiver.base}/accepted/workflows/{SLACK_SECRET}",
            CardFormat=card_format,
        )
        assert teams["Kind"] == "MicrosoftTeams" and teams["Url"].endswith("/******")
        assert (await _test(client, teams["IntegrationGuid"]))["Outcome"] == "Sent"
        card = receiver.last().json()
        if card_format == "AdaptiveCard":
            attachment = card["attachments"][0]
            assert attachment["contentType"] == "application/vnd.microsoft.card.adaptive"
            assert attachment["content"]["type"] == "AdaptiveCard"
            titles = [f["title"] for f in attachment["content"]["body"][1]["facts"]]
            assert "Monitor" in titles
        else:
            assert card["@type"] == "MessageCard" and card["sections"][0]["facts"]

    pagerduty = await _create(
        client,
        Type="PagerDuty",
        Name="Pager",
        RoutingKey=ROUTING_KEY,
        EventsUrl=receiver.base + "/accepted/v2/enqueue",
    )
    assert pagerduty["RoutingKey"] == "******"
    before = len(receiver.requests)
    outcome = await _test(client, pagerduty["IntegrationGuid"])
    assert outcome["Outcome"] == "Sent", outcome
    trigger, resolve = (r.json() for r in receiver.requests[before:])
    assert trigger["event_action"] == "trigger" and resolve["event_action"] == "resolve"
    assert trigger["routing_key"] == ROUTING_KEY == resolve["routing_key"]
    assert trigger["dedup_key"] == resolve["dedup_key"] == outcome["IdempotencyKey"]
    assert trigger["payload"]["severity"] == "info"
    assert trigger["payload"]["source"] and trigger["payload"]["summary"]
    # the routing key is sent to EventsUrl: pointed elsewhere, it must be sent again
    moved = await _json(
        await client.patch(
            f"{P}/Integration/{pagerduty['IntegrationGuid']}",
            json={"EventsUrl": f"http://127.0.0.1:{free_port()}/v2/enqueue"},
            headers=ADMIN,
        ),
        400,
    )
    assert moved["Messages"][0]["Field"] == "RoutingKey"

    alertmanager = await _create(
        client,
        Type="GenericWebhook",
        Kind="Alertmanager",
        Name="AM",
        Url=receiver.base + "/ok",
        Labels={"team": "ops"},
    )
    assert (await _test(client, alertmanager["IntegrationGuid"]))["Outcome"] == "Sent"
    got = receiver.last()
    assert got.path == "/ok/api/v2/alerts"
    (alert,) = got.json()
    assert alert["labels"]["alertname"] == "PicketTest" and alert["labels"]["team"] == "ops"
    assert alert["annotations"]["summary"]
    starts = datetime.fromisoformat(alert["startsAt"])
    assert datetime.fromisoformat(alert["endsAt"]) - starts == timedelta(minutes=5)


async def test_alertmanager_and_pagerduty_recovery(receiver: Receiver) -> None:
    """An Ok resolves what its error opened: the same labels with endsAt; the same dedup_key."""
    now = datetime(2026, 3, 1, 12, 0, tzinfo=UTC)
    error = base.Notification(
        alert_type=base.AlertType.ERROR,
        alert_guid="a1",
        idempotency_key="k-error",
        incident_key="incident-1",
        monitor_guid="m1",
        monitor_name="Shop",
        timestamp=now,
        first_error_time=now - timedelta(minutes=3),
        error_description="HTTP 503",
    )
    ok = base.Notification(
        alert_type=base.AlertType.OK,
        alert_guid="a2",
        idempotency_key="k-ok",
        incident_key="incident-1",
        monitor_guid="m1",
        monitor_name="Shop",
        timestamp=now + timedelta(minutes=10),
        first_error_time=now - timedelta(minutes=3),
    )
    am = alertmanager.Config(Name="AM", Url=receiver.base + "/ok")
    pd = pagerduty.Config(Name="PD", RoutingKey=ROUTING_KEY, EventsUrl=receiver.base + "/accepted")
    async with aiohttp.ClientSession() as session:
        ctx = base.SendContext(session=session, timeout=TIMEOUT)
        for n in (error, ok):
            assert (await alertmanager.send(am, n, ctx)).sent
            assert (await pagerduty.send(pd, n, ctx)).sent
    fired, pd_trigger, resolved, pd_resolve = (r.json() for r in receiver.requests)
    assert fired[0]["labels"] == resolved[0]["labels"]
    assert "endsAt" not in fired[0] and resolved[0]["endsAt"] == "2026-03-01T12:10:00Z"
    assert fired[0]["startsAt"] == resolved[0]["startsAt"] == "2026-03-01T11:57:00Z"
    assert pd_trigger["event_action"] == "trigger" and pd_resolve["event_action"] == "resolve"
    assert pd_trigger["dedup_key"] == pd_resolve["dedup_key"] == "incident-1"
    assert pd_trigger["payload"]["severity"] == "critical"


async def test_webhook_url_userinfo_is_a_secret(
    api: tuple[Client, Controller], receiver: Receiver
) -> None:
    client, _ = api
    url = f"http://hook:userinfo-secret-77@127.0.0.1:{receiver.port}/ok/basic"
    created = await _create(client, Type="GenericWebhook", Name="Basic", Url=url)
    assert created["Url"] == f"http://******@127.0.0.1:{receiver.port}/ok/basic"
    await _json(
        await client.put(
            f"{P}/Integration/{created['IntegrationGuid']}", json=created, headers=ADMIN
        ),
        204,
    )
    assert (await _test(client, created["IntegrationGuid"]))["Outcome"] == "Sent"
    expected = base64.b64encode(b"hook:userinfo-secret-77").decode()
    assert receiver.last().headers["Authorization"] == f"Basic {expected}"
    listed = await _json(await client.get(P + "/Integration", headers=ADMIN), 200)
    assert "userinfo-secret-77" not in json.dumps(listed)


# --- failures -----------------------------------------------------------------------------------


async def test_failures_are_classified_and_carry_no_secret(
    api: tuple[Client, Controller], receiver: Receiver
) -> None:
    client, _ = api

    async def outcome_of(**fields: Any) -> dict[str, Any]:
        created = await _create(client, **{**_webhook(receiver), **fields})
        result = await _test(client, created["IntegrationGuid"])
        _no_secrets(json.dumps(result))
        return result

    error = await outcome_of(Url=receiver.base + "/error/x")
    assert error["Outcome"] == "TemporaryFailure" and error["Status"] == 500
    assert "HTTP 500" in error["Reason"] and "******" in error["Reason"]
    busy = await outcome_of(Url=receiver.base + "/busy")
    assert busy["Outcome"] == "TemporaryFailure" and busy["RetryAfterSeconds"] == 7
    bad = await outcome_of(Url=receiver.base + "/bad")
    assert bad["Outcome"] == "PermanentFailure" and "invalid_payload" in bad["Reason"]
    moved = await outcome_of(Url=receiver.base + "/moved")
    assert moved["Outcome"] == "PermanentFailure" and "redirect" in moved["Reason"]
    refused = await outcome_of(Url=f"http://127.0.0.1:{free_port()}/ok")
    assert refused["Outcome"] == "TemporaryFailure" and "cannot connect" in refused["Reason"]
    slow = await outcome_of(Url=receiver.base + "/slow")
    assert slow["Outcome"] == "TemporaryFailure" and f"{TIMEOUT:g}s" in slow["Reason"]
    assert slow["DurationSeconds"] < TIMEOUT + 5

    # a Slack URL is a credential: the endpoint echoing it back is scrubbed
    slack = await _create(
        client, Type="Slack", Name="Chat", Url=f"{receiver.base}/error/services/{SLACK_SECRET}"
    )
    result = await _test(client, slack["IntegrationGuid"])
    assert result["Outcome"] == "TemporaryFailure"
    _no_secrets(json.dumps(result))
    figures = await (await client.get("/metrics")).text()
    assert 'picket_notifications_total{kind="webhook",outcome="temporary"} 4.0' in figures
    assert 'picket_notifications_total{kind="webhook",outcome="permanent"} 2.0' in figures


# --- e-mail -------------------------------------------------------------------------------------


async def test_email_over_starttls_with_login(
    api: tuple[Client, Controller], smtp: Smtp, tmp_path: Path
) -> None:
    client, ctl = api
    created = await _create(
        client, Type="Email", Name="Mail", ExtraEmailAddresses="ops@example.org; lead@example.org"
    )
    assert created["ExtraEmailAddresses"] == "ops@example.org, lead@example.org"
    outcome = await _test(client, created["IntegrationGuid"])
    assert outcome["Outcome"] == "Sent", outcome
    sender, to, content, tls = smtp.mailbox.messages[-1]
    assert tls and sender == "picket@example.org"
    assert to == ["ops@example.org", "lead@example.org"]
    mail = message_from_bytes(content)
    assert "Picket test monitor" in mail["Subject"]
    assert mail["Message-ID"] == f"<{outcome['IdempotencyKey']}@example.org>"
    assert "Escalation level: 1" in mail.get_payload()

    # the on-duty operators of the level come from the caller, the extra addresses are added
    # (an address once, whatever its case)
    both = await ctl.senders.deliver(
        "g",
        KINDS["email"],
        {"Name": "x", "ExtraEmailAddresses": ["ops@example.org"]},
        dataclasses.replace(base.sample(), recipients=("olga@example.org", "OPS@example.org")),
    )
    assert both.sent
    assert smtp.mailbox.messages[-1][1] == ["olga@example.org", "OPS@example.org"]
    # an error whose description spans lines: the subject is one line, the body has it all
    error = dataclasses.replace(
        base.sample(),
        alert_type=base.AlertType.ERROR,
        error_description="HTTP 503\r\nBcc: everyone@example.org",
    )
    outcome_of_error = await ctl.senders.deliver(
        "g", KINDS["email"], {"Name": "x", "ExtraEmailAddresses": ["ops@example.org"]}, error
    )
    assert outcome_of_error.sent, outcome_of_error
    mail = message_from_bytes(smtp.mailbox.messages[-1][2])
    assert mail["Subject"] == "ERROR: Picket test monitor: HTTP 503 Bcc: everyone@example.org"
    assert mail["Bcc"] is None and smtp.mailbox.messages[-1][1] == ["ops@example.org"]

    busy = await _create(
        client, Type="Email", Name="Busy", ExtraEmailAddresses=["busy@example.org"]
    )
    result = await _test(client, busy["IntegrationGuid"])
    assert result["Outcome"] == "TemporaryFailure" and result["Status"] == 451, result
    gone = await _create(
        client, Type="Email", Name="Gone", ExtraEmailAddresses=["gone@example.org"]
    )
    result = await _test(client, gone["IntegrationGuid"])
    assert result["Outcome"] == "PermanentFailure" and result["Status"] == 550, result
    some = await _create(
        client,
        Type="Email",
        Name="Some",
        ExtraEmailAddresses=["gone@example.org", "ops@example.org"],
    )
    result = await _test(client, some["IntegrationGuid"])
    assert result["Outcome"] == "Sent" and "gone@example.org" in result["Reason"], result
    _no_secrets(json.dumps(result))


async def test_email_failures_without_server_or_login(
    tmp_path: Path, database_url: str, smtp: Smtp
) -> None:
    wrong_login = {
        "smtp_host": "127.0.0.1",
        "smtp_port": smtp.port,
        "smtp_username": SMTP_USER,
        "smtp_password": "wrong-" + SMTP_PASSWORD,
        "smtp_from": "picket@example.org",
        "smtp_ca_file": str(smtp.ca_file),
    }
    expectations = [
        ({}, "PermanentFailure", "PICKET_SMTP_HOST"),
        (wrong_login, "PermanentFailure", "SMTP 535"),
        ({**wrong_login, "smtp_ca_file": ""}, "TemporaryFailure", "certificate"),
        ({**wrong_login, "smtp_port": free_port()}, "TemporaryFailure", "SMTP"),
    ]
    for index, (settings, kind, words) in enumerate(expectations):
        folder = tmp_path / str(index)
        folder.mkdir()
        url = database_url if index == 0 else f"sqlite+aiosqlite:///{folder / 'picket.db'}"
        async with controller_client(folder, PASSWORD, database_url=url, **settings) as (client, _):
            created = await _create(
                client, Type="Email", Name="Mail", ExtraEmailAddresses="ops@example.org"
            )
            result = await _test(client, created["IntegrationGuid"])
            assert result["Outcome"] == kind and words in result["Reason"], (settings, result)
            assert "wrong-" not in json.dumps(result)
