"""The controller's side of MQTT contract v1: hellos, presence and results in; assignments,
acks, run requests and syncs out."""

from __future__ import annotations

import json
import logging
import uuid
from typing import Protocol

from pydantic import ValidationError

from controller.metrics import ControllerMetrics
from controller.trust import HelloRefused, RequestedRuns, parse_hello
from shared import topics
from shared.messages import Ack, AgentState, Assignment, Hello, ResultBatch, RunRequest, Sync
from shared.mqtt import Inbound, MqttSession
from shared.settings import parse_broker_url

log = logging.getLogger(__name__)


class BusHandler(Protocol):
    async def on_connected(self) -> None: ...
    async def on_hello(self, hello: Hello) -> None: ...
    async def on_state(self, agent_id: str, online: bool) -> None: ...
    async def on_results(self, batch: ResultBatch) -> None: ...


class ControllerBus:
    def __init__(self, broker_url: str, handler: BusHandler, metrics: ControllerMetrics) -> None:
        self._handler = handler
        self._metrics = metrics
        self.session = MqttSession(
            parse_broker_url(broker_url),
            client_id=f"picket-controller-{uuid.uuid4().hex[:12]}",
            # states first: after a restart the retained presence must be known before the
            # retained hellos, or a dead agent would look alive for a moment
            subscriptions=[topics.ALL_STATES, topics.ALL_HELLOS, topics.ALL_RESULTS],
            on_message=self._on_message,
            on_connect=handler.on_connected,
            on_drop=lambda reason: metrics.dropped.labels(reason).inc(),
        )
        self.requested_runs = RequestedRuns()  # so their results are accepted (trust.py)

    async def run(self) -> None:
        await self.session.run()

    async def _on_message(self, message: Inbound) -> None:
        levels = topics.split(message.topic)
        try:
            if len(levels) == 3 and levels[0] == "agents" and levels[2] == "hello":
                try:
                    hello = parse_hello(message.payload, levels[1])
                except HelloRefused as exc:
                    self._metrics.hellos_refused.labels(exc.field).inc()
                    log.warning("controller: hello of agent %r refused: %s", levels[1][:64], exc)
                    return
                await self._handler.on_hello(hello)
            elif len(levels) == 3 and levels[0] == "agents" and levels[2] == "state":
                if not message.payload:
                    return  # a retained state being cleared
                state = AgentState.model_validate_json(message.payload)
                await self._handler.on_state(levels[1], state.state == "online")
            elif len(levels) == 2 and levels[0] == "results":
                batch = ResultBatch.model_validate_json(message.payload)
                if batch.agent != levels[1]:
                    raise ValueError(f"results of {batch.agent!r} on the topic of {levels[1]!r}")
                await self._handler.on_results(batch)
            else:
                self._metrics.dropped.labels("unknown_topic").inc()
        except (ValidationError, ValueError, json.JSONDecodeError) as exc:
            self._metrics.dropped.labels("malformed").inc()
            log.warning(
                "controller: malformed message on %s dropped: %s",
                message.topic,
                str(exc).splitlines()[0],
            )

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

    async def sync(self, agent_id: str, sync: Sync) -> bool:
        return await self.session.publish(topics.sync(agent_id), sync.model_dump_json().encode())
