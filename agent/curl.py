"""libcurl's multi interface on the asyncio event loop: the only module that imports pycurl.

Every transfer is one easy handle added to one CurlMulti. libcurl tells us which sockets to
watch (socket callback), which we keep in an epoll set of our own, and when to wake it (timer
callback); the loop watches that epoll set's one descriptor and calls back into `socket_action`
for each ready socket. No threads, and the timings are libcurl's own.
"""

from __future__ import annotations

import asyncio
import contextlib
import importlib.metadata
import logging
import os
import select
from collections.abc import Callable
from dataclasses import dataclass, field

import pycurl

from agent.bounds import Bounds

log = logging.getLogger(__name__)

SYSTEM_CA_BUNDLE = "/etc/ssl/certs/ca-certificates.crt"
HTTP_ONLY = pycurl.PROTO_HTTP | pycurl.PROTO_HTTPS  # never file://, ftp:// ... even on redirect

# libcurl error numbers grouped by what they mean for a check (see shared.errors)
DNS_ERRORS = frozenset({pycurl.E_COULDNT_RESOLVE_HOST, pycurl.E_COULDNT_RESOLVE_PROXY})
CONNECT_ERRORS = frozenset({pycurl.E_COULDNT_CONNECT})
TIMEOUT_ERRORS = frozenset({pycurl.E_OPERATION_TIMEDOUT})
CERTIFICATE_ERRORS = frozenset({pycurl.E_PEER_FAILED_VERIFICATION, 60})
TLS_ERRORS = frozenset(
    {pycurl.E_SSL_CONNECT_ERROR, pycurl.E_SSL_CERTPROBLEM, pycurl.E_SSL_CIPHER, 80, 83, 90, 91}
)
# the agent's own CA file (PICKET_CA_FILE) cannot be read: never the target's fault
AGENT_ERRORS = frozenset({pycurl.E_SSL_CACERT_BADFILE})
SEND_ERRORS = frozenset({pycurl.E_SEND_ERROR})
RECEIVE_ERRORS = frozenset(
    {pycurl.E_GOT_NOTHING, pycurl.E_RECV_ERROR, pycurl.E_PARTIAL_FILE, 8, 16, 92}
)
REDIRECT_ERRORS = frozenset({pycurl.E_TOO_MANY_REDIRECTS})
URL_ERRORS = frozenset({pycurl.E_URL_MALFORMAT, pycurl.E_UNSUPPORTED_PROTOCOL})
ENCODING_ERRORS = frozenset({pycurl.E_BAD_CONTENT_ENCODING})


# libcurl falls back to an older version when the server does not offer the one asked for: the
# HTTP probe compares the version of the response with the one required (an error if older).
# Http2 over TLS is offered by ALPN (2TLS), over plain HTTP by an h2c Upgrade (2_0).
HTTP_VERSIONS = {
    "Http1_1": pycurl.CURL_HTTP_VERSION_1_1,
    "Http2": pycurl.CURL_HTTP_VERSION_2TLS,
    "Http3": pycurl.CURL_HTTP_VERSION_3,
}
AUTH_TYPES = {
    "Basic": pycurl.HTTPAUTH_BASIC,
    "Digest": pycurl.HTTPAUTH_DIGEST,
    "NTLM": pycurl.HTTPAUTH_NTLM,
}
_V = pycurl
TLS_VERSIONS = {  # Uptrends' TlsVersion -> libcurl's minimum | maximum
    "Tls13": _V.SSLVERSION_TLSv1_3 | _V.SSLVERSION_MAX_TLSv1_3,
    "Tls12": _V.SSLVERSION_TLSv1_2 | _V.SSLVERSION_MAX_TLSv1_2,
    "Tls11": _V.SSLVERSION_TLSv1_1 | _V.SSLVERSION_MAX_TLSv1_1,
    "Tls10": _V.SSLVERSION_TLSv1_0 | _V.SSLVERSION_MAX_TLSv1_0,
    "Tls12_Tls11": _V.SSLVERSION_TLSv1_1 | _V.SSLVERSION_MAX_TLSv1_2,
    "Tls11_Tls10": _V.SSLVERSION_TLSv1_0 | _V.SSLVERSION_MAX_TLSv1_1,
    "Tls12_Tls11_Tls10": _V.SSLVERSION_TLSv1_0 | _V.SSLVERSION_MAX_TLSv1_2,
    "Tls12_Tls11_Tls10_WithFallback": _V.SSLVERSION_TLSv1_0 | _V.SSLVERSION_MAX_TLSv1_2,
}


