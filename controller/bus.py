"""The controller's side of MQTT contract v1: hellos, presence and results in; assignments,
acks, run requests and syncs out.

Messages arrive in order on one connection, so nothing slow is done while reading them: a
result batch is parsed and handed to the ingest queue (which takes it or refuses it at once),
and hellos and presence go to their own queue and task (`ControlQueue`). A backlog of results
never delays a hello, and a hello is never shed.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
import uuid
from collections import OrderedDict
from collections.abc import Awaitable, Callable
from typing import Protocol

from pydantic import ValidationError

from controller.db.store import StoreUnavailable
from controller.metrics import ControllerMetrics
from controller.trust import HelloRefused, RequestedRuns, parse_hello
from shared import topics
from shared.logs import LogLimit
from shared.messages import (
    Ack,
    AgentState,
    Assignment,
    CheckResult,
    Hello,
    ResultBatch,
    RunRequest,
    Sync,
    TimeRequest,
)
from shared.mqtt import Inbound, MqttSession
from shared.settings import parse_broker_url

log = logging.getLogger(__name__)

Work = Callable[[], Awaitable[None]]
MAX_KEY_CHARS = 64  # of an agent-chosen name in a rate-limit key
PUBLISHES_IN_FLIGHT = 64  # QoS 1 publishes awaiting the broker's ack at once


class BusHandler(Protocol):
    async def on_connected(self) -> None: ...
    async def on_hellos(
        self, hellos: list[Hello], more: Callable[[], list[Hello]] | None = None
    ) -> None: ...
    async def on_state(self, agent_id: str, online: bool) -> None: ...
    def on_results(
        self, batch: ResultBatch, size: int, rejects: list[tuple[str, str]] | None = None
    ) -> bool:
        """Queue a batch of `size` bytes, or refuse it (no ack: the agent resends); at once.
        `rejects`: its results that failed validation, as (JSON text, why)."""
        ...


def salvage_batch(payload: bytes) -> tuple[ResultBatch, list[tuple[str, str]]] | None:
    """A result batch whose envelope is valid but some results are not: the valid results, and
    each invalid one as (its JSON text, why), so that the batch can be stored, the rest kept as
    dead letters, and the batch acknowledged instead of being resent forever. None when not
    even the batch's id and agent can be read (then nobody can be told, and it is dropped)."""
    try:
        raw = json.loads(payload)  # the lenient parser: lone surrogates and all
    except ValueError:
        return None
    if not isinstance(raw, dict) or not isinstance(raw.get("results"), list):
        return None
    try:
        shell = ResultBatch.model_validate({**raw, "results": []})
    except ValidationError:
        return None
    good: list[CheckResult] = []
    bad: list[tuple[str, str]] = []
    for item in raw["results"]:
        try:
            good.append(CheckResult.model_validate(item))
        except ValidationError as exc:
            first = exc.errors()[0]
            where = ".".join(str(part) for part in first["loc"]) or "result"
            text = json.dumps(item, ensure_ascii=True, default=repr)
            bad.append((text, f"{where}: {first['msg']}"))
    if not bad:
        return None
    return shell.model_copy(update={"results": good}), bad


class ControlQueue:
    """Hellos and presence, handled one at a time in their own task, in order of arrival.

    Only the newest message of each kind per agent waits (a newer one replaces it), so the
    queue is bounded by the number of agents and nothing is shed that still matters. Work that
    finds the database away is retried with backoff (the store logs the outage once); the
    messages behind it wait. Hellos that wait one after another at the head are handed over
    together (`take_head`): a burst of them, as at a controller's start, is placed in one pass.
    """

    def __init__(self, metrics: ControllerMetrics) -> None:
        self._pending: OrderedDict[tuple[str, str], tuple[Work, object]] = OrderedDict()
        self._wake = asyncio.Event()
        self._metrics = metrics
        metrics.control_pending.set_function(lambda: float(len(self._pending)))

    def put(self, kind: str, agent_id: str, work: Work, item: object = None) -> None:
        self._pending.pop((kind, agent_id), None)
        self._pending[(kind, agent_id)] = (work, item)
        self._wake.set()

    def take_head(self, kind: str) -> list[tuple[tuple[str, str], Work, object]]:
        """The messages of `kind` waiting at the head of the queue, taken out in order."""
        taken = []
        while self._pending and next(iter(self._pending))[0] == kind:
            key, (work, item) = self._pending.popitem(last=False)
            taken.append((key, work, item))
        return taken

    def put_back(self, taken: list[tuple[tuple[str, str], Work, object]]) -> None:
        """Messages taken by `take_head` whose work failed, at the head again in their order
        (unless a newer one of the same agent came meanwhile)."""
        for key, work, item in reversed(taken):
            if key not in self._pending:
                self._pending[key] = (work, item)
                self._pending.move_to_end(key, last=False)

    async def run(self, max_backoff: float = 5.0) -> None:
        delay = 0.5
        while True:
            if not self._pending:
                self._wake.clear()
                await self._wake.wait()
                continue
            key, (work, item) = self._pending.popitem(last=False)
            try:
                await work()
                delay = 0.5
            except StoreUnavailable:
                if key not in self._pending:  # first again, unless a newer one came meanwhile
                    self._pending[key] = (work, item)
                    self._pending.move_to_end(key, last=False)
                await asyncio.sleep(delay)
                delay = min(delay * 2, max_backoff)
            except Exception:
                # a handler bug must not stop the hellos and presence behind it
                log.exception("controller: handling the %s of agent %s failed", key[0], key[1])
                self._metrics.dropped.labels("handler_error").inc()


