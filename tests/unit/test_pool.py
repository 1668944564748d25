"""The agent's check workers from the main process's side: real worker processes, no broker."""

from __future__ import annotations

import json
import os
import signal
from pathlib import Path
from typing import Any

from agent.metrics import AgentMetrics
from agent.pool import WorkerPool
from agent.settings import AgentSettings
from shared.messages import Assignment, RunRequest, Schedule
from tests.helpers import Target, free_port, wait_for

GUID = "22222222-2222-4222-8222-222222222222"


async def test_run_requests_wait_for_a_restarting_worker(tmp_path: Path, target: Target) -> None:
    settings = AgentSettings(
        data_dir=tmp_path,
        agent_id="pool-test",
        workers=1,
        broker_url=f"mqtt://127.0.0.1:{free_port()}",
    )
    metrics = AgentMetrics(lambda: 0.0)
    results: list[dict[str, Any]] = []

    def on_results(count: int, joined: bytes) -> None:
        batch = json.loads(b"[" + joined + b"]")
        assert len(batch) == count
        results.extend(batch)

    pool = WorkerPool(settings, metrics, on_results)
    assignment = Assignment(
        monitor_guid=GUID,
        revision="r1",
        monitor={
            "Name": "hourly",
            "MonitorType": "Http",
            "Url": f"{target.base}/ok",
            "CheckIntervalSeconds": 3600,
        },
        schedule=Schedule(interval_seconds=3600, offset_seconds=0),
    )
    pool.assign(assignment)
    pool.start()
    worker = pool._workers[0]
    try:

        async def running() -> int | None:
            return worker.proc.pid if worker.proc and worker.writer else None

        first = await wait_for(running, "the worker to start")
        os.kill(first, signal.SIGKILL)

        async def noticed() -> bool:
            return worker.writer is None

        await wait_for(noticed, "the pool to notice the dead worker", interval=0.01)
        request = RunRequest(monitor_guid=GUID, confirms="uid-1").model_dump_json().encode()
        pool.run_now(GUID, request)  # while it restarts: kept, not lost
        assert worker.queued_runs == [request]

        async def confirmed() -> bool:
            return any(r["confirms"] == "uid-1" and r["error_code"] == 0 for r in results)

        await wait_for(confirmed, "the re-run to be done by the restarted worker")
        assert worker.proc is not None and worker.proc.pid != first
        assert metrics.registry.get_sample_value("picket_agent_worker_restarts_total") == 1
    finally:
        await pool.stop()
    assert worker.proc is not None and worker.proc.returncode == 0  # a clean stop
