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

Failed transfers too: a target that accepts and never answers (bench.delay_server silent),
over HTTP (a time-out waiting for the response) and over HTTPS (a TLS handshake that stalls),
each fetched FAILED_RUNS times by both with a FAILED_TIMEOUT_S time-out. A failed transfer's
marks are turned into phases by the same rule on both sides (the step being worked on gets the
rest of the total, steps not reached 0): the time must land in WaitTime and in
HttpsHandshakeTime respectively, for both.
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

from agent.curl import PHASE_NAMES, CurlEngine, HttpRequest, Marks
from bench import infra
from bench.infra import Summary, fmt_ms

HEADER_DELAY_MS = 20.0
BODY_DELAY_MS = 5.0
BODY_BYTES = 4096
WARMUP_RUNS = 5
GOAL_MS = 1.0
PHASE_ORDER = PHASE_NAMES[:-1]  # TotalTime apart
FAILED_RUNS = 10
FAILED_TIMEOUT_S = 0.5
FAILED_GOAL_MS = 5.0  # both stop at a time-out timer: a loop turn late is a few ms
FAILED_CASES = (  # scheme, the phase the time must land in
    ("http", "WaitTime"),
    ("https", "HttpsHandshakeTime"),
)
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


async def _curl_once(
    curl: str, url: str, with_posttransfer: bool, max_time: float | None = None
) -> Marks:
    limit = ["--max-time", str(max_time)] if max_time else []
    proc = await asyncio.create_subprocess_exec(
        curl,
        "-s",
        "-o",
        "/dev/null",
        "--noproxy",
        "*",
        *limit,
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
    expected = (28, "000") if max_time else (0, "200")  # a time-out, or a 200
    if (proc.returncode, fields[-1] if fields else "") != expected:
        raise RuntimeError(f"curl failed ({proc.returncode}): {out!r} {err!r}")
    names = [m for m in MARKS if with_posttransfer or m != "posttransfer"]
    if len(fields) != len(names) + 1:
        raise RuntimeError(f"unexpected curl --write-out output: {out!r}")
    values = dict(zip(names, fields[:-1], strict=True))
    micro = {name: round(float(value) * 1e6) for name, value in values.items()}
    if not with_posttransfer:
        micro["posttransfer"] = micro["pretransfer"]
    return Marks(**micro, tls=url.startswith("https://"))


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


async def _engine_failing(engine: CurlEngine, url: str) -> Marks:
    response = await engine.request(HttpRequest(url=url, timeout_seconds=FAILED_TIMEOUT_S))
    if response.curl_error != 28:
        raise RuntimeError(f"engine: expected a time-out, got {response.curl_message!r}")
    return response.marks


async def _measure_failed(
    curl: str, base: str, post: bool
) -> dict[str, tuple[list[Marks], list[Marks]]]:
    """Per scheme: the engine's and curl's marks of FAILED_RUNS timed-out transfers each."""
    engine = CurlEngine(max_concurrency=4)
    found: dict[str, tuple[list[Marks], list[Marks]]] = {}
    try:
        for scheme, _phase in FAILED_CASES:
            url = f"{scheme}://{base}/"
            ours: list[Marks] = []
            theirs: list[Marks] = []
            for i in range(FAILED_RUNS):
                if i % 2:
                    ours.append(await _engine_failing(engine, url))
                    theirs.append(await _curl_once(curl, url, post, FAILED_TIMEOUT_S))
                else:
                    theirs.append(await _curl_once(curl, url, post, FAILED_TIMEOUT_S))
                    ours.append(await _engine_failing(engine, url))
            found[scheme] = (ours, theirs)
    finally:
        engine.close()
    return found


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
        silent = infra.start_child(
            stack,
            "silent server",
            [sys.executable, str(Path(__file__).with_name("delay_server.py")), "silent"],
            workdir / "silent.log",
        )
        silent_base = f"{infra.LOOPBACK}:{_read_port(silent)}"
        infra.note(
            f"failed transfers: {silent_base} (own process) accepts and never answers; "
            f"{FAILED_RUNS} transfers each, time-out {FAILED_TIMEOUT_S:g} s"
        )
        failed = uvloop.run(_measure_failed(curl, silent_base, post))

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
    summaries += _failed_table(failed)
    return summaries


def _failed_table(failed: dict[str, tuple[list[Marks], list[Marks]]]) -> list[Summary]:
    """Where a failed transfer's time lands, engine vs curl: every phase that holds some of it
    on either side, the span the time must be in, and TotalTime."""
    rows: list[list[object]] = []
    summaries: list[Summary] = []
    for scheme, phase in FAILED_CASES:
        ours, theirs = failed[scheme]
        e_phases = [m.phases_ms() for m in ours]
        c_phases = [m.phases_ms() for m in theirs]
        shown = [name for name in PHASE_ORDER if max(p[name] for p in e_phases + c_phases) >= 1.0]
        span = ("ConnectionTime", phase) if phase == "HttpsHandshakeTime" else (phase,)
        spans = {"+".join(span): span} if len(span) > 1 else {}
        for name, parts in (
            [(n, (n,)) for n in shown] + list(spans.items()) + [("TotalTime", ("TotalTime",))]
        ):
            e = sorted(sum(p[x] for x in parts) for p in e_phases)
            c = sorted(sum(p[x] for x in parts) for p in c_phases)
            diffs = sorted(abs(a - b) for a, b in zip(e, c, strict=True))
            med = infra.percentile(diffs, 50)
            rows.append(
                [
                    f"{scheme}: {name}",
                    fmt_ms(infra.percentile(e, 50)),
                    fmt_ms(infra.percentile(c, 50)),
                    fmt_ms(med),
                    fmt_ms(diffs[-1]),
                ]
            )
        held = min(p[phase] / p["TotalTime"] for p in e_phases if p["TotalTime"])
        summaries.append(
            Summary(
                "timing",
                f"failed {scheme} (silent server): engine's {phase} / TotalTime, min",
                f"{held:.3f}",
                ">= 0.99",
                held >= 0.99,
            )
        )
        e_total = sorted(sum(p[x] for x in span) for p in e_phases)
        c_total = sorted(sum(p[x] for x in span) for p in c_phases)
        med = infra.percentile(
            sorted(abs(a - b) for a, b in zip(e_total, c_total, strict=True)), 50
        )
        summaries.append(
            Summary(
                "timing",
                f"failed {scheme} (silent server): {'+'.join(span)} |engine-curl| median",
                f"{med:.3f} ms",
                f"<= {FAILED_GOAL_MS:g} ms",
                med <= FAILED_GOAL_MS,
            )
        )
    infra.table(
        f"timing of failed transfers (time-out {FAILED_TIMEOUT_S:g} s): engine vs curl, ms",
        ["transfer: phase", "engine p50", "curl p50", "|Δ| median", "|Δ| max"],
        rows,
    )
    infra.note(
        "A silent server over HTTP: the time is waiting for the response (WaitTime); over\n"
        "HTTPS the handshake never completes (HttpsHandshakeTime). Unreached marks are 0 and\n"
        "the same rule (Marks.phases_ms) splits both sides. libcurl before 8 (Debian's curl\n"
        "7.88) sets no connect mark until the TLS handshake is done, so its stalled handshake\n"
        "shows as ConnectionTime: the two are compared as one span (ConnectionTime +\n"
        "HttpsHandshakeTime), and the engine's own split is checked apart."
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
