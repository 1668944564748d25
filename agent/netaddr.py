"""The agent's own addresses: the interface it uses to reach the broker (no outside look-up)."""

from __future__ import annotations

import ipaddress
import socket


def route_source(host: str, port: int, family: socket.AddressFamily) -> str | None:
    """The local address the kernel would use to reach host:port; a UDP connect sends nothing."""
    try:
        infos = socket.getaddrinfo(host, port, family, socket.SOCK_DGRAM)
    except OSError:
        return None
    for _family, _type, _proto, _name, sockaddr in infos:
        with socket.socket(family, socket.SOCK_DGRAM) as probe:
            try:
                probe.connect(sockaddr)
            except OSError:
                continue
            return str(probe.getsockname()[0])
    return None


def split_list(value: str, version: int) -> list[str]:
    """A comma-separated list of addresses, each checked to be of the IP version."""
    out = []
    for item in value.split(","):
        text = item.strip()
        if not text:
            continue
        address = ipaddress.ip_address(text)
        if address.version != version:
            raise ValueError(f"{text} is not an IPv{version} address")
        out.append(str(address))
    return out


def agent_addresses(
    ipv4: str, ipv6: str, broker_host: str, broker_port: int
) -> tuple[list[str], list[str]]:
    v4 = split_list(ipv4, 4)
    v6 = split_list(ipv6, 6)
    if not v4 and not ipv4:
        found = route_source(broker_host, broker_port, socket.AF_INET)
        v4 = [found] if found else []
    if not v6 and not ipv6:
        found = route_source(broker_host, broker_port, socket.AF_INET6)
        v6 = [found.split("%")[0]] if found else []
    return v4, v6
