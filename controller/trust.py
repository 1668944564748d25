"""How far the controller trusts the agent link: hellos validated like API input, and results
accepted only for monitors placed on the sending agent at the result's scheduled time (or for
a run the controller asked that agent for).

The agent id is the topic's (the broker's ACL binds it to the agent's login), so a result is
checked against that id's assignment history: intervals per (agent, monitor), kept in memory
per agent so the check is two dict lookups and a scan of (usually) one interval.
"""

from __future__ import annotations

import logging
import re
import time
from collections import OrderedDict
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Annotated, Any, Protocol

from pydantic import Field, ValidationError, field_validator

from controller.metrics import ControllerMetrics
from shared import topics
from shared.logs import LogLimit
from shared.messages import (
    MAX_ADDRESSES,
    CheckResult,
    Hello,
    ResultBatch,
    canonical_addresses,
    place_name,
)

log = logging.getLogger(__name__)

MAX_PROBE_TYPES = 64
PROBE_TYPE_PATTERN = re.compile(r"^[A-Za-z][A-Za-z0-9]{0,39}$")
MAX_CAPACITY = 100_000

# the agent's clock against the controller's, and the time an assignment or its removal takes
# to reach the agent: a result scheduled this close outside an interval still belongs to it
CLOCK_GRACE_US = 60_000_000
# requested runs remembered (confirmation re-checks); older ones are forgotten first
MAX_PENDING_RUNS = 100_000
RUN_TTL_SECONDS = 3600.0
MAX_LOGGED_CHARS = 100  # of an agent-chosen name or id in a log line
MAX_EPOCH_SECONDS = 2**62 / 1e6  # times are stored as 64-bit microseconds
REASONS = {
    "bad_time": "its scheduled or start time is not a time",
    "unknown_monitor": "the monitor does not exist (deleted?)",
    "not_assigned": "the monitor was not assigned to this agent at that time",
}


class HelloRefused(ValueError):
    def __init__(self, field: str, reason: str) -> None:
        super().__init__(f"{field}: {reason}")
        self.field = field
        self.reason = reason


def published_addresses(values: list[Any], version: int) -> list[str]:
    """The valid addresses among stored ones, canonical: a row written before hellos were
    validated must not put junk in the public address lists either."""
    kept: list[str] = []
    for value in values[:MAX_ADDRESSES]:
        try:
            kept.extend(canonical_addresses([value], version))
        except ValueError:
            continue
    return list(dict.fromkeys(kept))


class ValidHello(Hello):
    """A hello as the controller accepts it; addresses come out in their canonical form."""

    agent: Annotated[str, Field(min_length=1, max_length=64)]
    version: Annotated[str, Field(max_length=50)] = ""
    capacity: Annotated[int, Field(ge=1, le=MAX_CAPACITY)] = 1000
    probe_types: Annotated[list[str], Field(max_length=MAX_PROBE_TYPES)] = Field(
        default_factory=list
    )

    @field_validator("agent")
    @classmethod
    def _agent(cls, value: str) -> str:
        return topics.agent_id(value)

    @field_validator("checkpoint", "region")
    @classmethod
    def _names(cls, value: str) -> str:
        return place_name(value)

    @field_validator("ipv4")
    @classmethod
    def _ipv4(cls, values: list[str]) -> list[str]:
        return canonical_addresses(values, 4)

    @field_validator("ipv6")
    @classmethod
    def _ipv6(cls, values: list[str]) -> list[str]:
        return canonical_addresses(values, 6)

    @field_validator("version")
    @classmethod
    def _version(cls, value: str) -> str:
        if not value.isprintable():
            raise ValueError("must be printable")
        return value

    @field_validator("probe_types")
    @classmethod
    def _probe_types(cls, values: list[str]) -> list[str]:
        for value in values:
            if not PROBE_TYPE_PATTERN.fullmatch(value):
                raise ValueError(f"{value[:40]!r} is not a monitor type name")
        return sorted(set(values))


def parse_hello(payload: bytes, topic_agent: str) -> Hello:
    """The hello on `topic_agent`'s topic, validated; HelloRefused names the field."""
    try:
        hello = ValidHello.model_validate_json(payload)
    except ValidationError as exc:
        error = exc.errors()[0]
        field = ".".join(str(part) for part in error["loc"][:1]) or "payload"
        if error["type"].startswith("json"):
            field = "payload"
        raise HelloRefused(field, error["msg"]) from None
    if hello.agent != topic_agent:
        raise HelloRefused("agent", f"{hello.agent!r} sent on the topic of {topic_agent!r}")
    return hello


# --- results ------------------------------------------------------------------------------------


@dataclass
class Interval:
    start_us: int
    end_us: int | None  # None: still assigned

    def covers(self, at_us: int) -> bool:
        if at_us < self.start_us - CLOCK_GRACE_US:
            return False
        return self.end_us is None or at_us < self.end_us + CLOCK_GRACE_US


