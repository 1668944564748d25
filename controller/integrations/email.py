"""E-mail over SMTP (aiosmtplib): to the on-duty operators of the escalation level (the
notification's `recipients`, found by the caller) and the integration's
`ExtraEmailAddresses`. The server, its security (none, STARTTLS, TLS), login and sender are
controller settings (PICKET_SMTP_*), not part of the integration.

Replies are classified as SMTP defines them: 4xx temporary, 5xx permanent; no connection, a
dropped one or a time-out temporary. A message some recipients refused is sent (to the others),
with the refusals in its reason. Its Message-ID comes from the notification's idempotency key,
so a message sent twice can be told apart from two alerts."""

from __future__ import annotations

import asyncio
import re
import ssl
from email.message import EmailMessage
from email.utils import format_datetime, formataddr
from typing import Any

import aiosmtplib
from pydantic import Field, field_validator

from controller.integrations.base import (
    Notification,
    Outcome,
    SendContext,
    SmtpSettings,
    clean,
    facts,
    summary,
)
from controller.integrations.fields import IntegrationConfig, SecretPolicy
from shared.secrets import Scrubber

TYPE, KIND = "Email", None
POLICY = SecretPolicy()
MAX_ADDRESSES = 50
EMAIL = re.compile(
    r"^[^@\s\x00-\x1f\x7f,;<>\"]{1,64}@(?=.{1,253}$)[^@\s\x00-\x1f\x7f.,;<>\"]+(\.[^@\s.,;<>\"]+)+$"
)


def addresses(value: Any) -> list[str]:
    """ExtraEmailAddresses as a list: Uptrends sends a list, and shows a string (commas or
    semicolons between addresses)."""
    if value is None:
        return []
    if isinstance(value, str):
        return [part.strip() for part in re.split(r"[,;]", value) if part.strip()]
    if isinstance(value, list):
        return value
    raise ValueError("must be a list of addresses, or one string of them separated by commas")


class Config(IntegrationConfig):
    ExtraEmailAddresses: list[str] = Field(default_factory=list, max_length=MAX_ADDRESSES)

    @field_validator("ExtraEmailAddresses", mode="before")
    @classmethod
    def _split(cls, value: Any) -> Any:
        return addresses(value)

    @field_validator("ExtraEmailAddresses")
    @classmethod
    def _valid(cls, value: list[str]) -> list[str]:
        for address in value:
            if not isinstance(address, str) or not EMAIL.match(address):
                raise ValueError(
                    f"{str(address)[:80]!r} is not an e-mail address (name@domain.tld)"
                )
        return value


def message(n: Notification, sender: str, to: list[str]) -> EmailMessage:
    mail = EmailMessage()
    mail["Subject"] = " ".join(summary(n).split())[:200]  # a header holds no line break
    mail["From"] = formataddr(("Picket", sender))
    mail["To"] = ", ".join(to)
    mail["Date"] = format_datetime(n.timestamp)
    domain = sender.rpartition("@")[2] or "picket"
    mail["Message-ID"] = f"<{n.idempotency_key}@{domain}>"
    mail["Auto-Submitted"] = "auto-generated"
    mail["X-Picket-Idempotency-Key"] = n.idempotency_key
    mail["X-Picket-Alert-Type"] = n.alert_type.value
    lines = [summary(n), ""] + [f"{label}: {value}" for label, value in facts(n)]
    mail.set_content("\n".join(lines) + "\n")
    return mail


def recipients(config: Config, n: Notification) -> list[str]:
    seen: dict[str, str] = {}
    for address in [*n.recipients, *config.ExtraEmailAddresses]:
        seen.setdefault(address.lower(), address)
    return list(seen.values())


def tls_context(smtp: SmtpSettings) -> ssl.SSLContext:
    return ssl.create_default_context(cafile=smtp.ca_file or None)


def _smtp_failure(exc: aiosmtplib.SMTPResponseException, scrub: Scrubber) -> Outcome:
    what = f"SMTP {exc.code}: {clean(exc.message, scrub)}"
    if 400 <= exc.code < 500:
        return Outcome.temporary(what, status=exc.code)
    return Outcome.permanent(what, status=exc.code)


async def send(config: Config, n: Notification, ctx: SendContext) -> Outcome:
    smtp = ctx.smtp
    if not smtp.host or not smtp.sender:
        return Outcome.permanent(
            "no SMTP server: PICKET_SMTP_HOST and PICKET_SMTP_FROM must be set"
        )
    to = recipients(config, n)
    if not to:
        return Outcome.permanent(
            "no recipients: no on-duty operator of the level has an Email, and the "
            "integration has no ExtraEmailAddresses"
        )
    scrub = Scrubber([smtp.password] if smtp.password else [])
    security = smtp.security
    try:
        async with asyncio.timeout(ctx.timeout):  # the whole exchange, not each reply
            errors, _ = await aiosmtplib.send(
                message(n, smtp.sender, to),
                sender=smtp.sender,
                recipients=to,
                hostname=smtp.host,
                port=smtp.port,
                username=smtp.username or None,
                password=smtp.password or None,
                use_tls=security == "tls",
                start_tls=security == "starttls",
                tls_context=tls_context(smtp) if security != "none" else None,
                timeout=ctx.timeout,
            )
    except aiosmtplib.SMTPRecipientsRefused as exc:
        refused = exc.recipients
        temporary = any(400 <= r.code < 500 for r in refused)
        what = "every recipient refused: " + "; ".join(
            f"{r.recipient}: SMTP {r.code} {clean(r.message, scrub, 100)}" for r in refused
        )
        if temporary:
            return Outcome.temporary(what, status=refused[0].code if refused else None)
        return Outcome.permanent(what, status=refused[0].code if refused else None)
    except aiosmtplib.SMTPResponseException as exc:
        return _smtp_failure(exc, scrub)
    except (aiosmtplib.SMTPTimeoutError, TimeoutError):
        return Outcome.temporary(f"the SMTP server did not answer within {ctx.timeout:g}s")
    except aiosmtplib.SMTPNotSupported as exc:
        return Outcome.permanent(f"SMTP: {clean(str(exc), scrub)}")
    except (aiosmtplib.SMTPException, ssl.SSLError, OSError) as exc:
        return Outcome.temporary(f"SMTP {type(exc).__name__}: {clean(str(exc), scrub)}")
    if errors:
        refused_text = "; ".join(
            f"{address}: SMTP {reply.code} {clean(reply.message, scrub, 100)}"
            for address, reply in errors.items()
        )
        return Outcome.ok(f"sent to {len(to) - len(errors)} of {len(to)}; refused: {refused_text}")
    return Outcome.ok(f"sent to {len(to)} recipient(s)")
