"""Enrolment tokens over the real API (in-process, SQLite): shown once, stored as a hash,
spent once, refused when unknown, used or expired, released when the broker cannot make the
login; and an enrolled agent's settings come from its identity file."""

from __future__ import annotations

import asyncio
import base64
import hashlib
import json
import logging
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiomqtt
import pytest
import sqlalchemy as sa
from aiohttp.test_utils import TestClient, TestServer

from agent.enrol import IDENTITY_FILE
from agent.settings import AgentSettings
from controller.app import Controller, create_app
from controller.db.schema import enrolment
from controller.db.store import Store, now_us
from controller.settings import ControllerSettings
from shared.messages import Hello
from tests.helpers import Mosquitto, controller_client, dynsec_plugin, free_port, wait_for

PASSWORD = "unit-test-password"
ADMIN = {"Authorization": "Basic " + base64.b64encode(f"admin:{PASSWORD}".encode()).decode()}
KEY = base64.b64encode(bytes(range(32))).decode()


@pytest.fixture
async def client(tmp_path: Path) -> AsyncIterator[tuple[TestClient[Any, Any], Controller]]:
    nobody = free_port()
    admin_url = f"mqtt://admin:admin-secret@127.0.0.1:{nobody}"  # nobody there
    async with controller_client(
        tmp_path, PASSWORD, broker_url=f"mqtt://127.0.0.1:{nobody}", broker_admin_url=admin_url
    ) as pair:
        yield pair


async def _token(client: TestClient[Any, Any], **body: Any) -> dict[str, Any]:
    body = {"CheckpointName": "Amsterdam", "RegionName": "Europe", **body}
    resp = await client.post("/api/v4/EnrolmentToken", headers=ADMIN, json=body)
    assert resp.status == 201, await resp.text()
    return dict(await resp.json())


async def _enrol(client: TestClient[Any, Any], token: str) -> tuple[int, Any]:
    resp = await client.post("/api/v4/Enrolment", json={"Token": token, "PublicKey": KEY})
    return resp.status, await resp.json()


async def test_token_is_shown_once_and_only_its_hash_is_kept(
    client: tuple[TestClient[Any, Any], Controller],
) -> None:
    api, ctl = client
    made = await _token(api, ExpiresInMinutes=5)
    assert set(made) == {"Token", "CheckpointName", "RegionName", "Expires"}
    assert len(made["Token"]) >= 40
    async with ctl.store.engine.connect() as conn:
        rows = (await conn.execute(sa.select(enrolment))).all()
    stored = json.dumps([[str(v) for v in r] for r in rows])
    assert made["Token"] not in stored
    assert hashlib.sha256(made["Token"].encode()).hexdigest() in stored


async def test_token_requests_are_checked(client: tuple[TestClient[Any, Any], Controller]) -> None:
    api, _ctl = client
    for body, field in (
        ({"RegionName": "Europe"}, "CheckpointName"),
        ({"CheckpointName": " Amsterdam", "RegionName": "Europe"}, "CheckpointName"),
        ({"CheckpointName": "A", "RegionName": "E", "ExpiresInMinutes": 0}, "ExpiresInMinutes"),
        ({"CheckpointName": "A", "RegionName": "E", "ExpiresInMinutes": "5"}, "ExpiresInMinutes"),
    ):
        resp = await api.post("/api/v4/EnrolmentToken", headers=ADMIN, json=body)
        assert resp.status == 400, body
        assert (await resp.json())["Messages"][0]["Field"] == field
    resp = await api.post("/api/v4/EnrolmentToken", json={"CheckpointName": "A"})
    assert resp.status == 401  # no credentials
    resp = await api.post("/api/v4/Enrolment", json={"Token": "x", "PublicKey": "not base64!"})
    assert resp.status == 400 and (await resp.json())["Messages"][0]["Field"] == "PublicKey"


