"""Rotation and concurrent modes: which checkpoint runs which slot, who confirms an error, and
how partial checks become one concurrent check. The arithmetic alone, then the controller's
parts on a real broker and database (SQLite and PostgreSQL)."""

from __future__ import annotations

import itertools
import time
import uuid
from collections.abc import AsyncIterator
from typing import Any

import pytest
import sqlalchemy as sa

from agent.scheduler import next_slot, rotation_slots
from controller import concurrent, rotation
from controller.app import Controller
from controller.assigner import Assigner
from controller.db.schema import monitor_check
from controller.db.store import MonitorRow, ServerRow
from controller.ingest import Ingest
from shared import monitors
from shared.messages import CheckResult, Hello, ResultBatch, RunRequest, Schedule
from tests.helpers import Mosquitto, controller_parts, http_monitor


def _server(ident: int, checkpoint: int, online: bool = True) -> ServerRow:
    return ServerRow(
        id=ident,
        agent_id=f"agent-{ident}",
        checkpoint_id=checkpoint,
        checkpoint_name=f"cp{checkpoint}",
        region_id=1,
        ipv4=[],
        ipv6=[],
        online=online,
        capacity=1000,
        probe_types=["Http"],
    )


# --- arithmetic -----------------------------------------------------------------------------


@pytest.mark.parametrize("count", [1, 2, 3, 5])
def test_each_slot_is_run_by_exactly_one_position(count: int) -> None:
    interval, offset = 60.0, 17.25
    start = 1_800_000_000.0
    runs: dict[float, list[int]] = {}
    for position in range(count):
        period, phase = rotation_slots(interval, offset, position, count)
        at = next_slot(start, period, phase)
        while at < start + 40 * interval:
            k = rotation.slot_number(at, interval, offset)
            assert rotation.runs_slot(rotation.Turn(position, count), k)
            runs.setdefault(at, []).append(position)
            at += period
    slots = sorted(runs)
    # every slot of the monitor, each by one position, in turn
    assert len(slots) >= 39
    assert all(b - a == pytest.approx(interval) for a, b in itertools.pairwise(slots))
    assert all(len(who) == 1 for who in runs.values())
    order = [runs[s][0] for s in slots]
    assert all((b - a) % count == 1 % count for a, b in itertools.pairwise(order))


def test_slot_numbers_count_from_the_epoch() -> None:
    """A peer taking over (or the agent after a restart) agrees on whose slot it is."""
    period, phase = rotation_slots(30.0, 5.0, 2, 3)
    assert (period, phase) == (90.0, 65.0)
    at = next_slot(1_800_000_001.0, period, phase)
    assert rotation.slot_number(at, 30.0, 5.0) % 3 == 2


def test_schedule_refuses_a_position_outside_the_rotation() -> None:
    with pytest.raises(ValueError, match="rotation_position"):
        Schedule(interval_seconds=60, offset_seconds=0, rotation_position=3, rotation_count=3)
    assert Schedule(interval_seconds=60, offset_seconds=0).rotation_count == 1


def test_turns_skip_checkpoints_without_a_live_server() -> None:
    chosen = {3: _server(30, 3), 1: _server(10, 1), 2: _server(20, 2, online=False)}
    assert rotation.turns(chosen, {}) == {
        "agent-10": rotation.Turn(0, 2),
        "agent-30": rotation.Turn(1, 2),
    }
    # with none live every checkpoint keeps a turn, waiting
    dead = {cp: _server(cp, cp, online=False) for cp in (1, 2)}
    assert rotation.turns(dead, {}) == {
        "agent-1": rotation.Turn(0, 2),
        "agent-2": rotation.Turn(1, 2),
    }
    # concurrent: every checkpoint every slot
    assert set(rotation.turns(chosen, {"UseConcurrentMonitoring": True}).values()) == {
        rotation.EVERY_SLOT
    }


