"""DNS checks with dnspython's asyncio API: UDP with a TCP fallback, never blocking the loop."""

from __future__ import annotations

import contextlib
import ipaddress
import time

import dns.asyncquery
import dns.asyncresolver
import dns.exception
import dns.message
import dns.name
import dns.rcode
import dns.rdatatype
import dns.resolver
from dns.rdata import Rdata

from agent.bounds import host_key
from agent.probes.base import Outcome, Probe, ProbeContext
from shared.errors import ErrorCode
from shared.monitors import DnsMonitor, MonitorBase
from shared.settings import split_host_port

RDTYPES = {
    "ARecord": dns.rdatatype.A,
    "AaaaRecord": dns.rdatatype.AAAA,
    "CnameRecord": dns.rdatatype.CNAME,
    "MxRecord": dns.rdatatype.MX,
    "NsRecord": dns.rdatatype.NS,
    "TxtRecord": dns.rdatatype.TXT,
    "SoaRecord": dns.rdatatype.SOA,
    "SrvRecord": dns.rdatatype.SRV,
    "CaaRecord": dns.rdatatype.CAA,
}


def _name(value: dns.name.Name) -> str:
    return str(value.to_text(omit_final_dot=True))


def render(rdata: Rdata) -> str:
    """One answer as Picket shows and compares it (MX as `preference host`, TXT unquoted)."""
    kind = rdata.rdtype
    if kind in (dns.rdatatype.A, dns.rdatatype.AAAA):
        return str(rdata.address)  # type: ignore[attr-defined]
    if kind in (dns.rdatatype.CNAME, dns.rdatatype.NS):
        return _name(rdata.target)  # type: ignore[attr-defined]
    if kind == dns.rdatatype.MX:
        return f"{rdata.preference} {_name(rdata.exchange)}"  # type: ignore[attr-defined]
    if kind == dns.rdatatype.TXT:
        return "".join(part.decode("utf-8", "replace") for part in rdata.strings)  # type: ignore[attr-defined]
    if kind == dns.rdatatype.SOA:
        r = rdata
        return (
            f"{_name(r.mname)} {_name(r.rname)} {r.serial} {r.refresh} "  # type: ignore[attr-defined]
            f"{r.retry} {r.expire} {r.minimum}"  # type: ignore[attr-defined]
        )
    if kind == dns.rdatatype.SRV:
        r = rdata
        return f"{r.priority} {r.weight} {r.port} {_name(r.target)}"  # type: ignore[attr-defined]
    if kind == dns.rdatatype.CAA:
        r = rdata
        return f"{r.flags} {r.tag.decode()} {r.value.decode()}"  # type: ignore[attr-defined]
    return str(rdata.to_text())


def expected_in(expected: str, answers: list[str]) -> bool:
    """Whether an answer is the expected one: addresses as addresses (2001:DB8:0:0:0:0:0:10 is
    2001:db8::10), the rest as `normalize` has them."""
    try:
        address = ipaddress.ip_address(expected.strip())
    except ValueError:
        wanted = normalize(expected)
        return any(normalize(answer) == wanted for answer in answers)
    for answer in answers:
        with contextlib.suppress(ValueError):
            if ipaddress.ip_address(answer) == address:
                return True
    return False


def normalize(text: str) -> str:
    """Case-insensitive, trailing dots and quotes ignored, white space folded."""
    words = text.replace('"', "").lower().split()
    return " ".join(word.rstrip(".") for word in words)


SYSTEM_RESOLVER = "(system resolver)"  # the per-host bound's key for checks without DnsServer


