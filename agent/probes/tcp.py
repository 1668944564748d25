"""Connect checks: resolve, open a TCP connection, optionally send a line and expect a reply."""

from __future__ import annotations

import asyncio
import contextlib
import socket
import time
from collections.abc import Callable

from agent import families
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


# once a reply has begun, this long without another byte ends it (as check_tcp does): a
# server waiting for its next command never closes, and the check should not wait its whole
# time limit to say the reply lacked the expected text
REPLY_QUIET_SECONDS = 1.0


async def read_reply(
    reader: asyncio.StreamReader, expected: bytes, received: bytearray, marks: dict[str, float]
) -> str:
    """Read into `received` until it holds `expected` ("found"), the peer closes ("closed"; a
    reset after a reply is a close too), MAX_REPLY_BYTES have come ("limit"), or, once a reply
    has begun, no more comes for REPLY_QUIET_SECONDS ("quiet": a server that keeps the line
    open waiting for its next command has said all it will)."""
    while expected not in received:
        if len(received) >= MAX_REPLY_BYTES:
            return "limit"
        try:
            if received:
                async with asyncio.timeout(REPLY_QUIET_SECONDS):
                    chunk = await reader.read(MAX_REPLY_BYTES - len(received))
            else:
                chunk = await reader.read(MAX_REPLY_BYTES)
        except TimeoutError:
            return "quiet"
        except ConnectionResetError:
            if not received:
                raise
            return "closed"
        if not chunk:
            return "closed"
        marks.setdefault("first_byte", time.perf_counter())
        received += chunk
    return "found"


def reached(marks: dict[str, float]) -> Callable[[str], str]:
    """The end mark of a phase: its own, or "done" for the phase a check that ended early was
    in (it gets the time up to the end; the phases never reached have no start mark: 0)."""
    return lambda mark: mark if mark in marks else "done"


def not_found(expected: str, received: bytearray) -> str:
    return f"expected {expected!r} not found in the {len(received)} bytes received"


def connect_error(exc: OSError) -> ErrorCode:
    if isinstance(exc, families.WrongFamily):
        return ErrorCode.VERSION_NOT_AS_REQUIRED
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
        received = bytearray()
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
                    ended = await read_reply(reader, expected, received, marks)
                    if ended != "found":
                        outcome.error_code = ErrorCode.CONTENT_MISMATCH
                        outcome.error_message = not_found(monitor.ExpectString, received)
                        if ended == "quiet":
                            quiet = f"{REPLY_QUIET_SECONDS:g}"
                            outcome.error_message += f" (no more within {quiet} s)"
        except TimeoutError:
            if received:  # a reply kept coming, without the text, until the time limit
                outcome.error_code = ErrorCode.CONTENT_MISMATCH
                outcome.error_message = (
                    f"{not_found(monitor.ExpectString, received)} "
                    f"within the time limit of {monitor.TimeoutSeconds} s"
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
        waited = bool(monitor.ExpectString) and after_connect in marks
        end = reached(marks)
        outcome.timings_ms = {
            "ResolveTime": span_ms(marks, end("resolved"), "began"),
            "ConnectionTime": span_ms(marks, end("connected"), "resolved"),
            "WaitTime": span_ms(marks, end("first_byte"), after_connect) if waited else 0.0,
            "TotalTime": span_ms(marks, "done", "began"),
        }
        return outcome
