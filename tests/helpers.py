"""Shared test machinery: free ports, condition polling, real servers and processes."""

from __future__ import annotations

import asyncio
import base64
import contextlib
import glob
import hashlib
import os
import random
import re
import signal
import socket
import ssl
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any, TypeVar

import aiohttp
from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer

from controller.app import Controller, create_app
from controller.db.store import Store
from controller.settings import ControllerSettings

T = TypeVar("T")
REPO = Path(__file__).resolve().parent.parent


_HANDED_OUT: set[int] = set()


def free_port() -> int:
    """A free loopback port below the kernel's ephemeral range, so that no outgoing connection
    can take it between this check and the child process binding it; never one this process
    handed out before (two fixtures could otherwise be given the same port, both unbound yet)."""
    low, _high = (
        int(x) for x in Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()
    )
    for _ in range(200):
        port = random.randrange(20_000, min(low, 32_768))
        if port in _HANDED_OUT:
            continue
        with socket.socket() as probe:
            try:
                probe.bind(("127.0.0.1", port))
            except OSError:
                continue
            _HANDED_OUT.add(port)
            return port
    raise RuntimeError("no free loopback port found")


def http_monitor(name: str, url: str, **fields: Any) -> dict[str, Any]:
    """An HTTP monitor's definition, checked every second unless `fields` say otherwise."""
    return {"Name": name, "MonitorType": "Http", "Url": url, "CheckIntervalSeconds": 1, **fields}


async def wait_for(
    probe: Callable[[], Awaitable[T | None]],
    what: str,
    within: float = 60.0,
    interval: float = 0.2,
) -> T:
    """Poll until `probe` returns something truthy; fail naming `what` after `within` seconds."""
    deadline = time.monotonic() + within
    last_error: Exception | None = None
    while time.monotonic() < deadline:
        try:
            value = await probe()
            if value:
                return value
        except (aiohttp.ClientError, OSError) as exc:
            last_error = exc
        await asyncio.sleep(interval)
    raise AssertionError(f"timed out after {within}s waiting for {what} (last error: {last_error})")


def dynsec_plugin() -> str | None:
    """Mosquitto's dynamic-security plugin (Debian's mosquitto 2.0 ships it), if installed."""
    for pattern in (
        "/usr/lib/*/mosquitto_dynamic_security.so",
        "/usr/lib/mosquitto_dynamic_security.so",
        "/usr/local/lib/mosquitto_dynamic_security.so",
    ):
        found = sorted(glob.glob(pattern))
        if found:
            return found[0]
    return None


