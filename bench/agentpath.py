"""The agent's per-check work, as agent/app.py does it, without MQTT, metrics or the outbox.

`AgentPath.run_check` is `Agent._run_check` minus the Prometheus updates, the log line for
failures and the disk write of a batch: the HTTP probe (request built from the monitor, the
transfer on CurlEngine, timings, error conditions) and the pydantic `CheckResult` the agent
hands to its outbox, collected into batches of 200 as the agent does.
"""

from __future__ import annotations

import uuid

from agent.curl import CurlEngine
from agent.probes.base import Outcome, ProbeContext
from agent.probes.http import HttpProbe
from shared.errors import ErrorCode
from shared.messages import CheckResult
from shared.monitors import HttpMonitor

BATCH_SIZE = 200  # the agent's default PICKET_BATCH_SIZE
MAX_BODY_BYTES = 1_048_576  # the agent's default PICKET_MAX_BODY_BYTES
FAILED_BODY_BYTES = 65_536
OPTIONAL_FIELDS = ("warnings", "details", "attributes")


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
        self.batch: list[CheckResult] = []
        self.batches = 0
        self.ok = 0
        self.failed = 0
        self.first_failure = ""

    async def run_check(
        self, guid: str, monitor: HttpMonitor, scheduled_at: float, started: float
    ) -> CheckResult:
        try:
            outcome = await self.probe.check(monitor)
        except Exception as exc:
            outcome = Outcome(ErrorCode.INTERNAL, f"{type(exc).__name__}: {exc}")
        # fields the agent passes on when this version of Outcome and CheckResult have them
        extra = {
            name: getattr(outcome, name)
            for name in OPTIONAL_FIELDS
            if name in CheckResult.model_fields and hasattr(outcome, name)
        }
        body = None
        if not outcome.ok and outcome.body:
            body = outcome.body[:FAILED_BODY_BYTES].decode("utf-8", "replace")
        result = CheckResult.model_construct(  # as the agent builds it
            uid=uuid.uuid4().hex,
            monitor_guid=guid,
            monitor_revision="1",
            monitor_type=monitor.MonitorType,
            scheduled_at=scheduled_at,
            started_at=started,
            error_code=int(outcome.error_code),
            error_description=outcome.description,
            error_message=outcome.error_message,
            http_status_code=outcome.http_status_code,
            total_bytes=outcome.total_bytes,
            resolved_ip=outcome.resolved_ip,
            timings_ms=outcome.timings_ms,
            response_body=body,
            is_confirmation=False,
            confirms=None,
            **extra,
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
