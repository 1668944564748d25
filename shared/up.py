"""`picket up`: a private MQTT broker, the controller and one local agent as child processes
(so they use both cores), supervised: a child that dies is named, with its own last output,
and started again after a pause that doubles on each quick failure; only `restart_limit`
failures of one child within `restart_window_seconds` stop everything (exit 1). A signal
stops them in order (agent first, so it writes its unsent results to its outbox)."""

from __future__ import annotations

import asyncio
import collections
import contextlib
import ctypes
import logging
import os
import shutil
import signal
import socket
import sys
import time
from pathlib import Path
from typing import Literal

from pydantic import Field

from shared.settings import ListenAddress, PicketSettings, parse_listen
from shared.signals import stop_event
from shared.tasks import cancel_and_wait

log = logging.getLogger("picket.up")


class UpSettings(PicketSettings):
    embedded_broker: Literal["auto", "mosquitto", "amqtt"] = "auto"
    embedded_broker_listen: ListenAddress = "127.0.0.1:18830"
    api_listen: ListenAddress = "127.0.0.1:8080"
    metrics_listen: ListenAddress = "127.0.0.1:9465"
    admin_password: str = ""
    restart_limit: int = Field(default=5, ge=1)
    restart_window_seconds: float = Field(default=60.0, gt=0)


RESTART_PAUSE_FIRST = 0.5
RESTART_PAUSE_MAX = 30.0
LAST_LINES = 5  # of a dead child's own output, in the log
LINE_LIMIT = 2**16  # asyncio's default for a child's output line


class GaveUp(Exception):
    pass


def _die_with_parent() -> None:
    """Children get SIGTERM if `picket up` itself is killed (Linux)."""
    with contextlib.suppress(OSError):
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG


def mosquitto_config(broker_dir: Path, host: str, port: int) -> Path:
    broker_dir.mkdir(parents=True, exist_ok=True)
    lines = [
        f"listener {port} {host}",
        "allow_anonymous true",
        "persistence true",
        f"persistence_location {broker_dir}/",
        "log_dest stderr",
        "log_type error",
        "log_type warning",
        "log_type notice",
    ]
    if os.geteuid() == 0:
        # mosquitto drops root to user `mosquitto`, which could not write our data dir
        lines.append("user root")
    path = broker_dir / "mosquitto.conf"
    path.write_text("\n".join(lines) + "\n")
    return path


class Child:
    def __init__(self, name: str, argv: list[str], env: dict[str, str]) -> None:
        self.name = name
        self.argv = argv
        self.env = env
        self.proc: asyncio.subprocess.Process | None = None
        self.tail: collections.deque[str] = collections.deque(maxlen=15)
        self._pump: asyncio.Task[None] | None = None
        self.started_at = 0.0

    async def start(self) -> None:
        self.tail.clear()  # what `why` shows is this run's own output
        self.started_at = time.monotonic()
        self.proc = await asyncio.create_subprocess_exec(
            *self.argv,
            env=self.env,
            stdin=asyncio.subprocess.DEVNULL,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.STDOUT,
            limit=LINE_LIMIT,
            start_new_session=True,  # a terminal's Ctrl-C reaches `picket up` only
            preexec_fn=_die_with_parent,
        )
        self._pump = asyncio.create_task(self._forward(self.proc), name=f"{self.name}-output")

    async def _forward(self, proc: asyncio.subprocess.Process) -> None:
        assert proc.stdout is not None
        while True:
            try:
                raw = await proc.stdout.readline()
            except ValueError:
                # a line over the stream's limit (64 KiB): asyncio has dropped it; go on, or
                # the child would block on a full pipe and this supervisor would die with it
                raw = f"(a line of more than {LINE_LIMIT} bytes left out)".encode()
            if not raw:
                return
            line = raw.decode(errors="replace").rstrip()
            self.tail.append(line)
            sys.stderr.write(f"[{self.name}] {line}\n")

    async def wait(self) -> int:
        assert self.proc is not None
        code = await self.proc.wait()
        pump = self._pump
        if pump is not None:
            # its last lines; a grandchild still holding the pipe must not keep us waiting
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(asyncio.shield(pump), 5)
            pump.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await pump
        return code

    async def stop(self, grace: float = 15.0) -> None:
        if self.proc is None or self.proc.returncode is not None:
            return
        self.proc.send_signal(signal.SIGTERM)
        try:
            await asyncio.wait_for(self.wait(), grace)
        except TimeoutError:
            log.warning("%s did not stop in %.0fs; killing it", self.name, grace)
            self.proc.kill()
            await self.wait()

    def why(self, code: int) -> str:
        how = f"was killed by signal {-code}" if code < 0 else f"exited with code {code}"
        last = [line for line in self.tail if line.strip()][-LAST_LINES:]
        if not last:
            return f"{how} without a word"
        return f"{how}; its last output:\n" + "\n".join(f"  [{self.name}] {x}" for x in last)

    async def keep(self, stop: asyncio.Event, limit: int, window: float) -> None:
        """Start the child again whenever it dies, until `stop`; raises GaveUp after `limit`
        deaths within `window` seconds."""
        deaths: collections.deque[float] = collections.deque()
        pause = RESTART_PAUSE_FIRST
        why = self.why(await self.wait())
        while not stop.is_set():
            now = time.monotonic()
            deaths.append(now)
            while deaths and now - deaths[0] > window:
                deaths.popleft()
            if len(deaths) >= limit:
                log.error(
                    "the %s %s\nit failed %d times within %gs; stopping the rest",
                    self.name,
                    why,
                    len(deaths),
                    window,
                )
                raise GaveUp(self.name)
            if now - self.started_at > window:
                pause = RESTART_PAUSE_FIRST  # it ran a good while: not a crash loop
            log.error("the %s %s\nrestarting the %s in %.1fs", self.name, why, self.name, pause)
            with contextlib.suppress(TimeoutError):  # a stop ends the pause
                await asyncio.wait_for(stop.wait(), pause)
            if stop.is_set():
                return
            pause = min(RESTART_PAUSE_MAX, pause * 2)
            try:
                await self.start()
            except OSError as exc:  # e.g. no memory to fork: a death like any other
                why = f"could not be started: {exc}"
                continue
            assert self.proc is not None
            log.info("the %s is running again (pid %d)", self.name, self.proc.pid)
            why = self.why(await self.wait())


