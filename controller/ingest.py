"""Result batches in, rows committed, acks out; the controller decides each check's ErrorLevel.

A batch is acknowledged only after its transaction commits; a replayed batch stores nothing
twice (unique result uid). With one checkpoint a failed check is re-run at once by the same
agent: the first failure is Unconfirmed, a failing re-check Confirmed. While a monitor is in a
confirmed error, further failures are Confirmed without another re-check.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import Counter
from typing import Any

import orjson

from controller.assigner import Assigner
from controller.bus import ControllerBus
from controller.db.store import Store
from controller.metrics import ControllerMetrics
from shared.messages import CheckResult, ResultBatch, RunRequest

log = logging.getLogger(__name__)

NO_ERROR, UNCONFIRMED, CONFIRMED = 0, 1, 2
LEVEL_NAMES = {NO_ERROR: "NoError", UNCONFIRMED: "Unconfirmed", CONFIRMED: "Confirmed"}
LEVELS_BY_NAME = {name: level for level, name in LEVEL_NAMES.items()}


def error_level(result: CheckResult, current: int) -> int:
    if result.error_code == 0:
        return NO_ERROR
    if result.is_confirmation or current == CONFIRMED:
        return CONFIRMED
    return UNCONFIRMED


# a confirmation asked for and not answered within this long (the agent restarted, its result
# was lost) no longer holds back the next one: more than the longest check (120 s) and its trip
CONFIRMATION_WAIT_SECONDS = 300.0


class Ingest:
    def __init__(
        self,
        store: Store,
        bus: ControllerBus,
        assigner: Assigner,
        metrics: ControllerMetrics,
        failed_body_bytes: int,
        batch_max: int,
    ) -> None:
        self.store = store
        self.bus = bus
        self.assigner = assigner
        self.metrics = metrics
        self.failed_body_bytes = failed_body_bytes
        self.batch_max = batch_max
        self.queue: asyncio.Queue[ResultBatch] = asyncio.Queue(maxsize=10_000)
        self.levels: dict[str, int] = {}
        self.latest: dict[str, float] = {}  # start time of each monitor's newest result
        # monitors with a confirmation asked for and no result of it yet: when it was asked
        self.confirming: dict[str, float] = {}

    async def load(self) -> None:
        self.levels = await self.store.last_levels()

    async def submit(self, batch: ResultBatch) -> None:
        await self.queue.put(batch)

    async def run(self) -> None:
        while True:
            batches = [await self.queue.get()]
            while len(batches) < self.batch_max and not self.queue.empty():
                batches.append(self.queue.get_nowait())
            try:
                await self.process(batches)
            except Exception:
                self.metrics.ingest_errors.inc()
                if len(batches) == 1:
                    # not acknowledged: the agent keeps the batch and sends it again
                    log.exception(
                        "ingest of batch %s failed; the agent will resend it", batches[0].batch_id
                    )
                    await asyncio.sleep(1.0)
                    continue
                # one bad batch must not hold back the others stored with it: one at a time
                log.exception("ingest of %d batches failed; retrying one by one", len(batches))
                for batch in batches:
                    try:
                        await self.process([batch])
                    except Exception:
                        log.exception(
                            "ingest of batch %s from agent %s failed; it will be resent",
                            batch.batch_id,
                            batch.agent,
                        )

    async def process(self, batches: list[ResultBatch]) -> None:
        rows: list[dict[str, Any]] = []
        results: dict[str, tuple[ResultBatch, CheckResult, int]] = {}
        levels = dict(self.levels)
        # a replayed result (lost ack, resend) must not move the alert state a second time
        known = await self.store.known_uids([r.uid for b in batches for r in b.results])
        ordered = sorted(
            ((b, r) for b in batches for r in b.results), key=lambda pair: pair[1].started_at
        )
        for batch, result in ordered:
            if result.uid in results or result.uid in known:
                continue
            level = error_level(result, levels.get(result.monitor_guid, NO_ERROR))
            # a result older than the newest one seen (an outbox replay after an outage) gets
            # its level but moves neither the state nor asks for a re-check
            if result.started_at >= self.latest.get(result.monitor_guid, 0.0):
                levels[result.monitor_guid] = level
            results[result.uid] = (batch, result, level)
            rows.append(self._row(batch.agent, result, level))
        inserted = await self.store.insert_checks(rows)
        now = time.time()
        stale: set[str] = set()
        by_level: Counter[int] = Counter()
        for uid in sorted(inserted, key=lambda u: results[u][1].started_at):
            batch, result, level = results[uid]
            if result.started_at >= self.latest.get(result.monitor_guid, 0.0):
                self.latest[result.monitor_guid] = result.started_at
                self.levels[result.monitor_guid] = level
            else:
                stale.add(uid)
            by_level[level] += 1
            self.metrics.ingest_lag.observe(max(0.0, now - result.started_at))
        for level, count in by_level.items():
            self.metrics.results.labels(LEVEL_NAMES[level]).inc(count)
        self.metrics.duplicates.inc(sum(len(b.results) for b in batches) - len(inserted))
        by_agent: dict[str, list[str]] = {}
        for batch in batches:
            by_agent.setdefault(batch.agent, []).append(batch.batch_id)
        for agent, batch_ids in by_agent.items():
            await self.bus.ack(agent, batch_ids)
        self.metrics.batches.inc(len(batches))
        for uid in sorted(inserted, key=lambda u: results[u][1].started_at):
            batch, result, level = results[uid]
            if result.is_confirmation:
                self.confirming.pop(result.monitor_guid, None)
            elif level == UNCONFIRMED and uid not in stale:
                # at most one confirmation of a monitor in flight: the failures that come in
                # meanwhile (a short interval, a long time limit) wait for its verdict
                asked = self.confirming.get(result.monitor_guid)
                if asked is not None and now - asked < CONFIRMATION_WAIT_SECONDS:
                    continue
                self.confirming[result.monitor_guid] = now
                self.metrics.confirmations.inc()
                await self.bus.run_now(
                    batch.agent, RunRequest(monitor_guid=result.monitor_guid, confirms=uid)
                )

    @staticmethod
    def _details(agent_id: str, result: CheckResult) -> str | None:
        """The agent's details text, stored as sent once it has proved to be a JSON object."""
        if not result.details:
            return None
        try:
            valid = isinstance(orjson.loads(result.details), dict)
        except orjson.JSONDecodeError:
            valid = False
        if not valid:
            log.warning(
                "agent %s: monitor %s: result %s has details that are not a JSON object; "
                "stored without them",
                agent_id,
                result.monitor_guid,
                result.uid,
            )
            return None
        return result.details

    def _row(self, agent_id: str, result: CheckResult, level: int) -> dict[str, Any]:
        srv = self.assigner.server(agent_id)
        monitor = self.assigner.monitors.get(result.monitor_guid)
        staging = bool(monitor and monitor.definition.get("MonitorMode") == "Staging")
        attributes: dict[str, Any] = {
            **result.attributes,
            **result.timings_ms,
            "MonitorType": result.monitor_type,
            "ErrorDescription": result.error_description,
            "ErrorMessage": result.error_message,
            "HttpStatusCode": result.http_status_code,
            "TotalBytes": result.total_bytes,
            "ResolvedIpAddress": result.resolved_ip,
            "StagingMode": staging,
            "IsConfirmation": result.is_confirmation,
            "ConfirmsCheckUid": result.confirms,
            "MonitorRevision": result.monitor_revision,
            "AgentId": agent_id,
        }
        if result.warnings:
            attributes["Warnings"] = result.warnings
        body = result.response_body
        if body is not None and result.error_code != 0:
            # PostgreSQL text cannot hold NUL; a binary body is shown with U+FFFD instead
            body = body[: self.failed_body_bytes].replace("\x00", "\ufffd")
        else:
            body = None
        return {
            "uid": result.uid,
            "monitor_guid": result.monitor_guid,
            "server_id": srv.id if srv else None,
            "ts_us": int(result.started_at * 1_000_000),
            "scheduled_us": int(result.scheduled_at * 1_000_000),
            "error_level": level,
            "error_code": result.error_code,
            "attributes": orjson.dumps(attributes).decode(),
            "response_body": body,
            "details": self._details(agent_id, result),
        }
