"""An MQTT session cancelled while it connects ends promptly and leaves nothing behind
(shared.mqtt): no socket, no aiomqtt keepalive task, no traceback when the broker goes later.

The "brokers" here are plain loopback listeners: one that accepts and never answers (no
CONNACK), one whose accept queue is full (the TCP connect itself hangs, in aiomqtt's executor
thread), and a port nobody listens on.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import socket
import time
from collections.abc import AsyncIterator

import pytest

from shared.mqtt import ControlRequestFailed, Inbound, MqttSession, control_request
from shared.settings import parse_broker_url
from shared.tasks import cancel_and_wait
from tests.helpers import free_port, wait_for


class BlackHole:
    """Accepts connections, reads what comes, never answers; notes when a client hangs up."""

    def __init__(self) -> None:
        self.received = b""
        self.connections = 0
        self.hung_up = 0
        self._writers: list[asyncio.StreamWriter] = []
        self._server: asyncio.Server | None = None
        self.port = 0

    async def start(self) -> None:
        self._server = await asyncio.start_server(self._serve, "127.0.0.1", 0)
        self.port = self._server.sockets[0].getsockname()[1]

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.connections += 1
        self._writers.append(writer)
        while data := await reader.read(4096):
            self.received += data
        self.hung_up += 1

    async def close(self) -> None:
        for writer in self._writers:
            writer.close()
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()


@pytest.fixture
async def black_hole() -> AsyncIterator[BlackHole]:
    hole = BlackHole()
    await hole.start()
    yield hole
    await hole.close()


def _session(port: int) -> MqttSession:
    async def ignore(message: Inbound) -> None:
        pass

    return MqttSession(
        parse_broker_url(f"mqtt://127.0.0.1:{port}"), "picket-test-cancel", ["t/#"], ignore
    )


def _aiomqtt_tasks() -> list[asyncio.Task[object]]:
    """aiomqtt's per-connection keepalive tasks still alive."""
    return [
        t
        for t in asyncio.all_tasks()
        if not t.done() and "_misc_loop" in getattr(t.get_coro(), "__qualname__", "")
    ]


def _problems(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [
        f"{r.name}: {r.getMessage()}"
        for r in caplog.records
        if r.levelno >= logging.WARNING and "cannot reach the broker" not in r.getMessage()
    ]


async def test_cancelled_while_waiting_for_the_connack(
    black_hole: BlackHole, caplog: pytest.LogCaptureFixture
) -> None:
    session = _session(black_hole.port)
    task = asyncio.create_task(session.run())

    async def connect_sent() -> bool:
        return b"picket-test-cancel" in black_hole.received  # the CONNECT packet

    await wait_for(connect_sent, "the session's CONNECT to reach the black hole")
    started = time.monotonic()
    await cancel_and_wait([task], grace=5)
    assert task.cancelled()
    assert time.monotonic() - started < 2.0
    assert _aiomqtt_tasks() == []  # aiomqtt's keepalive task ended with it

    async def hung_up() -> bool:
        return black_hole.hung_up == 1

    await wait_for(hung_up, "the cancelled session to close its socket", within=10)
    await black_hole.close()  # the broker going away later finds nothing to trip over
    await asyncio.sleep(0)
    assert _problems(caplog) == []


async def test_cancelled_while_the_tcp_connect_hangs(caplog: pytest.LogCaptureFixture) -> None:
    """A listener whose accept queue is full drops the SYN: paho's blocking connect waits in
    aiomqtt's executor thread. Cancelled then, the session waits for that thread and closes
    the socket it opens after the cancel, instead of leaving it open with nobody to own it."""
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(0)
    listener.setblocking(False)
    port = listener.getsockname()[1]
    fillers: list[socket.socket] = []
    try:
        for _ in range(10):  # fill the accept queue; the first connect that hangs shows it full
            filler = socket.socket()
            filler.settimeout(1.0)
            try:
                filler.connect(("127.0.0.1", port))
            except TimeoutError:
                filler.close()
                break
            fillers.append(filler)
        task = asyncio.create_task(_session(port).run())

        async def syn_sent() -> bool:
            return _syn_sent_to(port)

        await wait_for(syn_sent, "the session's TCP connect to hang", interval=0.02)
        started = time.monotonic()
        stopping = asyncio.create_task(cancel_and_wait([task], grace=10))
        await asyncio.sleep(0)
        loop = asyncio.get_running_loop()
        accepted: list[socket.socket] = []
        # make room: the client's SYN, sent again, gets in after the cancel
        while len(accepted) <= len(fillers):
            conn, _ = await asyncio.wait_for(loop.sock_accept(listener), 30)
            accepted.append(conn)
        await asyncio.wait_for(stopping, 30)
        assert task.cancelled()
        assert time.monotonic() - started < 8.0  # paho's connect timeout (5 s) at most
        assert _aiomqtt_tasks() == []
        late = accepted[-1]  # the session's socket, opened after the cancel
        late.setblocking(False)

        async def closed_by_client() -> bool:
            try:
                return await asyncio.wait_for(loop.sock_recv(late, 4096), 0.5) == b""
            except TimeoutError:
                return False

        await wait_for(closed_by_client, "the late socket to be closed", within=10)
        for conn in accepted:
            conn.close()
        assert _problems(caplog) == []
    finally:
        for filler in fillers:
            filler.close()
        listener.close()


def _syn_sent_to(port: int) -> bool:
    with open("/proc/net/tcp") as table:
        for line in table.readlines()[1:]:
            fields = line.split()
            remote, state = fields[2], fields[3]
            if state == "02" and int(remote.split(":")[1], 16) == port:
                return True
    return False


async def test_cancelled_while_the_port_refuses(caplog: pytest.LogCaptureFixture) -> None:
    session = _session(free_port())  # nobody listens there
    task = asyncio.create_task(session.run())

    async def refused() -> bool:
        return any("cannot reach the broker" in r.getMessage() for r in caplog.records)

    await wait_for(refused, "the refusal to be reported")
    started = time.monotonic()
    await cancel_and_wait([task], grace=5)
    assert task.cancelled() and time.monotonic() - started < 2.0
    assert _aiomqtt_tasks() == []
    assert _problems(caplog) == []


async def test_a_control_request_that_times_out_closes_its_connection(
    black_hole: BlackHole, caplog: pytest.LogCaptureFixture
) -> None:
    target = parse_broker_url(f"mqtt://127.0.0.1:{black_hole.port}")
    with pytest.raises(ControlRequestFailed, match="no answer"):
        await control_request(target, "picket-test-control", "q", "q/response", b"{}", 0.5)
    assert _aiomqtt_tasks() == []

    async def hung_up() -> bool:
        return black_hole.hung_up == 1

    await wait_for(hung_up, "the timed-out request to close its socket", within=10)
    with contextlib.suppress(Exception):
        await black_hole.close()
    await asyncio.sleep(0)
    assert _problems(caplog) == []
