"""What every resource shares: the runtime key, errors in Uptrends' shape, JSON helpers."""

from __future__ import annotations

import json
from typing import TYPE_CHECKING, Any, NoReturn

from aiohttp import web
from pydantic import ValidationError

from controller.auth import Principal

if TYPE_CHECKING:
    from controller.app import Controller

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
            path += ("." if path else "") + part
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
        body = json.loads(raw)
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        fail(400, f"The request body is not valid JSON: {exc}")
    if not isinstance(body, dict):
        fail(400, "The request body must be a JSON object")
    where = _nul_in(body)
    if where is not None:
        fail(400, f"{where}: must not contain NUL characters", where)
    return body


def _nul_in(value: Any, path: str = "") -> str | None:
    """The path of the first string holding a NUL character (no database stores it as text)."""
    if isinstance(value, str):
        return (path or "body") if "\x00" in value else None
    if isinstance(value, dict):
        for key, item in value.items():
            found = _nul_in(item, f"{path}.{key}" if path else str(key))
            if found is not None:
                return found
    elif isinstance(value, list):
        for index, item in enumerate(value):
            found = _nul_in(item, f"{path}[{index}]")
            if found is not None:
                return found
    return None


def ok(data: Any, status: int = 200) -> web.Response:
    return web.json_response(data, status=status, dumps=lambda v: json.dumps(v, ensure_ascii=False))