async def test_unknown_used_and_expired_tokens_get_clear_errors(
    client: tuple[TestClient[Any, Any], Controller],
) -> None:
    api, ctl = client
    status, body = await _enrol(api, "no-such-token")
    assert status == 401 and "not known" in body["Messages"][0]["Message"]

    made = await _token(api)
    hashed = hashlib.sha256(made["Token"].encode()).hexdigest()
    assert (await ctl.store.use_enrolment(hashed, "ams-1", KEY))[0] == "ok"
    status, body = await _enrol(api, made["Token"])
    assert status == 409 and "already been used" in body["Messages"][0]["Message"]
    assert body["Messages"][0]["Field"] == "Token"

    await ctl.store.create_enrolment("f" * 64, "Amsterdam", "Europe", now_us() - 1)
    outcome, _row = await ctl.store.use_enrolment("f" * 64, "ams-2", KEY)
    assert outcome == "expired"
    metrics = await (await api.get("/metrics")).text()
    assert 'picket_enrolments_total{outcome="unknown"} 1.0' in metrics
    assert 'picket_enrolments_total{outcome="used"} 1.0' in metrics


async def test_expired_token_through_the_api(
    client: tuple[TestClient[Any, Any], Controller],
) -> None:
    api, ctl = client
    token = "an-expired-token"
    hashed = hashlib.sha256(token.encode()).hexdigest()
    await ctl.store.create_enrolment(hashed, "Amsterdam", "Europe", now_us() - 1_000_000)
    status, body = await _enrol(api, token)
    assert status == 403 and "expired" in body["Messages"][0]["Message"]


async def test_a_login_the_broker_could_not_make_leaves_the_token_unspent(
    client: tuple[TestClient[Any, Any], Controller],
) -> None:
    api, ctl = client
    made = await _token(api)
    status, body = await _enrol(api, made["Token"])
    assert status == 503, body
    message = body["Messages"][0]["Message"]
    assert "admin-secret" not in message and "broker" in message
    hashed = hashlib.sha256(made["Token"].encode()).hexdigest()
    assert (await ctl.store.peek_enrolment(hashed))[0] == "ok"


async def test_enrolment_is_off_without_a_broker_admin_login(tmp_path: Path) -> None:
    settings = ControllerSettings(
        data_dir=tmp_path, admin_password=PASSWORD, broker_url=f"mqtt://127.0.0.1:{free_port()}"
    )
    store = await Store.open(settings.resolved_database_url())
    try:
        async with TestClient(TestServer(create_app(Controller(settings, store)))) as api:
            resp = await api.post(
                "/api/v4/EnrolmentToken",
                headers=ADMIN,
                json={"CheckpointName": "A", "RegionName": "E"},
            )
            assert resp.status == 409
            assert "PICKET_BROKER_ADMIN_URL" in (await resp.json())["Messages"][0]["Message"]
    finally:
        await store.close()


def test_enrolled_identity_supplies_the_agent_settings(tmp_path: Path) -> None:
    identity = {
        "agent_id": "amsterdam-1a2b3c4d",
        "checkpoint": "Amsterdam",
        "region": "Europe",
        "broker_url": "mqtt://amsterdam-1a2b3c4d:s3cret@broker.example:1883",
    }
    (tmp_path / IDENTITY_FILE).write_text(json.dumps(identity))
    settings = AgentSettings(data_dir=tmp_path)
    assert settings.agent_id == "amsterdam-1a2b3c4d"
    assert settings.checkpoint == "Amsterdam" and settings.region == "Europe"
    assert settings.broker_url == identity["broker_url"]
    # a broker URL given without a login gets the enrolled one
    moved = AgentSettings(data_dir=tmp_path, broker_url="mqtts://broker.example:8883")
    assert moved.broker_url == "mqtts://amsterdam-1a2b3c4d:s3cret@broker.example:8883"
    # without the file, nothing changes
    plain = AgentSettings(data_dir=tmp_path / "none")
    assert plain.checkpoint == "Local"


async def test_tokens_can_be_given_on_the_command_line(
    client: tuple[TestClient[Any, Any], Controller],
) -> None:
    """`picket agent enrol --token T` reads a T starting with '-' as an option: none does."""
    api, _ctl = client
    for _ in range(200):
        token = (await _token(api))["Token"]
        assert not token.startswith("-") and token.isalnum(), token


BROKER_ADMIN = ("broker-admin", "broker-admin-secret")


async def _can_connect(broker: Mosquitto, user: str, password: str) -> bool:
    try:
        async with aiomqtt.Client(
            "127.0.0.1", broker.port, username=user, password=password, identifier=f"probe-{user}"
        ):
            return True
    except aiomqtt.MqttError:
        return False


def _hello(agent_id: str) -> Hello:
    return Hello(
        agent=agent_id,
        checkpoint="Amsterdam",
        region="Europe",
        ipv4=["198.51.100.1"],
        ipv6=[],
        version="1.2.3",
        probe_types=["Http"],
        capacity=10,
    )


