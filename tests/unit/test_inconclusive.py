"""Inconclusive slots: a monitor with no live checkpoint gets one inconclusive check per missed
slot (controller/nolive.py), an inconclusive partial counts as neither failed nor passed in
concurrent mode, and an inconclusive confirmation confirms nothing. On a real broker and
database (SQLite and PostgreSQL); the controller's ticks are given their time, so slots a
minute apart are walked through without waiting for them."""

from __future__ import annotations

import time
import uuid
from collections.abc import AsyncIterator
from typing import Any

import pytest
import sqlalchemy as sa

from controller import concurrent
from controller.api.checks import represent
from controller.app import Controller
from controller.db.schema import monitor_check
from controller.db.store import CONCURRENT, CheckRow, MonitorRow
from controller.ingest import NO_ERROR, UNCONFIRMED
from controller.nolive import NoLiveSlots, placeholder_uid
from shared import monitors
from shared.errors import ErrorCode
from shared.messages import CheckResult, Hello, ResultBatch, RunRequest
from tests.helpers import Mosquitto, controller_parts, http_monitor

S = 1_000_000  # µs
INTERVAL = 60


@pytest.fixture
async def ctl(database_url: str, mosquitto: Mosquitto, tmp_path: Any) -> AsyncIterator[Controller]:
    async with controller_parts(database_url, mosquitto, tmp_path) as controller:
        yield controller


async def _fleet(ctl: Controller, count: int, checkpoints: int | None = None) -> list[str]:
    names = [f"agent-{i}" for i in range(count)]
    for i, name in enumerate(names):
        city = i if checkpoints is None else i % checkpoints
        await ctl.assigner.on_hello(
            Hello(agent=name, checkpoint=f"City {city}", region="Loopland", probe_types=["Http"])
        )
    return names


async def _monitor(ctl: Controller, name: str = "m", **fields: Any) -> MonitorRow:
    model = monitors.model_for("Http")
    assert model is not None
    definition = model.model_validate(
        http_monitor(name, "http://127.0.0.1:9/", CheckIntervalSeconds=INTERVAL, **fields)
    ).definition()
    now = time.time_ns() // 1000
    row = MonitorRow(str(uuid.uuid4()), name, "Http", True, definition, "r1", now, now)
    assert await ctl.assigner.save_monitor(row, create=True)
    return row


def _result(guid: str, scheduled: float, code: int = 0, **extra: Any) -> CheckResult:
    return CheckResult(
        uid=uuid.uuid4().hex,
        monitor_guid=guid,
        monitor_type="Http",
        scheduled_at=scheduled,
        started_at=scheduled + 0.01,
        error_code=code,
        error_description="failed" if code else "OK",
        **extra,
    )


async def _send(ctl: Controller, agent: str, *results: CheckResult) -> None:
    batch = ResultBatch(batch_id=uuid.uuid4().hex, agent=agent, results=list(results))
    await ctl.ingest.process([batch])


async def _rows(ctl: Controller, guid: str) -> list[CheckRow]:
    return await ctl.store.checks_page(guid, None, None, 0, False, None, 100)


def _metric(ctl: Controller, name: str, **labels: str) -> float:
    return ctl.metrics.registry.get_sample_value(name, labels) or 0.0


def _no_live(ctl: Controller, started_us: int, **extra: Any) -> NoLiveSlots:
    watcher = NoLiveSlots(
        ctl.store,
        ctl.assigner,
        ctl.metrics,
        ctl.bus.session.connected.is_set,
        **{"grace_seconds": 10.0, **extra},
    )
    watcher.start(started_us)
    ctl.ingest.no_live = watcher
    return watcher


async def _walk(watcher: NoLiveSlots, start_us: int, end_us: int, step_us: int = 20 * S) -> None:
    """Ticks from `start_us` to `end_us`, as the task would give them (a few per interval)."""
    at = start_us
    while at <= end_us:
        await watcher.tick(at)
        at += step_us


