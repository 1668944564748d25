"""What every resource shares: the runtime key, errors in Uptrends' shape, JSON helpers."""

from __future__ import annotations

import json
import uuid
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any, NoReturn

from aiohttp import web
from pydantic import ValidationError

from controller.auth import Principal
from shared import jsonin

if TYPE_CHECKING:
    from controller.app import Controller

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]
PREFIX = "/api/v4"
CONTROLLER: web.AppKey[Controller] = web.AppKey("controller")
PRINCIPAL: web.RequestKey[Principal] = web.RequestKey("principal", Principal)


class ApiError(Exception):
    """An error answered as `{"Messages": [{"Message": ..., "Field": ...}]}`."""

    def __init__(
        self,
        status: int,
        messages: list[tuple[str | None, str]],
        headers: dict[str, str] | None = None,
    ) -> None:
        super().__init__(messages[0][1] if messages else "")
        self.status = status
        self.messages = messages
        self.headers = headers or {}

    def response(self) -> web.Response:
        body = {"Messages": [{"Message": msg, "Field": field} for field, msg in self.messages]}
        headers = dict(self.headers)
        if self.status == 401:
            headers["WWW-Authenticate"] = 'Basic realm="Picket"'
        return web.json_response(body, status=self.status, headers=headers or None)


def fail(status: int, message: str, field: str | None = None) -> NoReturn:
    raise ApiError(status, [(field, message)])


def field_path(loc: tuple[int | str, ...]) -> str | None:
    path = ""
    for part in loc:
        if isinstance(part, int):
            path += f"[{part}]"
        else:
            path += ("." if path else "") + (part or '""')  # a field named "" is named so
    return path or None


def invalid(exc: ValidationError) -> ApiError:
    messages: list[tuple[str | None, str]] = []
    for error in exc.errors(include_url=False):
        loc = tuple(
            p for p in error["loc"] if not (isinstance(p, str) and p.startswith("function"))
        )
        field = field_path(loc)
        text = str(error["msg"]).removeprefix("Value error, ")
        if error["type"] == "extra_forbidden":
            text = "is not a known field"
        elif error["type"] == "missing":
            text = "is required"
        messages.append((field, f"{field}: {text}" if field else text))
    return ApiError(400, messages)


def controller(request: web.Request) -> Controller:
    return request.app[CONTROLLER]


def id_param(request: web.Request, name: str) -> int:
    """A whole-number id from the path; one no row can have (too many digits for int(), or
    beyond 64 bits) is a 404 naming the parameter, like any other unknown id."""
    text = request.match_info[name]
    try:
        ident = int(text)
    except ValueError:
        ident = -1
    if not 0 <= ident < 2**63:
        fail(404, f"{name}: no such id {text[:40]!r}", name)
    return ident


def principal(request: web.Request) -> Principal:
    try:
        return request[PRINCIPAL]
    except KeyError:
        fail(401, "Authentication required")


async def json_body(request: web.Request) -> dict[str, Any]:
    raw = await request.read()
    if not raw:
        fail(400, "The request body is empty; send a JSON object")
    try:
        body = jsonin.loads(raw, what="The request body is")
    except ValueError as exc:
        fail(400, str(exc))
    if not isinstance(body, dict):
        fail(400, "The request body must be a JSON object")
    found = jsonin.unstorable(body)
    if found is not None:
        where, problem = found
        fail(400, f"{where}: {problem}", where)
    return body


@web.middleware
async def refuse_unstorable_text(request: web.Request, handler: Handler) -> web.StreamResponse:
    """A NUL in a path segment or query parameter (`/Monitor/%00`) is refused here, for every
    endpoint, before it reaches a database that cannot compare it."""
    for name, value in [*request.match_info.items(), *request.query.items()]:
        problem = jsonin.problem_in(name) or jsonin.problem_in(value)
        if problem:
            where = ascii(name) if jsonin.problem_in(name) or not name else name
            fail(400, f"{where}: {problem}", where)
    return await handler(request)


def ok(data: Any, status: int = 200) -> web.Response:
    return web.json_response(data, status=status, dumps=lambda v: json.dumps(v, ensure_ascii=False))


def require_admin(request: web.Request, what: str) -> None:
    """Until the API's permissions: only members of Administrators manage `what`."""
    if not principal(request).is_admin:
        fail(403, f"Only a member of the Administrators group may manage {what}")


def path_guid(request: web.Request, name: str) -> str:
    """A guid from the path, lower-case; one that is no guid is a 404 like an unknown one."""
    text = request.match_info[name]
    try:
        return str(uuid.UUID(text))
    except ValueError:
        fail(404, f"{name}: no such id {text[:40]!r}", name)
