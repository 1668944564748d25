"""Incremental placement: a presence change or a hello places again only the monitors it can
move, a restart publishes nothing the broker already holds, and a failed publish is retried by
the reconciler alone. On a real broker and database (SQLite and PostgreSQL); the counts come
from the assigner's own metrics and from the publishes made, never from timing."""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import functools
import json
import time
import uuid
from collections.abc import AsyncIterator
from typing import Any

import pytest
import sqlalchemy as sa

from controller import rotation
from controller.app import Controller
from controller.assigner import Assigner, Published, _merge_write
from controller.db.schema import monitor as monitor_table
from controller.db.store import StoreUnavailable
from shared import monitors
from shared.messages import Assignment, Hello, Sync
from tests.helpers import Mosquitto, controller_parts, http_monitor, wait_for

MONITORS = 1000


@pytest.fixture
async def ctl(database_url: str, mosquitto: Mosquitto, tmp_path: Any) -> AsyncIterator[Controller]:
    async with controller_parts(database_url, mosquitto, tmp_path) as controller:
        yield controller


async def _fleet(ctl: Controller, where: list[tuple[str, str]]) -> list[str]:
    for agent, city in where:
        await ctl.assigner.on_hello(
            Hello(agent=agent, checkpoint=city, region="Loopland", probe_types=["Http"])
        )
        await ctl.assigner.on_state(agent, True)
    return [agent for agent, _city in where]


async def _monitors(ctl: Controller, count: int, **fields: Any) -> list[str]:
    """`count` monitors stored at once, as a controller finds them at its start."""
    model = monitors.model_for("Http")
    assert model is not None
    definition = model.model_validate(
        http_monitor("m", "http://127.0.0.1:9/", CheckIntervalSeconds=60, **fields)
    ).definition()
    now = time.time_ns() // 1000
    prefix = uuid.uuid4().hex[:8]
    rows = [
        {
            "guid": str(uuid.uuid4()),
            "name": f"{prefix}-{i}",
            "monitor_type": "Http",
            "is_active": True,
            "definition": json.dumps(definition | {"Name": f"{prefix}-{i}"}, sort_keys=True),
            "revision": "r1",
            "created_us": now + i,
            "modified_us": now + i,
        }
        for i in range(count)
    ]
    async with ctl.store.engine.begin() as conn:
        await conn.execute(sa.insert(monitor_table), rows)
    await ctl.assigner.load()
    await ctl.assigner.sync_all()
    return [row["guid"] for row in rows]


class Sent:
    """The assignments the bus publishes (to the real broker), recorded on the way."""

    def __init__(self, ctl: Controller, monkeypatch: pytest.MonkeyPatch) -> None:
        self.assigned: list[tuple[str, str]] = []
        self.removed: list[tuple[str, str]] = []
        self.syncs: list[tuple[str, Sync]] = []
        self.fail: set[str] = set()  # monitors whose next publish the broker "does not take"
        assign, sync = ctl.bus.assign, ctl.bus.sync

        async def recording_assign(agent: str, guid: str, assignment: Assignment | None) -> bool:
            if guid in self.fail:
                self.fail.discard(guid)
                return False
            (self.removed if assignment is None else self.assigned).append((agent, guid))
            return await assign(agent, guid, assignment)

        async def recording_sync(agent: str, message: Sync) -> bool:
            self.syncs.append((agent, message))
            return await sync(agent, message)

        monkeypatch.setattr(ctl.bus, "assign", recording_assign)
        monkeypatch.setattr(ctl.bus, "sync", recording_sync)

    def clear(self) -> None:
        self.assigned.clear()
        self.removed.clear()
        self.syncs.clear()


def _placements(ctl: Controller) -> float:
    value = ctl.metrics.registry.get_sample_value("picket_placements_total")
    return value or 0.0


def _placed(ctl: Controller, agents: list[str]) -> dict[str, set[str]]:
    return {agent: ctl.assigner._published.monitors_of(agent) for agent in agents}


async def test_a_presence_change_places_only_the_monitors_that_depend_on_it(
    ctl: Controller, monkeypatch: pytest.MonkeyPatch
) -> None:
    names = await _fleet(ctl, [(f"agent-{i}", "City") for i in range(3)])
    guids = await _monitors(ctl, MONITORS)
    before = _placed(ctl, names)
    assert sum(len(mine) for mine in before.values()) == MONITORS
    assert all(before.values()), "rendezvous spreads the monitors over the three"
    sent = Sent(ctl, monkeypatch)
    lost = names[0]
    own = before[lost]

    counted = _placements(ctl)
    await ctl.assigner.on_state(lost, False)
    # only its own monitors were placed again (none of the others depends on it), they moved
    # to its peers, and nothing else was published
    assert _placements(ctl) - counted == len(own)
    assert sorted(sent.removed) == sorted((lost, guid) for guid in own)
    assert {guid for _agent, guid in sent.assigned} == own
    assert all(agent != lost for agent, _guid in sent.assigned)
    after = _placed(ctl, names)
    assert after[lost] == set()
    for peer in names[1:]:
        assert before[peer] <= after[peer]
    assert after[names[1]] | after[names[2]] == set(guids)

    # its return: the same monitors, and only they, come back
    sent.clear()
    counted = _placements(ctl)
    await ctl.assigner.on_state(lost, True)
    assert _placements(ctl) - counted == len(own)
    assert sorted(sent.assigned) == sorted((lost, guid) for guid in own)
    assert {guid for _agent, guid in sent.removed} == own
    assert _placed(ctl, names) == before
    moved = ctl.metrics.registry.get_sample_value(
        "picket_monitors_moved_total", {"reason": "return"}
    )
    assert moved == len(own)


