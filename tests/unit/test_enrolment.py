"""Enrolment tokens over the real API (in-process, SQLite): shown once, stored as a hash,
spent once, refused when unknown, used or expired, released when the broker cannot make the
login; and an enrolled agent's settings come from its identity file."""

from __future__ import annotations

import base64
import hashlib
import json
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa
from aiohttp.test_utils import TestClient, TestServer

from agent.enrol import IDENTITY_FILE
from agent.settings import AgentSettings
from controller.app import Controller, create_app
from controller.db.schema import enrolment
from controller.db.store import Store, now_us
from controller.settings import ControllerSettings
from tests.helpers import controller_client, free_port

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
