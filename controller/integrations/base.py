"""What every integration kind shares: the notification it is given, the outcome it answers,
the context it sends with, and one HTTP exchange classified honestly.

An outcome is `sent`, a `temporary` failure (the same notification may go through later:
the endpoint could not be reached, timed out, answered 408, 429 or 5xx; with the endpoint's
Retry-After when it gave one) or a `permanent` failure (it will refuse it again: another 3xx
or 4xx, a refused configuration). The reason never holds a secret of the integration: the
endpoint's answer is scrubbed of them (a misconfigured endpoint may echo its credentials).
"""

from __future__ import annotations

import asyncio
import enum
import re
import ssl
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from email.utils import parsedate_to_datetime
from typing import Literal

import aiohttp
from yarl import URL

from shared.secrets import Scrubber

USER_AGENT = "Picket-Notifier/1"
REASON_CHARS = 300  # of an endpoint's answer, kept in a failure's reason
MAX_RETRY_AFTER = 86_400.0  # an endpoint asking for longer is read as a day


class AlertType(enum.StrEnum):
    ERROR = "Error"
    OK = "Ok"
    REMINDER = "Reminder"
    TEST = "Test"  # sent by POST /Integration/{guid}/Test, never by an alert


@dataclass(frozen=True)
class Notification:
    """One notification of one alert to one integration, as the outbox hands it over.

    `idempotency_key` is stable for this (alert, integration) across retries and across
    controllers: receivers drop a second delivery by it. `incident_key` is shared by an
    error, its reminders and its recovery (PagerDuty's dedup_key, Alertmanager's identity),
    so the recovery resolves what the error opened."""

    alert_type: AlertType
    alert_guid: str
    idempotency_key: str
    incident_key: str
    monitor_guid: str
    monitor_name: str
    timestamp: datetime
    checkpoints: tuple[str, ...] = ()
    error_description: str = ""
    first_error_check_id: int | None = None
    first_error_time: datetime | None = None
    monitor_check_id: int | None = None
    escalation_level: int = 1
    message: str = ""  # the escalation level's Message
    monitor_url: str = ""
    # e-mail: the on-duty operators of the escalation level (ExtraEmailAddresses are added)
    recipients: tuple[str, ...] = ()
    # the escalation level's VariableValues, over the integration's own
    variables: Mapping[str, str] = field(default_factory=dict)

    @property
    def is_problem(self) -> bool:
        """An error or its reminder (what opens or keeps an incident), or a test."""
        return self.alert_type != AlertType.OK


OutcomeKind = Literal["sent", "temporary", "permanent"]


@dataclass(frozen=True)
class Outcome:
    kind: OutcomeKind
    reason: str = ""  # why it failed (or a note on a delivery, like refused recipients)
    retry_after: float | None = None  # seconds the endpoint asked to wait, if it said
    status: int | None = None  # the HTTP status or SMTP code answered, if any

    @property
    def sent(self) -> bool:
        return self.kind == "sent"

    @classmethod
    def ok(cls, reason: str = "", status: int | None = None) -> Outcome:
        return cls("sent", reason, None, status)

    @classmethod
    def temporary(
        cls, reason: str, retry_after: float | None = None, status: int | None = None
    ) -> Outcome:
        return cls("temporary", reason, retry_after, status)

    @classmethod
    def permanent(cls, reason: str, status: int | None = None) -> Outcome:
        return cls("permanent", reason, None, status)


@dataclass(frozen=True)
class SmtpSettings:
    host: str = ""
    port: int = 587
    security: Literal["none", "starttls", "tls"] = "starttls"
    username: str = ""
    password: str = ""
    sender: str = ""
    ca_file: str = ""  # verify the server with these CAs instead of the system's


@dataclass
class SendContext:
    """What a send needs besides its integration and notification: the controller's one
    HTTP session (its own connection pool) and its SMTP settings, and the bounds."""

    session: aiohttp.ClientSession
    timeout: float = 10.0  # per send, connecting included
    max_response_bytes: int = 16_384  # of an endpoint's answer read (the rest is not)
    smtp: SmtpSettings = field(default_factory=SmtpSettings)


