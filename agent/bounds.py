"""A check worker's bound on checks in flight, shared by every probe type: at most
PICKET_MAX_CONCURRENCY at once and PICKET_MAX_PER_HOST on one host (each a worker's share).

HTTP transfers (agent.curl) and Connect, Certificate, DNS and Ping checks all hold a slot
while they talk to their target; a check waits for its host's slot first, then for one
overall, and its clock and time-out start once it has both.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from types import TracebackType


@dataclass
class _Host:
    slots: asyncio.Semaphore
    users: int = 0  # holding or waiting


class Bounds:
    def __init__(self, max_concurrency: int, max_per_host: int) -> None:
        self.max_concurrency = max_concurrency
        self.max_per_host = max_per_host
        self._slots = asyncio.Semaphore(max_concurrency)
        self._hosts: dict[str, _Host] = {}
        self.holding = 0  # checks that have both slots

    def hold(self, host: str) -> Slot:
        """`async with bounds.hold("host:port"):` around the part of a check that uses the
        target; `host` as agent.curl keys it (lower case, `host[:port]`)."""
        return Slot(self, host)

    def waiting(self) -> int:
        """Checks waiting for a slot (tests and metrics)."""
        return sum(entry.users for entry in self._hosts.values()) - self.holding

    def _enter(self, host: str) -> _Host:
        entry = self._hosts.get(host)
        if entry is None:
            entry = self._hosts[host] = _Host(asyncio.Semaphore(self.max_per_host))
        entry.users += 1
        return entry

    def _leave(self, host: str, entry: _Host) -> None:
        entry.users -= 1
        if entry.users == 0:  # forget idle hosts: the table stays as small as the load
            del self._hosts[host]


class Slot:
    __slots__ = ("_bounds", "_entry", "_host")

    def __init__(self, bounds: Bounds, host: str) -> None:
        self._bounds = bounds
        self._host = host
        self._entry: _Host | None = None

    async def __aenter__(self) -> None:
        bounds = self._bounds
        entry = bounds._enter(self._host)
        try:
            await entry.slots.acquire()
            try:
                await bounds._slots.acquire()
            except BaseException:
                entry.slots.release()
                raise
        except BaseException:
            bounds._leave(self._host, entry)
            raise
        self._entry = entry
        bounds.holding += 1

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        entry = self._entry
        assert entry is not None
        bounds = self._bounds
        bounds.holding -= 1
        bounds._slots.release()
        entry.slots.release()
        bounds._leave(self._host, entry)


def host_key(host: str, port: int | None = None) -> str:
    """The per-host key of a host and port, as agent.curl keys a URL's (`[v6]:port`)."""
    name = f"[{host}]" if ":" in host else host
    return (f"{name}:{port}" if port is not None else name).lower()
