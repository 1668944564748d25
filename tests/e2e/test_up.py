"""`picket up` with each embedded broker: one command, a working Picket, a clean stop."""

from __future__ import annotations

import os
import shutil
import signal
import socket
import stat
import subprocess
import sys
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from tests.helpers import REPO, Api, Target, free_port, http_monitor, scrape, wait_for

pytestmark = pytest.mark.e2e


@pytest.mark.parametrize("broker", ["mosquitto", "amqtt"])
async def test_picket_up(
    broker: str, tmp_path: Path, target: Target, http: aiohttp.ClientSession
) -> None:
    if broker == "mosquitto" and not _has_mosquitto():
        pytest.fail("mosquitto is not installed (.ci/run installs it)")
    data_dir = tmp_path / "data"
    api_port, metrics_port = free_port(), free_port()
    env = _up_env(tmp_path, broker, api_port=api_port, metrics_port=metrics_port)
    del env["PICKET_ADMIN_PASSWORD"]  # the generated one, as a newcomer gets it
    log_path = tmp_path / "up.log"
    proc = _start_up(env, log_path)
    try:
        password_file = data_dir / "initial-admin-password"

        async def password() -> str | None:
            return password_file.read_text().strip() if password_file.exists() else None

        secret = await wait_for(password, "the generated admin password")
        assert stat.S_IMODE(password_file.stat().st_mode) == 0o600
        api = Api(http, f"http://127.0.0.1:{api_port}", "admin", secret)

        async def local_checkpoint() -> list[dict[str, Any]] | None:
            status, body = await api.call("GET", "/api/v4/Checkpoint")
            return body["Data"] if status == 200 and body["Data"] else None

        checkpoints = await wait_for(local_checkpoint, "the local agent to register")
        assert checkpoints[0]["Attributes"]["CheckpointName"] == "Local"
        assert checkpoints[0]["Attributes"]["RegionName"] == "Local"
        status, monitor = await api.call(
            "POST",
            "/api/v4/Monitor",
            json=http_monitor(
                "local target",
                f"{target.base}/ok",
                ErrorConditions=[{"ErrorConditionType": "ContentMatch", "Value": "picket-target"}],
            ),
        )
        assert status == 201, monitor

        async def two_checks() -> list[dict[str, Any]] | None:
            checks = await api.checks(monitor["MonitorGuid"])
            return checks if len(checks) >= 2 else None

        checks = await wait_for(two_checks, "checks through picket up")
        assert all(c["Attributes"]["ErrorLevel"] == "NoError" for c in checks), checks
        agent_metrics = await scrape(http, f"http://127.0.0.1:{metrics_port}/metrics")
        assert agent_metrics['picket_agent_checks_total{outcome="ok",type="Http"}'] >= 2
        proc.send_signal(signal.SIGINT)
        assert proc.wait(60) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    output = log_path.read_text(errors="replace")
    assert "Traceback" not in output, output
    assert f"Picket is up. API: http://127.0.0.1:{api_port}/api/v4" in output
    assert "stopped" in output


async def test_picket_up_gives_up_on_a_child_that_keeps_failing(tmp_path: Path) -> None:
    """A child that cannot start is restarted with growing pauses, named each time with its
    own last output; after `PICKET_RESTART_LIMIT` quick failures the rest are stopped."""
    api_port = free_port()
    with socket.socket() as squatter:
        squatter.bind(("127.0.0.1", api_port))
        squatter.listen()
        env = _up_env(tmp_path, "amqtt", api_port=api_port)  # taken: the controller must fail
        env["PICKET_RESTART_LIMIT"] = "3"
        result = subprocess.run(
            [sys.executable, "-m", "shared.cli", "up"],
            cwd=REPO,
            env=env,
            capture_output=True,
            text=True,
            timeout=180,
        )
    err = result.stderr
    assert result.returncode == 1, err
    assert err.count("the controller exited with code 1; its last output:") == 3, err
    assert "restarting the controller in 0.5s" in err and "restarting the controller in 1.0s" in err
    # its own words: the controller's line about the port, not another process's
    assert f"  [controller] controller: cannot listen on 127.0.0.1:{api_port}" in err, err
    assert "it failed 3 times within 60s; stopping the rest" in err, err
    assert "Picket is up" not in err, err  # another program on the API port is not Picket
    assert "Traceback" not in err, err


