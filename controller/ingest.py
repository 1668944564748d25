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
from shared.results import storage_plan

log = logging.getLogger(__name__)

NO_ERROR, UNCONFIRMED, CONFIRMED = 0, 1, 2
LEVEL_NAMES = {NO_ERROR: "NoError", UNCONFIRMED: "Unconfirmed", CONFIRMED: "Confirmed"}
LEVELS_BY_NAME = {name: level for level, name in LEVEL_NAMES.items()}
STORED = storage_plan(CheckResult)  # where each field of a result goes in its row


def error_level(result: CheckResult, current: int) -> int:
    if result.error_code == 0:
        return NO_ERROR
    if result.is_confirmation or current == CONFIRMED:
        return CONFIRMED
    return UNCONFIRMED


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
        batches = self.assigner.acceptance.admit(batches)  # others dropped and counted
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
            if level == UNCONFIRMED and not result.is_confirmation and uid not in stale:
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
        """The check's row: each result field where its declaration says (shared/results.py),
        plus what the controller adds (level, server, agent, staging)."""
        srv = self.assigner.server(agent_id)
        monitor = self.assigner.monitors.get(result.monitor_guid)
        staging = bool(monitor and monitor.definition.get("MonitorMode") == "Staging")
        attributes: dict[str, Any] = {}
        for name in STORED.spreads:
            attributes.update(getattr(result, name))
        for name, attribute in STORED.attributes:
            value = getattr(result, name)
            if value or not attribute.omit_empty:
                attributes[attribute.name] = value
        attributes["StagingMode"] = staging
        attributes["AgentId"] = agent_id
        row: dict[str, Any] = {}
        for name, column in STORED.columns:
            value = getattr(result, name)
            row[column.name] = int(value * 1_000_000) if column.micros else value
        body = result.response_body
        if body is not None and result.error_code != 0:
            # PostgreSQL text cannot hold NUL; a binary body is shown with U+FFFD instead
            body = body[: self.failed_body_bytes].replace("\x00", "\ufffd")
        else:
            body = None
        row.update(
            server_id=srv.id if srv else None,
            error_level=level,
            attributes=orjson.dumps(attributes).decode(),
            response_body=body,
            details=self._details(agent_id, result),
        )
        return row
