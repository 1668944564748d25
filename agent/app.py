"""The agent process: assignments in, checks on schedule, results out through the outbox."""

from __future__ import annotations

import asyncio
import contextlib
import gc
import logging
import time
import uuid
from collections.abc import Coroutine
from typing import Any

from prometheus_client import start_http_server
from pydantic import ValidationError

import shared
from agent import probes
from agent.curl import CurlEngine
from agent.link import AgentLink
from agent.metrics import AgentMetrics
from agent.netaddr import agent_addresses
from agent.outbox import Outbox
from agent.probes.base import Outcome, Probe, ProbeContext
from agent.scheduler import Scheduled, Scheduler
from agent.settings import AgentSettings
from shared import monitors
from shared.errors import ErrorCode
from shared.messages import Ack, Assignment, CheckResult, Hello, RunRequest, Sync
from shared.settings import parse_broker_url, parse_listen
from shared.signals import stop_event

log = logging.getLogger(__name__)

FREEZE_AFTER_SECONDS = 2.0


class Agent:
    def __init__(self, settings: AgentSettings, curl: CurlEngine) -> None:
        self.settings = settings
        self.id = settings.agent_id
        self.metrics = AgentMetrics()
        broker = parse_broker_url(settings.broker_url)
        self.ipv4, self.ipv6 = agent_addresses(
            settings.agent_ipv4, settings.agent_ipv6, broker.host, broker.port
        )
        self.outbox = Outbox(settings.data_dir / "outbox" / self.id, self.id)
        self.curl = curl
        self.probes: dict[str, Probe] = probes.build(
            ProbeContext(
                curl=curl,
                max_body_bytes=settings.max_body_bytes,
                ca_file=settings.ca_file or None,
            )
        )
        self.scheduler = Scheduler(self._start_scheduled, self.metrics.slots_skipped.inc)
        self.link = AgentLink(settings.broker_url, self.id, self, self.metrics)
        self._checks: set[asyncio.Task[None]] = set()
        self._results: list[CheckResult] = []
        self._send_wake = asyncio.Event()
        self._heap_changed = asyncio.Event()
        self._flush_now = asyncio.Event()
        self._shed_logged = 0.0
        self._update_outbox_metrics()
        self.metrics.watch_checks(lambda: len(self._checks))

    # --- LinkHandler ------------------------------------------------------------------------

    def hello(self) -> Hello:
        return Hello(
            agent=self.id,
            checkpoint=self.settings.checkpoint,
            region=self.settings.region,
            ipv4=self.ipv4,
            ipv6=self.ipv6,
            version=shared.__version__,
            probe_types=probes.probe_types(),
            capacity=self.settings.max_concurrency,
        )

    async def on_connected(self) -> None:
        self.outbox.mark_unsent()
        self._send_wake.set()

    def on_assignment(self, monitor_guid: str, assignment: Assignment | None) -> None:
        if assignment is None:
            if self.scheduler.remove(monitor_guid):
                log.info("agent %s: monitor %s unassigned", self.id, monitor_guid)
            self._assignments_changed()
            return
        definition = assignment.monitor
        model = monitors.model_for(str(definition.get("MonitorType", "")))
        if model is None or str(definition.get("MonitorType")) not in self.probes:
            log.error(
                "agent %s: monitor %s has type %r this agent cannot run",
                self.id,
                monitor_guid,
                definition.get("MonitorType"),
            )
            self.metrics.dropped.labels("unsupported_type").inc()
            return
        try:
            monitor = model.model_validate(definition)
        except ValidationError as exc:
            log.error("agent %s: monitor %s invalid: %s", self.id, monitor_guid, exc)
            self.metrics.dropped.labels("malformed").inc()
            return
        interval = float(assignment.schedule.interval_seconds)
        offset = assignment.schedule.offset_seconds % interval
        entry = Scheduled(monitor_guid, assignment.revision, monitor, interval, offset)
        known = self.scheduler.get(monitor_guid)
        if known is None or known.revision != assignment.revision:
            log.info(
                "agent %s: monitor %s (%s) every %gs",
                self.id,
                monitor_guid,
                monitor.Name,
                interval,
            )
        self.scheduler.put(entry)
        self._assignments_changed()

    def on_sync(self, sync: Sync) -> None:
        for guid in self.scheduler.guids():
            if guid not in sync.monitors:
                self.scheduler.remove(guid)
                log.info("agent %s: monitor %s no longer assigned (sync)", self.id, guid)
        self._assignments_changed()

    def on_run(self, request: RunRequest) -> None:
        entry = self.scheduler.get(request.monitor_guid)
        if entry is None:
            log.warning(
                "agent %s: run request for unknown monitor %s", self.id, request.monitor_guid
            )
            return
        self._spawn(self._run_check(entry, time.time(), confirms=request.confirms))

    def on_ack(self, ack: Ack) -> None:
        if self.outbox.acked(ack.batch_ids):
            self._update_outbox_metrics()
            self._send_wake.set()

    def _assignments_changed(self) -> None:
        self.metrics.assignments.set(len(self.scheduler))
        self._heap_changed.set()

    async def _freeze_loop(self) -> None:
        """Once assignments have been quiet for a while, move the long-lived heap (monitor
        models, schedule) out of the garbage collector's sight: a full collection over
        thousands of monitors stops the loop for tens of milliseconds, which shows up as
        scheduling lateness and as inflated timings of the checks in flight."""
        while True:
            await self._heap_changed.wait()
            while self._heap_changed.is_set():  # settle: no change for FREEZE_AFTER_SECONDS
                self._heap_changed.clear()
                await asyncio.sleep(FREEZE_AFTER_SECONDS)
            gc.unfreeze()  # what an earlier freeze kept may be garbage by now
            gc.collect()
            gc.freeze()
            log.debug("agent %s: %d objects frozen", self.id, gc.get_freeze_count())

    # --- checks -----------------------------------------------------------------------------

    def _start_scheduled(self, entry: Scheduled, slot: float) -> None:
        if len(self._checks) >= self.settings.max_pending_checks:
            # overloaded: starting more would only make every check later and every timing
            # worse; shed this slot, count it and say so (at most every 10 s)
            self.metrics.checks_shed.inc()
            now = time.monotonic()
            if now - self._shed_logged > 10:
                self._shed_logged = now
                log.warning(
                    "agent %s: overloaded, %d checks pending: skipping slots (see "
                    "picket_agent_checks_shed_total)",
                    self.id,
                    len(self._checks),
                )
            return
        self._spawn(self._run_check(entry, slot, confirms=None))

    def _spawn(self, coro: Coroutine[Any, Any, None]) -> None:
        task = asyncio.get_running_loop().create_task(coro)
        self._checks.add(task)
        task.add_done_callback(self._checks.discard)

    async def _run_check(self, entry: Scheduled, scheduled_at: float, confirms: str | None) -> None:
        monitor = entry.monitor
        started = time.time()
        if confirms is None:
            self.metrics.lateness.observe(max(0.0, started - scheduled_at))
        clock = time.perf_counter()
        try:
            outcome = await self.probes[monitor.MonitorType].check(monitor)
        except Exception as exc:  # a probe bug: report it as data, keep the agent alive
            log.exception("agent %s: monitor %s: probe failed", self.id, entry.guid)
            outcome = Outcome(ErrorCode.INTERNAL, f"{type(exc).__name__}: {exc}")
        self.metrics.check_done(monitor.MonitorType, outcome.ok, time.perf_counter() - clock)
        if not outcome.ok:
            log.info(
                "agent %s checkpoint %s: monitor %s (%s) failed: %s %s",
                self.id,
                self.settings.checkpoint,
                entry.guid,
                monitor.Name,
                outcome.description,
                outcome.error_message,
            )
        self._results.append(
            make_result(
                entry.guid,
                entry.revision,
                monitor.MonitorType,
                outcome,
                scheduled_at,
                started,
                confirms,
                self.settings.failed_body_bytes,
            )
        )
        if len(self._results) >= self.settings.batch_size:
            self._flush_now.set()  # the flush loop writes it: a disk error stays out of here

    # --- results ----------------------------------------------------------------------------

    def _flush(self) -> None:
        """Move the finished results to the on-disk outbox; when the disk refuses they stay in
        memory and the next tick tries again."""
        if not self._results:
            return
        try:
            self.outbox.add(self._results)
        except OSError as exc:
            self.metrics.outbox_errors.inc()
            log.error(
                "agent %s: cannot write %d results to the outbox: %s; retrying",
                self.id,
                len(self._results),
                exc,
            )
            return
        self._results = []
        self._update_outbox_metrics()
        self._send_wake.set()

    def _update_outbox_metrics(self) -> None:
        self.metrics.outbox_results.set(self.outbox.results)
        self.metrics.outbox_batches.set(len(self.outbox))

    async def _flush_loop(self) -> None:
        interval = self.settings.batch_interval_ms / 1000.0
        while True:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._flush_now.wait(), timeout=interval)
            self._flush_now.clear()
            self._flush()

    async def _send_loop(self) -> None:
        resend_after = self.settings.ack_timeout_seconds
        while True:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._send_wake.wait(), timeout=1.0)
            self._send_wake.clear()
            if not self.link.session.connected.is_set():
                continue
            due = self.outbox.due(
                time.monotonic(), resend_after, self.settings.max_batches_in_flight
            )
            if not due:
                continue
            # all due batches at once: one broker round trip each, in parallel
            sent = await asyncio.gather(*(self.link.publish_results(b.payload) for b in due))
            now = time.monotonic()
            for batch, ok in zip(due, sent, strict=True):
                if ok:
                    batch.sent_at = now

    # --- lifecycle --------------------------------------------------------------------------

    async def run(self, stop: asyncio.Event) -> None:
        host, port = parse_listen(self.settings.metrics_listen, 9465)
        try:
            server, thread = start_http_server(port, host, registry=self.metrics.registry)
        except OSError as exc:
            raise SystemExit(
                f"agent {self.id}: cannot serve metrics on {self.settings.metrics_listen}: {exc}"
            ) from None
        log.info(
            "agent %s at checkpoint %s (region %s): metrics on http://%s:%d/metrics, broker %s",
            self.id,
            self.settings.checkpoint,
            self.settings.region,
            host,
            port,
            parse_broker_url(self.settings.broker_url),
        )
        background = [
            asyncio.create_task(self.link.run(), name="link"),
            asyncio.create_task(self.scheduler.run(), name="scheduler"),
            asyncio.create_task(self._flush_loop(), name="flush"),
            asyncio.create_task(self._send_loop(), name="send"),
            asyncio.create_task(self._freeze_loop(), name="freeze"),
        ]
        try:
            waiter = asyncio.create_task(stop.wait())
            done, _ = await asyncio.wait([waiter, *background], return_when=asyncio.FIRST_COMPLETED)
            waiter.cancel()
            for task in done:
                if task is not waiter and task.exception() is not None:
                    raise task.exception()  # type: ignore[misc]
        finally:
            log.info("agent %s: stopping", self.id)
            await _cancel(background[1:])  # no new checks, flushes or sends
            await _cancel(list(self._checks))  # checks cut short produce no result
            self._flush()  # every finished result is on disk now
            if self.link.session.connected.is_set():
                with contextlib.suppress(Exception):
                    await asyncio.wait_for(self.link.say_offline(), 2)
            await _cancel(background[:1])
            server.shutdown()
            server.server_close()
            thread.join(timeout=2)
            log.info(
                "agent %s: stopped; %d results wait in the outbox", self.id, self.outbox.results
            )


