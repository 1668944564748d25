"""HTTP(S) checks on libcurl, with Uptrends' HttpStatus and ContentMatch error conditions."""

from __future__ import annotations

import errno as os_errors
import re

from agent import curl
from agent.probes.base import Outcome, Probe
from shared.errors import ErrorCode
from shared.monitors import ErrorCondition, HttpMonitor, MonitorBase


def curl_error_code(errno: int, os_errno: int) -> ErrorCode:
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
        return ErrorCode.INVALID_URL
    return ErrorCode.RECEIVE_FAILED


def _decode(body: bytes) -> str:
    return body.decode("utf-8", errors="replace")


def evaluate(conditions: list[ErrorCondition], status: int, body: bytes) -> Outcome | None:
    """The first error condition that fails, as an Outcome; None when all pass."""
    expected_status = [c for c in conditions if c.ErrorConditionType == "HttpStatus"]
    if expected_status:
        want = int(expected_status[0].Value.strip())
        if status != want:
            return Outcome(ErrorCode.HTTP_STATUS_MISMATCH, f"HTTP status {status}, expected {want}")
    elif status >= 400:
        return Outcome(ErrorCode.HTTP_STATUS_MISMATCH, f"HTTP status {status}")
    text: str | None = None
    for cond in conditions:
        if cond.ErrorConditionType != "ContentMatch":
            continue
        text = _decode(body) if text is None else text
        match_type = cond.MatchType or "ErrorWhenNotContains"
        if match_type.endswith("Regex"):
            found = re.search(cond.Value, text) is not None
        else:
            found = cond.Value in text
        error_when_found = match_type in ("ErrorWhenContains", "ErrorWhenContainsRegex")
        if found == error_when_found:
            verb = "contains" if found else "does not contain"
            return Outcome(ErrorCode.CONTENT_MISMATCH, f"Response {verb} {cond.Value!r}")
    return None


class HttpProbe(Probe):
    type_names = HttpMonitor.type_names

    async def check(self, monitor: MonitorBase) -> Outcome:
        assert isinstance(monitor, HttpMonitor)
        request = curl.HttpRequest(
            url=monitor.Url,
            method=monitor.HttpMethod,
            headers=tuple((h.Name, h.Value) for h in monitor.RequestHeaders),
            body=monitor.RequestBody.encode() if monitor.RequestBody else None,
            user_agent=monitor.UserAgent,
            timeout_seconds=monitor.TimeoutSeconds,
            max_redirects=10,
            max_body_bytes=self.ctx.max_body_bytes,
        )
        response = await self.ctx.curl.request(request)
        outcome = Outcome(
            http_status_code=response.status,
            total_bytes=response.total_bytes,
            resolved_ip=response.primary_ip,
            timings_ms=response.marks.phases_ms(),
            body=response.body,
        )
        if response.curl_error:
            outcome.error_code = curl_error_code(response.curl_error, response.os_errno)
            outcome.error_message = response.curl_message or f"libcurl error {response.curl_error}"
            return outcome
        failed = evaluate(monitor.ErrorConditions, response.status or 0, response.body)
        if failed is not None:
            outcome.error_code = failed.error_code
            outcome.error_message = failed.error_message
        return outcome