class Unsupported(Exception):
    """The request needs something this build of libcurl does not have."""


_FEATURES = pycurl.version_info()[4]
# libcurl's build decides what it can do: the wheel's libcurl, for one, has no NTLM
AVAILABLE_AUTH = {
    name
    for name, needs in (("Basic", 0), ("Digest", 0), ("NTLM", pycurl.VERSION_NTLM))
    if not needs or _FEATURES & needs
}
HTTP3_AVAILABLE = bool(_FEATURES & pycurl.VERSION_HTTP3)
# Content-Encodings this libcurl decodes (what CURLOPT_ACCEPT_ENCODING "" offers)
DECODED_ENCODINGS = tuple(
    name
    for name, needs in (
        ("deflate", pycurl.VERSION_LIBZ),
        ("gzip", pycurl.VERSION_LIBZ),
        ("br", pycurl.VERSION_BROTLI),
        ("zstd", getattr(pycurl, "VERSION_ZSTD", 0)),
    )
    if needs and _FEATURES & needs
)


def _package_version() -> str:
    try:
        return importlib.metadata.version("picket")
    except importlib.metadata.PackageNotFoundError:  # run from a tree that is not installed
        return "dev"


# the User-Agent of a check whose monitor sets none (a Picket one, with its version)
DEFAULT_USER_AGENT = f"Picket/{_package_version()} libcurl/{_V.version_info()[1]}"

# A compressed body is decoded up to this many bytes, then the transfer stops with an error:
# a decompression bomb (a few kB that decode to gigabytes) would cost seconds of CPU per check.
# A body that is not compressed downloads as long as it takes (its cost is the network's).
DECODED_LIMIT_BYTES = 64 << 20

# Called once when a response's body first goes past the bytes kept in memory, with the
# response's headers and the kept bytes; returns what receives every later piece of the body
# (decoded as libcurl delivers it), so that the whole body can be scanned without keeping it.
BodyScan = Callable[[list[tuple[str, str]], bytes], Callable[[bytes], None]]


@dataclass(frozen=True)
class HttpRequest:
    url: str
    method: str = "GET"
    headers: tuple[tuple[str, str], ...] = ()
    body: bytes | None = None
    user_agent: str = ""
    timeout_seconds: float = 30.0
    max_redirects: int = 0  # the HTTP probe follows redirects itself, one transfer per hop
    max_body_bytes: int = 1_048_576
    auth: str = "None"  # None | Basic | Digest | NTLM
    username: str = ""
    password: str = ""
    verify_tls: bool = True
    ip_version: int = 0  # 0: either, 4 or 6
    http_version: str = "Negotiate"
    tls_version: str | None = None
    client_cert: bytes | None = None  # PEM
    client_key: bytes | None = None  # PEM
    # cookies for libcurl's cookie engine (one per transfer, never shared), in its
    # Netscape-file lines as HttpResponse.cookies gives them: a redirect's next hop gets them
    cookies: tuple[str, ...] = ()
    scan: BodyScan | None = None


