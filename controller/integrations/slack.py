"""Slack: an incoming webhook URL (which is itself the credential: write-only). The message
has a plain `text` (notifications, screen readers) and Block Kit blocks with the details."""

from __future__ import annotations

import json
from typing import Any

from controller.integrations.base import (
    AlertType,
    Notification,
    Outcome,
    SendContext,
    exchange,
    facts,
    summary,
)
from controller.integrations.fields import CredentialUrl, IntegrationConfig, SecretPolicy

TYPE, KIND = "Slack", None
POLICY = SecretPolicy(whole_url=True)
ICONS = {
    AlertType.ERROR: ":red_circle:",
    AlertType.REMINDER: ":repeat:",
    AlertType.OK: ":large_green_circle:",
    AlertType.TEST: ":test_tube:",
}


class Config(IntegrationConfig):
    Url: CredentialUrl


def escape(text: str) -> str:
    """Slack's mrkdwn: &, < and > are control characters (links, mentions)."""
    return text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")


def message(n: Notification) -> dict[str, Any]:
    title = f"{ICONS[n.alert_type]} {escape(summary(n))}"
    lines = "\n".join(f"*{label}:* {escape(value)}" for label, value in facts(n))
    return {
        "text": escape(summary(n)),
        "blocks": [
            {"type": "section", "text": {"type": "mrkdwn", "text": title[:3000]}},
            {"type": "section", "text": {"type": "mrkdwn", "text": lines[:3000]}},
        ],
    }


async def send(config: Config, n: Notification, ctx: SendContext) -> Outcome:
    body = json.dumps(message(n), ensure_ascii=False).encode()
    headers = {"Content-Type": "application/json", "Idempotency-Key": n.idempotency_key}
    scrub = POLICY.scrubber(config.model_dump())
    return await exchange(ctx, "POST", config.Url, body, headers, scrub)
