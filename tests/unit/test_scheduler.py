from __future__ import annotations

import asyncio
import itertools
import time
import uuid

import pytest

from agent.scheduler import Scheduled, Scheduler, next_slot
from shared.monitors import HttpMonitor


def _monitor() -> HttpMonitor:
    return HttpMonitor.model_validate(
        {
            "Name": "m",
            "MonitorType": "Http",
            "Url": "http://127.0.0.1:1/",
            "CheckIntervalSeconds": 1,
        }
    )


def test_next_slot_is_on_the_grid() -> None:
    assert next_slot(100.0, 10.0, 3.0) == 103.0
    assert next_slot(103.0, 10.0, 3.0) == 103.0  # a slot exactly now is due now
    assert next_slot(103.001, 10.0, 3.0) == 113.0
    assert next_slot(0.0, 60.0, 59.5) == 59.5


async def test_each_slot_runs_once_across_updates() -> None:
    started: list[tuple[str, float]] = []
    skipped: list[int] = []
    scheduler = Scheduler(
        lambda entry, slot: started.append((entry.revision, slot)), skipped.append
    )
    task = asyncio.create_task(scheduler.run())
    try:
        interval = 0.2
        offset = time.time() % interval
        scheduler.put(Scheduled("m1", "r1", _monitor(), interval, offset))
        scheduler.put(Scheduled("m1", "r1", _monitor(), interval, offset))  # resend: no-op
        deadline = time.monotonic() + 10
        while len(started) < 3 and time.monotonic() < deadline:
            await asyncio.sleep(0.01)
        scheduler.put(Scheduled("m1", "r2", _monitor(), interval, offset))  # an update
        while len([r for r, _ in started if r == "r2"]) < 2 and time.monotonic() < deadline:
            await asyncio.sleep(0.01)
        scheduler.remove("m1")
        count = len(started)
        slots = [slot for _, slot in started]
        assert len(slots) == len(set(slots)), "a slot ran twice"
        gaps = [round((b - a) / interval) for a, b in itertools.pairwise(slots)]
        # a gap is one interval, unless the loop stalled past a whole interval and the
        # scheduler (by design) skipped ahead and said so
        assert sum(g - 1 for g in gaps) == sum(skipped), (gaps, skipped)
        await asyncio.sleep(3 * interval)
        assert len(started) == count, "a removed monitor kept running"
    finally:
        task.cancel()


async def test_lateness_is_small_when_idle() -> None:
    late: list[float] = []
    scheduler = Scheduler(lambda entry, slot: late.append(time.time() - slot), lambda n: None)
    task = asyncio.create_task(scheduler.run())
    try:
        scheduler.put(Scheduled("m1", "r1", _monitor(), 0.02, 0.0))
        deadline = time.monotonic() + 10
        while len(late) < 10 and time.monotonic() < deadline:
            await asyncio.sleep(0.01)
        assert len(late) >= 10
        # generous bound: this asserts "runs on its slot", not a performance figure
        assert sorted(late)[len(late) // 2] < 0.05, late
    finally:
        task.cancel()


async def test_an_update_at_its_slot_time_keeps_that_slot() -> None:
    started: list[tuple[str, float]] = []
    scheduler = Scheduler(lambda entry, slot: started.append((entry.revision, slot)), print)
    interval = 60.0
    slot = time.time() + 0.05
    scheduler.put(Scheduled("m1", "r1", _monitor(), interval, slot % interval))
    while time.time() <= slot:  # the slot comes due while the loop is busy elsewhere
        await asyncio.sleep(0.01)
    scheduler.put(Scheduled("m1", "r2", _monitor(), interval, slot % interval))
    task = asyncio.create_task(scheduler.run())
    try:
        deadline = time.monotonic() + 10
        while not started and time.monotonic() < deadline:
            await asyncio.sleep(0.01)
        assert started == [("r2", pytest.approx(slot, abs=1e-6))]
    finally:
        task.cancel()


def test_phases_fall_on_10_ms_steps_spread_over_the_interval() -> None:
    from controller.assigner import PHASE_STEP_MS, phase_offset

    guids = [str(uuid.uuid5(uuid.NAMESPACE_URL, f"monitor-{n}")) for n in range(2000)]
    for interval in (1, 60):
        offsets = [phase_offset(guid, interval) for guid in guids]
        assert all(0 <= offset < interval for offset in offsets)
        steps = {round(offset * 1000 / PHASE_STEP_MS, 6) for offset in offsets}
        assert all(step == int(step) for step in steps), "not on a step"
        possible = interval * 1000 // PHASE_STEP_MS
        # evenly spread: 2,000 monitors fill nearly every step of a second, and of a minute
        # they use about as many distinct steps as a uniform draw would (2000 of 6000 -> ~1,700)
        assert len(steps) >= min(possible, 2000) * 0.8
    # stable across versions: a changed hash would move every monitor's phase at an upgrade
    assert guids[0] == "87fba41c-adb7-5cdb-a99d-2945e5a3e42a"
    assert (phase_offset(guids[0], 1), phase_offset(guids[0], 30)) == (0.66, 20.08)
