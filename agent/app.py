"""The agent: assignments in, checks on schedule (in its check workers), results out through
the outbox."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time

from prometheus_client import start_http_server

import shared
from agent import probes
from agent.link import AgentLink
from agent.metrics import AgentMetrics, rss_bytes
from agent.netaddr import agent_addresses
from agent.outbox import Outbox
from agent.pool import WorkerPool
from agent.runner import Unrunnable, monitor_of
from agent.settings import AgentSettings
from shared.messages import Ack, Assignment, Hello, RunRequest, Sync
from shared.settings import parse_broker_url, parse_listen
from shared.signals import stop_event

log = logging.getLogger(__name__)

FREEZE_AFTER_SECONDS = 2.0


class Agent:
    """The main process: MQTT link, assignments, the outbox; the checks run in the workers."""

    def __init__(self, settings: AgentSettings) -> None:
        self.settings = settings
        self.id = settings.agent_id
        self.metrics = AgentMetrics(lambda: float(rss_bytes() + self.pool.worker_metrics.rss()))
        broker = parse_broker_url(settings.broker_url)
        self.ipv4, self.ipv6 = agent_addresses(
            settings.agent_ipv4, settings.agent_ipv6, broker.host, broker.port
        )
        self.outbox = Outbox(settings.data_dir / "outbox" / self.id, self.id)
        self.runnable = frozenset(probes.probe_types())
        self.pool = WorkerPool(settings, self.metrics, self._on_results)
        self.link = AgentLink(settings.broker_url, self.id, self, self.metrics)
        self._results: list[bytes] = []  # from the workers, each a run of joined results
        self._result_count = 0
        self._send_wake = asyncio.Event()
        self._flush_now = asyncio.Event()
        self._update_outbox_metrics()

    # --- LinkHandler ------------------------------------------------------------------------

    def hello(self) -> Hello:
        return Hello(
            agent=self.id,
            checkpoint=self.settings.checkpoint,
            region=self.settings.region,
            ipv4=self.ipv4,
            ipv6=self.ipv6,
            version=shared.__version__,
            probe_types=sorted(self.runnable),
            capacity=self.settings.max_concurrency,
        )

    async def on_connected(self) -> None:
        self.outbox.mark_unsent()
        self._send_wake.set()

    def on_assignment(self, monitor_guid: str, assignment: Assignment | None) -> None:
        if assignment is None:
            self._unassign(monitor_guid, "unassigned")
            return
        try:
            monitor = monitor_of(assignment, self.runnable)
        except Unrunnable as exc:
            log.error("agent %s: monitor %s cannot run here: %s", self.id, monitor_guid, exc)
            self.metrics.dropped.labels(exc.reason).inc()
            return
        if not self.pool.assign(assignment):
            return  # the same assignment again (a resend after reconnect)
        log.info(
            "agent %s: monitor %s (%s) every %gs",
            self.id,
            monitor_guid,
            monitor.Name,
            assignment.schedule.interval_seconds,
        )
        self.metrics.assignments.set(len(self.pool))

    def _unassign(self, guid: str, why: str) -> None:
        if self.pool.remove(guid):
            log.info("agent %s: monitor %s %s", self.id, guid, why)
        self.metrics.assignments.set(len(self.pool))

    def on_sync(self, sync: Sync) -> None:
        for guid in self.pool.guids():
            if guid not in sync.monitors:
                self._unassign(guid, "no longer assigned (sync)")

    def on_run(self, request: RunRequest) -> None:
        guid = request.monitor_guid
        if guid not in self.pool:
            log.warning("agent %s: run request for unknown monitor %s", self.id, guid)
        else:
            self.pool.run_now(guid, request.model_dump_json().encode())

    def on_ack(self, ack: Ack) -> None:
        if self.outbox.acked(ack.batch_ids):
            self._update_outbox_metrics()
            self._send_wake.set()

    def _on_results(self, count: int, joined: bytes) -> None:
        if not count:
            return
        self._results.append(joined)
        self._result_count += count
        if self._result_count >= self.settings.batch_size:
            self._flush_now.set()  # the flush loop writes it: a disk error stays out of here

    # --- results ----------------------------------------------------------------------------

    def _flush(self) -> None:
        """Move the finished results to the on-disk outbox; when the disk refuses they stay in
        memory and the next tick tries again."""
        if not self._results:
            return
        try:
            self.outbox.add(b",".join(self._results), self._result_count)
        except OSError as exc:
            self.metrics.outbox_errors.inc()
            log.error(
                "agent %s: cannot write %d results to the outbox: %s; retrying",
                self.id,
                self._result_count,
                exc,
            )
            return
        self._results = []
        self._result_count = 0
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
        workers = self.pool.start()
        failure = ""
        background = [
            asyncio.create_task(self.link.run(), name="link"),
            asyncio.create_task(self._flush_loop(), name="flush"),
            asyncio.create_task(self._send_loop(), name="send"),
        ]
        try:
            waiter = asyncio.create_task(stop.wait())
            done, _ = await asyncio.wait(
                [waiter, workers, *background], return_when=asyncio.FIRST_COMPLETED
            )
            waiter.cancel()
            for task in done:
                if task is not waiter:
                    # a loop that must never end did: stop, and exit non-zero saying why
                    died = task.exception() or RuntimeError("it returned")
                    name = "workers" if task is workers else task.get_name()
                    log.error(
                        "agent %s: background task %s died: %r; stopping",
                        self.id,
                        name,
                        died,
                        exc_info=died,
                    )
                    failure = f"its {name} task died: {died!r}"
        finally:
            log.info("agent %s: stopping", self.id)
            try:
                # checks cut short produce no result; the finished ones arrive meanwhile, and
                # the flush loop keeps writing them to disk
                await self.pool.stop()
            finally:
                await _cancel(background[1:])  # no more flushes or sends
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
        if failure:
            raise SystemExit(f"agent {self.id}: stopped because {failure} (see above)")


async def _cancel(tasks: list[asyncio.Task[None]]) -> None:
    for task in tasks:
        task.cancel()
    for task in tasks:
        with contextlib.suppress(asyncio.CancelledError, Exception):
            await task


async def serve(settings: AgentSettings) -> None:
    try:
        agent = Agent(settings)
    except OSError as exc:
        raise SystemExit(
            f"agent {settings.agent_id}: cannot use the data directory {settings.data_dir}: "
            f"{exc}; exiting"
        ) from None
    await agent.run(stop_event())


def main(settings: AgentSettings) -> None:
    import uvloop

    uvloop.run(serve(settings))