class ControllerBus:
    def __init__(self, broker_url: str, handler: BusHandler, metrics: ControllerMetrics) -> None:
        self._handler = handler
        self._metrics = metrics
        self.control = ControlQueue(metrics)
        self.session = MqttSession(
            parse_broker_url(broker_url),
            client_id=f"picket-controller-{uuid.uuid4().hex[:12]}",
            # states first: after a restart the retained presence must be known before the
            # retained hellos, or a dead agent would look alive for a moment
            subscriptions=[
                topics.ALL_STATES,
                topics.ALL_HELLOS,
                topics.ALL_RESULTS,
                topics.ALL_CLOCKS,
            ],
            on_message=self._on_message,
            on_connect=handler.on_connected,
            on_drop=lambda reason: metrics.dropped.labels(reason).inc(),
            # the assigner pipelines its publishes (PUBLISH_WINDOW); acks and the rest beside
            max_inflight=PUBLISHES_IN_FLIGHT,
        )
        self.requested_runs = RequestedRuns()  # so their results are accepted (trust.py)
        # answers to clock samples (controller/clock.py): agent, payload, when read
        self.on_clock: Callable[[str, bytes, float], None] | None = None
        self.log_limit = LogLimit()

    async def run(self) -> None:
        async with asyncio.TaskGroup() as tasks:
            tasks.create_task(self.session.run(), name="mqtt")
            tasks.create_task(self.control.run(), name="hellos-and-presence")

    async def _on_message(self, message: Inbound) -> None:
        received = time.time()
        levels = topics.split(message.topic)
        try:
            if len(levels) == 3 and levels[0] == "agents" and levels[2] == "clock":
                if self.on_clock is not None:
                    self.on_clock(levels[1], message.payload, received)
                return
            if len(levels) == 3 and levels[0] == "agents" and levels[2] == "hello":
                try:
                    hello = parse_hello(message.payload, levels[1])
                except HelloRefused as exc:
                    self._metrics.hellos_refused.labels(exc.field).inc()
                    agent = levels[1][:MAX_KEY_CHARS]
                    suppressed = self.log_limit.allow((agent, f"hello:{exc.field}"))
                    if suppressed is not None:
                        log.warning(
                            "controller: hello of agent %r refused: %s "
                            "(%d more like it not logged)",
                            agent,
                            exc,
                            suppressed,
                        )
                    return
                self.control.put("hello", hello.agent, lambda: self._hello_burst(hello), item=hello)
            elif len(levels) == 3 and levels[0] == "agents" and levels[2] == "state":
                if not message.payload:
                    return  # a retained state being cleared
                state = AgentState.model_validate_json(message.payload)
                agent, online = levels[1], state.state == "online"
                self.control.put("state", agent, lambda: self._handler.on_state(agent, online))
            elif len(levels) == 2 and levels[0] == "results":
                rejects: list[tuple[str, str]] = []
                try:
                    batch = ResultBatch.model_validate_json(message.payload)
                except ValidationError:
                    salvaged = salvage_batch(message.payload)
                    if salvaged is None:
                        raise
                    batch, rejects = salvaged
                if batch.agent != levels[1]:
                    raise ValueError(f"results of {batch.agent!r} on the topic of {levels[1]!r}")
                self._handler.on_results(batch, len(message.payload), rejects)
            else:
                self._metrics.dropped.labels("unknown_topic").inc()
        except (ValidationError, ValueError, json.JSONDecodeError) as exc:
            self._metrics.dropped.labels("malformed").inc()
            prefix = "/".join(part[:MAX_KEY_CHARS] for part in levels[:2])
            suppressed = self.log_limit.allow((prefix, "malformed"))
            if suppressed is not None:
                log.warning(
                    "controller: malformed message on %r dropped: %r "
                    "(%d more like it on this topic not logged)",
                    message.topic[:256],
                    (str(exc).splitlines() or [""])[0][:512],
                    suppressed,
                )

    async def _hello_burst(self, first: Hello) -> None:
        """This hello and the hellos waiting right behind it, handled as one; `more` hands the
        handler those that came since (it asks once it may place, after a short settle)."""
        taken = self.control.take_head("hello")

        def more() -> list[Hello]:
            extra = self.control.take_head("hello")
            taken.extend(extra)
            return [item for _key, _work, item in extra if isinstance(item, Hello)]

        hellos = [first, *(item for _key, _work, item in taken if isinstance(item, Hello))]
        try:
            await self._handler.on_hellos(hellos, more)
        except StoreUnavailable:
            self.control.put_back(taken)  # retried after the first, which the queue puts back
            raise

    async def assign(self, agent_id: str, monitor_guid: str, assignment: Assignment | None) -> bool:
        payload = b"" if assignment is None else assignment.model_dump_json().encode()
        return await self.session.publish(
            topics.assignment(agent_id, monitor_guid), payload, retain=True
        )

    async def ack(self, agent_id: str, batch_ids: list[str]) -> bool:
        payload = Ack(batch_ids=batch_ids).model_dump_json().encode()
        return await self.session.publish(topics.ack(agent_id), payload)

    async def run_now(self, agent_id: str, request: RunRequest) -> bool:
        self.requested_runs.requested(agent_id, request.monitor_guid, request.confirms)
        return await self.session.publish(topics.run(agent_id), request.model_dump_json().encode())

    async def time_request(self, agent_id: str, request: TimeRequest) -> bool:
        return await self.session.publish(
            topics.time_request(agent_id), request.model_dump_json().encode()
        )

    async def sync(self, agent_id: str, sync: Sync) -> bool:
        return await self.session.publish(topics.sync(agent_id), sync.model_dump_json().encode())