@dataclass(frozen=True)
class Marks:
    """libcurl's cumulative time marks, in microseconds from the start of the transfer.

    A failed transfer leaves the marks of the steps it never reached at 0, and libcurl fills
    some later ones with the time of the failure (a refused connect has a pre-transfer mark):
    only the marks up to the first one missing, in the order of the steps, are believed.
    """

    namelookup: int = 0
    connect: int = 0
    appconnect: int = 0
    pretransfer: int = 0
    posttransfer: int = 0
    starttransfer: int = 0
    total: int = 0
    tls: bool = False  # an https transfer (else known by its app-connect mark): a TLS step

    def phases_ms(self) -> dict[str, float]:
        """Per-phase durations in milliseconds (microsecond resolution), as Picket stores them.

        The phases are the spans between the steps reached; the step being worked on when the
        transfer ended (completed or not) gets the rest of the total, the steps not reached
        get 0, and the phases never add up to more than the total."""
        total = max(0, self.total)
        tls = self.tls or self.appconnect > 0
        if (  # the common case, a completed transfer: every mark there and in order
            0 < self.namelookup <= self.connect
            and (self.connect <= self.appconnect <= self.pretransfer or not tls)
            and 0 < self.pretransfer <= self.posttransfer <= self.starttransfer <= total
        ):
            return {
                "ResolveTime": self.namelookup / 1000.0,
                "ConnectionTime": (self.connect - self.namelookup) / 1000.0,
                "HttpsHandshakeTime": (self.appconnect - self.connect) / 1000.0 if tls else 0.0,
                "SendTime": (self.posttransfer - self.pretransfer) / 1000.0,
                "WaitTime": (self.starttransfer - self.posttransfer) / 1000.0,
                "DownloadTime": (total - self.starttransfer) / 1000.0,
                "TotalTime": total / 1000.0,
            }
        # (the phase that ends at the step's mark, the mark); "": a step that is no phase
        steps: list[tuple[str, int]] = [
            ("ResolveTime", self.namelookup or (1 if self.connect else 0)),
            ("ConnectionTime", self.connect),
        ]
        if tls:
            steps.append(("HttpsHandshakeTime", self.appconnect))
        steps += [
            ("", self.pretransfer),  # request set-up: a few microseconds, no phase
            ("SendTime", self.posttransfer),
            ("WaitTime", self.starttransfer),
        ]
        phases = dict.fromkeys(PHASE_NAMES, 0.0)
        previous = 0
        current = "DownloadTime"  # the phase after the last step reached
        for index, (phase, mark) in enumerate(steps):
            if mark <= 0:
                current = phase or "SendTime"
                break
            mark = min(max(mark, previous), total)
            if index == 0 and not self.namelookup:
                mark = 0  # connected, so resolved: in less than a microsecond
            if phase:
                phases[phase] = (mark - previous) / 1000.0
            previous = mark
        phases[current] += (total - previous) / 1000.0
        phases["TotalTime"] = total / 1000.0
        return phases


# the phases of a transfer, in order, then the whole: what every HTTP check reports
PHASE_NAMES: tuple[str, ...] = (
    "ResolveTime",
    "ConnectionTime",
    "HttpsHandshakeTime",
    "SendTime",
    "WaitTime",
    "DownloadTime",
    "TotalTime",
)


@dataclass
class HttpResponse:
    curl_error: int  # 0 = transfer completed
    curl_message: str
    status: int | None
    headers: list[tuple[str, str]]
    body: bytes
    total_bytes: int
    primary_ip: str
    marks: Marks
    os_errno: int = 0  # the system error behind a failed connect, e.g. ECONNREFUSED
    http_version: str = ""  # of the response: "1.1", "2", "3"
    raw_headers: str = ""  # the final response's header block, as received
    sent_headers: str = ""  # the request's header block as libcurl sent it (the last one)
    cookies: list[str] = field(default_factory=list)  # the cookie engine's, after the transfer
    body_bytes: int = 0  # the body's bytes as decoded (total_bytes: as they came over the wire)


@dataclass
class _Transfer:
    handle: pycurl.Curl
    future: asyncio.Future[tuple[int, str]]
    chunks: list[bytes] = field(default_factory=list)
    kept: int = 0
    total: int = 0
    limit: int = 0
    header_lines: list[bytes] = field(default_factory=list)
    sent: bytes = b""  # the last request header block, as sent
    tried: bytes = b""  # libcurl's last "Trying <address>..." (refused connects have no IP)
    scan: BodyScan | None = None
    scanner: Callable[[bytes], None] | None = None
    tls: bool = False
    decode_limit: int = DECODED_LIMIT_BYTES  # decoded bytes past it: is the body compressed?
    bomb: bool = False  # stopped at decode_limit: the body is compressed