async def _enrolled_server(api: TestClient[Any, Any], ctl: Controller) -> tuple[str, str, int]:
    """A token spent: the agent's login, and its server (from its first hello)."""
    status, login = await _enrol(api, (await _token(api))["Token"])
    assert status == 201, login
    await ctl.on_hello(_hello(login["AgentId"]))
    return login["MqttUsername"], login["MqttPassword"], ctl.assigner.servers[login["AgentId"]].id


async def _retire(api: TestClient[Any, Any], server_id: int) -> None:
    resp = await api.post(f"/api/v4/Checkpoint/Server/{server_id}/Retire", headers=ADMIN)
    assert resp.status == 200, await resp.text()
    assert (await resp.json())["Data"]["Attributes"]["State"] == "retired"


def _metric(text: str, outcome: str) -> float:
    wanted = f'picket_broker_login_deletions_total{{outcome="{outcome}"}} '
    return sum(float(line.split()[-1]) for line in text.splitlines() if line.startswith(wanted))


async def test_retiring_an_enrolled_server_deletes_its_broker_login(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """Retired: its login goes, so it cannot connect any more. With the broker away the
    retirement is still recorded and the deletion retried, through a controller restart."""
    if dynsec_plugin() is None:
        pytest.fail("mosquitto_dynamic_security.so is not installed (Debian package mosquitto)")
    broker = Mosquitto(tmp_path / "broker", dynsec_admin=BROKER_ADMIN)
    broker.start()
    settings = {
        "broker_admin_url": broker.login_url(*BROKER_ADMIN),
        "database_url": f"sqlite+aiosqlite:///{tmp_path / 'picket.db'}",
    }
    try:
        async with controller_client(tmp_path, PASSWORD, **settings) as (api, ctl):
            user, password, server_id = await _enrolled_server(api, ctl)
            assert await _can_connect(broker, user, password)
            async with aiomqtt.Client(
                "127.0.0.1", broker.port, username=user, password=password, identifier=user
            ) as connected:
                await _retire(api, server_id)
                with pytest.raises(aiomqtt.MqttError):  # the broker drops it at once, too
                    async with asyncio.timeout(60):
                        async for _message in connected.messages:
                            pass

            async def refused() -> bool:
                return not await _can_connect(broker, user, password)

            await wait_for(refused, "the retired agent's login to be refused")

            async def counted() -> bool:
                text = await (await api.get("/metrics")).text()
                return (
                    _metric(text, "deleted") == 1 and "picket_broker_logins_to_delete 0.0" in text
                )

            await wait_for(counted, "the deletion to be counted")

            # the broker away: recorded anyway, the deletion counted as failed and retried
            user2, password2, server2 = await _enrolled_server(api, ctl)
            broker.stop()
            await _retire(api, server2)

            async def failed_once() -> bool:
                text = await (await api.get("/metrics")).text()
                return _metric(text, "failed") >= 1

            await wait_for(failed_once, "a failed deletion to be counted")
            assert ctl.assigner.servers[user2].state == "retired"
            assert any(
                "not deleted yet" in r.getMessage() and user2 in r.getMessage()
                for r in caplog.records
            )
            assert BROKER_ADMIN[1] not in caplog.text
        # a controller restart does not forget it
        broker.start()
        async with controller_client(tmp_path, PASSWORD, **settings) as (api, ctl):

            async def refused2() -> bool:
                return not await _can_connect(broker, user2, password2)

            await wait_for(refused2, "the login to be deleted after the restart")
            assert await _can_connect(broker, *BROKER_ADMIN)  # the broker itself is up
    finally:
        broker.stop()


async def test_retiring_a_server_with_credentials_given_by_hand_says_so(
    client: tuple[TestClient[Any, Any], Controller], caplog: pytest.LogCaptureFixture
) -> None:
    api, ctl = client
    await ctl.on_hello(_hello("by-hand-1"))
    with caplog.at_level(logging.INFO):
        await _retire(api, ctl.assigner.servers["by-hand-1"].id)
    assert any(
        "by-hand-1" in r.getMessage() and "no login of it to delete" in r.getMessage()
        for r in caplog.records
    )
    metrics = await (await api.get("/metrics")).text()
    assert _metric(metrics, "by_hand") == 1 and _metric(metrics, "deleted") == 0
