"""HTTP(S) checks on libcurl with Uptrends' error conditions.

Redirects are followed here, hop by hop, one libcurl transfer per hop, so every hop has its
own timings (the waterfall). Credentials go only to the origin the monitor names.
"""

from __future__ import annotations

import errno as os_errors
import functools
import time
from typing import Any
from urllib.parse import urljoin, urlsplit

from agent import curl
from agent.probes.base import Outcome, Probe
from agent.probes.content import Body, charset
from shared import regex
from shared.errors import ErrorCode
from shared.monitors import ErrorCondition, HttpMonitor, MonitorBase
from shared.secrets import MASK, is_secret_header, mask_url

MAX_REDIRECTS = 10
REDIRECT_STATUSES = frozenset({301, 302, 303, 307, 308})
PHASES = curl.PHASE_NAMES


def curl_error_code(
    errno: int, os_errno: int, connected: bool = False, message: str = ""
) -> ErrorCode:
    if errno in curl.DNS_ERRORS:
        return ErrorCode.DNS_FAILURE
    if errno in curl.CONNECT_ERRORS:
        if os_errno == os_errors.ECONNREFUSED:
            return ErrorCode.CONNECTION_REFUSED
        if os_errno == os_errors.ETIMEDOUT:
            return ErrorCode.TIMEOUT
        return ErrorCode.CONNECTION_FAILED
    if errno in curl.TIMEOUT_ERRORS:
        return ErrorCode.TIMEOUT
    if errno in curl.AGENT_ERRORS:
        return ErrorCode.AGENT_CONFIGURATION
    if errno in curl.CERTIFICATE_ERRORS:
        return ErrorCode.CERTIFICATE_INVALID
    if errno in curl.TLS_ERRORS:
        return ErrorCode.TLS_ERROR
    if errno in curl.SEND_ERRORS:
        return ErrorCode.SEND_FAILED
    if errno in curl.RECEIVE_ERRORS:
        return ErrorCode.RECEIVE_FAILED
    if errno in curl.REDIRECT_ERRORS:
        return ErrorCode.TOO_MANY_REDIRECTS
    if errno in curl.URL_ERRORS:
        # a reply that is not HTTP ("Received HTTP/0.9 when not allowed") comes as libcurl's
        # unsupported protocol too: with a connection made, it is a malformed response
        return ErrorCode.RECEIVE_FAILED if connected else ErrorCode.INVALID_URL
    if errno in curl.ENCODING_ERRORS and "nrecognized" in message:
        return ErrorCode.UNSUPPORTED  # a Content-Encoding this libcurl cannot decode
    return ErrorCode.RECEIVE_FAILED


def _search(pattern: str, text: str) -> bool:
    """A ContentMatch regex, in linear time (RE2); RegexError for a pattern RE2 cannot run."""
    return regex.search(pattern, text) is not None


def effect(cond: ErrorCondition) -> str:
    """Uptrends' Effect: Error fails the check, Indicate only marks it (a warning). Unset, a
    LoadTimeLimit1 indicates (that is its meaning: the lower of two limits) and the rest fail."""
    if cond.Effect is not None:
        return cond.Effect
    return "Indicate" if cond.ErrorConditionType == "LoadTimeLimit1" else "Error"


