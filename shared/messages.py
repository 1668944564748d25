"""Payloads of MQTT contract v1. Every message carries `v`; pydantic validates at the edge."""

from __future__ import annotations

import ipaddress
import unicodedata
from typing import TYPE_CHECKING, Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, create_model, field_validator, model_validator
from pydantic_core import to_json

from shared.results import Attribute, Column, Observation, observation_fields

VERSION = 1


class Message(BaseModel):
    model_config = ConfigDict(extra="ignore", frozen=True)
    v: Literal[1] = 1


MAX_ADDRESSES = 16  # per family, per agent
# punctuation allowed in checkpoint and region names besides letters, digits and spaces
NAME_PUNCTUATION = frozenset(" .,_-()'/&+")


def place_name(value: str) -> str:
    """A checkpoint or region name as a hello may carry it (the agent checks its own at start,
    the controller every hello): ValueError says what is wrong."""
    if value != value.strip():
        raise ValueError("must not start or end with white space")
    bad = [ch for ch in value if not (ch.isalnum() or ch in NAME_PUNCTUATION)]
    if bad:
        shown = ", ".join(sorted({repr(ch) for ch in bad})[:5])
        raise ValueError(
            f"letters, digits, spaces and {''.join(sorted(NAME_PUNCTUATION))} only (not {shown})"
        )
    return unicodedata.normalize("NFC", value)


def canonical_addresses(values: list[Any], version: int) -> list[str]:
    """Addresses of one IP version as published: unicast, no scope id, at most MAX_ADDRESSES,
    in canonical form; ValueError names the first that is not."""
    if len(values) > MAX_ADDRESSES:
        raise ValueError(f"at most {MAX_ADDRESSES} addresses")
    canonical: list[str] = []
    for value in values:
        if not isinstance(value, str) or len(value) > 64:
            raise ValueError(f"{value!r} is not an IPv{version} address")
        try:
            address = ipaddress.ip_address(value)
        except ValueError:
            raise ValueError(f"{value!r} is not an IPv{version} address") from None
        if address.version != version:
            raise ValueError(f"{value!r} is not an IPv{version} address")
        if isinstance(address, ipaddress.IPv6Address) and address.scope_id:
            raise ValueError(f"{value!r} has a scope id (link-local names are not published)")
        if address.is_unspecified or address.is_multicast:
            raise ValueError(f"{value!r} is not a unicast address")
        text = str(address)
        if text not in canonical:
            canonical.append(text)
    return canonical


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
    """Slot k of a monitor is at k*interval + offset (epoch seconds). In rotation (Uptrends'
    default) the selected checkpoints take the slots in turn: this agent runs slot k only when
    k mod rotation_count == rotation_position (controller/rotation.py). Agents before rotation
    ignore the two fields and run every slot."""

    interval_seconds: Annotated[int, Field(gt=0)]
    offset_seconds: Annotated[float, Field(ge=0)]
    rotation_position: Annotated[int, Field(ge=0)] = 0
    rotation_count: Annotated[int, Field(ge=1, le=10_000)] = 1

    @model_validator(mode="after")
    def _position_in_rotation(self) -> Schedule:
        if self.rotation_position >= self.rotation_count:
            raise ValueError("rotation_position must be below rotation_count")
        return self


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


class TimeRequest(Message):
    """The controller asks for the agent's clock; the controller keeps its own send time."""

    nonce: Annotated[str, Field(min_length=1, max_length=64)]


class TimeReply(Message):
    """The agent's clock (epoch seconds) when it answered the request with this nonce."""

    nonce: Annotated[str, Field(min_length=1, max_length=64)]
    agent_time: Annotated[float, Field(gt=0, lt=1e11)]


class Ack(Message):
    batch_ids: list[str]


class _CheckOf(Message):
    """Which check a result is (the rest of `CheckResult`: what the probe observed is declared
    in `shared.results.Observation`). Each field says where the controller keeps it."""

    uid: Annotated[str, Column("uid")]
    monitor_guid: Annotated[str, Column("monitor_guid")]
    monitor_revision: Annotated[str, Attribute("MonitorRevision")] = ""
    monitor_type: Annotated[str, Attribute("MonitorType")]
    # epoch seconds of the slot (or the run request), and when the check began
    scheduled_at: Annotated[float, Column("scheduled_us", micros=True)]
    started_at: Annotated[float, Column("ts_us", micros=True)]
    error_description: Annotated[str, Attribute("ErrorDescription")]
    # failed checks only, cut at PICKET_FAILED_BODY_BYTES
    response_body: Annotated[str | None, Column("response_body")] = None
    # JSON text of an object, per type (HTTP: the waterfall; multi-step: the steps): the
    # controller stores it as it is, without building it into Python objects and back
    details: Annotated[str | None, Column("details")] = None
    is_confirmation: Annotated[bool, Attribute("IsConfirmation")] = False
    confirms: Annotated[str | None, Attribute("ConfirmsCheckUid")] = None  # the uid it re-checks

    @field_validator("details", mode="before")
    @classmethod
    def _details_text(cls, value: Any) -> Any:
        """Agents built before details became text (and their outbox files) sent an object."""
        return to_json(value).decode() if isinstance(value, dict) else value


if TYPE_CHECKING:

    class CheckResult(_CheckOf, Observation):
        """One run of one monitor, as the agent saw it. The controller adds ids and ErrorLevel."""

else:
    # the same class at run time: a dataclass base would give pydantic neither the Observation
    # fields' validation nor their default factories, so they are added as pydantic fields
    CheckResult = create_model(
        "CheckResult",
        __base__=_CheckOf,
        __module__=__name__,
        __doc__="One run of one monitor, as the agent saw it. The controller adds ids and "
        "ErrorLevel.",
        **observation_fields(),
    )


class ResultBatch(Message):
    batch_id: str
    agent: str
    results: list[CheckResult]
