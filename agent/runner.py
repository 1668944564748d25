"""A check worker's share of the monitors: on their slots, through the probes, into results.

One `Runner` lives in each check worker process (`agent.worker`). It trusts what it is given:
the main process has validated every assignment already.
"""

from __future__ import annotations

import asyncio
import codecs
import contextlib
import gc
import logging
import operator
import random
import time
import traceback
from collections.abc import Collection, Coroutine
from typing import Any

from pydantic import ValidationError
from pydantic_core import to_json

from agent import probes
from agent.canary import Canary, make_inconclusive
from agent.curl import CurlEngine
from agent.lookup import NameLookups
from agent.metrics import CheckMetrics
from agent.probes.base import Outcome, Probe, ProbeContext
from agent.scheduler import Scheduled, Scheduler, rotation_slots
from agent.scrub import scrub_outcome
from agent.settings import AgentSettings
from shared import maintenance, monitors
from shared.errors import ErrorCode
from shared.maintenance import DISABLE_MONITORING
from shared.messages import Assignment
from shared.results import OBSERVED
from shared.secrets import Scrubber, validation_summary

log = logging.getLogger(__name__)

FREEZE_AFTER_SECONDS = 2.0


class Unrunnable(ValueError):
    """An assignment this agent cannot run; `reason` is the metric label."""

    def __init__(self, reason: str, message: str) -> None:
        super().__init__(message)
        self.reason = reason


def monitor_of(assignment: Assignment, runnable: Collection[str]) -> monitors.MonitorBase:
    """The typed monitor of an assignment, or Unrunnable."""
    kind = str(assignment.monitor.get("MonitorType", ""))
    model = monitors.model_for(kind)
    if model is None or kind not in runnable:
        raise Unrunnable("unsupported_type", f"type {kind!r} is not one this agent can run")
    try:
        return model.model_validate(assignment.monitor)
    except ValidationError as exc:  # its own text quotes the input: secrets
        raise Unrunnable("malformed", validation_summary(exc)) from None
    except ValueError as exc:
        raise Unrunnable("malformed", str(exc)) from None


