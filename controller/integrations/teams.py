"""Microsoft Teams (`GenericWebhook` with `Kind: MicrosoftTeams`): a Workflows (Power
Automate) webhook URL taking an Adaptive Card, or a legacy connector URL taking a MessageCard
(`CardFormat`). The URL is the credential: write-only."""

from __future__ import annotations

import json
from typing import Any, Literal

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

TYPE, KIND = "GenericWebhook", "MicrosoftTeams"
POLICY = SecretPolicy(whole_url=True)
# Adaptive Card text colours and MessageCard theme colours by alert type
COLOURS = {
    AlertType.ERROR: ("Attention", "D13438"),
    AlertType.REMINDER: ("Warning", "FFAA44"),
    AlertType.OK: ("Good", "2E8B57"),
    AlertType.TEST: ("Accent", "0078D7"),
}


class Config(IntegrationConfig):
    Url: CredentialUrl
    CardFormat: Literal["AdaptiveCard", "MessageCard"] = "AdaptiveCard"


def adaptive_card(n: Notification) -> dict[str, Any]:
    colour, _ = COLOURS[n.alert_type]
    card = {
        "type": "AdaptiveCard",
        "$schema": "http://adaptivecards.io/schemas/adaptive-card.json",
        "version": "1.4",
        "body": [
            {
                "type": "TextBlock",
                "text": summary(n),
                "weight": "Bolder",
                "size": "Medium",
                "color": colour,
                "wrap": True,
            },
            {
                "type": "FactSet",
                "facts": [{"title": label, "value": value} for label, value in facts(n)],
            },
        ],
    }
    return {
        "type": "message",
        "attachments": [
            {"contentType": "application/vnd.microsoft.card.adaptive", "content": card}
        ],
    }


def message_card(n: Notification) -> dict[str, Any]:
    _, theme = COLOURS[n.alert_type]
    return {
        "@type": "MessageCard",
        "@context": "https://schema.org/extensions",
        "summary": summary(n)[:200],
        "themeColor": theme,
        "title": summary(n),
        "sections": [{"facts": [{"name": label, "value": value} for label, value in facts(n)]}],
    }


async def send(config: Config, n: Notification, ctx: SendContext) -> Outcome:
    card = adaptive_card(n) if config.CardFormat == "AdaptiveCard" else message_card(n)
    body = json.dumps(card, ensure_ascii=False).encode()
    headers = {"Content-Type": "application/json", "Idempotency-Key": n.idempotency_key}
    scrub = POLICY.scrubber(config.model_dump())
    return await exchange(ctx, "POST", config.Url, body, headers, scrub)
