"""Integrations: where notifications go. One module per kind, in the registry `KINDS`; each
has a pydantic `Config` (what the API accepts; secrets write-only by its `POLICY`) and
`async send(config, notification, context) -> Outcome`.

The caller (the notification outbox) uses `deliver()`: it reads the stored configuration,
sends, times, counts (picket_notifications_total{kind,outcome}) and logs the outcome, and
never raises for what an endpoint does. An integration is stored as its `Type` (Uptrends'),
`Kind` (Picket's, for its kinds Uptrends lacks) and its configuration as JSON.
"""

from __future__ import annotations

import builtins
import logging
import time
import traceback
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from types import ModuleType
from typing import TYPE_CHECKING, Any

import aiohttp
from pydantic import BaseModel, ValidationError

from controller.integrations import alertmanager, email, pagerduty, slack, teams, webhook
from controller.integrations.base import (
    AlertType,
    Notification,
    Outcome,
    SendContext,
    SmtpSettings,
)
from controller.integrations.fields import SecretPolicy
from shared.secrets import validation_summary

if TYPE_CHECKING:
    from controller.metrics import ControllerMetrics
    from controller.settings import ControllerSettings

__all__ = [
    "KINDS",
    "AlertType",
    "Kind",
    "Notification",
    "Outcome",
    "SendContext",
    "Senders",
    "SmtpSettings",
    "kind_of",
]

log = logging.getLogger(__name__)

# Uptrends' Type values Picket does not send to, and why
REFUSED_TYPES = {
    "Sms": "Picket does not send SMS",
    "Phone": "Picket does not make phone calls",
    "Statushub": "Picket does not update Uptrends' StatusHub",
}


@dataclass(frozen=True)
class Kind:
    name: str  # the metric label and log word: webhook, slack, teams, pagerduty, ...
    type: str  # Uptrends' Type
    kind: str | None  # Picket's Kind (GenericWebhook only)
    config: builtins.type[BaseModel]
    send: Callable[[Any, Notification, SendContext], Awaitable[Outcome]]
    policy: SecretPolicy


def _kind(name: str, module: ModuleType) -> Kind:
    return Kind(name, module.TYPE, module.KIND, module.Config, module.send, module.POLICY)


KINDS: dict[str, Kind] = {
    k.name: k
    for k in (
        _kind("webhook", webhook),
        _kind("slack", slack),
        _kind("teams", teams),
        _kind("pagerduty", pagerduty),
        _kind("alertmanager", alertmanager),
        _kind("email", email),
    )
}
TYPES = sorted({k.type for k in KINDS.values()})
WEBHOOK_KINDS = sorted(k.kind for k in KINDS.values() if k.type == "GenericWebhook" and k.kind)


def kind_of(type_: str, kind: str | None) -> Kind:
    """The kind for an API `Type` and `Kind`; ValueError (naming the field first) if none."""
    if type_ in REFUSED_TYPES:
        raise ValueError(f"Type: {REFUSED_TYPES[type_]}; use one of {', '.join(TYPES)}")
    found = [k for k in KINDS.values() if k.type == type_]
    if not found:
        raise ValueError(f"Type: {type_!r} is not one of {', '.join(TYPES)}")
    if type_ != "GenericWebhook":
        if kind not in (None, ""):
            raise ValueError(f"Kind: only a GenericWebhook has a Kind ({', '.join(WEBHOOK_KINDS)})")
        return found[0]
    for k in found:
        if k.kind == (kind or "Webhook"):
            return k
    raise ValueError(f"Kind: {kind!r} is not one of {', '.join(WEBHOOK_KINDS)}")


class Senders:
    """The controller's sending side: one HTTP session (created at first use, closed by the
    owner), the SMTP settings, the metrics. `deliver` is what the outbox calls."""

    def __init__(self, settings: ControllerSettings, metrics: ControllerMetrics) -> None:
        self.settings = settings
        self.metrics = metrics
        self.smtp = SmtpSettings(
            host=settings.smtp_host,
            port=settings.smtp_port,
            security=settings.smtp_security,
            username=settings.smtp_username,
            password=settings.smtp_password,
            sender=settings.smtp_from,
            ca_file=settings.smtp_ca_file,
        )
        self._session: aiohttp.ClientSession | None = None

    def context(self) -> SendContext:
        if self._session is None or self._session.closed:
            self._session = aiohttp.ClientSession(
                connector=aiohttp.TCPConnector(limit=self.settings.notify_connections),
                # per send, asyncio.timeout in exchange() bounds the whole of it
                timeout=aiohttp.ClientTimeout(total=None),
            )
        return SendContext(
            session=self._session,
            timeout=self.settings.notify_timeout_seconds,
            max_response_bytes=self.settings.notify_response_bytes,
            smtp=self.smtp,
        )

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None

    async def deliver(
        self,
        integration_guid: str,
        kind: Kind,
        config: dict[str, Any],
        notification: Notification,
    ) -> Outcome:
        """Send one notification with a stored configuration; counted, timed and logged."""
        try:
            parsed = kind.config.model_validate(config)
        except ValidationError as exc:
            outcome = Outcome.permanent(
                f"the stored configuration is not valid: {validation_summary(exc)}"
            )
        else:
            started = time.perf_counter()
            try:
                outcome = await kind.send(parsed, notification, self.context())
            except Exception as exc:  # a bug of ours: recorded, never raised into the outbox
                scrub = kind.policy.scrubber(config)
                log.error(
                    "notification %s to integration %s (%s) failed in Picket: %s",
                    notification.idempotency_key,
                    integration_guid,
                    kind.name,
                    scrub.text(traceback.format_exc()) if scrub else traceback.format_exc(),
                )
                outcome = Outcome.permanent(f"Picket failed to send it ({type(exc).__name__})")
            self.metrics.notification_seconds.labels(kind.name).observe(
                time.perf_counter() - started
            )
        self.metrics.notifications.labels(kind.name, outcome.kind).inc()
        level = logging.INFO if outcome.sent else logging.WARNING
        log.log(
            level,
            "notification %s (%s) of monitor %s (%s) to integration %s (%s): %s%s",
            notification.idempotency_key,
            notification.alert_type.value,
            notification.monitor_guid,
            notification.monitor_name,
            integration_guid,
            kind.name,
            outcome.kind,
            f": {outcome.reason}" if outcome.reason else "",
        )
        return outcome
