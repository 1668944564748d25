"""PagerDuty, Events API v2: an error or reminder is a `trigger`, a recovery a `resolve`,
both with `dedup_key` = the notification's incident key, so the recovery resolves the
incident its error opened and a reminder (or a second delivery) adds to it rather than
opening another. A Test triggers an `info` event and resolves it at once.

`RoutingKey` (the integration key of a PagerDuty service) is write-only, and kept only while
`EventsUrl` keeps its scheme, host and port (tests point it at a loopback receiver; PagerDuty's
EU service region has its own host)."""

from __future__ import annotations

import json
import re
from typing import Any, Literal

from pydantic import Field, field_validator

from controller.integrations.base import (
    AlertType,
    Notification,
    Outcome,
    SendContext,
    exchange,
    facts,
    iso,
    summary,
)
from controller.integrations.fields import IntegrationConfig, OutboundUrl, Secret, SecretPolicy

TYPE, KIND = "PagerDuty", None
POLICY = SecretPolicy(fields=("RoutingKey",), sent_to={"RoutingKey": "EventsUrl"})
EVENTS_URL = "https://events.pagerduty.com/v2/enqueue"
_KEY = re.compile(r"^[A-Za-z0-9_\-+.]{1,100}$")


class Config(IntegrationConfig):
    RoutingKey: Secret = Field(min_length=1)
    EventsUrl: OutboundUrl = EVENTS_URL
    Severity: Literal["critical", "error", "warning", "info"] = "critical"

    @field_validator("RoutingKey")
    @classmethod
    def _key(cls, value: str) -> str:
        if not _KEY.match(value):
            raise ValueError("is not a PagerDuty integration key (letters and digits)")
        return value


def event(config: Config, n: Notification, action: str) -> dict[str, Any]:
    found: dict[str, Any] = {
        "routing_key": config.RoutingKey,
        "event_action": action,
        "dedup_key": n.incident_key,
    }
    if action == "trigger":
        found["client"] = "Picket"
        found["payload"] = {
            "summary": summary(n)[:1024],
            "source": n.monitor_url or n.monitor_name,
            "severity": "info" if n.alert_type == AlertType.TEST else config.Severity,
            "timestamp": iso(n.timestamp),
            "component": n.monitor_name,
            "group": ", ".join(n.checkpoints) or None,
            "class": "monitor error",
            "custom_details": dict(facts(n)),
        }
    return found


async def _post(config: Config, n: Notification, action: str, ctx: SendContext) -> Outcome:
    body = json.dumps(event(config, n, action), ensure_ascii=False).encode()
    headers = {
        "Content-Type": "application/json",
        "Idempotency-Key": f"{n.idempotency_key}-{action}",
    }
    scrub = POLICY.scrubber(config.model_dump())
    return await exchange(ctx, "POST", config.EventsUrl, body, headers, scrub)


async def send(config: Config, n: Notification, ctx: SendContext) -> Outcome:
    if n.alert_type == AlertType.OK:
        return await _post(config, n, "resolve", ctx)
    outcome = await _post(config, n, "trigger", ctx)
    if n.alert_type == AlertType.TEST and outcome.sent:
        return await _post(config, n, "resolve", ctx)
    return outcome
