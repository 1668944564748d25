"""Benchmark 1: checks per second of the agent's HTTP engine, beside blackbox_exporter and wrk.

All three open a new TCP connection per check/probe/request to the same loopback nginx
(one worker, a 3-byte static 200):

- engine:   CurlEngine (FRESH_CONNECT + FORBID_REUSE), N checks in flight on uvloop; every
            response's status checked and its timings turned into Picket's phases
            (Marks.phases_ms), as a real check does.
- enginexN, fullxN: the same in N processes side by side (N = the CPUs), 64 in flight in all,
            as the agent's check workers run them.
- full:     the agent's per-check path: HttpProbe.check (request from the monitor, redirects,
            waterfall, error conditions) + a result (CheckResult's fields) per response, batched
            by 500 (bench.agentpath).
- blackbox: prometheus-blackbox-exporter's http_2xx probe, driven by `wrk -c64 -t2` on /probe.
- wrk:      `wrk -c64 -t2 -H 'Connection: close'` straight at nginx: the machine's ceiling for a
            new connection per request, from a C client with no per-request bookkeeping.
"""

from __future__ import annotations

import argparse
import asyncio
import multiprocessing
import os
import time
from collections.abc import Callable
from contextlib import ExitStack
from dataclasses import dataclass, field

import uvloop

from agent.curl import CurlEngine, HttpRequest
from bench import infra
from bench.agentpath import AgentPath, http_monitor
from bench.infra import Summary, fmt_rate

IN_FLIGHT = (64, 256)
GOAL_VS_BLACKBOX = 3.0
GOAL_VS_WRK = 0.5


@dataclass
class Run:
    label: str
    in_flight: int
    completed: int
    errors: int
    seconds: float
    # CPU seconds of the load generator: this process (engine, full), wrk, or wrk + blackbox
    client_user: float = 0.0
    client_system: float = 0.0
    nginx_cpu: float = 0.0
    nginx_requests: int = 0
    total_ms: list[float] = field(default_factory=list)  # TotalTime of each check (engine runs)
    first_error: str = ""
    name: str = ""  # short name in ratios and the summary

    @property
    def rate(self) -> float:
        return (self.completed - self.errors) / self.seconds if self.seconds else 0.0


async def _drive(
    url: str, in_flight: int, duration: float, full: bool, start_at: float | None = None
) -> Run:
    engine = CurlEngine(max_concurrency=in_flight)  # max_per_host: 256 by default
    path = AgentPath(engine)
    monitor = http_monitor(url)
    request = HttpRequest(url=url, timeout_seconds=5.0)
    timings: list[dict[str, float]] = []
    errors = 0
    first_error = ""

    async def bare_worker(stop_at: float) -> None:
        nonlocal errors, first_error
        while time.perf_counter() < stop_at:
            response = await engine.request(request)
            timings.append(response.marks.phases_ms())
            if response.curl_error or response.status != 200:
                errors += 1
                first_error = first_error or f"{response.curl_message} status {response.status}"

    async def full_worker(stop_at: float) -> None:
        nonlocal errors, first_error
        while time.perf_counter() < stop_at:
            started = time.time()
            result = await path.run_check("bench", monitor, started, started)
            timings.append(result["timings_ms"])
            if result["error_code"]:
                errors += 1
                first_error = first_error or (
                    f"{result['error_description']} {result['error_message']}"
                )

    worker = full_worker if full else bare_worker
    if start_at is not None:  # processes run side by side start together
        await asyncio.sleep(max(0.0, start_at - time.time()))
    try:
        user0, system0 = infra.own_cpu_seconds()
        t0 = time.perf_counter()
        stop_at = t0 + duration
        # every loop stops by itself at stop_at; the timeout is a backstop for a stuck transfer
        async with asyncio.timeout(duration + 30):
            await asyncio.gather(*(worker(stop_at) for _ in range(in_flight)))
        seconds = time.perf_counter() - t0
        user1, system1 = infra.own_cpu_seconds()
    finally:
        engine.close()
    kind = "full" if full else "engine"
    return Run(
        label="full: probe + result" if full else "engine",
        in_flight=in_flight,
        completed=len(timings),
        errors=errors,
        seconds=seconds,
        client_user=user1 - user0,
        client_system=system1 - system0,
        total_ms=[t["TotalTime"] for t in timings],
        first_error=first_error,
        name=f"{kind}@{in_flight}",
    )


def _at_nginx(nginx: infra.Nginx, measure: Callable[[], Run]) -> Run:
    """`measure()`, with what nginx counted and spent meanwhile (less stub_status's own hit)."""
    requests0, cpu0 = nginx.requests(), nginx.cpu_seconds()
    run = measure()
    run.nginx_requests = nginx.requests() - requests0 - 1
    run.nginx_cpu = nginx.cpu_seconds() - cpu0
    return run


def _engine_run(nginx: infra.Nginx, in_flight: int, duration: float, full: bool) -> Run:
    return _at_nginx(nginx, lambda: uvloop.run(_drive(nginx.url, in_flight, duration, full)))