def evaluate(
    conditions: list[ErrorCondition],
    status: int,
    body: bytes,
    total_ms: float = 0.0,
    first_byte_ms: float = 0.0,
    total_bytes: int = 0,
    content: Body | None = None,
) -> Outcome | None:
    """The first error condition that fails with Effect Error, as an Outcome; failing ones
    with Effect Indicate are warnings on an OK outcome instead. None when all pass."""
    by_type: dict[str, ErrorCondition] = {}
    for cond in conditions:
        by_type.setdefault(cond.ErrorConditionType, cond)
    failed: list[tuple[ErrorCondition | None, ErrorCode, str]] = []
    expected_status = by_type.get("HttpStatus")
    if expected_status is not None:
        if status != expected_status.number:
            failed.append(
                (
                    expected_status,
                    ErrorCode.HTTP_STATUS_MISMATCH,
                    f"HTTP status {status}, expected {expected_status.number}",
                )
            )
    elif status >= 400:
        failed.append((None, ErrorCode.HTTP_STATUS_MISMATCH, f"HTTP status {status}"))
    limit2 = by_type.get("LoadTimeLimit2")
    if limit2 is not None and total_ms > limit2.number:
        failed.append(
            (
                limit2,
                ErrorCode.LOAD_TIME_EXCEEDED,
                f"Load time {total_ms:.0f} ms > {limit2.number} ms",
            )
        )
    first_byte = by_type.get("TimeToFirstByteMaximum")
    if first_byte is not None and first_byte_ms > first_byte.number:
        failed.append(
            (
                first_byte,
                ErrorCode.TIME_TO_FIRST_BYTE_EXCEEDED,
                f"Time to first byte {first_byte_ms:.0f} ms > {first_byte.number} ms",
            )
        )
    least = by_type.get("TotalMinBytes")
    if least is not None and total_bytes < least.number:
        failed.append(
            (least, ErrorCode.TOO_FEW_BYTES, f"{total_bytes} bytes < {least.number} bytes")
        )
    most = by_type.get("TotalMaxBytes")
    if most is not None and total_bytes > most.number:
        failed.append(
            (most, ErrorCode.TOO_MANY_BYTES, f"{total_bytes} bytes > {most.number} bytes")
        )
    for cond in conditions:
        if cond.ErrorConditionType != "ContentMatch":
            continue
        if content is None:  # the body is all there is (no scan of a longer one)
            content = Body([])
            content.finish([], body, len(body))
        match_type = cond.MatchType or "ErrorWhenNotContains"
        try:
            found = content.contains(cond, _search)
        except regex.RegexError as exc:  # stored before RE2 checked patterns at the API
            return Outcome(ErrorCode.UNSUPPORTED, f"ContentMatch {cond.Value!r}: {exc}")
        if found is None:  # never a pass it did not earn; with Effect Indicate, a warning
            failed.append((cond, ErrorCode.CONTENT_UNDECIDED, content.undecided(cond)))
            continue
        error_when_found = match_type in ("ErrorWhenContains", "ErrorWhenContainsRegex")
        if found == error_when_found:
            verb = "contains" if found else "does not contain"
            failed.append((cond, ErrorCode.CONTENT_MISMATCH, f'Response {verb} "{cond.Value}"'))
    limit1 = by_type.get("LoadTimeLimit1")
    if limit1 is not None and total_ms > limit1.number:
        failed.append(
            (
                limit1,
                ErrorCode.LOAD_TIME_EXCEEDED,
                f"Load time {total_ms:.0f} ms > {limit1.number} ms (LoadTimeLimit1)",
            )
        )
    warnings: list[str] = []
    for failing, code, message in failed:
        if failing is None or effect(failing) == "Error":
            return Outcome(code, message)
        if failing.ErrorConditionType != "LoadTimeLimit1":
            message += f" ({failing.ErrorConditionType}, Effect Indicate)"
        warnings.append(message)
    return Outcome(warnings=warnings) if warnings else None


@functools.lru_cache(maxsize=16_384)
def _origin(url: str) -> tuple[str, str, int | None]:
    parts = urlsplit(url)
    return parts.scheme.lower(), (parts.hostname or "").lower(), parts.port