class CurlEngine:
    """Runs HTTP transfers concurrently on the running loop, at most `max_concurrency` at once
    (or within `bounds`, the worker's bound that its other probes share too)."""

    def __init__(
        self,
        max_concurrency: int,
        max_per_host: int = 256,
        ca_file: str | None = None,
        bounds: Bounds | None = None,
    ) -> None:
        self._loop = asyncio.get_running_loop()
        self.bounds = bounds or Bounds(max_concurrency, max_per_host)
        self._multi = pycurl.CurlMulti()
        self._multi.setopt(pycurl.M_SOCKETFUNCTION, self._on_socket)
        self._multi.setopt(pycurl.M_TIMERFUNCTION, self._on_timer)
        self._timer: asyncio.TimerHandle | None = None
        self._kick_pending = False
        self._transfers: dict[int, _Transfer] = {}
        self._watched: dict[int, int] = {}  # fd -> epoll mask
        self._epoll = select.epoll()
        self._loop.add_reader(self._epoll.fileno(), self._on_ready)
        system = SYSTEM_CA_BUNDLE if os.path.exists(SYSTEM_CA_BUNDLE) else None
        self._ca_bundle = ca_file or system
        self._closed = False

    @property
    def in_flight(self) -> int:
        return len(self._transfers)

    async def request(self, req: HttpRequest) -> HttpResponse:
        """One transfer, waiting first for room on its host, then for room overall."""
        async with self.bounds.hold(authority(req.url)):
            return await self._perform(req)

    async def _perform(self, req: HttpRequest) -> HttpResponse:
        if self._closed:
            raise RuntimeError("curl engine closed")
        if req.auth in AUTH_TYPES and req.auth not in AVAILABLE_AUTH:
            raise Unsupported(f"{req.auth} authentication is not built into this agent's libcurl")
        if req.http_version == "Http3" and not HTTP3_AVAILABLE:
            raise Unsupported("HTTP/3 is not built into this agent's libcurl")
        handle = pycurl.Curl()
        transfer = _Transfer(handle=handle, future=self._loop.create_future())
        transfer.limit = req.max_body_bytes
        transfer.scan = req.scan
        transfer.tls = _is_tls(req.url)
        self._configure(handle, req, transfer)
        self._transfers[id(handle)] = transfer
        try:
            self._multi.add_handle(handle)
            # kick libcurl: it starts the transfer and tells us which sockets/timers to watch
            self._kick()
            errno, message = await transfer.future
            return self._response(transfer, errno, message)
        finally:
            self._transfers.pop(id(handle), None)
            if not transfer.future.done():  # cancelled while running
                self._remove(handle)
            handle.close()

    def _configure(self, c: pycurl.Curl, req: HttpRequest, transfer: _Transfer) -> None:
        c.setopt(pycurl.URL, req.url)
        c.setopt(pycurl.NOSIGNAL, 1)
        c.setopt(pycurl.PROTOCOLS, HTTP_ONLY)
        c.setopt(pycurl.REDIR_PROTOCOLS, HTTP_ONLY)
        if req.max_redirects > 0:
            c.setopt(pycurl.FOLLOWLOCATION, 1)
            c.setopt(pycurl.MAXREDIRS, req.max_redirects)
        # (MAXREDIRS 0 would also forbid the second request of Digest and NTLM authentication)
        c.setopt(pycurl.TIMEOUT_MS, max(1, int(req.timeout_seconds * 1000)))
        c.setopt(pycurl.CONNECTTIMEOUT_MS, max(1, int(req.timeout_seconds * 1000)))
        # every check measures a whole connection: DNS, TCP and TLS each time
        c.setopt(pycurl.FRESH_CONNECT, 1)
        c.setopt(pycurl.FORBID_REUSE, 1)
        c.setopt(pycurl.DNS_CACHE_TIMEOUT, 0)
        # straight to the target: an http_proxy in the environment would distort every timing
        c.setopt(pycurl.PROXY, "")
        if self._ca_bundle:
            c.setopt(pycurl.CAINFO, self._ca_bundle)
        # a real client's defaults; a header of the monitor's own with the same name wins
        c.setopt(pycurl.USERAGENT, req.user_agent or DEFAULT_USER_AGENT)
        c.setopt(pycurl.ACCEPT_ENCODING, "")  # offers and decodes what this libcurl can
        c.setopt(pycurl.COOKIEFILE, "")  # this transfer's own cookie engine
        for line in req.cookies:
            c.setopt(pycurl.COOKIELIST, line)
        if req.headers:
            lines = [f"{name}: {value}" for name, value in req.headers]
            own = [value for name, value in req.headers if name.lower() == "cookie"]
            if own:  # one Cookie header with the cookie engine's (RFC 6265: never two)
                lines = [line for line in lines if line[:7].lower() != "cookie:"]
                c.setopt(pycurl.COOKIE, "; ".join(own))
            c.setopt(pycurl.HTTPHEADER, lines)
        method = req.method.upper()
        if method == "HEAD":
            c.setopt(pycurl.NOBODY, 1)
        elif method != "GET":
            c.setopt(pycurl.CUSTOMREQUEST, method)
        if req.body is not None and method not in ("GET", "HEAD"):
            c.setopt(pycurl.POSTFIELDS, req.body)
        if req.auth in AUTH_TYPES:
            c.setopt(pycurl.HTTPAUTH, AUTH_TYPES[req.auth])
            c.setopt(pycurl.USERNAME, req.username)
            c.setopt(pycurl.PASSWORD, req.password)
        if not req.verify_tls:
            c.setopt(pycurl.SSL_VERIFYPEER, 0)
            c.setopt(pycurl.SSL_VERIFYHOST, 0)
        if req.ip_version:
            c.setopt(
                pycurl.IPRESOLVE,
                pycurl.IPRESOLVE_V4 if req.ip_version == 4 else pycurl.IPRESOLVE_V6,
            )
        if req.http_version in HTTP_VERSIONS:
            version = HTTP_VERSIONS[req.http_version]
            if version == pycurl.CURL_HTTP_VERSION_2TLS and not transfer.tls:
                version = pycurl.CURL_HTTP_VERSION_2_0  # h2c: ask for an Upgrade
            c.setopt(pycurl.HTTP_VERSION, version)
        if req.tls_version in TLS_VERSIONS:
            c.setopt(pycurl.SSLVERSION, TLS_VERSIONS[req.tls_version])
        if req.client_cert:
            c.setopt(pycurl.SSLCERT_BLOB, req.client_cert)
            c.setopt(pycurl.SSLCERTTYPE, "PEM")
            c.setopt(pycurl.SSLKEY_BLOB, req.client_key or req.client_cert)
            c.setopt(pycurl.SSLKEYTYPE, "PEM")
        c.setopt(pycurl.WRITEFUNCTION, _writer(transfer))
        c.setopt(pycurl.HEADERFUNCTION, transfer.header_lines.append)
        # the request headers as sent (cookies, defaults and all), and the address tried
        c.setopt(pycurl.VERBOSE, 1)
        c.setopt(pycurl.DEBUGFUNCTION, _debugger(transfer))

    def _response(self, t: _Transfer, errno: int, message: str) -> HttpResponse:
        c = t.handle
        raw_headers, headers = _final_headers(t.header_lines)
        status = int(c.getinfo(pycurl.RESPONSE_CODE)) or None
        marks = Marks(
            namelookup=int(c.getinfo(pycurl.NAMELOOKUP_TIME_T)),
            connect=int(c.getinfo(pycurl.CONNECT_TIME_T)),
            appconnect=int(c.getinfo(pycurl.APPCONNECT_TIME_T)),
            pretransfer=int(c.getinfo(pycurl.PRETRANSFER_TIME_T)),
            posttransfer=int(c.getinfo(pycurl.POSTTRANSFER_TIME_T)),
            starttransfer=int(c.getinfo(pycurl.STARTTRANSFER_TIME_T)),
            total=int(c.getinfo(pycurl.TOTAL_TIME_T)),
            tls=t.tls,
        )
        if t.bomb:
            message = (
                f"the compressed body decodes to more than {t.decode_limit} bytes (from "
                f"{int(c.getinfo(pycurl.SIZE_DOWNLOAD_T))} received): not decoded further"
            )
        primary_ip = str(c.getinfo(pycurl.PRIMARY_IP) or "")
        if not primary_ip and t.tried:  # a refused or failed connect: the address it tried
            primary_ip = _address(t.tried)
        return HttpResponse(
            curl_error=errno,
            curl_message=message,
            status=status,
            headers=headers,
            body=b"".join(t.chunks),
            total_bytes=int(c.getinfo(pycurl.SIZE_DOWNLOAD_T)),
            primary_ip=primary_ip,
            marks=marks,
            os_errno=int(c.getinfo(pycurl.OS_ERRNO)) if errno else 0,
            http_version=_RESPONSE_VERSIONS.get(int(c.getinfo(pycurl.INFO_HTTP_VERSION)), ""),
            raw_headers=raw_headers,
            sent_headers=t.sent.decode("latin-1").rstrip("\r\n"),
            cookies=list(c.getinfo(pycurl.INFO_COOKIELIST)),
            body_bytes=t.total,
        )

    # --- libcurl <-> event loop -------------------------------------------------------------

    def _on_socket(self, what: int, fd: int, multi: object, data: object) -> None:
        """libcurl says which events of a socket it wants: our own epoll set keeps them, so a
        change is one epoll_ctl, and the loop watches the one epoll descriptor."""
        if what == pycurl.POLL_REMOVE:
            if self._watched.pop(fd, 0):
                with contextlib.suppress(OSError):  # already closed: the kernel dropped it
                    self._epoll.unregister(fd)
            return
        mask = _EPOLL_MASKS[what & (pycurl.POLL_IN | pycurl.POLL_OUT)]
        old = self._watched.get(fd, 0)  # 0: known, but nothing wanted (so not in the set)
        if mask == old and fd in self._watched:
            return
        try:
            if not mask:
                if old:
                    self._epoll.unregister(fd)  # else a hang-up would be reported without end
            elif old:
                self._epoll.modify(fd, mask)
            else:
                self._epoll.register(fd, mask)
        except FileExistsError:  # a reused descriptor number we never saw removed
            self._epoll.modify(fd, mask)
        except FileNotFoundError:  # closed and reopened behind our back
            if mask:
                self._epoll.register(fd, mask)
        except OSError as exc:  # not watched: its transfer ends at its time-out, not hangs
            self._watched.pop(fd, None)
            log.warning("cannot watch socket %d for libcurl: %s", fd, exc)
            return
        self._watched[fd] = mask

    def _on_ready(self) -> None:
        """The loop found our epoll set readable: hand each ready socket to libcurl."""
        if self._closed:
            return
        try:
            for fd, events in self._epoll.poll(0):
                flags = 0
                if events & _READ_EVENTS:
                    flags |= pycurl.CSELECT_IN
                if events & select.EPOLLOUT:
                    flags |= pycurl.CSELECT_OUT
                if events & select.EPOLLERR:
                    flags |= pycurl.CSELECT_ERR
                self._multi.socket_action(fd, flags)
        except pycurl.error:
            log.exception("libcurl socket_action failed")
        self._collect()

    def _on_timer(self, timeout_ms: int) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        if timeout_ms == 0:
            self._kick()
        elif timeout_ms > 0 and not self._closed:
            self._timer = self._loop.call_later(
                timeout_ms / 1000.0, self._socket_action, pycurl.SOCKET_TIMEOUT, 0
            )

    def _kick(self) -> None:
        """libcurl's timers, at the loop's next turn: once however many transfers were added
        in this one (a slot's monitors all start together)."""
        if not self._kick_pending:
            self._kick_pending = True
            self._loop.call_soon(self._on_kick)

    def _on_kick(self) -> None:
        self._kick_pending = False
        self._socket_action(pycurl.SOCKET_TIMEOUT, 0)

    def _socket_action(self, fd: int, events: int) -> None:
        if self._closed:
            return
        try:
            while True:
                ret, _running = self._multi.socket_action(fd, events)
                if ret != pycurl.E_CALL_MULTI_PERFORM:
                    break
        except pycurl.error:
            log.exception("libcurl socket_action failed")
        self._collect()

    def _collect(self) -> None:
        while True:
            queued, succeeded, failed = self._multi.info_read()
            for handle in succeeded:
                self._finish(handle, 0, "")
            for handle, errno, message in failed:
                self._finish(handle, errno, message)
            if queued == 0:
                break

    def _finish(self, handle: pycurl.Curl, errno: int, message: str) -> None:
        self._remove(handle)
        transfer = self._transfers.get(id(handle))
        if transfer is not None and not transfer.future.done():
            transfer.future.set_result((errno, message))

    def _remove(self, handle: pycurl.Curl) -> None:
        try:
            self._multi.remove_handle(handle)
        except pycurl.error:
            log.debug("handle already removed")

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        if self._timer is not None:
            self._timer.cancel()
        for transfer in list(self._transfers.values()):
            self._remove(transfer.handle)
            if not transfer.future.done():
                transfer.future.cancel()
        self._loop.remove_reader(self._epoll.fileno())
        self._epoll.close()
        self._watched.clear()
        self._multi.close()