def _slots(row: MonitorRow, ctl: Controller, after_us: int, before_us: int) -> list[int]:
    """The monitor's slot times (µs) in (after, before), from the schedule its agents get."""
    schedule = ctl.assigner.assignment(row).schedule
    offset_ms = round(schedule.offset_seconds * 1000)
    k = (after_us // 1000 - offset_ms) // (INTERVAL * 1000) + 1
    found = []
    while (at := (k * INTERVAL * 1000 + offset_ms) * 1000) < before_us:
        found.append(at)
        k += 1
    return found


async def test_slots_with_no_live_checkpoint_are_stored_once_as_inconclusive(
    ctl: Controller,
) -> None:
    (agent,) = await _fleet(ctl, 1)
    row = await _monitor(ctl)
    t0 = row.modified_us + S
    watcher = _no_live(ctl, t0)
    # live: nothing is written
    await _walk(watcher, t0, t0 + 3 * INTERVAL * S)
    assert await _rows(ctl, row.guid) == []
    # its only server goes: every slot after that is inconclusive (the grace is over)
    await ctl.assigner.on_state(agent, False)
    lost = t0 + 3 * INTERVAL * S + 5 * S
    await _walk(watcher, lost, lost + 5 * INTERVAL * S)
    rows = await _rows(ctl, row.guid)
    slots = _slots(row, ctl, lost, lost + 5 * INTERVAL * S + 1)
    assert [r.scheduled_us for r in rows] == slots and len(slots) >= 4
    for check in rows:
        assert (check.error_code, check.error_level, check.server_id) == (5, NO_ERROR, None)
        assert check.uid == placeholder_uid(row.guid, check.scheduled_us // 1000)
        shown = represent(check, ctl.assigner)["Attributes"]
        assert shown["IsInconclusive"] is True and shown["ErrorLevel"] == "NoError"
        assert shown["ServerId"] is None and shown["CheckpointId"] is None
        assert shown["ErrorDescription"] == "Inconclusive: no selected checkpoint was live"
        assert shown["IsConcurrentCheck"] is False and shown["IsPartialCheck"] is False
    assert _metric(ctl, "picket_inconclusive_slots_total", reason="no_live_checkpoint") == len(
        slots
    )
    assert ctl.ingest.levels.get(row.guid, NO_ERROR) == NO_ERROR
    # `?Inconclusive=false` hides them
    assert await ctl.store.checks_page(row.guid, None, None, 0, False, None, 100, False) == []
    # a controller started again over the same time (or twice) stores no slot twice
    again = _no_live(ctl, lost - 30 * S, grace_seconds=0.0)
    await _walk(again, lost, lost + 5 * INTERVAL * S)
    assert [r.scheduled_us for r in await _rows(ctl, row.guid)] == slots
    # it comes back: nothing more is written
    await ctl.assigner.on_state(agent, True)
    back = lost + 6 * INTERVAL * S
    await _walk(again, back, back + 4 * INTERVAL * S)
    assert [r.scheduled_us for r in await _rows(ctl, row.guid)] == slots


async def test_nothing_is_written_in_the_grace_nor_for_a_slot_the_fleet_changed_after(
    ctl: Controller,
) -> None:
    (agent,) = await _fleet(ctl, 1)
    row = await _monitor(ctl)
    await ctl.assigner.on_state(agent, False)  # dark from the start
    t0 = row.modified_us + S
    watcher = _no_live(ctl, t0, grace_seconds=2.5 * INTERVAL)
    await _walk(watcher, t0, t0 + 6 * INTERVAL * S)
    rows = await _rows(ctl, row.guid)
    assert rows and all(r.scheduled_us >= t0 + 2.5 * INTERVAL * S for r in rows)
    assert [r.scheduled_us for r in rows] == _slots(
        row, ctl, t0 + int(2.5 * INTERVAL * S) - 1, t0 + 6 * INTERVAL * S + 1
    )
    # a slot falls due, the fleet changes (an agent comes that runs no Http checks), and
    # only then is the slot looked at: as far as the controller can tell, a server may have
    # been live for the monitor at its time
    before = len(rows)
    await ctl.assigner.on_hello(
        Hello(agent="dns-only", checkpoint="Elsewhere", region="Loopland", probe_types=["Dns"])
    )
    end = t0 + 6 * INTERVAL * S
    skipped = _metric(ctl, "picket_inconclusive_slots_skipped_total", reason="fleet_changed")
    await watcher.tick(end + INTERVAL * S)
    assert len(await _rows(ctl, row.guid)) == before
    assert (
        _metric(ctl, "picket_inconclusive_slots_skipped_total", reason="fleet_changed")
        == skipped + 1
    )


async def test_a_real_result_for_the_slot_wins_whichever_comes_first(ctl: Controller) -> None:
    (agent,) = await _fleet(ctl, 1)
    row = await _monitor(ctl)
    t0 = row.modified_us + S
    watcher = _no_live(ctl, t0, grace_seconds=0.0)
    await ctl.assigner.on_state(agent, False)
    start = t0 + 5 * S
    await _walk(watcher, start, start + 3 * INTERVAL * S)
    first, second, _third = (await _rows(ctl, row.guid))[:3]
    # the agent was cut off from the broker, not dead: it ran its saved assignment and
    # delivers the results later. The placeholder of that slot goes; one row per slot
    await _send(ctl, agent, _result(row.guid, first.scheduled_us / S + 0.0000004))
    rows = await _rows(ctl, row.guid)
    by_slot = {r.scheduled_us // 1000: r for r in rows}
    assert len(rows) == len(by_slot)
    assert by_slot[first.scheduled_us // 1000].error_code == 0
    assert by_slot[second.scheduled_us // 1000].error_code == 5
    assert _metric(ctl, "picket_inconclusive_slots_withdrawn_total") == 1
    # a result stored before the placeholder would be: the placeholder is not kept
    last = max(r.scheduled_us for r in rows)
    slot_after = _slots(row, ctl, last, last + 2 * INTERVAL * S)[0]
    await _send(ctl, agent, _result(row.guid, slot_after / S, code=110))
    await watcher.tick(slot_after + S)
    rows = await _rows(ctl, row.guid)
    at_slot = [r for r in rows if r.scheduled_us // 1000 == slot_after // 1000]
    assert [r.error_code for r in at_slot] == [110]
    assert _metric(ctl, "picket_inconclusive_slots_withdrawn_total") == 2
    counted = _metric(ctl, "picket_inconclusive_slots_total", reason="no_live_checkpoint")
    assert counted == sum(1 for r in rows if r.error_code == 5) + 1  # the first one, withdrawn


async def test_rows_per_tick_are_capped_and_the_rest_counted(ctl: Controller) -> None:
    (agent,) = await _fleet(ctl, 1)
    rows = [await _monitor(ctl, f"m{i}") for i in range(5)]
    await ctl.assigner.on_state(agent, False)
    t0 = max(r.modified_us for r in rows) + S
    watcher = _no_live(ctl, t0, grace_seconds=0.0, rows_per_second=2)
    await watcher.tick(t0)
    # one tick a full interval later: every monitor has a slot due, two are written
    await watcher.tick(t0 + INTERVAL * S)
    c = monitor_check.c
    async with ctl.store.engine.connect() as conn:
        stored = await conn.scalar(sa.select(sa.func.count()).where(c.error_code == 5))
    assert stored == 2
    assert _metric(ctl, "picket_inconclusive_slots_skipped_total", reason="row_cap") == 3


async def test_a_concurrent_monitor_with_no_live_checkpoint_gets_an_inconclusive_concurrent_check(
    ctl: Controller,
) -> None:
    names = await _fleet(ctl, 2)
    row = await _monitor(ctl, UseConcurrentMonitoring=True)
    for name in names:
        await ctl.assigner.on_state(name, False)
    t0 = row.modified_us + S
    watcher = _no_live(ctl, t0, grace_seconds=0.0)
    await _walk(watcher, t0 + S, t0 + 2 * INTERVAL * S)
    (check, *_rest) = await _rows(ctl, row.guid)
    assert (check.kind, check.error_code, check.error_level) == (CONCURRENT, 5, NO_ERROR)
    assert check.attributes["PartialChecks"] == 0
    assert check.attributes["MissingPartialChecks"] == 2


# --- concurrent mode: an inconclusive partial is neither failed nor passed -------------------


def _partial(agent: str, code: int) -> concurrent.Partial:
    return concurrent.Partial(agent, uuid.uuid4().hex, code, "failed" if code else "OK", 10.0)


def _decide(expected: int, *codes: int) -> tuple[dict[str, Any], int]:
    slot = concurrent.Slot("m", 1_000_000, expected, 50, 75, deadline=0.0)
    for i, code in enumerate(codes):
        slot.partials[f"a{i}"] = _partial(f"a{i}", code)
    return concurrent.row_of(slot)


def test_an_inconclusive_partial_counts_as_neither_failed_nor_passed() -> None:
    # two of three inconclusive, one failed: 1 of 3 failed (33 %), not 3 of 3
    row, level = _decide(3, 4, 4, 110)
    assert level == concurrent.NO_ERROR
    attributes = row["attributes"]
    assert (attributes["FailedPartialChecks"], attributes["InconclusivePartialChecks"]) == (1, 2)
    assert row["error_code"] == 0 and "IsInconclusive" not in attributes
    # the denominator is still every selected checkpoint: 2 failed of 4 is Unconfirmed
    row, level = _decide(4, 110, 110, 4, 0)
    assert level == concurrent.UNCONFIRMED and row["error_code"] == 110
    # every partial that came inconclusive (one missing): the concurrent check is too
    row, level = _decide(3, 4, 4)
    assert level == concurrent.NO_ERROR
    assert row["error_code"] == ErrorCode.INCONCLUSIVE
    assert row["attributes"]["IsInconclusive"] is True
    assert row["attributes"]["MissingPartialChecks"] == 1
    assert "TotalTime" not in row["attributes"]  # nothing conclusive was measured


async def test_an_all_inconclusive_concurrent_slot_moves_no_alert_state(ctl: Controller) -> None:
    names = await _fleet(ctl, 3)
    row = await _monitor(ctl, UseConcurrentMonitoring=True)
    ctl.ingest.levels[row.guid] = UNCONFIRMED  # an error the slot must neither clear nor raise
    slot = float(int(time.time()))
    for name in names:
        await _send(ctl, name, _result(row.guid, slot, code=4))
    rows = await ctl.store.checks_page(row.guid, None, None, 0, True, None, 10)
    kinds = sorted((r.kind, r.error_code, r.error_level) for r in rows)
    assert kinds == [(CONCURRENT, 4, NO_ERROR)]
    c = monitor_check.c
    async with ctl.store.engine.connect() as conn:
        partial_levels = (
            await conn.execute(sa.select(c.error_level).where(c.check_kind == 1))
        ).scalars()
        assert list(partial_levels) == [NO_ERROR] * 3  # an inconclusive partial is no failure
    assert ctl.ingest.levels[row.guid] == UNCONFIRMED
    assert _metric(ctl, "picket_inconclusive_slots_total", reason="canary") == 1


# --- confirmations ---------------------------------------------------------------------------


async def test_an_inconclusive_confirmation_confirms_nothing(
    ctl: Controller, monkeypatch: pytest.MonkeyPatch
) -> None:
    names = await _fleet(ctl, 2)
    row = await _monitor(ctl)
    asked: list[tuple[str, RunRequest]] = []
    original = ctl.bus.run_now

    async def run_now(agent: str, request: RunRequest) -> bool:
        asked.append((agent, request))
        return await original(agent, request)

    monkeypatch.setattr(ctl.bus, "run_now", run_now)
    failed = _result(row.guid, time.time(), code=110)
    await _send(ctl, names[0], failed)
    ((target, _request),) = asked
    # the other checkpoint's agent cannot reach the network either: it says nothing
    confirmation = _result(row.guid, time.time(), code=4, is_confirmation=True, confirms=failed.uid)
    await _send(ctl, target, confirmation)
    levels = {r.uid: r.error_level for r in await _rows(ctl, row.guid)}
    assert levels == {failed.uid: UNCONFIRMED, confirmation.uid: NO_ERROR}
    assert ctl.ingest.levels[row.guid] == UNCONFIRMED
    outcome = {"where": "other_checkpoint"}
    assert _metric(ctl, "picket_confirmations_total", outcome="inconclusive", **outcome) == 1
    assert _metric(ctl, "picket_confirmations_total", outcome="confirmed", **outcome) == 0
    # the next failure is still Unconfirmed (not Confirmed) and asks for a new re-check
    again = _result(row.guid, time.time() + 1, code=110)
    await _send(ctl, names[0], again)
    assert {r.uid: r.error_level for r in await _rows(ctl, row.guid)}[again.uid] == UNCONFIRMED
    assert len(asked) == 2


async def test_the_alert_state_read_back_after_a_restart_skips_inconclusive_checks(
    ctl: Controller,
) -> None:
    (agent,) = await _fleet(ctl, 1)
    row = await _monitor(ctl)
    paused = await _monitor(ctl, "paused")
    paused = MonitorRow(**{**paused.__dict__, "is_active": False, "revision": "r2"})
    assert await ctl.assigner.save_monitor(paused, create=False)
    await _send(ctl, agent, _result(row.guid, row.modified_us / S + 0.5, code=110))
    await ctl.assigner.on_state(agent, False)
    t0 = max(row.modified_us, paused.modified_us) + S
    watcher = _no_live(ctl, t0, grace_seconds=0.0)
    await _walk(watcher, t0, t0 + 3 * INTERVAL * S)
    assert [r.error_code for r in await _rows(ctl, row.guid)][-1] == 5
    assert await _rows(ctl, paused.guid) == []  # a paused monitor is not watched
    # the newest check is inconclusive; the state is still the failure's
    assert (await ctl.store.last_levels())[row.guid] == UNCONFIRMED
