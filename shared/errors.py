"""Error codes of a MonitorCheck: what the agent saw. The controller derives ErrorLevel from them.

The table is documented in docs/results.md; numbers are stable once released.
"""

from __future__ import annotations

from enum import IntEnum


class ErrorCode(IntEnum):
    OK = 0
    INTERNAL = 1  # the agent could not run the check (a bug on our side, never the target's)
    UNSUPPORTED = 2  # this agent cannot do what the monitor asks (e.g. its libcurl lacks NTLM)
    AGENT_CONFIGURATION = 3  # the agent's own set-up prevents the check (its CA file unreadable)
    # the check failed and so did the agent's own connectivity canary: the slot says nothing
    # about the target (NoError, never alerting)
    INCONCLUSIVE = 4
    # stored by the controller, not an agent: no selected checkpoint had a live server that
    # could run the monitor at the slot's time, so nobody checked (controller/nolive.py)
    NO_LIVE_CHECKPOINT = 5
    DNS_FAILURE = 100
    CONNECTION_REFUSED = 110
    CONNECTION_FAILED = 111  # unreachable, reset during connect, ...
    TIMEOUT = 120
    TLS_ERROR = 130
    CERTIFICATE_INVALID = 131
    SEND_FAILED = 140
    RECEIVE_FAILED = 141  # empty reply, reset mid-response, malformed response
    TOO_MANY_REDIRECTS = 142
    VERSION_NOT_AS_REQUIRED = 143  # the monitor's HttpVersion or IpVersion was not what was used
    INVALID_URL = 150
    HTTP_STATUS_MISMATCH = 200
    CONTENT_MISMATCH = 210
    CONTENT_UNDECIDED = 211  # a content condition the bytes looked at cannot decide
    LOAD_TIME_EXCEEDED = 220
    TIME_TO_FIRST_BYTE_EXCEEDED = 221
    TOO_FEW_BYTES = 230
    TOO_MANY_BYTES = 231
    DNS_ANSWER_MISMATCH = 240
    CERTIFICATE_EXPIRING = 250
    CERTIFICATE_MISMATCH = 251
    PACKET_LOSS = 260
    ASSERTION_FAILED = 270
    VARIABLE_UNDEFINED = 271
    ICMP_NOT_PERMITTED = 261


DESCRIPTIONS: dict[ErrorCode, str] = {
    ErrorCode.OK: "OK",
    ErrorCode.INTERNAL: "Internal error while running the check",
    ErrorCode.UNSUPPORTED: "Not supported by this agent",
    ErrorCode.AGENT_CONFIGURATION: "The agent's configuration prevents the check",
    ErrorCode.INCONCLUSIVE: "Inconclusive: the checkpoint could not reach the network",
    ErrorCode.NO_LIVE_CHECKPOINT: "Inconclusive: no selected checkpoint was live",
    ErrorCode.DNS_FAILURE: "DNS lookup failed",
    ErrorCode.CONNECTION_REFUSED: "Connection refused",
    ErrorCode.CONNECTION_FAILED: "Connection failed",
    ErrorCode.TIMEOUT: "Timed out",
    ErrorCode.TLS_ERROR: "TLS handshake failed",
    ErrorCode.CERTIFICATE_INVALID: "Certificate not valid",
    ErrorCode.SEND_FAILED: "Sending the request failed",
    ErrorCode.RECEIVE_FAILED: "Receiving the response failed",
    ErrorCode.TOO_MANY_REDIRECTS: "Too many redirects",
    ErrorCode.VERSION_NOT_AS_REQUIRED: "HTTP or IP version not as required",
    ErrorCode.INVALID_URL: "Invalid URL",
    ErrorCode.HTTP_STATUS_MISMATCH: "HTTP status code not as expected",
    ErrorCode.CONTENT_MISMATCH: "Content check failed",
    ErrorCode.CONTENT_UNDECIDED: "Content check could not be decided",
    ErrorCode.LOAD_TIME_EXCEEDED: "Load time limit exceeded",
    ErrorCode.TIME_TO_FIRST_BYTE_EXCEEDED: "Time to first byte limit exceeded",
    ErrorCode.TOO_FEW_BYTES: "Response smaller than the minimum",
    ErrorCode.TOO_MANY_BYTES: "Response larger than the maximum",
    ErrorCode.DNS_ANSWER_MISMATCH: "DNS answer not as expected",
    ErrorCode.CERTIFICATE_EXPIRING: "Certificate expires soon",
    ErrorCode.CERTIFICATE_MISMATCH: "Certificate not as expected",
    ErrorCode.PACKET_LOSS: "All pings lost",
    ErrorCode.ASSERTION_FAILED: "Assertion failed",
    ErrorCode.VARIABLE_UNDEFINED: "Variable not defined",
    ErrorCode.ICMP_NOT_PERMITTED: "ICMP sockets not permitted",
}

# the codes of a slot that says nothing about the target: stored as NoError with
# `IsInconclusive`, never confirmed, never alerting, left out by `?Inconclusive=false`
INCONCLUSIVE_CODES = frozenset({ErrorCode.INCONCLUSIVE, ErrorCode.NO_LIVE_CHECKPOINT})
