"""AlertDefinition: the 26 operations of Uptrends' API. A definition has members (monitors,
monitor groups) and the four escalation levels 1-4 from its creation, inactive until set; each
level has members (operators, operator groups) and integrations (EscalationLevelIntegration).

Members of Administrators manage alert definitions; other operators read them. Deleting a
monitor, monitor group, operator, operator group or integration removes it from every
definition (the database cascades). Alerting reads definitions through
controller/alerting/definitions.py, told here of every change."""

from __future__ import annotations

import hashlib
import json
import logging
import uuid
from typing import Annotated, Any, Literal, NoReturn, TypeVar

from aiohttp import web
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    StrictBool,
    StrictInt,
    StrictStr,
    ValidationError,
    field_validator,
)

from controller.alerting.definitions import ALERT_ON_ERROR_COUNT, LEVELS, MODES
from controller.api.common import (
    PREFIX,
    controller,
    fail,
    id_param,
    invalid,
    json_body,
    ok,
    path_guid,
    principal,
    require_admin,
)
from controller.db.store import StoreRejected
from controller.integrations import email, template
from controller.integrations.fields import MAX_VARIABLES

log = logging.getLogger(__name__)
routes = web.RouteTableDef()

DEFINITION = PREFIX + "/AlertDefinition/{alertDefinitionGuid}"
LEVEL = DEFINITION + "/EscalationLevel/{escalationLevelId}"

# bounds: beyond them a request is a 400 naming what is full
MAX_DEFINITIONS = 1_000
MAX_MEMBERS = 10_000  # monitors and monitor groups of one definition
MAX_LEVEL_MEMBERS = 200  # operators and operator groups of one escalation level
MAX_LEVEL_INTEGRATIONS = 20
MAX_THRESHOLD_ERRORS = 10_000
MAX_MINUTES = 10_080  # a week: ThresholdMinutes, ReminderDelay
MAX_REMINDERS = 100
MAX_MESSAGE = 2_000

# a new level: inactive, alerting on the first confirmed error once activated
LEVEL_DEFAULTS: dict[str, Any] = {
    "is_active": False,
    "mode": ALERT_ON_ERROR_COUNT,
    "threshold_error_count": 1,
    "threshold_minutes": 5,
    "number_of_reminders": 0,
    "reminder_delay": 0,
    "message": "",
}


def _admin(request: web.Request) -> None:
    require_admin(request, "alert definitions")


def _changed(request: web.Request) -> None:
    controller(request).alert_definitions.invalidate()


_path_guid = path_guid


def _hash(body: dict[str, Any]) -> str:
    text = json.dumps(body, sort_keys=True, ensure_ascii=False)
    return hashlib.sha256(text.encode()).hexdigest()[:32]


M = TypeVar("M", bound=BaseModel)


def _parse(model: type[M], raw: dict[str, Any]) -> M:
    try:
        return model.model_validate(raw)
    except ValidationError as exc:
        raise invalid(exc) from None


def _same_guid(sent: str | None, guid: str, field: str, what: str) -> None:
    if sent is None:
        return
    try:
        same = str(uuid.UUID(sent)) == guid
    except ValueError:
        same = False
    if not same:
        fail(400, f"{field}: does not match the {what} in the URL", field)


async def _definition(request: web.Request) -> dict[str, Any]:
    guid = _path_guid(request, "alertDefinitionGuid")
    found = await controller(request).store.alert_definition(guid)
    if found is None:
        fail(404, f"AlertDefinition {guid} not found", "alertDefinitionGuid")
    return found


def _level_id(request: web.Request) -> int:
    wanted = id_param(request, "escalationLevelId")
    if wanted not in LEVELS:
        fail(
            404,
            f"escalationLevelId: no escalation level {wanted}; there are levels 1 to 4",
            "escalationLevelId",
        )
    return wanted


def _gone(guid: str) -> NoReturn:
    fail(404, f"AlertDefinition {guid} not found (deleted meanwhile)", "alertDefinitionGuid")


# --- the definition -----------------------------------------------------------------------------