async def _wait_for_port(host: str, port: int, child: Child | None, deadline: float) -> bool:
    """True once the port accepts; False at the deadline, or if `child` ends first."""
    while time.monotonic() < deadline:
        if child is not None and child.proc is not None and child.proc.returncode is not None:
            return False
        try:
            with socket.create_connection((host, port), timeout=0.5):
                return True
        except OSError:
            await asyncio.sleep(0.1)
    return False


async def _api_answers(host: str, port: int, deadline: float) -> bool:
    """True once the controller's own index answers on its API port (another program
    listening there is not Picket); False at the deadline."""
    while time.monotonic() < deadline:
        try:
            reader, writer = await asyncio.wait_for(asyncio.open_connection(host, port), 2)
            try:
                writer.write(f"GET / HTTP/1.0\r\nHost: {host}\r\n\r\n".encode())
                answer = await asyncio.wait_for(reader.read(4096), 2)
            finally:
                writer.close()
            if b'"Name": "Picket"' in answer:
                return True
        except (OSError, TimeoutError):
            pass
        await asyncio.sleep(0.2)
    return False


def find_mosquitto() -> str | None:
    # Debian installs it in /usr/sbin, which is not on every user's PATH
    return shutil.which("mosquitto") or shutil.which("mosquitto", path="/usr/sbin:/usr/local/sbin")


def child_environments(
    settings: UpSettings, data_dir: Path, host: str, port: int
) -> tuple[dict[str, str], dict[str, str]]:
    """The environment of the broker and the agent, and the controller's: only the controller
    is given the admin password (a secret goes where it is needed, nowhere else)."""
    env = dict(os.environ)
    env.pop("PICKET_ADMIN_PASSWORD", None)
    broker_host = f"[{host}]" if ":" in host else host
    env.update(
        {
            "PICKET_DATA_DIR": str(data_dir),
            "PICKET_BROKER_URL": f"mqtt://{broker_host}:{port}",
            "PICKET_API_LISTEN": settings.api_listen,
            "PICKET_METRICS_LISTEN": settings.metrics_listen,
            "PYTHONUNBUFFERED": "1",
        }
    )
    # the embedded agent takes checks at once (a production controller lists a new server's
    # addresses for a day first, see docs/operations.md)
    env.setdefault("PICKET_SERVER_ACTIVATION_SECONDS", "0")
    env.setdefault("PICKET_AGENT_ID", "local")
    env.setdefault("PICKET_CHECKPOINT", "Local")
    env.setdefault("PICKET_REGION", "Local")
    controller_env = dict(env)
    if settings.admin_password:
        controller_env["PICKET_ADMIN_PASSWORD"] = settings.admin_password
    return env, controller_env


