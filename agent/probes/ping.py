"""Ping checks: ICMP echo over raw sockets as root, unprivileged ICMP sockets otherwise."""

from __future__ import annotations

import asyncio
import os
import random
import socket
import struct
import time

from agent.bounds import host_key
from agent.families import WrongFamily
from agent.probes.base import Outcome, Probe
from shared.errors import ErrorCode
from shared.monitors import MonitorBase, PingMonitor

ECHO_REQUEST = {socket.AF_INET: 8, socket.AF_INET6: 128}
ECHO_REPLY = {socket.AF_INET: 0, socket.AF_INET6: 129}
PROTOCOL = {socket.AF_INET: socket.IPPROTO_ICMP, socket.AF_INET6: socket.IPPROTO_ICMPV6}
PING_GAP_SECONDS = 0.2  # between echo requests of one check
PER_PING_WAIT_SECONDS = 2.0
NOT_PERMITTED = (
    "ICMP is not permitted: raw sockets need root (or CAP_NET_RAW) and unprivileged ICMP "
    "sockets need the agent's group in net.ipv4.ping_group_range"
)


def checksum(data: bytes) -> int:
    if len(data) % 2:
        data += b"\0"
    total: int = sum(struct.unpack(f"!{len(data) // 2}H", data))
    total = (total >> 16) + (total & 0xFFFF)
    total += total >> 16
    return ~total & 0xFFFF


def open_icmp(family: socket.AddressFamily, prefer_raw: bool) -> tuple[socket.socket, bool]:
    """An ICMP socket and whether it is raw. Raises PermissionError when neither is allowed."""
    kinds = [socket.SOCK_RAW, socket.SOCK_DGRAM] if prefer_raw else [socket.SOCK_DGRAM]
    for kind in kinds:
        try:
            sock = socket.socket(family, kind, PROTOCOL[family])
        except PermissionError:
            continue
        sock.setblocking(False)
        return sock, kind == socket.SOCK_RAW
    raise PermissionError(NOT_PERMITTED)


async def _receive(loop: asyncio.AbstractEventLoop, sock: socket.socket) -> bytes:
    """One datagram. (uvloop has no sock_recvfrom, so wait for readability ourselves.)"""
    received: asyncio.Future[bytes] = loop.create_future()

    def readable() -> None:
        if received.done():
            return
        try:
            data, _peer = sock.recvfrom(4096)
        except BlockingIOError:
            return
        except OSError as exc:
            received.set_exception(exc)
            return
        received.set_result(data)

    loop.add_reader(sock.fileno(), readable)
    try:
        return await received
    finally:
        loop.remove_reader(sock.fileno())


class PingProbe(Probe):
    type_names = PingMonitor.type_names
    prefer_raw = os.geteuid() == 0

    async def check(self, monitor: MonitorBase) -> Outcome:
        assert isinstance(monitor, PingMonitor)
        async with self.ctx.bounds.hold(host_key(monitor.NetworkAddress), paced=True):
            return await self._check(monitor)

    async def _check(self, monitor: PingMonitor) -> Outcome:
        outcome = Outcome()
        began = time.perf_counter()
        try:
            family, address = await self.ctx.lookups.resolve(
                monitor.NetworkAddress, monitor.IpVersion, monitor.TimeoutSeconds
            )
        except OSError as exc:  # LookupTimedOut too: a DNS failure
            wrong = isinstance(exc, WrongFamily)  # an address of the other IP family only
            code = ErrorCode.VERSION_NOT_AS_REQUIRED if wrong else ErrorCode.DNS_FAILURE
            return Outcome(code, str(exc))
        outcome.resolved_ip = address
        resolved_ms = (time.perf_counter() - began) * 1000
        try:
            sock, raw = open_icmp(family, self.prefer_raw)
        except PermissionError as exc:
            return Outcome(ErrorCode.ICMP_NOT_PERMITTED, str(exc), resolved_ip=address)
        deadline = began + monitor.TimeoutSeconds
        rtts: list[float] = []
        try:
            ident = random.randrange(1 << 16)
            for seq in range(monitor.PingCount):
                if seq:
                    await asyncio.sleep(PING_GAP_SECONDS)
                if time.perf_counter() >= deadline:
                    break
                rtt = await self._echo(sock, raw, family, address, ident, seq, deadline)
                if rtt is not None:
                    rtts.append(rtt)
        except OSError as exc:
            outcome.error_code = ErrorCode.CONNECTION_FAILED
            outcome.error_message = str(exc)
        finally:
            sock.close()
        sent, received = monitor.PingCount, len(rtts)
        loss = 100.0 * (sent - received) / sent
        average = sum(rtts) / received if rtts else 0.0
        outcome.timings_ms = {
            "ResolveTime": round(resolved_ms, 3),
            "TotalTime": round(average, 3),
        }
        outcome.attributes = {
            "PingSent": sent,
            "PingReceived": received,
            "PingLossPercent": round(loss, 1),
            "PingMinTime": round(min(rtts), 3) if rtts else None,
            "PingAvgTime": round(average, 3) if rtts else None,
            "PingMaxTime": round(max(rtts), 3) if rtts else None,
            "PingSocket": "raw" if raw else "unprivileged",
        }
        if outcome.ok and not rtts:
            outcome.error_code = ErrorCode.PACKET_LOSS
            outcome.error_message = f"no reply to {sent} echo requests"
        elif outcome.ok and received < sent:
            outcome.warnings = [f"{sent - received} of {sent} echo requests lost ({loss:.0f}%)"]
        return outcome

    async def _echo(
        self,
        sock: socket.socket,
        raw: bool,
        family: socket.AddressFamily,
        address: str,
        ident: int,
        seq: int,
        deadline: float,
    ) -> float | None:
        """One echo request; the round trip in ms, or None when no reply came in time."""
        loop = asyncio.get_running_loop()
        payload = struct.pack("!d", time.time()) + b"picket-ping".ljust(48, b".")
        header = struct.pack("!BBHHH", ECHO_REQUEST[family], 0, 0, ident, seq)
        packet = header + payload
        if family == socket.AF_INET:  # the kernel computes ICMPv6 checksums itself
            packet = struct.pack("!BBHHH", ECHO_REQUEST[family], 0, checksum(packet), ident, seq)
            packet += payload
        sent_at = time.perf_counter()
        sock.sendto(packet, (address, 0))  # an echo request fits any socket buffer
        wait_until = min(deadline, sent_at + PER_PING_WAIT_SECONDS)
        while (left := wait_until - time.perf_counter()) > 0:
            try:
                data = await asyncio.wait_for(_receive(loop, sock), left)
            except TimeoutError:
                return None
            if raw and family == socket.AF_INET:
                data = data[(data[0] & 0x0F) * 4 :]  # a raw IPv4 socket hands us the IP header
            if len(data) < 8:
                continue
            kind, _code, _sum, reply_ident, reply_seq = struct.unpack("!BBHHH", data[:8])
            # an unprivileged socket's identifier is chosen by the kernel: match on seq only
            if (
                kind == ECHO_REPLY[family]
                and reply_seq == seq
                and (not raw or reply_ident == ident)
            ):
                return (time.perf_counter() - sent_at) * 1000
        return None
