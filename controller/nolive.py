"""Slots nobody runs: an active monitor none of whose selected checkpoints has a live server.

Such a monitor has no agent running it (its assignment waits, retained, for a server to
return: controller/rotation.py), so no result comes and the monitor would silently go dark.
This task stores one inconclusive check per missed slot instead: error 5 (NO_LIVE_CHECKPOINT),
`ErrorLevel` NoError, `IsInconclusive`, no server (`ServerId` and `CheckpointId` null, as a
concurrent check), never confirmed, never alerting, left out by `?Inconclusive=false`.

Slot k of a monitor is at k*interval + offset (the agents' schedule: controller/assigner.py
`phase_offset`, agent/scheduler.py). One heap holds each monitor's next slot; each tick (1 s)
pops the slots whose time has come, so the work follows the slots due, not the number of
monitors. A slot is written only when the controller can tell that no server was live for the
monitor at the slot's time:

- the monitor is active and has no live placed server now (`Assigner.has_live_server`), and
  the fleet (servers' presence, state, checkpoint, monitor types) has not changed since the
  slot's time (changes are seen by a fingerprint each tick, at or after they happen), and the
  monitor was not edited since;
- not during a grace after the controller starts or after it gets its broker connection back
  (`PICKET_NO_LIVE_GRACE_SECONDS`): agents' presence is not known yet.

A slot the fleet changed after is not written (`picket_inconclusive_slots_skipped_total
{reason="fleet_changed"}`): a monitor is never said to be unwatched when it may not have been.

The row's uid is a hash of monitor and slot (to the millisecond), so a slot is stored once,
across restarts too (and a restarted controller writes no slot before its grace ends). An
agent cut off from the broker still runs its saved assignments and delivers the results
later: a real result for a slot replaces its placeholder, which is deleted
(`picket_inconclusive_slots_withdrawn_total`). Either side may come first, so each checks
after its own write (ingest deletes the placeholder after storing the result; this task deletes
a placeholder it stored if a real result is already there), and no slot keeps both.

Work per tick is bounded: at most `rows_per_second` rows per second are written (the
rest of the slots due are counted as skipped, `reason="row_cap"`, and logged once per
episode), and at most MAX_POPS slots are looked at; slots left behind by more than an interval
are skipped (`reason="backlog"`).
"""

from __future__ import annotations

import asyncio
import hashlib
import heapq
import itertools
import logging
import math
from collections.abc import Callable, Sequence
from typing import Any

import orjson

from controller import rotation
from controller.assigner import Assigner
from controller.db.store import (
    CHECK,
    CONCURRENT,
    MonitorRow,
    Store,
    StoreRejected,
    StoreUnavailable,
    now_us,
)
from controller.metrics import ControllerMetrics
from shared.errors import DESCRIPTIONS, ErrorCode

log = logging.getLogger(__name__)

DEFAULT_GRACE_SECONDS = 60.0
DEFAULT_ROWS_PER_SECOND = 5000
MAX_POPS = 50_000  # slots looked at per tick; the rest wait for the next one
MAX_NEW = 5_000  # monitors new to the task scheduled per tick (each costs a validation)
SLICE = 100  # slots looked at, or monitors scheduled, between two yields to the event loop
CHUNK = 500  # rows per insert
LOGGED_MONITORS = 20  # monitors named one by one per tick; beyond that a summary line
CODE = int(ErrorCode.NO_LIVE_CHECKPOINT)
# per server: agent, checkpoint, region, live, can take checks, primary, monitor types
Fleet = tuple[tuple[str, int, int, bool, bool, bool, tuple[str, ...]], ...]


def placeholder_uid(monitor_guid: str, slot_ms: int) -> str:
    """The stored check's uid for a monitor's slot (its time in epoch milliseconds)."""
    return hashlib.sha256(f"no-live\x00{monitor_guid}\x00{slot_ms}".encode()).hexdigest()[:32]


def slot_ms_of(scheduled_at: float) -> int:
    """A slot's time as the milliseconds it is keyed by: slot times are on 10 ms steps, so
    an agent's float time (off by a microsecond at most) rounds to the same number."""
    return round(scheduled_at * 1000)