class DefinitionBody(BaseModel):
    model_config = ConfigDict(extra="forbid")
    AlertDefinitionGuid: StrictStr | None = None  # read-only
    Hash: StrictStr | None = None  # read-only
    AlertName: StrictStr | None = Field(default=None, max_length=200)
    IsActive: StrictBool | None = None

    @field_validator("AlertName")
    @classmethod
    def _name(cls, value: str | None) -> str | None:
        if value is not None and not value.strip():
            raise ValueError("must not be blank")
        return value.strip() if value is not None else None


def represent_definition(row: dict[str, Any]) -> dict[str, Any]:
    body = {
        "AlertDefinitionGuid": row["guid"],
        "AlertName": row["name"],
        "IsActive": bool(row["is_active"]),
    }
    return {"AlertDefinitionGuid": row["guid"], "Hash": _hash(body), **body}


@routes.get(PREFIX + "/AlertDefinition")
async def list_definitions(request: web.Request) -> web.Response:
    rows = await controller(request).store.alert_definitions()
    return ok([represent_definition(r) for r in rows])


@routes.post(PREFIX + "/AlertDefinition")
async def create_definition(request: web.Request) -> web.Response:
    _admin(request)
    body = _parse(DefinitionBody, await json_body(request))
    if body.AlertName is None:
        fail(400, "AlertName: is required", "AlertName")
    guid = str(uuid.uuid4())
    is_active = True if body.IsActive is None else body.IsActive
    store = controller(request).store
    levels = [{**LEVEL_DEFAULTS, "level": n} for n in LEVELS]
    if not await store.create_alert_definition(
        guid, body.AlertName, is_active, levels, MAX_DEFINITIONS
    ):
        fail(
            400,
            f"There are {MAX_DEFINITIONS} alert definitions already; delete some first",
            "AlertName",
        )
    _changed(request)
    log.info(
        "alert definition %s (%s) created by operator %s",
        guid,
        body.AlertName,
        principal(request).operator_guid,
    )
    created = await store.alert_definition(guid)
    if created is None:
        _gone(guid)
    return ok(represent_definition(created), status=201)


@routes.get(DEFINITION)
async def get_definition(request: web.Request) -> web.Response:
    return ok(represent_definition(await _definition(request)))


async def _update_definition(request: web.Request, replace: bool) -> web.Response:
    _admin(request)
    current = await _definition(request)
    body = _parse(DefinitionBody, await json_body(request))
    _same_guid(body.AlertDefinitionGuid, current["guid"], "AlertDefinitionGuid", "definition")
    values: dict[str, Any] = {}
    if body.AlertName is not None:
        values["name"] = body.AlertName
    if body.IsActive is not None:
        values["is_active"] = body.IsActive
    elif replace:
        # a PUT replaces every field, but alerting is never switched off by leaving one out
        fail(400, "IsActive: is required (a PUT replaces the definition's fields)", "IsActive")
    if values:
        if not await controller(request).store.update_alert_definition(current["guid"], values):
            _gone(current["guid"])
        _changed(request)
        if "is_active" in values and values["is_active"] != bool(current["is_active"]):
            log.info(
                "alert definition %s (%s) %s by operator %s",
                current["guid"],
                values.get("name", current["name"]),
                "activated" if values["is_active"] else "deactivated",
                principal(request).operator_guid,
            )
    return web.Response(status=204)


@routes.put(DEFINITION)
async def replace_definition(request: web.Request) -> web.Response:
    return await _update_definition(request, replace=True)


@routes.patch(DEFINITION)
async def patch_definition(request: web.Request) -> web.Response:
    return await _update_definition(request, replace=False)


@routes.delete(DEFINITION)
async def delete_definition(request: web.Request) -> web.Response:
    _admin(request)
    guid = _path_guid(request, "alertDefinitionGuid")
    if not await controller(request).store.delete_alert_definition(guid):
        fail(404, f"AlertDefinition {guid} not found", "alertDefinitionGuid")
    _changed(request)
    log.info("alert definition %s deleted by operator %s", guid, principal(request).operator_guid)
    return web.Response(status=204)


# --- members: monitors and monitor groups -------------------------------------------------------


