"""HTTP checks tell the truth (issue 9): whole bodies matched, honest phases of failed transfers,
the required versions enforced, cookies across redirects, compression, the right error codes.

Every target is on loopback, by IP literal: no name goes to the system resolver.
"""

from __future__ import annotations

import asyncio
import datetime
import gzip
import json
import ssl
import zlib
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import pytest
import trustme
from aiohttp import web

from agent.curl import (
    DECODED_ENCODINGS,
    DEFAULT_USER_AGENT,
    HTTP3_AVAILABLE,
    PHASE_NAMES,
    CurlEngine,
    Marks,
)
from agent.probes.base import Outcome, ProbeContext
from agent.probes.content import Body, charset
from agent.probes.http import HttpProbe
from shared.errors import ErrorCode
from shared.monitors import ErrorCondition, HttpMonitor
from tests.helpers import free_port

MIB = 1 << 20
PHASES = PHASE_NAMES[:-1]  # TotalTime apart


@pytest.fixture(scope="module")
def ca() -> trustme.CA:
    return trustme.CA()


@pytest.fixture
async def engine(ca: trustme.CA, tmp_path: Path) -> AsyncIterator[CurlEngine]:
    path = tmp_path / "ca.pem"
    ca.cert_pem.write_to_path(str(path))
    curl = CurlEngine(max_concurrency=20, ca_file=str(path))
    yield curl
    curl.close()


async def _check(engine: CurlEngine, url: str, max_body: int = MIB, **fields: Any) -> Outcome:
    monitor = HttpMonitor.model_validate(
        {
            "Name": "m",
            "MonitorType": "Https" if url.startswith("https") else "Http",
            "Url": url,
            **fields,
        }
    )
    return await HttpProbe(ProbeContext(curl=engine, max_body_bytes=max_body)).check(monitor)


def _brotli_stored(data: bytes) -> bytes:
    """A brotli stream of one uncompressed meta-block (RFC 7932, 9.2): no brotli library needed."""
    assert 0 < len(data) <= 1 << 16
    bits = [0, 0, 0, 0]  # WBITS 16; ISLAST 0; MNIBBLES 4
    bits += [(len(data) - 1) >> i & 1 for i in range(16)]  # MLEN - 1
    bits += [1]  # ISUNCOMPRESSED
    bits += [0] * (-len(bits) % 8)
    head = bytes(sum(b << i for i, b in enumerate(bits[k : k + 8])) for k in range(0, len(bits), 8))
    return head + data + bytes([0b11])  # ISLAST, ISLASTEMPTY


def _match(value: str, match_type: str) -> dict[str, str]:
    return {"ErrorConditionType": "ContentMatch", "Value": value, "MatchType": match_type}


