from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from tests.helpers import Api, Process, free_port, wait_for


class Stack:
    """`picket controller` and `picket agent` as separate processes (the production shape)."""

    def __init__(self, workdir: Path) -> None:
        self.workdir = workdir
        self.processes: list[Process] = []
        self.api_port = free_port()
        self.metrics_port = free_port()
        self.password = "test-admin-password"

    @property
    def api(self) -> str:
        return f"http://127.0.0.1:{self.api_port}"

    @property
    def agent_metrics(self) -> str:
        return f"http://127.0.0.1:{self.metrics_port}/metrics"

    def controller(self, broker_url: str, database_url: str, **extra: str) -> Process:
        env = {
            "PICKET_BROKER_URL": broker_url,
            "PICKET_DATABASE_URL": database_url,
            "PICKET_DATA_DIR": str(self.workdir / "controller-data"),
            "PICKET_API_LISTEN": f"127.0.0.1:{self.api_port}",
            "PICKET_ADMIN_PASSWORD": self.password,
            **extra,
        }
        proc = Process("controller", ["controller"], env, self.workdir)
        self.processes.append(proc)
        return proc

    def agent(self, broker_url: str, agent_id: str = "agent-1", **extra: str) -> Process:
        env = {
            "PICKET_BROKER_URL": broker_url,
            "PICKET_AGENT_ID": agent_id,
            "PICKET_CHECKPOINT": "Testville",
            "PICKET_REGION": "Loopland",
            "PICKET_DATA_DIR": str(self.workdir / "agent-data"),
            "PICKET_METRICS_LISTEN": f"127.0.0.1:{self.metrics_port}",
            "PICKET_BATCH_INTERVAL_MS": "100",
            "PICKET_ACK_TIMEOUT_SECONDS": "3",
            **extra,
        }
        proc = Process(agent_id, ["agent"], env, self.workdir)
        self.processes.append(proc)
        return proc

    def stop_all(self) -> dict[str, int]:
        return {p.name: p.stop() for p in reversed(self.processes)}


async def ready(stack: Stack, http: aiohttp.ClientSession) -> Api:
    """An API account, once the agent has registered its checkpoint."""
    admin = Api(http, stack.api, "admin", stack.password)

    async def registered() -> list[dict[str, Any]] | None:
        status, body = await admin.call("GET", "/api/v4/Checkpoint")
        return body["Data"] if status == 200 and body["Data"] else None

    checkpoints = await wait_for(registered, "the agent to register its checkpoint")
    assert checkpoints[0]["Attributes"]["CheckpointName"] == "Testville"
    status, account = await admin.call("POST", "/api/v4/Register")
    assert status == 201, account
    return Api(http, stack.api, account["UserName"], account["Password"])


@pytest.fixture
def stack(tmp_path: Path, request: pytest.FixtureRequest) -> Iterator[Stack]:
    s = Stack(tmp_path)
    yield s
    s.stop_all()
    report = getattr(request.node, "rep_call", None)
    if report is not None and report.failed:
        for proc in s.processes:
            print(f"----- {proc.name} output -----\n{proc.output()[-20000:]}")


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]):  # type: ignore[no-untyped-def]
    report = yield
    setattr(item, "rep_" + report.when, report)
    return report