def test_confirmation_comes_from_the_next_live_other_checkpoint() -> None:
    servers = {s.agent_id: s for s in (_server(1, 1), _server(2, 2), _server(3, 3), _server(4, 1))}
    placed = {
        "agent-1": rotation.Turn(0, 3),
        "agent-2": rotation.Turn(1, 3),
        "agent-3": rotation.Turn(2, 3),
    }
    assert rotation.confirmer("agent-1", placed, servers) == "agent-2"
    assert rotation.confirmer("agent-3", placed, servers) == "agent-1"
    servers["agent-2"] = _server(2, 2, online=False)
    assert rotation.confirmer("agent-1", placed, servers) == "agent-3"
    # alone in its selection (another server of the same checkpoint does not count): itself
    assert rotation.confirmer("agent-1", {"agent-1": rotation.Turn(0, 1)}, servers) == "agent-1"


def test_concurrent_levels_by_threshold() -> None:
    assert concurrent.level_of(0, 4, 50, 75) == concurrent.NO_ERROR
    assert concurrent.level_of(1, 4, 50, 75) == concurrent.NO_ERROR
    assert concurrent.level_of(2, 4, 50, 75) == concurrent.UNCONFIRMED
    assert concurrent.level_of(3, 4, 50, 75) == concurrent.CONFIRMED
    assert concurrent.level_of(1, 3, 34, 100) == concurrent.NO_ERROR  # 33.3 % < 34 %


def test_a_missing_partial_is_counted_after_the_bound_not_waited_for() -> None:
    gatherer = concurrent.Gatherer(wait_seconds=5)

    def slot() -> concurrent.Slot:
        return concurrent.Slot("m", 1_000_000, 3, 50, 75, deadline=100.0)

    def partial(agent: str, code: int) -> concurrent.Partial:
        return concurrent.Partial(agent, uuid.uuid4().hex, code, "failed" if code else "OK", 10.0)

    assert gatherer.add(("m", 1_000_000), partial("a", 0), slot) is None
    assert gatherer.add(("m", 1_000_000), partial("b", 110), slot) is None
    assert gatherer.due(now=99.0) == []
    (decided,) = gatherer.due(now=100.0)
    row, level = concurrent.row_of(decided)
    assert level == concurrent.NO_ERROR  # 1 of 3 failed: 33 %, below 50 %
    assert row["attributes"]["MissingPartialChecks"] == 1
    assert row["attributes"]["FailedPartialChecks"] == 1
    # a partial arriving after the decision decides nothing again
    assert gatherer.add(("m", 1_000_000), partial("c", 110), slot) is None
    assert len(gatherer) == 0

    # a checkpoint without a live server is not waited for, but stays in the denominator
    def half_live() -> concurrent.Slot:
        return concurrent.Slot("m", 2_000_000, 3, 50, 75, deadline=200.0, awaited=2)

    assert gatherer.add(("m", 2_000_000), partial("a", 110), half_live) is None
    decided = gatherer.add(("m", 2_000_000), partial("b", 110), half_live)
    assert decided is not None
    row, level = concurrent.row_of(decided)
    assert level == concurrent.UNCONFIRMED  # 2 of 3: 67 %, below 75 %
    assert row["attributes"]["MissingPartialChecks"] == 1


# --- the controller's parts -----------------------------------------------------------------


@pytest.fixture
async def ctl(database_url: str, mosquitto: Mosquitto, tmp_path: Any) -> AsyncIterator[Controller]:
    """A controller's parts on a real broker and database, without its API."""
    async with controller_parts(database_url, mosquitto, tmp_path) as controller:
        yield controller


async def _fleet(ctl: Controller, count: int) -> list[str]:
    names = [f"agent-{i}" for i in range(count)]
    for i, name in enumerate(names):
        await ctl.assigner.on_hello(
            Hello(agent=name, checkpoint=f"City {i}", region="Loopland", probe_types=["Http"])
        )
    return names


