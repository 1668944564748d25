"""Connect checks: resolve, open a TCP connection, optionally send a line and expect a reply."""

from __future__ import annotations

import asyncio
import contextlib
import socket
import time

from agent.probes.base import Outcome, Probe, span_ms
from shared.errors import ErrorCode
from shared.monitors import ConnectMonitor, MonitorBase

MAX_REPLY_BYTES = 65_536
FAMILIES = {"IpV4": socket.AF_INET, "IpV6": socket.AF_INET6}


async def resolve(host: str, port: int, ip_version: str | None) -> tuple[socket.AddressFamily, str]:
    """The first address of host (the loop's resolver runs in a thread: never blocks the loop)."""
    infos = await asyncio.get_running_loop().getaddrinfo(
        host, port, family=FAMILIES.get(ip_version or "", 0), type=socket.SOCK_STREAM
    )
    family, _type, _proto, _name, sockaddr = infos[0]
    return family, str(sockaddr[0])


async def close_quietly(writer: asyncio.StreamWriter | None) -> None:
    """Close a connection a check opened; the target misbehaving on close changes nothing."""
    if writer is None:
        return
    writer.close()
    # ssl.SSLError is an OSError too; a peer that never answers the close costs 2 s at most
    with contextlib.suppress(OSError, TimeoutError):
        async with asyncio.timeout(2):
            await writer.wait_closed()


async def read_reply(
    reader: asyncio.StreamReader, expected: bytes, received: bytearray, marks: dict[str, float]
) -> None:
    """Read into `received` until it holds `expected`, the peer closes (a reset after a reply
    is a close too) or MAX_REPLY_BYTES have come."""
    while expected not in received and len(received) < MAX_REPLY_BYTES:
        try:
            chunk = await reader.read(MAX_REPLY_BYTES - len(received))
        except ConnectionResetError:
            if not received:
                raise
            break
        if not chunk:
            break
        marks.setdefault("first_byte", time.perf_counter())
        received += chunk


def not_found(expected: str, received: bytearray) -> str:
    return f"expected {expected!r} not found in the {len(received)} bytes received"


def connect_error(exc: OSError) -> ErrorCode:
    if isinstance(exc, socket.gaierror):
        return ErrorCode.DNS_FAILURE
    if isinstance(exc, ConnectionRefusedError):
        return ErrorCode.CONNECTION_REFUSED
    return ErrorCode.CONNECTION_FAILED


class ConnectProbe(Probe):
    type_names = ConnectMonitor.type_names

    async def check(self, monitor: MonitorBase) -> Outcome:
        assert isinstance(monitor, ConnectMonitor)
        outcome = Outcome()
        marks = {"began": time.perf_counter()}
        writer: asyncio.StreamWriter | None = None
        received = bytearray()
        try:
            async with asyncio.timeout(monitor.TimeoutSeconds):
                family, address = await resolve(
                    monitor.NetworkAddress, monitor.Port, monitor.IpVersion
                )
                outcome.resolved_ip = address
                marks["resolved"] = time.perf_counter()
                reader, writer = await asyncio.open_connection(address, monitor.Port, family=family)
                marks["connected"] = time.perf_counter()
                if monitor.SendString:
                    writer.write(monitor.SendString.encode())
                    await writer.drain()
                    marks["sent"] = time.perf_counter()
                if monitor.ExpectString:
                    expected = monitor.ExpectString.encode()
                    await read_reply(reader, expected, received, marks)
                    if expected not in received:  # the peer closed, or the byte limit
                        outcome.error_code = ErrorCode.CONTENT_MISMATCH
                        outcome.error_message = not_found(monitor.ExpectString, received)
        except TimeoutError:
            if received:  # a reply came, without the text, and the server kept the line open
                outcome.error_code = ErrorCode.CONTENT_MISMATCH
                outcome.error_message = (
                    f"{not_found(monitor.ExpectString, received)} "
                    f"(no more within {monitor.TimeoutSeconds} s)"
                )
            else:
                outcome.error_code = ErrorCode.TIMEOUT
                outcome.error_message = (
                    f"no reply within {monitor.TimeoutSeconds} s"
                    if "connected" in marks
                    else f"no connection within {monitor.TimeoutSeconds} s"
                )
        except OSError as exc:
            outcome.error_code = connect_error(exc)
            outcome.error_message = str(exc) or type(exc).__name__
        finally:
            marks["done"] = time.perf_counter()
            await close_quietly(writer)
        outcome.total_bytes = len(received)
        outcome.body = bytes(received) or None
        after_connect = "sent" if "sent" in marks else "connected"
        outcome.timings_ms = {
            "ResolveTime": span_ms(marks, "resolved", "began"),
            "ConnectionTime": span_ms(marks, "connected", "resolved"),
            "WaitTime": span_ms(marks, "first_byte", after_connect),
            "TotalTime": span_ms(marks, "done", "began"),
        }
        return outcome