def _up_env(
    tmp_path: Path, broker: str, api_port: int | None = None, metrics_port: int | None = None
) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("PICKET_")}
    env.update(
        {
            "PICKET_DATA_DIR": str(tmp_path / "data"),
            "PICKET_EMBEDDED_BROKER": broker,
            "PICKET_EMBEDDED_BROKER_LISTEN": f"127.0.0.1:{free_port()}",
            "PICKET_API_LISTEN": f"127.0.0.1:{api_port or free_port()}",
            "PICKET_METRICS_LISTEN": f"127.0.0.1:{metrics_port or free_port()}",
            "PICKET_ADMIN_PASSWORD": "up-test-password",
            "PYTHONUNBUFFERED": "1",
        }
    )
    return env


def _start_up(env: dict[str, str], log_path: Path) -> subprocess.Popen[bytes]:
    """`picket up` from the repository, its output (all children's too) in `log_path`."""
    with open(log_path, "wb") as log:
        return subprocess.Popen(
            [sys.executable, "-m", "shared.cli", "up"],
            cwd=REPO,
            env=env,
            stdout=log,
            stderr=subprocess.STDOUT,
        )


def _child_pid(parent: int, marker: str) -> int | None:
    """The pid of `parent`'s child whose command line contains `marker`."""
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            status = (entry / "status").read_text()
            cmdline = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode()
        except OSError:
            continue
        ppid = next(
            (line.split()[1] for line in status.splitlines() if line.startswith("PPid:")), ""
        )
        if ppid == str(parent) and marker in cmdline:
            return int(entry.name)
    return None


async def test_picket_up_restarts_a_killed_child(
    tmp_path: Path, target: Target, http: aiohttp.ClientSession
) -> None:
    """kill -9 of the broker, the controller and the agent in turn: each is named, restarted,
    and checks are stored again afterwards."""
    env = _up_env(tmp_path, "mosquitto" if _has_mosquitto() else "amqtt")
    api = Api(http, f"http://{env['PICKET_API_LISTEN']}", "admin", "up-test-password")
    log_path = tmp_path / "up.log"
    proc = _start_up(env, log_path)
    try:

        async def registered() -> bool:
            status, body = await api.call("GET", "/api/v4/Checkpoint")
            return status == 200 and bool(body["Data"])

        await wait_for(registered, "the local agent to register")
        guid = await api.create_monitor(http_monitor("kept alive", f"{target.base}/ok"))

        async def more_checks_than(count: int) -> int | None:
            stored = len(await api.checks(guid))
            return stored if stored > count else None

        seen = await wait_for(lambda: more_checks_than(1), "checks before any kill")
        markers = {
            "broker": "mosquitto" if _has_mosquitto() else "controller.embedded_broker",
            "controller": "shared.cli controller",
            "agent": "shared.cli agent",
        }
        for name, marker in markers.items():
            pid = _child_pid(proc.pid, marker)
            assert pid is not None, f"no {name} under picket up"
            os.kill(pid, signal.SIGKILL)

            async def restarted(name: str = name, marker: str = marker, old: int = pid) -> bool:
                again = _child_pid(proc.pid, marker)
                text = log_path.read_text(errors="replace")
                return again not in (None, old) and f"the {name} is running again" in text

            await wait_for(restarted, f"the {name} to be restarted")
            seen = await wait_for(
                lambda seen=seen: more_checks_than(seen + 2),
                f"checks stored again after the {name} was killed",
                within=120,
            )
        assert proc.poll() is None  # one death of each is no reason to stop
        proc.send_signal(signal.SIGINT)
        assert proc.wait(60) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    output = log_path.read_text(errors="replace")
    for name in markers:
        block = output.split(f"the {name} was killed by signal 9", 1)[1].split("restarting")[0]
        shown = [line for line in block.splitlines()[1:] if line.strip()]
        # its own last lines, each marked with its own name
        assert shown and all(line.startswith(f"  [{name}] ") for line in shown), block


def _has_mosquitto() -> bool:
    return bool(shutil.which("mosquitto") or Path("/usr/sbin/mosquitto").exists())