def side_by_side(
    processes: int,
    child: Callable[..., Run],
    args: tuple[object, ...],
    in_flight: int,
    duration: float,
) -> Run:
    """`processes` copies of `child(*args, in_flight / processes, start_at)` in their own
    processes, as the agent's check workers (one per CPU) run checks: they start together,
    and the Run is the sum of theirs over the common window."""
    context = multiprocessing.get_context("spawn")
    share = in_flight // processes
    with context.Pool(processes) as pool:
        start_at = time.time() + 3.0  # time for every child to start and import
        pending = [pool.apply_async(child, (*args, share, start_at)) for _ in range(processes)]
        parts = [job.get(timeout=duration + 60) for job in pending]
    return Run(
        label=f"{parts[0].label}, {processes} processes",
        in_flight=share * processes,
        completed=sum(p.completed for p in parts),
        errors=sum(p.errors for p in parts),
        seconds=max(p.seconds for p in parts),
        client_user=sum(p.client_user for p in parts),
        client_system=sum(p.client_system for p in parts),
        total_ms=[t for p in parts for t in p.total_ms],
        first_error=next((p.first_error for p in parts if p.first_error), ""),
        name=f"{parts[0].name.partition('@')[0]}x{processes}@{share * processes}",
    )


def _processes_run(
    nginx: infra.Nginx, processes: int, in_flight: int, duration: float, full: bool
) -> Run:
    args = (nginx.url, full, duration)
    return _at_nginx(
        nginx, lambda: side_by_side(processes, _engine_child, args, in_flight, duration)
    )


def _engine_child(url: str, full: bool, duration: float, in_flight: int, start_at: float) -> Run:
    return uvloop.run(_drive(url, in_flight, duration, full, start_at))


def _wrk_run(nginx: infra.Nginx, duration: float, threads: int) -> Run:
    def measure() -> Run:
        result = infra.run_wrk(nginx.url, duration, threads=threads, headers=["Connection: close"])
        return _from_wrk(result, f"wrk -t{threads}, Connection: close", f"wrk -t{threads}")

    return _at_nginx(nginx, measure)


def _from_wrk(
    result: infra.WrkResult, label: str, name: str, more_user: float = 0.0, more_system: float = 0.0
) -> Run:
    """A wrk run as a Run; `more_*`: CPU of a process wrk drove (blackbox_exporter)."""
    return Run(
        label=label,
        in_flight=64,
        completed=result.requests,
        errors=result.errors,
        seconds=result.seconds,
        client_user=result.cpu_user + more_user,
        client_system=result.cpu_system + more_system,
        first_error=_wrk_error(result),
        name=name,
    )


def blackbox_run(
    blackbox: infra.Blackbox, module: str, target: str, duration: float, name: str
) -> Run:
    """blackbox_exporter's `module` probing `target`, driven by `wrk -c64 -t2` on /probe."""
    probe = blackbox.probe_url(target, module)
    answer = infra.http_get(probe)
    if "probe_success 1" not in answer:
        raise RuntimeError(f"blackbox_exporter's {module} probe failed: {answer[-500:]}")
    bbx_user0, bbx_system0 = blackbox.cpu_seconds()
    result = infra.run_wrk(probe, duration)
    bbx_user1, bbx_system1 = blackbox.cpu_seconds()
    return _from_wrk(
        result,
        f"blackbox_exporter {module}",
        name,
        bbx_user1 - bbx_user0,
        bbx_system1 - bbx_system0,
    )


def _blackbox_run(nginx: infra.Nginx, blackbox: infra.Blackbox, duration: float) -> Run:
    return _at_nginx(
        nginx, lambda: blackbox_run(blackbox, "http_2xx", nginx.url, duration, "blackbox")
    )


def _wrk_error(result: infra.WrkResult) -> str:
    if not result.errors:
        return ""
    parts = [f"{k} {v}" for k, v in result.socket_errors.items() if v]
    if result.non_2xx:
        parts.append(f"non-2xx {result.non_2xx}")
    return "socket errors: " + ", ".join(parts)


def _row(run: Run) -> list[object]:
    totals = sorted(run.total_ms)
    n = run.completed or 1
    return [
        run.label,
        run.in_flight,
        fmt_rate(run.rate),
        fmt_rate(run.nginx_requests / run.seconds),
        run.errors,
        f"{infra.percentile(totals, 50):.2f}" if totals else "-",
        f"{infra.percentile(totals, 99):.2f}" if totals else "-",
        f"{100 * (run.client_user + run.client_system) / run.seconds:.0f}%",
        f"{run.client_user / n * 1e6:.0f}",
        f"{run.client_system / n * 1e6:.0f}",
        f"{100 * run.nginx_cpu / run.seconds:.0f}%",
    ]


def _ratio(a: Run, b: Run | None) -> float | None:
    return a.rate / b.rate if b is not None and b.rate else None


