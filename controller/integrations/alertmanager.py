"""Prometheus Alertmanager (`GenericWebhook` with `Kind: Alertmanager`): alerts are POSTed
to `<Url>/api/v2/alerts`. A monitor in error is an alert with the labels `alertname`
(PicketMonitorError), `monitor`, `monitor_guid`, `severity` and the integration's `Labels`;
the details are annotations; `startsAt` is the first error. Its recovery sends the same
labels with `endsAt`, which resolves it.

Alertmanager forgets a firing alert that is not sent again within its `resolve_timeout`
(5 minutes by default): re-pushing the open alerts before that is the outbox's job (issue 11,
item 9), not this module's. A Test sends a `PicketTest` alert that ends five minutes later."""

from __future__ import annotations

import json
import re
from datetime import timedelta
from typing import Annotated, Any

from pydantic import Field, StrictStr, field_validator

from controller.integrations.base import (
    AlertType,
    Notification,
    Outcome,
    SendContext,
    exchange,
    iso,
    summary,
)
from controller.integrations.fields import (
    HeaderList,
    IntegrationConfig,
    OutboundUrl,
    SecretPolicy,
    header_dict,
)

TYPE, KIND = "GenericWebhook", "Alertmanager"
POLICY = SecretPolicy()
PATH = "/api/v2/alerts"
TEST_LIFETIME = timedelta(minutes=5)
_LABEL = re.compile(r"^[A-Za-z_][A-Za-z0-9_]{0,99}$")
OWN_LABELS = frozenset({"alertname", "monitor", "monitor_guid", "severity"})


class Config(IntegrationConfig):
    Url: OutboundUrl
    Headers: HeaderList = Field(default_factory=list)
    Labels: dict[StrictStr, Annotated[StrictStr, Field(max_length=500)]] = Field(
        default_factory=dict, max_length=30
    )
    Severity: StrictStr = Field(default="critical", min_length=1, max_length=50)

    @field_validator("Labels")
    @classmethod
    def _labels(cls, value: dict[str, str]) -> dict[str, str]:
        for name in value:
            if not _LABEL.match(name) or name.startswith("__"):
                raise ValueError(f"{name[:40]!r} is not a label name ([a-zA-Z_][a-zA-Z0-9_]*)")
            if name in OWN_LABELS:
                raise ValueError(f"{name} is set by Picket")
        return value


def endpoint(base: str) -> str:
    base = base.rstrip("/")
    return base if base.endswith(PATH) else base + PATH


def alerts(config: Config, n: Notification) -> list[dict[str, Any]]:
    test = n.alert_type == AlertType.TEST
    labels = {
        **config.Labels,
        "alertname": "PicketTest" if test else "PicketMonitorError",
        "monitor": n.monitor_name,
        "monitor_guid": n.monitor_guid,
        "severity": config.Severity,
    }
    annotations = {
        "summary": summary(n),
        "description": n.error_description,
        "checkpoints": ", ".join(n.checkpoints),
        "escalation_level": str(n.escalation_level),
        "message": n.message,
        "incident_key": n.incident_key,
        "first_error_check_id": ""
        if n.first_error_check_id is None
        else str(n.first_error_check_id),
        "url": n.monitor_url,
    }
    alert: dict[str, Any] = {
        "labels": labels,
        "annotations": {k: v for k, v in annotations.items() if v},
        "startsAt": iso(n.first_error_time or n.timestamp),
    }
    if n.alert_type == AlertType.OK:
        alert["endsAt"] = iso(n.timestamp)
    elif test:
        alert["endsAt"] = iso(n.timestamp + TEST_LIFETIME)
    return [alert]


async def send(config: Config, n: Notification, ctx: SendContext) -> Outcome:
    body = json.dumps(alerts(config, n), ensure_ascii=False).encode()
    headers = header_dict(config.Headers)
    headers["Content-Type"] = "application/json"
    headers["Idempotency-Key"] = n.idempotency_key
    scrub = POLICY.scrubber(config.model_dump())
    return await exchange(ctx, "POST", endpoint(config.Url), body, headers, scrub)
