"""Frames between the agent's main process and its check workers, over a socket pair.

A frame is a 4-byte big-endian payload length, one kind byte and the payload. Assignments
and run requests travel as the MQTT message's own JSON; results as the JSON objects of a
result batch, already joined by commas, so the main process only concatenates them.
"""

from __future__ import annotations

import asyncio
import struct

HEADER = struct.Struct("!IB")
COUNT = struct.Struct("!I")
MAX_FRAME = 256 * 1024 * 1024

# main -> worker
ASSIGN = ord("A")  # Assignment JSON
REMOVE = ord("D")  # monitor guid
RUN = ord("N")  # RunRequest JSON
STOP = ord("Q")  # empty: finish, send what is left, exit
# worker -> main
RESULTS = ord("r")  # 4-byte count, then the results' JSON objects joined by ","
METRICS = ord("m")  # WorkerSnapshot JSON


class FrameError(Exception):
    """The other side sent something that is not a frame: the stream cannot be trusted."""


def frame(kind: int, payload: bytes) -> bytes:
    return HEADER.pack(len(payload), kind) + payload


def results_frame(count: int, joined: bytes) -> bytes:
    return frame(RESULTS, COUNT.pack(count) + joined)


def split_results(payload: bytes) -> tuple[int, bytes]:
    if len(payload) < COUNT.size:
        raise FrameError(f"results frame of {len(payload)} bytes")
    (count,) = COUNT.unpack_from(payload)
    return count, payload[COUNT.size :]


async def read_frame(reader: asyncio.StreamReader) -> tuple[int, bytes] | None:
    """The next frame, or None at a clean end of the stream."""
    try:
        header = await reader.readexactly(HEADER.size)
    except asyncio.IncompleteReadError as exc:
        if exc.partial:
            raise FrameError("stream ended inside a frame header") from None
        return None
    length, kind = HEADER.unpack(header)
    if length > MAX_FRAME:
        raise FrameError(f"frame of {length} bytes")
    try:
        return kind, await reader.readexactly(length)
    except asyncio.IncompleteReadError:
        raise FrameError("stream ended inside a frame") from None
