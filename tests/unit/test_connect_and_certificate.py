"""Connect and Certificate checks against real loopback servers."""

from __future__ import annotations

import asyncio
import contextlib
import datetime
import ssl
from pathlib import Path
from typing import Any

import pytest
import trustme

from agent.curl import CurlEngine
from agent.probes.base import Outcome, ProbeContext
from agent.probes.tcp import ConnectProbe
from agent.probes.tls import CertificateProbe
from shared.errors import ErrorCode
from shared.monitors import CertificateMonitor, ConnectMonitor
from tests.helpers import Target, free_port


async def _context(ca_file: str | None = None) -> ProbeContext:
    return ProbeContext(curl=CurlEngine(1), max_body_bytes=0, ca_file=ca_file)


async def _connect(**fields: Any) -> Outcome:
    monitor = ConnectMonitor.model_validate(
        {"Name": "c", "MonitorType": "Connect", "NetworkAddress": "127.0.0.1", **fields}
    )
    ctx = await _context()
    try:
        return await ConnectProbe(ctx).check(monitor)
    finally:
        ctx.curl.close()


async def test_connect(echo_port: int) -> None:
    plain = await _connect(Port=echo_port)
    assert plain.ok and plain.resolved_ip == "127.0.0.1"
    assert plain.timings_ms["TotalTime"] >= plain.timings_ms["ConnectionTime"] > 0
    talk = await _connect(Port=echo_port, SendString="PING\r\n", ExpectString="echo: PING")
    assert talk.ok, talk
    assert talk.timings_ms["WaitTime"] > 0
    greeting = await _connect(Port=echo_port, ExpectString="220 picket-echo")
    assert greeting.ok, greeting
    wrong = await _connect(Port=echo_port, SendString="x\n", ExpectString="PONG", TimeoutSeconds=1)
    assert wrong.error_code in (ErrorCode.CONTENT_MISMATCH, ErrorCode.TIMEOUT)
    refused = await _connect(Port=free_port())
    assert refused.error_code == ErrorCode.CONNECTION_REFUSED
    v6 = await _connect(NetworkAddress="::1", Port=free_port(), IpVersion="IpV6")
    assert v6.error_code in (ErrorCode.CONNECTION_REFUSED, ErrorCode.CONNECTION_FAILED)


async def _server(handler: Any) -> tuple[asyncio.Server, int]:
    server = await asyncio.start_server(handler, "127.0.0.1", 0)
    return server, int(server.sockets[0].getsockname()[1])


