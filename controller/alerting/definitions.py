"""Alert definitions as alerting reads them: for a monitor, the active definitions that apply
to it (it is a member, or a member of a monitor group that is; the All Monitors group holds
every monitor), each with its four escalation levels, their operators, operator groups and
integrations.

`AlertDefinitions` keeps one snapshot of every active definition, loaded in a few queries and
read without the database. It is reloaded when the alerting revision in the database has
moved: every change to definitions, to monitor group members, and every deletion that cascades
into definitions raises it in its own transaction (controller/db/store.py), so a change made
through another controller is seen too. The revision is read at most once per
`check_seconds`; a change made through this controller's API is seen at once (`invalidate`).

Operator groups are not expanded here: who is in a group, on duty and reachable is read when a
notification is addressed (controller/duty.py).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import defaultdict
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any

from controller.db.store import Store

log = logging.getLogger(__name__)

ALERT_ON_ERROR_COUNT = "AlertOnErrorCount"
ALERT_ON_ERROR_DURATION = "AlertOnErrorDuration"
MODES = (ALERT_ON_ERROR_COUNT, ALERT_ON_ERROR_DURATION)
LEVELS = (1, 2, 3, 4)  # Uptrends' escalation levels: every definition has all four
CHECK_SECONDS = 1.0  # how stale a change made through another controller may be seen


@dataclass(frozen=True)
class LevelIntegration:
    integration_guid: str
    is_active: bool
    send_ok_alerts: bool
    send_reminder_alerts: bool
    # the level's values of the integration's variables, over the integration's own
    variable_values: Mapping[str, str]
    extra_email_addresses: tuple[str, ...]  # Email integrations: beside the level's operators


@dataclass(frozen=True)
class Level:
    id: int  # 1 ... 4
    is_active: bool
    mode: str  # ALERT_ON_ERROR_COUNT or ALERT_ON_ERROR_DURATION
    threshold_error_count: int  # confirmed errors in a row (AlertOnErrorCount)
    threshold_minutes: int  # minutes in error (AlertOnErrorDuration)
    number_of_reminders: int
    reminder_delay_minutes: int
    message: str
    operators: tuple[str, ...]
    operator_groups: tuple[str, ...]
    integrations: tuple[LevelIntegration, ...]  # active or not (see `active_integrations`)

    @property
    def active_integrations(self) -> tuple[LevelIntegration, ...]:
        return tuple(i for i in self.integrations if i.is_active)


@dataclass(frozen=True)
class Definition:
    guid: str
    name: str
    levels: tuple[Level, ...]  # all four, by id
    monitors: frozenset[str]  # direct members
    groups: frozenset[str]  # monitor groups that are members
    all_monitors: bool  # the All Monitors group is a member

    @property
    def active_levels(self) -> tuple[Level, ...]:
        return tuple(level for level in self.levels if level.is_active)

    def level(self, level_id: int) -> Level:
        return self.levels[level_id - 1]


@dataclass(frozen=True)
class Snapshot:
    revision: int
    definitions: tuple[Definition, ...]  # active ones, as created
    # monitor guid -> indexes into `definitions` (direct members and members of groups)
    by_monitor: Mapping[str, tuple[int, ...]] = field(default_factory=dict)
    for_all: tuple[int, ...] = ()  # definitions with the All Monitors group

    def for_monitor(self, monitor_guid: str) -> tuple[Definition, ...]:
        wanted = set(self.by_monitor.get(monitor_guid, ())) | set(self.for_all)
        return tuple(self.definitions[i] for i in sorted(wanted))


def build(revision: int, tables: dict[str, list[dict[str, Any]]]) -> Snapshot:
    """A snapshot from Store.alerting_snapshot()'s tables."""
    per_level: dict[tuple[str, int], dict[str, list[Any]]] = defaultdict(
        lambda: {"operators": [], "operator_groups": [], "integrations": []}
    )
    for row in tables["operators"]:
        per_level[row["definition_guid"], row["level"]]["operators"].append(row["operator_guid"])
    for row in tables["operator_groups"]:
        per_level[row["definition_guid"], row["level"]]["operator_groups"].append(row["group_guid"])
    for row in tables["integrations"]:
        per_level[row["definition_guid"], row["level"]]["integrations"].append(
            LevelIntegration(
                integration_guid=row["integration_guid"],
                is_active=bool(row["is_active"]),
                send_ok_alerts=bool(row["send_ok_alerts"]),
                send_reminder_alerts=bool(row["send_reminder_alerts"]),
                variable_values=MappingProxyType(dict(row["variable_values"])),
                extra_email_addresses=tuple(row["extra_email_addresses"]),
            )
        )
    levels: dict[str, dict[int, Level]] = defaultdict(dict)
    for row in tables["levels"]:
        key = (row["definition_guid"], row["level"])
        hanging = per_level[key]
        levels[row["definition_guid"]][row["level"]] = Level(
            id=row["level"],
            is_active=bool(row["is_active"]),
            mode=row["mode"],
            threshold_error_count=row["threshold_error_count"],
            threshold_minutes=row["threshold_minutes"],
            number_of_reminders=row["number_of_reminders"],
            reminder_delay_minutes=row["reminder_delay"],
            message=row["message"],
            operators=tuple(hanging["operators"]),
            operator_groups=tuple(hanging["operator_groups"]),
            integrations=tuple(hanging["integrations"]),
        )
    monitors: dict[str, set[str]] = defaultdict(set)
    for row in tables["monitors"]:
        monitors[row["definition_guid"]].add(row["monitor_guid"])
    groups: dict[str, set[str]] = defaultdict(set)
    with_all: set[str] = set()
    for row in tables["groups"]:
        groups[row["definition_guid"]].add(row["group_guid"])
        if row["is_all"]:
            with_all.add(row["definition_guid"])
    group_members: dict[str, set[str]] = defaultdict(set)
    for row in tables["group_members"]:
        group_members[row["group_guid"]].add(row["monitor_guid"])

    definitions: list[Definition] = []
    by_monitor: dict[str, set[int]] = defaultdict(set)
    for_all: list[int] = []
    for row in tables["definitions"]:
        guid = row["guid"]
        found = levels.get(guid, {})
        if sorted(found) != list(LEVELS):  # written by every create: a bug if not
            log.error("alert definition %s has levels %s, not 1-4: ignored", guid, sorted(found))
            continue
        index = len(definitions)
        definitions.append(
            Definition(
                guid=guid,
                name=row["name"],
                levels=tuple(found[n] for n in LEVELS),
                monitors=frozenset(monitors[guid]),
                groups=frozenset(groups[guid]),
                all_monitors=guid in with_all,
            )
        )
        if guid in with_all:
            for_all.append(index)
        for monitor_guid in monitors[guid]:
            by_monitor[monitor_guid].add(index)
        for group_guid in groups[guid]:
            for monitor_guid in group_members[group_guid]:
                by_monitor[monitor_guid].add(index)
    return Snapshot(
        revision=revision,
        definitions=tuple(definitions),
        by_monitor=MappingProxyType({k: tuple(sorted(v)) for k, v in by_monitor.items()}),
        for_all=tuple(for_all),
    )