async def _monitor(ctl: Controller, name: str = "m", **fields: Any) -> MonitorRow:
    model = monitors.model_for("Http")
    assert model is not None
    definition = model.model_validate(
        http_monitor(name, "http://127.0.0.1:9/", CheckIntervalSeconds=60, **fields)
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


async def test_rotation_turns_follow_liveness(ctl: Controller) -> None:
    names = await _fleet(ctl, 3)
    row = await _monitor(ctl)
    turns = ctl.assigner.turns(row)
    assert sorted(t.position for t in turns.values()) == [0, 1, 2]
    assert {t.count for t in turns.values()} == {3}
    published = ctl.assigner.assignment(row, turns[names[1]]).schedule
    assert (published.rotation_position, published.rotation_count) == (
        turns[names[1]].position,
        3,
    )
    # a checkpoint whose only server is gone: no turn and no assignment; the rest close up
    await ctl.assigner.on_state(names[1], False)
    after = ctl.assigner.turns(row)
    assert set(after) == {names[0], names[2]}
    assert sorted(t.position for t in after.values()) == [0, 1]
    assert ctl.assigner._turns[(row.guid, names[2])].count == 2
    assert (row.guid, names[1]) not in ctl.assigner._published


async def test_an_error_is_confirmed_from_another_checkpoint(
    ctl: Controller, monkeypatch: pytest.MonkeyPatch
) -> None:
    names = await _fleet(ctl, 3)
    row = await _monitor(ctl)
    sent: list[tuple[str, RunRequest]] = []
    original = ctl.bus.run_now

    async def run_now(agent: str, request: RunRequest) -> bool:
        sent.append((agent, request))
        return await original(agent, request)

    monkeypatch.setattr(ctl.bus, "run_now", run_now)
    failed = _result(row.guid, time.time(), code=110)
    batch = ResultBatch(batch_id="b1", agent=names[0], results=[failed])
    await ctl.ingest.process([batch])
    ((target, request),) = sent
    assert target != names[0] and target in names
    assert request.confirms == failed.uid
    # the other agent's confirmation is accepted (the controller asked it) and confirms
    confirmation = _result(
        row.guid, time.time(), code=110, is_confirmation=True, confirms=failed.uid
    )
    await ctl.ingest.process([ResultBatch(batch_id="b2", agent=target, results=[confirmation])])
    levels = await _levels(ctl, [failed.uid, confirmation.uid])
    assert levels == {failed.uid: 1, confirmation.uid: 2}
    sample = ctl.metrics.registry.get_sample_value(
        "picket_confirmations_total", {"outcome": "confirmed", "where": "other_checkpoint"}
    )
    assert sample == 1


async def _levels(ctl: Controller, uids: list[str]) -> dict[str, int]:
    c = monitor_check.c
    async with ctl.store.engine.connect() as conn:
        rows = await conn.execute(sa.select(c.uid, c.error_level).where(c.uid.in_(uids)))
        return {r.uid: r.error_level for r in rows}


async def test_concurrent_partials_make_one_concurrent_check(ctl: Controller) -> None:
    names = await _fleet(ctl, 4)
    row = await _monitor(
        ctl,
        UseConcurrentMonitoring=True,
        ConcurrentUnconfirmedErrorThreshold=25,
        ConcurrentConfirmedErrorThreshold=75,
    )
    assert set(ctl.assigner.turns(row).values()) == {rotation.EVERY_SLOT}
    slot = float(int(time.time()))
    partials = [_result(row.guid, slot, code=110 if i < 2 else 0) for i in range(4)]
    for name, partial in zip(names, partials, strict=True):
        await ctl.ingest.process(
            [ResultBatch(batch_id=uuid.uuid4().hex, agent=name, results=[partial])]
        )
    c = monitor_check.c
    async with ctl.store.engine.connect() as conn:
        rows = (
            await conn.execute(
                sa.select(c.check_kind, c.error_level).where(c.monitor_guid == row.guid)
            )
        ).all()
    kinds = sorted((r.check_kind, r.error_level) for r in rows)
    # four partials with their own levels, one concurrent check: 2 of 4 failed = Unconfirmed
    assert kinds == [(1, 0), (1, 0), (1, 1), (1, 1), (2, 1)]
    assert ctl.ingest.levels[row.guid] == 1
    concurrent_row = await ctl.store.checks_page(row.guid, None, None, 0, True, None, 10)
    assert [r.kind for r in concurrent_row] == [2]
    found = await ctl.store.partial_checks(concurrent_row[0], 600_000_000)
    assert sorted(p.uid for p in found) == sorted(p.uid for p in partials)


async def test_a_slot_being_gathered_survives_a_controller_restart(ctl: Controller) -> None:
    names = await _fleet(ctl, 3)
    row = await _monitor(ctl, UseConcurrentMonitoring=True)
    slot = float(int(time.time()))
    partials = [_result(row.guid, slot, code=110) for _ in names]
    for name, partial in list(zip(names, partials, strict=True))[:2]:
        await ctl.ingest.process(
            [ResultBatch(batch_id=uuid.uuid4().hex, agent=name, results=[partial])]
        )
    assert len(ctl.ingest.gatherer) == 1
    # a new controller process: its ingest gathers the stored partials of the open slot again
    restarted = Ingest(ctl.store, ctl.bus, ctl.assigner, ctl.metrics, 65_536, 10)
    await restarted.load()
    assert len(restarted.gatherer) == 1
    await restarted.process(
        [ResultBatch(batch_id=uuid.uuid4().hex, agent=names[2], results=[partials[2]])]
    )
    (check,) = await ctl.store.checks_page(row.guid, None, None, 0, True, None, 10)
    assert (check.kind, check.error_level, check.attributes["PartialChecks"]) == (2, 2, 3)
    # and a third start finds the slot decided
    again = Ingest(ctl.store, ctl.bus, ctl.assigner, ctl.metrics, 65_536, 10)
    await again.load()
    assert len(again.gatherer) == 0


async def test_turns_are_the_same_after_a_controller_restart(ctl: Controller) -> None:
    await _fleet(ctl, 3)
    row = await _monitor(ctl)
    before = ctl.assigner.turns(row)
    fresh = Assigner(ctl.store, ctl.bus, ctl.metrics)
    await fresh.load()
    assert fresh.turns(fresh.monitors[row.guid]) == before


def test_concurrent_thresholds_are_percentages_in_order() -> None:
    model = monitors.model_for("Http")
    assert model is not None
    base = http_monitor("m", "http://127.0.0.1:9/", UseConcurrentMonitoring=True)
    for fields in (
        {"ConcurrentUnconfirmedErrorThreshold": 0},
        {"ConcurrentConfirmedErrorThreshold": 101},
        {"ConcurrentUnconfirmedErrorThreshold": 60, "ConcurrentConfirmedErrorThreshold": 50},
    ):
        with pytest.raises(ValueError) as caught:
            model.model_validate(base | fields)
        assert "Threshold" in str(caught.value)
    ok = model.model_validate(base | {"ConcurrentConfirmedErrorThreshold": 50}).definition()
    assert (ok["ConcurrentUnconfirmedErrorThreshold"], ok["UsePrimaryCheckpointsOnly"]) == (
        50,
        False,
    )


async def test_a_peer_in_the_same_checkpoint_takes_over_the_turn(ctl: Controller) -> None:
    """Failover within a checkpoint keeps the turn: the peer runs the slots the lost server
    would have run, and no other checkpoint's slots move."""
    for name, city in (("a-0", "City A"), ("a-1", "City A"), ("b-0", "City B")):
        await ctl.assigner.on_hello(
            Hello(agent=name, checkpoint=city, region="Loopland", probe_types=["Http"])
        )
    row = await _monitor(ctl)
    before = ctl.assigner.turns(row)
    (lost,) = [agent for agent in before if agent.startswith("a-")]
    peer = "a-1" if lost == "a-0" else "a-0"
    await ctl.assigner.on_state(lost, False)
    after = ctl.assigner.turns(row)
    assert after == {peer: before[lost], "b-0": before["b-0"]}
    schedule = ctl.assigner.assignment(row, after[peer]).schedule
    assert (schedule.rotation_position, schedule.rotation_count) == (before[lost].position, 2)


async def test_primary_checkpoints_only_follows_the_checkpoints_flag(ctl: Controller) -> None:
    names = await _fleet(ctl, 3)
    everywhere = await _monitor(ctl)
    primary_only = (await _monitor(ctl, "p", UsePrimaryCheckpointsOnly=True)).guid
    secondary = ctl.assigner.servers[names[1]].checkpoint_id
    await ctl.store.update_checkpoint(secondary, None, False)
    await ctl.assigner.checkpoint_primary(secondary, False)
    assert set(ctl.assigner.turns(ctl.assigner.monitors[primary_only])) == {names[0], names[2]}
    assert set(ctl.assigner.turns(everywhere)) == set(names)
    assert (primary_only, names[1]) not in ctl.assigner._published
    # a controller started later reads the flag from the database
    await ctl.assigner.load()
    assert not ctl.assigner.servers[names[1]].is_primary_checkpoint
    await ctl.assigner.checkpoint_primary(secondary, True)
    assert set(ctl.assigner.turns(ctl.assigner.monitors[primary_only])) == set(names)


async def test_a_confirmation_whose_agent_goes_offline_is_asked_again_at_once(
    ctl: Controller, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The agent asked to confirm goes offline before answering: the confirmation is asked
    of the next confirmer at once, not after CONFIRMATION_WAIT_SECONDS (300 s); with no agent
    left that can run it, it is given up and counted."""
    names = await _fleet(ctl, 3)
    row = await _monitor(ctl)
    sent: list[tuple[str, RunRequest]] = []
    original = ctl.bus.run_now

    async def run_now(agent: str, request: RunRequest) -> bool:
        sent.append((agent, request))
        return await original(agent, request)

    monkeypatch.setattr(ctl.bus, "run_now", run_now)
    failed = _result(row.guid, time.time(), code=110)
    await ctl.ingest.process([ResultBatch(batch_id="b1", agent=names[0], results=[failed])])
    ((first, _),) = sent
    assert first != names[0]
    await ctl.on_state(first, False)
    assert len(sent) == 2
    second, request = sent[1]
    assert second not in (first, names[0]) and request.confirms == failed.uid
    # its answer is accepted (the controller asked it) and confirms the error
    answer = _result(row.guid, time.time(), code=110, is_confirmation=True, confirms=failed.uid)
    await ctl.ingest.process([ResultBatch(batch_id="b2", agent=second, results=[answer])])
    assert await _levels(ctl, [failed.uid, answer.uid]) == {failed.uid: 1, answer.uid: 2}
    assert row.guid not in ctl.ingest.confirming

    # a new error; its confirmer goes, then the only other one: the agent that saw it
    # confirms itself (no other checkpoint is live); when it goes too, given up and counted
    await ctl.on_state(first, True)
    recovered = _result(row.guid, time.time() + 1)
    again = _result(row.guid, time.time() + 2, code=110)
    for batch_id, result in (("b3", recovered), ("b4", again)):
        await ctl.ingest.process([ResultBatch(batch_id=batch_id, agent=names[0], results=[result])])
    assert len(sent) == 3
    asked = sent[-1][0]
    other = next(n for n in names if n not in (names[0], asked))
    await ctl.on_state(asked, False)
    assert sent[-1][0] == other
    await ctl.on_state(other, False)
    assert sent[-1] == (names[0], RunRequest(monitor_guid=row.guid, confirms=again.uid))
    await ctl.on_state(names[0], False)
    assert row.guid not in ctl.ingest.confirming
    abandoned = ctl.metrics.registry.get_sample_value(
        "picket_confirmations_total", {"outcome": "abandoned", "where": "none"}
    )
    assert abandoned == 1