@routes.get(DEFINITION + "/Member")
async def list_members(request: web.Request) -> web.Response:
    definition = await _definition(request)
    members = await controller(request).store.alert_definition_members(definition["guid"])
    return ok(
        [
            {
                "MonitorGuid": guid if kind == "monitor" else None,
                "MonitorGroupGuid": guid if kind == "group" else None,
            }
            for kind, guid in members
        ]
    )


async def _add_member(request: web.Request, kind: str) -> web.Response:
    _admin(request)
    definition = await _definition(request)
    store = controller(request).store
    if kind == "monitor":
        param, field, what = "monitorGuid", "Monitor", "Monitor"
        member = _path_guid(request, param)
        exists = await store.monitor(member) is not None
    else:
        param, field, what = "monitorGroupGuid", "MonitorGroup", "MonitorGroup"
        member = _path_guid(request, param)
        exists = await store.monitor_group(member) is not None
    if not exists:
        fail(404, f"{what} {member} not found", param)
    try:
        added = await store.add_alert_definition_member(
            definition["guid"], kind, member, MAX_MEMBERS
        )
    except StoreRejected:  # the monitor or group was deleted meanwhile: a foreign key refused
        fail(404, f"{what} {member} not found (deleted meanwhile)", param)
    if added is False:
        _gone(definition["guid"])
    if added is None:
        fail(
            400,
            f"Alert definition {definition['guid']} has {MAX_MEMBERS} members already; "
            "put monitors in a monitor group and add the group",
            param,
        )
    _changed(request)
    return ok({"AlertDefinition": definition["guid"], field: member}, status=201)


async def _remove_member(request: web.Request, kind: str) -> web.Response:
    _admin(request)
    definition = await _definition(request)
    param = "monitorGuid" if kind == "monitor" else "monitorGroupGuid"
    member = _path_guid(request, param)
    store = controller(request).store
    if not await store.remove_alert_definition_member(definition["guid"], kind, member):
        what = "Monitor" if kind == "monitor" else "MonitorGroup"
        fail(
            404, f"{what} {member} is not a member of alert definition {definition['guid']}", param
        )
    _changed(request)
    return web.Response(status=204)


@routes.post(DEFINITION + "/Member/Monitor/{monitorGuid}")
async def add_monitor(request: web.Request) -> web.Response:
    return await _add_member(request, "monitor")


@routes.delete(DEFINITION + "/Member/Monitor/{monitorGuid}")
async def remove_monitor(request: web.Request) -> web.Response:
    return await _remove_member(request, "monitor")


@routes.post(DEFINITION + "/Member/MonitorGroup/{monitorGroupGuid}")
async def add_monitor_group(request: web.Request) -> web.Response:
    return await _add_member(request, "group")


@routes.delete(DEFINITION + "/Member/MonitorGroup/{monitorGroupGuid}")
async def remove_monitor_group(request: web.Request) -> web.Response:
    return await _remove_member(request, "group")


# --- escalation levels --------------------------------------------------------------------------


class LevelBody(BaseModel):
    model_config = ConfigDict(extra="forbid")
    Id: StrictInt | None = None  # read-only: the level in the URL
    Hash: StrictStr | None = None  # read-only
    EscalationMode: Literal[MODES] | None = None  # type: ignore[valid-type]
    ThresholdErrorCount: StrictInt | None = Field(default=None, ge=1, le=MAX_THRESHOLD_ERRORS)
    ThresholdMinutes: StrictInt | None = Field(default=None, ge=1, le=MAX_MINUTES)
    IsActive: StrictBool | None = None
    Message: StrictStr | None = Field(default=None, max_length=MAX_MESSAGE)
    NumberOfReminders: StrictInt | None = Field(default=None, ge=0, le=MAX_REMINDERS)
    ReminderDelay: StrictInt | None = Field(default=None, ge=0, le=MAX_MINUTES)
    IncludeTraceRoute: StrictBool | None = None

    @field_validator("IncludeTraceRoute")
    @classmethod
    def _no_traceroute(cls, value: bool | None) -> bool | None:
        if value:
            raise ValueError("Picket does not run traceroutes; send false or leave it out")
        return value