async def test_connect_a_reply_without_the_expected_text_is_210() -> None:
    """Read until the expected text, the peer closes or the byte limit: then 210 naming what
    came, not a time-out's 120 "no connection or reply"."""

    async def banner_then_close(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        writer.write(b"554 go away\r\n")  # and closes without reading what was sent: a reset
        await writer.drain()
        writer.close()

    async def banner_then_wait(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        writer.write(b"220 other-service\r\n")
        await writer.drain()
        await reader.read()
        writer.close()

    async def flood(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        with contextlib.suppress(OSError):
            writer.write(b"x" * 200_000)
            await writer.drain()
            await reader.read()
        writer.close()

    async def silent(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.read()
        writer.close()

    async def trickle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        with contextlib.suppress(OSError):
            while True:  # a byte every 0.2 s: never quiet, never the text
                writer.write(b".")
                await writer.drain()
                await asyncio.sleep(0.2)

    async def split(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        with contextlib.suppress(OSError):
            writer.write(b"SS")
            await writer.drain()
            await asyncio.sleep(0.3)  # a pause within a reply is not its end
            writer.write(b"H-2.0-picket\r\n")
            await writer.drain()
            await reader.read()
        writer.close()

    handlers = (banner_then_close, banner_then_wait, flood, silent, trickle, split)
    servers = [await _server(h) for h in handlers]
    try:
        ports = [port for _, port in servers]
        closed = await _connect(
            Port=ports[0], SendString="EHLO x\r\n", ExpectString="SSH-", TimeoutSeconds=30
        )
        assert closed.error_code == ErrorCode.CONTENT_MISMATCH, closed
        assert closed.error_message == "expected 'SSH-' not found in the 13 bytes received"
        assert closed.body == b"554 go away\r\n" and closed.total_bytes == 13
        # a server waiting for its next command: the reply ended when no more came for 1 s,
        # not at the time limit
        waiting = await _connect(Port=ports[1], ExpectString="SSH-", TimeoutSeconds=60)
        assert waiting.error_code == ErrorCode.CONTENT_MISMATCH, waiting
        assert waiting.error_message == (
            "expected 'SSH-' not found in the 19 bytes received (no more within 1 s)"
        )
        assert waiting.timings_ms["TotalTime"] < 30_000
        flooded = await _connect(Port=ports[2], ExpectString="SSH-", TimeoutSeconds=30)
        assert flooded.error_code == ErrorCode.CONTENT_MISMATCH, flooded
        assert flooded.error_message == "expected 'SSH-' not found in the 65536 bytes received"
        quiet = await _connect(Port=ports[3], ExpectString="SSH-", TimeoutSeconds=1)
        assert quiet.error_code == ErrorCode.TIMEOUT
        assert quiet.error_message == "no reply within 1 s"
        # the time went into waiting for the reply: the phase it ended in has it
        t = quiet.timings_ms
        assert t["WaitTime"] >= 900 and t["ConnectionTime"] > 0, t
        assert t["ResolveTime"] + t["ConnectionTime"] + t["WaitTime"] <= t["TotalTime"] + 0.01
        trickled = await _connect(Port=ports[4], ExpectString="SSH-", TimeoutSeconds=2)
        assert trickled.error_code == ErrorCode.CONTENT_MISMATCH, trickled
        assert trickled.error_message.endswith("bytes received within the time limit of 2 s")
        whole = await _connect(Port=ports[5], ExpectString="SSH-2.0", TimeoutSeconds=30)
        assert whole.ok, whole
    finally:
        for server, _ in servers:
            server.close()
            await server.wait_closed()


@pytest.fixture(scope="module")
def ca() -> trustme.CA:
    return trustme.CA(organization_name="Picket Test CA")


async def _tls_server(cert: trustme.LeafCert) -> Target:
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    cert.configure_cert(context)
    server = Target()
    await server.start(ssl_context=context)
    return server


async def _certificate(ca_file: str, url: str, **fields: Any) -> Outcome:
    monitor = CertificateMonitor.model_validate(
        {"Name": "t", "MonitorType": "Certificate", "Url": url, **fields}
    )
    ctx = await _context(ca_file)
    try:
        return await CertificateProbe(ctx).check(monitor)
    finally:
        ctx.curl.close()


async def test_certificate(ca: trustme.CA, tmp_path: Path) -> None:
    ca_file = str(tmp_path / "ca.pem")
    ca.cert_pem.write_to_path(ca_file)
    now = datetime.datetime.now(datetime.UTC)
    good = await _tls_server(
        ca.issue_cert(
            "127.0.0.1",
            common_name="picket.test",
            organization_name="Picket",
            not_after=now + datetime.timedelta(days=90),
        )
    )
    soon = await _tls_server(ca.issue_cert("127.0.0.1", not_after=now + datetime.timedelta(days=5)))
    wrong_host = await _tls_server(ca.issue_cert("elsewhere.test"))
    expired = await _tls_server(
        ca.issue_cert(
            "127.0.0.1",
            not_before=now - datetime.timedelta(days=30),
            not_after=now - datetime.timedelta(days=2),
        )
    )
    try:
        ok = await _certificate(ca_file, good.base, CertificateName="PICKET.test")
        assert ok.ok, ok
        a = ok.attributes
        assert a["CertificateName"] == "picket.test" and a["CertificateOrganization"] == "Picket"
        assert a["CertificateIssuerCompanyName"] == "Picket Test CA"
        assert 88 <= a["CertificateDaysLeft"] <= 90 and a["CertificateNotAfter"].endswith("Z")
        assert ok.timings_ms["HttpsHandshakeTime"] > 0
        pinned = await _certificate(
            ca_file, good.base, CertificateFingerprint=a["CertificateFingerprint"].lower()
        )
        assert pinned.ok
        mismatch = await _certificate(ca_file, good.base, CertificateOrganization="Someone")
        assert mismatch.error_code == ErrorCode.CERTIFICATE_MISMATCH
        assert "CertificateOrganization" in mismatch.error_message
        expiring = await _certificate(ca_file, soon.base, CertificateExpirationWarningDays=30)
        assert expiring.error_code == ErrorCode.CERTIFICATE_EXPIRING
        assert (await _certificate(ca_file, soon.base, CertificateExpirationWarningDays=3)).ok
        host = await _certificate(ca_file, wrong_host.base)
        assert host.error_code == ErrorCode.CERTIFICATE_INVALID and "mismatch" in host.error_message
        # a chain that fails verification still tells which certificate it was
        assert host.attributes["CertificateIssuerCompanyName"] == "Picket Test CA"
        assert host.attributes["CertificateNotAfter"].endswith("Z")
        assert host.attributes["CertificateDaysLeft"] > 0
        gone = await _certificate(ca_file, expired.base)
        assert gone.error_code == ErrorCode.CERTIFICATE_INVALID and "expired" in gone.error_message
        assert gone.attributes["CertificateDaysLeft"] < 0
        # the failed handshake took time: it is the handshake's, not nobody's
        t = gone.timings_ms
        assert t["HttpsHandshakeTime"] > 0, t
        assert t["ResolveTime"] + t["HttpsHandshakeTime"] <= t["TotalTime"] + 0.01
        relaxed = await _certificate(ca_file, wrong_host.base, CheckCertificateErrors=False)
        assert relaxed.ok and relaxed.attributes["CertificateName"] == ""
        other_ca = str(tmp_path / "other-ca.pem")
        trustme.CA().cert_pem.write_to_path(other_ca)
        stranger = await _certificate(other_ca, good.base)  # a CA the agent does not trust
        assert stranger.error_code == ErrorCode.CERTIFICATE_INVALID, stranger
        assert stranger.attributes["CertificateName"] == "picket.test"
        assert stranger.attributes["CertificateFingerprint"] == a["CertificateFingerprint"]
    finally:
        for server in (good, soon, wrong_host, expired):
            await server.stop()


async def test_a_stalled_tls_handshake_is_handshake_time(ca: trustme.CA, tmp_path: Path) -> None:
    ca_file = str(tmp_path / "ca.pem")
    ca.cert_pem.write_to_path(ca_file)

    async def accept_and_wait(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.read()  # never answers the ClientHello
        writer.close()

    server, port = await _server(accept_and_wait)
    try:
        stalled = await _certificate(ca_file, f"https://127.0.0.1:{port}/", TimeoutSeconds=1)
    finally:
        server.close()
        await server.wait_closed()
    assert stalled.error_code == ErrorCode.TIMEOUT, stalled
    t = stalled.timings_ms
    assert t["HttpsHandshakeTime"] >= 900, t
    assert t["ResolveTime"] + t["HttpsHandshakeTime"] <= t["TotalTime"] + 0.01