class AlertDefinitions:
    """The cached snapshot. `for_monitor` is what the evaluator calls per result; it touches
    the database only to read the revision (at most once per `check_seconds`) and to reload
    after a change. Database errors (StoreUnavailable) reach the caller."""

    def __init__(
        self,
        store: Store,
        check_seconds: float = CHECK_SECONDS,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.store = store
        self.check_seconds = check_seconds
        self.clock = clock
        self.loads = 0  # snapshots loaded (tests and metrics read it)
        self._snapshot: Snapshot | None = None
        self._checked = 0.0
        self._generation = 0  # raised by invalidate(): a load begun before it is not kept
        self._lock = asyncio.Lock()

    def invalidate(self) -> None:
        """Reload at the next look (called after a change made through this controller)."""
        self._snapshot = None
        self._generation += 1

    async def snapshot(self) -> Snapshot:
        now = self.clock()
        current = self._snapshot
        if current is not None and now - self._checked < self.check_seconds:
            return current
        async with self._lock:  # one reload at a time; the others wait for it
            current = self._snapshot
            if current is not None and self.clock() - self._checked < self.check_seconds:
                return current
            generation = self._generation
            if current is not None and await self.store.alerting_revision() == current.revision:
                if self._generation == generation:
                    self._checked = self.clock()
                return current
            revision, tables = await self.store.alerting_snapshot()
            fresh = build(revision, tables)
            self.loads += 1
            log.debug(
                "alert definitions loaded: %d active, revision %d",
                len(fresh.definitions),
                revision,
            )
            if self._generation == generation:  # not invalidated while loading
                self._snapshot = fresh
                self._checked = self.clock()
            return fresh

    async def for_monitor(self, monitor_guid: str) -> tuple[Definition, ...]:
        """The active definitions that apply to the monitor (which must exist: every
        definition with the All Monitors group applies to any guid), in creation order."""
        return (await self.snapshot()).for_monitor(monitor_guid.lower())