# --- URLs ---------------------------------------------------------------------------------------


def outbound_url(value: str) -> str:
    """An endpoint URL as accepted at save time: absolute http or https with a host."""
    value = value.strip()
    try:
        url = URL(value)
    except (ValueError, TypeError):
        raise ValueError("is not a URL") from None
    if url.scheme not in ("http", "https"):
        raise ValueError("must be an http:// or https:// URL")
    if not url.host:
        raise ValueError("has no host")
    if url.fragment:
        raise ValueError("must not have a #fragment (it is never sent)")
    try:
        url.port  # noqa: B018 (a port out of range raises here)
    except ValueError:
        raise ValueError("has an invalid port") from None
    return value


def url_origin(value: str) -> str:
    """`scheme://host:port` of a URL, for showing where a secret URL points."""
    try:
        url = URL(value)
        host = url.host or ""
        if ":" in host:
            host = f"[{host}]"
        return f"{url.scheme}://{host}" + (f":{url.explicit_port}" if url.explicit_port else "")
    except (ValueError, TypeError):
        return ""


# --- reasons ------------------------------------------------------------------------------------

_CONTROL = re.compile(r"[\x00-\x08\x0b-\x1f\x7f]+")


def clean(text: str, scrub: Scrubber, limit: int = REASON_CHARS) -> str:
    """Text from outside fit for a reason: secrets masked, control characters gone, short."""
    text = scrub.text(text) if scrub else text
    text = _CONTROL.sub(" ", text).strip()
    return text if len(text) <= limit else text[: limit - 1] + "…"


def retry_after(value: str | None, now: datetime | None = None) -> float | None:
    """Seconds from a Retry-After header: delta-seconds or an HTTP date; None if absent or
    unreadable."""
    if not value:
        return None
    value = value.strip()
    if value.isdigit():
        return min(float(value), MAX_RETRY_AFTER)
    try:
        when = parsedate_to_datetime(value)
    except (TypeError, ValueError, IndexError):
        return None
    if when.tzinfo is None:
        when = when.replace(tzinfo=UTC)
    seconds = (when - (now or datetime.now(UTC))).total_seconds()
    return min(max(seconds, 0.0), MAX_RETRY_AFTER)


def classify_status(status: int, answer: str, header_retry: str | None) -> Outcome:
    """An HTTP status as an outcome: 2xx sent; 408, 429 and 5xx temporary; others permanent
    (a redirect is not followed: a notification and its credentials stay where configured)."""
    if 200 <= status < 300:
        return Outcome.ok(status=status)
    what = f"HTTP {status}" + (f": {answer}" if answer else "")
    if status in (408, 429) or status >= 500:
        return Outcome.temporary(what, retry_after(header_retry), status)
    if 300 <= status < 400:
        return Outcome.permanent(f"{what} (redirects are not followed)", status)
    return Outcome.permanent(what, status)


async def exchange(
    ctx: SendContext,
    method: str,
    url: str,
    body: bytes | None,
    headers: Mapping[str, str],
    scrub: Scrubber,
) -> Outcome:
    """One HTTP request within the context's time limit, its answer read up to the cap,
    classified. Never raises for what the network or the endpoint does."""
    try:
        async with asyncio.timeout(ctx.timeout):
            async with ctx.session.request(
                method,
                url,
                data=body,
                headers={"User-Agent": USER_AGENT, **headers},
                allow_redirects=False,
            ) as response:
                raw = await response.content.read(ctx.max_response_bytes)
                answer = clean(raw.decode("utf-8", "replace"), scrub)
                return classify_status(response.status, answer, response.headers.get("Retry-After"))
    except TimeoutError:
        return Outcome.temporary(f"no answer within {ctx.timeout:g}s")
    except aiohttp.InvalidURL:
        return Outcome.permanent("the URL is not valid")
    except (aiohttp.ClientSSLError, ssl.SSLError) as exc:
        # a certificate that does not verify may be renewed: retried, until the outbox stops
        return Outcome.temporary(f"TLS failed: {clean(str(exc), scrub)}")
    except aiohttp.ClientConnectorError as exc:
        return Outcome.temporary(f"cannot connect: {clean(str(exc.os_error), scrub)}")
    except (aiohttp.ClientError, OSError) as exc:
        return Outcome.temporary(f"{type(exc).__name__}: {clean(str(exc), scrub)}")


