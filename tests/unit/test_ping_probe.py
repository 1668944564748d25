"""Ping checks: raw ICMP as root here, and the unprivileged path as user `nobody` inside a
network namespace whose net.ipv4.ping_group_range the test sets.

The child in the namespace starts as root, imports what it needs, and only then becomes
`nobody`: the checkout and its venv may sit where `nobody` cannot read (under /root, in a
0700 temp dir), and the ICMP socket is what the test is about, not the imports."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import uuid
from collections.abc import Iterator

import pytest

from agent.probes.base import ProbeContext
from agent.probes.ping import PingProbe
from shared.errors import ErrorCode
from shared.monitors import PingMonitor
from tests.helpers import REPO

AS_ROOT = os.geteuid() == 0


async def _ping(address: str, **fields: object) -> dict[str, object]:
    monitor = PingMonitor.model_validate(
        {"Name": "p", "MonitorType": "Ping", "NetworkAddress": address, **fields}
    )
    outcome = await PingProbe(ProbeContext(curl=None, max_body_bytes=0)).check(monitor)  # type: ignore[arg-type]
    return {
        "code": int(outcome.error_code),
        "message": outcome.error_message,
        **outcome.attributes,
        "total": outcome.timings_ms.get("TotalTime"),
        "warnings": outcome.warnings,
    }


@pytest.mark.skipif(not AS_ROOT, reason="raw ICMP sockets need root")
@pytest.mark.parametrize("address", ["127.0.0.1", "::1"])
async def test_raw_ping_on_loopback(address: str) -> None:
    result = await _ping(address, PingCount=3)
    assert result["code"] == 0, result
    assert result["PingSocket"] == "raw" and result["PingReceived"] == 3
    assert 0 < result["PingMinTime"] <= result["PingAvgTime"] <= result["PingMaxTime"]  # type: ignore[operator]


@pytest.mark.skipif(not AS_ROOT, reason="raw ICMP sockets need root")
async def test_unanswered_pings_are_an_error() -> None:
    # 192.0.2.0/24 is TEST-NET-1: nothing answers; a blackhole route keeps the request local
    namespace = _netns()
    try:
        _in(namespace, "ip", "route", "add", "blackhole", "192.0.2.0/24")
        result = _run_probe(namespace, "192.0.2.1", as_nobody=False, count=2, timeout=3)
        assert result["code"] in (ErrorCode.PACKET_LOSS, ErrorCode.CONNECTION_FAILED), result
    finally:
        _delete(namespace)


def _netns() -> str:
    if not (AS_ROOT and shutil.which("ip")):
        pytest.skip("network namespaces need root and iproute2")
    name = f"picket-ping-{uuid.uuid4().hex[:8]}"
    subprocess.run(["ip", "netns", "add", name], check=True)
    _in(name, "ip", "link", "set", "lo", "up")
    return name


def _in(namespace: str, *argv: str) -> None:
    subprocess.run(["ip", "netns", "exec", namespace, *argv], check=True, capture_output=True)


def _delete(namespace: str) -> None:
    subprocess.run(["ip", "netns", "del", namespace], check=False)


NOBODY = 65534

SCRIPT = """
import asyncio, json, os, sys
from agent.probes.ping import PingProbe
from agent.probes.base import ProbeContext
from shared.monitors import PingMonitor
def check(address, count, timeout):
    monitor = PingMonitor.model_validate({{"Name": "p", "MonitorType": "Ping",
        "NetworkAddress": address, "PingCount": count, "TimeoutSeconds": timeout}})
    return asyncio.run(PingProbe(ProbeContext(curl=None, max_body_bytes=0)).check(monitor))
if {as_nobody}:
    # one check as root first loads what a check imports lazily (the resolver's thread pool);
    # then no capability and no supplementary group: a plain unprivileged process
    check("127.0.0.1", 1, 5)
    os.setgroups([])
    os.setgid({nobody})
    os.setuid({nobody})
    assert os.geteuid() == {nobody} and os.getegid() == {nobody} and not os.getgroups()
PingProbe.prefer_raw = {prefer_raw}
outcome = check("{address}", {count}, {timeout})
print(json.dumps({{"code": int(outcome.error_code), "message": outcome.error_message,
                  **outcome.attributes}}))
"""


def _run_probe(
    namespace: str, address: str, as_nobody: bool, count: int = 3, timeout: int = 10
) -> dict[str, object]:
    script = SCRIPT.format(
        as_nobody=as_nobody,
        nobody=NOBODY,
        prefer_raw=not as_nobody,
        address=address,
        count=count,
        timeout=timeout,
    )
    done = subprocess.run(
        ["ip", "netns", "exec", namespace, sys.executable, "-c", script],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=REPO,
        env={**os.environ, "PYTHONPATH": str(REPO)},
    )
    assert done.returncode == 0, done.stderr
    return dict(json.loads(done.stdout.strip().splitlines()[-1]))


@pytest.fixture
def namespace() -> Iterator[str]:
    name = _netns()
    yield name
    _delete(name)


def test_unprivileged_icmp_when_the_group_range_allows_it(namespace: str) -> None:
    _in(namespace, "sysctl", "-w", "net.ipv4.ping_group_range=1 0")
    refused = _run_probe(namespace, "127.0.0.1", as_nobody=True)
    assert refused["code"] == ErrorCode.ICMP_NOT_PERMITTED, refused
    assert "ping_group_range" in str(refused["message"])
    _in(namespace, "sysctl", "-w", "net.ipv4.ping_group_range=0 2147483647")
    allowed = _run_probe(namespace, "127.0.0.1", as_nobody=True)
    assert allowed["code"] == 0, allowed
    assert allowed["PingSocket"] == "unprivileged" and allowed["PingReceived"] == 3
