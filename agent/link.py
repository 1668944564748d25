"""The agent's side of MQTT contract v1: topics, payload validation, hello and presence."""

from __future__ import annotations

import json
import logging
import time
from typing import Protocol

from pydantic import ValidationError

from agent.metrics import AgentMetrics
from shared import topics
from shared.messages import (
    Ack,
    AgentState,
    Assignment,
    Hello,
    RunRequest,
    Sync,
    TimeReply,
    TimeRequest,
)
from shared.mqtt import Inbound, LastWill, MqttSession
from shared.settings import parse_broker_url

log = logging.getLogger(__name__)


class LinkHandler(Protocol):
    def hello(self) -> Hello: ...
    async def on_connected(self) -> None: ...
    def on_assignment(self, monitor_guid: str, assignment: Assignment | None) -> None: ...
    def on_run(self, request: RunRequest) -> None: ...
    def on_ack(self, ack: Ack) -> None: ...
    def on_sync(self, sync: Sync) -> None: ...


class AgentLink:
    def __init__(
        self,
        broker_url: str,
        agent_id: str,
        handler: LinkHandler,
        metrics: AgentMetrics,
        keepalive: int = 15,
    ) -> None:
        self.agent_id = agent_id
        self._handler = handler
        self._metrics = metrics
        offline = AgentState(state="offline").model_dump_json().encode()
        self.session = MqttSession(
            parse_broker_url(broker_url),
            client_id=f"picket-agent-{agent_id}",
            subscriptions=[
                topics.assignments_of(agent_id),
                topics.run(agent_id),
                topics.ack(agent_id),
                topics.sync(agent_id),
                topics.time_request(agent_id),
            ],
            on_message=self._on_message,
            on_connect=self._on_connect,
            on_disconnect=self._on_disconnect,
            on_drop=lambda reason: metrics.dropped.labels(reason).inc(),
            will=LastWill(topics.state(agent_id), offline),
            # the broker sends the last will after 1.5 x this without a packet from us
            keepalive=keepalive,
        )

    async def run(self) -> None:
        await self.session.run()

    async def _on_connect(self) -> None:
        self._metrics.connected.set(1)
        online = AgentState(state="online").model_dump_json().encode()
        await self.session.publish(topics.state(self.agent_id), online, retain=True)
        # retained, so a controller that starts after the agent still learns of it
        hello = self._handler.hello().model_dump_json().encode()
        await self.session.publish(topics.hello(self.agent_id), hello, retain=True)
        await self._handler.on_connected()

    def _on_disconnect(self) -> None:
        self._metrics.connected.set(0)
        self._metrics.reconnects.inc()

    async def say_offline(self) -> None:
        """A clean shutdown sends no last will, so say it ourselves."""
        offline = AgentState(state="offline").model_dump_json().encode()
        await self.session.publish(topics.state(self.agent_id), offline, retain=True)

    async def publish_results(self, payload: bytes) -> bool:
        return await self.session.publish(topics.results(self.agent_id), payload)

    async def _on_message(self, message: Inbound) -> None:
        levels = topics.split(message.topic)
        # agents/{agent}/monitors/{guid} | agents/{agent}/run | .../ack | .../sync
        kind = levels[2] if len(levels) >= 3 else ""
        try:
            if kind == "monitors" and len(levels) == 4:
                if not message.payload:
                    self._handler.on_assignment(levels[3], None)
                    return
                assignment = Assignment.model_validate_json(message.payload)
                if assignment.monitor_guid != levels[3]:
                    raise ValueError("monitor_guid does not match the topic")
                self._handler.on_assignment(levels[3], assignment)
            elif kind == "run":
                self._handler.on_run(RunRequest.model_validate_json(message.payload))
            elif kind == "ack":
                self._handler.on_ack(Ack.model_validate_json(message.payload))
            elif kind == "time" and len(levels) == 3:
                # the clock is read as the request arrives: the controller halves the round
                # trip around it (controller/clock.py)
                agent_time = time.time()
                request = TimeRequest.model_validate_json(message.payload)
                reply = TimeReply(nonce=request.nonce, agent_time=agent_time)
                await self.session.publish(
                    topics.clock(self.agent_id), reply.model_dump_json().encode()
                )
            elif kind == "sync":
                self._handler.on_sync(Sync.model_validate_json(message.payload))
            else:
                self._metrics.dropped.labels("unknown_topic").inc()
        except (ValidationError, ValueError, json.JSONDecodeError) as exc:
            self._metrics.dropped.labels("malformed").inc()
            log.warning(
                "agent %s: malformed message on %s dropped: %s",
                self.agent_id,
                message.topic,
                str(exc).splitlines()[0],
            )