def _writer(t: _Transfer) -> Callable[[bytes], int | None]:
    def write(chunk: bytes) -> int | None:
        t.total += len(chunk)
        if t.total > t.decode_limit:
            if _compressed(_final_headers(t.header_lines)[1]):
                t.bomb = True
                return 0  # libcurl stops the transfer (CURLE_WRITE_ERROR)
            t.decode_limit = t.total + (1 << 62)  # not compressed: no limit
        room = t.limit - t.kept
        if room > 0:
            if len(chunk) <= room:
                t.chunks.append(chunk)
                t.kept += len(chunk)
                return None
            t.chunks.append(chunk[:room])
            t.kept += room
            chunk = chunk[room:]
        if t.scanner is None:
            if t.scan is None:
                return None
            t.scanner = t.scan(_final_headers(t.header_lines)[1], b"".join(t.chunks))
        t.scanner(chunk)
        return None

    return write


def _compressed(headers: list[tuple[str, str]]) -> bool:
    return any(
        name.lower() == "content-encoding" and value.strip().lower() not in ("", "identity")
        for name, value in headers
    )


def _debugger(t: _Transfer) -> Callable[[int, bytes], None]:
    def debug(kind: int, data: bytes) -> None:
        if kind == _HEADER_OUT:
            t.sent = data
        elif kind == _TEXT and data.startswith(b"  Trying "):
            t.tried = data

    return debug


