"""Connect checks: resolve, open a TCP connection, optionally send a line and expect a reply."""

from __future__ import annotations

import asyncio
import contextlib
import socket
import time

from agent.bounds import host_key
from agent.probes.base import Outcome, Probe, span_ms
from shared.errors import ErrorCode
from shared.monitors import ConnectMonitor, MonitorBase

MAX_REPLY_BYTES = 65_536


async def close_quietly(writer: asyncio.StreamWriter | None) -> None:
    """Close a connection a check opened; the target misbehaving on close changes nothing."""
    if writer is None:
        return
    writer.close()
    # ssl.SSLError is an OSError too; a peer that never answers the close costs 2 s at most
    with contextlib.suppress(OSError, TimeoutError):
        async with asyncio.timeout(2):
            await writer.wait_closed()


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
        key = host_key(monitor.NetworkAddress, monitor.Port)
        async with self.ctx.bounds.hold(key, paced=True):
            return await self._check(monitor)

    async def _check(self, monitor: ConnectMonitor) -> Outcome:
        outcome = Outcome()
        marks = {"began": time.perf_counter()}
        deadline = asyncio.get_running_loop().time() + monitor.TimeoutSeconds
        writer: asyncio.StreamWriter | None = None
        received = b""
        try:
            family, address = await self.ctx.lookups.resolve(
                monitor.NetworkAddress, monitor.IpVersion, monitor.TimeoutSeconds
            )
            outcome.resolved_ip = address
            marks["resolved"] = time.perf_counter()
            async with asyncio.timeout_at(deadline):
                reader, writer = await asyncio.open_connection(address, monitor.Port, family=family)
                marks["connected"] = time.perf_counter()
                if monitor.SendString:
                    writer.write(monitor.SendString.encode())
                    await writer.drain()
                    marks["sent"] = time.perf_counter()
                if monitor.ExpectString:
                    expected = monitor.ExpectString.encode()
                    while expected not in received and len(received) < MAX_REPLY_BYTES:
                        chunk = await reader.read(4096)
                        if not chunk:
                            break
                        marks.setdefault("first_byte", time.perf_counter())
                        received += chunk
                    if expected not in received:
                        outcome.error_code = ErrorCode.CONTENT_MISMATCH
                        outcome.error_message = (
                            f"the reply does not contain {monitor.ExpectString!r}"
                        )
        except TimeoutError:
            outcome.error_code = ErrorCode.TIMEOUT
            outcome.error_message = f"no connection or reply within {monitor.TimeoutSeconds} s"
        except OSError as exc:
            outcome.error_code = connect_error(exc)
            outcome.error_message = str(exc) or type(exc).__name__
        finally:
            marks["done"] = time.perf_counter()
            await close_quietly(writer)
        outcome.total_bytes = len(received)
        outcome.body = received or None
        after_connect = "sent" if "sent" in marks else "connected"
        outcome.timings_ms = {
            "ResolveTime": span_ms(marks, "resolved", "began"),
            "ConnectionTime": span_ms(marks, "connected", "resolved"),
            "WaitTime": span_ms(marks, "first_byte", after_connect),
            "TotalTime": span_ms(marks, "done", "began"),
        }
        return outcome
