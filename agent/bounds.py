"""A check worker's bound on checks in flight, shared by every probe type: at most
PICKET_MAX_CONCURRENCY at once and PICKET_MAX_PER_HOST on one host (each a worker's share).

HTTP transfers (agent.curl) and Connect, Certificate, DNS and Ping checks all hold a slot
while they talk to their target; a check waits for its host's slot first, then for one
overall, and its clock and time-out start once it has both.

Paced slots (the probes that run Python per check, not libcurl) start at most STARTS_PER_TURN
checks per turn of the loop, the rest in the turns after: a phase of a hundred certificate
checks otherwise opens a hundred connections in one turn, ≈ 10 ms in which the loop hands no
socket to libcurl, and that time shows up in the HTTP checks' timings.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from types import TracebackType

STARTS_PER_TURN = 8


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
        self._started_this_turn = 0
        self._next_turn: asyncio.Future[None] | None = None

    def hold(self, host: str, paced: bool = False) -> Slot:
        """`async with bounds.hold("host:port"):` around the part of a check that uses the
        target; `host` as agent.curl keys it (lower case, `host[:port]`)."""
        return Slot(self, host, paced)

    async def _pace(self) -> None:
        """Wait for a turn of the loop with room for one more start."""
        loop = asyncio.get_running_loop()
        while self._started_this_turn >= STARTS_PER_TURN:
            if self._next_turn is None:
                self._next_turn = loop.create_future()
            await asyncio.shield(self._next_turn)  # the loop polls its sockets meanwhile
        if self._started_this_turn == 0:
            loop.call_soon(self._new_turn)
        self._started_this_turn += 1

    def _new_turn(self) -> None:
        self._started_this_turn = 0
        if self._next_turn is not None:
            self._next_turn.set_result(None)
            self._next_turn = None

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
    __slots__ = ("_bounds", "_entry", "_host", "_paced")

    def __init__(self, bounds: Bounds, host: str, paced: bool) -> None:
        self._bounds = bounds
        self._host = host
        self._paced = paced
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
        if self._paced:
            try:
                await bounds._pace()
            except BaseException:
                await self.__aexit__(None, None, None)
                raise

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