class DnsProbe(Probe):
    type_names = DnsMonitor.type_names

    def __init__(self, ctx: ProbeContext) -> None:
        super().__init__(ctx)
        self._system: dns.asyncresolver.Resolver | None = None
        self.resolvers_built = 0

    def _system_resolver(self) -> dns.asyncresolver.Resolver:
        """The worker's resolver of the system's configuration (/etc/resolv.conf, read once:
        reading it again per check cost a file read and parse each time). A configuration that
        cannot be read is tried again at the next check."""
        if self._system is None:
            self._system = dns.asyncresolver.Resolver()
            self.resolvers_built += 1
        return self._system

    async def check(self, monitor: MonitorBase) -> Outcome:
        assert isinstance(monitor, DnsMonitor)
        if monitor.DnsServer:
            host, port = split_host_port(monitor.DnsServer, 53)
            key = host_key(host, port)
        else:
            key = SYSTEM_RESOLVER
        async with self.ctx.bounds.hold(key, paced=True):
            return await self._check(monitor)

    async def _check(self, monitor: DnsMonitor) -> Outcome:
        rdtype = RDTYPES[monitor.DnsQuery]
        began = time.perf_counter()
        outcome = Outcome()
        try:
            if monitor.DnsServer:
                answers, rcode, server, used_tcp = await self._ask_server(monitor, rdtype)
            else:
                answers, rcode, server, used_tcp = await self._ask_system(monitor, rdtype)
        except (TimeoutError, dns.exception.Timeout):
            outcome.error_code = ErrorCode.TIMEOUT
            outcome.error_message = f"no DNS answer within {monitor.TimeoutSeconds} s"
            answers, rcode, server, used_tcp = [], "", monitor.DnsServer, False
        except (OSError, dns.exception.DNSException) as exc:
            outcome.error_code = ErrorCode.DNS_FAILURE
            outcome.error_message = f"{type(exc).__name__}: {exc}"
            answers, rcode, server, used_tcp = [], "", monitor.DnsServer, False
        elapsed_ms = (time.perf_counter() - began) * 1000
        outcome.timings_ms = {
            "ResolveTime": round(elapsed_ms, 3),
            "TotalTime": round(elapsed_ms, 3),
        }
        outcome.resolved_ip = server
        outcome.attributes = {"DnsAnswers": answers, "DnsRcode": rcode, "DnsUsedTcp": used_tcp}
        if not outcome.ok:
            return outcome
        if rcode != "NOERROR":
            outcome.error_code = ErrorCode.DNS_FAILURE
            outcome.error_message = f"{monitor.DnsTestValue}: {rcode}"
        elif not answers:
            outcome.error_code = ErrorCode.DNS_FAILURE
            outcome.error_message = f"{monitor.DnsTestValue}: no {monitor.DnsQuery} in the answer"
        elif monitor.DnsExpectedResult and not expected_in(monitor.DnsExpectedResult, answers):
            outcome.error_code = ErrorCode.DNS_ANSWER_MISMATCH
            outcome.error_message = (
                f"expected {monitor.DnsExpectedResult!r}, got {', '.join(answers) or 'nothing'}"
            )
        return outcome

    async def _ask_server(
        self, monitor: DnsMonitor, rdtype: dns.rdatatype.RdataType
    ) -> tuple[list[str], str, str, bool]:
        host, port = split_host_port(monitor.DnsServer, 53)
        began = time.monotonic()
        _family, address = await self.ctx.lookups.resolve(
            host, monitor.IpVersion, monitor.TimeoutSeconds
        )
        left = max(0.001, monitor.TimeoutSeconds - (time.monotonic() - began))
        query = dns.message.make_query(monitor.DnsTestValue, rdtype)
        response, used_tcp = await dns.asyncquery.udp_with_fallback(
            query, address, timeout=left, port=port
        )
        answers = [
            render(rdata) for rrset in response.answer if rrset.rdtype == rdtype for rdata in rrset
        ]
        return answers, dns.rcode.to_text(response.rcode()), address, bool(used_tcp)

    async def _ask_system(
        self, monitor: DnsMonitor, rdtype: dns.rdatatype.RdataType
    ) -> tuple[list[str], str, str, bool]:
        resolver = self._system_resolver()
        try:
            answer = await resolver.resolve(
                monitor.DnsTestValue,
                rdtype,
                raise_on_no_answer=False,
                lifetime=monitor.TimeoutSeconds,
            )
        except dns.resolver.NXDOMAIN:
            return [], "NXDOMAIN", "", False
        rrset = answer.rrset
        answers = [render(rdata) for rdata in rrset] if rrset is not None else []
        server = str(answer.nameserver or "")
        return answers, dns.rcode.to_text(answer.response.rcode()), server, False
