"""Generic webhook (Uptrends' `GenericWebhook`): a request to a URL of the user's, with the
user's headers and a body from the user's template (or Picket's JSON document).

Every request carries `Idempotency-Key` (the notification's key: a receiver drops a second
delivery by it). With an `HmacSecret`, it is signed: `X-Picket-Timestamp: <unix seconds>` and
`X-Picket-Signature: v1=<hex HMAC-SHA256(secret, "<timestamp>." + body)>`; a receiver checks
the signature and refuses a timestamp far from its clock (a replay).
"""

from __future__ import annotations

import hashlib
import hmac
import json
import time
from typing import Any, Literal

from pydantic import Field, StrictStr, ValidationInfo, field_validator

from controller.integrations import template
from controller.integrations.base import (
    Notification,
    Outcome,
    SendContext,
    document,
    exchange,
    sample,
)
from controller.integrations.fields import (
    HeaderList,
    IntegrationConfig,
    OutboundUrl,
    Secret,
    SecretPolicy,
    header_dict,
)

TYPE, KIND = "GenericWebhook", "Webhook"
POLICY = SecretPolicy(fields=("HmacSecret",))
MAX_TEMPLATE = 20_000
# a template naming a long variable many times could make a body of many megabytes
MAX_BODY = 1_048_576


class Config(IntegrationConfig):
    Url: OutboundUrl
    Method: Literal["POST", "PUT", "PATCH", "GET"] = "POST"
    Headers: HeaderList = Field(default_factory=list)
    ContentType: StrictStr = Field(default="application/json", min_length=1, max_length=200)
    BodyTemplate: StrictStr = Field(default="", max_length=MAX_TEMPLATE)
    HmacSecret: Secret = ""

    @field_validator("ContentType")
    @classmethod
    def _content_type(cls, value: str) -> str:
        if any(c in value for c in "\r\n\x00") or "/" not in value:
            raise ValueError(f"{value[:60]!r} is not a media type (like application/json)")
        return value

    @field_validator("BodyTemplate")
    @classmethod
    def _template(cls, value: str, info: ValidationInfo) -> str:
        if value and info.data.get("Method") == "GET":
            raise ValueError("a GET sends no body: leave it empty, or use POST")
        custom: dict[str, str] = info.data.get("VariableValues") or {}
        unknown = template.unknown_names(value, custom)
        if unknown:
            raise ValueError(
                f"unknown variables {', '.join('{{' + n + '}}' for n in unknown)}: use the "
                "system variables (docs/api.md) or declare them in VariableValues"
            )
        content_type = info.data.get("ContentType") or ""
        if value and "json" in content_type.lower():
            rendered = template.render(value, sample(), custom, template.escape_for("json"))
            try:
                json.loads(rendered)
            except ValueError as exc:
                raise ValueError(
                    f"is not JSON once its variables are filled in ({exc}); put string "
                    'variables inside quotes: "{{@monitor.name}}"'
                ) from None
        return value


def body_of(config: Config, n: Notification) -> bytes:
    if config.Method == "GET":
        return b""
    if not config.BodyTemplate:
        doc: dict[str, Any] = document(n)
        doc["Variables"] = {**config.VariableValues, **n.variables}
        return json.dumps(doc, ensure_ascii=False).encode()
    escape = template.escape_for(config.ContentType)
    return template.render(config.BodyTemplate, n, config.VariableValues, escape).encode()


def signature(secret: str, timestamp: int, body: bytes) -> str:
    digest = hmac.new(secret.encode(), f"{timestamp}.".encode() + body, hashlib.sha256)
    return "v1=" + digest.hexdigest()


async def send(config: Config, n: Notification, ctx: SendContext) -> Outcome:
    body = body_of(config, n)
    if len(body) > MAX_BODY:
        return Outcome.permanent(
            f"the body from the template is {len(body)} bytes, over {MAX_BODY}"
        )
    headers = header_dict(config.Headers)
    headers["Idempotency-Key"] = n.idempotency_key
    if config.Method != "GET":
        headers["Content-Type"] = config.ContentType
    if config.HmacSecret:
        now = int(time.time())
        headers["X-Picket-Timestamp"] = str(now)
        headers["X-Picket-Signature"] = signature(config.HmacSecret, now, body)
    scrub = POLICY.scrubber(config.model_dump())
    return await exchange(ctx, config.Method, config.Url, body or None, headers, scrub)
