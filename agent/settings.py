from __future__ import annotations

import os
import socket

from pydantic import Field, ValidationInfo, field_validator, model_validator

from agent.canary import parse_canary
from shared import topics
from shared.messages import canonical_addresses, place_name
from shared.settings import BrokerUrl, ListenAddress, PicketSettings, parse_broker_url


def _default_agent_id() -> str:
    name = "".join(ch if ch.isalnum() or ch in "._-" else "-" for ch in socket.gethostname())
    return (name or "agent")[:64]


class AgentSettings(PicketSettings):
    broker_url: BrokerUrl = "mqtt://127.0.0.1:1883"
    agent_id: str = Field(default_factory=_default_agent_id)
    checkpoint: str = "Local"
    region: str = "Local"
    agent_ipv4: str = ""  # comma-separated; empty: the address used to reach the broker
    agent_ipv6: str = ""
    metrics_listen: ListenAddress = "127.0.0.1:9465"
    workers: int = Field(default=0, ge=0, le=256)  # check worker processes; 0: one per CPU
    max_concurrency: int = Field(default=1000, ge=1, le=100_000)
    max_per_host: int = Field(default=256, ge=1, le=100_000)
    ca_file: str = ""  # PEM bundle of trusted CAs; empty: the system's
    max_pending_checks: int = Field(default=4000, ge=1)  # started but unfinished; more: shed
    batch_size: int = Field(default=500, ge=1, le=10_000)
    batch_interval_ms: int = Field(default=200, ge=1, le=60_000)
    ack_timeout_seconds: float = Field(default=10.0, gt=0)
    max_batches_in_flight: int = Field(default=32, ge=1)
    max_body_bytes: int = Field(default=1_048_576, ge=1024)  # kept for content matching
    failed_body_bytes: int = Field(default=65_536, ge=0, le=1_048_576)  # sent with a failure
    # results on disk waiting for the controller; when full the oldest are dropped. 4 GiB:
    # 24 h of 1,200 one-minute HTTP monitors at about 2 KiB a result (docs/operations.md)
    outbox_max_bytes: int = Field(default=4 * 1024**3, ge=1_048_576)
    # results in memory waiting for a disk that refuses writes; when full the oldest go
    outbox_memory_max_bytes: int = Field(default=64 * 1024**2, ge=65_536)

    # an address the agent must always reach (host:port, TCP); a failed check while it does
    # not answer either is inconclusive (agent/canary.py). Empty: no canary
    canary: str = ""
    canary_timeout_seconds: float = Field(default=3.0, gt=0, le=60)
    # MQTT keepalive: the broker publishes the agent's last will (offline) after 1.5 times
    # this without a packet, and the controller moves its monitors to its peers then
    presence_keepalive_seconds: int = Field(default=15, ge=1, le=3600)

    def worker_count(self) -> int:
        return self.workers or len(os.sched_getaffinity(0)) or 1

    @field_validator("outbox_max_bytes")
    @classmethod
    def _outbox_holds_batches(cls, value: int, info: ValidationInfo) -> int:
        message = info.data.get("max_message_bytes", 0)
        if value < 2 * message:
            raise ValueError(f"must be at least twice PICKET_MAX_MESSAGE_BYTES ({message})")
        return value

    @field_validator("ca_file")
    @classmethod
    def _readable_ca_file(cls, value: str) -> str:
        if value and not os.access(value, os.R_OK):  # else every HTTPS check would fail
            raise ValueError(f"{value} is not a readable file")
        return value

    @field_validator("canary")
    @classmethod
    def _canary(cls, value: str) -> str:
        parse_canary(value)
        return value.strip()

    @field_validator("agent_id")
    @classmethod
    def _agent_id(cls, value: str) -> str:
        return topics.agent_id(value)

    @field_validator("checkpoint", "region")
    @classmethod
    def _place_name(cls, value: str) -> str:
        """As the controller checks every hello: a name it would refuse is said here, at
        start, instead of an agent that never comes online."""
        value = value.strip()
        if not value or len(value) > 100:
            raise ValueError("1-100 characters")
        return place_name(value)

    @field_validator("agent_ipv4", "agent_ipv6")
    @classmethod
    def _addresses(cls, value: str, info: ValidationInfo) -> str:
        version = 4 if info.field_name == "agent_ipv4" else 6
        listed = [item.strip() for item in value.split(",") if item.strip()]
        return ",".join(canonical_addresses(listed, version))

    @model_validator(mode="after")
    def _enrolled_identity(self) -> AgentSettings:
        """An enrolled agent (see agent/enrol.py) takes its id, checkpoint, region and broker
        login from <data dir>/identity.json, unless a setting names them; a broker URL given
        without credentials gets the enrolled login."""
        from agent.enrol import read_identity

        identity = read_identity(self.data_dir)
        if identity is None:
            return self
        given = self.model_fields_set
        for name in ("agent_id", "checkpoint", "region"):
            if name not in given:
                setattr(self, name, identity[name])
        if "broker_url" not in given:
            self.broker_url = identity["broker_url"]
        elif parse_broker_url(self.broker_url).username is None:
            enrolled = parse_broker_url(identity["broker_url"])
            from agent.enrol import with_login

            self.broker_url = with_login(
                self.broker_url, enrolled.username or "", enrolled.password or ""
            )
        return self
