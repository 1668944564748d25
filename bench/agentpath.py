"""The agent's per-check work, as agent/app.py does it, without MQTT, metrics or the outbox.

`AgentPath.run_check` is `Agent._run_check` minus the Prometheus updates, the log line for
failures and the disk write of a batch: the HTTP probe (request built from the monitor, the
transfer on CurlEngine, timings, error conditions) and the result (a `CheckResult`'s fields)
the agent hands to its outbox, collected into batches of the agent's default size, as the agent
does.
"""

from __future__ import annotations

from typing import Any

from agent.curl import CurlEngine
from agent.probes.base import Outcome, ProbeContext
from agent.probes.http import HttpProbe
from agent.runner import make_result
from agent.settings import AgentSettings
from shared.errors import ErrorCode
from shared.monitors import HttpMonitor

BATCH_SIZE = AgentSettings.model_fields["batch_size"].default  # the agent's default
MAX_BODY_BYTES = 1_048_576  # the agent's default PICKET_MAX_BODY_BYTES
FAILED_BODY_BYTES = 65_536


def http_monitor(url: str, name: str = "bench", interval_seconds: int = 60) -> HttpMonitor:
    return HttpMonitor.model_validate(
        {
            "Name": name,
            "MonitorType": "Http",
            "Url": url,
            "CheckIntervalSeconds": interval_seconds,
            "TimeoutSeconds": 5,
            "ErrorConditions": [{"ErrorConditionType": "HttpStatus", "Value": "200"}],
        }
    )


class AgentPath:
    def __init__(self, engine: CurlEngine) -> None:
        self.probe = HttpProbe(ProbeContext(curl=engine, max_body_bytes=MAX_BODY_BYTES))
        self.batch: list[dict[str, Any]] = []
        self.batches = 0
        self.ok = 0
        self.failed = 0
        self.first_failure = ""

    async def run_check(
        self, guid: str, monitor: HttpMonitor, scheduled_at: float, started: float
    ) -> dict[str, Any]:
        try:
            outcome = await self.probe.check(monitor)
        except Exception as exc:
            outcome = Outcome(ErrorCode.INTERNAL, f"{type(exc).__name__}: {exc}")
        result = make_result(
            guid, "1", monitor.MonitorType, outcome, scheduled_at, started, None, FAILED_BODY_BYTES
        )
        if outcome.ok:
            self.ok += 1
        else:
            self.failed += 1
            if not self.first_failure:
                self.first_failure = f"{outcome.description}: {outcome.error_message}"
        self.batch.append(result)
        if len(self.batch) >= BATCH_SIZE:
            self.batch = []  # the agent writes the batch to its outbox here (not measured)
            self.batches += 1
        return result
