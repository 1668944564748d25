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
