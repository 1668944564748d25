"""A small JSON/XML API on loopback for the multi-step API tests."""

from __future__ import annotations

from aiohttp import web

from tests.helpers import free_port


class ApiTarget:
    def __init__(self) -> None:
        self.port = free_port()
        self.flaky_failures = 2
        self.calls: dict[str, int] = {}
        self._runner: web.AppRunner | None = None

    @property
    def base(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def _count(self, request: web.Request) -> None:
        self.calls[request.path] = self.calls.get(request.path, 0) + 1

    async def _login(self, request: web.Request) -> web.Response:
        self._count(request)
        body = await request.json()
        if body.get("user") != "ada":
            return web.json_response({"error": "who?"}, status=403)
        response = web.json_response({"token": "tok-123", "user": {"id": 42, "name": "Ada"}})
        response.set_cookie("session", "s-1")
        return response

    async def _orders(self, request: web.Request) -> web.Response:
        self._count(request)
        if request.headers.get("Authorization") != "Bearer tok-123":
            return web.json_response({"error": "no token"}, status=401)
        return web.json_response(
            {"items": [{"id": 7, "total": 12.5}, {"id": 8, "total": None}], "count": 2}
        )

    async def _order(self, request: web.Request) -> web.Response:
        self._count(request)
        return web.json_response({"id": int(request.match_info["id"]), "state": "shipped"})

    async def _flaky(self, request: web.Request) -> web.Response:
        self._count(request)
        if self.calls[request.path] <= self.flaky_failures:
            return web.json_response({"ready": False}, status=503)
        return web.json_response({"ready": True})

    async def _whoami(self, request: web.Request) -> web.Response:
        self._count(request)
        return web.json_response({"session": request.cookies.get("session", "none")})

    async def _xml(self, request: web.Request) -> web.Response:
        self._count(request)
        return web.Response(
            text="<shop><order><id>7</id><state>open</state></order></shop>",
            content_type="application/xml",
        )

    async def start(self) -> None:
        app = web.Application()
        app.router.add_post("/login", self._login)
        app.router.add_get("/orders", self._orders)
        app.router.add_get("/orders/{id}", self._order)
        app.router.add_get("/flaky", self._flaky)
        app.router.add_get("/xml", self._xml)
        app.router.add_get("/whoami", self._whoami)
        self._runner = web.AppRunner(app, access_log=None)
        await self._runner.setup()
        await web.TCPSite(self._runner, "127.0.0.1", self.port).start()

    async def stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()
