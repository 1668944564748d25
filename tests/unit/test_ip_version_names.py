"""IpVersion required of a host name that has no address in that family (issue 9, item 7).

libcurl resolves through the system's getaddrinfo, which cannot be pointed at another DNS
server: the probe runs in a child process in a network and mount namespace of its own
(`unshare`), where loopback is the only network, /etc/resolv.conf (bound over the system's)
names 127.0.0.1, and the test's own DNS server (tests/servers/dns.py) answers on port 53. No
query leaves the namespace.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from shared.errors import ErrorCode
from tests.helpers import REPO

SCRIPT = """
import asyncio, json
from aiohttp import web
from agent.curl import CurlEngine
from agent.probes.base import ProbeContext
from agent.probes.http import HttpProbe
from agent.probes.tcp import ConnectProbe
from shared.monitors import ConnectMonitor, HttpMonitor
from tests.servers.dns import DnsServer

async def main():
    dns = DnsServer({
        ("v4only.test.", "A"): ["127.0.0.1"],
        ("v6only.test.", "AAAA"): ["::1"],
    })
    dns.port = 53
    await dns.start()
    app = web.Application()
    app.router.add_get("/", lambda request: web.Response(text="ok"))
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", 8080).start()
    await web.TCPSite(runner, "::1", 8080).start()
    curl = CurlEngine(4)
    results = {}
    for host, version in [("v4only.test", "IpV4"), ("v4only.test", "IpV6"),
                          ("v6only.test", "IpV4"), ("nowhere.test", "IpV6")]:
        monitor = HttpMonitor.model_validate({"Name": "m", "MonitorType": "Http",
            "Url": f"http://{host}:8080/", "IpVersion": version, "TimeoutSeconds": 10})
        outcome = await HttpProbe(ProbeContext(curl=curl, max_body_bytes=1024)).check(monitor)
        results[f"{host} {version}"] = [int(outcome.error_code), outcome.error_message]
    for host, version in [("v4only.test", "IpV6"), ("nowhere.test", "IpV4")]:
        monitor = ConnectMonitor.model_validate({"Name": "c", "MonitorType": "Connect",
            "NetworkAddress": host, "Port": 8080, "IpVersion": version, "TimeoutSeconds": 10})
        outcome = await ConnectProbe(ProbeContext(curl=curl, max_body_bytes=0)).check(monitor)
        results[f"connect {host} {version}"] = [int(outcome.error_code), outcome.error_message]
    curl.close()
    await runner.cleanup()
    print(json.dumps(results))

asyncio.run(main())
"""


@pytest.mark.skipif(
    os.geteuid() != 0 or not shutil.which("unshare") or not shutil.which("ip"),
    reason="network and mount namespaces need root, unshare and iproute2",
)
def test_a_name_without_the_required_family(tmp_path: Path) -> None:
    resolv = tmp_path / "resolv.conf"
    resolv.write_text("nameserver 127.0.0.1\noptions timeout:2 attempts:1\n")
    shell = (
        f"ip link set lo up && mount --bind {resolv} /etc/resolv.conf && "
        f'exec "{sys.executable}" -c "$SCRIPT"'
    )
    done = subprocess.run(
        ["unshare", "--net", "--mount", "sh", "-c", shell],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=REPO,
        env={**os.environ, "PYTHONPATH": str(REPO), "SCRIPT": SCRIPT},
    )
    if done.returncode != 0 and "unshare failed" in done.stderr:
        pytest.skip(f"no namespaces here: {done.stderr.strip()}")
    assert done.returncode == 0, done.stderr
    results = json.loads(done.stdout.strip().splitlines()[-1])
    assert results["v4only.test IpV4"] == [0, ""], results  # the names resolve in there
    code, message = results["v4only.test IpV6"]
    assert code == ErrorCode.VERSION_NOT_AS_REQUIRED, results
    assert message == "IpV6 required, v4only.test has no IPv6 address (IPv4 only: 127.0.0.1)"
    code, message = results["v6only.test IpV4"]
    assert code == ErrorCode.VERSION_NOT_AS_REQUIRED, results
    assert message == "IpV4 required, v6only.test has no IPv4 address (IPv6 only: ::1)"
    code, message = results["nowhere.test IpV6"]
    assert code == ErrorCode.DNS_FAILURE, results
    assert message.endswith("(no IPv6 address; IpV6 required)"), message
    code, message = results["connect v4only.test IpV6"]
    assert code == ErrorCode.VERSION_NOT_AS_REQUIRED, results
    assert message == "IpV6 required, v4only.test has no IPv6 address (IPv4 only: 127.0.0.1)"
    code, message = results["connect nowhere.test IpV4"]
    assert code == ErrorCode.DNS_FAILURE, results
    assert message.endswith("(no IPv4 address; IpV4 required)"), message
