"""Nothing in a check stalls a worker: SSL contexts and the system DNS resolver are built once
per worker, every name lookup has a time limit, and every probe type holds the worker's one
bound on checks in flight."""

from __future__ import annotations

import asyncio
import functools
import json
import os
import shutil
import ssl
import subprocess
import sys
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import pytest
import trustme

from agent.bounds import STARTS_PER_TURN, Bounds, host_key
from agent.curl import CurlEngine
from agent.metrics import CheckMetrics
from agent.probes.base import Outcome, ProbeContext
from agent.probes.tls import CertificateProbe
from agent.runner import Runner
from agent.settings import AgentSettings
from shared.errors import ErrorCode
from shared.monitors import model_for
from tests.helpers import REPO, Target, free_port, wait_for
from tests.servers.dns import DnsServer


@pytest.fixture(scope="module")
def ca() -> trustme.CA:
    return trustme.CA()


@pytest.fixture
async def tls_target(ca: trustme.CA) -> AsyncIterator[Target]:
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ca.issue_cert("127.0.0.1").configure_cert(context)
    server = Target()
    await server.start(ssl_context=context)
    yield server
    await server.stop()


@pytest.fixture
async def dns_server() -> AsyncIterator[DnsServer]:
    server = DnsServer({("www.picket.test.", "A"): ["192.0.2.10"]})
    await server.start()
    yield server
    await server.stop()


def _monitor(monitor_type: str, **fields: Any) -> Any:
    model = model_for(monitor_type)
    assert model is not None
    return model.model_validate({"Name": "m", "MonitorType": monitor_type, **fields})