# --- words for people ---------------------------------------------------------------------------


def summary(n: Notification) -> str:
    """One line saying what happened, for chat messages, page summaries and mail subjects."""
    if n.alert_type == AlertType.TEST:
        return f"Test notification from Picket for {n.monitor_name}"
    if n.alert_type == AlertType.OK:
        return f"OK: {n.monitor_name} is up again"
    prefix = "Reminder: " if n.alert_type == AlertType.REMINDER else ""
    what = f": {n.error_description}" if n.error_description else ""
    return f"{prefix}ERROR: {n.monitor_name}{what}"


def iso(moment: datetime | None) -> str:
    return moment.isoformat().replace("+00:00", "Z") if moment else ""


def facts(n: Notification) -> list[tuple[str, str]]:
    """The details of a notification as (label, value), the empty ones left out."""
    found = [
        ("Monitor", n.monitor_name),
        ("Alert", n.alert_type.value),
        ("Time (UTC)", iso(n.timestamp)),
        ("Error", n.error_description if n.is_problem else ""),
        ("Checkpoints", ", ".join(n.checkpoints)),
        ("First error (UTC)", iso(n.first_error_time)),
        (
            "First error check",
            "" if n.first_error_check_id is None else str(n.first_error_check_id),
        ),
        ("Escalation level", str(n.escalation_level)),
        ("Message", n.message),
        ("URL", n.monitor_url),
        ("Monitor guid", n.monitor_guid),
    ]
    return [(label, value) for label, value in found if value]


def document(n: Notification) -> dict[str, object]:
    """The notification as Picket's own JSON body (Uptrends' Alert attribute names where
    they exist)."""
    return {
        "AlertType": n.alert_type.value,
        "AlertGuid": n.alert_guid,
        "IdempotencyKey": n.idempotency_key,
        "IncidentKey": n.incident_key,
        "MonitorGuid": n.monitor_guid,
        "MonitorName": n.monitor_name,
        "MonitorUrl": n.monitor_url,
        "Timestamp": iso(n.timestamp),
        "FirstError": iso(n.first_error_time) or None,
        "FirstErrorMonitorCheckId": n.first_error_check_id,
        "MonitorCheckId": n.monitor_check_id,
        "ErrorDescription": n.error_description,
        "Checkpoints": list(n.checkpoints),
        "EscalationLevel": n.escalation_level,
        "Message": n.message,
    }


def sample(now: datetime | None = None) -> Notification:
    """A Test notification (what POST /Integration/{guid}/Test sends, and what templates are
    tried with when they are saved)."""
    moment = (now or datetime.now(UTC)).replace(microsecond=0)
    return Notification(
        alert_type=AlertType.TEST,
        alert_guid="00000000-0000-0000-0000-000000000000",
        idempotency_key="test-00000000000000000000000000000000",
        incident_key="test-00000000000000000000000000000000",
        monitor_guid="00000000-0000-0000-0000-000000000000",
        monitor_name="Picket test monitor",
        timestamp=moment,
        checkpoints=("Test checkpoint",),
        error_description='This is a test: "quotes", <angle brackets> & a\nline break',
        first_error_check_id=0,
        first_error_time=moment,
        monitor_check_id=0,
        escalation_level=1,
        message="A test sent from Picket to check this integration",
        monitor_url="https://example.org/",
    )