class Runner:
    def __init__(
        self,
        settings: AgentSettings,
        curl: CurlEngine,
        metrics: CheckMetrics,
        name: str,
        max_pending: int,
    ) -> None:
        self.settings = settings
        self.name = name  # "agent-id/worker-n", for the logs
        self.metrics = metrics
        self.context = ProbeContext(
            curl=curl,
            max_body_bytes=settings.max_body_bytes,
            ca_file=settings.ca_file or None,
            bounds=curl.bounds,  # one bound for every probe type
            lookups=NameLookups(),
        )
        self.probes: dict[str, Probe] = probes.build(self.context)
        self.max_pending = max_pending  # started but unfinished checks; more: shed
        self.canary = (
            Canary(settings.canary, settings.canary_timeout_seconds, name)
            if settings.canary
            else None
        )
        behind = metrics.slots_skipped.labels("behind")
        self.scheduler = Scheduler(self._start_scheduled, behind.inc)
        self._skipped_overlap = metrics.slots_skipped.labels("overlap")
        self._skipped_maintenance = metrics.slots_skipped.labels("maintenance")
        self.results: list[dict[str, Any]] = []
        self._checks: set[asyncio.Task[None]] = set()
        # one check of a monitor at a time: the monitors with a check running, the slots each
        # skipped meanwhile (told on its next result), a confirmation asked for meanwhile
        self._running: set[str] = set()
        self._overlapped: dict[str, int] = {}
        self._confirm_after: dict[str, str] = {}
        self._heap_changed = asyncio.Event()
        self._shed_logged = 0.0
        metrics.watch_checks(lambda: len(self._checks))

    # --- assignments ------------------------------------------------------------------------

    def assign(self, assignment: Assignment) -> None:
        guid = assignment.monitor_guid
        try:
            monitor = monitor_of(assignment, self.probes)
        except Unrunnable as exc:  # the main process checked it: only a version skew gets here
            log.error("%s: monitor %s not runnable: %s", self.name, guid, exc)
            return
        schedule = assignment.schedule
        # in rotation the agent's own slots are every rotation_count-th of the monitor's
        interval, offset = rotation_slots(
            float(schedule.interval_seconds),
            schedule.offset_seconds,
            schedule.rotation_position,
            schedule.rotation_count,
        )
        # the monitor's secret values, scrubbed from its results and logs: found once here
        scrubber = Scrubber.of(assignment.monitor)
        # read here, from the assignment: no controller is needed when a period begins
        paused = maintenance.schedules(
            p for p in monitor.MaintenancePeriods if p.MaintenanceType == DISABLE_MONITORING
        )
        self.scheduler.put(
            Scheduled(
                guid,
                assignment.revision,
                monitor,
                interval,
                offset,
                scrubber=scrubber,
                paused=paused,
            )
        )
        self._heap_changed.set()

    def remove(self, guid: str) -> None:
        self._confirm_after.pop(guid, None)
        if self.scheduler.remove(guid):
            self._heap_changed.set()

    def run_now(self, guid: str, confirms: str | None) -> None:
        entry = self.scheduler.get(guid)
        if entry is None:
            log.warning("%s: run request for unknown monitor %s", self.name, guid)
            return
        if entry.in_maintenance(time.time()):
            log.info("%s: monitor %s: run request ignored, in maintenance", self.name, guid)
            return
        if guid in self._running:
            # after the check of it that is running now, never beside it
            self._confirm_after[guid] = confirms or ""
            return
        self._launch(entry, time.time(), confirms)

    async def run(self) -> None:
        """The scheduler and the heap freezer, until cancelled."""
        async with asyncio.TaskGroup() as group:
            group.create_task(self.scheduler.run())
            group.create_task(self._freeze_loop())

    async def cancel_checks(self) -> None:
        """Checks cut short produce no result. (At shutdown: the name lookups' threads are let
        go too.)"""
        checks = list(self._checks)
        for task in checks:
            task.cancel()
        for task in checks:
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
        self.context.lookups.close()

    async def _freeze_loop(self) -> None:
        """Once assignments have been quiet for a while, move the long-lived heap (monitor
        models, schedule) out of the garbage collector's sight: a full collection over
        thousands of monitors stops the loop for tens of milliseconds, which shows up as
        scheduling lateness and as inflated timings of the checks in flight."""
        while True:
            await self._heap_changed.wait()
            while self._heap_changed.is_set():  # settle: no change for FREEZE_AFTER_SECONDS
                self._heap_changed.clear()
                await asyncio.sleep(FREEZE_AFTER_SECONDS)
            gc.unfreeze()  # what an earlier freeze kept may be garbage by now
            gc.collect()
            gc.freeze()
            log.debug("%s: %d objects frozen", self.name, gc.get_freeze_count())

    # --- checks -----------------------------------------------------------------------------

    def _start_scheduled(self, entry: Scheduled, slot: float) -> None:
        if entry.paused and entry.in_maintenance(slot):
            # the slot's own time decides, on this agent's clock: no result of a slot inside
            # a DisableMonitoring period exists, whatever the broker or controller do then
            self._skipped_maintenance.inc()
            log.debug("%s: monitor %s: slot skipped, in maintenance", self.name, entry.guid)
            return
        if entry.guid in self._running:
            # its previous check is still running (a time limit longer than the interval, a
            # confirmation): a second one beside it would only load the target twice
            self._skipped_overlap.inc()
            self._overlapped[entry.guid] = self._overlapped.get(entry.guid, 0) + 1
            log.debug(
                "%s: monitor %s: slot skipped, its previous check is still running",
                self.name,
                entry.guid,
            )
            return
        if len(self._checks) >= self.max_pending:
            # overloaded: starting more would only make every check later and every timing
            # worse; shed this slot, count it and say so (at most every 10 s)
            self.metrics.checks_shed.inc()
            now = time.monotonic()
            if now - self._shed_logged > 10:
                self._shed_logged = now
                log.warning(
                    "%s: overloaded, %d checks pending: skipping slots (see "
                    "picket_agent_checks_shed_total)",
                    self.name,
                    len(self._checks),
                )
            return
        self._launch(entry, slot, None)

    def _spawn(self, coro: Coroutine[Any, Any, None]) -> None:
        task = asyncio.get_running_loop().create_task(coro)
        self._checks.add(task)
        task.add_done_callback(self._checks.discard)

    def _launch(self, entry: Scheduled, scheduled_at: float, confirms: str | None) -> None:
        self._running.add(entry.guid)  # now, not when the task first runs: no slot slips in
        self._spawn(self._run_check(entry, scheduled_at, confirms))

    async def _run_check(self, entry: Scheduled, scheduled_at: float, confirms: str | None) -> None:
        try:
            await self._check(entry, scheduled_at, confirms)
        finally:
            self._running.discard(entry.guid)
            confirm = self._confirm_after.pop(entry.guid, None)
        current = self.scheduler.get(entry.guid)
        if confirm is not None and current is not None:
            self._launch(current, time.time(), confirm or None)

    async def _check(self, entry: Scheduled, scheduled_at: float, confirms: str | None) -> None:
        monitor = entry.monitor
        started = time.time()
        if confirms is None:
            self.metrics.lateness.observe(max(0.0, started - scheduled_at))
        clock = time.perf_counter()
        try:
            outcome = await self.probes[monitor.MonitorType].check(monitor)
        except Exception as exc:  # a probe bug: report it as data, keep the worker alive
            trace = "".join(traceback.format_exception(exc))
            log.error(
                "%s: monitor %s: probe failed: %s",
                self.name,
                entry.guid,
                entry.scrubber.text(trace) if entry.scrubber else trace,
            )
            outcome = Outcome(ErrorCode.INTERNAL, f"{type(exc).__name__}: {exc}")
        if entry.scrubber:
            scrub_outcome(outcome, entry.scrubber)
        if not outcome.ok and self.canary is not None:
            reachable, why = await self.canary.reachable()
            if not reachable:
                make_inconclusive(outcome, self.canary.target, why)
        if skipped := self._overlapped.pop(entry.guid, 0):
            outcome.attributes["SkippedSlots"] = skipped
        self.metrics.check_done(monitor.MonitorType, outcome.ok, time.perf_counter() - clock)
        if not outcome.ok:
            log.info(
                "%s checkpoint %s: monitor %s (%s) failed: %s %s",
                self.name,
                self.settings.checkpoint,
                entry.guid,
                monitor.Name,
                outcome.description,
                outcome.error_message,
            )
        self.results.append(
            make_result(
                entry.guid,
                entry.revision,
                monitor.MonitorType,
                outcome,
                scheduled_at,
                started,
                confirms,
                self.settings.failed_body_bytes,
            )
        )