async def test_a_hello_of_a_known_agent_sends_only_its_own_assignments(
    ctl: Controller, monkeypatch: pytest.MonkeyPatch
) -> None:
    names = await _fleet(ctl, [(f"agent-{i}", "City") for i in range(3)])
    await _monitors(ctl, MONITORS)
    before = _placed(ctl, names)
    sent = Sent(ctl, monkeypatch)
    counted = _placements(ctl)
    await ctl.assigner.on_hello(
        Hello(agent=names[1], checkpoint="City", region="Loopland", probe_types=["Http"])
    )
    assert _placements(ctl) - counted == len(before[names[1]])
    assert sorted(sent.assigned) == sorted((names[1], guid) for guid in before[names[1]])
    assert sent.removed == []
    ((agent, sync),) = sent.syncs
    assert agent == names[1]
    assert set(sync.monitors) == before[names[1]]
    assert _placed(ctl, names) == before


async def test_a_new_server_is_offered_only_the_monitors_that_may_select_it(
    ctl: Controller, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A new server is a candidate event: the monitors that select its checkpoint, its region
    or all are placed again; here only those selecting every checkpoint."""
    await _fleet(ctl, [("a-0", "City A"), ("b-0", "City B")])
    city_a = ctl.assigner.servers["a-0"].checkpoint_id
    only_a = set(await _monitors(ctl, 30, SelectedCheckpoints={"Checkpoints": [city_a]}))
    everywhere = set(await _monitors(ctl, 20))
    sent = Sent(ctl, monkeypatch)
    counted = _placements(ctl)
    await ctl.assigner.on_hello(
        Hello(agent="c-0", checkpoint="City C", region="Loopland", probe_types=["Http"])
    )
    assert _placements(ctl) - counted == len(everywhere)
    # each monitor selecting all checkpoints gets c-0 (its only server), and a rotation of 3
    assert {guid for agent, guid in sent.assigned if agent == "c-0"} == everywhere
    assert {guid for _agent, guid in sent.assigned} == everywhere
    assert all(ctl.assigner._turns[(g, "c-0")].count == 3 for g in everywhere)
    assert not any(ctl.assigner._published.agents_of(g).keys() - {"a-0"} for g in only_a)


async def test_a_restarted_controller_publishes_nothing_the_broker_has(
    ctl: Controller, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Two checkpoints, so the turns are rotations of two; both are stored with the
    assignments, so the new controller knows them."""
    names = await _fleet(ctl, [("a-0", "City A"), ("a-1", "City A"), ("b-0", "City B")])
    await _monitors(ctl, 200)
    published = dict(ctl.assigner._published)
    turns = dict(ctl.assigner._turns)
    assert {turn.count for turn in turns.values()} == {2}
    sent = Sent(ctl, monkeypatch)
    fresh = Assigner(ctl.store, ctl.bus, ctl.metrics)
    await fresh.load()
    assert dict(fresh._published) == published
    assert fresh._turns == turns
    await fresh.sync_all()
    assert (sent.assigned, sent.removed) == ([], [])
    assert {g: fresh.turns(m) for g, m in fresh.monitors.items()} == {
        g: ctl.assigner.turns(m) for g, m in ctl.assigner.monitors.items()
    }
    # one open history interval per assignment, stored
    history = await ctl.store.assignment_history()
    assert sorted((g, a) for g, a, _start, end in history if end is None) == sorted(published)
    # and the restarted one is incremental at once: a presence change moves only its own
    own = fresh._published.monitors_of("a-0")
    counted = _placements(ctl)
    await fresh.on_state("a-0", False)
    assert _placements(ctl) - counted == len(own)
    assert {guid for _agent, guid in sent.removed} == own
    assert fresh._published.monitors_of("a-1") >= own
    assert set(names) >= {agent for agent, _guid in sent.assigned}


async def test_a_failed_publish_is_retried_by_the_reconciler_alone(
    ctl: Controller, monkeypatch: pytest.MonkeyPatch
) -> None:
    names = await _fleet(ctl, [(f"agent-{i}", "City") for i in range(3)])
    guids = await _monitors(ctl, 50)
    sent = Sent(ctl, monkeypatch)
    model = monitors.model_for("Http")
    assert model is not None
    definition = model.model_validate(
        http_monitor("late", "http://127.0.0.1:9/", CheckIntervalSeconds=60)
    ).definition()
    now = time.time_ns() // 1000
    row = ctl.assigner.monitors[guids[0]]
    late = dataclasses.replace(
        row, guid=str(uuid.uuid4()), name="late", definition=definition, created_us=now
    )
    sent.fail.add(late.guid)
    assert await ctl.assigner.save_monitor(late, create=True)
    assert late.guid in ctl.assigner._retry
    assert not ctl.assigner._published.agents_of(late.guid)
    gauge = ctl.metrics.registry.get_sample_value("picket_placement_retry_monitors")
    assert gauge == 1
    counted = _placements(ctl)
    reconciler = asyncio.create_task(ctl.assigner.reconcile_forever(every=0.05))
    try:

        async def placed() -> dict[str, str]:
            return ctl.assigner._published.agents_of(late.guid)

        (agent,) = await wait_for(placed, "the failed publish to be retried")
    finally:
        reconciler.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await reconciler
    assert agent in names
    # the reconciler placed that monitor again, not the fifty others
    assert _placements(ctl) - counted == 1
    assert {guid for _agent, guid in sent.assigned} == {late.guid}
    assert late.guid not in ctl.assigner._retry
    rows = await ctl.store.assignment_rows()
    assert (late.guid, agent, "r1", (0, 1)) in rows


def test_unstored_writes_of_one_assignment_stay_at_two() -> None:
    """While the database is away, an assignment that comes and goes keeps at most two
    writes waiting: a gap is bridged (the history widened, never narrowed)."""
    turn = rotation.Turn(0, 1)
    pending: list[tuple[str | None, int, rotation.Turn | None]] = []
    _merge_write(pending, ("r1", 10, turn))
    _merge_write(pending, ("r2", 20, turn))
    assert pending == [("r2", 10, turn)]
    _merge_write(pending, (None, 30, None))
    assert pending == [("r2", 10, turn), (None, 30, None)]
    _merge_write(pending, ("r3", 40, turn))
    assert pending == [("r3", 10, turn)]
    removal: list[tuple[str | None, int, rotation.Turn | None]] = [(None, 5, None)]
    _merge_write(removal, ("r1", 6, turn))
    assert removal == [("r1", 6, turn)]


def test_published_is_indexed_both_ways() -> None:
    published = Published({("m1", "a"): "r1", ("m1", "b"): "r1", ("m2", "a"): "r2"})
    assert published.monitors_of("a") == {"m1", "m2"}
    assert published.agents_of("m1") == {"a": "r1", "b": "r1"}
    del published[("m1", "a")]
    published[("m2", "a")] = "r3"
    assert published.of_agent("a") == {"m2": "r3"}
    assert len(published) == 2
    assert sorted(published) == [("m1", "b"), ("m2", "a")]
    published.pop(("m1", "b"))
    assert published.monitors_of("b") == set()
    assert published.agents() == ["a"]


async def test_hellos_that_come_together_are_placed_in_one_pass(
    ctl: Controller, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A controller's start reads every agent's retained hello at once: the servers are all
    registered first, then one pass places each monitor once on its final agent (one at a
    time, the first server would be handed every monitor, then give two thirds away)."""
    guids = await _monitors(ctl, MONITORS)  # stored, no server yet: nothing placed
    assert not ctl.assigner._published.monitors()
    sent = Sent(ctl, monkeypatch)
    names = [f"agent-{i}" for i in range(3)]
    for name in names:  # as the bus queues them when they arrive together
        hello = Hello(agent=name, checkpoint="City", region="Loopland", probe_types=["Http"])
        ctl.bus.control.put("hello", name, functools.partial(ctl.bus._hello_burst, hello), hello)
    # put without a pause between them: the bus's own queue runner takes them as one burst
    await wait_for(lambda: _true(len(sent.syncs) == 3), "a Sync to each of the three", 60)
    assert not sent.removed, "nothing placed and taken back"
    assert sorted(guid for _agent, guid in sent.assigned) == sorted(guids), "each monitor once"
    placed = _placed(ctl, names)
    assert all(placed.values())
    for agent, message in sent.syncs:
        assert set(message.monitors) == placed[agent]


async def _true(value: bool) -> bool:
    return value


async def test_a_burst_of_hellos_that_meets_a_database_outage_is_put_back_whole(
    ctl: Controller, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The hellos taken with the first are not lost when the store is away: all of them are
    handled once it is back."""
    seen: list[list[str]] = []
    failures = [StoreUnavailable("away")]

    async def on_hellos(hellos: list[Hello], more: Any = None) -> None:
        seen.append([hello.agent for hello in hellos])
        if failures:
            raise failures.pop()

    monkeypatch.setattr(ctl.bus._handler, "on_hellos", on_hellos)
    for name in ("a", "b", "c"):
        hello = Hello(agent=name, checkpoint="City", region="Loopland", probe_types=["Http"])
        ctl.bus.control.put("hello", name, functools.partial(ctl.bus._hello_burst, hello), hello)
    await wait_for(lambda: _true(len(seen) == 2), "the burst handled again", 30)
    assert seen == [["a", "b", "c"], ["a", "b", "c"]]
