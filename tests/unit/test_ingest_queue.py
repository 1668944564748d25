"""The controller's ingest queue and dead letters, through a real Mosquitto and a real database
(SQLite and PostgreSQL); the test plays the agent with its own MQTT client."""

from __future__ import annotations

import asyncio
import contextlib
import json
import uuid
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiomqtt

from controller.app import Controller
from controller.db.store import MonitorRow, Store
from controller.settings import ControllerSettings
from shared import topics
from shared.messages import AgentState, CheckResult, Hello, ResultBatch
from tests.helpers import Mosquitto, wait_for
from tests.postgres import private_cluster

MONITOR = "22222222-2222-4222-8222-222222222222"
AGENT = "a1"


def _result(started: float, **extra: Any) -> CheckResult:
    fields: dict[str, Any] = {
        "uid": uuid.uuid4().hex,
        "monitor_guid": MONITOR,
        "monitor_type": "Http",
        "scheduled_at": started,
        "started_at": started,
        "error_code": 0,
        "error_description": "OK",
    }
    return CheckResult(**{**fields, **extra})


def _batch(*results: CheckResult) -> ResultBatch:
    return ResultBatch(batch_id=uuid.uuid4().hex, agent=AGENT, results=list(results))


class FakeAgentLink:
    """The agent's end of the broker: publishes result batches, collects the acks."""

    def __init__(self, client: aiomqtt.Client) -> None:
        self.client = client
        self.acked: set[str] = set()

    async def read(self) -> None:
        async for message in self.client.messages:
            assert isinstance(message.payload, bytes)
            self.acked.update(json.loads(message.payload)["batch_ids"])

    async def send(self, payload: bytes | ResultBatch) -> None:
        if isinstance(payload, ResultBatch):
            payload = payload.model_dump_json().encode()
        await self.client.publish(topics.results(AGENT), payload, qos=1)


@contextlib.asynccontextmanager
async def _agent_link(broker: Mosquitto) -> AsyncIterator[FakeAgentLink]:
    async with aiomqtt.Client("127.0.0.1", broker.port, identifier="fake-agent") as client:
        await client.subscribe(topics.ack(AGENT), qos=1)
        link = FakeAgentLink(client)
        reader = asyncio.create_task(link.read())
        try:
            yield link
        finally:
            reader.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await reader


@contextlib.asynccontextmanager
async def _controller(
    database_url: str, broker: Mosquitto, tmp_path: Path, **settings: Any
) -> AsyncIterator[Controller]:
    """A controller's bus (hellos, presence, results in) running; its ingest is not started."""
    store = await Store.open(database_url)
    ctl = Controller(
        ControllerSettings(data_dir=tmp_path, broker_url=broker.url, **settings), store
    )
    await ctl.assigner.load()
    await ctl.ingest.load()
    # MONITOR exists and is placed on AGENT, which sends these results (controller/trust.py)
    ctl.assigner.monitors[MONITOR] = MonitorRow(MONITOR, "m", "Http", True, {}, "r1", 0, 0)
    ctl.assigner.history.opened(MONITOR, AGENT, 0)
    bus = asyncio.create_task(ctl.bus.run())
    try:
        await wait_for(lambda: _true(ctl.bus.session.connected.is_set()), "the bus to connect")
        yield ctl
    finally:
        bus.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await bus
        await store.close()


async def _true(value: bool) -> bool:
    return value


def _metric(ctl: Controller, name: str, **labels: str) -> float:
    return ctl.metrics.registry.get_sample_value(name, labels) or 0.0


async def _stored_uids(ctl: Controller) -> list[str]:
    rows = await ctl.store.checks_page(MONITOR, None, None, 0, False, None, 1000)
    return [r.uid for r in rows]


async def test_a_full_queue_refuses_a_batch_and_its_resend_is_stored_while_hellos_go_on(
    database_url: str, mosquitto: Mosquitto, tmp_path: Path
) -> None:
    batches = [
        _batch(*(_result(1000.0 + 10 * n + i, response_body="x" * 400) for i in range(5)))
        for n in range(3)
    ]
    size = len(batches[0].model_dump_json())
    limit = 2 * size + size // 2  # two batches fit, the third does not
    async with (
        _controller(database_url, mosquitto, tmp_path, ingest_queue_max_bytes=limit) as ctl,
        _agent_link(mosquitto) as agent,
    ):
        # nothing stores results yet: they back up in the queue
        for batch in batches:
            await agent.send(batch)
        await agent.send(batches[0])  # a resend of a batch still queued

        async def refused() -> bool:
            return (
                _metric(ctl, "picket_result_batches_refused_total", reason="queue_full") == 1
                and _metric(ctl, "picket_result_batches_refused_total", reason="already_queued")
                == 1
            )

        await wait_for(refused, "one batch refused as the queue is full, one resend as queued")
        assert _metric(ctl, "picket_ingest_queue_batches") == 2
        assert 2 * size <= _metric(ctl, "picket_ingest_queue_bytes") <= limit

        # a hello is handled while the results wait
        hello = Hello(
            agent="a2", checkpoint="Elsewhere", region="Loopland", ipv4=["127.0.0.2"]
        ).model_dump_json()
        await agent.client.publish(topics.hello("a2"), hello.encode(), qos=1)
        server = await wait_for(lambda: ctl.store.server_by_agent("a2"), "the hello to register")
        assert server.checkpoint_name == "Elsewhere"
        assert _metric(ctl, "picket_ingest_queue_batches") == 2 and not agent.acked

        ingest = asyncio.create_task(ctl.ingest.run())
        try:
            first_two = {batches[0].batch_id, batches[1].batch_id}
            await wait_for(lambda: _true(agent.acked >= first_two), "the queued batches' acks")
            assert batches[2].batch_id not in agent.acked  # refused: never acknowledged
            # the agent resends it after its ack timeout; now there is room
            await agent.send(batches[2])
            await wait_for(lambda: _true(batches[2].batch_id in agent.acked), "the resend's ack")
        finally:
            ingest.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await ingest
        stored = await _stored_uids(ctl)
        assert sorted(stored) == sorted(r.uid for b in batches for r in b.results)
        assert _metric(ctl, "picket_ingest_queue_bytes") == 0
        assert _metric(ctl, "picket_ingest_queue_batches") == 0


