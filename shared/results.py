"""One declaration of a check result's fields, and where the controller keeps each of them.

A result's fields are declared once, in two parts:

- `Observation` (here): what a probe observes, under the names the result message gives them.
  The agent's `Outcome` (agent/probes/base.py) is an `Observation` plus the probe's own working
  values, and the agent copies these fields into the message as they are.
- `CheckResult` (shared/messages.py): the message, i.e. which check it was (ids, times,
  confirmation) plus the `Observation` fields.

Every field names where the controller stores it (`Column`, `Attribute`, `Spread`). Derived
from these declarations: the message's pydantic fields for the `Observation` part
(`observation_fields`), the agent's plain-dict maker (`agent.runner.make_result` copies
`OBSERVED`) and the controller's row builder (`storage_plan`, used by controller/ingest.py). A new
field the probe observes is one line in `Observation`; a new field about the check, one line in
`CheckResult` and the agent code that fills it in.
"""

from __future__ import annotations

import dataclasses
import typing
from dataclasses import dataclass, field
from typing import Any

from pydantic import BaseModel, Field


@dataclass(frozen=True, slots=True)
class Column:
    """Kept in a column of `monitor_check`; `micros`: seconds stored as integer microseconds."""

    name: str
    micros: bool = False


@dataclass(frozen=True, slots=True)
class Attribute:
    """Kept under `name` in the check's JSON attributes document (`omit_empty`: only when the
    value is not empty)."""

    name: str
    omit_empty: bool = False


@dataclass(frozen=True, slots=True)
class Spread:
    """A mapping whose keys join the attributes document (per-type attributes, timings)."""


Stored = Column | Attribute | Spread
STORED = "stored"  # the key of a dataclass field's metadata


def _stored(where: Stored) -> dict[str, Stored]:
    return {STORED: where}


@dataclass
class Observation:
    """What a probe saw of one check. A failing target is an error code, never an exception."""

    error_code: int = field(default=0, metadata=_stored(Column("error_code")))
    error_message: str = field(default="", metadata=_stored(Attribute("ErrorMessage")))
    http_status_code: int | None = field(
        default=None, metadata=_stored(Attribute("HttpStatusCode"))
    )
    total_bytes: int = field(default=0, metadata=_stored(Attribute("TotalBytes")))
    resolved_ip: str = field(default="", metadata=_stored(Attribute("ResolvedIpAddress")))
    # per-type MonitorCheck attributes, e.g. DnsAnswers
    attributes: dict[str, Any] = field(default_factory=dict, metadata=_stored(Spread()))
    # milliseconds per phase, e.g. TotalTime (curl's own timings for HTTP); a timing wins over
    # an attribute of the same name, as it comes later
    timings_ms: dict[str, float] = field(default_factory=dict, metadata=_stored(Spread()))
    # NoError, but worth a look
    warnings: list[str] = field(
        default_factory=list, metadata=_stored(Attribute("Warnings", omit_empty=True))
    )


OBSERVED: tuple[str, ...] = tuple(f.name for f in dataclasses.fields(Observation))


def observation_fields() -> dict[str, Any]:
    """The `Observation` fields as pydantic field definitions (type, default), each annotated
    with where it is stored: what `create_model` takes to give the message these fields."""
    hints = typing.get_type_hints(Observation)
    fields: dict[str, Any] = {}
    for f in dataclasses.fields(Observation):
        # Annotated built at run time (a type checker only reads it written out)
        annotated = typing.cast(Any, typing.Annotated)[hints[f.name], f.metadata[STORED]]
        if f.default_factory is not dataclasses.MISSING:
            fields[f.name] = (annotated, Field(default_factory=f.default_factory))
        else:
            fields[f.name] = (annotated, f.default)
    return fields


@dataclass(frozen=True)
class StoragePlan:
    """A message's fields by where they are kept, in declaration order (`storage_plan`)."""

    columns: tuple[tuple[str, Column], ...]
    attributes: tuple[tuple[str, Attribute], ...]
    spreads: tuple[str, ...]


def storage_plan(model: type[BaseModel]) -> StoragePlan:
    """Where each field of `model` is kept, from the marker in its declaration; every field
    but the message's version `v` must have exactly one."""
    columns: list[tuple[str, Column]] = []
    attributes: list[tuple[str, Attribute]] = []
    spreads: list[str] = []
    for name, info in model.model_fields.items():
        if name == "v":
            continue
        found = [m for m in info.metadata if isinstance(m, Column | Attribute | Spread)]
        if len(found) != 1:
            raise TypeError(f"{model.__name__}.{name} must say once where it is stored: {found}")
        where = found[0]
        if isinstance(where, Column):
            columns.append((name, where))
        elif isinstance(where, Attribute):
            attributes.append((name, where))
        else:
            spreads.append(name)
    return StoragePlan(tuple(columns), tuple(attributes), tuple(spreads))
