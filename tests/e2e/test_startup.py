"""A process that cannot reach what it needs says so in one line (password masked) and how it
proceeds; one whose background loop dies exits non-zero with the cause in its log."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import aiohttp
import pytest

from tests.helpers import REPO, free_port, wait_for

pytestmark = pytest.mark.e2e

SECRET = "pw-never-shown-4711"


def _env(tmp_path: Path, **settings: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("PICKET_")}
    env.update(
        {
            "PYTHONUNBUFFERED": "1",
            "PICKET_DATA_DIR": str(tmp_path / "data"),
            "PICKET_API_LISTEN": f"127.0.0.1:{free_port()}",
            "PICKET_METRICS_LISTEN": f"127.0.0.1:{free_port()}",
            "PICKET_ADMIN_PASSWORD": "startup-test-admin",
            **settings,
        }
    )
    return env


def _run(argv: list[str], env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(argv, cwd=REPO, env=env, capture_output=True, text=True, timeout=120)


def test_controller_without_its_database_says_so_and_exits(tmp_path: Path) -> None:
    port = free_port()  # nobody listens there
    url = f"postgresql://picket:{SECRET}@127.0.0.1:{port}/picket"
    env = _env(tmp_path, PICKET_DATABASE_URL=url, PICKET_DATABASE_WAIT_SECONDS="2")
    result = _run([sys.executable, "-m", "shared.cli", "controller"], env)
    assert result.returncode == 1, result.stderr
    err = result.stderr
    assert "Traceback" not in err, err
    assert SECRET not in err, err
    shown = f"postgresql+asyncpg://picket:***@127.0.0.1:{port}/picket"
    assert f"cannot reach the database at {shown}" in err, err
    assert "retrying with backoff" in err, err
    last = err.strip().splitlines()[-1]
    assert last.startswith("controller: cannot reach the database") and "gave up after 2s" in last


@pytest.mark.parametrize("port", ["port", "99999999"])
def test_controller_with_an_invalid_database_url_says_so(port: str, tmp_path: Path) -> None:
    url = f"postgresql://picket:{SECRET}@127.0.0.1:{port}/picket"
    env = _env(tmp_path, PICKET_DATABASE_URL=url, PICKET_DATABASE_WAIT_SECONDS="0")
    result = _run([sys.executable, "-m", "shared.cli", "controller"], env)
    assert result.returncode == 1, result.stderr
    assert "Traceback" not in result.stderr, result.stderr
    assert SECRET not in result.stderr, result.stderr
    assert result.stderr.strip().splitlines()[-1].startswith("controller: "), result.stderr


def test_controller_with_an_unusable_database_file_exits(tmp_path: Path) -> None:
    blocker = tmp_path / "not-a-directory"
    blocker.write_text("")
    url = f"sqlite:///{blocker}/picket.db"
    env = _env(tmp_path, PICKET_DATABASE_URL=url, PICKET_DATABASE_WAIT_SECONDS="0")
    result = _run([sys.executable, "-m", "shared.cli", "controller"], env)
    assert result.returncode == 1, result.stderr
    assert "Traceback" not in result.stderr, result.stderr
    assert f"cannot reach the database at sqlite+aiosqlite:///{blocker}/picket.db" in (
        result.stderr
    )


def test_controller_that_cannot_write_the_admin_password_exits_first(
    database_url: str, tmp_path: Path
) -> None:
    """The generated password is written before operator `admin` exists: a data directory
    that refuses it is one line and exit 1, and no admin is left with a password nobody
    knows (the next start, fixed, writes one)."""
    blocker = tmp_path / "file"
    blocker.write_text("")
    env = _env(tmp_path, PICKET_DATABASE_URL=database_url, PICKET_DATA_DIR=str(blocker / "d"))
    env["PICKET_BROKER_URL"] = f"mqtt://127.0.0.1:{free_port()}"
    del env["PICKET_ADMIN_PASSWORD"]
    result = _run([sys.executable, "-m", "shared.cli", "controller"], env)
    assert result.returncode == 1, result.stderr
    assert "Traceback" not in result.stderr, result.stderr
    last = result.stderr.strip().splitlines()[-1]
    assert last.startswith("controller: cannot write the initial admin password"), last
    env["PICKET_DATA_DIR"] = str(tmp_path / "data")
    proc = subprocess.Popen(
        [sys.executable, "-m", "shared.cli", "controller"], cwd=REPO, env=env, text=True
    )
    try:
        password_file = tmp_path / "data" / "initial-admin-password"
        deadline = time.monotonic() + 60
        while not password_file.exists() and time.monotonic() < deadline:
            assert proc.poll() is None
            time.sleep(0.1)  # a plain process to watch: polling its output file
        assert password_file.read_text().strip()
    finally:
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(60) == 0


def test_agent_with_an_unusable_data_dir_exits(tmp_path: Path) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("")
    env = _env(tmp_path, PICKET_DATA_DIR=str(blocker), PICKET_AGENT_ID="a1")
    env["PICKET_BROKER_URL"] = f"mqtt://127.0.0.1:{free_port()}"
    result = _run([sys.executable, "-m", "shared.cli", "agent"], env)
    assert result.returncode == 1, result.stderr
    assert "Traceback" not in result.stderr, result.stderr
    assert (
        result.stderr.strip()
        .splitlines()[-1]
        .startswith(f"agent a1: cannot use the data directory {blocker}")
    )


_IDENTITY = {
    "agent_id": "ams-1",
    "checkpoint": "Amsterdam",
    "region": "Europe",
    "broker_url": f"mqtt://ams-1:{SECRET}@127.0.0.1:1",
}


def _identity_case(case: str, path: Path) -> str:
    """Make `path` (the agent's identity.json) unusable in one way; the reason expected."""
    if case == "permission":
        path.write_text(json.dumps(_IDENTITY))
        path.chmod(0)
        return "cannot read " + str(path) + ": Permission denied"
    if case == "symlink loop":
        path.symlink_to(path)
        return "cannot read " + str(path) + ": Too many levels of symbolic links"
    if case == "directory":
        path.mkdir()
        return "cannot read " + str(path) + ": Is a directory"
    if case == "bad JSON":
        path.write_text(json.dumps(_IDENTITY)[:-20])  # cut short, in the broker URL's password
        return str(path) + " is not JSON ("
    if case == "not an object":
        path.write_text("[]")
        return str(path) + " is not a JSON object"
    assert case == "missing field"
    path.write_text(json.dumps({k: v for k, v in _IDENTITY.items() if k != "checkpoint"}))
    return str(path) + " lacks checkpoint"


@pytest.mark.parametrize(
    "case",
    ["permission", "symlink loop", "directory", "bad JSON", "not an object", "missing field"],
)
def test_an_unusable_identity_file_is_named_with_the_reason(case: str, tmp_path: Path) -> None:
    if case == "permission" and os.geteuid() == 0:
        pytest.skip("root reads a file of mode 0 (the symlink-loop case covers the same path)")
    data = tmp_path / "data"
    data.mkdir()
    expected = _identity_case(case, data / "identity.json")
    env = _env(tmp_path)
    env["PICKET_BROKER_URL"] = f"mqtt://127.0.0.1:{free_port()}"
    result = _run([sys.executable, "-m", "shared.cli", "agent"], env)
    err = result.stderr
    assert result.returncode == 1, err
    assert "Traceback" not in err and "PICKET_?" not in err, err
    assert SECRET not in err, err
    last = err.strip().splitlines()[-1]
    assert last.startswith("picket agent: " + expected), last
    assert last.endswith("fix it, or remove it and enrol again"), last


@pytest.mark.parametrize("side", ["controller", "agent"])
async def test_unreachable_broker_said_once_with_the_plan(
    side: str, tmp_path: Path, http: aiohttp.ClientSession
) -> None:
    port = free_port()
    env = _env(
        tmp_path,
        PICKET_BROKER_URL=f"mqtt://{side}:{SECRET}@127.0.0.1:{port}",
        PICKET_AGENT_ID="a1",
        PICKET_LOG_LEVEL="DEBUG",  # to see the retries that are not repeated at WARNING
    )
    log_path = tmp_path / "out.log"
    with open(log_path, "wb") as log:
        proc = subprocess.Popen(
            [sys.executable, "-m", "shared.cli", side],
            cwd=REPO,
            env=env,
            stdout=log,
            stderr=subprocess.STDOUT,
        )
    try:
        plan = f"cannot reach the broker at mqtt://{side}:***@127.0.0.1:{port}"

        async def retried() -> bool:
            text = log_path.read_text(errors="replace")
            return plan in text and text.count("still cannot reach") >= 2

        await wait_for(retried, "the unreachable broker to be reported and retried")
        # it keeps trying (and keeps serving): its own port answers meanwhile
        listen = env["PICKET_API_LISTEN" if side == "controller" else "PICKET_METRICS_LISTEN"]

        async def answers() -> bool:
            async with http.get(f"http://{listen}/metrics") as resp:
                return resp.status == 200

        await wait_for(answers, f"the {side} to serve while the broker is away")
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(60) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    output = log_path.read_text(errors="replace")
    assert "Traceback" not in output, output
    assert SECRET not in output, output
    lines = [line for line in output.splitlines() if plan in line]
    assert len(lines) == 1, output  # the same failure again is only at DEBUG
    assert " WARNING " in lines[0] and "retrying with backoff" in lines[0], lines[0]


@pytest.mark.parametrize("side", ["controller", "agent"])
async def test_stopped_while_the_broker_never_answers(side: str, tmp_path: Path) -> None:
    """A broker that accepts the connection and never answers (no CONNACK): SIGTERM stops the
    process promptly, exit status 0, with its connection closed and nothing on stderr about
    leftovers (aiomqtt's client cancelled mid-connect used to stay behind)."""
    hung_up = asyncio.Event()
    received = bytearray()

    async def serve(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        while data := await reader.read(4096):
            received.extend(data)
        hung_up.set()
        writer.close()

    server = await asyncio.start_server(serve, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    env = _env(
        tmp_path,
        PICKET_BROKER_URL=f"mqtt://{side}:{SECRET}@127.0.0.1:{port}",
        PICKET_AGENT_ID="a1",
        PYTHONWARNINGS="default",  # a socket left open or a task left pending would show
    )
    err_path = tmp_path / "stderr.log"
    with open(err_path, "wb") as err_file:
        proc = subprocess.Popen(
            [sys.executable, "-m", "shared.cli", side],
            cwd=REPO,
            env=env,
            stdout=subprocess.DEVNULL,
            stderr=err_file,
        )
    try:
        started = " API on " if side == "controller" else " metrics on "

        async def connecting() -> bool:
            return started in err_path.read_text() and b"MQTT" in received

        await wait_for(connecting, f"the {side} to wait for the broker's CONNACK")
        proc.send_signal(signal.SIGTERM)
        begun = time.monotonic()
        code = await asyncio.to_thread(proc.wait, 60)
        took = time.monotonic() - begun
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        server.close()
        await server.wait_closed()
    err = err_path.read_text(errors="replace")
    assert code == 0, err
    assert took < 10, f"{took:.1f}s to stop: {err}"
    assert hung_up.is_set(), err
    for bad in ("Traceback", "Event loop is closed", "Warning", "was destroyed", "never"):
        assert bad not in err, err
    assert SECRET not in err, err


# A background loop made to fail from outside the product code (every real loop survives the
# failures we can cause: a broker or database away is retried). The process around it is real.
_DIES = {
    "controller": """
        import asyncio
        from controller.ingest import Ingest

        async def broken(self):
            await asyncio.sleep(1)
            raise RuntimeError("ingest loop broke for the test")

        Ingest.run = broken
        """,
    "agent": """
        import asyncio
        from agent.app import Agent

        async def broken(self):
            await asyncio.sleep(1)
            raise RuntimeError("send loop broke for the test")

        Agent._send_loop = broken
        """,
}


@pytest.mark.parametrize("side", ["controller", "agent"])
def test_a_dead_background_task_stops_the_process_non_zero(side: str, tmp_path: Path) -> None:
    script = textwrap.dedent(_DIES[side]) + textwrap.dedent(
        f"""
        from shared.cli import main
        main([{side!r}])
        """
    )
    env = _env(tmp_path, PICKET_BROKER_URL=f"mqtt://127.0.0.1:{free_port()}", PICKET_AGENT_ID="a1")
    result = _run([sys.executable, "-c", script], env)
    err = result.stderr
    assert result.returncode == 1, err
    task = "ingest" if side == "controller" else "send"
    who = "controller" if side == "controller" else "agent a1"
    assert f"{who}: background task {task} died: RuntimeError(" in err, err
    assert (
        err.strip()
        .splitlines()[-1]
        .startswith(f"{who}: stopped because its {task} task died: RuntimeError(")
    ), err