class AssignmentHistory:
    """When each monitor was placed on each agent: agent id -> monitor guid -> intervals."""

    def __init__(self) -> None:
        self._by_agent: dict[str, dict[str, list[Interval]]] = {}

    def load(self, rows: Iterable[tuple[str, str, int, int | None]]) -> None:
        """(monitor guid, agent id, start, end) rows, as the store returns them."""
        self._by_agent = {}
        for guid, agent, start_us, end_us in sorted(rows, key=lambda r: r[2]):
            self._by_agent.setdefault(agent, {}).setdefault(guid, []).append(
                Interval(start_us, end_us)
            )

    def opened(self, guid: str, agent: str, at_us: int) -> None:
        intervals = self._by_agent.setdefault(agent, {}).setdefault(guid, [])
        if not intervals or intervals[-1].end_us is not None:
            intervals.append(Interval(at_us, None))

    def closed(self, guid: str, agent: str, at_us: int) -> None:
        intervals = self._by_agent.get(agent, {}).get(guid, [])
        if intervals and intervals[-1].end_us is None:
            intervals[-1].end_us = at_us

    def forget(self, ended_before_us: int, guid: str | None = None) -> None:
        """Drop the intervals that ended before a time (of one monitor, or all), as the
        store's forget_history does."""
        for agent in list(self._by_agent):
            monitors = self._by_agent[agent]
            for key in [guid] if guid is not None else list(monitors):
                intervals = monitors.get(key)
                if intervals is None:
                    continue
                intervals[:] = [
                    i for i in intervals if i.end_us is None or i.end_us >= ended_before_us
                ]
                if not intervals:
                    del monitors[key]
            if not monitors:
                del self._by_agent[agent]

    def assigned(self, agent: str, guid: str, at_us: int) -> bool:
        intervals = self._by_agent.get(agent, {}).get(guid)
        return intervals is not None and any(i.covers(at_us) for i in intervals)

    def monitors(self) -> set[str]:
        return {guid for monitors in self._by_agent.values() for guid in monitors}


class RequestedRuns:
    """Runs the controller asked agents for (confirmation re-checks), so their results are
    kept even if the monitor moved to another agent meanwhile. Bounded: the oldest go first."""

    def __init__(self, limit: int = MAX_PENDING_RUNS, ttl: float = RUN_TTL_SECONDS) -> None:
        self._runs: OrderedDict[tuple[str, str], tuple[str, float]] = OrderedDict()
        self._limit = limit
        self._ttl = ttl

    def requested(self, agent: str, guid: str, confirms: str | None) -> None:
        if confirms is None:
            return
        self._runs[(agent, confirms)] = (guid, time.monotonic() + self._ttl)
        self._runs.move_to_end((agent, confirms))
        while len(self._runs) > self._limit:
            self._runs.popitem(last=False)

    def answers(self, agent: str, result: CheckResult) -> bool:
        if not result.is_confirmation or result.confirms is None:
            return False
        found = self._runs.get((agent, result.confirms))
        return found is not None and found[0] == result.monitor_guid and found[1] > time.monotonic()


class Placement(Protocol):
    @property
    def monitors(self) -> dict[str, Any]: ...  # guid -> monitor, while it exists


class Acceptance:
    """Which results of a batch the controller stores; the rest are dropped and counted by
    reason (`picket_results_refused_total`)."""

    def __init__(
        self,
        history: AssignmentHistory,
        runs: RequestedRuns,
        placement: Placement,
        metrics: ControllerMetrics,
    ) -> None:
        self.history = history
        self.runs = runs
        self.placement = placement
        self.metrics = metrics
        # one refusal line per (agent, reason) every 10 s; bounded, the topic's agent id being
        # the broker's to bind and a broker that lets anyone publish must not grow it
        self._logged = LogLimit()

    def reason_to_refuse(self, agent: str, result: CheckResult) -> str | None:
        if result.monitor_guid not in self.placement.monitors:
            return "unknown_monitor"
        if not (
            0 <= result.scheduled_at < MAX_EPOCH_SECONDS
            and 0 <= result.started_at < MAX_EPOCH_SECONDS
        ):
            return "bad_time"  # NaN, infinite or beyond what a row can hold: never storable
        if self.history.assigned(agent, result.monitor_guid, int(result.scheduled_at * 1e6)):
            return None
        if self.runs.answers(agent, result):
            return None
        return "not_assigned"

    def admit(self, batches: list[ResultBatch]) -> list[ResultBatch]:
        """The batches with only the results this controller stores. A batch emptied this way
        stays in the list: it is still acknowledged, so the agent stops sending it."""
        admitted: list[ResultBatch] = []
        for batch in batches:
            kept: list[CheckResult] = []
            for result in batch.results:
                reason = self.reason_to_refuse(batch.agent, result)
                if reason is None:
                    kept.append(result)
                    continue
                self.metrics.results_refused.labels(reason).inc()
                self._log_refusal(batch.agent, result, reason)
            if len(kept) == len(batch.results):
                admitted.append(batch)
            else:
                admitted.append(batch.model_copy(update={"results": kept}))
        return admitted

    def _log_refusal(self, agent: str, result: CheckResult, reason: str) -> None:
        """One line per agent and reason every 10 s (shared.logs.LogLimit): a misbehaving agent must
        not flood the log (the metric counts every result)."""
        suppressed = self._logged.allow((agent, reason))
        if suppressed is None:
            return
        # all three are the agent's to choose: %r, so that a forged one cannot forge a line
        log.warning(
            "agent %r: result %r for monitor %r (scheduled %.3f) refused: %s "
            "(%d more like it not logged)",
            agent[:MAX_LOGGED_CHARS],
            result.uid[:MAX_LOGGED_CHARS],
            result.monitor_guid[:MAX_LOGGED_CHARS],
            result.scheduled_at,
            REASONS[reason],
            suppressed,
        )
