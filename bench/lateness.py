"""Benchmark 2: how late the agent's Scheduler starts checks, at ~500, ~2,000 and ~5,000 checks/s.

The real Scheduler (agent/scheduler.py) runs `rate` HTTP monitors every second, each at the
phase offset the controller gives it (controller.assigner.phase_offset: a hash of the id, in
millisecond steps). start_check does what the agent's does (a task per check) and records
lateness = time.time() - slot when the scheduler calls it. Every check is real: HttpProbe on
CurlEngine (max_concurrency 1000, the agent's default) against the loopback nginx, then a
result (bench.agentpath). Everything runs on uvloop, as the agent does.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import gc
import hashlib
import json
import math
import subprocess
import sys
import time
from contextlib import ExitStack
from dataclasses import dataclass
from pathlib import Path

import uvloop

from agent.curl import CurlEngine
from agent.scheduler import Scheduled, Scheduler
from bench import infra
from bench.agentpath import AgentPath, http_monitor
from bench.infra import Summary, fmt_ms, fmt_rate
from shared.monitors import HttpMonitor

RATES = (500, 2000, 5000)
INTERVAL_SECONDS = 1
WARMUP_SECONDS = 1.0
GRACE_SECONDS = 1.0  # the scheduler keeps running this long after the window, for late slots
MAX_CONCURRENCY = 1000  # the agent's default PICKET_MAX_CONCURRENCY
GOAL_RATE = 2000
GOAL_P99_MS = 2.0
REPO = Path(__file__).resolve().parent.parent


def _unit_hash(*parts: str) -> float:
    digest = hashlib.sha256("\x00".join(parts).encode()).digest()
    return (int.from_bytes(digest[:8], "big") + 1) / (2**64 + 2)


def _phase_offset_copy(guid: str, interval_seconds: int) -> float:
    """A copy of controller.assigner.phase_offset, used only if that cannot be imported."""
    slots = max(1, interval_seconds * 100)  # 10 ms steps
    return (int(_unit_hash(guid, "phase") * slots) % slots) / 100.0


def phase_offsets(guids: list[str], interval_seconds: int) -> tuple[list[float], str]:
    """The controller's offsets for these monitors, computed in a child process: importing the
    controller here would put SQLAlchemy, aiohttp ... on this process's heap, which the agent
    does not have, and make the garbage collector's full passes slower than the agent's."""
    code = (
        "import json, sys\n"
        "from controller.assigner import phase_offset\n"
        f"print(json.dumps([phase_offset(g, {interval_seconds}) for g in json.load(sys.stdin)]))"
    )
    try:
        out = subprocess.run(
            [sys.executable, "-c", code],
            input=json.dumps(guids),
            capture_output=True,
            text=True,
            timeout=60,
            check=True,
            cwd=REPO,
        ).stdout
        offsets = [float(x) for x in json.loads(out)]
        return offsets, "controller.assigner.phase_offset"
    except (OSError, subprocess.SubprocessError, ValueError):
        return [_phase_offset_copy(g, interval_seconds) for g in guids], "a copy of phase_offset"


@dataclass
class Run:
    label: str
    target_rate: int
    seconds: float
    lateness_ms: list[float]  # of slots due inside the measured window, sorted
    slots_due: int  # slots inside the window, by the monitors' grid
    completed: int  # checks finished inside the window
    failed: int
    skipped: int
    cpu: float
    max_in_flight: int
    first_failure: str
    gc_full: int  # full (generation 2) collections during the window
    gc_full_max_ms: float
    gc_max_ms: float  # the longest collection of any generation during the window
    total_ms: list[float]  # TotalTime the checks reported (finished in the window), sorted

    @property
    def started_rate(self) -> float:
        return len(self.lateness_ms) / self.seconds

    @property
    def completed_rate(self) -> float:
        return self.completed / self.seconds


class GcWatch:
    """Times the garbage collector's passes (gc.callbacks) while installed."""

    def __init__(self) -> None:
        self.passes: list[tuple[float, int, float]] = []  # (start, generation, ms)
        self._began = 0.0

    def __enter__(self) -> GcWatch:
        gc.callbacks.append(self._callback)
        return self

    def __exit__(self, *exc: object) -> None:
        gc.callbacks.remove(self._callback)

    def _callback(self, phase: str, info: dict[str, int]) -> None:
        if phase == "start":
            self._began = time.perf_counter()
        else:
            ms = (time.perf_counter() - self._began) * 1000.0
            self.passes.append((time.time(), info["generation"], ms))


