"""Database errors are translated at the store's boundary: refused values, an outage of a
private PostgreSQL server (stopped and started by the test), and a race on a monitor's name."""

from __future__ import annotations

import asyncio
import base64
import logging
import uuid
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from aiohttp.test_utils import TestClient, TestServer

from controller.app import Controller, create_app
from controller.db.store import Store, StoreRejected, StoreUnavailable
from controller.settings import ControllerSettings
from tests.helpers import free_port
from tests.postgres import private_cluster

PASSWORD = "unit-test-password"
ADMIN = {"Authorization": "Basic " + base64.b64encode(f"admin:{PASSWORD}".encode()).decode()}


def _check(**extra: Any) -> dict[str, Any]:
    row = {
        "uid": uuid.uuid4().hex,
        "monitor_guid": "33333333-3333-4333-8333-333333333333",
        "server_id": None,
        "ts_us": 1_000_000,
        "scheduled_us": 1_000_000,
        "error_level": 0,
        "error_code": 0,
        "attributes": "{}",
        "response_body": None,
        "details": None,
    }
    return {**row, **extra}


async def test_values_the_database_cannot_hold_are_store_rejected(database_url: str) -> None:
    store = await Store.open(database_url)
    try:
        refused = [_check(ts_us=2**70), _check(uid="lone \ud800 surrogate")]
        if database_url.startswith("postgresql"):
            refused += [_check(response_body="a NUL \x00"), _check(error_code=2**31)]
            refused += [_check(uid="x" * 40)]
        for row in refused:
            with pytest.raises(StoreRejected):
                await store.insert_checks([row])
        assert store.available
        assert await store.insert_checks([_check(uid="fine")]) == {"fine"}
    finally:
        await store.close()


async def test_an_outage_is_store_unavailable_logged_once_and_then_over(
    caplog: pytest.LogCaptureFixture,
) -> None:
    with private_cluster() as cluster:
        store = await Store.open(await cluster.create_database("outage"))
        try:
            assert await store.insert_checks([_check(uid="before")]) == {"before"}
            await asyncio.to_thread(cluster.stop)
            caplog.set_level(logging.WARNING, logger="controller.db.store")
            for _ in range(3):
                with pytest.raises(StoreUnavailable):
                    await store.insert_checks([_check()])
                with pytest.raises(StoreUnavailable):
                    await store.known_uids(["before"])
            assert not store.available
            outage = [r for r in caplog.records if "unavailable" in r.getMessage()]
            assert len(outage) == 1, [r.getMessage() for r in caplog.records]
            assert f"127.0.0.1:{cluster.port}" in outage[0].getMessage()
            await asyncio.to_thread(cluster.start)
            assert await store.known_uids(["before"]) == {"before"}
            assert store.available and store.outages == 1
            assert any("is back" in r.getMessage() for r in caplog.records)
        finally:
            await store.close()
        await asyncio.to_thread(cluster.stop)
        with pytest.raises(StoreUnavailable):
            await Store.open(cluster.url("outage"))


@pytest.fixture
async def two_controllers(
    database_url: str, tmp_path: Path
) -> AsyncIterator[list[TestClient[Any, Any]]]:
    """Two controllers on one database (a rolling restart, two replicas)."""
    clients: list[TestClient[Any, Any]] = []
    stores: list[Store] = []
    for n in range(2):
        settings = ControllerSettings(
            data_dir=tmp_path / str(n),
            admin_password=PASSWORD,
            broker_url=f"mqtt://127.0.0.1:{free_port()}",
            database_url=database_url,
        )
        stores.append(await Store.open(database_url))
        client = TestClient(TestServer(create_app(Controller(settings, stores[-1]))))
        await client.start_server()
        clients.append(client)
    try:
        yield clients
    finally:
        for client in clients:
            await client.close()
        for store in stores:
            await store.close()


async def test_a_race_for_a_monitor_name_is_a_400_naming_name(
    two_controllers: list[TestClient[Any, Any]],
) -> None:
    for client in two_controllers:  # credentials checked once, so the creates meet in the store
        assert (await client.get("/api/v4/Monitor", headers=ADMIN)).status == 200
    for n in range(10):
        monitor = {
            "Name": f"raced {n}",
            "MonitorType": "Http",
            "Url": "http://127.0.0.1:9/",
            "CheckInterval": 1,
        }
        responses = await asyncio.gather(
            *(c.post("/api/v4/Monitor", json=monitor, headers=ADMIN) for c in two_controllers)
        )
        statuses = sorted(r.status for r in responses)
        assert statuses == [201, 400], statuses
        (lost,) = [r for r in responses if r.status == 400]
        assert (await lost.json())["Messages"][0]["Field"] == "Name"
    # a rename into a taken name, from both sides at once: one wins
    guids = []
    for client, name in zip(two_controllers, ("left", "right"), strict=True):
        monitor = {"Name": name, "MonitorType": "Http", "Url": "http://127.0.0.1:9/"}
        resp = await client.post("/api/v4/Monitor", json=monitor, headers=ADMIN)
        assert resp.status == 201
        guids.append((await resp.json())["MonitorGuid"])
    responses = await asyncio.gather(
        *(
            c.patch(f"/api/v4/Monitor/{guid}", json={"Name": "both"}, headers=ADMIN)
            for c, guid in zip(two_controllers, guids, strict=True)
        )
    )
    assert sorted(r.status for r in responses) == [204, 400]


async def test_a_login_during_an_outage_is_a_503_with_retry_after(tmp_path: Path) -> None:
    """The credentials are looked up in the database: when it is down the client is told to
    try again later (503), not that its password is wrong (401) or that we failed (500)."""
    with private_cluster() as cluster:
        url = await cluster.create_database("login")
        store = await Store.open(url)
        settings = ControllerSettings(
            data_dir=tmp_path,
            admin_password=PASSWORD,
            broker_url=f"mqtt://127.0.0.1:{free_port()}",
            database_url=url,
        )
        try:
            ctl = Controller(settings, store)
            async with TestClient(TestServer(create_app(ctl))) as client:
                await asyncio.to_thread(cluster.stop)
                for user in ("admin", "someone-else"):
                    basic = base64.b64encode(f"{user}:{PASSWORD}".encode()).decode()
                    resp = await client.get(
                        "/api/v4/Monitor", headers={"Authorization": "Basic " + basic}
                    )
                    assert resp.status == 503, await resp.text()
                    assert resp.headers["Retry-After"] == "5"
                    assert "database" in (await resp.text())
                # not a failed login: nobody is throttled for the database's outage
                failures = ctl.metrics.registry.get_sample_value("picket_login_failures_total")
                assert not failures
        finally:
            await store.close()
