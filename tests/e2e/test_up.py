"""`picket up` with each embedded broker: one command, a working Picket, a clean stop."""

from __future__ import annotations

import os
import shutil
import signal
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
    if broker == "mosquitto" and not (
        shutil.which("mosquitto") or Path("/usr/sbin/mosquitto").exists()
    ):
        pytest.fail("mosquitto is not installed (.ci/run installs it)")
    data_dir = tmp_path / "data"
    api_port, metrics_port, broker_port = free_port(), free_port(), free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("PICKET_")}
    env.update(
        {
            "PICKET_DATA_DIR": str(data_dir),
            "PICKET_EMBEDDED_BROKER": broker,
            "PICKET_EMBEDDED_BROKER_LISTEN": f"127.0.0.1:{broker_port}",
            "PICKET_API_LISTEN": f"127.0.0.1:{api_port}",
            "PICKET_METRICS_LISTEN": f"127.0.0.1:{metrics_port}",
            "PYTHONUNBUFFERED": "1",
        }
    )
    log_path = tmp_path / "up.log"
    with open(log_path, "wb") as log:
        proc = subprocess.Popen(
            [sys.executable, "-m", "shared.cli", "up"],
            cwd=REPO,
            env=env,
            stdout=log,
            stderr=subprocess.STDOUT,
        )
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


async def test_picket_up_reports_a_dead_child(tmp_path: Path) -> None:
    """A child that cannot start is named, with why, and the rest are stopped."""
    api_port = free_port()
    with __import__("socket").socket() as squatter:
        squatter.bind(("127.0.0.1", api_port))
        squatter.listen()
        env = {k: v for k, v in os.environ.items() if not k.startswith("PICKET_")}
        env.update(
            {
                "PICKET_DATA_DIR": str(tmp_path / "data"),
                "PICKET_EMBEDDED_BROKER": "amqtt",
                "PICKET_EMBEDDED_BROKER_LISTEN": f"127.0.0.1:{free_port()}",
                "PICKET_API_LISTEN": f"127.0.0.1:{api_port}",  # taken: the controller must fail
                "PICKET_METRICS_LISTEN": f"127.0.0.1:{free_port()}",
            }
        )
        result = subprocess.run(
            [sys.executable, "-m", "shared.cli", "up"],
            cwd=REPO,
            env=env,
            capture_output=True,
            text=True,
            timeout=120,
        )
    assert result.returncode == 1, result.stderr
    assert "the controller exited with code" in result.stderr, result.stderr
    assert "stopping the rest" in result.stderr
    assert "Traceback" not in result.stderr, result.stderr