class HttpProbe(Probe):
    type_names = HttpMonitor.type_names

    def _request(
        self,
        monitor: HttpMonitor,
        url: str,
        method: str,
        body: bytes | None,
        timeout: float,
        cookies: tuple[str, ...] = (),
        content: Body | None = None,
    ) -> curl.HttpRequest:
        same_origin = _origin(url) == _origin(monitor.Url)
        # credentials (shared.secrets) go only to the monitor's own origin
        headers = tuple(
            (h.Name, h.Value)
            for h in monitor.RequestHeaders
            if same_origin or not is_secret_header(h.Name, h.IsSecret)
        )
        key = monitor.ClientCertificateKey
        return curl.HttpRequest(
            url=url,
            method=method,
            headers=headers,
            body=body,
            user_agent=monitor.UserAgent,
            timeout_seconds=timeout,
            max_body_bytes=self.ctx.max_body_bytes,
            auth=monitor.AuthenticationType if same_origin else "None",
            username=monitor.Username,
            password=monitor.Password,
            verify_tls=monitor.CheckCertificateErrors,
            ip_version={"IpV4": 4, "IpV6": 6}.get(monitor.IpVersion or "", 0),
            http_version=monitor.HttpVersion,
            tls_version=monitor.TlsVersion,
            client_cert=monitor.ClientCertificate.encode() if monitor.ClientCertificate else None,
            client_key=key.encode() if key else None,
            cookies=cookies,
            scan=content.scanner if content is not None else None,
        )

    async def check(self, monitor: MonitorBase) -> Outcome:
        assert isinstance(monitor, HttpMonitor)
        method = monitor.HttpMethod.upper()
        body = monitor.RequestBody.encode() if monitor.RequestBody else None
        url = monitor.Url
        began = time.perf_counter()
        deadline = began + monitor.TimeoutSeconds
        totals = dict.fromkeys(PHASES, 0.0)
        waterfall: list[dict[str, Any]] = []
        outcome = Outcome()
        response: curl.HttpResponse | None = None
        content: Body | None = None
        matches = any(c.ErrorConditionType == "ContentMatch" for c in monitor.ErrorConditions)
        secret_names = _secret_names(monitor)
        cookies: tuple[str, ...] = ()  # the check's cookies: Set-Cookie of one hop, sent on
        for hop in range(MAX_REDIRECTS + 1):
            remaining = deadline - time.perf_counter()
            if remaining <= 0:
                outcome.error_code = ErrorCode.TIMEOUT
                outcome.error_message = f"no answer within {monitor.TimeoutSeconds} s"
                break
            content = Body(monitor.ErrorConditions) if matches else None
            request = self._request(monitor, url, method, body, remaining, cookies, content)
            start_ms = (time.perf_counter() - began) * 1000
            try:
                response = await self.ctx.curl.request(request)
            except curl.Unsupported as exc:
                outcome.error_code = ErrorCode.UNSUPPORTED
                outcome.error_message = str(exc)
                break
            phases = response.marks.phases_ms()
            for name in PHASES:
                totals[name] += phases[name]
            waterfall.append(_element(hop, request, response, phases, start_ms, secret_names))
            if response.curl_error:
                outcome.error_code = curl_error_code(
                    response.curl_error,
                    response.os_errno,
                    connected=response.marks.connect > 0,
                    message=response.curl_message,
                )
                outcome.error_message = (
                    response.curl_message or f"libcurl error {response.curl_error}"
                )
                left = deadline - time.perf_counter()
                if outcome.error_code == ErrorCode.DNS_FAILURE and monitor.IpVersion and left > 0:
                    # outside the check's timings, within its time limit
                    host = urlsplit(url).hostname or ""
                    explained = await self.ctx.lookups.explain(
                        host, monitor.IpVersion, outcome.error_message, left
                    )
                    if explained is not None:
                        outcome.error_code, outcome.error_message = explained
                break
            wrong_version = _version_problem(monitor, response)
            if wrong_version:
                outcome.error_code = ErrorCode.VERSION_NOT_AS_REQUIRED
                outcome.error_message = wrong_version
                break
            location = dict((k.lower(), v) for k, v in response.headers).get("location")
            if response.status not in REDIRECT_STATUSES or not location:
                break
            if hop == MAX_REDIRECTS:
                outcome.error_code = ErrorCode.TOO_MANY_REDIRECTS
                outcome.error_message = f"more than {MAX_REDIRECTS} redirects"
                break
            url = urljoin(url, location)
            if urlsplit(url).scheme.lower() not in ("http", "https"):
                outcome.error_code = ErrorCode.INVALID_URL
                outcome.error_message = f"redirect to a non-HTTP URL: {mask_url(url)}"
                break
            cookies = tuple(response.cookies)
            if method != "HEAD" and (
                response.status == 303 or (response.status in (301, 302) and method == "POST")
            ):
                method, body = "GET", None  # as browsers do; a HEAD stays a HEAD
        outcome.timings_ms = {k: round(v, 3) for k, v in totals.items()}
        if response is not None:
            # the final response's: its bytes as they came over the wire (compressed or not)
            outcome.total_bytes = response.total_bytes
            outcome.http_status_code = response.status
            outcome.resolved_ip = response.primary_ip
            outcome.body = response.body
            # the final URL, version and headers are the last hop's (the API reads them there)
            outcome.details = {"Waterfall": waterfall}
        if response is None:
            return outcome
        if content is not None:
            text = content.finish(response.headers, response.body, response.body_bytes)
            if content.charset != "utf-8":
                outcome.body = text.encode()  # stored as UTF-8, read in the page's charset
        if not outcome.ok:
            if content is None and response.body:
                outcome.body = _as_utf8(response.headers, response.body)
            return outcome
        first_byte_ms = response.marks.starttransfer / 1000.0
        verdict = evaluate(
            monitor.ErrorConditions,
            response.status or 0,
            response.body,
            total_ms=totals["TotalTime"],
            first_byte_ms=first_byte_ms,
            total_bytes=response.total_bytes,
            content=content,
        )
        if verdict is not None:
            outcome.error_code = verdict.error_code
            outcome.error_message = verdict.error_message
            outcome.warnings = verdict.warnings
            if content is None and not verdict.ok and response.body:
                outcome.body = _as_utf8(response.headers, response.body)
        return outcome


