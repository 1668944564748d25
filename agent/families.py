"""A host with no address in the IP family a monitor requires (`IpVersion`), said as such.

The lookup in the required family failed: if the host is an address of the other family, or a
name with addresses in the other family only, the check did not get the version it required
(error 143, naming what the host has); else it is a lookup failure (100) whose message names
the version required. One more lookup, made only after the failed one.
"""

from __future__ import annotations

import contextlib
import ipaddress
import socket
from collections.abc import Awaitable, Callable

from shared.errors import ErrorCode

# IpVersion -> (its number, the other family's number, the other family)
_OTHER = {"IpV4": (4, 6, socket.AF_INET6), "IpV6": (6, 4, socket.AF_INET)}


class WrongFamily(OSError):
    """The host has addresses, in the other IP family only (error 143)."""


# the addresses of a name in one family (the worker's NameLookups runs it in its own threads)
AddressLookup = Callable[[str, socket.AddressFamily], Awaitable[list[str]]]


async def _other_addresses(
    host: str, family: socket.AddressFamily, lookup: AddressLookup
) -> list[str]:
    try:
        literal = ipaddress.ip_address(host.strip("[]"))
    except ValueError:
        pass
    else:
        return [str(literal)] if literal.version == (6 if family == socket.AF_INET6 else 4) else []
    with contextlib.suppress(OSError):  # socket.gaierror is an OSError
        return await lookup(host, family)
    return []


async def explain(
    host: str, ip_version: str, failure: str, lookup: AddressLookup
) -> tuple[ErrorCode, str]:
    """The error code and message of a failed lookup of `host` in the family `ip_version`
    (IpV4 or IpV6) requires; `failure` is the lookup's own message."""
    wanted, other, family = _OTHER[ip_version]
    found = await _other_addresses(host, family, lookup) if host else []
    if found == [host.strip("[]")]:  # an address, not a name
        return ErrorCode.VERSION_NOT_AS_REQUIRED, f"{ip_version} required, {found[0]} is IPv{other}"
    if found:
        shown = ", ".join(found[:4])
        message = (
            f"{ip_version} required, {host} has no IPv{wanted} address (IPv{other} only: {shown})"
        )
        return ErrorCode.VERSION_NOT_AS_REQUIRED, message
    return ErrorCode.DNS_FAILURE, f"{failure} (no IPv{wanted} address; {ip_version} required)"