async def supervise(settings: UpSettings) -> int:
    data_dir = settings.data_dir.resolve()
    try:
        data_dir.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        log.error("cannot use the data directory %s: %s; exiting", data_dir, exc)
        return 1
    host, port = parse_listen(settings.embedded_broker_listen, 18830)
    kind = settings.embedded_broker
    mosquitto = find_mosquitto()
    if kind == "auto":
        kind = "mosquitto" if mosquitto else "amqtt"
    if kind == "mosquitto" and not mosquitto:
        log.error("PICKET_EMBEDDED_BROKER=mosquitto but no mosquitto binary is installed")
        return 2
    env, controller_env = child_environments(settings, data_dir, host, port)
    if kind == "mosquitto":
        assert mosquitto is not None
        try:
            config = mosquitto_config(data_dir / "broker", host, port)
        except OSError as exc:
            log.error("cannot write the broker's files in %s: %s; exiting", data_dir, exc)
            return 1
        broker = Child("broker", [mosquitto, "-c", str(config)], env)
    else:
        argv = [sys.executable, "-m", "controller.embedded_broker", settings.embedded_broker_listen]
        broker = Child("broker", argv, env)
    controller = Child(
        "controller", [sys.executable, "-m", "shared.cli", "controller"], controller_env
    )
    agent = Child("agent", [sys.executable, "-m", "shared.cli", "agent"], env)
    children = [broker, controller, agent]

    stop = stop_event()

    log.info("starting %s broker on %s:%d", kind, host, port)
    await broker.start()
    if not await _wait_for_port(host, port, broker, time.monotonic() + 15):
        code = broker.proc.returncode if broker.proc else None
        log.error("the broker did not start: %s", broker.why(code) if code is not None else "")
        await broker.stop()
        return 1
    await controller.start()
    await agent.start()
    keepers = {
        asyncio.create_task(
            c.keep(stop, settings.restart_limit, settings.restart_window_seconds),
            name=f"keep-{c.name}",
        ): c
        for c in children
    }
    api_host, api_port = parse_listen(settings.api_listen, 8080)
    m_host, m_port = parse_listen(settings.metrics_listen, 9465)
    password_note = (
        "set by PICKET_ADMIN_PASSWORD"
        if settings.admin_password
        else f"in {data_dir / 'initial-admin-password'}"
    )
    # the controller answers on its API port once migrated and its admin exists: only then is
    # Picket up (a newcomer's next step reads the password file)
    stopper = asyncio.create_task(_until(stop))  # a Ctrl-C meanwhile is not kept waiting
    answering = asyncio.create_task(_api_answers(api_host, api_port, time.monotonic() + 60))
    await asyncio.wait([stopper, answering, *keepers], return_when=asyncio.FIRST_COMPLETED)
    answering.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await answering
    if not answering.cancelled() and answering.result():
        log.info(
            "Picket is up. API: http://%s:%d/api/v4  controller metrics: http://%s:%d/metrics  "
            "agent metrics: http://%s:%d/metrics  operator 'admin', password %s",
            api_host,
            api_port,
            api_host,
            api_port,
            m_host,
            m_port,
            password_note,
        )
    elif not stop.is_set() and not any(k.done() for k in keepers):
        log.warning("the controller's API does not answer on %s:%d yet", api_host, api_port)

    done, _ = await asyncio.wait([stopper, *keepers], return_when=asyncio.FIRST_COMPLETED)
    status = 0
    for task in done:
        if task is stopper or task.cancelled() or task.exception() is None:
            continue
        status = 1
        if not isinstance(task.exception(), GaveUp):
            log.error("supervising the %s failed: %r", keepers[task].name, task.exception())
    if status == 0:
        log.info("stopping: agent, controller, broker")
    stop.set()  # the keepers start nothing from here on
    await cancel_and_wait(keepers)
    for child in (agent, controller, broker):
        await child.stop()
    stopper.cancel()
    log.info("stopped")
    return status


async def _until(event: asyncio.Event) -> None:
    await event.wait()


def main(settings: UpSettings) -> int:
    return asyncio.run(supervise(settings))