_HEADER_OUT = pycurl.INFOTYPE_HEADER_OUT
_TEXT = pycurl.INFOTYPE_TEXT


def _address(trying: bytes) -> str:
    """The IP address of libcurl's `  Trying 192.0.2.1:80...` or `  Trying [2001:db8::1]:443...`,
    without the port."""
    text = trying.decode("latin-1").strip().removeprefix("Trying ").rstrip(".")
    host = text.rpartition(":")[0] or text
    return host.strip("[]")


def _is_tls(url: str) -> bool:
    return url[:8].lower() == "https://"


_EPOLL_MASKS = {
    0: 0,
    pycurl.POLL_IN: select.EPOLLIN,
    pycurl.POLL_OUT: select.EPOLLOUT,
    pycurl.POLL_IN | pycurl.POLL_OUT: select.EPOLLIN | select.EPOLLOUT,
}
_READ_EVENTS = select.EPOLLIN | select.EPOLLHUP | select.EPOLLERR

_RESPONSE_VERSIONS = {
    pycurl.CURL_HTTP_VERSION_1_0: "1.0",
    pycurl.CURL_HTTP_VERSION_1_1: "1.1",
    pycurl.CURL_HTTP_VERSION_2_0: "2",
    pycurl.CURL_HTTP_VERSION_3: "3",
}


def authority(url: str) -> str:
    """`host:port` of a URL, cheaply: the key of the per-host bound."""
    rest = url.partition("://")[2]
    end = len(rest)
    for stop in "/?#":
        found = rest.find(stop)
        if found != -1 and found < end:
            end = found
    return rest[:end].rpartition("@")[2].lower()


def _final_headers(lines: list[bytes]) -> tuple[str, list[tuple[str, str]]]:
    """The final response's header block and its headers (libcurl hands us every hop's and
    every 1xx response's)."""
    start = 0
    for index, raw in enumerate(lines):
        if raw.startswith(b"HTTP/"):
            start = index
    block = b"".join(lines[start:]).decode("latin-1")
    headers = []
    for line in block.splitlines()[1:]:
        name, colon, value = line.partition(":")
        if colon:
            headers.append((name.strip(), value.strip()))
    return block.rstrip("\r\n"), headers