class NoLiveSlots:
    def __init__(
        self,
        store: Store,
        assigner: Assigner,
        metrics: ControllerMetrics,
        broker_connected: Callable[[], bool],
        grace_seconds: float = DEFAULT_GRACE_SECONDS,
        rows_per_second: int = DEFAULT_ROWS_PER_SECOND,
        every: float = 1.0,
    ) -> None:
        self.store = store
        self.assigner = assigner
        self.metrics = metrics
        self.broker_connected = broker_connected
        self.grace_us = int(grace_seconds * 1e6)
        self.every = every
        self.rows_per_tick = max(1, int(rows_per_second * every))
        self.started_us = 0
        self.known_from_us = 0  # no slot before this is written (a grace after a start)
        self.changed_us = 0  # when the fleet was last seen to change
        self._fleet: Fleet | None = None  # what placement depends on, as last seen
        self._version = 0  # bumped on each change: invalidates `_dark`
        # (slot ms, monitor, revision): each monitor's next slot
        self._heap: list[tuple[int, str, str]] = []
        self._scheduled: dict[str, tuple[str, int, int]] = {}  # guid -> revision, interval, offset
        self._dark: dict[str, tuple[int, str, bool]] = {}  # guid -> (version, revision, dark)
        # monitor -> the first and last slot (ms) this run stored a placeholder for: the ones
        # ingest may have to withdraw when a real result comes
        self.written: dict[str, tuple[int, int]] = {}
        self._dark_slots: dict[str, int] = {}  # monitors dark now -> slots stored meanwhile
        self._capped = 0  # slots skipped by the row cap in the current episode

    # --- the ingest's side ----------------------------------------------------------------

    def withdrawable(self, monitor_guid: str, scheduled_at: float) -> str | None:
        """The uid of the placeholder a real result for this slot replaces, if one may be
        stored: this run wrote one for the monitor at or around that slot, or the slot is older
        than this run (a previous one may have)."""
        slot_ms = slot_ms_of(scheduled_at)
        span = self.written.get(monitor_guid)
        if (span is not None and span[0] <= slot_ms <= span[1]) or slot_ms * 1000 < self.started_us:
            return placeholder_uid(monitor_guid, slot_ms)
        return None

    # --- the loop -------------------------------------------------------------------------

    def start(self, at_us: int) -> None:
        self.started_us = at_us
        self.known_from_us = at_us + self.grace_us

    async def run(self) -> None:
        self.start(now_us())
        log.info(
            "no live checkpoint: slots of monitors without a live server are stored as "
            "inconclusive (error %d) from %.0f s after the start, at most %d a second",
            CODE,
            self.grace_us / 1e6,
            self.rows_per_tick / self.every,
        )
        while True:
            await asyncio.sleep(self.every)
            await self.tick(now_us())

    async def tick(self, now: int) -> None:
        """Look at the slots due by `now` (epoch µs) and store the ones nobody ran."""
        self._see_fleet(now)
        await self._schedule_new(now)
        rows = await self._due_rows(now)
        await self._write(rows)

    def _see_fleet(self, now: int) -> None:
        if not self.broker_connected():
            # presence is not known while the broker is away, nor for a grace after it returns
            self.changed_us = now
            self.known_from_us = max(self.known_from_us, now + self.grace_us)
        fingerprint = self._fingerprint(now)
        if fingerprint != self._fleet:
            self._fleet = fingerprint
            self._version += 1
            self.changed_us = now

    def _fingerprint(self, now: int) -> Fleet:
        """What placement depends on, of every server (a change of any may make a monitor
        live or dark): kept whole, so that no change can pass for none."""
        return tuple(
            sorted(
                (
                    srv.agent_id,
                    srv.checkpoint_id,
                    srv.region_id,
                    rotation.live(srv),
                    srv.can_take_checks(now),
                    srv.is_primary_checkpoint,
                    tuple(srv.probe_types),
                )
                for srv in self.assigner.servers.values()
            )
        )

    # --- slots ----------------------------------------------------------------------------

    def _schedule_of(self, monitor: MonitorRow) -> tuple[int, int]:
        """(interval, offset) in ms, as the monitor's agents are told."""
        schedule = self.assigner.assignment(monitor).schedule
        return schedule.interval_seconds * 1000, round(schedule.offset_seconds * 1000)

    def _schedule(self, monitor: MonitorRow, from_ms: int) -> None:
        """Queue the monitor's first slot at or after `from_ms`."""
        interval, offset = self._schedule_of(monitor)
        self._scheduled[monitor.guid] = (monitor.revision, interval, offset)
        k = math.ceil((from_ms - offset) / interval)
        heapq.heappush(self._heap, (k * interval + offset, monitor.guid, monitor.revision))

    async def _schedule_new(self, now: int) -> None:
        """Queue the next slot of monitors new to the task (all of them after a start: that
        takes a few ticks, within the grace)."""
        monitors = self.assigner.monitors
        new = list(itertools.islice(monitors.keys() - self._scheduled.keys(), MAX_NEW))
        for start in range(0, len(new), SLICE):
            if start:
                await asyncio.sleep(0)
            for guid in new[start : start + SLICE]:
                monitor = monitors.get(guid)
                if monitor is not None and guid not in self._scheduled:
                    self._schedule(monitor, now // 1000)

    def _is_dark(self, monitor: MonitorRow) -> bool:
        cached = self._dark.get(monitor.guid)
        if cached is not None and cached[0] == self._version and cached[1] == monitor.revision:
            return cached[2]
        dark = not self.assigner.has_live_server(monitor)
        self._dark[monitor.guid] = (self._version, monitor.revision, dark)
        return dark

    async def _due_rows(self, now: int) -> list[dict[str, Any]]:
        """Rows for the slots due by `now` that nobody ran. Between slices the event loop
        runs; if the fleet changed meanwhile, the rest wait for the next tick (which notes
        the change), so each slot is judged against the fleet as it was when looked at."""
        now_ms = now // 1000
        rows: list[dict[str, Any]] = []
        skipped: dict[str, int] = {}
        pops = 0
        while self._heap and self._heap[0][0] <= now_ms and pops < MAX_POPS:
            pops += 1
            if pops % SLICE == 0:
                await asyncio.sleep(0)
                if self._fingerprint(now) != self._fleet or not self.broker_connected():
                    break
            slot_ms, guid, revision = heapq.heappop(self._heap)
            monitor = self.assigner.monitors.get(guid)
            if monitor is None:  # deleted
                self._forget(guid)
                continue
            if monitor.revision != revision:  # edited: its schedule may have changed
                self._schedule(monitor, slot_ms)
                continue
            interval = self._scheduled[guid][1]
            following = slot_ms + interval
            if following <= now_ms - interval:
                # left behind by more than an interval (a stalled loop): on to the present
                behind = (now_ms - following) // interval
                following += behind * interval
                if monitor.is_active and self._is_dark(monitor):
                    skipped["backlog"] = skipped.get("backlog", 0) + behind
            heapq.heappush(self._heap, (following, guid, revision))
            if not monitor.is_active:
                continue
            if not self._is_dark(monitor):
                self._back_to_live(monitor)
                continue
            slot_us = slot_ms * 1000
            if slot_us < self.known_from_us or monitor.modified_us > slot_us:
                continue  # presence not known yet, or the monitor was another then
            if self.changed_us > slot_us:
                # the fleet changed since the slot: a server may have been live at its time
                skipped["fleet_changed"] = skipped.get("fleet_changed", 0) + 1
                continue
            if len(rows) >= self.rows_per_tick:
                skipped["row_cap"] = skipped.get("row_cap", 0) + 1
                continue
            rows.append(self._row(monitor, slot_ms))
        for reason, count in skipped.items():
            self.metrics.inconclusive_skipped.labels(reason).inc(count)
        capped = skipped.get("row_cap", 0)
        if capped and not self._capped:
            log.warning(
                "no live checkpoint: more slots to store as inconclusive than %d a second "
                "(PICKET_NO_LIVE_ROWS_PER_SECOND); the rest are not stored, counted in "
                'picket_inconclusive_slots_skipped_total{reason="row_cap"}',
                self.rows_per_tick / self.every,
            )
        elif not capped and self._capped:
            log.warning(
                "no live checkpoint: back under the row cap; %d slots were not stored",
                self._capped,
            )
            self._capped = 0
        self._capped += capped
        return rows

    def _forget(self, guid: str) -> None:
        self._scheduled.pop(guid, None)
        self._dark.pop(guid, None)
        self.written.pop(guid, None)
        self._dark_slots.pop(guid, None)

    def _back_to_live(self, monitor: MonitorRow) -> None:
        stored = self._dark_slots.pop(monitor.guid, None)
        if stored is not None:
            log.info(
                "monitor %s: a selected checkpoint has a live server again (%d slots stored "
                "as inconclusive meanwhile)",
                monitor.guid,
                stored,
            )

    def _row(self, monitor: MonitorRow, slot_ms: int) -> dict[str, Any]:
        definition = monitor.definition
        attributes: dict[str, Any] = {
            "MonitorType": monitor.monitor_type,
            "ErrorDescription": DESCRIPTIONS[ErrorCode.NO_LIVE_CHECKPOINT],
            "ErrorMessage": (
                f"no server of the monitor's selected checkpoints was live and able to run "
                f"{monitor.monitor_type} checks at the slot's time: nothing was checked"
            ),
            "StagingMode": definition.get("MonitorMode") == "Staging",
            "IsInconclusive": True,
        }
        concurrent = rotation.concurrent(definition)
        if concurrent:
            attributes.update(
                IsConcurrentCheck=True,
                PartialChecks=0,
                FailedPartialChecks=0,
                MissingPartialChecks=len(self.assigner.turns(monitor)),
                ErrorPercentage=0.0,
            )
        slot_us = slot_ms * 1000
        return {
            "uid": placeholder_uid(monitor.guid, slot_ms),
            "monitor_guid": monitor.guid,
            "server_id": None,
            "ts_us": slot_us,
            "scheduled_us": slot_us,
            "error_level": 0,
            "error_code": CODE,
            "attributes": orjson.dumps(attributes).decode(),
            "response_body": None,
            "details": None,
            "check_kind": CONCURRENT if concurrent else CHECK,
        }

    # --- storing --------------------------------------------------------------------------

    async def _write(self, rows: Sequence[dict[str, Any]]) -> None:
        stored: dict[str, int] = {}
        for start in range(0, len(rows), CHUNK):
            chunk = rows[start : start + CHUNK]
            # before the insert: a real result stored meanwhile must find the placeholder
            for row in chunk:
                guid, slot_ms = row["monitor_guid"], row["scheduled_us"] // 1000
                first, last = self.written.get(guid, (slot_ms, slot_ms))
                self.written[guid] = (min(first, slot_ms), max(last, slot_ms))
            try:
                inserted = await self.store.insert_checks(chunk)
                # a real result already there (an agent cut off, delivering late) wins
                superseded = await self.store.delete_superseded_placeholders(sorted(inserted))
            except (StoreUnavailable, StoreRejected) as exc:
                # the store logs an outage; these slots are not stored (the loop goes on)
                lost = len(rows) - start
                self.metrics.inconclusive_skipped.labels("database").inc(lost)
                log.warning("no live checkpoint: %d inconclusive slots not stored: %s", lost, exc)
                break
            for row in chunk:
                if row["uid"] in inserted and row["uid"] not in superseded:
                    guid = row["monitor_guid"]
                    stored[guid] = stored.get(guid, 0) + 1
            self.metrics.inconclusive_withdrawn.inc(len(superseded))
        if not stored:
            return
        self.metrics.inconclusive_slots.labels("no_live_checkpoint").inc(sum(stored.values()))
        newly = [guid for guid in stored if guid not in self._dark_slots]
        for guid, count in stored.items():
            self._dark_slots[guid] = self._dark_slots.get(guid, 0) + count
        for guid in newly[:LOGGED_MONITORS]:
            log.warning(
                "monitor %s: no selected checkpoint has a live server that can run it; its "
                "slots are stored as inconclusive (error %d) until one has",
                guid,
                CODE,
            )
        if len(newly) > LOGGED_MONITORS:
            log.warning(
                "no live checkpoint: %d more monitors without a live server (their slots are "
                "stored as inconclusive)",
                len(newly) - LOGGED_MONITORS,
            )
