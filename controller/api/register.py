"""POST /Register: a new API account for the calling operator (Basic auth, operator login)."""

from __future__ import annotations

import secrets
import uuid

from aiohttp import web

from controller.api.common import PREFIX, controller, fail, ok, principal

routes = web.RouteTableDef()


@routes.post(PREFIX + "/Register")
async def register(request: web.Request) -> web.Response:
    who = principal(request)
    if not who.is_operator_login:
        fail(403, "Register needs an operator's own credentials, not an API account's")
    ctl = controller(request)
    description = request.query.get("description", "API")[:200] or "API"
    owner_guid = request.query.get("operatorGuid") or who.operator_guid
    # permission before existence: a non-administrator learns nothing about other operators
    if owner_guid != who.operator_guid and not who.is_admin:
        fail(403, "Only an administrator may register an API account for another operator")
    owner = await ctl.store.operator_by_guid(owner_guid)
    if owner is None:
        fail(404, f"Operator {owner_guid} not found", "operatorGuid")
    username = uuid.uuid4().hex
    password = secrets.token_urlsafe(24)
    password_hash = await ctl.auth.checker.hash(password)  # off the event loop
    await ctl.store.create_api_account(username, password_hash, owner_guid, description)
    return ok(
        {
            "UserName": username,
            "Password": password,
            "AccountId": "1",
            "OperatorName": owner["full_name"],
            "status": "OK",
            "message": None,
        },
        status=201,
    )