async def _drive(
    url: str, guids: list[str], offsets: list[float], duration: float, freeze: bool
) -> Run:
    loop = asyncio.get_running_loop()
    engine = CurlEngine(max_concurrency=MAX_CONCURRENCY)
    path = AgentPath(engine)
    starts: list[tuple[float, float]] = []  # (slot, lateness in s)
    finishes: list[float] = []
    totals: list[tuple[float, float]] = []  # (finish time, TotalTime ms)
    checks: set[asyncio.Task[None]] = set()
    skipped = 0
    max_in_flight = 0

    async def run_check(entry: Scheduled, slot: float, started: float) -> None:
        assert isinstance(entry.monitor, HttpMonitor)
        result = await path.run_check(entry.guid, entry.monitor, slot, started)
        now = time.time()
        finishes.append(now)
        totals.append((now, result["timings_ms"].get("TotalTime", 0.0)))

    def start_check(entry: Scheduled, slot: float) -> None:
        # what Agent._start_scheduled does: one task per check
        nonlocal max_in_flight
        started = time.time()
        starts.append((slot, started - slot))
        task = loop.create_task(run_check(entry, slot, started))
        checks.add(task)
        task.add_done_callback(checks.discard)
        max_in_flight = max(max_in_flight, len(checks))

    def on_skip(count: int) -> None:
        nonlocal skipped
        skipped += count

    scheduler = Scheduler(start_check, on_skip)
    for i, (guid, offset) in enumerate(zip(guids, offsets, strict=True)):
        monitor = http_monitor(url, f"bench {i}", INTERVAL_SECONDS)
        scheduler.put(Scheduled(guid, "1", monitor, float(INTERVAL_SECONDS), offset))
    if freeze:
        gc.collect()
        gc.freeze()  # everything alive now is left out of every later collection

    window_start = time.time() + WARMUP_SECONDS
    window_end = window_start + duration
    runner = loop.create_task(scheduler.run(), name="scheduler")
    try:
        with GcWatch() as watch:
            await asyncio.sleep(WARMUP_SECONDS)
            cpu0 = time.process_time()
            await asyncio.sleep(max(0.0, window_end - time.time()))
            cpu = time.process_time() - cpu0
        await asyncio.sleep(GRACE_SECONDS)
    finally:
        runner.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await runner
        if checks:  # every check has a 5 s timeout; this wait is bounded too
            await asyncio.wait(list(checks), timeout=15)
        for task in list(checks):
            task.cancel()
        engine.close()
        if freeze:
            gc.unfreeze()

    due = sum(_slots_between(window_start, window_end, INTERVAL_SECONDS, o) for o in offsets)
    late = sorted(1000.0 * late for slot, late in starts if window_start <= slot < window_end)
    passes = [(gen, ms) for t, gen, ms in watch.passes if window_start <= t < window_end]
    full = [ms for gen, ms in passes if gen == 2]
    return Run(
        label=f"{len(guids):,}/s" + ("" if freeze else ", no gc.freeze()"),
        target_rate=len(guids),
        seconds=duration,
        lateness_ms=late,
        slots_due=due,
        completed=sum(1 for t in finishes if window_start <= t < window_end),
        failed=path.failed,
        skipped=skipped,
        cpu=cpu,
        max_in_flight=max_in_flight,
        first_failure=path.first_failure,
        gc_full=len(full),
        gc_full_max_ms=max(full, default=0.0),
        gc_max_ms=max((ms for _, ms in passes), default=0.0),
        total_ms=sorted(ms for t, ms in totals if window_start <= t < window_end),
    )


def _slots_between(start: float, end: float, interval: float, offset: float) -> int:
    """Slots offset + k*interval in [start, end)."""
    first = math.ceil((start - offset) / interval)
    last = math.ceil((end - offset) / interval)
    return max(0, last - first)