class Site:
    """An aiohttp app on loopback with the pages these tests need; `seen` records requests."""

    def __init__(self) -> None:
        self.port = free_port()
        self.seen: list[tuple[str, str, dict[str, str]]] = []
        self._runner: web.AppRunner | None = None
        self.scheme = "http"

    @property
    def base(self) -> str:
        return f"{self.scheme}://127.0.0.1:{self.port}"

    async def start(self, context: ssl.SSLContext | None = None) -> None:
        app = web.Application()
        app.router.add_route("*", "/{name:.*}", self._page)
        self._runner = web.AppRunner(app, access_log=None)
        await self._runner.setup()
        await web.TCPSite(self._runner, "127.0.0.1", self.port, ssl_context=context).start()
        self.scheme = "https" if context else "http"

    async def stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()

    async def _page(self, request: web.Request) -> web.StreamResponse:
        name = request.match_info["name"]
        self.seen.append((request.method, name, dict(request.headers)))
        if name == "huge":  # 2 MiB, FATAL ERROR after the first MiB, written in pieces
            response = web.StreamResponse()
            response.content_type = "text/plain"
            await response.prepare(request)
            for _ in range(16):
                await response.write(b"x" * (MIB // 16))
            await response.write(b"yyyy FATAL ERROR zzzz")
            for _ in range(16):
                await response.write(b"x" * (MIB // 16))
            await response.write_eof()
            return response
        if name == "login":  # a redirect hop that sets a cookie
            raise web.HTTPFound("/landing", headers={"Set-Cookie": "session=abc123; Path=/"})
        if name == "landing":
            cookie = request.headers.get("Cookie", "")
            return web.Response(text=f"cookie was [{cookie}]" + "." * 500)
        if name == "see-other":
            raise web.HTTPSeeOther("/landing")
        if name == "gzip":
            body = gzip.compress(b"compressed hello " * 1000)
            return web.Response(body=body, headers={"Content-Encoding": "gzip"})
        if name == "deflate":
            body = zlib.compress(b"deflated hello " * 1000)
            return web.Response(body=body, headers={"Content-Encoding": "deflate"})
        if name == "br":
            body = _brotli_stored(b"brotli hello " * 1000)
            return web.Response(body=body, headers={"Content-Encoding": "br"})
        if name == "zstd":  # what a zstd body starts with; this libcurl cannot decode it
            body = bytes.fromhex("28b52ffd") + b"\x00" * 64
            return web.Response(body=body, headers={"Content-Encoding": "zstd"})
        if name == "latin1":
            return web.Response(
                body="prix: 5 € café crème".encode("cp1252").replace(b"\x80", b"E"),
                headers={"Content-Type": "text/plain; charset=iso-8859-1"},
            )
        if name == "latin1-meta":
            page = '<html><head><meta charset="iso-8859-1"></head><body>déjà vu</body></html>'
            return web.Response(body=page.encode("latin-1"), content_type="text/html")
        return web.Response(text="ok " + json.dumps({"method": request.method}))


@pytest.fixture
async def site() -> AsyncIterator[Site]:
    server = Site()
    await server.start()
    yield server
    await server.stop()


Handler = Callable[[asyncio.StreamReader, asyncio.StreamWriter], Awaitable[None]]


async def _raw_server(handler: Handler) -> tuple[asyncio.Server, int]:
    server = await asyncio.start_server(handler, "127.0.0.1", 0)
    return server, server.sockets[0].getsockname()[1]


async def _silent(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    """Accepts, reads whatever comes (a request, a ClientHello) and never answers."""
    try:
        while await reader.read(65536):
            pass
    finally:
        writer.close()


async def _empty(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    await reader.readuntil(b"\r\n\r\n")
    writer.close()


async def _not_http(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    await reader.readuntil(b"\r\n\r\n")
    writer.write(b"SSH-2.0-OpenSSH_9.2\r\n")
    await writer.drain()
    writer.close()


def _assert_honest(timings: dict[str, float], spent_in: str, at_least: float) -> None:
    """The time went to `spent_in`; later phases are 0; the phases add up to TotalTime."""
    parts = sum(timings[p] for p in PHASES)
    assert parts <= timings["TotalTime"] + 0.002, timings
    assert timings[spent_in] >= at_least, timings
    for later in PHASES[PHASES.index(spent_in) + 1 :]:
        assert timings[later] == 0.0, (later, timings)


# --- item 1: the whole body is matched ---------------------------------------------------------


async def test_text_past_the_kept_bytes_is_found(engine: CurlEngine, site: Site) -> None:
    url = f"{site.base}/huge"
    bad = await _check(engine, url, ErrorConditions=[_match("FATAL ERROR", "ErrorWhenContains")])
    assert bad.error_code == ErrorCode.CONTENT_MISMATCH, bad
    assert bad.total_bytes == 2 * MIB + 21
    assert len(bad.body or b"") == MIB  # the stored excerpt stays bounded
    good = await _check(
        engine, url, ErrorConditions=[_match("FATAL ERROR", "ErrorWhenNotContains")]
    )
    assert good.ok, good
    absent = await _check(engine, url, ErrorConditions=[_match("nowhere", "ErrorWhenContains")])
    assert absent.ok, absent


async def test_a_regex_past_the_kept_bytes_is_undecided(engine: CurlEngine, site: Site) -> None:
    url = f"{site.base}/huge"
    undecided = await _check(
        engine, url, ErrorConditions=[_match("FATAL\\s+ERROR", "ErrorWhenContainsRegex")]
    )
    assert undecided.error_code == ErrorCode.CONTENT_UNDECIDED, undecided
    assert "first 1048576 bytes" in undecided.error_message
    # found in the kept bytes: decided
    found = await _check(engine, url, ErrorConditions=[_match("x{100}", "ErrorWhenContainsRegex")])
    assert found.error_code == ErrorCode.CONTENT_MISMATCH, found


def test_text_split_across_pieces_is_found() -> None:
    cond = ErrorCondition.model_validate(_match("FATAL ERROR", "ErrorWhenContains"))
    body = Body([cond])
    kept = b"a" * 100 + b"FAT"
    feed = body.scanner([("Content-Type", "text/plain")], kept)
    for piece in (b"AL", b" ", b"ERR", b"OR and more"):
        feed(piece)
    body.finish([], kept, len(kept) + 16)
    assert body.contains(cond, lambda p, t: False) is True
    other = Body([cond])
    feed = other.scanner([], b"a" * 10)
    feed(b"FATAL ERRO")
    other.finish([], b"a" * 10, 20)
    assert other.contains(cond, lambda p, t: False) is False


# --- item 2: phases of failed transfers --------------------------------------------------------


def test_marks_of_failed_transfers_are_believed_up_to_the_first_missing() -> None:
    # as libcurl 8.23 reports them (µs): later marks filled with the time of the failure
    refused = Marks(namelookup=10, pretransfer=49, posttransfer=49, starttransfer=49, total=49)
    assert refused.phases_ms()["ConnectionTime"] == 0.039
    _assert_honest(refused.phases_ms(), "ConnectionTime", 0.039)
    stalled = Marks(
        namelookup=36,
        connect=158,
        pretransfer=1_001_498,
        posttransfer=1_001_499,
        starttransfer=1_001_499,
        total=1_001_500,
        tls=True,
    )
    _assert_honest(stalled.phases_ms(), "HttpsHandshakeTime", 1001.342)
    silent = Marks(namelookup=42, connect=141, pretransfer=171, posttransfer=171, total=1_006_059)
    _assert_honest(silent.phases_ms(), "WaitTime", 1005.888)
    unresolved = Marks(total=5000).phases_ms()
    assert unresolved["ResolveTime"] == 5.0 and unresolved["TotalTime"] == 5.0


async def test_silent_server_time_is_waiting(engine: CurlEngine) -> None:
    server, port = await _raw_server(_silent)
    try:
        outcome = await _check(engine, f"http://127.0.0.1:{port}/", TimeoutSeconds=2)
    finally:
        server.close()
    assert outcome.error_code == ErrorCode.TIMEOUT, outcome
    _assert_honest(outcome.timings_ms, "WaitTime", 1900)
    assert outcome.details is not None
    element = outcome.details["Waterfall"][0]
    assert element["WaitTime"] >= 1900 and element["ReceiveTime"] == 0.0


async def test_stalled_tls_handshake_time_is_the_handshake(engine: CurlEngine) -> None:
    server, port = await _raw_server(_silent)
    try:
        outcome = await _check(engine, f"https://127.0.0.1:{port}/", TimeoutSeconds=2)
    finally:
        server.close()
    assert outcome.error_code == ErrorCode.TIMEOUT, outcome
    _assert_honest(outcome.timings_ms, "HttpsHandshakeTime", 1900)
    assert outcome.details is not None
    assert outcome.details["Waterfall"][0]["HttpsHandshakeTime"] >= 1900


async def test_expired_certificate_has_a_handshake_time(engine: CurlEngine, ca: trustme.CA) -> None:
    past = datetime.datetime.now(datetime.UTC) - datetime.timedelta(days=30)
    cert = ca.issue_cert("127.0.0.1", not_before=past, not_after=past + datetime.timedelta(days=1))
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    cert.configure_cert(context)
    server = Site()
    await server.start(context)
    try:
        outcome = await _check(engine, f"{server.base}/ok")
    finally:
        await server.stop()
    assert outcome.error_code == ErrorCode.CERTIFICATE_INVALID, outcome
    _assert_honest(outcome.timings_ms, "HttpsHandshakeTime", 0.001)


async def test_empty_reply_phases_within_the_total(engine: CurlEngine) -> None:
    server, port = await _raw_server(_empty)
    try:
        outcome = await _check(engine, f"http://127.0.0.1:{port}/")
    finally:
        server.close()
    assert outcome.error_code == ErrorCode.RECEIVE_FAILED, outcome
    _assert_honest(outcome.timings_ms, "WaitTime", 0.0)


# --- item 5: cookies across redirects ----------------------------------------------------------


async def test_a_cookie_set_on_a_redirect_is_sent_on_the_next_hop(
    engine: CurlEngine, site: Site
) -> None:
    outcome = await _check(engine, f"{site.base}/login")
    assert outcome.ok, outcome
    assert b"cookie was [session=abc123]" in (outcome.body or b"")
    assert outcome.details is not None
    second = outcome.details["Waterfall"][1]["RequestHeaders"]
    assert "Cookie: ******" in second and "abc123" not in second  # masked as a credential
    # a fresh check starts without it: cookies are per check
    again = await _check(engine, f"{site.base}/landing")
    assert b"cookie was []" in (again.body or b"")


async def test_the_monitors_cookie_and_a_redirects_go_in_one_header(
    engine: CurlEngine, site: Site
) -> None:
    outcome = await _check(
        engine, f"{site.base}/login", RequestHeaders=[{"Name": "Cookie", "Value": "mine=1"}]
    )
    assert outcome.ok, outcome
    assert b"cookie was [session=abc123; mine=1]" in (outcome.body or b"")
    assert outcome.details is not None
    sent = outcome.details["Waterfall"][1]["RequestHeaders"].split("\r\n")
    assert sum(1 for line in sent if line.lower().startswith("cookie:")) == 1


# --- item 7: the versions required -------------------------------------------------------------


async def test_http2_and_http3_required_of_an_http11_server(
    engine: CurlEngine, ca: trustme.CA
) -> None:
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ca.issue_cert("127.0.0.1").configure_cert(context)
    server = Site()
    await server.start(context)
    try:
        h2 = await _check(engine, f"{server.base}/ok", HttpVersion="Http2")
        assert h2.error_code == ErrorCode.VERSION_NOT_AS_REQUIRED, h2
        assert h2.error_message == "Http2 required, the server answered over HTTP/1.1"
        plain = await _check(engine, f"{server.base}/ok", HttpVersion="Negotiate")
        assert plain.ok, plain
        if HTTP3_AVAILABLE:
            h3 = await _check(engine, f"{server.base}/ok", HttpVersion="Http3")
            assert h3.error_code == ErrorCode.VERSION_NOT_AS_REQUIRED, h3
            assert "Http3 required" in h3.error_message
    finally:
        await server.stop()


async def test_http2_required_over_plain_http_of_an_http11_server(
    engine: CurlEngine, site: Site
) -> None:
    outcome = await _check(engine, f"{site.base}/ok", HttpVersion="Http2")  # h2c Upgrade
    assert outcome.error_code == ErrorCode.VERSION_NOT_AS_REQUIRED, outcome
    assert outcome.error_message == "Http2 required, the server answered over HTTP/1.1"


async def test_ipv6_required_of_an_ipv4_target(engine: CurlEngine, site: Site) -> None:
    outcome = await _check(engine, f"{site.base}/ok", IpVersion="IpV6")
    assert outcome.error_code == ErrorCode.VERSION_NOT_AS_REQUIRED, outcome
    assert outcome.error_message == "IpV6 required, connected to 127.0.0.1 over IPv4"
    assert (await _check(engine, f"{site.base}/ok", IpVersion="IpV4")).ok


# --- item 8: compression and default headers ---------------------------------------------------


@pytest.mark.parametrize("encoding", ["gzip", "deflate", "br"])
async def test_compressed_bodies_are_matched_decoded(
    engine: CurlEngine, site: Site, encoding: str
) -> None:
    assert encoding in DECODED_ENCODINGS
    word = {"gzip": "compressed hello", "deflate": "deflated hello", "br": "brotli hello"}[encoding]
    outcome = await _check(
        engine,
        f"{site.base}/{encoding}",
        ErrorConditions=[_match(word, "ErrorWhenNotContains")],
    )
    assert outcome.ok, outcome
    on_the_wire = len(gzip.compress(b"compressed hello " * 1000))
    if encoding == "gzip":
        assert outcome.total_bytes == on_the_wire  # TotalBytes: as it came, compressed
    if encoding == "br":
        assert outcome.total_bytes == len(_brotli_stored(b"brotli hello " * 1000))
    else:
        assert outcome.total_bytes < 1000


@pytest.mark.skipif("zstd" in DECODED_ENCODINGS, reason="this libcurl decodes zstd")
async def test_an_encoding_the_agent_cannot_decode_says_so(engine: CurlEngine, site: Site) -> None:
    outcome = await _check(
        engine,
        f"{site.base}/zstd",
        RequestHeaders=[{"Name": "Accept-Encoding", "Value": "zstd"}],
        ErrorConditions=[_match("anything", "ErrorWhenContains")],
    )
    assert outcome.error_code == ErrorCode.UNSUPPORTED, outcome
    assert "content encoding" in outcome.error_message


async def test_default_headers_are_a_real_clients(engine: CurlEngine, site: Site) -> None:
    await _check(engine, f"{site.base}/ok")
    headers = site.seen[-1][2]
    assert headers["User-Agent"] == DEFAULT_USER_AGENT and DEFAULT_USER_AGENT.startswith("Picket/")
    assert headers["Accept-Encoding"] == ", ".join(DECODED_ENCODINGS)
    await _check(
        engine,
        f"{site.base}/ok",
        UserAgent="Mine/1",
        RequestHeaders=[{"Name": "Accept-Encoding", "Value": "identity"}],
    )
    headers = site.seen[-1][2]
    assert headers["User-Agent"] == "Mine/1" and headers["Accept-Encoding"] == "identity"


# --- items 9 and 10 ----------------------------------------------------------------------------


async def test_a_reply_that_is_not_http_is_malformed(engine: CurlEngine) -> None:
    server, port = await _raw_server(_not_http)
    try:
        outcome = await _check(engine, f"http://127.0.0.1:{port}/")
    finally:
        server.close()
    assert outcome.error_code == ErrorCode.RECEIVE_FAILED, outcome


async def test_total_bytes_are_the_final_responses(engine: CurlEngine, site: Site) -> None:
    outcome = await _check(engine, f"{site.base}/login")
    assert outcome.ok and outcome.details is not None
    final = outcome.details["Waterfall"][-1]["TotalBytes"]
    assert outcome.total_bytes == final and final > 500


async def test_declared_charset_is_honoured(engine: CurlEngine, site: Site) -> None:
    header = await _check(
        engine, f"{site.base}/latin1", ErrorConditions=[_match("café crème", "ErrorWhenContains")]
    )
    assert header.error_code == ErrorCode.CONTENT_MISMATCH, header
    assert "café crème" in (header.body or b"").decode()  # stored in UTF-8
    meta = await _check(
        engine, f"{site.base}/latin1-meta", ErrorConditions=[_match("déjà", "ErrorWhenNotContains")]
    )
    assert meta.ok, meta
    assert charset([("Content-Type", "text/html; charset=ISO-8859-1")], b"") == "iso8859-1"


async def test_request_headers_are_the_ones_sent(engine: CurlEngine, site: Site) -> None:
    outcome = await _check(
        engine,
        f"{site.base}/ok",
        RequestHeaders=[{"Name": "X-Tenant", "Value": "t-42", "IsSecret": True}],
    )
    assert outcome.details is not None
    sent = outcome.details["Waterfall"][0]["RequestHeaders"].split("\r\n")
    assert sent[0] == "GET /ok HTTP/1.1"
    assert f"User-Agent: {DEFAULT_USER_AGENT}" in sent
    assert "Accept: */*" in sent and "X-Tenant: ******" in sent
    assert any(line.startswith("Accept-Encoding: ") for line in sent)


async def test_refused_connection_names_the_address(engine: CurlEngine) -> None:
    outcome = await _check(engine, f"http://127.0.0.1:{free_port()}/")
    assert outcome.error_code == ErrorCode.CONNECTION_REFUSED
    assert outcome.resolved_ip == "127.0.0.1"
    assert outcome.details is not None
    assert outcome.details["Waterfall"][0]["ResolvedIpAddress"] == "127.0.0.1"


async def test_head_stays_head_after_303(engine: CurlEngine, site: Site) -> None:
    outcome = await _check(engine, f"{site.base}/see-other", HttpMethod="Head")
    assert outcome.ok, outcome
    assert [(m, n) for m, n, _ in site.seen] == [("HEAD", "see-other"), ("HEAD", "landing")]
