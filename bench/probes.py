"""Benchmark: DNS and TCP checks per second, beside blackbox_exporter's dns and tcp probes.

- dns:      the agent's DnsProbe (dnspython on the event loop, UDP) asking a local dnsmasq for
            an A record and checking the answer, N checks in flight.
- tcp:      the agent's ConnectProbe opening (and closing) a TCP connection to the loopback
            nginx, N checks in flight.
- ...xN:    the same in N processes side by side (N = the CPUs), N in flight in all, as the
            agent's check workers run them.
- blackbox: prometheus-blackbox-exporter's dns module (UDP, A record, answer checked) and
            tcp_connect module on the same targets, driven by `wrk -c64 -t2` on /probe.

Goal: the agent (its workers) at least at parity with blackbox_exporter.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import time
from contextlib import ExitStack

import uvloop

from agent.curl import CurlEngine
from agent.probes.base import Probe, ProbeContext
from agent.probes.dns import DnsProbe
from agent.probes.tcp import ConnectProbe
from bench import infra
from bench.engine import Run, blackbox_run, side_by_side
from bench.infra import Summary, fmt_rate
from shared.monitors import ConnectMonitor, DnsMonitor, MonitorBase

IN_FLIGHT = 64
GOAL = 1.0
NAME = "bench.test"


def _monitor(kind: str, target: str) -> MonitorBase:
    host, _, port = target.rpartition(":")
    if kind == "dns":
        return DnsMonitor.model_validate(
            {
                "Name": "bench",
                "MonitorType": "DNS",
                "DnsQuery": "ARecord",
                "DnsTestValue": NAME,
                "DnsServer": target,
                "DnsExpectedResult": infra.LOOPBACK,
                "TimeoutSeconds": 5,
            }
        )
    return ConnectMonitor.model_validate(
        {
            "Name": "bench",
            "MonitorType": "Connect",
            "NetworkAddress": host,
            "Port": int(port),
            "TimeoutSeconds": 5,
        }
    )


async def _drive(kind: str, target: str, in_flight: int, duration: float, start_at: float) -> Run:
    curl = CurlEngine(1)  # the probes' context wants one; DNS and TCP checks do not use it
    context = ProbeContext(curl=curl, max_body_bytes=1024)
    probe: Probe = DnsProbe(context) if kind == "dns" else ConnectProbe(context)
    monitor = _monitor(kind, target)
    completed = errors = 0
    first_error = ""
    totals: list[float] = []

    async def worker(stop_at: float) -> None:
        nonlocal completed, errors, first_error
        while time.perf_counter() < stop_at:
            outcome = await probe.check(monitor)
            completed += 1
            totals.append(outcome.timings_ms.get("TotalTime", 0.0))
            if not outcome.ok:
                errors += 1
                first_error = first_error or f"{outcome.description}: {outcome.error_message}"

    await asyncio.sleep(max(0.0, start_at - time.time()))
    try:
        user0, system0 = infra.own_cpu_seconds()
        t0 = time.perf_counter()
        async with asyncio.timeout(duration + 30):  # a backstop: every loop stops by itself
            await asyncio.gather(*(worker(t0 + duration) for _ in range(in_flight)))
        seconds = time.perf_counter() - t0
        user1, system1 = infra.own_cpu_seconds()
    finally:
        curl.close()
    return Run(
        label=kind,
        in_flight=in_flight,
        completed=completed,
        errors=errors,
        seconds=seconds,
        client_user=user1 - user0,
        client_system=system1 - system0,
        total_ms=totals,
        first_error=first_error,
        name=f"{kind}@{in_flight}",
    )


def _child(kind: str, target: str, duration: float, in_flight: int, start_at: float) -> Run:
    return uvloop.run(_drive(kind, target, in_flight, duration, start_at))


def main(args: argparse.Namespace) -> list[Summary]:
    duration: float = args.duration
    print(f"\n=== probes: DNS and TCP checks/s, {duration:g} s of load per run ===")
    processes = os.cpu_count() or 1
    runs: dict[str, list[Run]] = {"dns": [], "tcp": []}
    peers: dict[str, Run | None] = {"dns": None, "tcp": None}
    skipped: list[str] = []
    with ExitStack() as stack:
        targets: dict[str, str] = {}
        try:
            dnsmasq = infra.Dnsmasq(stack, NAME)
            targets["dns"] = f"{infra.LOOPBACK}:{dnsmasq.port}"
            infra.note(f"dns target: dnsmasq at {targets['dns']}, {NAME} A {infra.LOOPBACK}")
        except infra.Missing as exc:
            skipped.append(str(exc))
        nginx = infra.Nginx(stack)
        targets["tcp"] = f"{infra.LOOPBACK}:{nginx.port}"
        infra.note(f"tcp target: nginx at {targets['tcp']} (connect, then close)")
        blackbox: infra.Blackbox | None = None
        try:
            infra.require("wrk")
            blackbox = infra.Blackbox(stack)
        except infra.Missing as exc:
            skipped.append(str(exc))
        for kind, target in targets.items():
            if blackbox is not None:
                module = "dns_a" if kind == "dns" else "tcp_connect"
                peers[kind] = blackbox_run(blackbox, module, target, duration, f"blackbox {module}")
            runs[kind].append(_child(kind, target, duration, IN_FLIGHT, time.time()))
            if processes > 1:
                args_ = (kind, target, duration)
                runs[kind].append(side_by_side(processes, _child, args_, IN_FLIGHT, duration))

    rows: list[list[object]] = []
    summaries: list[Summary] = []
    for kind in targets:
        peer = peers[kind]
        for run in [r for r in (peer,) if r is not None] + runs[kind]:
            n = run.completed or 1
            ratio = run.rate / peer.rate if peer is not None and peer.rate else None
            rows.append(
                [
                    run.name,
                    fmt_rate(run.rate),
                    run.errors,
                    "-" if ratio is None or run is peer else f"{ratio:.2f}x",
                    f"{100 * (run.client_user + run.client_system) / run.seconds:.0f}%",
                    f"{(run.client_user + run.client_system) / n * 1e6:.0f}",
                ]
            )
            summaries.append(Summary("probes", f"{run.name} (/s)", fmt_rate(run.rate)))
            if run is not peer and ratio is not None:
                summaries.append(
                    Summary(
                        "probes",
                        f"{run.name} / blackbox",
                        f"{ratio:.2f}x",
                        f">= {GOAL:g}x",
                        ratio >= GOAL,
                    )
                )
    infra.table(
        f"probes: checks/s against local targets (goal: >= {GOAL:g}x blackbox_exporter)",
        ["run", "checks/s", "errors", "/ blackbox", "client CPU", "CPU µs/chk"],
        rows,
    )
    infra.note(
        "client CPU: the prober's CPU time / wall time (100% = one core): this Python process\n"
        "(or its children), or wrk + blackbox_exporter; CPU µs/chk: the same per check."
    )
    for kind in targets:
        for run in runs[kind]:
            if run.first_error:
                infra.note(f"{run.name}: {run.errors} errors, e.g. {run.first_error}")
    for message in dict.fromkeys(skipped):
        infra.note(f"not measured: {message}")
    return summaries