_LEVEL_COLUMNS = {
    "EscalationMode": "mode",
    "ThresholdErrorCount": "threshold_error_count",
    "ThresholdMinutes": "threshold_minutes",
    "IsActive": "is_active",
    "Message": "message",
    "NumberOfReminders": "number_of_reminders",
    "ReminderDelay": "reminder_delay",
}


def represent_level(row: dict[str, Any]) -> dict[str, Any]:
    body = {
        "Id": row["level"],
        "EscalationMode": row["mode"],
        "ThresholdErrorCount": row["threshold_error_count"],
        "ThresholdMinutes": row["threshold_minutes"],
        "IsActive": bool(row["is_active"]),
        "Message": row["message"],
        "NumberOfReminders": row["number_of_reminders"],
        "ReminderDelay": row["reminder_delay"],
        "IncludeTraceRoute": False,
    }
    return {**body, "Hash": _hash(body)}


async def _level(request: web.Request) -> tuple[dict[str, Any], dict[str, Any]]:
    """The definition and the level of the path (404 naming which is unknown)."""
    definition = await _definition(request)
    wanted = _level_id(request)
    levels = await controller(request).store.escalation_levels(definition["guid"])
    for row in levels:
        if row["level"] == wanted:
            return definition, row
    _gone(definition["guid"])


@routes.get(DEFINITION + "/EscalationLevel")
async def list_levels(request: web.Request) -> web.Response:
    definition = await _definition(request)
    rows = await controller(request).store.escalation_levels(definition["guid"])
    return ok([represent_level(r) for r in rows])


@routes.get(LEVEL)
async def get_level(request: web.Request) -> web.Response:
    _, row = await _level(request)
    return ok(represent_level(row))


async def _update_level(request: web.Request, replace: bool) -> web.Response:
    _admin(request)
    definition, current = await _level(request)
    raw = await json_body(request)
    body = _parse(LevelBody, raw)
    if body.Id is not None and body.Id != current["level"]:
        fail(400, "Id: does not match the escalation level in the URL", "Id")
    if replace and body.IsActive is None:
        fail(400, "IsActive: is required (a PUT replaces the level's fields)", "IsActive")
    base = {**LEVEL_DEFAULTS} if replace else {k: current[k] for k in LEVEL_DEFAULTS}
    values = dict(base)
    for name, column in _LEVEL_COLUMNS.items():
        value = getattr(body, name)
        if value is not None:
            values[column] = value
    if values["number_of_reminders"] > 0 and values["reminder_delay"] < 1:
        fail(
            400,
            "ReminderDelay: give the minutes between reminders (at least 1) when "
            "NumberOfReminders is above 0",
            "ReminderDelay",
        )
    store = controller(request).store
    if not await store.update_escalation_level(definition["guid"], current["level"], values):
        _gone(definition["guid"])
    _changed(request)
    if values["is_active"] != bool(current["is_active"]):
        log.info(
            "escalation level %d of alert definition %s (%s) %s by operator %s",
            current["level"],
            definition["guid"],
            definition["name"],
            "activated" if values["is_active"] else "deactivated",
            principal(request).operator_guid,
        )
    return web.Response(status=204)


@routes.put(LEVEL)
async def replace_level(request: web.Request) -> web.Response:
    return await _update_level(request, replace=True)


@routes.patch(LEVEL)
async def patch_level(request: web.Request) -> web.Response:
    return await _update_level(request, replace=False)


# --- level members: operators and operator groups -----------------------------------------------


@routes.get(LEVEL + "/Member")
async def list_level_members(request: web.Request) -> web.Response:
    definition, level = await _level(request)
    members = await controller(request).store.escalation_level_members(
        definition["guid"], level["level"]
    )
    return ok(
        [
            {
                "OperatorGuid": guid if kind == "operator" else None,
                "OperatorGroupGuid": guid if kind == "group" else None,
            }
            for kind, guid in members
        ]
    )