async def test_ssl_contexts_are_built_once_per_configuration(
    ca: trustme.CA, tls_target: Target, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    ca_file = str(tmp_path / "ca.pem")
    ca.cert_pem.write_to_path(ca_file)
    built = 0
    create = ssl.create_default_context

    def counting(*args: Any, **kwargs: Any) -> ssl.SSLContext:
        nonlocal built
        built += 1
        return create(*args, **kwargs)

    monkeypatch.setattr(ssl, "create_default_context", counting)
    curl = CurlEngine(4)
    probe = CertificateProbe(ProbeContext(curl=curl, max_body_bytes=0, ca_file=ca_file))
    try:
        for verify in (True, False) * 5:
            outcome = await probe.check(
                _monitor("Certificate", Url=tls_target.base, CheckCertificateErrors=verify)
            )
            assert outcome.ok, outcome
    finally:
        curl.close()
    assert built == 2  # one context per configuration (verify or not), not one per check


async def _echo_server() -> asyncio.Server:
    async def greet(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        writer.write(b"220 ready\r\n")
        await writer.drain()
        writer.close()

    return await asyncio.start_server(greet, "127.0.0.1", 0)


async def _held_back(
    bounds: Bounds, key: str, check: Callable[[], Awaitable[Outcome]], waiting: int = 1
) -> Outcome:
    """Start `check` while the test holds `key`'s slot: the check must wait for it (the target
    sees nothing), and run once the slot is free."""
    async with bounds.hold(key):
        task = asyncio.create_task(check())
        await wait_for(
            _async(lambda: bounds.waiting() == waiting), "the check to wait for its slot", 30
        )
        assert not task.done()
    return await asyncio.wait_for(task, 60)


def _async(predicate: Callable[[], bool]) -> Callable[[], Awaitable[bool]]:
    async def probe() -> bool:
        return predicate()

    return probe


async def test_every_probe_type_holds_the_workers_one_bound(
    tls_target: Target, dns_server: DnsServer, tmp_path: Path
) -> None:
    settings = AgentSettings(
        data_dir=tmp_path, broker_url=f"mqtt://127.0.0.1:{free_port()}", agent_id="bounds"
    )
    curl = CurlEngine(max_concurrency=8, max_per_host=1)
    runner = Runner(settings, curl, CheckMetrics(), "bounds/worker-0", max_pending=10)
    bounds = curl.bounds  # HTTP's bound, and every other probe's
    echo = await _echo_server()
    port = echo.sockets[0].getsockname()[1]
    dns_host, dns_port = dns_server.address.split(":")
    cases: list[tuple[str, str, dict[str, Any]]] = [
        ("Connect", host_key("127.0.0.1", port), {"NetworkAddress": "127.0.0.1", "Port": port}),
        (
            "Certificate",
            host_key("127.0.0.1", tls_target.port),  # the URL's host:port, as for HTTP
            {"Url": tls_target.base, "CheckCertificateErrors": False},
        ),
        (
            "DNS",
            host_key(dns_host, int(dns_port)),
            {"DnsServer": dns_server.address, "DnsTestValue": "www.picket.test"},
        ),
        (
            "Https",
            host_key("127.0.0.1", tls_target.port),
            {"Url": tls_target.base + "/ok", "CheckCertificateErrors": False},
        ),
    ]
    if os.geteuid() == 0:  # raw ICMP to loopback
        cases.append(("Ping", host_key("127.0.0.1"), {"NetworkAddress": "127.0.0.1"}))
    try:
        for monitor_type, key, fields in cases:
            monitor = _monitor(monitor_type, **fields)
            probe = runner.probes[monitor_type]
            # per host: the host's one slot is taken
            outcome = await _held_back(bounds, key, functools.partial(probe.check, monitor))
            assert outcome.error_code != ErrorCode.TIMEOUT, (monitor_type, outcome)
            # overall: all 8 slots are taken, by checks on other hosts
            others = [bounds.hold(f"other-{n}:1") for n in range(7)]
            for slot in others:
                await slot.__aenter__()
            try:
                outcome = await _held_back(
                    bounds, "one-more:1", functools.partial(probe.check, monitor)
                )
            finally:
                for slot in others:
                    await slot.__aexit__(None, None, None)
            assert outcome.error_code != ErrorCode.TIMEOUT, (monitor_type, outcome)
            assert bounds.holding == 0 and bounds.waiting() == 0
    finally:
        echo.close()
        await echo.wait_closed()
        await runner.cancel_checks()
        curl.close()


# In a network and mount namespace of its own: /etc/resolv.conf names a DNS server on the
# namespace's loopback (port 53, no one else's), /etc/hosts names up.picket.test.
NAMESPACE_SCRIPT = r"""
import asyncio, json, os, sys, time
import dns.asyncresolver
from agent.bounds import Bounds
from agent.curl import CurlEngine
from agent.lookup import NameLookups
from agent.probes.base import ProbeContext
from agent.probes.dns import DnsProbe
from agent.probes.ping import PingProbe
from agent.probes.tcp import ConnectProbe
from agent.probes.tls import CertificateProbe
from shared import monitors
from tests.servers.dns import DnsServer

built = 0
original = dns.asyncresolver.Resolver.__init__
def counting(self, *args, **kwargs):
    global built
    built += 1
    original(self, *args, **kwargs)
dns.asyncresolver.Resolver.__init__ = counting

def monitor(kind, **fields):
    return monitors.model_for(kind).model_validate({"Name": "m", "MonitorType": kind, **fields})

async def main():
    server = DnsServer({("svc.picket.test.", "A"): ["192.0.2.7"]})
    server.port = 53
    await server.start()
    listener = await asyncio.start_server(lambda r, w: w.close(), "127.0.0.1", 0)
    up_port = listener.sockets[0].getsockname()[1]
    lookups = NameLookups()
    ctx = ProbeContext(curl=CurlEngine(1), max_body_bytes=0, bounds=Bounds(1000, 1000),
                       lookups=lookups)
    out = {}
    dns_probe = DnsProbe(ctx)
    answers = [await dns_probe.check(monitor("DNS", DnsTestValue="svc.picket.test"))
               for _ in range(5)]
    out["dns"] = [[int(o.error_code), o.attributes.get("DnsAnswers")] for o in answers]
    out["resolvers_built"] = built

    server.silent = True  # every lookup through DNS hangs from now on
    began = time.monotonic()
    hanging = [ConnectProbe(ctx).check(monitor("Connect", NetworkAddress="hang.picket.test",
                                                Port=80, TimeoutSeconds=2)) for _ in range(40)]
    hanging.append(CertificateProbe(ctx).check(monitor("Certificate",
        Url="https://hang.picket.test/", TimeoutSeconds=2)))
    hanging.append(PingProbe(ctx).check(monitor("Ping", NetworkAddress="hang.picket.test",
                                                  TimeoutSeconds=2)))
    async def up_later():
        await asyncio.sleep(0.5)
        return await ConnectProbe(ctx).check(monitor("Connect", NetworkAddress="up.picket.test",
                                                      Port=up_port, TimeoutSeconds=10))
    *outcomes, up = await asyncio.gather(*hanging, up_later())
    out["hang_seconds"] = time.monotonic() - began
    out["hang"] = sorted({(int(o.error_code), o.error_message) for o in outcomes})
    out["up"] = [int(up.error_code), up.error_message, up.resolved_ip]
    out["lookups_started"] = lookups.started
    print(json.dumps(out), flush=True)
    os._exit(0)  # threads still stuck in the C library's lookup are not waited for

asyncio.run(main())
"""


def test_name_lookups_have_time_limits_and_the_resolver_is_built_once(tmp_path: Path) -> None:
    if os.geteuid() != 0 or not (shutil.which("unshare") and shutil.which("ip")):
        pytest.skip("a private resolv.conf needs root, unshare and iproute2")
    resolv = tmp_path / "resolv.conf"
    # the C library would wait 20 s for the silent server: the checks' 2 s must cut it short
    resolv.write_text("nameserver 127.0.0.1\noptions timeout:20 attempts:1\n")
    hosts = tmp_path / "hosts"
    hosts.write_text("127.0.0.1 localhost\n127.0.0.1 up.picket.test\n")
    script = tmp_path / "script.py"
    script.write_text(NAMESPACE_SCRIPT)
    shell = (
        'ip link set lo up && mount --bind "$1" /etc/resolv.conf && '
        'mount --bind "$2" /etc/hosts && exec "$3" "$4"'
    )
    unshare = ["unshare", "--net", "--mount", "--propagation", "private"]
    done = subprocess.run(
        [*unshare, "sh", "-c", shell, "sh", str(resolv), str(hosts), sys.executable, str(script)],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=REPO,
        env={**os.environ, "PYTHONPATH": str(REPO)},
    )
    assert done.returncode == 0, done.stderr
    found = json.loads(done.stdout.strip().splitlines()[-1])
    assert found["dns"] == [[0, ["192.0.2.7"]]] * 5
    assert found["resolvers_built"] == 1  # not one per check
    codes = {code for code, _message in found["hang"]}
    assert codes == {ErrorCode.DNS_FAILURE}, found["hang"]
    assert all("name lookup of hang.picket.test within 2 s" in m for _c, m in found["hang"])
    assert found["hang_seconds"] < 15  # the checks' limit, not the C library's 20 s
    assert found["up"] == [0, "", "127.0.0.1"]  # other names resolve meanwhile
    # 42 checks of one name hanging at once took one lookup thread, and up.picket.test another
    assert found["lookups_started"] == 2


async def test_paced_checks_start_a_few_per_loop_turn() -> None:
    bounds = Bounds(1000, 1000)
    turns = 0
    started: list[int] = []
    counting = True

    def count_turns() -> None:
        nonlocal turns
        turns += 1
        if counting:
            asyncio.get_running_loop().call_soon(count_turns)

    async def check() -> None:
        async with bounds.hold("host:1", paced=True):
            started.append(turns)

    asyncio.get_running_loop().call_soon(count_turns)
    await asyncio.gather(*(check() for _ in range(3 * STARTS_PER_TURN + 1)))
    counting = False
    per_turn = [started.count(turn) for turn in sorted(set(started))]
    assert per_turn == [STARTS_PER_TURN] * 3 + [1], per_turn
    assert bounds.holding == 0 and bounds.waiting() == 0