async def test_results_the_database_refuses_become_dead_letters_and_are_acknowledged(
    database_url: str, mosquitto: Mosquitto, tmp_path: Path
) -> None:
    good = _result(2000.0)
    # an error code beyond any integer column (an impossible *time* is refused earlier, as
    # not a time: controller/trust.py)
    beyond_any_integer = _result(2001.5, error_code=2**70)
    bad = [beyond_any_integer]
    if database_url.startswith("postgresql"):
        bad.append(_result(2001.0, uid="nul\x00in-uid"))  # PostgreSQL text cannot hold NUL
    batch = _batch(good, *bad)
    payload = batch.model_dump(mode="json")
    # a result that fails validation: the rest of its batch is still stored
    not_a_result = {**_result(2002.0).model_dump(mode="json"), "error_code": "not a number"}
    payload["results"].append(not_a_result)
    async with (
        _controller(database_url, mosquitto, tmp_path, ingest_attempts=2) as ctl,
        _agent_link(mosquitto) as agent,
    ):
        ingest = asyncio.create_task(ctl.ingest.run())
        try:
            await agent.send(json.dumps(payload).encode())
            await wait_for(lambda: _true(batch.batch_id in agent.acked), "the batch's ack")
            # the agent's window is free: the next batch is stored and acknowledged as usual
            after = _batch(_result(2003.0))
            await agent.send(after)
            await wait_for(lambda: _true(after.batch_id in agent.acked), "the next batch's ack")
        finally:
            ingest.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await ingest
        assert sorted(await _stored_uids(ctl)) == sorted([good.uid, after.results[0].uid])
        letters = await ctl.store.dead_letters()
        assert len(letters) == len(bad) + 1
        assert _metric(ctl, "picket_results_dead_lettered_total") == len(bad) + 1
        by_uid = {letter["result_uid"]: letter for letter in letters}
        assert {letter["batch_id"] for letter in letters} == {batch.batch_id}
        assert all(letter["agent_id"] == AGENT for letter in letters)
        refused = by_uid[beyond_any_integer.uid]
        assert refused["attempts"] == 2 and refused["monitor_guid"] == MONITOR
        assert "range" in refused["reason"] or "too large" in refused["reason"], refused
        assert json.loads(refused["payload"])["error_code"] == 2**70
        invalid = by_uid[not_a_result["uid"]]
        assert invalid["reason"].startswith("invalid: error_code"), invalid
        assert json.loads(invalid["payload"])["error_code"] == "not a number"
        if len(bad) > 1:
            assert "0x00" in by_uid["nul\\x00in-uid"]["reason"]


async def test_a_hello_during_a_database_outage_is_kept_and_handled_when_it_returns(
    mosquitto: Mosquitto, tmp_path: Path
) -> None:
    with private_cluster() as cluster:
        url = await cluster.create_database("hello")
        async with (
            _controller(url, mosquitto, tmp_path) as ctl,
            _agent_link(mosquitto) as agent,
        ):
            await asyncio.to_thread(cluster.stop)
            for n in range(3):  # the newest hello of an agent is the one that counts
                hello = Hello(agent="a3", checkpoint=f"Place {n}", region="Loopland")
                await agent.client.publish(topics.hello("a3"), hello.model_dump_json().encode())
            # a presence message behind them: once it waits too, every hello has arrived
            online = AgentState(state="online").model_dump_json().encode()
            await agent.client.publish(topics.state("a4"), online)
            await wait_for(
                lambda: _true(_metric(ctl, "picket_control_messages_pending") == 2),
                "the newest hello and the presence to wait for the database",
            )
            await asyncio.to_thread(cluster.start)
            server = await wait_for(lambda: ctl.store.server_by_agent("a3"), "the hello")
            assert server.checkpoint_name == "Place 2"
            assert [c["name"] for c in await ctl.store.checkpoints()] == ["Place 2"]