def main(args: argparse.Namespace) -> list[Summary]:
    duration: float = args.duration
    print(
        f"\n=== lateness: Scheduler + real checks on CurlEngine, {WARMUP_SECONDS:g} s warm-up "
        f"+ {duration:g} s measured per rate ==="
    )
    guids = [f"00000000-0000-4000-8000-{i:012d}" for i in range(max(RATES))]
    offsets, source = phase_offsets(guids, INTERVAL_SECONDS)
    runs: list[Run] = []
    with ExitStack() as stack:
        nginx = infra.Nginx(stack)
        infra.note(
            f"target: nginx (1 worker) at {nginx.url}; N monitors every {INTERVAL_SECONDS} s, "
            f"offsets from {source}"
        )
        # as the agent does: once assignments settle it freezes the long-lived heap
        for rate in RATES:
            runs.append(uvloop.run(_drive(nginx.url, guids[:rate], offsets[:rate], duration, True)))
        # the same load without the freeze: shows how much of the tail the garbage
        # collector's full passes over long-lived objects would cost
        rate = GOAL_RATE
        runs.append(uvloop.run(_drive(nginx.url, guids[:rate], offsets[:rate], duration, False)))

    rows: list[list[object]] = []
    for run in runs:
        late = run.lateness_ms
        rows.append(
            [
                run.label,
                fmt_rate(run.slots_due / run.seconds),
                fmt_rate(run.started_rate),
                fmt_rate(run.completed_rate),
                run.failed,
                fmt_ms(infra.percentile(late, 50)),
                fmt_ms(infra.percentile(late, 99)),
                fmt_ms(late[-1]) if late else "-",
                run.max_in_flight,
                f"{100 * run.cpu / run.seconds:.0f}%",
                run.gc_full,
                f"{run.gc_full_max_ms:.1f}",
                fmt_ms(infra.percentile(run.total_ms, 50)),
                fmt_ms(infra.percentile(run.total_ms, 99)),
                fmt_ms(run.total_ms[-1]) if run.total_ms else "-",
                run.skipped,
            ]
        )
    infra.table(
        f"lateness = time.time() at start_check - slot time (goal: p99 < {GOAL_P99_MS:g} ms "
        f"at {GOAL_RATE:,}/s)",
        [
            "monitors/s",
            "due/s",
            "started/s",
            "done/s",
            "failed",
            "p50 ms",
            "p99 ms",
            "max ms",
            "max in flight",
            "CPU",
            "full GCs",
            "max GC ms",
            "Total p50",
            "Total p99",
            "Total max",
            "skipped",
        ],
        rows,
    )
    infra.note(
        "due/s: slots in the window by the monitors' grid; started/s: those that start_check\n"
        f"was called for (up to {GRACE_SECONDS:g} s after the window); done/s: checks that\n"
        "finished (result built) in the window; CPU: this process (100% = one core: scheduler,\n"
        "libcurl and result handling share one thread); full GCs: generation-2 collections in\n"
        "the window and the longest one (the loop stands still meanwhile); failed: checks with\n"
        "an error; Total: the TotalTime the checks themselves reported, in ms (a loopback check\n"
        "takes ~0.2 ms: more is time the event loop was busy elsewhere, e.g. in a collection,\n"
        "while the check's response waited). Every run but the last freezes the heap after\n"
        "set-up, as the agent does once assignments settle; the last shows the same load\n"
        "without it, i.e. what full collections over the monitors cost."
    )
    for run in runs:
        if run.first_failure:
            infra.note(f"{run.label}: {run.failed} failed, e.g. {run.first_failure}")

    summaries: list[Summary] = []
    for run in runs:
        p99 = infra.percentile(run.lateness_ms, 99)
        goal = run.target_rate == GOAL_RATE
        summaries.append(
            Summary(
                "lateness",
                f"p99 @ {run.label} (done {run.completed_rate:,.0f}/s)",
                f"{p99:.3f} ms",
                f"< {GOAL_P99_MS:g} ms" if goal else "",
                (p99 < GOAL_P99_MS) if goal else None,
            )
        )
    return summaries