def make_result(
    monitor_guid: str,
    revision: str,
    monitor_type: str,
    outcome: Outcome,
    scheduled_at: float,
    started_at: float,
    confirms: str | None,
    failed_body_bytes: int,
) -> CheckResult:
    """The result message of one check, with a new uid; the body only for a failure."""
    body = None
    if not outcome.ok and outcome.body:
        body = outcome.body[:failed_body_bytes].decode("utf-8", "replace")
    # built from our own typed values: no validation needed on this hot path
    return CheckResult.model_construct(
        uid=uuid.uuid4().hex,
        monitor_guid=monitor_guid,
        monitor_revision=revision,
        monitor_type=monitor_type,
        scheduled_at=scheduled_at,
        started_at=started_at,
        error_code=int(outcome.error_code),
        error_description=outcome.description,
        error_message=outcome.error_message,
        http_status_code=outcome.http_status_code,
        total_bytes=outcome.total_bytes,
        resolved_ip=outcome.resolved_ip,
        timings_ms=outcome.timings_ms,
        response_body=body,
        warnings=outcome.warnings,
        details=outcome.details,
        attributes=outcome.attributes,
        is_confirmation=confirms is not None,
        confirms=confirms,
    )


async def _cancel(tasks: list[asyncio.Task[None]]) -> None:
    for task in tasks:
        task.cancel()
    for task in tasks:
        with contextlib.suppress(asyncio.CancelledError, Exception):
            await task


async def serve(settings: AgentSettings) -> None:
    stop = stop_event()
    curl = CurlEngine(
        settings.max_concurrency, settings.max_per_host, ca_file=settings.ca_file or None
    )
    try:
        await Agent(settings, curl).run(stop)
    finally:
        curl.close()


def main(settings: AgentSettings) -> None:
    import uvloop

    uvloop.run(serve(settings))
