"""Name lookups of Connect, Certificate, Ping and DNS-server checks, each with a time limit.

The system's resolver (getaddrinfo: /etc/hosts and nsswitch count, as they do for libcurl's
HTTP checks) blocks its thread, so it runs in threads of the worker's own: a lookup that hangs
(a DNS server that never answers) holds one of them until the C library gives up, but its
check ends at its time limit with DNS_FAILURE, and never stalls the event loop or the default
executor. The same question asked again while it is still being answered waits for that
answer instead of taking another thread, so a name whose lookups hang holds one thread, not one
per check, and the other names keep theirs. Addresses given as literals skip the threads.
"""

from __future__ import annotations

import asyncio
import ipaddress
import socket
import time
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from agent import families
from shared.errors import ErrorCode

FAMILIES = {"IpV4": socket.AF_INET, "IpV6": socket.AF_INET6}
# lookups at once per worker; more wait in line (within their own time limit). Threads start
# only as lookups need them.
LOOKUP_THREADS = 32
Question = tuple[str, int]  # host, address family (the port changes no address)


class LookupTimedOut(socket.gaierror):
    """No answer to a name lookup within the check's time limit (a DNS failure)."""


class NameLookups:
    def __init__(self, threads: int = LOOKUP_THREADS) -> None:
        self._executor = ThreadPoolExecutor(threads, thread_name_prefix="picket-lookup")
        self._asked: dict[Question, asyncio.Future[Any]] = {}  # being answered
        self.started = 0  # lookups handed to a thread
        self.timed_out = 0

    async def resolve(
        self,
        host: str,
        ip_version: str | None,
        within_seconds: float,
    ) -> tuple[socket.AddressFamily, str]:
        """The first address of `host` (of the IP version, if one is given); LookupTimedOut
        after `within_seconds`, socket.gaierror when the name does not resolve."""
        started = time.monotonic()
        try:
            return await self._resolve(host, ip_version, within_seconds)
        except LookupTimedOut:
            raise
        except socket.gaierror as exc:
            if ip_version not in FAMILIES:
                raise
            # none in the family required: say whether the host has some in the other (143)
            left = within_seconds - (time.monotonic() - started)
            explained = await self.explain(host, ip_version, str(exc), left)
            if explained is None:
                raise exc from None
            code, message = explained
            if code == ErrorCode.VERSION_NOT_AS_REQUIRED:
                raise families.WrongFamily(message) from None
            raise socket.gaierror(exc.errno, message) from None

    async def explain(
        self, host: str, ip_version: str, failure: str, within_seconds: float
    ) -> tuple[ErrorCode, str] | None:
        """Why a lookup of `host` in the family `ip_version` requires failed (agent/families.py:
        143 when it has addresses in the other family only), asked in the worker's lookup
        threads; None when `within_seconds` runs out first."""
        try:
            async with asyncio.timeout(max(within_seconds, 0.001)):
                return await families.explain(host, ip_version, failure, self._addresses)
        except TimeoutError:
            return None

    async def _addresses(self, host: str, family: socket.AddressFamily) -> list[str]:
        infos = await asyncio.get_running_loop().run_in_executor(
            self._executor, socket.getaddrinfo, host, None, family, socket.SOCK_STREAM
        )
        return sorted({str(info[4][0]) for info in infos})

    async def _resolve(
        self, host: str, ip_version: str | None, within_seconds: float
    ) -> tuple[socket.AddressFamily, str]:
        family = FAMILIES.get(ip_version or "", socket.AF_UNSPEC)
        literal = _literal(host, family)
        if literal is not None:
            return literal
        question: Question = (host, family)
        lookup = self._asked.get(question)
        if lookup is None:
            lookup = asyncio.get_running_loop().run_in_executor(
                self._executor, socket.getaddrinfo, host, None, family, socket.SOCK_STREAM
            )
            self.started += 1
            self._asked[question] = lookup
            lookup.add_done_callback(lambda done: self._answered(question, done))
        try:
            async with asyncio.timeout(within_seconds):
                infos = await asyncio.shield(lookup)  # others may wait for it still
        except TimeoutError:
            self.timed_out += 1
            raise LookupTimedOut(
                f"no answer to the name lookup of {host} within {within_seconds:g} s"
            ) from None
        found_family, _kind, _proto, _name, sockaddr = infos[0]
        return found_family, str(sockaddr[0])

    def _answered(self, question: Question, lookup: asyncio.Future[Any]) -> None:
        self._asked.pop(question, None)
        if not lookup.cancelled():
            lookup.exception()  # retrieved, even when every check waiting for it gave up

    def close(self) -> None:
        """Lookups still hanging end in their threads when the C library gives up."""
        self._executor.shutdown(wait=False, cancel_futures=True)


def _literal(host: str, family: int) -> tuple[socket.AddressFamily, str] | None:
    try:
        address = ipaddress.ip_address(host)
    except ValueError:
        return None
    found = socket.AF_INET if address.version == 4 else socket.AF_INET6
    if family not in (socket.AF_UNSPEC, found):
        return None  # getaddrinfo says what is wrong, in its own words
    return found, str(address)