class Mosquitto:
    """A private mosquitto on a free port, with its own config, ACL file and data dir."""

    def __init__(
        self,
        workdir: Path,
        acl: str | None = None,
        users: dict[str, str] | None = None,
        dynsec_admin: tuple[str, str] | None = None,
        host: str = "127.0.0.1",
    ) -> None:
        """Anonymous access to picket/v1/# by default; with `users`, only those logins, and
        `acl` (the text of an ACL file) deciding who may touch which topic; with
        `dynsec_admin` (user, password), the dynamic-security plugin decides, with that
        login as its administrator and no other. It listens on `host` (a loopback address,
        or one of a network the test made: tests/netns.py)."""
        self.dir = workdir
        self.host = host
        self.dir.mkdir(parents=True, exist_ok=True)
        self.port = free_port()
        self.proc: subprocess.Popen[bytes] | None = None
        acl_file = self.dir / "acl"
        acl_file.write_text(acl or "topic readwrite picket/v1/#\n")
        auth = ["allow_anonymous true", f"acl_file {acl_file}"]
        if dynsec_admin:
            plugin = dynsec_plugin()
            state = self.dir / "dynamic-security.json"
            subprocess.run(
                ["mosquitto_ctrl", "dynsec", "init", str(state), *dynsec_admin],
                check=True,
                capture_output=True,
            )
            auth = [
                "allow_anonymous false",
                f"plugin {plugin}",
                f"plugin_opt_config_file {state}",
            ]
        elif users:
            passwd = self.dir / "passwd"
            passwd.touch(mode=0o600)
            for user, password in users.items():
                subprocess.run(["mosquitto_passwd", "-b", str(passwd), user, password], check=True)
            auth = ["allow_anonymous false", f"password_file {passwd}", f"acl_file {acl_file}"]
        lines = [
            f"listener {self.port} {host}",
            *auth,
            "persistence true",
            f"persistence_location {self.dir}/",
            f"log_dest file {self.dir / 'mosquitto.log'}",
            "log_type error",
            "log_type warning",
        ]
        if os.geteuid() == 0:
            lines.append("user root")
        self.config = self.dir / "mosquitto.conf"
        self.config.write_text("\n".join(lines) + "\n")

    @property
    def url(self) -> str:
        return f"mqtt://{self.host}:{self.port}"

    def login_url(self, user: str, password: str) -> str:
        return f"mqtt://{user}:{password}@{self.host}:{self.port}"

    def start(self) -> None:
        binary = "/usr/sbin/mosquitto" if os.path.exists("/usr/sbin/mosquitto") else "mosquitto"
        self.proc = subprocess.Popen(
            [binary, "-c", str(self.config)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
        )
        deadline = time.monotonic() + 15
        while time.monotonic() < deadline:
            try:
                socket.create_connection((self.host, self.port), timeout=0.5).close()
                return
            except OSError:
                if self.proc.poll() is not None:
                    raise RuntimeError(f"mosquitto exited: {self.log()}") from None
                time.sleep(0.05)
        raise RuntimeError("mosquitto did not listen in 15s")

    def kill(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()

    def log(self) -> str:
        path = self.dir / "mosquitto.log"
        return path.read_text() if path.exists() else ""


class Proxy:
    """A TCP relay the test can cut and restore: a network partition between two processes."""

    def __init__(self, upstream_port: int) -> None:
        self.port = free_port()
        self.upstream_port = upstream_port
        self._server: asyncio.Server | None = None
        self._writers: set[asyncio.StreamWriter] = set()

    @property
    def url(self) -> str:
        return f"mqtt://127.0.0.1:{self.port}"

    async def start(self) -> None:
        self._server = await asyncio.start_server(self._relay, "127.0.0.1", self.port)

    async def cut(self) -> None:
        """Refuse new connections and drop the open ones."""
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()
            self._server = None
        for writer in list(self._writers):
            writer.transport.abort()
        self._writers.clear()

    async def _relay(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            up_reader, up_writer = await asyncio.open_connection("127.0.0.1", self.upstream_port)
        except OSError:
            writer.transport.abort()
            return
        self._writers.update({writer, up_writer})

        async def pipe(src: asyncio.StreamReader, dst: asyncio.StreamWriter) -> None:
            try:
                while data := await src.read(65536):
                    dst.write(data)
                    await dst.drain()
            except (ConnectionError, asyncio.IncompleteReadError):
                pass
            finally:
                dst.transport.abort()

        await asyncio.gather(pipe(reader, up_writer), pipe(up_reader, writer))
        self._writers.difference_update({writer, up_writer})


class Process:
    """A `picket ...` child with its output in a file, stopped with SIGTERM; `prefix` runs it
    through a command that then executes it (`ip netns exec NAME`: tests/netns.py)."""

    def __init__(
        self,
        name: str,
        args: list[str],
        env: dict[str, str],
        workdir: Path,
        prefix: list[str] | None = None,
    ) -> None:
        self.name = name
        self.log_path = workdir / f"{name}.log"
        full_env = {k: v for k, v in os.environ.items() if not k.startswith("PICKET_")}
        full_env.update(env)
        full_env["PYTHONUNBUFFERED"] = "1"
        self._log = open(self.log_path, "wb")  # noqa: SIM115 - closed in stop()
        self.proc = subprocess.Popen(
            [*(prefix or []), sys.executable, "-m", "shared.cli", *args],
            env=full_env,
            cwd=REPO,
            stdout=self._log,
            stderr=subprocess.STDOUT,
        )

    def output(self) -> str:
        return self.log_path.read_text(errors="replace")

    def stop(self, timeout: float = 30) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self._log.close()
        return int(self.proc.returncode)


class Target:
    """A real HTTP server on loopback: /ok, /slow?ms=N (delay before the response), /status/N,
    /redirect/N (N hops, then /ok), /big?bytes=N."""

    def __init__(self) -> None:
        self.port = free_port()
        self.hits = 0
        self.scheme = "http"
        self._runner: web.AppRunner | None = None

    @property
    def base(self) -> str:
        return f"{self.scheme}://127.0.0.1:{self.port}"

    async def _ok(self, request: web.Request) -> web.Response:
        self.hits += 1
        return web.Response(text="all good: picket-target\n")

    async def _slow(self, request: web.Request) -> web.Response:
        self.hits += 1
        await asyncio.sleep(int(request.query.get("ms", "100")) / 1000)
        return web.Response(text="slow but good\n")

    async def _status(self, request: web.Request) -> web.Response:
        self.hits += 1
        return web.Response(status=int(request.match_info["code"]), text="scripted status\n")

    async def _redirect(self, request: web.Request) -> web.Response:
        self.hits += 1
        hops = int(request.match_info["hops"])
        raise web.HTTPFound("/ok" if hops <= 1 else f"/redirect/{hops - 1}")

    async def _goto(self, request: web.Request) -> web.Response:
        self.hits += 1
        raise web.HTTPFound(request.query["url"])

    async def _big(self, request: web.Request) -> web.Response:
        self.hits += 1
        return web.Response(body=b"x" * int(request.query.get("bytes", "100000")))

    async def _basic(self, request: web.Request) -> web.Response:
        self.hits += 1
        expected = "Basic " + base64.b64encode(b"alice:wonder land").decode()
        if request.headers.get("Authorization") != expected:
            raise web.HTTPUnauthorized(headers={"WWW-Authenticate": 'Basic realm="t"'})
        return web.Response(text="welcome alice\n")

    async def _digest(self, request: web.Request) -> web.Response:
        """RFC 7616 Digest (MD5, qop=auth) for user bob, password 'b0b'."""
        self.hits += 1
        header = request.headers.get("Authorization", "")
        params = {
            m.group(1): m.group(2) if m.group(2) is not None else m.group(3)
            for m in re.finditer(r'(\w+)=(?:"([^"]*)"|([^,\s]*))', header)
        }
        if header.startswith("Digest ") and params.get("username") == "bob":

            def md5(text: str) -> str:
                return hashlib.md5(text.encode()).hexdigest()

            ha1 = md5("bob:picket:b0b")
            ha2 = md5(f"{request.method}:{params.get('uri', '')}")
            expected = md5(
                f"{ha1}:{params.get('nonce')}:{params.get('nc')}:{params.get('cnonce')}:auth:{ha2}"
            )
            if params.get("response") == expected:
                return web.Response(text="welcome bob\n")
        challenge = 'Digest realm="picket", qop="auth", nonce="0123456789abcdef", algorithm=MD5'
        raise web.HTTPUnauthorized(headers={"WWW-Authenticate": challenge})

    async def _echo(self, request: web.Request) -> web.Response:
        self.hits += 1
        peer = request.transport.get_extra_info("peercert") if request.transport else None
        subject = dict(x[0] for x in peer["subject"]) if peer else {}
        return web.json_response(
            {
                "method": request.method,
                "headers": dict(request.headers),
                "body": (await request.read()).decode(errors="replace"),
                "client_cn": subject.get("commonName"),
                "version": f"{request.version.major}.{request.version.minor}",
            }
        )

    async def start(self, ssl_context: ssl.SSLContext | None = None) -> None:
        app = web.Application()
        app.router.add_get("/basic", self._basic)
        app.router.add_get("/digest", self._digest)
        app.router.add_route("*", "/echo", self._echo)
        app.router.add_get("/redirect/{hops}", self._redirect)
        app.router.add_get("/goto", self._goto)
        app.router.add_get("/big", self._big)
        app.router.add_get("/ok", self._ok)
        app.router.add_get("/slow", self._slow)
        app.router.add_get("/status/{code}", self._status)
        self._runner = web.AppRunner(app, access_log=None)
        await self._runner.setup()
        await web.TCPSite(self._runner, "127.0.0.1", self.port, ssl_context=ssl_context).start()
        self.scheme = "https" if ssl_context else "http"

    async def stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None


class Api:
    def __init__(self, session: aiohttp.ClientSession, base: str, user: str, password: str) -> None:
        self.session = session
        self.base = base
        token = base64.b64encode(f"{user}:{password}".encode()).decode()
        self.headers = {"Authorization": f"Basic {token}"}

    async def call(self, method: str, path: str, **kwargs: Any) -> tuple[int, Any]:
        kwargs["headers"] = {**self.headers, **kwargs.get("headers", {})}
        async with self.session.request(method, self.base + path, **kwargs) as resp:
            text = await resp.text()
            if resp.content_type == "application/json" and text:
                return resp.status, await resp.json()
            return resp.status, text

    async def create_monitor(self, definition: dict[str, Any]) -> str:
        """POST /Monitor; the new monitor's guid."""
        status, body = await self.call("POST", "/api/v4/Monitor", json=definition)
        assert status == 201, body
        return str(body["MonitorGuid"])

    async def checks(self, guid: str, **params: str) -> list[dict[str, Any]]:
        """Every stored check of a monitor, oldest first, following the cursors."""
        found: list[dict[str, Any]] = []
        query = {"Take": "100", "Sorting": "Ascending", "PresetPeriod": "All", **params}
        while True:
            status, body = await self.call(
                "GET", f"/api/v4/MonitorCheck/Monitor/{guid}", params=query
            )
            assert status == 200, body
            found.extend(body["Data"])
            if not body["Data"] or "Next" not in body["Cursors"]:
                return found
            query["Cursor"] = body["Cursors"]["Next"]


async def scrape(session: aiohttp.ClientSession, url: str) -> dict[str, float]:
    """A Prometheus text page as {'name{labels}': value}."""
    async with session.get(url) as resp:
        text = await resp.text()
    values: dict[str, float] = {}
    for line in text.splitlines():
        if line and not line.startswith("#"):
            name, _, value = line.rpartition(" ")
            values[name] = float(value)
    return values


@contextlib.asynccontextmanager
async def controller_client(
    tmp_path: Path, admin_password: str, **settings: Any
) -> AsyncIterator[tuple[TestClient[Any, Any], Controller]]:
    """The controller's API app on a test server over loopback, with its store (SQLite in
    tmp_path unless `database_url` is given) and a broker URL where nobody listens (its
    publishes are refused), and the Controller behind it."""
    config = ControllerSettings(
        data_dir=tmp_path,
        admin_password=admin_password,
        **{"broker_url": f"mqtt://127.0.0.1:{free_port()}", **settings},
    )
    store = await Store.open(config.resolved_database_url())
    ctl = Controller(config, store)
    try:
        async with TestClient(TestServer(create_app(ctl))) as client:
            yield client, ctl
    finally:
        await store.close()


@contextlib.asynccontextmanager
async def controller_parts(
    database_url: str, broker: Mosquitto, tmp_path: Path
) -> AsyncIterator[Controller]:
    """A controller's parts on a real broker and database, without its API: the assigner
    loaded and the bus connected."""
    store = await Store.open(database_url)
    controller = Controller(ControllerSettings(broker_url=broker.url, data_dir=tmp_path), store)
    await controller.assigner.load()
    bus = asyncio.create_task(controller.bus.run())
    try:
        await asyncio.wait_for(controller.bus.session.connected.wait(), 30)
        yield controller
    finally:
        bus.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await bus
        await store.close()
