"""The controller trusts the agent link only as far as it must: results only from the agent a
monitor was placed on at the result's scheduled time (or for a run the controller asked for),
nothing left of a deleted monitor, and hellos validated like API input. Real broker, real
database (SQLite and PostgreSQL)."""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import time
import uuid
from collections.abc import AsyncIterator
from typing import Any

import pytest
import sqlalchemy as sa

from controller.app import Controller
from controller.db.schema import assignment, assignment_history, monitor_check, server
from controller.db.store import MonitorRow, Store
from controller.ingest import Ingest
from controller.trust import HelloRefused, parse_hello
from shared import monitors
from shared.messages import CheckResult, Hello, ResultBatch
from tests.helpers import Mosquitto, controller_parts, http_monitor, wait_for


@pytest.fixture
async def ctl(database_url: str, mosquitto: Mosquitto, tmp_path: Any) -> AsyncIterator[Controller]:
    """A controller's parts on a real broker and database, without its API."""
    async with controller_parts(database_url, mosquitto, tmp_path) as controller:
        yield controller


async def _agents(ctl: Controller, *names: str) -> None:
    for name in names:
        await ctl.assigner.on_hello(
            Hello(agent=name, checkpoint="Local", region="Local", probe_types=["Http"])
        )


async def _monitor(ctl: Controller, name: str = "m") -> MonitorRow:
    model = monitors.model_for("Http")
    assert model is not None
    definition = model.model_validate(http_monitor(name, "http://127.0.0.1:9/")).definition()
    row = MonitorRow(
        guid=str(uuid.uuid4()),
        name=name,
        monitor_type="Http",
        is_active=True,
        definition=definition,
        revision="r1",
        created_us=time.time_ns() // 1000,
        modified_us=time.time_ns() // 1000,
    )
    assert await ctl.assigner.save_monitor(row, create=True)
    return row


def _result(guid: str, scheduled: float, code: int = 0, **extra: Any) -> CheckResult:
    return CheckResult(
        uid=uuid.uuid4().hex,
        monitor_guid=guid,
        monitor_type="Http",
        scheduled_at=scheduled,
        started_at=scheduled,
        error_code=code,
        error_description="",
        **extra,
    )


async def _store(ingest: Ingest, agent: str, *results: CheckResult) -> set[str]:
    """Ingest one batch from `agent`; the uids stored."""
    await ingest.process([ResultBatch(batch_id=uuid.uuid4().hex, agent=agent, results=results)])
    async with ingest.store.engine.connect() as conn:
        rows = await conn.execute(
            sa.select(monitor_check.c.uid).where(monitor_check.c.uid.in_([r.uid for r in results]))
        )
        return {r.uid for r in rows}


def _refused(ctl: Controller, reason: str) -> float:
    value = ctl.metrics.registry.get_sample_value(
        "picket_results_refused_total", {"reason": reason}
    )
    return value or 0.0


async def test_results_are_accepted_only_from_the_agent_assigned_at_their_time(
    ctl: Controller,
) -> None:
    await _agents(ctl, "agent-a", "agent-b")
    row = await _monitor(ctl)
    (first,) = ctl.assigner.placement(row)
    other = ({"agent-a", "agent-b"} - {first}).pop()
    before_failover = time.time()

    # the other agent never had the monitor: its result is dropped and counted
    stray = _result(row.guid, time.time())
    assert await _store(ctl.ingest, other, stray) == set()
    assert _refused(ctl, "not_assigned") == 1
    # a result for a monitor that does not exist is dropped too
    unknown = _result(str(uuid.uuid4()), time.time())
    assert await _store(ctl.ingest, first, unknown) == set()
    assert _refused(ctl, "unknown_monitor") == 1

    # failover: the first agent goes away and the monitor moves to the other
    await ctl.assigner.on_state(first, False)
    assert ctl.assigner.placement(row) == {other}
    assert await wait_for(
        lambda: _published_to(ctl.assigner.store, row.guid), "the monitor to move"
    ) == {other}
    # the first agent's outbox is delivered late: its results from before the failover count
    late = _result(row.guid, before_failover)
    fresh = _result(row.guid, time.time())
    assert await _store(ctl.ingest, first, late) == {late.uid}
    assert await _store(ctl.ingest, other, fresh) == {fresh.uid}
    # but not what it claims to have run long after it lost the monitor
    after = _result(row.guid, time.time() + 600)
    assert await _store(ctl.ingest, first, after) == set()
    assert _refused(ctl, "not_assigned") == 2