def _x(value: float | None) -> str:
    return "-" if value is None else f"{value:.2f}x"


def main(args: argparse.Namespace) -> list[Summary]:
    duration: float = args.duration
    print(f"\n=== engine: checks/s, a new connection per check, {duration:g} s of load per run ===")
    runs: list[Run] = []
    wrk: Run | None = None
    wrk1: Run | None = None
    blackbox_run: Run | None = None
    skipped: list[str] = []
    with ExitStack() as stack:
        nginx = infra.Nginx(stack)
        infra.note(f"target: nginx (1 worker) at {nginx.url}, static 3-byte 200")
        try:
            infra.require("wrk")
            wrk = _wrk_run(nginx, duration, threads=2)
            runs.append(wrk)
        except infra.Missing as exc:
            skipped.append(str(exc))
        runs.append(_engine_run(nginx, IN_FLIGHT[0], duration, full=False))
        try:
            infra.require("wrk")
            blackbox = infra.Blackbox(stack)
            blackbox_run = _blackbox_run(nginx, blackbox, duration)
            runs.append(blackbox_run)
        except infra.Missing as exc:
            skipped.append(str(exc))
        for in_flight in IN_FLIGHT[1:]:
            runs.append(_engine_run(nginx, in_flight, duration, full=False))
        for in_flight in IN_FLIGHT:
            runs.append(_engine_run(nginx, in_flight, duration, full=True))
        processes = os.cpu_count() or 1
        if processes > 1:  # the agent runs one check worker per CPU
            for full in (False, True):
                runs.append(_processes_run(nginx, processes, IN_FLIGHT[0], duration, full))
        if wrk is not None:
            wrk1 = _wrk_run(nginx, duration, threads=1)
            runs.append(wrk1)

    infra.table(
        "engine: a new connection per check against loopback nginx",
        [
            "run",
            "in flight",
            "checks/s",
            "nginx req/s",
            "errors",
            "Total p50 ms",
            "p99 ms",
            "client CPU",
            "user µs/chk",
            "sys µs/chk",
            "nginx CPU",
        ],
        [_row(r) for r in runs],
    )
    infra.note(
        "checks/s: successful checks (status 200) per second of wall time; nginx req/s: what\n"
        "nginx's stub_status counted in the same run. client CPU: the load generator's CPU time /\n"
        "wall time (100% = one core): this Python process for engine and full, wrk for wrk, wrk +\n"
        "blackbox_exporter for blackbox; user/sys µs/chk: its user and kernel CPU per check (on\n"
        "loopback the kernel work of both TCP ends is largely charged to the sending process).\n"
        "The client and nginx share the 2 cores. wrk -t1 (one thread, one core, like the engine)\n"
        "is shown for reference; the goal is against wrk -t2."
    )
    for run in runs:
        if run.first_error:
            infra.note(f"{run.label} @{run.in_flight}: {run.errors} errors, e.g. {run.first_error}")
    for message in dict.fromkeys(skipped):
        infra.note(f"peer not measured: {message}")

    ours = [r for r in runs if r.name.startswith(("engine", "full"))]
    infra.table(
        f"engine ratios (goals: >= {GOAL_VS_BLACKBOX:g}x blackbox, >= {GOAL_VS_WRK:g}x wrk -t2)",
        ["run", "checks/s", "/ blackbox", "/ wrk -t2", "/ wrk -t1"],
        [
            [
                r.name,
                fmt_rate(r.rate),
                _x(_ratio(r, blackbox_run)),
                _x(_ratio(r, wrk)),
                _x(_ratio(r, wrk1)),
            ]
            for r in ours
        ],
    )

    for r in ours:
        cpu = (r.client_user + r.client_system) / r.seconds
        if cpu >= 0.9 and r.completed and r.client_system and "x" not in r.name:
            infra.note(
                f"{r.name}: this process used {100 * cpu:.0f}% of one core (one thread: the limit);"
                f" its kernel time alone,\n{r.client_system / r.completed * 1e6:.0f} µs/check, "
                f"would cap one core at ~{fmt_rate(r.completed / r.client_system)} checks/s."
            )

    summaries = [
        Summary("engine", f"{r.name} (/s)", fmt_rate(r.rate))
        for r in [wrk, wrk1, blackbox_run, *ours]
        if r is not None
    ]
    for r in ours:
        vs_bbx, vs_wrk = _ratio(r, blackbox_run), _ratio(r, wrk)
        summaries.append(
            Summary(
                "engine",
                f"{r.name} / blackbox",
                _x(vs_bbx),
                f">= {GOAL_VS_BLACKBOX:g}x",
                None if vs_bbx is None else vs_bbx >= GOAL_VS_BLACKBOX,
            )
        )
        summaries.append(
            Summary(
                "engine",
                f"{r.name} / wrk -t2",
                _x(vs_wrk),
                f">= {GOAL_VS_WRK:g}x",
                None if vs_wrk is None else vs_wrk >= GOAL_VS_WRK,
            )
        )
    return summaries
