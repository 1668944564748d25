from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from typing import Any, ClassVar

from agent.bounds import Bounds
from agent.curl import CurlEngine
from agent.lookup import NameLookups
from shared.errors import DESCRIPTIONS, ErrorCode
from shared.monitors import MonitorBase


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
class Outcome:
    """What a probe saw. A failing target is an Outcome with an error code, never an exception."""

    error_code: ErrorCode = ErrorCode.OK
    error_message: str = ""
    http_status_code: int | None = None
    total_bytes: int = 0
    resolved_ip: str = ""
    timings_ms: dict[str, float] = field(default_factory=dict)
    body: bytes | None = None
    warnings: list[str] = field(default_factory=list)  # NoError, but worth a look
    details: dict[str, Any] | None = None  # per-type detail (HTTP: headers, waterfall)
    attributes: dict[str, Any] = field(default_factory=dict)  # per-type MonitorCheck attributes
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
