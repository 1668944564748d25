"""Enrolment end to end: a private Mosquitto with the dynamic-security plugin, a controller
that makes agents' logins through it, `picket agent enrol`, and the enrolled agent running
checks with its own login, confined to its own topics and to its checkpoint."""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import aiohttp
import aiomqtt
import pytest

from tests.e2e.conftest import Stack
from tests.e2e.test_flow import _at_least
from tests.helpers import (
    REPO,
    Api,
    Mosquitto,
    Process,
    Target,
    dynsec_plugin,
    free_port,
    http_monitor,
    scrape,
    wait_for,
)

pytestmark = pytest.mark.e2e

ADMIN = ("broker-admin", "broker-admin-secret")
CONTROLLER = ("picket-controller", "controller-secret")


def _ctl(broker: Mosquitto, *command: str) -> None:
    login = ["-h", "127.0.0.1", "-p", str(broker.port), "-u", ADMIN[0], "-P", ADMIN[1]]
    subprocess.run(
        ["mosquitto_ctrl", *login, "dynsec", *command],
        check=True,
        capture_output=True,
        timeout=60,
    )


async def _enrol(stack: Stack, token: str, data_dir: Path) -> subprocess.CompletedProcess[str]:
    argv = [sys.executable, "-m", "shared.cli", "agent", "enrol", "--controller", stack.api]
    argv += ["--token", token, "--data-dir", str(data_dir)]
    return await asyncio.to_thread(
        subprocess.run, argv, cwd=REPO, capture_output=True, text=True, timeout=120
    )


async def test_enrolled_agent_runs_checks_with_its_own_confined_login(
    tmp_path: Path, stack: Stack, target: Target, http: aiohttp.ClientSession
) -> None:
    if dynsec_plugin() is None:
        pytest.fail("mosquitto_dynamic_security.so is not installed (Debian package mosquitto)")
    broker = Mosquitto(tmp_path / "dynsec-broker", dynsec_admin=ADMIN)
    broker.start()
    try:
        # the operator's one-time set-up: the controller's own login (docs/operations.md)
        _ctl(broker, "createRole", "picket-controller")
        for acltype in ("publishClientSend", "subscribePattern"):
            _ctl(broker, "addRoleACL", "picket-controller", acltype, "picket/v1/#", "allow")
        _ctl(broker, "createClient", CONTROLLER[0], "-p", CONTROLLER[1])
        _ctl(broker, "addClientRole", CONTROLLER[0], "picket-controller")

        stack.controller(
            broker.login_url(*CONTROLLER),
            f"sqlite+aiosqlite:///{tmp_path / 'picket.db'}",
            PICKET_BROKER_ADMIN_URL=broker.login_url(*ADMIN),
        )
        admin = Api(http, stack.api, "admin", stack.password)

        async def token(**extra: Any) -> str:
            body = {"CheckpointName": "Enrolled City", "RegionName": "Loopland", **extra}
            status, answer = await admin.call("POST", "/api/v4/EnrolmentToken", json=body)
            assert status == 201, answer
            return str(answer["Token"])

        first = await wait_for(token, "the controller's API")
        data_dir = tmp_path / "enrolled-agent"
        done = await _enrol(stack, first, data_dir)
        assert done.returncode == 0, done.stderr
        assert first not in done.stdout + done.stderr
        identity = json.loads((data_dir / "identity.json").read_text())
        assert (data_dir / "identity.json").stat().st_mode & 0o777 == 0o600
        assert (data_dir / "agent-key.pem").stat().st_mode & 0o777 == 0o600
        assert identity["checkpoint"] == "Enrolled City" and identity["region"] == "Loopland"
        agent_id = identity["agent_id"]
        password = aiomqtt_password(identity["broker_url"])

        # the token works once
        again = await _enrol(stack, first, tmp_path / "second")
        assert again.returncode != 0 and "already been used" in again.stderr, again.stderr

        # the enrolled agent needs nothing but its data directory
        metrics_port = free_port()
        agent = Process(
            "enrolled",
            ["agent"],
            {
                "PICKET_DATA_DIR": str(data_dir),
                "PICKET_METRICS_LISTEN": f"127.0.0.1:{metrics_port}",
                "PICKET_BATCH_INTERVAL_MS": "100",
                "PICKET_ACK_TIMEOUT_SECONDS": "3",
            },
            tmp_path,
        )
        stack.processes.append(agent)

        async def server() -> dict[str, Any] | None:
            status, body = await admin.call("GET", "/api/v4/Checkpoint/Server")
            mine = [s for s in body["Data"] if s["Attributes"]["AgentId"] == agent_id]
            return mine[0]["Attributes"] if status == 200 and mine else None

        found = await wait_for(server, "the enrolled agent's hello")
        assert found["CheckpointName"] == "Enrolled City"
        status, account = await admin.call("POST", "/api/v4/Register")
        assert status == 201
        api = Api(http, stack.api, account["UserName"], account["Password"])
        guid = await api.create_monitor(http_monitor("enrolled", f"{target.base}/ok"))
        await wait_for(lambda: _at_least(api, guid, 2), "checks from the enrolled agent")

        # its login reads and writes only its own topics
        async with aiomqtt.Client(
            "127.0.0.1", broker.port, username=agent_id, password=password, identifier="spy"
        ) as spy:
            for other in ("picket/v1/agents/someone-else/#", "picket/v1/results/+", "#"):
                granted = await spy.subscribe(other, qos=1)
                assert all(code >= 0x80 for code in _codes(granted)), (other, granted)
            forged = {
                "v": 1,
                "agent": "forged",
                "checkpoint": "Enrolled City",
                "region": "Loopland",
            }
            await spy.publish(
                "picket/v1/agents/forged/hello", json.dumps(forged).encode(), qos=1, retain=True
            )
            # a hello on its own topic naming another checkpoint is refused
            moved = {"v": 1, "agent": agent_id, "checkpoint": "Elsewhere", "region": "Loopland"}
            await spy.publish(
                f"picket/v1/agents/{agent_id}/hello", json.dumps(moved).encode(), qos=1
            )

            async def refused() -> bool:
                values = await scrape(http, f"{stack.api}/metrics")
                return values.get('picket_hellos_refused_total{field="checkpoint"}', 0) >= 1

            await wait_for(refused, "the hello naming another checkpoint to be refused")
        status, body = await admin.call("GET", "/api/v4/Checkpoint/Server")
        assert [s["Attributes"]["AgentId"] for s in body["Data"]] == [agent_id]
        status, body = await admin.call("GET", "/api/v4/Checkpoint")
        assert [c["Attributes"]["CheckpointName"] for c in body["Data"]] == ["Enrolled City"]
    finally:
        stack.stop_all()
        broker.stop()
    for proc in stack.processes:
        assert "Traceback" not in proc.output(), proc.output()[-5000:]
        assert first not in proc.output()  # the token is never logged


def aiomqtt_password(url: str) -> str:
    from shared.settings import parse_broker_url

    password = parse_broker_url(url).password
    assert password
    return password


def _codes(granted: Any) -> list[int]:
    """Granted QoS or reason codes from a SUBACK, as integers."""
    return [int(getattr(g, "value", g)) for g in granted]
