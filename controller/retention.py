"""Deletes what the controller no longer keeps: checks and dead letters older than
PICKET_RESULT_RETENTION_DAYS, the checks and dead letters of deleted monitors, and assignment
history nobody can need any more.

Deletes run in transactions of at most PICKET_RETENTION_BATCH_ROWS rows, each on the
(monitor, time) index, with a pause between them, so ingest (which shares SQLite's one writer)
never waits behind a long delete.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Awaitable, Callable

from controller.assigner import Assigner
from controller.db.store import Store
from controller.db.store import now_us as store_now_us
from controller.metrics import ControllerMetrics

log = logging.getLogger(__name__)

DAY_US = 86_400 * 1_000_000
PASS_EVERY_SECONDS = 3600.0
RETRY_SECONDS = 60.0
# a deleted monitor's history is kept this long after its purge: a result admitted just before
# the delete may still be committing, and the next pass deletes it too
DELETED_GRACE_US = 10 * 60 * 1_000_000


class Retention:
    def __init__(
        self,
        store: Store,
        assigner: Assigner,
        metrics: ControllerMetrics,
        days: int,
        batch_rows: int,
        pause_seconds: float,
        every_seconds: float = PASS_EVERY_SECONDS,
    ) -> None:
        self.store = store
        self.assigner = assigner
        self.metrics = metrics
        self.days = days
        self.batch_rows = batch_rows
        self.pause_seconds = pause_seconds
        self.every_seconds = every_seconds

    async def run(self) -> None:
        """A pass every hour, and soon after a monitor is deleted; owned by the controller."""
        while True:
            deleted = self.assigner.monitor_deleted
            deleted.clear()
            wait = self.every_seconds
            try:
                await self.run_once()
            except Exception as exc:  # a database outage must not stop the controller
                task = asyncio.current_task()
                if task is not None and task.cancelling():
                    raise  # a driver that turned our cancellation into its own error
                self.metrics.retention_failures.inc()
                wait = min(wait, RETRY_SECONDS)
                log.warning("retention: pass failed (%s); next try in %.0f s", exc, wait)
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(wait):  # unlike 3.11's wait_for, never eats a cancel
                    await deleted.wait()

    async def run_once(self, now_us: int | None = None) -> list[int]:
        """One pass; returns the rows each delete transaction removed."""
        now_us = store_now_us() if now_us is None else now_us
        batches: list[int] = []
        started = time.monotonic()
        # deleted monitors: those with history but gone
        deleted = self.assigner.history.monitors() | self.assigner.deleted
        self.assigner.deleted = set()
        for guid in sorted(deleted - set(self.assigner.monitors)):
            await self._delete(guid, None, "monitor_deleted", batches)
            await self._delete_dead_letters(None, guid, batches)
            # an open interval is kept: its removal has not reached the agent yet
            await self.store.forget_history(guid, now_us - DELETED_GRACE_US)
            self.assigner.history.forget(now_us - DELETED_GRACE_US, guid)
        cutoff = now_us - self.days * DAY_US
        for guid in sorted(self.assigner.monitors):
            await self._delete(guid, cutoff, "expired", batches)
        await self._delete_dead_letters(cutoff, None, batches)
        await self.store.forget_history(ended_before_us=cutoff)
        self.assigner.history.forget(cutoff)
        if batches:
            log.info(
                "retention: deleted %d checks and dead letters in %d transactions in %.1f s "
                "(older than %d days, or of deleted monitors)",
                sum(batches),
                len(batches),
                time.monotonic() - started,
                self.days,
            )
        return batches

    async def _delete(
        self, guid: str, before_us: int | None, reason: str, batches: list[int]
    ) -> None:
        await self._drain(
            lambda: self.store.delete_checks(guid, before_us, self.batch_rows), reason, batches
        )

    async def _delete_dead_letters(
        self, before_us: int | None, guid: str | None, batches: list[int]
    ) -> None:
        await self._drain(
            lambda: self.store.delete_dead_letters(before_us, guid, self.batch_rows),
            "dead_letter",
            batches,
        )

    async def _drain(
        self, delete: Callable[[], Awaitable[int]], reason: str, batches: list[int]
    ) -> None:
        """Delete transactions of at most `batch_rows` rows, a pause apart, until one finds
        fewer."""
        while True:
            deleted = await delete()
            if deleted:
                batches.append(deleted)
                self.metrics.retention_batches.inc()
                self.metrics.retention_deleted.labels(reason).inc(deleted)
                await asyncio.sleep(self.pause_seconds)
            if deleted < self.batch_rows:
                return
