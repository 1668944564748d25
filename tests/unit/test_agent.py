"""The agent's own behaviour, in-process (no broker needed for these)."""

from __future__ import annotations

import asyncio
from pathlib import Path

from agent.curl import CurlEngine
from agent.metrics import CheckMetrics
from agent.runner import Runner
from agent.scheduler import Scheduled
from agent.settings import AgentSettings
from shared.monitors import HttpMonitor
from tests.helpers import free_port


async def test_an_overloaded_agent_sheds_slots_instead_of_piling_up(tmp_path: Path) -> None:
    settings = AgentSettings(
        data_dir=tmp_path,
        broker_url=f"mqtt://127.0.0.1:{free_port()}",
        agent_id="shed-test",
    )
    curl = CurlEngine(1)
    runner = Runner(settings, curl, CheckMetrics(), "shed-test/worker-0", max_pending=2)
    stuck = [asyncio.create_task(asyncio.sleep(60)) for _ in range(2)]
    runner._checks.update(stuck)  # two checks still running
    monitor = HttpMonitor.model_validate(
        {
            "Name": "m",
            "MonitorType": "Http",
            "Url": "http://127.0.0.1:9/",
            "CheckIntervalSeconds": 1,
        }
    )
    try:
        runner._start_scheduled(Scheduled("m", "r", monitor, 1.0, 0.0), 0.0)
        assert runner.metrics.registry.get_sample_value("picket_agent_checks_shed_total") == 1
        assert len(runner._checks) == 2  # nothing new started
    finally:
        for task in stuck:
            task.cancel()
        curl.close()


def test_a_result_carries_every_field_of_the_message_and_validates() -> None:
    from agent.probes.base import Outcome
    from agent.runner import make_result
    from shared.errors import ErrorCode
    from shared.messages import CheckResult

    outcome = Outcome(ErrorCode.HTTP_STATUS_MISMATCH, "status 500")
    outcome.body = b"boom"
    outcome.details = {"Waterfall": [{"Url": "http://127.0.0.1/"}]}
    result = make_result("m", "r1", "Http", outcome, 10.0, 10.5, "uid0", 3)
    # the dict is the message: same keys (a typo would be dropped silently by the controller)
    assert set(result) == set(CheckResult.model_fields)
    parsed = CheckResult.model_validate(result)
    assert parsed.response_body == "boo" and parsed.is_confirmation and parsed.confirms == "uid0"
    assert parsed.details == '{"Waterfall":[{"Url":"http://127.0.0.1/"}]}'
    assert len(parsed.uid) == 32 and int(parsed.uid, 16) >= 0


class _SilentServer:
    """Accepts connections and never answers; counts how many are open at once."""

    def __init__(self) -> None:
        self.open = 0
        self.most = 0
        self.accepted = 0
        self._server: asyncio.Server | None = None

    async def start(self) -> int:
        self._server = await asyncio.start_server(self._serve, "127.0.0.1", 0)
        return int(self._server.sockets[0].getsockname()[1])

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.open += 1
        self.accepted += 1
        self.most = max(self.most, self.open)
        try:
            await reader.read()  # until the client closes
        finally:
            self.open -= 1
            writer.close()

    async def stop(self) -> None:
        assert self._server is not None
        self._server.close()


async def test_one_check_of_a_monitor_at_a_time(tmp_path: Path) -> None:
    """A check that outlasts its interval: the slots meanwhile are skipped and counted, the
    next result says how many, and a confirmation asked for meanwhile runs after it."""
    from shared.monitors import ConnectMonitor
    from tests.helpers import wait_for

    server = _SilentServer()
    port = await server.start()
    settings = AgentSettings(
        data_dir=tmp_path, broker_url=f"mqtt://127.0.0.1:{free_port()}", agent_id="overlap"
    )
    curl = CurlEngine(1)
    metrics = CheckMetrics()
    runner = Runner(settings, curl, metrics, "overlap/worker-0", max_pending=100)
    monitor = ConnectMonitor.model_validate(
        {
            "Name": "slow",
            "MonitorType": "Connect",
            "NetworkAddress": "127.0.0.1",
            "Port": port,
            "ExpectString": "hello",
            "TimeoutSeconds": 2,
            "CheckIntervalSeconds": 5,
        }
    )
    interval = 0.25  # the slots come 8 times faster than a check ends
    runner.scheduler.put(Scheduled("m", "r", monitor, interval, 0.0))
    task = asyncio.create_task(runner.run())
    try:

        async def started() -> bool:
            return server.accepted >= 1

        await wait_for(started, "the first check to connect", within=30, interval=0.01)
        runner.run_now("m", "uid-of-a-failure")  # a confirmation while the check runs

        async def two_results() -> bool:
            return len(runner.results) >= 2

        await wait_for(two_results, "the check and its confirmation", within=60)
        runner.remove("m")
        first, second = runner.results[:2]
        assert server.most == 1, f"{server.most} checks of one monitor at once"
        assert first["error_code"] == 120 and not first["is_confirmation"]
        assert first["attributes"]["SkippedSlots"] >= 3, first["attributes"]
        assert second["confirms"] == "uid-of-a-failure"
        assert second["started_at"] >= first["started_at"] + 1.9
        skipped = metrics.registry.get_sample_value(
            "picket_agent_slots_skipped_total", {"reason": "overlap"}
        )
        assert skipped is not None and skipped >= first["attributes"]["SkippedSlots"]
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
        await runner.cancel_checks()
        await server.stop()
        curl.close()