async def _add_level_member(request: web.Request, kind: str) -> web.Response:
    _admin(request)
    definition, level = await _level(request)
    store = controller(request).store
    if kind == "operator":
        param, field, what = "operatorGuid", "Operator", "Operator"
        member = _path_guid(request, param)
        exists = await store.operator_by_guid(member) is not None
    else:
        param, field, what = "operatorGroupGuid", "OperatorGroup", "OperatorGroup"
        member = _path_guid(request, param)
        exists = await store.operator_group(member) is not None
    if not exists:
        fail(404, f"{what} {member} not found", param)
    try:
        added = await store.add_escalation_level_member(
            definition["guid"], level["level"], kind, member, MAX_LEVEL_MEMBERS
        )
    except StoreRejected:
        fail(404, f"{what} {member} not found (deleted meanwhile)", param)
    if added is False:
        _gone(definition["guid"])
    if added is None:
        fail(
            400,
            f"Escalation level {level['level']} has {MAX_LEVEL_MEMBERS} members already; "
            "put operators in an operator group and add the group",
            param,
        )
    _changed(request)
    return ok(
        {"AlertDefinition": definition["guid"], "Escalationlevel": level["level"], field: member},
        status=201,
    )


async def _remove_level_member(request: web.Request, kind: str) -> web.Response:
    _admin(request)
    definition, level = await _level(request)
    param = "operatorGuid" if kind == "operator" else "operatorGroupGuid"
    member = _path_guid(request, param)
    store = controller(request).store
    if not await store.remove_escalation_level_member(
        definition["guid"], level["level"], kind, member
    ):
        what = "Operator" if kind == "operator" else "OperatorGroup"
        fail(404, f"{what} {member} is not a member of escalation level {level['level']}", param)
    _changed(request)
    return web.Response(status=204)


@routes.post(LEVEL + "/Member/Operator/{operatorGuid}")
async def add_operator(request: web.Request) -> web.Response:
    return await _add_level_member(request, "operator")


@routes.delete(LEVEL + "/Member/Operator/{operatorGuid}")
async def remove_operator(request: web.Request) -> web.Response:
    return await _remove_level_member(request, "operator")


@routes.post(LEVEL + "/Member/OperatorGroup/{operatorGroupGuid}")
async def add_operator_group(request: web.Request) -> web.Response:
    return await _add_level_member(request, "group")


@routes.delete(LEVEL + "/Member/OperatorGroup/{operatorGroupGuid}")
async def remove_operator_group(request: web.Request) -> web.Response:
    return await _remove_level_member(request, "group")


# --- level integrations -------------------------------------------------------------------------


VariableValue = Annotated[StrictStr, Field(max_length=2000)]


class LevelIntegrationBody(BaseModel):
    """Uptrends' EscalationLevelIntegration; what GET shows (the Integration's own fields)
    is accepted back and not stored."""

    model_config = ConfigDict(extra="forbid")
    IntegrationGuid: StrictStr | None = None
    ExtraEmailAddresses: Any = None
    ExtraEmailAddressesSpecified: StrictBool | None = None
    StatusHubServiceList: list[Any] | None = None
    StatusHubServiceListSpecified: StrictBool | None = None
    IsActive: StrictBool | None = None
    SendOkAlerts: StrictBool | None = None
    SendReminderAlerts: StrictBool | None = None
    VariableValues: dict[StrictStr, VariableValue] | None = Field(
        default=None, max_length=MAX_VARIABLES
    )
    # read-only
    Hash: StrictStr | None = None
    Name: StrictStr | None = None
    Type: StrictStr | None = None
    Kind: StrictStr | None = None
    IntegrationServices: list[Any] | None = None

    @field_validator("ExtraEmailAddresses")
    @classmethod
    def _addresses(cls, value: Any) -> list[str] | None:
        if value is None:
            return None
        found = email.addresses(value)
        if len(found) > email.MAX_ADDRESSES:
            raise ValueError(f"at most {email.MAX_ADDRESSES} addresses")
        for address in found:
            if not isinstance(address, str) or not email.EMAIL.match(address):
                raise ValueError(
                    f"{str(address)[:80]!r} is not an e-mail address (name@domain.tld)"
                )
        return found

    @field_validator("StatusHubServiceList")
    @classmethod
    def _no_statushub(cls, value: list[Any] | None) -> list[Any] | None:
        if value:
            raise ValueError("Picket does not update Uptrends' StatusHub; send an empty list")
        return value

    @field_validator("VariableValues")
    @classmethod
    def _names(cls, value: dict[str, str] | None) -> dict[str, str] | None:
        for name in value or {}:
            if not template.CUSTOM_NAME.match(name):
                raise ValueError(
                    f"{name[:40]!r} is not a variable name (a letter or _, then letters, "
                    "digits, '_', '.', '-'; up to 64)"
                )
        return value


