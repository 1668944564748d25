from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from typing import Any, ClassVar

from agent.bounds import Bounds
from agent.curl import CurlEngine
from agent.lookup import NameLookups
from shared.errors import DESCRIPTIONS, ErrorCode
from shared.monitors import MonitorBase
from shared.results import Observation


@dataclass(frozen=True)
class ProbeContext:
    curl: CurlEngine
    max_body_bytes: int
    ca_file: str | None = None  # trusted CAs for TLS outside libcurl; None: the system's
    # the worker's bound on checks in flight, shared with `curl` (a worker passes curl.bounds;
    # a context built alone, in tests, gets a bound of its own with the settings' defaults)
    bounds: Bounds = field(default_factory=lambda: Bounds(1000, 256))
    lookups: NameLookups = field(default_factory=NameLookups)  # name lookups with time limits


@dataclass
class Outcome(Observation):
    """What a probe saw: the `Observation` fields of a result (copied into the message as they
    are), and the probe's own values that the agent turns into message fields. A failing target
    is an Outcome with an error code, never an exception."""

    error_code: ErrorCode = ErrorCode.OK  # narrows the Observation's int, in its place (first)
    body: bytes | None = None  # the response body; sent cut, and only for a failure
    details: dict[str, Any] | None = None  # per-type detail (HTTP: headers, waterfall)
    description_override: str = ""  # ErrorDescription, when the code's own words say too little

    @property
    def ok(self) -> bool:
        return self.error_code == ErrorCode.OK

    @property
    def description(self) -> str:
        return self.description_override or DESCRIPTIONS[self.error_code]


def span_ms(marks: dict[str, float], end: str, start: str) -> float:
    """Milliseconds between two perf_counter marks (µs resolution); 0 if either is missing."""
    if end not in marks or start not in marks:
        return 0.0
    return round((marks[end] - marks[start]) * 1000, 3)


class Probe(ABC):
    type_names: ClassVar[tuple[str, ...]] = ()

    def __init__(self, ctx: ProbeContext) -> None:
        self.ctx = ctx

    @abstractmethod
    async def check(self, monitor: MonitorBase) -> Outcome:
        """Run one check. Must not raise for anything the target does."""
