"""Slot scheduling: monitor m runs at epoch + k*interval + offset, on the agent's own clock."""

from __future__ import annotations

import asyncio
import heapq
import itertools
import math
import time
from collections.abc import Callable
from dataclasses import dataclass

from shared.maintenance import Schedule
from shared.monitors import MonitorBase
from shared.secrets import Scrubber


@dataclass
class Scheduled:
    guid: str
    revision: str
    monitor: MonitorBase
    interval: float
    offset: float
    last_slot: float = -math.inf
    next_due: float = math.inf  # the slot waiting in the heap
    generation: int = 0
    scrubber: Scrubber | None = None  # the monitor's secret values (shared.secrets)
    # its DisableMonitoring maintenance periods: the slots they cover are not run
    paused: tuple[Schedule, ...] = ()

    def in_maintenance(self, moment: float) -> bool:
        return any(s.covers(moment) for s in self.paused)


def next_slot(now: float, interval: float, offset: float) -> float:
    """The first slot time >= now."""
    k = math.ceil((now - offset) / interval)
    return offset + k * interval


def rotation_slots(
    interval: float, offset: float, position: int = 0, count: int = 1
) -> tuple[float, float]:
    """(period, phase) of the slots this agent runs: slot k is at k*interval + offset and is
    this agent's when k mod count == position (the controller's rotation, controller/rotation.py),
    i.e. every count*interval seconds from offset + position*interval. Slot numbers count from
    the epoch, so every agent (a peer after a failover, this one after a restart) agrees which
    slot is whose without talking to the others."""
    period = interval * count
    return period, (offset % interval + position * interval) % period


StartCheck = Callable[[Scheduled, float], None]


class Scheduler:
    """One heap of (slot time, monitor); one task sleeps until the earliest slot."""

    def __init__(self, start_check: StartCheck, on_skip: Callable[[int], None]) -> None:
        self._start_check = start_check
        self._on_skip = on_skip
        self._entries: dict[str, Scheduled] = {}
        self._heap: list[tuple[float, int, str]] = []
        self._counter = itertools.count()
        self._waiter: asyncio.Future[None] | None = None

    def __len__(self) -> int:
        return len(self._entries)

    def __contains__(self, guid: str) -> bool:
        return guid in self._entries

    def get(self, guid: str) -> Scheduled | None:
        return self._entries.get(guid)

    def guids(self) -> list[str]:
        return list(self._entries)

    def put(self, entry: Scheduled) -> None:
        old = self._entries.get(entry.guid)
        now = time.time()
        if old is not None:
            if (old.revision, old.interval, old.offset) == (
                entry.revision,
                entry.interval,
                entry.offset,
            ):
                return  # the same assignment again (a resend after reconnect)
            entry.last_slot = old.last_slot  # never run one slot twice across an update
            # a slot that came due just before the update still runs, with the new definition
            now = min(now, old.next_due)
        entry.generation = next(self._counter)
        self._entries[entry.guid] = entry
        slot = next_slot(now, entry.interval, entry.offset)
        if slot <= entry.last_slot:
            slot += entry.interval
        self._push(slot, entry)

    def remove(self, guid: str) -> bool:
        return self._entries.pop(guid, None) is not None

    def _push(self, slot: float, entry: Scheduled) -> None:
        entry.next_due = slot
        heapq.heappush(self._heap, (slot, entry.generation, entry.guid))
        if self._heap[0][2] == entry.guid:
            self._wake()

    def _wake(self) -> None:
        if self._waiter is not None and not self._waiter.done():
            self._waiter.set_result(None)

    async def _sleep(self, delay: float | None) -> None:
        """Sleep for `delay` seconds (None: until woken), or less if an earlier slot arrives."""
        loop = asyncio.get_running_loop()
        self._waiter = loop.create_future()
        timer = None if delay is None else loop.call_later(delay, self._wake)
        try:
            await self._waiter
        finally:
            self._waiter = None
            if timer is not None:
                timer.cancel()

    async def run(self) -> None:
        while True:
            if not self._heap:
                await self._sleep(None)
                continue
            slot, generation, guid = self._heap[0]
            delay = slot - time.time()
            if delay > 0:
                await self._sleep(delay)
                continue
            heapq.heappop(self._heap)
            entry = self._entries.get(guid)
            if entry is None or entry.generation != generation:
                continue  # removed or replaced; the replacement has its own heap item
            entry.last_slot = slot
            self._start_check(entry, slot)
            following = slot + entry.interval
            now = time.time()
            if following < now - entry.interval:
                # we fell behind by more than an interval (suspended host?): skip to the present
                skipped = int((now - following) // entry.interval)
                self._on_skip(skipped)
                following += skipped * entry.interval
            self._push(following, entry)
