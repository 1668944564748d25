"""Enrolment: an administrator makes a one-time token for a checkpoint; an agent spends it
(`picket agent enrol`) for its own broker login, agent id and checkpoint. Only a hash of the
token is kept; the token and the agent's broker password are shown once."""

from __future__ import annotations

import base64
import binascii
import hashlib
import logging
import re
import secrets
import time
from typing import Annotated

from aiohttp import web
from pydantic import AfterValidator, BaseModel, ConfigDict, Field, StrictInt, ValidationError

from controller.api.common import (
    PREFIX,
    ApiError,
    controller,
    fail,
    invalid,
    json_body,
    ok,
    principal,
)
from controller.dynsec import BrokerAdminError
from shared.messages import place_name
from shared.timefmt import iso

log = logging.getLogger(__name__)
routes = web.RouteTableDef()

ENROL_PATH = PREFIX + "/Enrolment"
# an agent has no API credentials: the token in the body is its authentication
PUBLIC_PATHS = frozenset({ENROL_PATH})
MAX_MINUTES = 30 * 24 * 60

Name = Annotated[str, Field(min_length=1, max_length=100), AfterValidator(place_name)]


class TokenRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")
    CheckpointName: Name
    RegionName: Name
    ExpiresInMinutes: Annotated[StrictInt, Field(ge=1, le=MAX_MINUTES)] = 60


def _public_key(value: str) -> str:
    try:
        raw = base64.b64decode(value, validate=True)
    except (binascii.Error, ValueError):
        raise ValueError("must be base64") from None
    if len(raw) != 32:
        raise ValueError("must be a raw 32-byte X25519 public key, base64-encoded")
    return value


class EnrolRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")
    Token: Annotated[str, Field(min_length=1, max_length=200)]
    PublicKey: Annotated[str, Field(max_length=100), AfterValidator(_public_key)]
    KeyType: Annotated[str, Field(pattern="^X25519$")] = "X25519"


def token_hash(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


def _agent_id(checkpoint_name: str) -> str:
    slug = re.sub(r"[^A-Za-z0-9]+", "-", checkpoint_name).strip("-").lower()[:40]
    return f"{slug or 'agent'}-{secrets.token_hex(4)}"


def _enrolment_on(request: web.Request) -> None:
    if controller(request).broker_admin is None:
        fail(
            409,
            "Enrolment is off: the controller has no broker admin login "
            "(PICKET_BROKER_ADMIN_URL, see docs/operations.md)",
        )


@routes.post(PREFIX + "/EnrolmentToken")
async def create_token(request: web.Request) -> web.Response:
    if not principal(request).is_admin:
        fail(403, "Only an operator with the administrator right may create enrolment tokens")
    _enrolment_on(request)
    try:
        wanted = TokenRequest.model_validate(await json_body(request))
    except ValidationError as exc:
        raise invalid(exc) from None
    # hex: a token starting with '-' would be read as an option by `picket agent enrol --token`
    token = secrets.token_hex(32)
    expires = time.time() + wanted.ExpiresInMinutes * 60
    await controller(request).store.create_enrolment(
        token_hash(token), wanted.CheckpointName, wanted.RegionName, int(expires * 1e6)
    )
    log.info(
        "enrolment token made for checkpoint %s (region %s), valid until %s",
        wanted.CheckpointName,
        wanted.RegionName,
        iso(expires),
    )
    body = {
        "Token": token,
        "CheckpointName": wanted.CheckpointName,
        "RegionName": wanted.RegionName,
        "Expires": iso(expires),
    }
    return ok(body, status=201)


@routes.post(ENROL_PATH)
async def enrol(request: web.Request) -> web.Response:
    _enrolment_on(request)
    try:
        wanted = EnrolRequest.model_validate(await json_body(request))
    except ValidationError as exc:
        raise invalid(exc) from None
    ctl = controller(request)
    admin = ctl.broker_admin
    assert admin is not None
    hashed = token_hash(wanted.Token)
    # the checkpoint name is known only once the token is spent; the id is made first
    outcome, row = await ctl.store.peek_enrolment(hashed)
    if outcome != "ok":
        ctl.metrics.enrolments.labels(outcome).inc()
    if outcome == "unknown" or row is None:
        fail(401, "This enrolment token is not known", "Token")
    if outcome == "used":
        fail(409, "This enrolment token has already been used; ask for a new one", "Token")
    if outcome == "expired":
        fail(403, f"This enrolment token expired at {iso(row['expires_us'] / 1e6)}", "Token")
    agent_id = _agent_id(row["checkpoint_name"])
    outcome, row = await ctl.store.use_enrolment(hashed, agent_id, wanted.PublicKey)
    if outcome != "ok" or row is None:  # spent by a concurrent request meanwhile
        ctl.metrics.enrolments.labels("used").inc()
        fail(409, "This enrolment token has already been used; ask for a new one", "Token")
    password = secrets.token_urlsafe(32)
    try:
        await admin.create_agent_login(agent_id, password)
    except BrokerAdminError as exc:
        await ctl.store.release_enrolment(hashed)
        ctl.metrics.enrolments.labels("broker_failed").inc()
        log.error("enrolment of an agent for checkpoint %s failed: %s", row["checkpoint_name"], exc)
        raise ApiError(503, [(None, f"The broker did not make the agent's login: {exc}")]) from None
    ctl.metrics.enrolments.labels("ok").inc()
    log.info(
        "agent %s enrolled at checkpoint %s (region %s)",
        agent_id,
        row["checkpoint_name"],
        row["region_name"],
    )
    body = {
        "AgentId": agent_id,
        "CheckpointName": row["checkpoint_name"],
        "RegionName": row["region_name"],
        "BrokerUrl": ctl.settings.enrolled_agents_broker_url(),
        "MqttUsername": agent_id,
        "MqttPassword": password,
    }
    return ok(body, status=201)
