"""Integration: `GET /Integration` as Uptrends lists them; POST, GET one, PUT, PATCH, DELETE
and `POST /Integration/{guid}/Test` are Picket's (Uptrends configures integrations in its web
app). Secrets are write-only (controller/integrations/fields.py). Members of Administrators
manage integrations and send tests; other operators read."""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import time
import uuid
from datetime import UTC, datetime
from typing import Any

from aiohttp import web
from pydantic import ValidationError

from controller import integrations
from controller.api.common import (
    PREFIX,
    controller,
    fail,
    invalid,
    json_body,
    ok,
    path_guid,
    principal,
    require_admin,
)
from controller.integrations import Kind, base
from shared import secrets

log = logging.getLogger(__name__)
routes = web.RouteTableDef()

# accepted (a client sends back what it read) and not stored
READ_ONLY = ("IntegrationGuid", "Hash", "IntegrationServices")
# beyond the send's own limit: PagerDuty's test is two requests
TEST_MARGIN_SECONDS = 5.0
OUTCOME_NAMES = {"sent": "Sent", "temporary": "TemporaryFailure", "permanent": "PermanentFailure"}


def _admin(request: web.Request) -> None:
    require_admin(request, "integrations")


def _guid(request: web.Request) -> str:
    return path_guid(request, "integrationGuid")


async def _integration(request: web.Request) -> dict[str, Any]:
    guid = _guid(request)
    found = await controller(request).store.integration(guid)
    if found is None:
        fail(404, f"Integration {guid} not found", "integrationGuid")
    return found


def _kind_of_row(row: dict[str, Any]) -> Kind:
    return integrations.kind_of(row["type"], row["kind"])


def represent(row: dict[str, Any]) -> dict[str, Any]:
    """Uptrends' Integration fields, then Picket's configuration with secrets masked."""
    kind = _kind_of_row(row)
    config = kind.policy.redact(row["config"])
    shown: dict[str, Any] = {
        "IntegrationGuid": row["guid"],
        "Type": row["type"],
        "Name": row["name"],
        "ExtraEmailAddresses": ", ".join(config.pop("ExtraEmailAddresses", [])),
        "StatusHubServiceList": [],
        "IntegrationServices": [],
        "Hash": row["revision"],
        "VariableValues": config.pop("VariableValues", {}),
    }
    if row["type"] == "GenericWebhook":
        shown["Kind"] = row["kind"]
    config.pop("Name", None)
    shown.update(config)
    return shown


def _text(body: dict[str, Any], name: str) -> str | None:
    value = body.get(name)
    if value is not None and not isinstance(value, str):
        fail(400, f"{name}: must be a string", name)
    return value


def _kind_of_body(body: dict[str, Any]) -> Kind:
    type_ = _text(body, "Type")
    if not type_:
        fail(400, "Type: is required", "Type")
    try:
        return integrations.kind_of(type_, _text(body, "Kind"))
    except ValueError as exc:
        field = str(exc).partition(":")[0]
        fail(400, str(exc), field)


def _configuration(
    body: dict[str, Any], kind: Kind, old: dict[str, Any] | None, patch: bool
) -> dict[str, Any]:
    """The configuration to store from a body: read-only fields dropped, secrets sent back
    masked (or left out) filled from `old`, a PATCH laid over `old`, validated."""
    body = dict(body)
    for name in (*READ_ONLY, "Type", "Kind"):
        body.pop(name, None)
    hubs = body.pop("StatusHubServiceList", None)
    if hubs:
        fail(
            400,
            "StatusHubServiceList: Picket does not update Uptrends' StatusHub",
            "StatusHubServiceList",
        )
    extra = body.pop("ExtraEmailAddresses", None) if kind.name != "email" else None
    if extra not in (None, "", []):
        fail(
            400,
            "ExtraEmailAddresses: only an Email integration sends e-mail",
            "ExtraEmailAddresses",
        )
    if old is not None:
        kind.policy.keep(body, old, patch)
        if patch:
            body = {**old, **body}
    try:
        parsed = kind.config.model_validate(body)
    except ValidationError as exc:
        raise invalid(exc) from None
    config: dict[str, Any] = parsed.model_dump(mode="json")
    return config


def _revision(kind: Kind, config: dict[str, Any]) -> str:
    return secrets.revision({"Type": kind.type, "Kind": kind.kind, **config})


@routes.get(PREFIX + "/Integration")
async def list_integrations(request: web.Request) -> web.Response:
    rows = await controller(request).store.integrations()
    return ok([represent(row) for row in rows])


@routes.get(PREFIX + "/Integration/{integrationGuid}")
async def get_integration(request: web.Request) -> web.Response:
    return ok(represent(await _integration(request)))