def represent_level_integration(row: dict[str, Any]) -> dict[str, Any]:
    body: dict[str, Any] = {
        "IntegrationGuid": row["integration_guid"],
        "Name": row["integration_name"],
        "Type": row["integration_type"],
        "ExtraEmailAddresses": ", ".join(row["extra_email_addresses"]),
        "StatusHubServiceList": [],
        "IntegrationServices": [],
        "IsActive": bool(row["is_active"]),
        "SendOkAlerts": bool(row["send_ok_alerts"]),
        "SendReminderAlerts": bool(row["send_reminder_alerts"]),
        "VariableValues": row["variable_values"],
    }
    if row["integration_type"] == "GenericWebhook":
        body["Kind"] = row["integration_kind"] or "Webhook"
    return {**body, "Hash": _hash(body)}


def _level_integration_values(
    body: LevelIntegrationBody,
    integration: dict[str, Any],
    current: dict[str, Any] | None,
) -> dict[str, Any]:
    """Columns from a body: all of them for POST and PUT (what is left out takes its default),
    those sent over `current` for PATCH."""
    values: dict[str, Any] = (
        {
            "is_active": current["is_active"],
            "send_ok_alerts": current["send_ok_alerts"],
            "send_reminder_alerts": current["send_reminder_alerts"],
            "variable_values": current["variable_values"],
            "extra_email_addresses": current["extra_email_addresses"],
        }
        if current is not None
        else {
            "is_active": True,
            "send_ok_alerts": True,
            "send_reminder_alerts": True,
            "variable_values": {},
            "extra_email_addresses": [],
        }
    )
    for name, column in (
        ("IsActive", "is_active"),
        ("SendOkAlerts", "send_ok_alerts"),
        ("SendReminderAlerts", "send_reminder_alerts"),
        ("VariableValues", "variable_values"),
    ):
        value = getattr(body, name)
        if value is not None:
            values[column] = value
    if body.ExtraEmailAddressesSpecified is not False and body.ExtraEmailAddresses is not None:
        values["extra_email_addresses"] = body.ExtraEmailAddresses
    if values["extra_email_addresses"] and integration["type"] != "Email":
        fail(
            400,
            f"ExtraEmailAddresses: only an Email integration sends e-mail; integration "
            f"{integration['guid']} is a {integration['type']}",
            "ExtraEmailAddresses",
        )
    declared = {name.lower() for name in integration["config"].get("VariableValues", {})}
    for name in values["variable_values"]:
        if name.lower() not in declared:
            shown = ", ".join(sorted(integration["config"].get("VariableValues", {}))) or "none"
            fail(
                400,
                f"VariableValues.{name}: integration {integration['guid']} has no variable "
                f"{name!r} (its variables: {shown}); declare it in the integration's "
                "VariableValues first",
                f"VariableValues.{name}",
            )
    return values


async def _integration_row(request: web.Request, guid_text: str, field: str) -> dict[str, Any]:
    try:
        guid = str(uuid.UUID(guid_text))
    except ValueError:
        fail(400, f"{field}: {guid_text[:40]!r} is not a guid", field)
    found = await controller(request).store.integration(guid)
    if found is None:
        fail(400, f"{field}: there is no integration {guid}", field)
    return found


@routes.get(LEVEL + "/Integration")
async def list_level_integrations(request: web.Request) -> web.Response:
    definition, level = await _level(request)
    rows = await controller(request).store.escalation_level_integrations(
        definition["guid"], level["level"]
    )
    return ok([represent_level_integration(r) for r in rows])


