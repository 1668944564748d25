"""libcurl's multi interface on the asyncio event loop: the only module that imports pycurl.

Every transfer is one easy handle added to one CurlMulti. libcurl tells us which sockets to
watch (socket callback) and when to wake it (timer callback); the loop calls back into
`socket_action`. No threads, and the timings are libcurl's own.
"""

from __future__ import annotations

import asyncio
import logging
import os
from collections.abc import Callable
from dataclasses import dataclass, field

import pycurl

log = logging.getLogger(__name__)

SYSTEM_CA_BUNDLE = "/etc/ssl/certs/ca-certificates.crt"
HTTP_ONLY = pycurl.PROTO_HTTP | pycurl.PROTO_HTTPS  # never file://, ftp:// ... even on redirect

# libcurl error numbers grouped by what they mean for a check (see shared.errors)
DNS_ERRORS = frozenset({pycurl.E_COULDNT_RESOLVE_HOST, pycurl.E_COULDNT_RESOLVE_PROXY})
CONNECT_ERRORS = frozenset({pycurl.E_COULDNT_CONNECT})
TIMEOUT_ERRORS = frozenset({pycurl.E_OPERATION_TIMEDOUT})
CERTIFICATE_ERRORS = frozenset({pycurl.E_PEER_FAILED_VERIFICATION, 60})
TLS_ERRORS = frozenset(
    {pycurl.E_SSL_CONNECT_ERROR, pycurl.E_SSL_CERTPROBLEM, pycurl.E_SSL_CIPHER, 77, 80, 83, 90, 91}
)
SEND_ERRORS = frozenset({pycurl.E_SEND_ERROR})
RECEIVE_ERRORS = frozenset(
    {pycurl.E_GOT_NOTHING, pycurl.E_RECV_ERROR, pycurl.E_PARTIAL_FILE, 8, 16, 92}
)
REDIRECT_ERRORS = frozenset({pycurl.E_TOO_MANY_REDIRECTS})
URL_ERRORS = frozenset({pycurl.E_URL_MALFORMAT, pycurl.E_UNSUPPORTED_PROTOCOL})


@dataclass(frozen=True)
class HttpRequest:
    url: str
    method: str = "GET"
    headers: tuple[tuple[str, str], ...] = ()
    body: bytes | None = None
    user_agent: str = ""
    timeout_seconds: float = 30.0
    max_redirects: int = 10
    max_body_bytes: int = 1_048_576


@dataclass(frozen=True)
class Marks:
    """libcurl's cumulative time marks, in microseconds from the start of the transfer."""

    namelookup: int = 0
    connect: int = 0
    appconnect: int = 0
    pretransfer: int = 0
    posttransfer: int = 0
    starttransfer: int = 0
    total: int = 0

    def phases_ms(self) -> dict[str, float]:
        """Per-phase durations in milliseconds (microsecond resolution), as Picket stores them."""

        def span(end: int, start: int) -> float:
            return max(0, end - start) / 1000.0

        return {
            "ResolveTime": self.namelookup / 1000.0,
            "ConnectionTime": span(self.connect, self.namelookup),
            "HttpsHandshakeTime": span(self.appconnect, self.connect) if self.appconnect else 0.0,
            "SendTime": span(self.posttransfer, self.pretransfer),
            "WaitTime": span(self.starttransfer, self.posttransfer),
            "DownloadTime": span(self.total, self.starttransfer),
            "TotalTime": self.total / 1000.0,
        }


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


@dataclass
class _Transfer:
    handle: pycurl.Curl
    future: asyncio.Future[tuple[int, str]]
    chunks: list[bytes] = field(default_factory=list)
    kept: int = 0
    total: int = 0
    limit: int = 0
    header_lines: list[bytes] = field(default_factory=list)


