"""The agent: assignments in, checks on schedule (in its check workers), results out through
the outbox."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections import deque

from prometheus_client import start_http_server

import shared
from agent import probes
from agent.assignments import SavedAssignments
from agent.link import AgentLink
from agent.metrics import AgentMetrics, rss_bytes
from agent.netaddr import agent_addresses
from agent.outbox import Outbox, batch_overhead
from agent.pool import WorkerPool
from agent.runner import Unrunnable, monitor_of
from agent.settings import AgentSettings
from shared.messages import Ack, Assignment, Hello, RunRequest, Sync
from shared.settings import parse_broker_url, parse_listen
from shared.signals import stop_event
from shared.tasks import cancel_and_wait

log = logging.getLogger(__name__)

FREEZE_AFTER_SECONDS = 2.0
SAVE_ASSIGNMENTS_EVERY = 1.0  # seconds: at most one rewrite of the file a second
DROP_LOG_EVERY = 10.0  # seconds between log lines about dropped results
# while the broker is away nothing is sent, so results are written in fewer, larger batches:
# a day's outage then leaves thousands of files, not hundreds of thousands (each one an entry
# in the outbox's index in memory); a crash then loses at most this many seconds of results
OFFLINE_FLUSH_SECONDS = 5.0


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
        self._dropped_logged = self._write_error_logged = -DROP_LOG_EVERY
        self.outbox = Outbox(
            settings.data_dir / "outbox" / self.id,
            self.id,
            settings.outbox_max_bytes,
            self._dropped,
            settings.max_message_bytes,
        )
        self.runnable = frozenset(probes.probe_types())
        self.pool = WorkerPool(settings, self.metrics, self._on_results)
        self.link = AgentLink(
            settings.broker_url,
            self.id,
            self,
            self.metrics,
            keepalive=settings.presence_keepalive_seconds,
        )
        # from the workers: (count, a run of joined results), each run fitting in a message
        self._results: deque[tuple[int, bytes]] = deque()
        self._result_count = 0
        self._result_bytes = 0
        self._send_wake = asyncio.Event()
        self._flush_now = asyncio.Event()
        self._update_outbox_metrics()
        # results waiting for an ack: on disk and still in memory
        self.metrics.outbox_results.set_function(
            lambda: float(self.outbox.results + self._result_count)
        )
        self.metrics.outbox_unwritten_bytes.set_function(lambda: float(self._result_bytes))
        self._saved = SavedAssignments(settings.data_dir / "assignments", self.id)
        self._assignments_changed = False
        self._restore_assignments()

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
        self._assignments_changed = True
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
            self._assignments_changed = True
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
        self._results.append((count, joined))
        self._result_count += count
        self._result_bytes += len(joined) + 1
        if (
            self._result_count >= self.settings.batch_size
            or self._result_bytes >= self.settings.max_message_bytes
        ):
            self._flush_now.set()  # the flush loop writes it: a disk error stays out of here
        if self._result_bytes > self.settings.outbox_memory_max_bytes:
            # the disk refuses writes and memory is full too: the oldest results go
            results = runs = 0
            while self._results and self._result_bytes > self.settings.outbox_memory_max_bytes:
                dropped, data = self._results.popleft()
                self._result_count -= dropped
                self._result_bytes -= len(data) + 1
                results += dropped
                runs += 1
            self._dropped("disk_refused", results, runs)

    # --- results ----------------------------------------------------------------------------

    def _flush(self) -> None:
        """Move the finished results to the on-disk outbox, in batches of at most
        PICKET_MAX_MESSAGE_BYTES; when the disk refuses they stay in memory (up to
        PICKET_OUTBOX_MEMORY_MAX_BYTES) and the next tick tries again."""
        room = self.settings.max_message_bytes - batch_overhead(self.id)
        written = False
        while self._results:
            runs: list[bytes] = []
            count = size = 0
            for run_count, run in self._results:  # each run fits on its own (the workers')
                if runs and size + 1 + len(run) > room:
                    break
                runs.append(run)
                count += run_count
                size += len(run) + (1 if size else 0)
            try:
                self.outbox.add(b",".join(runs), count)
            except OSError as exc:
                self.metrics.outbox_errors.inc()
                now = time.monotonic()
                if now - self._write_error_logged >= DROP_LOG_EVERY:  # retried every tick
                    self._write_error_logged = now
                    log.error(
                        "agent %s: cannot write %d results to the outbox: %s; they wait in "
                        "memory (%d bytes of at most %d) and the write is retried",
                        self.id,
                        self._result_count,
                        exc,
                        self._result_bytes,
                        self.settings.outbox_memory_max_bytes,
                    )
                break
            written = True
            for _ in runs:
                _, run = self._results.popleft()
                self._result_bytes -= len(run) + 1
            self._result_count -= count
        self._update_outbox_metrics()
        if written:
            self._send_wake.set()

    def _dropped(self, reason: str, results: int, batches: int) -> None:
        """The one place results are lost: count it, and say so (at most every 10 s)."""
        self.metrics.outbox_dropped.labels(reason).inc(results)
        now = time.monotonic()
        if now - self._dropped_logged >= DROP_LOG_EVERY:
            self._dropped_logged = now
            where = {
                "outbox_full": f"the outbox is full ({self.settings.outbox_max_bytes} bytes, "
                "PICKET_OUTBOX_MAX_BYTES)",
                "disk_refused": "the disk refuses writes and memory for them is full "
                f"({self.settings.outbox_memory_max_bytes} bytes, "
                "PICKET_OUTBOX_MEMORY_MAX_BYTES)",
                "unreadable": "an outbox file could not be used (set aside as .bad)",
            }[reason]
            log.error(
                "agent %s: %s: dropped %d results (%d batches); "
                "see picket_agent_outbox_dropped_results_total",
                self.id,
                where,
                results,
                batches,
            )

    def _update_outbox_metrics(self) -> None:
        self.metrics.outbox_batches.set(len(self.outbox))
        self.metrics.outbox_bytes.set(self.outbox.bytes)

    # --- assignments on disk ----------------------------------------------------------------

    def _restore_assignments(self) -> None:
        """The assignments saved last, checked like MQTT messages: checks start with them
        even if the broker is away; retained assignments and `sync` correct them later."""
        assignments, refused = self._saved.load()
        if refused:
            self.metrics.dropped.labels("malformed").inc(refused)
        for assignment in assignments:
            self.on_assignment(assignment.monitor_guid, assignment)
        self._assignments_changed = False

    def _save_assignments(self) -> None:
        """On stop: write them now, here."""
        if self._assignments_changed:
            self._assignments_changed = False
            try:
                self._saved.save(self.pool.payloads())
            except OSError as exc:
                self._save_failed(exc)

    async def _save_assignments_in_thread(self) -> None:
        """While running: thousands of monitors are megabytes to write and fsync, so off the
        loop (the file's own lock keeps this and a save on stop from overlapping)."""
        self._assignments_changed = False
        try:
            await asyncio.to_thread(self._saved.save, self.pool.payloads())
        except asyncio.CancelledError:
            self._assignments_changed = True  # stopping: the save on stop writes them again
            raise
        except OSError as exc:
            self._save_failed(exc)

    def _save_failed(self, exc: OSError) -> None:
        self._assignments_changed = True
        self.metrics.assignments_save_errors.inc()
        log.error(
            "agent %s: cannot save its assignments to %s: %s; retrying",
            self.id,
            self._saved.path,
            exc,
        )

    async def _flush_loop(self) -> None:
        interval = self.settings.batch_interval_ms / 1000.0
        saved = flushed = 0.0
        while True:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._flush_now.wait(), timeout=interval)
            full = self._flush_now.is_set()  # a whole batch waits
            self._flush_now.clear()
            now = time.monotonic()
            if (
                full
                or self.link.session.connected.is_set()
                or now - flushed >= OFFLINE_FLUSH_SECONDS
            ):
                flushed = now
                self._flush()
            if self._assignments_changed and time.monotonic() - saved >= SAVE_ASSIGNMENTS_EVERY:
                saved = time.monotonic()
                await self._save_assignments_in_thread()

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
            # read from disk only now; a file that proved unusable has been set aside
            payloads = [(b, p) for b in due if (p := self.outbox.payload(b)) is not None]
            # all due batches at once: one broker round trip each, in parallel
            sent = await asyncio.gather(*(self.link.publish_results(p) for _, p in payloads))
            now = time.monotonic()
            for (batch, _), ok in zip(payloads, sent, strict=True):
                if ok:
                    self.outbox.mark_sent(batch, now)
            if len(payloads) < len(due):  # set aside, or rewritten as new batches
                self._update_outbox_metrics()
                self._send_wake.set()

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
                await cancel_and_wait(background[1:])  # no more flushes or sends
                self._flush()  # every finished result is on disk now
                self._save_assignments()
            if self.link.session.connected.is_set():
                with contextlib.suppress(Exception):
                    await asyncio.wait_for(self.link.say_offline(), 2)
            await cancel_and_wait(background[:1])
            server.shutdown()
            server.server_close()
            thread.join(timeout=2)
            log.info(
                "agent %s: stopped; %d results wait in the outbox", self.id, self.outbox.results
            )
        if failure:
            raise SystemExit(f"agent {self.id}: stopped because {failure} (see above)")


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
