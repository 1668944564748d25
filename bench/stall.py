"""Benchmark: do certificate checks stall the HTTP checks of the same worker?

One check worker's loop (uvloop, one CurlEngine, the probes sharing one ProbeContext) runs
rounds of HTTP checks against the loopback delay target (bench.delay_server: headers 20 ms
after the request, the body 5 ms later, a new connection each time). In a "quiet" round only
the HTTP checks run; in a "loaded" round CERTS certificate checks against a loopback TLS target
(bench.tls_server, its own process) start in the same loop turn, as when their monitors share
a schedule phase. Rounds of each kind alternate, so drift touches them alike. The certificate
checks trust the system's CA bundle plus the test CA, as an agent trusts the system's.

The HTTP checks' timings are libcurl's, but libcurl only sees its sockets when the loop hands
them over: a loop busy elsewhere shows up in them. Goal: the loaded HTTP timings within 2 ms of
the quiet ones (median and p99 of TotalTime).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import gc
import os
import sys
import time
from contextlib import ExitStack
from pathlib import Path

import uvloop

from agent.curl import SYSTEM_CA_BUNDLE, CurlEngine
from agent.probes.base import ProbeContext
from agent.probes.http import HttpProbe
from agent.probes.tls import CertificateProbe
from bench import infra
from bench.infra import Summary, fmt_ms
from bench.lateness import GcWatch
from bench.timing import BODY_BYTES, BODY_DELAY_MS, HEADER_DELAY_MS, _read_port
from shared.monitors import CertificateMonitor, HttpMonitor

HTTP_PER_ROUND = 5
CERTS = 100
ROUND_GAP_SECONDS = 0.05
WARMUP_ROUNDS = 3
GOAL_MS = 2.0
TICK_SECONDS = 0.001
DELAY_SERVER_NICENESS = -10
PHASES = ("ConnectionTime", "WaitTime", "DownloadTime", "TotalTime")


async def _round(
    http: HttpProbe,
    http_monitor: HttpMonitor,
    certs: CertificateProbe | None,
    cert_monitor: CertificateMonitor,
) -> list[dict[str, float]]:
    cert_checks = [
        asyncio.create_task(certs.check(cert_monitor)) for _ in range(CERTS if certs else 0)
    ]
    http_checks = [asyncio.create_task(http.check(http_monitor)) for _ in range(HTTP_PER_ROUND)]
    outcomes = await asyncio.gather(*http_checks)
    for outcome in [*outcomes, *await asyncio.gather(*cert_checks)]:
        if not outcome.ok:
            raise RuntimeError(f"a check failed: {outcome.description} {outcome.error_message}")
    return [outcome.timings_ms for outcome in outcomes]


async def _measure(
    rounds: int, http_url: str, cert_url: str, ca_file: str
) -> dict[str, list[dict[str, float]]]:
    curl = CurlEngine(max_concurrency=1000)
    context = ProbeContext(curl=curl, max_body_bytes=1 << 20, ca_file=ca_file)
    http = HttpProbe(context)
    http_monitor = HttpMonitor.model_validate(
        {"Name": "http", "MonitorType": "Http", "Url": http_url, "TimeoutSeconds": 10}
    )
    cert_monitor = CertificateMonitor.model_validate(
        {"Name": "tls", "MonitorType": "Certificate", "Url": cert_url, "TimeoutSeconds": 10}
    )
    variants: dict[str, CertificateProbe | None] = {
        "quiet": None,
        "loaded": CertificateProbe(context),
    }
    timings: dict[str, list[dict[str, float]]] = {name: [] for name in variants}
    lags: dict[str, list[float]] = {name: [] for name in variants}
    watch = GcWatch()
    try:
        for index in range(WARMUP_ROUNDS + rounds):
            if index == WARMUP_ROUNDS:
                # as a worker does once its assignments settle (agent.runner): the long-lived
                # heap out of the collector's sight, so a full collection is short
                gc.collect()
                gc.freeze()
                watch.__enter__()
            for name, certs in variants.items():
                lag: list[float] = []
                ticker = asyncio.create_task(_tick(lag))
                found = await _round(http, http_monitor, certs, cert_monitor)
                ticker.cancel()
                if index >= WARMUP_ROUNDS:
                    timings[name] += found
                    lags[name] += lag
                await asyncio.sleep(ROUND_GAP_SECONDS)
    finally:
        curl.close()
        if gc.callbacks.count(watch._callback):
            watch.__exit__()
        gc.unfreeze()
    slowest = max((ms for _at, _generation, ms in watch.passes), default=0.0)
    infra.note(f"garbage collections while measured: {len(watch.passes)}, longest {slowest:.1f} ms")
    for name, values in lags.items():
        timings[name + " lag"] = [{"lag": value} for value in values]
    return timings


async def _tick(lags: list[float]) -> None:
    """How late the loop wakes a 1 ms timer: time the loop spent on something else."""
    while True:
        began = time.perf_counter()
        await asyncio.sleep(TICK_SECONDS)
        lags.append((time.perf_counter() - began - TICK_SECONDS) * 1000)


def main(args: argparse.Namespace) -> list[Summary]:
    import trustme

    rounds = max(10, args.runs // HTTP_PER_ROUND)
    print(
        f"\n=== stall: {HTTP_PER_ROUND} HTTP checks per round, alone and with {CERTS} "
        f"certificate checks in the same phase, {rounds} rounds of each ==="
    )
    with ExitStack() as stack:
        workdir = infra.tempdir(stack, "stall")
        ca = trustme.CA()
        cert, key, ca_file = workdir / "cert.pem", workdir / "key.pem", workdir / "ca.pem"
        leaf = ca.issue_cert(infra.LOOPBACK)
        leaf.cert_chain_pems[0].write_to_path(str(cert))
        leaf.private_key_pem.write_to_path(str(key))
        system = Path(SYSTEM_CA_BUNDLE)
        bundle = system.read_bytes() if system.exists() else b""
        ca_file.write_bytes(bundle + ca.cert_pem.bytes())
        here = Path(__file__)
        delay = infra.start_child(
            stack,
            "delay server",
            [
                sys.executable,
                str(here.with_name("delay_server.py")),
                str(HEADER_DELAY_MS),
                str(BODY_DELAY_MS),
                str(BODY_BYTES),
            ],
            workdir / "delay.log",
        )
        tls = infra.start_child(
            stack,
            "TLS server",
            [sys.executable, str(here.with_name("tls_server.py")), str(cert), str(key)],
            workdir / "tls.log",
        )
        # The targets stand in for other machines: the HTTP target first when the cores are
        # busy (it answers as it would on its own host), the TLS target last (bench.tls_server)
        with contextlib.suppress(OSError):  # raising a priority needs root
            os.setpriority(os.PRIO_PROCESS, delay.proc.pid, DELAY_SERVER_NICENESS)
        http_url = f"http://{infra.LOOPBACK}:{_read_port(delay)}/"
        cert_url = f"https://{infra.LOOPBACK}:{_read_port(tls)}/"
        infra.note(f"HTTP target: {http_url}; TLS target: {cert_url} (own processes)")
        began = time.monotonic()
        timings = uvloop.run(_measure(rounds, http_url, cert_url, str(ca_file)))
        infra.note(f"{time.monotonic() - began:.1f} s")

    def quantiles(name: str, phase: str) -> tuple[float, float]:
        values = sorted(t[phase] for t in timings[name])
        return infra.percentile(values, 50), infra.percentile(values, 99)

    rows: list[list[object]] = []
    summaries: list[Summary] = []
    for phase in PHASES:
        quiet50, quiet99 = quantiles("quiet", phase)
        row: list[object] = [phase, fmt_ms(quiet50), fmt_ms(quiet99)]
        p50, p99 = quantiles("loaded", phase)
        row += [f"{fmt_ms(p50)} ({p50 - quiet50:+.2f})", f"{fmt_ms(p99)} ({p99 - quiet99:+.2f})"]
        if phase == "TotalTime":
            summaries.append(
                Summary(
                    "stall",
                    f"HTTP TotalTime with {CERTS} cert checks: Δ p50 / Δ p99",
                    f"{p50 - quiet50:+.2f} / {p99 - quiet99:+.2f} ms",
                    f"<= {GOAL_MS:g} ms",
                    max(p50 - quiet50, p99 - quiet99) <= GOAL_MS,
                )
            )
        rows.append(row)
    quiet50, quiet99 = quantiles("quiet lag", "lag")
    p50, p99 = quantiles("loaded lag", "lag")
    rows.append(
        [
            "loop lag",
            fmt_ms(quiet50),
            fmt_ms(quiet99),
            f"{fmt_ms(p50)} ({p50 - quiet50:+.2f})",
            f"{fmt_ms(p99)} ({p99 - quiet99:+.2f})",
        ]
    )
    infra.note(
        "loop lag max: quiet {:.1f} ms, loaded {:.1f} ms".format(
            *(max(t["lag"] for t in timings[f"{name} lag"]) for name in ("quiet", "loaded"))
        )
    )
    infra.table(
        f"stall: HTTP check timings in ms, quiet vs with {CERTS} certificate checks in the "
        f"same phase (Δ against quiet; goal: within {GOAL_MS:g} ms)",
        ["phase", "quiet p50", "quiet p99", "loaded p50 (Δ)", "loaded p99 (Δ)"],
        rows,
    )
    return summaries