@routes.post(LEVEL + "/Integration")
async def add_level_integration(request: web.Request) -> web.Response:
    _admin(request)
    definition, level = await _level(request)
    body = _parse(LevelIntegrationBody, await json_body(request))
    if not body.IntegrationGuid:
        fail(400, "IntegrationGuid: is required", "IntegrationGuid")
    found = await _integration_row(request, body.IntegrationGuid, "IntegrationGuid")
    values = _level_integration_values(body, found, None)
    store = controller(request).store
    try:
        outcome = await store.add_escalation_level_integration(
            definition["guid"], level["level"], found["guid"], values, MAX_LEVEL_INTEGRATIONS
        )
    except StoreRejected:  # deleted meanwhile: the foreign key refused it
        fail(400, f"IntegrationGuid: there is no integration {found['guid']}", "IntegrationGuid")
    if outcome == "gone":
        _gone(definition["guid"])
    if outcome == "exists":
        fail(
            409,
            f"Integration {found['guid']} is on escalation level {level['level']} already; "
            "change it with PUT or PATCH",
            "IntegrationGuid",
        )
    if outcome == "full":
        fail(
            400,
            f"Escalation level {level['level']} has {MAX_LEVEL_INTEGRATIONS} integrations already",
            "IntegrationGuid",
        )
    _changed(request)
    row = await store.escalation_level_integration(
        definition["guid"], level["level"], found["guid"]
    )
    if row is None:
        fail(404, f"Integration {found['guid']} was removed meanwhile", "IntegrationGuid")
    return ok(represent_level_integration(row), status=201)


async def _level_integration(
    request: web.Request,
) -> tuple[dict[str, Any], dict[str, Any], dict[str, Any]]:
    definition, level = await _level(request)
    guid = _path_guid(request, "integrationGuid")
    row = await controller(request).store.escalation_level_integration(
        definition["guid"], level["level"], guid
    )
    if row is None:
        fail(
            404,
            f"Integration {guid} is not on escalation level {level['level']} of alert "
            f"definition {definition['guid']}",
            "integrationGuid",
        )
    return definition, level, row


@routes.get(LEVEL + "/Integration/{integrationGuid}")
async def get_level_integration(request: web.Request) -> web.Response:
    _, _, row = await _level_integration(request)
    return ok(represent_level_integration(row))


async def _update_level_integration(request: web.Request, replace: bool) -> web.Response:
    _admin(request)
    definition, level, current = await _level_integration(request)
    body = _parse(LevelIntegrationBody, await json_body(request))
    guid = current["integration_guid"]
    _same_guid(body.IntegrationGuid, guid, "IntegrationGuid", "integration")
    store = controller(request).store
    found = await store.integration(guid)
    if found is None:
        fail(404, f"Integration {guid} not found (deleted meanwhile)", "integrationGuid")
    values = _level_integration_values(body, found, None if replace else current)
    if not await store.update_escalation_level_integration(
        definition["guid"], level["level"], guid, values
    ):
        fail(404, f"Integration {guid} was removed from the level meanwhile", "integrationGuid")
    _changed(request)
    return web.Response(status=204)


@routes.put(LEVEL + "/Integration/{integrationGuid}")
async def replace_level_integration(request: web.Request) -> web.Response:
    return await _update_level_integration(request, replace=True)


@routes.patch(LEVEL + "/Integration/{integrationGuid}")
async def patch_level_integration(request: web.Request) -> web.Response:
    return await _update_level_integration(request, replace=False)


@routes.delete(LEVEL + "/Integration/{integrationGuid}")
async def remove_level_integration(request: web.Request) -> web.Response:
    _admin(request)
    definition, level = await _level(request)
    guid = _path_guid(request, "integrationGuid")
    if not await controller(request).store.remove_escalation_level_integration(
        definition["guid"], level["level"], guid
    ):
        fail(
            404,
            f"Integration {guid} is not on escalation level {level['level']}",
            "integrationGuid",
        )
    _changed(request)
    return web.Response(status=204)
