"""Benchmark: logins cannot stall the controller.

`picket up` (Mosquitto, the controller on SQLite, one agent) with 1,000 1-second HTTP monitors
of a loopback nginx, so the controller stores about 1,000 results a second. Through four
phases, one after the other, a client with good (remembered) credentials reads one monitor
50 times a second from 127.0.0.2, and we measure its latency and the ingest rate:

- quiet: nothing else;
- flood, one address: 200 wrong passwords a second for `admin` from 127.0.0.3 (the per-address
  throttle answers most of them 429 without hashing);
- flood, 200 addresses: 200 wrong passwords a second from 127.1.0.1-200, one a second each, to
  200 user names (no throttle applies: every one asks for a hash, and the bounded pool of
  password checks answers the ones it has no room for 429);
- quiet again.

Each phase lets the load settle 2 s and measures over a window (`--duration`, default 6 s).
Every request goes to a loopback address; every loop ends with its phase.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import time
from collections import Counter
from contextlib import ExitStack
from dataclasses import dataclass, field

import aiohttp
import uvloop

from bench import infra
from bench.e2e import PicketUp, Ramp, parse_metrics, total
from bench.infra import Summary, fmt_rate

MONITORS = 1000
GOOD_RATE = 50.0  # good API requests per second
FLOOD_RATE = 200.0  # wrong passwords per second
FLOOD_IN_FLIGHT = 400  # beyond it the flood skips (counted) rather than pile up
SETTLE_SECONDS = 2.0
GOOD_SOURCE = "127.0.0.2"
ONE_SOURCE = "127.0.0.3"
MANY_SOURCES = [f"127.1.0.{i}" for i in range(1, 201)]


@dataclass
class Phase:
    name: str
    latencies: list[float] = field(default_factory=list)  # seconds, good requests
    good_errors: int = 0
    statuses: Counter[int] = field(default_factory=Counter)  # the flood's answers
    flood_skipped: int = 0
    window: float = 0.0
    ingest_rate: float = 0.0
    hashes: float = 0.0  # password checks that hashed, in the window
    busy: float = 0.0  # password checks refused 429 because all were busy
    controller_cpu: float = 0.0

    def p(self, q: float) -> float:
        return infra.percentile(sorted(self.latencies), q) * 1000


async def _good(
    session: aiohttp.ClientSession, url: str, auth: aiohttp.BasicAuth, phase: Phase, until: float
) -> None:
    """GOOD_RATE requests a second, each timed from its scheduled start (so a stalled loop
    shows as latency, not as fewer requests)."""
    pending: set[asyncio.Task[None]] = set()

    async def one(planned: float) -> None:
        try:
            async with session.get(url, auth=auth) as response:
                await response.read()
                if response.status != 200:
                    phase.good_errors += 1
                    return
        except (aiohttp.ClientError, TimeoutError):
            phase.good_errors += 1
            return
        phase.latencies.append(time.perf_counter() - planned)

    start = time.perf_counter()
    i = 0
    while True:
        planned = start + i / GOOD_RATE
        if time.monotonic() >= until:
            break
        await asyncio.sleep(max(0.0, planned - time.perf_counter()))
        task = asyncio.create_task(one(planned))
        pending.add(task)
        task.add_done_callback(pending.discard)
        i += 1
    if pending:
        await asyncio.wait(pending, timeout=30)


async def _flood(
    sessions: list[aiohttp.ClientSession], url: str, phase: Phase, until: float
) -> None:
    pending: set[asyncio.Task[None]] = set()

    async def one(session: aiohttp.ClientSession, user: str) -> None:
        try:
            async with session.get(url, auth=aiohttp.BasicAuth(user, "wrong-password")) as resp:
                await resp.read()
                phase.statuses[resp.status] += 1
        except (aiohttp.ClientError, TimeoutError):
            phase.statuses[0] += 1

    start = time.perf_counter()
    i = 0
    while time.monotonic() < until:
        await asyncio.sleep(max(0.0, start + i / FLOOD_RATE - time.perf_counter()))
        if len(pending) >= FLOOD_IN_FLIGHT:
            phase.flood_skipped += 1
        else:
            which = i % len(sessions)
            user = "admin" if len(sessions) == 1 else f"user-{which}"
            task = asyncio.create_task(one(sessions[which], user))
            pending.add(task)
            task.add_done_callback(pending.discard)
        i += 1
    if pending:
        await asyncio.wait(pending, timeout=30)
    for task in pending:
        task.cancel()


def _session(source: str) -> aiohttp.ClientSession:
    connector = aiohttp.TCPConnector(local_addr=(source, 0), limit=8)
    return aiohttp.ClientSession(connector=connector, timeout=aiohttp.ClientTimeout(total=20))


async def _run(up: PicketUp, nginx: infra.Nginx, window: float) -> list[Phase]:
    timeout = aiohttp.ClientTimeout(total=30)
    async with aiohttp.ClientSession(timeout=timeout) as session:
        ramp = Ramp(up, nginx, session)
        await ramp.wait_ready()
        up.find_children()
        await ramp.register()
        await ramp.create(MONITORS, within=120)
        held = await ramp.wait_assigned(MONITORS)
        infra.note(f"{MONITORS:,} 1-second monitors created; the agent holds {held:,}")
        status, body = 0, {}
        async with session.post(
            f"{up.api}/api/v4/Monitor", json=_probe_monitor(nginx), auth=ramp.account
        ) as response:
            status, body = response.status, await response.json()
        if status != 201:
            raise RuntimeError(f"POST /Monitor: {status} {body}")
        url = f"{up.api}/api/v4/Monitor/{body['MonitorGuid']}"
        await asyncio.sleep(SETTLE_SECONDS)

        phases: list[Phase] = []
        sources: dict[str, list[str]] = {
            "quiet": [],
            "flood, one address": [ONE_SOURCE],
            "flood, 200 addresses": MANY_SOURCES,
            "quiet again": [],
        }
        good = _session(GOOD_SOURCE)
        try:
            for name, flood_from in sources.items():
                phase = Phase(name)
                flood_sessions = [_session(s) for s in flood_from]
                try:
                    until = time.monotonic() + SETTLE_SECONDS + window
                    good_phase = Phase(name)  # the settling requests are not counted
                    loads = [asyncio.create_task(_good(good, url, ramp.account, good_phase, until))]
                    if flood_sessions:
                        loads.append(asyncio.create_task(_flood(flood_sessions, url, phase, until)))
                    await asyncio.sleep(SETTLE_SECONDS)
                    first = len(good_phase.latencies)
                    before, cpu_before = await _controller(session, up)
                    t0 = time.monotonic()
                    await asyncio.sleep(window)
                    after, cpu_after = await _controller(session, up)
                    phase.window = time.monotonic() - t0
                    await asyncio.gather(*loads)
                    phase.latencies = good_phase.latencies[first:]
                    phase.good_errors = good_phase.good_errors
                    ingested = total(after, "picket_results_ingested_total") - total(
                        before, "picket_results_ingested_total"
                    )
                    phase.ingest_rate = ingested / phase.window
                    phase.hashes = _count(
                        after, before, "picket_password_check_duration_seconds_count"
                    )
                    phase.busy = _count(
                        after, before, 'picket_password_checks_total{outcome="busy"}'
                    )
                    phase.controller_cpu = (cpu_after - cpu_before) / phase.window
                finally:
                    for s in flood_sessions:
                        await s.close()
                phases.append(phase)
                infra.note(
                    f"{name}: good p99 {phase.p(99):.1f} ms, stored {fmt_rate(phase.ingest_rate)}/s"
                )
        finally:
            await good.close()
        return phases


def _count(after: dict[str, float], before: dict[str, float], key: str) -> float:
    return after.get(key, 0.0) - before.get(key, 0.0)


async def _controller(
    session: aiohttp.ClientSession, up: PicketUp
) -> tuple[dict[str, float], float]:
    async with session.get(f"{up.api}/metrics") as response:
        samples = parse_metrics(await response.text())
    return samples, up.cpu().get("controller", 0.0)


def _probe_monitor(nginx: infra.Nginx) -> dict[str, object]:
    return {
        "Name": "auth bench probe",
        "MonitorType": "Http",
        "Url": f"{nginx.url}probe",
        "CheckIntervalSeconds": 60,
        "IsActive": False,
    }


def main(args: argparse.Namespace) -> list[Summary]:
    window = float(args.duration)
    print(
        f"\n=== auth: good API requests and ingest under {FLOOD_RATE:g} wrong passwords/s "
        f"(picket up, {MONITORS:,} 1-s monitors) ==="
    )
    infra.require("mosquitto")
    with ExitStack() as stack:
        nginx = infra.Nginx(stack)
        up = PicketUp(stack)
        phases = uvloop.run(_run(up, nginx, window))
        with contextlib.suppress(Exception):
            up.find_children()
    infra.table(
        f"auth: {GOOD_RATE:g} good requests/s (GET /Monitor/{{guid}}, remembered credentials) "
        f"and ingest, {window:g} s window per phase",
        [
            "phase",
            "good p50 ms",
            "good p99 ms",
            "good max ms",
            "good errors",
            "stored/s",
            "wrong/s sent",
            "401",
            "429",
            "hashes/s",
            "busy 429/s",
            "controller CPU",
        ],
        [
            [
                ph.name,
                f"{ph.p(50):.1f}",
                f"{ph.p(99):.1f}",
                f"{max(ph.latencies, default=0) * 1000:.1f}",
                ph.good_errors,
                fmt_rate(ph.ingest_rate),
                fmt_rate(sum(ph.statuses.values()) / (ph.window + SETTLE_SECONDS))
                if ph.statuses
                else "-",
                ph.statuses.get(401, 0),
                ph.statuses.get(429, 0),
                f"{ph.hashes / ph.window:.1f}",
                f"{ph.busy / ph.window:.1f}",
                f"{ph.controller_cpu:.0%}",
            ]
            for ph in phases
        ],
        left=1,
    )
    infra.note(
        "good: latency from each request's scheduled start to its body read (a stalled event\n"
        "loop shows as latency); 401/429: the flood's answers over settle + window; hashes/s:\n"
        "scrypt checks done (picket_password_check_duration_seconds_count); busy 429/s: checks\n"
        "refused because all were running (picket_password_checks_total{outcome=busy});\n"
        "controller CPU: share of one core."
    )
    quiet = phases[0]
    summaries = []
    for ph in phases[1:3]:
        p50_ratio = ph.p(50) / quiet.p(50) if quiet.p(50) else float("nan")
        p99_ratio = ph.p(99) / quiet.p(99) if quiet.p(99) else float("nan")
        ingest_ratio = ph.ingest_rate / quiet.ingest_rate if quiet.ingest_rate else float("nan")
        summaries += [
            Summary("auth", f"good p50, {ph.name} / quiet", f"{p50_ratio:.2f}x"),
            Summary("auth", f"good p99, {ph.name} / quiet", f"{p99_ratio:.2f}x"),
            Summary("auth", f"stored/s, {ph.name} / quiet", f"{ingest_ratio:.2f}x"),
        ]
    return summaries
