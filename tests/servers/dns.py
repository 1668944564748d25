"""A small authoritative DNS server on loopback (UDP and TCP) for the DNS check tests."""

from __future__ import annotations

import asyncio
import contextlib
from typing import Any

import dns.flags
import dns.message
import dns.rcode
import dns.rdatatype
import dns.rrset

from tests.helpers import free_port

UDP_LIMIT = 512


class DnsServer:
    def __init__(self, records: dict[tuple[str, str], list[str]]) -> None:
        """records: (name, type) -> rdata texts, e.g. ("www.test.", "A") -> ["192.0.2.1"]."""
        self.records = records
        self.port = free_port()
        self.queries: list[tuple[str, str, str]] = []  # (transport, name, type)
        self.silent = False  # answer nothing: the client times out
        self._udp: asyncio.DatagramTransport | None = None
        self._tcp: asyncio.Server | None = None

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    def answer(self, wire: bytes, transport: str) -> bytes | None:
        query = dns.message.from_wire(wire)
        question = query.question[0]
        name, kind = question.name.to_text().lower(), dns.rdatatype.to_text(question.rdtype)
        self.queries.append((transport, name, kind))
        if self.silent:
            return None
        response = dns.message.make_response(query)
        response.flags |= dns.flags.AA
        texts = self.records.get((name, kind))
        if texts:
            response.answer.append(dns.rrset.from_text_list(name, 60, "IN", kind, texts))
        elif not any(n == name for n, _ in self.records):
            response.set_rcode(dns.rcode.NXDOMAIN)
        data: bytes = response.to_wire()
        if transport == "udp" and len(data) > UDP_LIMIT:
            response.answer.clear()
            response.flags |= dns.flags.TC
            data = response.to_wire()
        return data

    async def start(self) -> None:
        loop = asyncio.get_running_loop()
        server = self

        class Udp(asyncio.DatagramProtocol):
            def connection_made(self, transport: Any) -> None:
                self.transport = transport

            def datagram_received(self, data: bytes, addr: Any) -> None:
                reply = server.answer(data, "udp")
                if reply is not None:
                    self.transport.sendto(reply, addr)

        self._udp, _ = await loop.create_datagram_endpoint(Udp, local_addr=("127.0.0.1", self.port))

        async def tcp(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            with contextlib.suppress(asyncio.IncompleteReadError, ConnectionError):
                size = int.from_bytes(await reader.readexactly(2), "big")
                reply = self.answer(await reader.readexactly(size), "tcp")
                if reply is not None:
                    writer.write(len(reply).to_bytes(2, "big") + reply)
                    await writer.drain()
            writer.close()

        self._tcp = await asyncio.start_server(tcp, "127.0.0.1", self.port)

    async def stop(self) -> None:
        if self._udp is not None:
            self._udp.close()
        if self._tcp is not None:
            self._tcp.close()
            await self._tcp.wait_closed()