@routes.post(PREFIX + "/Integration")
async def create_integration(request: web.Request) -> web.Response:
    _admin(request)
    body = await json_body(request)
    kind = _kind_of_body(body)
    config = _configuration(body, kind, None, patch=False)
    guid = str(uuid.uuid4())
    store = controller(request).store
    await store.create_integration(
        guid, config["Name"], kind.type, kind.kind, config, _revision(kind, config)
    )
    log.info(
        "integration %s (%s, %s) created by operator %s",
        guid,
        config["Name"],
        kind.name,
        principal(request).operator_guid,
    )
    created = await store.integration(guid)
    if created is None:
        fail(404, f"Integration {guid} was deleted meanwhile", "integrationGuid")
    return ok(represent(created), status=201)


async def _update(request: web.Request, patch: bool) -> web.Response:
    _admin(request)
    current = await _integration(request)
    body = await json_body(request)
    sent_guid = body.get("IntegrationGuid")
    if sent_guid is not None and str(sent_guid).lower() != current["guid"]:
        fail(400, "IntegrationGuid: does not match the integration in the URL", "IntegrationGuid")
    kind = _kind_of_row(current)
    if "Type" in body or "Kind" in body:
        type_ = body.get("Type", current["type"])
        kept_kind = current["kind"] if type_ == current["type"] else None
        wanted = _kind_of_body({"Type": type_, "Kind": body.get("Kind", kept_kind)})
        if wanted != kind:
            fail(
                400,
                f"Type: this integration is a {kind.type}"
                + (f" ({kind.kind})" if kind.kind else "")
                + "; its kind cannot change: create a new integration",
                "Type",
            )
    config = _configuration(body, kind, current["config"], patch)
    store = controller(request).store
    changed = await store.update_integration(
        current["guid"], config["Name"], config, _revision(kind, config), current["revision"]
    )
    if not changed:
        if await store.integration(current["guid"]) is None:
            fail(404, f"Integration {current['guid']} not found (deleted meanwhile)")
        fail(409, "The integration was changed meanwhile: read it again and retry", "Hash")
    log.info(
        "integration %s (%s, %s) changed by operator %s",
        current["guid"],
        config["Name"],
        kind.name,
        principal(request).operator_guid,
    )
    return web.Response(status=204)


@routes.put(PREFIX + "/Integration/{integrationGuid}")
async def replace_integration(request: web.Request) -> web.Response:
    return await _update(request, patch=False)


@routes.patch(PREFIX + "/Integration/{integrationGuid}")
async def patch_integration(request: web.Request) -> web.Response:
    return await _update(request, patch=True)


@routes.delete(PREFIX + "/Integration/{integrationGuid}")
async def delete_integration(request: web.Request) -> web.Response:
    _admin(request)
    guid = _guid(request)
    if not await controller(request).store.delete_integration(guid):
        fail(404, f"Integration {guid} not found", "integrationGuid")
    log.info("integration %s deleted by operator %s", guid, principal(request).operator_guid)
    return web.Response(status=204)


@routes.post(PREFIX + "/Integration/{integrationGuid}/Test")
async def test_integration(request: web.Request) -> web.Response:
    """Send a Test notification now and answer with its outcome (200 whatever it is)."""
    _admin(request)
    row = await _integration(request)
    kind = _kind_of_row(row)
    ctl = controller(request)
    key = f"test-{uuid.uuid4().hex}"
    notification = dataclasses.replace(
        base.sample(datetime.now(UTC)),
        alert_guid=str(uuid.uuid4()),
        idempotency_key=key,
        incident_key=key,
    )
    if kind.name == "email" and not row["config"].get("ExtraEmailAddresses"):
        # a test without ExtraEmailAddresses goes to the operator who asked for it
        me = await ctl.store.operator_by_guid(principal(request).operator_guid)
        if not me or not me.get("email"):
            fail(
                400,
                "ExtraEmailAddresses: the integration has none and you have no Email: "
                "nobody to send the test to",
                "ExtraEmailAddresses",
            )
        notification = dataclasses.replace(notification, recipients=(me["email"],))
    started = time.perf_counter()
    limit = 2 * ctl.settings.notify_timeout_seconds + TEST_MARGIN_SECONDS
    try:
        async with asyncio.timeout(limit):
            outcome = await ctl.senders.deliver(row["guid"], kind, row["config"], notification)
    except TimeoutError:
        outcome = base.Outcome.temporary(f"no outcome within {limit:g}s")
    return ok(
        {
            "IntegrationGuid": row["guid"],
            "Outcome": OUTCOME_NAMES[outcome.kind],
            "Reason": outcome.reason,
            "RetryAfterSeconds": outcome.retry_after,
            "Status": outcome.status,
            "IdempotencyKey": key,
            "DurationSeconds": round(time.perf_counter() - started, 3),
        }
    )
