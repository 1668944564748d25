"""Payloads of MQTT contract v1. Every message carries `v`; pydantic validates at the edge."""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator
from pydantic_core import to_json

VERSION = 1


class Message(BaseModel):
    model_config = ConfigDict(extra="ignore", frozen=True)
    v: Literal[1] = 1


class Hello(Message):
    agent: str
    checkpoint: Annotated[str, Field(min_length=1, max_length=100)]
    region: Annotated[str, Field(min_length=1, max_length=100)]
    ipv4: list[str] = Field(default_factory=list)
    ipv6: list[str] = Field(default_factory=list)
    version: str = ""
    probe_types: list[str] = Field(default_factory=list)
    capacity: int = 1000


class AgentState(Message):
    state: Literal["online", "offline"]


class Schedule(Message):
    interval_seconds: Annotated[int, Field(gt=0)]
    offset_seconds: Annotated[float, Field(ge=0)]


class Assignment(Message):
    monitor_guid: str
    revision: str
    monitor: dict[str, Any]
    schedule: Schedule


class Sync(Message):
    """The controller's full list of an agent's assignments, sent after every hello."""

    monitors: dict[str, str]  # monitor guid -> revision


class RunRequest(Message):
    monitor_guid: str
    reason: Literal["confirm", "test"] = "confirm"
    confirms: str | None = None  # uid of the failed check to confirm


class Ack(Message):
    batch_ids: list[str]


class CheckResult(Message):
    """One run of one monitor, as the agent saw it. The controller adds ids and ErrorLevel."""

    uid: str
    monitor_guid: str
    monitor_revision: str = ""
    monitor_type: str
    scheduled_at: float  # epoch seconds of the slot (or the run request)
    started_at: float  # epoch seconds when the check began
    error_code: int
    error_description: str
    error_message: str = ""
    http_status_code: int | None = None
    total_bytes: int = 0
    resolved_ip: str = ""
    timings_ms: dict[str, float] = Field(default_factory=dict)
    response_body: str | None = None
    warnings: list[str] = Field(default_factory=list)
    # JSON text of an object, per type (HTTP: the waterfall; multi-step: the steps): the
    # controller stores it as it is, without building it into Python objects and back
    details: str | None = None
    attributes: dict[str, Any] = Field(default_factory=dict)  # per type, e.g. DnsAnswers
    is_confirmation: bool = False
    confirms: str | None = None

    @field_validator("details", mode="before")
    @classmethod
    def _details_text(cls, value: Any) -> Any:
        """Agents built before details became text (and their outbox files) sent an object."""
        return to_json(value).decode() if isinstance(value, dict) else value


class ResultBatch(Message):
    batch_id: str
    agent: str
    results: list[CheckResult]
