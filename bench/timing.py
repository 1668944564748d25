"""Benchmark 3: are the engine's per-phase timings curl's?

A loopback target in its own process (bench.delay_server) sends the headers 20 ms after the
request and the body 5 ms later. The same URL is fetched N times by CurlEngine (one transfer
at a time on uvloop, a new connection each time) and N times by the curl command line
(`curl -s -o /dev/null --write-out '%{time_namelookup} ...'`), alternating. curl's time marks
are turned into phases by the same code (Marks.phases_ms), so both sides are split alike.

The two never time the same transfer (curl is a separate process), so the comparison is
between distributions: both lists of a phase are sorted and matched quantile by quantile
(the i-th smallest engine value with the i-th smallest curl value); the table gives the
median and p99 of |engine - curl| over those pairs, and both medians.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import subprocess
import sys
import time
from contextlib import ExitStack
from pathlib import Path

import pycurl
import uvloop

from agent.curl import CurlEngine, HttpRequest, Marks
from bench import infra
from bench.infra import Summary, fmt_ms

HEADER_DELAY_MS = 20.0
BODY_DELAY_MS = 5.0
BODY_BYTES = 4096
WARMUP_RUNS = 5
GOAL_MS = 1.0
PHASES = ("ResolveTime", "ConnectionTime", "WaitTime", "DownloadTime", "TotalTime")
MARKS = (
    "namelookup",
    "connect",
    "appconnect",
    "pretransfer",
    "posttransfer",
    "starttransfer",
    "total",
)


def _curl_format(with_posttransfer: bool) -> str:
    marks = [m for m in MARKS if with_posttransfer or m != "posttransfer"]
    return " ".join(f"%{{time_{m}}}" for m in marks) + " %{http_code}"


async def _curl_once(curl: str, url: str, with_posttransfer: bool) -> Marks:
    proc = await asyncio.create_subprocess_exec(
        curl,
        "-s",
        "-o",
        "/dev/null",
        "--noproxy",
        "*",
        "--write-out",
        _curl_format(with_posttransfer),
        url,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    try:
        out, err = await asyncio.wait_for(proc.communicate(), 15)
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()
    fields = out.decode().split()
    if proc.returncode != 0 or not fields or fields[-1] != "200":
        raise RuntimeError(f"curl failed ({proc.returncode}): {out!r} {err!r}")
    names = [m for m in MARKS if with_posttransfer or m != "posttransfer"]
    if len(fields) != len(names) + 1:
        raise RuntimeError(f"unexpected curl --write-out output: {out!r}")
    values = dict(zip(names, fields[:-1], strict=True))
    micro = {name: round(float(value) * 1e6) for name, value in values.items()}
    if not with_posttransfer:
        micro["posttransfer"] = micro["pretransfer"]
    return Marks(**micro)


async def _curl_has_posttransfer(curl: str, url: str) -> bool:
    with contextlib.suppress(RuntimeError):
        await _curl_once(curl, url, with_posttransfer=True)
        return True
    await _curl_once(curl, url, with_posttransfer=False)  # fails loudly if curl cannot at all
    return False


async def _engine_once(engine: CurlEngine, url: str) -> Marks:
    response = await engine.request(HttpRequest(url=url, timeout_seconds=10.0))
    if response.curl_error or response.status != 200:
        raise RuntimeError(f"engine failed: {response.curl_message} status {response.status}")
    return response.marks


async def _measure(curl: str, url: str, runs: int) -> tuple[list[Marks], list[Marks], bool]:
    engine = CurlEngine(max_concurrency=4)
    engine_marks: list[Marks] = []
    curl_marks: list[Marks] = []
    try:
        post = await _curl_has_posttransfer(curl, url)
        for i in range(WARMUP_RUNS + runs):
            # alternate which one goes first, so neither always follows the other
            if i % 2:
                e = await _engine_once(engine, url)
                c = await _curl_once(curl, url, post)
            else:
                c = await _curl_once(curl, url, post)
                e = await _engine_once(engine, url)
            if i >= WARMUP_RUNS:
                engine_marks.append(e)
                curl_marks.append(c)
    finally:
        engine.close()
    return engine_marks, curl_marks, post


def _curl_version(curl: str) -> str:
    out = subprocess.run(
        [curl, "--version"], capture_output=True, text=True, timeout=10, check=False
    ).stdout
    words = out.split()
    return " ".join(words[:2] + words[3:4]) if words else "curl (unknown version)"


def main(args: argparse.Namespace) -> list[Summary]:
    runs: int = args.runs
    curl = infra.require("curl")
    print(f"\n=== timing: engine vs curl, {runs} transfers each, alternating ===")
    with ExitStack() as stack:
        workdir = infra.tempdir(stack, "timing")
        server = infra.start_child(
            stack,
            "delay server",
            [
                sys.executable,
                str(Path(__file__).with_name("delay_server.py")),
                str(HEADER_DELAY_MS),
                str(BODY_DELAY_MS),
                str(BODY_BYTES),
            ],
            workdir / "server.log",
        )
        port = _read_port(server)
        url = f"http://{infra.LOOPBACK}:{port}/"
        infra.note(
            f"target: {url} (own process): headers {HEADER_DELAY_MS:g} ms after the request, "
            f"{BODY_BYTES} B body {BODY_DELAY_MS:g} ms later"
        )
        libcurl = " ".join(pycurl.version.split()[:2])
        infra.note(f"engine: {libcurl}; command line: {_curl_version(curl)}")
        engine_marks, curl_marks, post = uvloop.run(_measure(curl, url, runs))

    e_phases = [m.phases_ms() for m in engine_marks]
    c_phases = [m.phases_ms() for m in curl_marks]
    rows: list[list[object]] = []
    summaries: list[Summary] = []
    for phase in PHASES:
        e = sorted(p[phase] for p in e_phases)
        c = sorted(p[phase] for p in c_phases)
        diffs = sorted(abs(a - b) for a, b in zip(e, c, strict=True))
        med, p99 = infra.percentile(diffs, 50), infra.percentile(diffs, 99)
        rows.append(
            [
                phase,
                fmt_ms(infra.percentile(e, 50)),
                fmt_ms(infra.percentile(c, 50)),
                fmt_ms(infra.percentile(e, 99)),
                fmt_ms(infra.percentile(c, 99)),
                fmt_ms(med),
                fmt_ms(p99),
                "yes" if med <= GOAL_MS else "NO",
                "yes" if p99 <= GOAL_MS else "NO",
            ]
        )
        summaries.append(
            Summary(
                "timing",
                f"{phase}: |engine-curl| median / p99",
                f"{med:.3f} / {p99:.3f} ms",
                f"<= {GOAL_MS:g} ms",
                med <= GOAL_MS and p99 <= GOAL_MS,
            )
        )
    infra.table(
        f"timing: per-phase ms, engine vs curl (matched quantiles; goal: within {GOAL_MS:g} ms)",
        [
            "phase",
            "engine p50",
            "curl p50",
            "engine p99",
            "curl p99",
            "|Δ| median",
            "|Δ| p99",
            "median ok",
            "p99 ok",
        ],
        rows,
    )
    send = sorted(p["SendTime"] for p in e_phases)
    infra.note(
        "Both sides measure from the start of the transfer inside libcurl (curl's process start\n"
        "is not included), with a new connection each time. They are different transfers, in\n"
        "different processes and libcurl versions: |Δ| is between the two distributions (the\n"
        "i-th smallest engine value against the i-th smallest curl value), not between paired\n"
        f"transfers. Expected: WaitTime ~{HEADER_DELAY_MS:g} ms and DownloadTime "
        f"~{BODY_DELAY_MS:g} ms (the server's\nsleeps), plus loopback latency."
    )
    if not post:
        infra.note(
            "This curl has no %{time_posttransfer} (added in curl 8.10): curl's WaitTime is\n"
            "starttransfer - pretransfer, i.e. it includes sending the request, which the\n"
            f"engine reports apart as SendTime (engine SendTime p50 "
            f"{infra.percentile(send, 50):.3f} ms, p99 {infra.percentile(send, 99):.3f} ms)."
        )
    infra.note(
        "ResolveTime is ~0 on both sides: the URL is an IP literal, so no resolver is asked\n"
        "(this benchmark does not cover DNS timing)."
    )
    return summaries


def _read_port(server: infra.Child) -> int:
    """The delay server prints its port on its first line of output (to its log file)."""
    assert server.log is not None
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        if server.proc.poll() is not None:
            raise RuntimeError(f"delay server exited: {server.tail()}")
        text = server.log.read_text() if server.log.exists() else ""
        if text.strip():
            return int(text.split()[0])
        time.sleep(0.05)
    raise RuntimeError("delay server did not start within 10 s")
