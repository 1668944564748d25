"""The engine's phases against `curl --write-out` on the same loopback target.

Tolerant bounds: the scripted delay must land in the same phase for both, within a few ms.
Exact agreement is a benchmark figure (bench/timing.py), not a test.
"""

from __future__ import annotations

import asyncio
import shutil
import statistics

import pytest

from agent.curl import CurlEngine, HttpRequest
from tests.helpers import Target

DELAY_MS = 80
RUNS = 5
# Debian's curl (7.88) has no %{time_posttransfer}: compare send + wait as one span
FORMAT = (
    "%{time_namelookup} %{time_connect} %{time_appconnect} %{time_pretransfer} "
    "%{time_starttransfer} %{time_total}"
)


async def _curl_phases(url: str) -> dict[str, float]:
    proc = await asyncio.create_subprocess_exec(
        "curl", "-s", "-o", "/dev/null", "--write-out", FORMAT, url,
        stdout=asyncio.subprocess.PIPE,
    )  # fmt: skip
    out, _ = await proc.communicate()
    lookup, connect, _app, pre, start, total = (float(x) * 1000 for x in out.split())
    return {
        "ResolveTime": lookup,
        "ConnectionTime": connect - lookup,
        "SendAndWait": start - pre,
        "DownloadTime": total - start,
        "TotalTime": total,
    }


def _ours(phases: dict[str, float]) -> dict[str, float]:
    return {**phases, "SendAndWait": phases["SendTime"] + phases["WaitTime"]}


@pytest.mark.skipif(shutil.which("curl") is None, reason="curl is not installed")
async def test_delay_lands_in_wait_time_for_both(target: Target) -> None:
    url = f"{target.base}/slow?ms={DELAY_MS}"
    engine = CurlEngine(4)
    try:
        ours = [
            _ours((await engine.request(HttpRequest(url=url))).marks.phases_ms())
            for _ in range(RUNS)
        ]
    finally:
        engine.close()
    theirs = [await _curl_phases(url) for _ in range(RUNS)]
    for phase in ("SendAndWait", "TotalTime"):
        mine = statistics.median(p[phase] for p in ours)
        curls = statistics.median(p[phase] for p in theirs)
        assert mine >= DELAY_MS and curls >= DELAY_MS, (phase, mine, curls)
        assert abs(mine - curls) < 15, (phase, mine, curls)
    for phase in ("ResolveTime", "ConnectionTime", "DownloadTime"):
        assert statistics.median(p[phase] for p in ours) < 15, phase
    # ours splits the span: the delay is time to first byte, not sending
    assert statistics.median(p["WaitTime"] for p in ours) >= DELAY_MS