def new_uid() -> str:
    """A result's id: 32 hex digits, the time in ns then 64 random bits, so ids stored one
    after the other sit side by side in the database's unique index instead of all over it."""
    return f"{time.time_ns():016x}{random.getrandbits(64):016x}"


_utf8 = codecs.getincrementaldecoder("utf-8")  # .decode(final=False): no cut character


_observed = operator.attrgetter(*OBSERVED)  # an Outcome's Observation fields, in one C call


def make_result(
    monitor_guid: str,
    revision: str,
    monitor_type: str,
    outcome: Outcome,
    scheduled_at: float,
    started_at: float,
    confirms: str | None,
    failed_body_bytes: int,
) -> dict[str, Any]:
    """The result message of one check (a `CheckResult`'s fields, every one of them), with a
    new uid; the body only for a failure. The probe's `Observation` fields are copied as they
    are (whatever shared/results.py declares); the rest are the agent's. A plain dict: the agent
    made every value itself, and building a pydantic model per check cost more than the rest
    of this function."""
    body = None
    if not outcome.ok and outcome.body:
        # the probes store bodies in UTF-8 (read in the page's own charset): a character cut
        # in two at the limit is left out, not shown as U+FFFD
        body = _utf8("replace").decode(outcome.body[:failed_body_bytes])
    result = {
        "v": 1,
        "uid": new_uid(),
        "monitor_guid": monitor_guid,
        "monitor_revision": revision,
        "monitor_type": monitor_type,
        "scheduled_at": scheduled_at,
        "started_at": started_at,
        "error_description": outcome.description,
        "response_body": body,
        "details": to_json(outcome.details).decode() if outcome.details else None,
        "is_confirmation": confirms is not None,
        "confirms": confirms,
    }
    result.update(zip(OBSERVED, _observed(outcome), strict=False))  # same length: OBSERVED's
    return result
