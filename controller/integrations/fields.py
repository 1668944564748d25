"""Fields the kinds share: the common part of every integration's configuration, outbound
URLs, request headers, and the secret policy of shared/secrets.py applied to integrations.

Secret in an integration (write-only; the API shows `******`):
- a URL that is itself the credential (Slack's and Teams' webhook URLs): shown as
  `scheme://host/******`; sending that (or `******`) back keeps the stored URL;
- userinfo in any other URL, and credential headers (`Authorization`, …, or `IsSecret`);
- whole-value secrets (`HmacSecret`, PagerDuty's `RoutingKey`).
A stored credential that is sent to an endpoint is kept only while the URL it goes to keeps
its scheme, host and port (else it must be sent again), as for monitors.
"""

from __future__ import annotations

import re
from typing import Annotated, Any

from pydantic import (
    AfterValidator,
    BaseModel,
    ConfigDict,
    Field,
    StrictBool,
    StrictStr,
    field_validator,
)

from controller.integrations import template
from controller.integrations.base import outbound_url, url_origin
from shared import secrets
from shared.secrets import MASK, not_mask, not_masked_url

MAX_HEADERS = 50
MAX_VARIABLES = 50
_TOKEN = re.compile(r"^[!#$%&'*+\-.^_`|~0-9A-Za-z]{1,100}$")
# set by Picket on every request: a configured one would contradict it
RESERVED_HEADERS = frozenset(
    {
        "host",
        "content-length",
        "transfer-encoding",
        "connection",
        "idempotency-key",
        "x-picket-signature",
        "x-picket-timestamp",
    }
)


def _url(value: str) -> str:
    return outbound_url(not_masked_url(value))


def _secret_url(value: str) -> str:
    if MASK in value:
        raise ValueError(
            "is ******: the stored URL is kept only when it is sent back as shown; send the "
            "URL itself"
        )
    return outbound_url(value)


OutboundUrl = Annotated[StrictStr, Field(max_length=2000), AfterValidator(_url)]
CredentialUrl = Annotated[StrictStr, Field(max_length=2000), AfterValidator(_secret_url)]
Secret = Annotated[StrictStr, Field(max_length=1000), AfterValidator(not_mask)]


class Header(BaseModel):
    model_config = ConfigDict(extra="forbid")
    Name: StrictStr
    Value: Annotated[StrictStr, Field(max_length=4000), AfterValidator(not_mask)] = ""
    IsSecret: StrictBool = False

    @field_validator("Name")
    @classmethod
    def _name(cls, value: str) -> str:
        if not _TOKEN.match(value):
            raise ValueError(f"{value[:40]!r} is not a header name")
        if value.lower() in RESERVED_HEADERS:
            raise ValueError(f"{value} is set by Picket itself")
        return value

    @field_validator("Value")
    @classmethod
    def _value(cls, value: str) -> str:
        if any(c in value for c in "\r\n\x00"):
            raise ValueError("must not contain line breaks or NUL")
        return value


HeaderList = Annotated[list[Header], Field(max_length=MAX_HEADERS)]


class IntegrationConfig(BaseModel):
    """What every kind has. `Type`, `Kind` and the read-only fields are handled apart."""

    model_config = ConfigDict(extra="forbid")
    Name: StrictStr = Field(min_length=1, max_length=200)
    # Picket's integration variables, `{{name}}` in templates; an escalation level may
    # override their values
    VariableValues: dict[StrictStr, Annotated[StrictStr, Field(max_length=2000)]] = Field(
        default_factory=dict, max_length=MAX_VARIABLES
    )

    @field_validator("VariableValues")
    @classmethod
    def _variables(cls, value: dict[str, str]) -> dict[str, str]:
        for name in value:
            if not template.CUSTOM_NAME.match(name):
                raise ValueError(
                    f"{name[:40]!r} is not a variable name (a letter or _, then letters, "
                    "digits, '_', '.', '-'; up to 64; names with @ are the system's)"
                )
        return value


# --- the secret policy --------------------------------------------------------------------------


class SecretPolicy:
    """Which fields of a kind are secret, and how they are shown, kept and scrubbed."""

    def __init__(
        self,
        whole_url: bool = False,
        fields: tuple[str, ...] = (),
        sent_to: dict[str, str] | None = None,
        url_field: str = "Url",
    ) -> None:
        self.whole_url = whole_url  # the URL is the credential
        self.fields = fields  # whole-value secrets
        self.sent_to = sent_to or {}  # a secret field -> the URL field it is sent to
        self.url_field = url_field

    @staticmethod
    def shown_url(url: str) -> str:
        return f"{url_origin(url)}/{MASK}" if url else url

    def redact(self, config: dict[str, Any]) -> dict[str, Any]:
        shown = dict(config)
        url = shown.get(self.url_field)
        if isinstance(url, str):
            shown[self.url_field] = self.shown_url(url) if self.whole_url else secrets.mask_url(url)
        for name in self.fields:
            if shown.get(name):
                shown[name] = MASK
        if "Headers" in shown:
            shown["Headers"] = secrets.redact({"RequestHeaders": shown["Headers"]})[
                "RequestHeaders"
            ]
        return shown

    def keep(self, new: dict[str, Any], old: dict[str, Any], patch: bool) -> None:
        """Fill what `new` (a PUT or PATCH body) sends as `******` or leaves out from the
        stored configuration `old`; changes `new` in place."""
        field = self.url_field
        if self.whole_url:
            stored = old.get(field)
            if isinstance(stored, str) and (
                field not in new or new[field] in (MASK, self.shown_url(stored))
            ):
                new[field] = stored
        else:
            mine: dict[str, Any] = {}
            theirs: dict[str, Any] = {}
            if field in new:
                mine["Url"] = new[field]
            if field in old:
                theirs["Url"] = old[field]
            if "Headers" in new:
                mine["RequestHeaders"] = new["Headers"]
            if "Headers" in old:
                theirs["RequestHeaders"] = old["Headers"]
            secrets.keep(mine, theirs, patch=patch)
            if "Url" in mine:
                new[field] = mine["Url"]
            if "RequestHeaders" in mine:
                new["Headers"] = mine["RequestHeaders"]
        for name in self.fields:
            if not old.get(name) or not (name not in new or new[name] == MASK):
                continue
            target = self.sent_to.get(name)
            moved = target is not None and secrets.origin(
                new.get(target, old.get(target))
            ) != secrets.origin(old.get(target))
            new[name] = MASK if moved else old[name]

    def values(self, config: dict[str, Any]) -> list[str]:
        """The secret values of a configuration, to scrub from any text about it."""
        found = [str(config[name]) for name in self.fields if config.get(name)]
        url = config.get(self.url_field)
        if isinstance(url, str) and url:
            if self.whole_url:
                origin = url_origin(url)
                found += [url, url[len(origin) :]] if url.startswith(origin) else [url]
            else:
                found += secrets.url_secret_values(url)
        found += secrets.header_secret_values(config.get("Headers"))
        return [value for value in found if value]

    def scrubber(self, config: dict[str, Any]) -> secrets.Scrubber:
        return secrets.Scrubber(self.values(config))


def header_dict(headers: list[Header]) -> dict[str, str]:
    return {h.Name: h.Value for h in headers}
