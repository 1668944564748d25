"""DNS checks against a real DNS server on loopback (UDP, and TCP after truncation)."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import pytest

from agent.curl import CurlEngine
from agent.probes.base import Outcome, ProbeContext
from agent.probes.dns import DnsProbe
from shared.errors import ErrorCode
from shared.monitors import DnsMonitor
from tests.servers.dns import DnsServer

LONG_TXT = " ".join(f'"{"x" * 200}-{n}"' for n in range(4))  # > 512 bytes: needs TCP


@pytest.fixture
async def server() -> AsyncIterator[DnsServer]:
    dns_server = DnsServer(
        {
            ("www.picket.test.", "A"): ["192.0.2.10", "192.0.2.11"],
            ("www.picket.test.", "AAAA"): ["2001:db8::10"],
            ("alias.picket.test.", "CNAME"): ["www.picket.test."],
            ("picket.test.", "MX"): ["10 Mail.Picket.Test."],
            ("picket.test.", "NS"): ["ns1.picket.test."],
            ("picket.test.", "TXT"): ['"v=spf1 -all"'],
            ("picket.test.", "SOA"): ["ns1.picket.test. admin.picket.test. 7 3600 600 86400 60"],
            ("_api._tcp.picket.test.", "SRV"): ["10 5 8443 api.picket.test."],
            ("picket.test.", "CAA"): ['0 issue "ca.picket.test"'],
            ("big.picket.test.", "TXT"): [LONG_TXT],
        }
    )
    await dns_server.start()
    yield dns_server
    await dns_server.stop()


async def _check(
    server: DnsServer, query: str, name: str, expected: str = "", **extra: Any
) -> Outcome:
    monitor = DnsMonitor.model_validate(
        {
            "Name": "dns",
            "MonitorType": "DNS",
            "DnsServer": server.address,
            "DnsQuery": query,
            "DnsTestValue": name,
            "DnsExpectedResult": expected,
            **extra,
        }
    )
    curl = CurlEngine(1)
    try:
        return await DnsProbe(ProbeContext(curl=curl, max_body_bytes=0)).check(monitor)
    finally:
        curl.close()


@pytest.mark.parametrize(
    ("query", "name", "expected"),
    [
        ("ARecord", "www.picket.test", "192.0.2.11"),
        ("AaaaRecord", "www.picket.test", "2001:DB8::10"),
        ("AaaaRecord", "www.picket.test", "2001:DB8:0:0:0:0:0:10"),  # long form: the same
        ("AaaaRecord", "www.picket.test", "2001:0db8:0000::0010"),
        ("CnameRecord", "alias.picket.test", "www.picket.test."),
        ("MxRecord", "picket.test", "10 mail.picket.test"),
        ("NsRecord", "picket.test", "NS1.picket.test"),
        ("TxtRecord", "picket.test", "v=spf1 -all"),
        ("SoaRecord", "picket.test", "ns1.picket.test admin.picket.test 7 3600 600 86400 60"),
        ("SrvRecord", "_api._tcp.picket.test", "10 5 8443 api.picket.test"),
        ("CaaRecord", "picket.test", '0 issue "ca.picket.test"'),
    ],
)
async def test_every_record_type(server: DnsServer, query: str, name: str, expected: str) -> None:
    outcome = await _check(server, query, name, expected)
    assert outcome.ok, outcome
    assert outcome.attributes["DnsRcode"] == "NOERROR" and outcome.attributes["DnsAnswers"]
    assert outcome.timings_ms["TotalTime"] > 0 and outcome.resolved_ip == "127.0.0.1"


async def test_mismatch_nxdomain_and_empty_answers(server: DnsServer) -> None:
    wrong = await _check(server, "ARecord", "www.picket.test", "192.0.2.99")
    assert wrong.error_code == ErrorCode.DNS_ANSWER_MISMATCH
    assert "192.0.2.10" in wrong.error_message
    other = await _check(server, "AaaaRecord", "www.picket.test", "2001:DB8:0:0:0:0:0:11")
    assert other.error_code == ErrorCode.DNS_ANSWER_MISMATCH
    missing = await _check(server, "ARecord", "nothing.picket.test")
    assert missing.error_code == ErrorCode.DNS_FAILURE and "NXDOMAIN" in missing.error_message
    empty = await _check(server, "MxRecord", "www.picket.test")
    assert empty.error_code == ErrorCode.DNS_FAILURE and "no MxRecord" in empty.error_message


async def test_truncated_udp_falls_back_to_tcp(server: DnsServer) -> None:
    outcome = await _check(server, "TxtRecord", "big.picket.test")
    assert outcome.ok, outcome
    assert outcome.attributes["DnsUsedTcp"] is True
    assert [t for t, _, _ in server.queries] == ["udp", "tcp"]
    assert outcome.attributes["DnsAnswers"][0].startswith("x" * 200)


async def test_a_silent_server_times_out(server: DnsServer) -> None:
    server.silent = True
    outcome = await _check(server, "ARecord", "www.picket.test", TimeoutSeconds=1)
    assert outcome.error_code == ErrorCode.TIMEOUT
    assert 900 < outcome.timings_ms["TotalTime"] < 5000