class CurlEngine:
    """Runs HTTP transfers concurrently on the running loop, at most `max_concurrency` at once."""

    def __init__(self, max_concurrency: int) -> None:
        self._loop = asyncio.get_running_loop()
        self._slots = asyncio.Semaphore(max_concurrency)
        self._multi = pycurl.CurlMulti()
        self._multi.setopt(pycurl.M_SOCKETFUNCTION, self._on_socket)
        self._multi.setopt(pycurl.M_TIMERFUNCTION, self._on_timer)
        self._timer: asyncio.TimerHandle | None = None
        self._transfers: dict[int, _Transfer] = {}
        self._watched: dict[int, int] = {}  # fd -> pycurl.POLL_* bitmask
        self._ca_bundle = SYSTEM_CA_BUNDLE if os.path.exists(SYSTEM_CA_BUNDLE) else None
        self._closed = False

    @property
    def in_flight(self) -> int:
        return len(self._transfers)

    async def request(self, req: HttpRequest) -> HttpResponse:
        async with self._slots:
            return await self._perform(req)

    async def _perform(self, req: HttpRequest) -> HttpResponse:
        if self._closed:
            raise RuntimeError("curl engine closed")
        handle = pycurl.Curl()
        transfer = _Transfer(handle=handle, future=self._loop.create_future())
        transfer.limit = req.max_body_bytes
        self._configure(handle, req, transfer)
        self._transfers[id(handle)] = transfer
        try:
            self._multi.add_handle(handle)
            # kick libcurl: it starts the transfer and tells us which sockets/timers to watch
            self._loop.call_soon(self._socket_action, pycurl.SOCKET_TIMEOUT, 0)
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
        c.setopt(pycurl.FOLLOWLOCATION, 1 if req.max_redirects > 0 else 0)
        c.setopt(pycurl.MAXREDIRS, req.max_redirects)
        c.setopt(pycurl.TIMEOUT_MS, max(1, int(req.timeout_seconds * 1000)))
        c.setopt(pycurl.CONNECTTIMEOUT_MS, max(1, int(req.timeout_seconds * 1000)))
        # every check measures a whole connection: DNS, TCP and TLS each time
        c.setopt(pycurl.FRESH_CONNECT, 1)
        c.setopt(pycurl.FORBID_REUSE, 1)
        c.setopt(pycurl.DNS_CACHE_TIMEOUT, 0)
        if self._ca_bundle:
            c.setopt(pycurl.CAINFO, self._ca_bundle)
        if req.user_agent:
            c.setopt(pycurl.USERAGENT, req.user_agent)
        if req.headers:
            c.setopt(pycurl.HTTPHEADER, [f"{name}: {value}" for name, value in req.headers])
        method = req.method.upper()
        if method == "HEAD":
            c.setopt(pycurl.NOBODY, 1)
        elif method != "GET":
            c.setopt(pycurl.CUSTOMREQUEST, method)
        if req.body is not None and method not in ("GET", "HEAD"):
            c.setopt(pycurl.POSTFIELDS, req.body)
        c.setopt(pycurl.WRITEFUNCTION, _writer(transfer))
        c.setopt(pycurl.HEADERFUNCTION, transfer.header_lines.append)

    def _response(self, t: _Transfer, errno: int, message: str) -> HttpResponse:
        c = t.handle
        status = int(c.getinfo(pycurl.RESPONSE_CODE)) or None
        marks = Marks(
            namelookup=int(c.getinfo(pycurl.NAMELOOKUP_TIME_T)),
            connect=int(c.getinfo(pycurl.CONNECT_TIME_T)),
            appconnect=int(c.getinfo(pycurl.APPCONNECT_TIME_T)),
            pretransfer=int(c.getinfo(pycurl.PRETRANSFER_TIME_T)),
            posttransfer=int(c.getinfo(pycurl.POSTTRANSFER_TIME_T)),
            starttransfer=int(c.getinfo(pycurl.STARTTRANSFER_TIME_T)),
            total=int(c.getinfo(pycurl.TOTAL_TIME_T)),
        )
        return HttpResponse(
            curl_error=errno,
            curl_message=message,
            status=status,
            headers=_last_headers(t.header_lines),
            body=b"".join(t.chunks),
            total_bytes=t.total,
            primary_ip=str(c.getinfo(pycurl.PRIMARY_IP) or ""),
            marks=marks,
            os_errno=int(c.getinfo(pycurl.OS_ERRNO)),
        )

    # --- libcurl <-> event loop -------------------------------------------------------------

    def _on_socket(self, what: int, fd: int, multi: object, data: object) -> None:
        old = self._watched.get(fd, 0)
        if old & pycurl.POLL_IN and not what & pycurl.POLL_IN:
            self._loop.remove_reader(fd)
        if old & pycurl.POLL_OUT and not what & pycurl.POLL_OUT:
            self._loop.remove_writer(fd)
        if what == pycurl.POLL_REMOVE:
            self._watched.pop(fd, None)
            return
        if what & pycurl.POLL_IN and not old & pycurl.POLL_IN:
            self._loop.add_reader(fd, self._socket_action, fd, pycurl.CSELECT_IN)
        if what & pycurl.POLL_OUT and not old & pycurl.POLL_OUT:
            self._loop.add_writer(fd, self._socket_action, fd, pycurl.CSELECT_OUT)
        self._watched[fd] = what

    def _on_timer(self, timeout_ms: int) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        if timeout_ms >= 0 and not self._closed:
            self._timer = self._loop.call_later(
                timeout_ms / 1000.0, self._socket_action, pycurl.SOCKET_TIMEOUT, 0
            )

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
        for fd in list(self._watched):
            self._loop.remove_reader(fd)
            self._loop.remove_writer(fd)
        self._watched.clear()
        self._multi.close()


def _writer(t: _Transfer) -> Callable[[bytes], None]:
    def write(chunk: bytes) -> None:
        t.total += len(chunk)
        room = t.limit - t.kept
        if room > 0:
            piece = chunk if len(chunk) <= room else chunk[:room]
            t.chunks.append(piece)
            t.kept += len(piece)

    return write


def _last_headers(lines: list[bytes]) -> list[tuple[str, str]]:
    """Headers of the final response (libcurl hands us every hop's, and 1xx responses)."""
    headers: list[tuple[str, str]] = []
    for raw in lines:
        line = raw.decode("latin-1").rstrip("\r\n")
        if line.startswith("HTTP/"):
            headers = []
        elif ":" in line:
            name, _, value = line.partition(":")
            headers.append((name.strip(), value.strip()))
    return headers