async def _published_to(store: Store, guid: str) -> set[str]:
    async with store.engine.connect() as conn:
        rows = await conn.execute(
            sa.select(assignment.c.agent_id).where(assignment.c.monitor_guid == guid)
        )
        return {r.agent_id for r in rows}


async def test_a_confirmation_run_the_controller_asked_for_is_accepted(ctl: Controller) -> None:
    await _agents(ctl, "agent-a", "agent-b")
    row = await _monitor(ctl)
    (first,) = ctl.assigner.placement(row)
    other = ({"agent-a", "agent-b"} - {first}).pop()
    failed = _result(row.guid, time.time(), code=110)
    assert await _store(ctl.ingest, first, failed) == {failed.uid}  # asks `first` to re-check
    # the monitor moves away before the re-check runs, and the agent runs it much later
    await ctl.assigner.on_state(first, False)
    await wait_for(lambda: _published_to(ctl.store, row.guid), "the monitor to move")
    later = time.time() + 600
    recheck = _result(row.guid, later, code=110, is_confirmation=True, confirms=failed.uid)
    assert await _store(ctl.ingest, first, recheck) == {recheck.uid}
    # a "confirmation" nobody asked for is not
    forged = _result(row.guid, later, code=110, is_confirmation=True, confirms=uuid.uuid4().hex)
    assert await _store(ctl.ingest, first, forged) == set()
    # nor a re-check sent by another agent than the one asked (and never assigned)
    stolen = _result(row.guid, later, code=110, is_confirmation=True, confirms=failed.uid)
    assert await _store(ctl.ingest, "agent-c", stolen) == set()
    # the agent the monitor moved to is, of course, trusted with it
    current = _result(row.guid, time.time())
    assert await _store(ctl.ingest, other, current) == {current.uid}


async def test_assignment_history_survives_a_restart(ctl: Controller) -> None:
    await _agents(ctl, "agent-a", "agent-b")
    row = await _monitor(ctl)
    (first,) = ctl.assigner.placement(row)
    before_failover = time.time()
    await ctl.assigner.on_state(first, False)
    await wait_for(lambda: _published_to(ctl.store, row.guid), "the monitor to move")
    restarted = Controller(ctl.settings, ctl.store)
    await restarted.assigner.load()
    late = _result(row.guid, before_failover)
    assert await _store(restarted.ingest, first, late) == {late.uid}