def _as_utf8(headers: list[tuple[str, str]], body: bytes) -> bytes:
    """A body to store: in UTF-8, read in the page's own charset."""
    declared = charset(headers, body)
    if declared == "utf-8":
        return body
    return body.decode(declared, errors="replace").encode()


_VERSION_NAMES = {"Http2": "2", "Http3": "3"}


def _version_problem(monitor: HttpMonitor, response: curl.HttpResponse) -> str:
    """What differs from the HTTP and IP version the monitor requires, or ""."""
    wanted = _VERSION_NAMES.get(monitor.HttpVersion)
    if wanted and response.http_version != wanted:
        got = f"HTTP/{response.http_version}" if response.http_version else "no HTTP version"
        return f"{monitor.HttpVersion} required, the server answered over {got}"
    family = {"IpV4": 4, "IpV6": 6}.get(monitor.IpVersion or "")
    ip = response.primary_ip
    if family and ip:
        used = 6 if ":" in ip else 4
        if used != family:
            return f"{monitor.IpVersion} required, connected to {ip} over IPv{used}"
    return ""


def _secret_names(monitor: HttpMonitor) -> frozenset[str]:
    """Lower-case names of the monitor's headers marked IsSecret."""
    return frozenset(h.Name.lower() for h in monitor.RequestHeaders if h.IsSecret)


def _element(
    index: int,
    request: curl.HttpRequest,
    response: curl.HttpResponse,
    phases: dict[str, float],
    start_ms: float,
    secret_names: frozenset[str] = frozenset(),
) -> dict[str, Any]:
    """One waterfall element with Uptrends' PageElement fields (ms, µs resolution). Credential
    headers and URL userinfo show as `******`; the runner scrubs the monitor's other secrets."""
    url = mask_url(request.url)
    if response.sent_headers:  # as libcurl sent them: defaults, cookies and authentication too
        sent = response.sent_headers.split("\r\n")
        for line, header in enumerate(sent[1:], start=1):
            name, colon, _value = header.partition(":")
            if colon and (is_secret_header(name) or name.strip().lower() in secret_names):
                sent[line] = f"{name}: {MASK}"
    else:  # never sent (no connection): what would have been
        sent = [f"{request.method} {url}"]
        sent.append(f"User-Agent: {request.user_agent or curl.DEFAULT_USER_AGENT}")
        sent.extend(
            f"{name}: {MASK if is_secret_header(name) or name.lower() in secret_names else value}"
            for name, value in request.headers
        )
    return {
        "Index": index,
        "Url": url,
        "ElementType": "Document",
        "HttpStatusCode": response.status or 0,
        "TotalBytes": response.total_bytes,
        "StartTime": round(start_ms, 3),
        "ResolveTime": phases["ResolveTime"],
        "ConnectTime": phases["ConnectionTime"],
        "StaleTime": 0.0,
        "HttpsHandshakeTime": phases["HttpsHandshakeTime"],
        "SendTime": phases["SendTime"],
        "WaitTime": phases["WaitTime"],
        "ReceiveTime": phases["DownloadTime"],
        "TimeoutTime": phases["TotalTime"] if response.curl_error == 28 else 0.0,
        "TotalTime": phases["TotalTime"],
        "RequestHeaders": "\r\n".join(sent),
        "ResponseHeaders": response.raw_headers,
        "ResolvedIpAddress": response.primary_ip,
        "HttpVersion": response.http_version,
        "ErrorMessage": response.curl_message,
        "UrlIsBlocked": False,
    }
