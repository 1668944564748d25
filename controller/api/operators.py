"""Operator, OperatorGroup and Timezone: operators (who log in with their Email; the built-in
`admin` with its name), their off-duty schedules, operator groups with the built-in Everyone
and Administrators, and Uptrends' integer time zones.

Until permissions come, members of Administrators manage all of it; other operators read."""

from __future__ import annotations

import hashlib
import json
import logging
import re
import uuid
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime, time
from typing import Any, Literal, NoReturn

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

from controller import duty, timezones
from controller.api.common import (
    PREFIX,
    ApiError,
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
from controller.auth import ADMIN_USERNAME
from controller.db.store import NameTaken

log = logging.getLogger(__name__)
routes = web.RouteTableDef()

# off-duty schedules one operator may have: AddDutyScheduleForAllMembers in a loop stops here
MAX_SCHEDULES_PER_OPERATOR = 100
# a password no hash matches: an operator created without one cannot log in until it is set
NO_PASSWORD = "!"
CULTURES = ("en-US", "en-GB", "fr-FR", "de-DE", "nl-NL", "")
SMS_PROVIDERS = (
    "UseAccountSetting",
    "SmsProviderEurope",
    "SmsProviderInternational",
    "SmsProviderEurope2",
    "SmsProviderUSA",
)

_EMAIL = re.compile(r"^[^@\s\x00-\x1f\x7f]{1,64}@(?=.{1,253}$)[^@\s\x00-\x1f\x7f.]+(\.[^@\s.]+)+$")
_PHONE = re.compile(r"^\+?[0-9][0-9 ()./-]{1,38}[0-9]$")
_HHMM = re.compile(r"^([01]?[0-9]|2[0-3]):[0-5][0-9]$")


def _admin(request: web.Request) -> None:
    require_admin(request, "operators and groups")


_guid = path_guid


# --- time zones ---------------------------------------------------------------------------------


@routes.get(PREFIX + "/Timezone")
async def list_timezones(request: web.Request) -> web.Response:
    return ok(timezones.listing())


@routes.get(PREFIX + "/Timezone/{timezoneId}")
async def one_timezone(request: web.Request) -> web.Response:
    wanted = id_param(request, "timezoneId")
    found = timezones.get(wanted)
    if found is None:
        fail(404, f"Time zone {wanted} not found", "timezoneId")
    return ok(timezones.describe(found))


# --- operators ----------------------------------------------------------------------------------


def _email_check(value: str | None) -> str | None:
    if value is None or value == "":
        return value
    value = value.strip()
    if not _EMAIL.match(value):
        raise ValueError(f"{value[:80]!r} is not an email address (name@domain.tld)")
    return value


class OperatorBody(BaseModel):
    """Uptrends' Operator as sent: every field optional here; POST and PUT check `Email`."""

    model_config = ConfigDict(extra="forbid")
    # read-only: accepted (a client sends back what it read) and not stored
    OperatorGuid: StrictStr | None = None
    Hash: StrictStr | None = None
    UserName: StrictStr | None = None
    IsAccountAdministrator: StrictBool | None = None
    OnDutyNow: StrictBool | None = None
    # write-only
    Password: StrictStr | None = Field(default=None, min_length=8, max_length=256)
    FullName: StrictStr | None = Field(default=None, max_length=200)
    Email: StrictStr | None = Field(default=None, max_length=254)
    BackupEmail: StrictStr | None = Field(default=None, max_length=254)
    MobilePhone: StrictStr | None = Field(default=None, max_length=50)
    IsOnDuty: StrictBool | None = None
    TimeZoneId: StrictInt | None = None
    TimeZoneIdSpecified: StrictBool | None = None
    AllowNativeLogin: StrictBool | None = None
    AllowNativeLoginSpecified: StrictBool | None = None
    # kept and returned; nothing in Picket acts on them (no SMS, phone or single sign-on)
    CultureName: Literal[CULTURES] | None = None  # type: ignore[valid-type]
    CultureNameSpecified: StrictBool | None = None
    SmsProvider: Literal[(*SMS_PROVIDERS, "")] | None = None  # type: ignore[valid-type]
    UseNumericSender: StrictBool | None = None
    UseNumericSenderSpecified: StrictBool | None = None
    PhoneProvider: StrictStr | None = Field(default=None, max_length=50)
    OutgoingPhoneNumberId: StrictInt | None = Field(default=None, ge=0, le=2**31 - 1)
    OutgoingPhoneNumberIdSpecified: StrictBool | None = None
    OutgoingPhoneNumber: StrictStr | None = Field(default=None, max_length=50)
    DefaultDashboard: StrictStr | None = Field(default=None, max_length=100)
    AllowSingleSignon: StrictBool | None = None
    AllowSingleSignonSpecified: StrictBool | None = None
    SetupMode: Literal["Manual", "Invitation", ""] | None = None
    OperatorRole: Literal[""] | None = None

    @field_validator("Email", "BackupEmail")
    @classmethod
    def _email(cls, value: str | None) -> str | None:
        return _email_check(value)

    @field_validator("MobilePhone")
    @classmethod
    def _phone(cls, value: str | None) -> str | None:
        if value and not _PHONE.match(value.strip()):
            raise ValueError(
                f"{value[:60]!r} is not a phone number (digits, optionally a leading +, "
                "spaces, dots, dashes and parentheses)"
            )
        return value.strip() if value else value

    @field_validator("TimeZoneId")
    @classmethod
    def _zone(cls, value: int | None) -> int | None:
        if value is not None and timezones.get(value) is None:
            raise ValueError(f"{value} is not a known time zone (see GET {PREFIX}/Timezone)")
        return value

    @field_validator("SetupMode")
    @classmethod
    def _setup(cls, value: str | None) -> str | None:
        if value == "Invitation":
            raise ValueError("Picket sends no invitations: use Manual and set a Password")
        return value

    @field_validator("AllowSingleSignon")
    @classmethod
    def _sso(cls, value: bool | None) -> bool | None:
        if value:
            raise ValueError("Picket has no single sign-on")
        return value


# Uptrends' `XxxSpecified: false` means "Xxx is not set": such a field is left out
_SPECIFIED = (
    "TimeZoneId",
    "AllowNativeLogin",
    "CultureName",
    "UseNumericSender",
    "OutgoingPhoneNumberId",
    "AllowSingleSignon",
)
_KEPT = (
    "CultureName",
    "SmsProvider",
    "UseNumericSender",
    "PhoneProvider",
    "OutgoingPhoneNumberId",
    "OutgoingPhoneNumber",
    "DefaultDashboard",
)


def _parse_operator(raw: dict[str, Any]) -> tuple[OperatorBody, set[str]]:
    """The body and the fields it sets."""
    raw = dict(raw)
    for name in _SPECIFIED:
        if raw.get(name + "Specified") is False:
            raw.pop(name, None)
    try:
        body = OperatorBody.model_validate(raw)
    except ValidationError as exc:
        raise invalid(exc) from None
    sent = {k for k in raw if k in OperatorBody.model_fields and not k.endswith("Specified")}
    return body, sent


def _empty_to_none(value: str | None) -> str | None:
    return value or None


def _values(body: OperatorBody, sent: set[str], current: dict[str, Any] | None) -> dict[str, Any]:
    """Columns for the fields sent (PATCH), or all (POST, PUT: what is not sent is reset)."""
    replace = current is None or "*" in sent
    given = OperatorBody.model_fields.keys() if replace else sent
    values: dict[str, Any] = {}
    settings = dict(current["settings"]) if current and not replace else {}
    if "Email" in given:
        if not body.Email:
            fail(400, "Email: is required (an operator logs in with it)", "Email")
        values["email"] = body.Email
        values["email_key"] = body.Email.lower()
        if current is None or current["username"] != ADMIN_USERNAME:
            values["username"] = body.Email.lower()  # the login follows the Email
    if "FullName" in given:
        values["full_name"] = body.FullName or (
            body.Email if body.Email else current["full_name"] if current else ""
        )
    if "BackupEmail" in given:
        values["backup_email"] = _empty_to_none(body.BackupEmail)
    if "MobilePhone" in given:
        values["mobile_phone"] = _empty_to_none(body.MobilePhone)
    if "IsOnDuty" in given:
        values["is_on_duty"] = True if body.IsOnDuty is None else body.IsOnDuty
    if "TimeZoneId" in given:
        values["time_zone_id"] = body.TimeZoneId
    if "AllowNativeLogin" in given:
        values["allow_native_login"] = body.AllowNativeLogin
    for name in _KEPT:
        if name in given:
            value = getattr(body, name)
            if value is None or value == "":
                settings.pop(name, None)
            else:
                settings[name] = value
    values["settings"] = settings
    return values


def _hash(body: dict[str, Any]) -> str:
    text = json.dumps(body, sort_keys=True, ensure_ascii=False)
    return hashlib.sha256(text.encode()).hexdigest()[:32]


def represent_operator(op: dict[str, Any], on_duty_now: bool | None) -> dict[str, Any]:
    kept = op["settings"]
    body: dict[str, Any] = {
        "OperatorGuid": op["guid"],
        "FullName": op["full_name"],
        "Email": op["email"] or "",
        "MobilePhone": op["mobile_phone"] or "",
        "OutgoingPhoneNumberId": kept.get("OutgoingPhoneNumberId"),
        "IsAccountAdministrator": op["username"] == ADMIN_USERNAME,
        "BackupEmail": op["backup_email"] or "",
        "IsOnDuty": bool(op["is_on_duty"]),
        "CultureName": kept.get("CultureName", ""),
        "TimeZoneId": op["time_zone_id"],
        "SmsProvider": kept.get("SmsProvider", "UseAccountSetting"),
        "UseNumericSender": kept.get("UseNumericSender", False),
        "PhoneProvider": kept.get("PhoneProvider", "UseAccountSetting"),
        "AllowNativeLogin": op["allow_native_login"] is not False,
        "AllowSingleSignon": False,
        "DefaultDashboard": kept.get("DefaultDashboard", ""),
        "SetupMode": "Manual",
        "OperatorRole": "",
        # Picket's: the login name, and whether alerts reach this operator now
        "UserName": op["username"],
    }
    if "OutgoingPhoneNumber" in kept:
        body["OutgoingPhoneNumber"] = kept["OutgoingPhoneNumber"]
    body["Hash"] = _hash(body)
    if on_duty_now is not None:
        body["OnDutyNow"] = on_duty_now
    return body


async def _on_duty_now(request: web.Request, guids: list[str]) -> dict[str, bool]:
    now = datetime.now(UTC)
    roster = await controller(request).store.duty_roster(guids, [])
    return {op.guid: op.on_duty_at(now) for op in roster}


async def _operator(request: web.Request) -> dict[str, Any]:
    guid = _guid(request, "operatorGuid")
    found = await controller(request).store.operator_by_guid(guid)
    if found is None:
        fail(404, f"Operator {guid} not found", "operatorGuid")
    return found


def _check_body_guid(body: OperatorBody, guid: str) -> None:
    if body.OperatorGuid and body.OperatorGuid.lower() != guid:
        fail(400, "OperatorGuid: does not match the operator in the URL", "OperatorGuid")


def _email_taken(values: dict[str, Any]) -> ApiError:
    email = values.get("email") or ""
    return ApiError(400, [("Email", f"Email: another operator logs in with {email!r}")])


@routes.get(PREFIX + "/Operator")
async def list_operators(request: web.Request) -> web.Response:
    ops = await controller(request).store.operators()
    now = await _on_duty_now(request, [op["guid"] for op in ops])
    return ok([represent_operator(op, now.get(op["guid"])) for op in ops])


@routes.post(PREFIX + "/Operator")
async def create_operator(request: web.Request) -> web.Response:
    _admin(request)
    body, _ = _parse_operator(await json_body(request))
    values = _values(body, set(), None)
    ctl = controller(request)
    password_hash = await ctl.auth.checker.hash(body.Password) if body.Password else NO_PASSWORD
    guid = str(uuid.uuid4())
    full_name = values.pop("full_name")
    username = values.pop("username")
    try:
        await ctl.store.create_operator(guid, username, full_name, password_hash, False, **values)
    except NameTaken:
        raise _email_taken(values) from None
    log.info(
        "operator %s (%s) created by operator %s", guid, username, principal(request).operator_guid
    )
    created = await ctl.store.operator_by_guid(guid)
    assert created is not None
    now = await _on_duty_now(request, [guid])
    return ok(represent_operator(created, now.get(guid)), status=201)


@routes.get(PREFIX + "/Operator/{operatorGuid}")
async def get_operator(request: web.Request) -> web.Response:
    op = await _operator(request)
    now = await _on_duty_now(request, [op["guid"]])
    return ok(represent_operator(op, now.get(op["guid"])))


async def _update(request: web.Request, replace: bool) -> web.Response:
    _admin(request)
    current = await _operator(request)
    body, sent = _parse_operator(await json_body(request))
    _check_body_guid(body, current["guid"])
    values = _values(body, {"*"} if replace else sent, current)
    ctl = controller(request)
    if body.Password:
        values["password_hash"] = await ctl.auth.checker.hash(body.Password)
    try:
        updated = await ctl.store.update_operator(current["guid"], values)
    except NameTaken:
        raise _email_taken(values) from None
    if not updated:
        fail(404, f"Operator {current['guid']} not found (deleted meanwhile)", "operatorGuid")
    ctl.auth.forget_operator(current["guid"])  # its password or login may have changed
    return web.Response(status=204)


@routes.put(PREFIX + "/Operator/{operatorGuid}")
async def replace_operator(request: web.Request) -> web.Response:
    return await _update(request, replace=True)


@routes.patch(PREFIX + "/Operator/{operatorGuid}")
async def patch_operator(request: web.Request) -> web.Response:
    return await _update(request, replace=False)


@routes.delete(PREFIX + "/Operator/{operatorGuid}")
async def delete_operator(request: web.Request) -> web.Response:
    _admin(request)
    current = await _operator(request)
    if current["guid"] == principal(request).operator_guid:
        fail(403, "An operator cannot delete itself", "operatorGuid")
    if current["username"] == ADMIN_USERNAME:
        fail(403, f"The built-in operator {ADMIN_USERNAME!r} cannot be deleted", "operatorGuid")
    ctl = controller(request)
    if not await ctl.store.delete_operator(current["guid"]):
        fail(404, f"Operator {current['guid']} not found", "operatorGuid")
    ctl.auth.forget_operator(current["guid"])
    log.info(
        "operator %s (%s) deleted by operator %s",
        current["guid"],
        current["username"],
        principal(request).operator_guid,
    )
    return web.Response(status=204)


@routes.get(PREFIX + "/Operator/{operatorGuid}/OperatorGroup")
async def groups_of_operator(request: web.Request) -> web.Response:
    op = await _operator(request)
    groups = await controller(request).store.groups_of_operator(op["guid"])
    return ok([{"OperatorGroupGuid": g} for g in groups])


# --- off-duty schedules -------------------------------------------------------------------------


class ScheduleBody(BaseModel):
    model_config = ConfigDict(extra="forbid")
    Id: StrictInt | None = None  # read-only
    ScheduleMode: Literal[duty.MODES]  # type: ignore[valid-type]
    StartDateTime: StrictStr | None = None
    EndDateTime: StrictStr | None = None
    WeekDay: Literal[duty.WEEKDAYS] | None = None  # type: ignore[valid-type]
    MonthDay: StrictInt | None = Field(default=None, ge=1, le=31)
    StartTime: StrictStr | None = None
    EndTime: StrictStr | None = None

    @field_validator("StartDateTime", "EndDateTime")
    @classmethod
    def _local(cls, value: str | None) -> str | None:
        if value is None:
            return None
        try:
            moment = datetime.fromisoformat(value)
        except ValueError:
            raise ValueError(
                f"{value[:40]!r} is not a date and time (yyyy-MM-ddTHH:mm:ss)"
            ) from None
        if moment.tzinfo is not None:
            raise ValueError(
                "give the local time without an offset (yyyy-MM-ddTHH:mm:ss): it is read in "
                "the operator's time zone"
            )
        return moment.replace(microsecond=0).isoformat()

    @field_validator("StartTime", "EndTime")
    @classmethod
    def _hhmm(cls, value: str | None) -> str | None:
        if value is not None and not _HHMM.match(value):
            raise ValueError(f"{value[:20]!r} is not a time of day (HH:mm, 24-hour)")
        return value


def _need(value: Any, field: str, mode: str) -> Any:
    if value is None:
        fail(400, f"{field}: is required for a {mode} schedule", field)
    return value


def _schedule(raw: dict[str, Any], schedule_id: int = 0) -> duty.OffDuty:
    """The schedule sent; the fields of other modes are not kept."""
    try:
        body = ScheduleBody.model_validate(raw)
    except ValidationError as exc:
        raise invalid(exc) from None
    mode = body.ScheduleMode
    if mode == "OneTime":
        start = datetime.fromisoformat(_need(body.StartDateTime, "StartDateTime", mode))
        end = datetime.fromisoformat(_need(body.EndDateTime, "EndDateTime", mode))
        if end <= start:
            fail(400, "EndDateTime: must be after StartDateTime", "EndDateTime")
        return duty.OffDuty(id=schedule_id, mode=mode, start=start, end=end)
    start_time = time.fromisoformat(_need(body.StartTime, "StartTime", mode).zfill(5))
    end_time = time.fromisoformat(_need(body.EndTime, "EndTime", mode).zfill(5))
    week_day = None
    month_day = None
    if mode == "Weekly":
        week_day = duty.WEEKDAYS.index(_need(body.WeekDay, "WeekDay", mode))
    if mode == "Monthly":
        month_day = _need(body.MonthDay, "MonthDay", mode)
    return duty.OffDuty(
        id=schedule_id,
        mode=mode,
        week_day=week_day,
        month_day=month_day,
        start_time=start_time,
        end_time=end_time,
    )


def _no_schedule(op: dict[str, Any], wanted: int) -> NoReturn:
    fail(404, f"Off-duty schedule {wanted} of operator {op['guid']} not found", "dutyScheduleId")


@routes.get(PREFIX + "/Operator/{operatorGuid}/DutySchedule")
async def list_schedules(request: web.Request) -> web.Response:
    op = await _operator(request)
    rows = await controller(request).store.duty_schedules(op["guid"])
    return ok([duty.represent(duty.off_duty_of(r)) for r in rows])


@routes.post(PREFIX + "/Operator/{operatorGuid}/DutySchedule")
async def add_schedule(request: web.Request) -> web.Response:
    _admin(request)
    op = await _operator(request)
    schedule = _schedule(await json_body(request))
    new_id = await controller(request).store.add_duty_schedule(
        op["guid"], duty.stored(schedule), MAX_SCHEDULES_PER_OPERATOR
    )
    if new_id is None:
        fail(
            400,
            f"Operator {op['guid']} has {MAX_SCHEDULES_PER_OPERATOR} off-duty schedules "
            "already; delete some first",
            "operatorGuid",
        )
    created = duty.OffDuty(**{**schedule.__dict__, "id": new_id})
    return ok(duty.represent(created), status=201)


@routes.put(PREFIX + "/Operator/{operatorGuid}/DutySchedule/{dutyScheduleId}")
async def replace_schedule(request: web.Request) -> web.Response:
    _admin(request)
    op = await _operator(request)
    wanted = id_param(request, "dutyScheduleId")
    raw = await json_body(request)
    schedule = _schedule(raw, wanted)
    sent_id = raw.get("Id")
    if sent_id not in (None, 0, wanted):
        fail(400, "Id: does not match the schedule in the URL", "Id")
    store = controller(request).store
    if not await store.update_duty_schedule(op["guid"], wanted, duty.stored(schedule)):
        _no_schedule(op, wanted)
    return web.Response(status=204)


@routes.delete(PREFIX + "/Operator/{operatorGuid}/DutySchedule/{dutyScheduleId}")
async def delete_schedule(request: web.Request) -> web.Response:
    _admin(request)
    op = await _operator(request)
    wanted = id_param(request, "dutyScheduleId")
    if not await controller(request).store.delete_duty_schedule(op["guid"], wanted):
        _no_schedule(op, wanted)
    return web.Response(status=204)


# --- operator groups ----------------------------------------------------------------------------


class GroupBody(BaseModel):
    model_config = ConfigDict(extra="forbid")
    OperatorGroupGuid: StrictStr | None = None  # read-only
    Description: StrictStr = Field(min_length=1, max_length=200)
    IsEveryone: StrictBool | None = None  # read-only: only the built-in group is
    IsAdministratorsGroup: StrictBool | None = None

    @field_validator("Description")
    @classmethod
    def _text(cls, value: str) -> str:
        if not value.strip():
            raise ValueError("must not be blank")
        return value.strip()

    @field_validator("IsEveryone", "IsAdministratorsGroup")
    @classmethod
    def _builtin(cls, value: bool | None) -> bool | None:
        if value:
            raise ValueError("only the built-in group is; a new or changed group cannot be")
        return value


def _parse_group(raw: dict[str, Any]) -> GroupBody:
    try:
        return GroupBody.model_validate(raw)
    except ValidationError as exc:
        raise invalid(exc) from None


def represent_group(group: dict[str, Any]) -> dict[str, Any]:
    return {
        "OperatorGroupGuid": group["guid"],
        "Description": group["description"],
        "IsEveryone": bool(group["is_everyone"]),
        "IsAdministratorsGroup": bool(group["is_administrators"]),
    }


def _builtin_name(group: dict[str, Any]) -> str | None:
    if group["is_everyone"]:
        return "Everyone"
    if group["is_administrators"]:
        return "Administrators"
    return None


async def _group(request: web.Request) -> dict[str, Any]:
    guid = _guid(request, "operatorGroupGuid")
    found = await controller(request).store.operator_group(guid)
    if found is None:
        fail(404, f"Operator group {guid} not found", "operatorGroupGuid")
    return found


@routes.get(PREFIX + "/OperatorGroup")
async def list_groups(request: web.Request) -> web.Response:
    groups = await controller(request).store.operator_groups()
    return ok([represent_group(g) for g in groups])


@routes.post(PREFIX + "/OperatorGroup")
async def create_group(request: web.Request) -> web.Response:
    _admin(request)
    body = _parse_group(await json_body(request))
    guid = str(uuid.uuid4())
    store = controller(request).store
    await store.create_operator_group(guid, body.Description)
    created = await store.operator_group(guid)
    assert created is not None
    return ok(represent_group(created), status=201)


@routes.get(PREFIX + "/OperatorGroup/{operatorGroupGuid}")
async def get_group(request: web.Request) -> web.Response:
    return ok(represent_group(await _group(request)))


@routes.put(PREFIX + "/OperatorGroup/{operatorGroupGuid}")
async def replace_group(request: web.Request) -> web.Response:
    _admin(request)
    group = await _group(request)
    body = _parse_group(await json_body(request))
    if body.OperatorGroupGuid and body.OperatorGroupGuid.lower() != group["guid"]:
        fail(400, "OperatorGroupGuid: does not match the group in the URL", "OperatorGroupGuid")
    builtin = _builtin_name(group)
    if builtin is not None:
        fail(400, f"The built-in group {builtin} cannot be changed", "operatorGroupGuid")
    if not await controller(request).store.update_operator_group(group["guid"], body.Description):
        fail(404, f"Operator group {group['guid']} not found", "operatorGroupGuid")
    return web.Response(status=204)


@routes.delete(PREFIX + "/OperatorGroup/{operatorGroupGuid}")
async def delete_group(request: web.Request) -> web.Response:
    _admin(request)
    group = await _group(request)
    builtin = _builtin_name(group)
    if builtin is not None:
        fail(400, f"The built-in group {builtin} cannot be deleted", "operatorGroupGuid")
    if not await controller(request).store.delete_operator_group(group["guid"]):
        fail(404, f"Operator group {group['guid']} not found", "operatorGroupGuid")
    return web.Response(status=204)


@routes.get(PREFIX + "/OperatorGroup/{operatorGroupGuid}/Member")
async def list_members(request: web.Request) -> web.Response:
    group = await _group(request)
    members = await controller(request).store.operator_group_members(group["guid"])
    return ok([{"OperatorGuid": m} for m in members])


@routes.post(PREFIX + "/OperatorGroup/{operatorGroupGuid}/Member/{operatorGuid}")
async def add_member(request: web.Request) -> web.Response:
    """201 also when the operator is a member already (every operator is in Everyone)."""
    _admin(request)
    group = await _group(request)
    op = await _operator(request)
    ctl = controller(request)
    if not group["is_everyone"]:
        await ctl.store.add_operator_group_member(group["guid"], op["guid"])
    if group["is_administrators"]:
        ctl.auth.forget_operator(op["guid"])  # its remembered logins had no administrator right
        log.info(
            "operator %s (%s) made an administrator by operator %s",
            op["guid"],
            op["username"],
            principal(request).operator_guid,
        )
    return web.Response(status=201)


@routes.delete(PREFIX + "/OperatorGroup/{operatorGroupGuid}/Member/{operatorGuid}")
async def remove_member(request: web.Request) -> web.Response:
    _admin(request)
    group = await _group(request)
    op = await _operator(request)
    if group["is_everyone"]:
        fail(400, "Every operator is a member of Everyone; it cannot be removed", "operatorGuid")
    if group["is_administrators"] and op["username"] == ADMIN_USERNAME:
        fail(
            400,
            f"The built-in operator {ADMIN_USERNAME!r} stays in Administrators",
            "operatorGuid",
        )
    ctl = controller(request)
    if not await ctl.store.remove_operator_group_member(group["guid"], op["guid"]):
        fail(404, f"Operator {op['guid']} is not a member of this group", "operatorGuid")
    if group["is_administrators"]:
        ctl.auth.forget_operator(op["guid"])  # its remembered logins lose the right now
        log.info(
            "operator %s (%s) is no longer an administrator (by operator %s)",
            op["guid"],
            op["username"],
            principal(request).operator_guid,
        )
    return web.Response(status=204)


GROUP_SCHEDULE = "/OperatorGroup/{operatorGroupGuid}/DutySchedule"


async def _add_for_all(request: web.Request) -> web.Response:
    _admin(request)
    group = await _group(request)
    schedule = _schedule(await json_body(request))
    _, full = await controller(request).store.add_duty_schedule_for_members(
        group["guid"], duty.stored(schedule), MAX_SCHEDULES_PER_OPERATOR
    )
    if full:
        fail(
            400,
            f"{len(full)} member(s) have {MAX_SCHEDULES_PER_OPERATOR} off-duty schedules already "
            f"(first: {full[0]}); nothing was added",
            "operatorGroupGuid",
        )
    return web.Response(status=204)


@routes.post(PREFIX + GROUP_SCHEDULE + "/AddDutyScheduleForAllMembers")
async def add_schedule_for_all(request: web.Request) -> web.Response:
    return await _add_for_all(request)


@routes.post(PREFIX + GROUP_SCHEDULE)
async def add_schedule_for_all_kb(request: web.Request) -> web.Response:
    """The same, at the path Uptrends' knowledge base shows."""
    return await _add_for_all(request)


def _bare_errors(
    handler: Callable[[web.Request], Awaitable[web.Response]],
) -> Callable[[web.Request], Awaitable[web.Response]]:
    """Uptrends declares a bare `{"Message"}` for these errors: both shapes are sent."""

    async def wrapped(request: web.Request) -> web.Response:
        try:
            return await handler(request)
        except ApiError as exc:
            response = exc.response()
            body = {
                "Message": exc.messages[0][1] if exc.messages else "",
                "Messages": [{"Message": m, "Field": f} for f, m in exc.messages],
            }
            response.text = json.dumps(body, ensure_ascii=False)
            return response

    return wrapped


async def _set_duty(request: web.Request, on_duty: bool) -> web.Response:
    _admin(request)
    group = await _group(request)
    await controller(request).store.set_duty_of_members(group["guid"], on_duty)
    return web.Response(status=204)


@routes.post(PREFIX + "/OperatorGroup/{operatorGroupGuid}/AllOperatorsOnDuty")
@_bare_errors
async def all_on_duty(request: web.Request) -> web.Response:
    return await _set_duty(request, True)


@routes.post(PREFIX + "/OperatorGroup/{operatorGroupGuid}/AllOperatorsOffDuty")
@_bare_errors
async def all_off_duty(request: web.Request) -> web.Response:
    return await _set_duty(request, False)
