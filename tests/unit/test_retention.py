"""Retention: checks older than PICKET_RESULT_RETENTION_DAYS are deleted in small batches by the
controller's retention task, on SQLite and PostgreSQL, and the API says how long it keeps them."""

from __future__ import annotations

import asyncio
import base64
import contextlib
import time
import uuid
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa
from aiohttp.test_utils import TestClient, TestServer

from controller.app import Controller, create_app
from controller.db.schema import dead_letter, monitor_check
from controller.db.store import MonitorRow, Store
from controller.settings import ControllerSettings
from shared.messages import CheckResult, ResultBatch
from tests.helpers import free_port, wait_for

DAY = 86_400.0
PASSWORD = "retention-test-password"


@pytest.fixture
async def ctl(database_url: str, tmp_path: Path) -> AsyncIterator[Controller]:
    settings = ControllerSettings(
        data_dir=tmp_path,
        database_url=database_url,
        admin_password=PASSWORD,
        broker_url=f"mqtt://127.0.0.1:{free_port()}",  # nobody there: publishes are refused
        result_retention_days=30,
        retention_batch_rows=1000,
        retention_pause_seconds=0,
    )
    store = await Store.open(database_url)
    controller = Controller(settings, store)
    yield controller
    await store.close()


async def _monitor(ctl: Controller, name: str) -> str:
    guid = str(uuid.uuid4())
    row = MonitorRow(guid, name, "Http", True, {"Name": name}, "r1", 0, 0)
    assert await ctl.store.save_monitor(row, create=True)
    ctl.assigner.monitors[guid] = row
    return guid


def _rows(guid: str, started: float, count: int) -> list[dict[str, Any]]:
    return [
        {
            "uid": uuid.uuid4().hex,
            "monitor_guid": guid,
            "server_id": None,
            "ts_us": int((started + i) * 1e6),
            "scheduled_us": int((started + i) * 1e6),
            "error_level": 0,
            "error_code": 0,
            "attributes": "{}",
            "response_body": None,
            "details": None,
        }
        for i in range(count)
    ]


async def _count(store: Store, guid: str, table: sa.Table = monitor_check) -> int:
    async with store.engine.connect() as conn:
        found = await conn.scalar(
            sa.select(sa.func.count()).select_from(table).where(table.c.monitor_guid == guid)
        )
    return int(found or 0)


async def test_old_checks_are_deleted_in_batches_and_new_ones_kept(ctl: Controller) -> None:
    now = time.time()
    first, second = await _monitor(ctl, "one"), await _monitor(ctl, "two")
    await ctl.store.insert_checks(_rows(first, now - 40 * DAY, 2500))
    await ctl.store.insert_checks(_rows(first, now - 29 * DAY, 10))
    await ctl.store.insert_checks(_rows(second, now - 31 * DAY, 5))
    await ctl.store.insert_checks(_rows(second, now - 60, 7))

    batches = await ctl.retention.run_once()

    assert sorted(batches, reverse=True) == [1000, 1000, 500, 5]  # never more than a batch
    assert await _count(ctl.store, first) == 10
    assert await _count(ctl.store, second) == 7
    deleted = ctl.metrics.registry.get_sample_value(
        "picket_retention_deleted_rows_total", {"reason": "expired"}
    )
    assert deleted == 2505
    assert ctl.metrics.registry.get_sample_value("picket_retention_batches_total") == 4
    assert await ctl.retention.run_once() == []  # nothing left to delete


async def test_ingest_is_not_held_up_by_a_retention_pass(ctl: Controller) -> None:
    """Between two delete transactions the database is free: a result batch commits while a
    long pass is still under way."""
    guid = await _monitor(ctl, "busy")
    ctl.assigner.history.opened(guid, "agent-a", 0)
    await ctl.store.insert_checks(_rows(guid, time.time() - 40 * DAY, 3000))
    ctl.retention.pause_seconds = 30.0  # the pass takes a minute and a half
    ctl.retention.batch_rows = 1000
    task = asyncio.create_task(ctl.retention.run_once())
    try:

        async def first_batch_deleted() -> bool:
            return await _count(ctl.store, guid) < 3000

        # the first batch is gone: the pass is pausing
        await wait_for(first_batch_deleted, "the first delete transaction", interval=0.05)
        now = time.time()
        result = CheckResult(
            uid=uuid.uuid4().hex,
            monitor_guid=guid,
            monitor_type="Http",
            scheduled_at=now,
            started_at=now,
            error_code=0,
            error_description="",
        )
        batch = ResultBatch(batch_id=uuid.uuid4().hex, agent="agent-a", results=[result])
        await asyncio.wait_for(ctl.ingest.process([batch]), 60)
        assert not task.done()
        assert await _count(ctl.store, guid) == 2001
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task


async def test_check_lists_report_the_retention(ctl: Controller) -> None:
    guid = await _monitor(ctl, "listed")
    auth = {"Authorization": "Basic " + base64.b64encode(f"admin:{PASSWORD}".encode()).decode()}
    async with TestClient(TestServer(create_app(ctl))) as client:
        resp = await client.get(f"/api/v4/MonitorCheck/Monitor/{guid}", headers=auth)
        assert resp.status == 200
        period = (await resp.json())["Meta"]["Period"]
    assert period["MaximumRetentionDays"] == 30


async def test_a_failed_pass_does_not_end_the_task(ctl: Controller) -> None:
    """A database error (here: the table is gone) is logged and counted, and the task lives
    on to try again; it would otherwise stop the whole controller."""
    await _monitor(ctl, "doomed")
    async with ctl.store.engine.begin() as conn:
        await conn.execute(sa.text("DROP TABLE monitor_check"))
    task = asyncio.create_task(ctl.retention.run())
    try:

        async def failed() -> bool:
            value = ctl.metrics.registry.get_sample_value("picket_retention_failures_total")
            return bool(value)

        await wait_for(failed, "the failed pass to be counted")
        assert not task.done()
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task


def _letters(guid: str, received: float, count: int) -> list[dict[str, Any]]:
    return [
        {
            "received_us": int((received + i) * 1e6),
            "agent_id": "agent-a",
            "batch_id": uuid.uuid4().hex,
            "result_uid": uuid.uuid4().hex,
            "monitor_guid": guid,
            "attempts": 3,
            "reason": "refused",
            "payload": "{}",
        }
        for i in range(count)
    ]


async def test_old_dead_letters_and_those_of_deleted_monitors_are_deleted(
    ctl: Controller,
) -> None:
    now = time.time()
    kept, gone = await _monitor(ctl, "kept"), await _monitor(ctl, "gone")
    await ctl.store.insert_dead_letters(_letters(kept, now - 40 * DAY, 2500))
    await ctl.store.insert_dead_letters(_letters(kept, now - 60, 3))
    await ctl.store.insert_dead_letters(_letters(gone, now - 60, 4))
    del ctl.assigner.monitors[gone]
    ctl.assigner.deleted.add(gone)

    batches = await ctl.retention.run_once()

    assert sorted(batches, reverse=True) == [1000, 1000, 500, 4]  # never more than a batch
    assert await _count(ctl.store, kept, dead_letter) == 3
    assert await _count(ctl.store, gone, dead_letter) == 0
    deleted = ctl.metrics.registry.get_sample_value(
        "picket_retention_deleted_rows_total", {"reason": "dead_letter"}
    )
    assert deleted == 2504
    assert await ctl.retention.run_once() == []
