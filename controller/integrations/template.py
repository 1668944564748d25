"""Message templates with Uptrends-style `{{variables}}`: `{{@alert.description}}`,
`{{@monitor.name}}`, … (system variables, named as in Uptrends' custom integrations) and the
integration's own `{{name}}` (its VariableValues, which an escalation level may override).

The renderer substitutes named variables and nothing else: no expressions, no loops, no
attribute access, no second pass over substituted text (a value holding `{{x}}` stays as is).
Each value is escaped for where it goes: JSON-string escaped in a JSON body, XML-escaped in an
XML body, form-encoded in a form body. An unknown variable is refused when the template is
saved, not found when a page is due.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable, Mapping
from datetime import datetime
from urllib.parse import quote_plus
from xml.sax.saxutils import escape as xml_escape

from controller.integrations.base import Notification

PLACEHOLDER = re.compile(r"\{\{\s*(@?[A-Za-z_][A-Za-z0-9_.\-]*)\s*\}\}")
CUSTOM_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_.\-]{0,63}$")


def _time(moment: datetime | None) -> str:
    return moment.isoformat().replace("+00:00", "Z") if moment else ""


def _int(value: int | None) -> str:
    return "" if value is None else str(value)


# the system variables: lower-cased name -> (description, value of a notification)
SYSTEM: dict[str, tuple[str, Callable[[Notification], str]]] = {
    "@alert.alertguid": ("the alert's guid", lambda n: n.alert_guid),
    "@alert.type": ("Error, Ok, Reminder or Test", lambda n: n.alert_type.value),
    "@alert.description": ("the error's description", lambda n: n.error_description),
    "@alert.timestamp": ("the alert's time, UTC, ISO 8601", lambda n: _time(n.timestamp)),
    "@alert.timestamp.utc": ("the same", lambda n: _time(n.timestamp)),
    "@alert.firsterror": (
        "time of the first error check, UTC",
        lambda n: _time(n.first_error_time),
    ),
    "@alert.firsterror.utc": ("the same", lambda n: _time(n.first_error_time)),
    "@alert.firsterrorcheckid": (
        "id of the first error check (MonitorCheckId)",
        lambda n: _int(n.first_error_check_id),
    ),
    "@alert.monitorcheckid": (
        "id of the check that raised this alert",
        lambda n: _int(n.monitor_check_id),
    ),
    "@alert.escalationlevel": ("the escalation level, 1 to 4", lambda n: str(n.escalation_level)),
    "@alert.message": ("the escalation level's Message", lambda n: n.message),
    "@alert.checkpoints": (
        "the checkpoints that saw the error, comma-separated",
        lambda n: ", ".join(n.checkpoints),
    ),
    "@alert.idempotencykey": (
        "this notification's key (the Idempotency-Key header)",
        lambda n: n.idempotency_key,
    ),
    "@incident.key": (
        "shared by an error, its reminders and its recovery",
        lambda n: n.incident_key,
    ),
    "@monitor.guid": ("the monitor's guid", lambda n: n.monitor_guid),
    "@monitor.name": ("the monitor's name", lambda n: n.monitor_name),
    "@monitor.url": ("the monitor's URL (or host), if it has one", lambda n: n.monitor_url),
}

Escape = Callable[[str], str]


def _json(value: str) -> str:
    return json.dumps(value, ensure_ascii=False)[1:-1]


def escape_for(content_type: str) -> Escape:
    """How values are escaped in a body of this content type."""
    lower = content_type.lower()
    if "json" in lower:
        return _json
    if "xml" in lower:
        return xml_escape
    if "x-www-form-urlencoded" in lower:
        return quote_plus
    return lambda value: value


def names_in(template: str) -> list[str]:
    return [m.group(1) for m in PLACEHOLDER.finditer(template)]


def unknown_names(template: str, custom: Mapping[str, str]) -> list[str]:
    """Variables of a template that are neither system variables nor the custom ones."""
    known = {name.lower() for name in custom}
    return sorted(
        {
            name
            for name in names_in(template)
            if name.lower() not in SYSTEM and name.lower() not in known
        }
    )


def values(notification: Notification, custom: Mapping[str, str]) -> dict[str, str]:
    """Every variable's value for a notification (lower-cased names)."""
    found = {name: compute(notification) for name, (_, compute) in SYSTEM.items()}
    for name, value in {**custom, **notification.variables}.items():
        if not name.startswith("@"):
            found[name.lower()] = value
    return found


def render(
    template: str, notification: Notification, custom: Mapping[str, str], escape: Escape
) -> str:
    """The template with each known variable replaced by its escaped value (one pass)."""
    known = values(notification, custom)

    def substitute(match: re.Match[str]) -> str:
        value = known.get(match.group(1).lower())
        return match.group(0) if value is None else escape(value)

    return PLACEHOLDER.sub(substitute, template)