async def test_deleting_a_monitor_leaves_no_rows(ctl: Controller) -> None:
    await _agents(ctl, "agent-a")
    row = await _monitor(ctl)
    keep = await _monitor(ctl, "kept")
    now = time.time()
    many = [_result(row.guid, now + i / 1000) for i in range(2500)]
    assert len(await _store(ctl.ingest, "agent-a", *many)) == 2500
    kept = _result(keep.guid, now)
    assert await _store(ctl.ingest, "agent-a", kept) == {kept.uid}
    ctl.retention.batch_rows = 1000
    assert await ctl.assigner.delete_monitor(row.guid)
    # the checks go in batches, by the controller's retention task
    task = asyncio.create_task(ctl.retention.run())
    try:

        async def gone() -> bool:
            async with ctl.store.engine.connect() as conn:
                left = await conn.scalar(
                    sa.select(sa.func.count())
                    .select_from(monitor_check)
                    .where(monitor_check.c.monitor_guid == row.guid)
                )
            return left == 0

        await wait_for(gone, "the deleted monitor's checks to be deleted")
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
    assert await _published_to(ctl.store, row.guid) == set()
    samples = ctl.metrics.registry.get_sample_value
    assert samples("picket_retention_deleted_rows_total", {"reason": "monitor_deleted"}) == 2500
    assert (samples("picket_retention_batches_total") or 0) >= 3
    # a result arriving afterwards (an outbox replay) is dropped, not stored as an orphan
    replay = _result(row.guid, now - 1)
    assert await _store(ctl.ingest, "agent-a", replay) == set()
    assert _refused(ctl, "unknown_monitor") == 1
    # the other monitor's check is untouched
    rows = await ctl.store.checks_page(keep.guid, None, None, 0, False, None, 10)
    assert [r.uid for r in rows] == [kept.uid]
    # the history of the deleted monitor goes once no late commit can need it
    await ctl.retention.run_once(now_us=time.time_ns() // 1000 + 3600 * 1_000_000)
    async with ctl.store.engine.connect() as conn:
        history = await conn.scalar(
            sa.select(sa.func.count())
            .select_from(assignment_history)
            .where(assignment_history.c.monitor_guid == row.guid)
        )
    assert history == 0


# --- hellos -------------------------------------------------------------------------------------


def _hello(**fields: Any) -> bytes:
    base: dict[str, Any] = {
        "v": 1,
        "agent": "agent-a",
        "checkpoint": "Local",
        "region": "Local",
        "ipv4": ["127.0.0.1"],
        "ipv6": ["::1"],
        "probe_types": ["Http"],
        "capacity": 1000,
    }
    base.update(fields)
    return json.dumps(base).encode()


def test_a_valid_hello_is_stored_in_canonical_form() -> None:
    hello = parse_hello(
        _hello(ipv6=["2001:DB8:0:0::1", "2001:db8::1"], ipv4=["192.0.2.10"]), "agent-a"
    )
    assert hello.ipv6 == ["2001:db8::1"]
    assert hello.ipv4 == ["192.0.2.10"]
    assert parse_hello(_hello(checkpoint="São Paulo (2)"), "agent-a").checkpoint == "São Paulo (2)"


@pytest.mark.parametrize(
    ("fields", "field"),
    [
        ({"ipv4": ["not-an-address"]}, "ipv4"),
        ({"ipv4": ["::1"]}, "ipv4"),
        ({"ipv4": ["010.1.1.1"]}, "ipv4"),
        ({"ipv4": ["0.0.0.0"]}, "ipv4"),
        ({"ipv4": ["<script>alert(1)</script>"]}, "ipv4"),
        ({"ipv4": [f"10.0.0.{i}" for i in range(17)]}, "ipv4"),
        ({"ipv6": ["127.0.0.1"]}, "ipv6"),
        ({"ipv6": ["fe80::1%eth0"]}, "ipv6"),
        ({"capacity": 0}, "capacity"),
        ({"capacity": 10**9}, "capacity"),
        ({"checkpoint": "x" * 101}, "checkpoint"),
        ({"checkpoint": "Local\n2026-01-01 forged log line"}, "checkpoint"),
        ({"region": "<b>Europe</b>"}, "region"),
        ({"region": " Europe"}, "region"),
        ({"agent": "agent-b"}, "agent"),
        ({"agent": "a/b"}, "agent"),
        ({"version": "v" * 51}, "version"),
        ({"probe_types": ["Http"] * 65}, "probe_types"),
        ({"probe_types": ["Http; DROP"]}, "probe_types"),
    ],
)
def test_an_invalid_hello_is_refused_naming_the_field(fields: dict[str, Any], field: str) -> None:
    with pytest.raises(HelloRefused) as caught:
        parse_hello(_hello(**fields), "agent-a")
    assert caught.value.field == field


async def test_an_invalid_hello_never_reaches_the_address_lists(
    ctl: Controller, mosquitto: Mosquitto
) -> None:
    """Through the broker, as an agent would send it: refused, counted, not registered."""
    import aiomqtt

    async with aiomqtt.Client("127.0.0.1", mosquitto.port) as client:
        await client.publish(
            "picket/v1/agents/agent-x/hello",
            _hello(agent="agent-x", ipv4=["203.0.113.7", "evil.example"]),
            qos=1,
        )
        await client.publish(
            "picket/v1/agents/agent-y/hello",
            _hello(agent="agent-y", ipv6=["2001:DB8::0:7"]),
            qos=1,
        )

    async def registered() -> bool:
        return await ctl.store.server_by_agent("agent-y") is not None

    await wait_for(registered, "the valid hello to register its agent")
    assert await ctl.store.server_by_agent("agent-x") is None
    addresses = {a for s in await ctl.store.servers() for a in s.ipv4 + s.ipv6}
    assert addresses == {"127.0.0.1", "2001:db8::7"}
    refused = ctl.metrics.registry.get_sample_value(
        "picket_hellos_refused_total", {"field": "ipv4"}
    )
    assert refused == 1


async def test_addresses_stored_before_validation_are_not_published(ctl: Controller) -> None:
    await _agents(ctl, "agent-old")
    async with ctl.store.engine.begin() as conn:
        await conn.execute(
            sa.update(server)
            .where(server.c.agent_id == "agent-old")
            .values(
                ipv4=json.dumps(["198.51.100.1", "<img src=x>", "1.2.3"]),
                ipv6=json.dumps(["2001:DB8::1", "nope"]),
            )
        )
    (srv,) = await ctl.store.servers()
    assert srv.ipv4 == ["198.51.100.1"] and srv.ipv6 == ["2001:db8::1"]


async def test_the_migration_keeps_what_is_assigned_today(database_url: str) -> None:
    """A database of the previous schema: its current assignments become open intervals that
    began at the epoch, so an upgrade refuses no result of an agent that has its monitor."""
    from alembic import command
    from alembic.config import Config
    from sqlalchemy.ext.asyncio import create_async_engine

    from controller.db import migrate

    def upgrade_to(revision: str) -> Any:
        def run(connection: Any) -> None:
            config = Config()
            config.set_main_option("script_location", str(migrate.MIGRATIONS))
            config.attributes["connection"] = connection
            command.upgrade(config, revision)

        return run

    engine = create_async_engine(database_url)
    try:
        async with engine.begin() as conn:
            await conn.run_sync(upgrade_to("0002"))
            await conn.execute(
                sa.text(
                    "INSERT INTO assignment (monitor_guid, agent_id, revision) "
                    "VALUES ('m-1', 'agent-a', 'r1')"
                )
            )
        async with engine.begin() as conn:
            await conn.run_sync(upgrade_to("head"))
    finally:
        await engine.dispose()
    store = await Store.open(database_url)
    try:
        assert await store.assignment_history() == [("m-1", "agent-a", 0, None)]
    finally:
        await store.close()


async def test_a_result_with_an_impossible_time_is_refused_not_retried(ctl: Controller) -> None:
    """NaN or a time beyond 64-bit microseconds could never be stored: dropped and counted,
    instead of failing the transaction of every batch it travels with."""
    await _agents(ctl, "agent-a")
    row = await _monitor(ctl)
    good = _result(row.guid, time.time())
    bad = [
        _result(row.guid, float("nan")),
        _result(row.guid, time.time()).model_copy(update={"started_at": float("inf")}),
        _result(row.guid, 1e300),
        _result(row.guid, -5.0),
    ]
    assert await _store(ctl.ingest, "agent-a", good, *bad) == {good.uid}
    assert _refused(ctl, "bad_time") == 4


@pytest.mark.parametrize(
    ("env", "value"),
    [
        ("PICKET_CHECKPOINT", "Amsterdam #1"),
        ("PICKET_REGION", "x" * 101),
        ("PICKET_AGENT_IPV4", "garbage"),
        ("PICKET_AGENT_IPV6", "fe80::1%eth0"),
        ("PICKET_AGENT_IPV4", ",".join(f"10.0.0.{i}" for i in range(17))),
    ],
)
def test_an_agent_refuses_at_start_what_its_hello_would_be_refused_for(
    env: str, value: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The controller's hello rules hold for the agent's own settings: a name or address it
    would refuse is a settings error at start, not an agent that never comes online."""
    from pydantic import ValidationError

    from agent.settings import AgentSettings

    monkeypatch.setenv(env, value)
    with pytest.raises(ValidationError) as caught:
        AgentSettings()
    assert caught.value.errors()[0]["loc"] == (env.removeprefix("PICKET_").lower(),)
    monkeypatch.delenv(env)
    settings = AgentSettings(checkpoint=" São Paulo (2) ", agent_ipv6="2001:DB8::1")
    assert settings.checkpoint == "São Paulo (2)" and settings.agent_ipv6 == "2001:db8::1"


async def test_refusal_log_memory_is_bounded(ctl: Controller) -> None:
    """Results refused from ever new agent ids (a broker that lets anyone publish) do not grow
    the memory of who was logged last without end."""
    from shared.logs import MAX_LOGGED_KEYS

    acceptance = ctl.assigner.acceptance
    for index in range(MAX_LOGGED_KEYS + 50):
        batch = ResultBatch(
            batch_id=uuid.uuid4().hex,
            agent=f"stray-{index}",
            results=[_result(str(uuid.uuid4()), time.time())],
        )
        assert acceptance.admit([batch])[0].results == []
    assert len(acceptance._logged) <= MAX_LOGGED_KEYS
    assert _refused(ctl, "unknown_monitor") == MAX_LOGGED_KEYS + 50


async def test_a_forged_id_cannot_forge_a_log_line(
    ctl: Controller, caplog: pytest.LogCaptureFixture
) -> None:
    """The agent chooses its results' uid and monitor guid: a line break in them is escaped
    in the refusal's log line, not a second line that looks like the controller's own."""
    forged = "x\n2026-12-01 00:00:00 WARNING controller: all is well"
    batch = ResultBatch(
        batch_id=uuid.uuid4().hex,
        agent="stray",
        results=[_result(forged, time.time()).model_copy(update={"uid": forged})],
    )
    caplog.set_level(logging.WARNING, logger="controller.trust")
    assert ctl.assigner.acceptance.admit([batch])[0].results == []
    lines = [r.getMessage() for r in caplog.records if "refused" in r.getMessage()]
    assert len(lines) == 1
    assert "\n" not in lines[0]
    assert repr(forged) in lines[0]
