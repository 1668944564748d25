"""A check worker: one process per core, running its share of the agent's monitors.

The agent's main process starts it as `python -m agent.worker FD INDEX PARENT-PID`, with its
settings in PICKET_WORKER_SETTINGS and a socket pair's end as FD. Frames (`agent.wire`) bring
assignments, removals and run requests; results go back every RESULTS_EVERY seconds, each time
with a metrics snapshot. The worker ignores SIGINT and SIGTERM: the main process stops it with
a STOP frame, and if the main process dies the socket's end (or the kernel's parent-death
signal) ends it too.
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import logging
import os
import signal
import socket
import sys
import time

from pydantic import ValidationError

from agent.curl import CurlEngine
from agent.metrics import CheckMetrics, rss_bytes
from agent.outbox import batch_overhead, encode_chunks
from agent.runner import Runner
from agent.settings import AgentSettings
from agent.snapshot import snapshot
from agent.wire import (
    ASSIGN,
    METRICS,
    REMOVE,
    RUN,
    STOP,
    FrameError,
    frame,
    read_frame,
    results_frame,
)
from shared import logs
from shared.messages import Assignment, RunRequest
from shared.secrets import validation_summary

log = logging.getLogger(__name__)

SETTINGS_ENV = "PICKET_WORKER_SETTINGS"
RESULTS_EVERY = 0.05
RESULTS_PER_FRAME = 100  # and at most PICKET_MAX_MESSAGE_BYTES a frame: far below MAX_FRAME
METRICS_EVERY = 1.0


def share(total: int, workers: int) -> int:
    """A worker's part of an agent-wide bound."""
    return max(1, -(-total // workers))


class Worker:
    def __init__(
        self,
        settings: AgentSettings,
        index: int,
        reader: asyncio.StreamReader,
        writer: asyncio.StreamWriter,
    ) -> None:
        workers = settings.worker_count()
        self.name = f"{settings.agent_id}/worker-{index}"
        self.curl = CurlEngine(
            share(settings.max_concurrency, workers),
            share(settings.max_per_host, workers),
            ca_file=settings.ca_file or None,
        )
        self.metrics = CheckMetrics()
        self.runner = Runner(
            settings,
            self.curl,
            self.metrics,
            self.name,
            max_pending=share(settings.max_pending_checks, workers),
        )
        self.reader = reader
        self.writer = writer
        self.result_bytes = settings.max_message_bytes - batch_overhead(settings.agent_id)

    def _send_results(self) -> bool:
        results = self.runner.results
        if not results:
            return False
        self.runner.results = []
        # runs that fit in one MQTT message each, so the agent can batch them by bytes
        for count, joined in encode_chunks(results, self.result_bytes, RESULTS_PER_FRAME):
            self.writer.write(results_frame(count, joined))
        return True

    def _send_metrics(self) -> None:
        self.writer.write(frame(METRICS, snapshot(self.metrics.registry, rss_bytes())))

    async def _results_loop(self) -> None:
        """Results every RESULTS_EVERY seconds, each time followed by the metrics that count
        them (so the agent's /metrics never lags its results); metrics at least every
        METRICS_EVERY seconds."""
        last_metrics = time.monotonic()
        while True:
            await asyncio.sleep(RESULTS_EVERY)
            now = time.monotonic()
            if self._send_results() or now - last_metrics >= METRICS_EVERY:
                last_metrics = now
                self._send_metrics()
            await self.writer.drain()

    def _on_frame(self, kind: int, payload: bytes) -> None:
        """One frame from the main process. One that cannot be used is logged and skipped:
        the main process validated it, so only a bug gets here, and a worker that crashed on
        it would crash again on the same assignment when restarted, with all its monitors."""
        try:
            if kind == ASSIGN:
                self.runner.assign(Assignment.model_validate_json(payload))
            elif kind == REMOVE:
                self.runner.remove(payload.decode())
            elif kind == RUN:
                request = RunRequest.model_validate_json(payload)
                self.runner.run_now(request.monitor_guid, request.confirms)
            else:
                raise FrameError(f"unknown frame kind {kind}")
        except ValidationError as exc:  # its own text quotes the assignment: secrets
            log.error(
                "%s: frame %r (%d bytes) skipped: %s",
                self.name,
                chr(kind),
                len(payload),
                validation_summary(exc),
            )
        except Exception:
            log.exception("%s: frame %r (%d bytes) skipped", self.name, chr(kind), len(payload))

    async def _read(self) -> None:
        """Frames from the main process until STOP or the end of the stream."""
        while (got := await read_frame(self.reader)) is not None and got[0] != STOP:
            self._on_frame(*got)

    async def run(self) -> None:
        self._send_metrics()  # at once: the agent's /metrics has this worker's series from now
        reading = asyncio.create_task(self._read(), name="read")
        background = [
            asyncio.create_task(self.runner.run(), name="runner"),
            asyncio.create_task(self._results_loop(), name="results"),
        ]
        try:
            await asyncio.wait([reading, *background], return_when=asyncio.FIRST_COMPLETED)
            for task in (reading, *background):
                if task.done() and (task is not reading or task.exception() is not None):
                    # a loop that ends by itself is a bug: exit, and the agent starts us again
                    raise task.exception() or RuntimeError(f"{task.get_name()} ended")
        finally:
            for task in (reading, *background):
                task.cancel()
            for task in (reading, *background):
                with contextlib.suppress(asyncio.CancelledError, Exception):
                    await task
            await self.runner.cancel_checks()
            self.curl.close()
            with contextlib.suppress(ConnectionError):
                self._send_results()  # every finished check reaches the main process
                self._send_metrics()
                await self.writer.drain()
                self.writer.close()
                await self.writer.wait_closed()


async def serve(settings: AgentSettings, index: int, fd: int) -> None:
    sock = socket.socket(fileno=fd)
    reader, writer = await asyncio.open_connection(sock=sock)
    await Worker(settings, index, reader, writer).run()


def _die_with_parent(parent: int) -> None:
    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG
    if os.getppid() != parent:  # it died before we asked
        sys.exit(1)


def main(argv: list[str]) -> None:
    import uvloop

    fd, index, parent = (int(arg) for arg in argv[:3])
    _die_with_parent(parent)
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the main process decides when we stop
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    settings = AgentSettings.model_validate_json(os.environ[SETTINGS_ENV])
    logs.setup(settings.log_level, f"agent/worker-{index}")
    try:
        uvloop.run(serve(settings, index, fd))
    except ConnectionError as exc:
        # the main process died (kill -9: the kernel closes its files before our death signal
        # lands); nobody is left to hand results to, so this is an exit, not a crash
        log.warning(
            "worker %d: the link to the agent's main process is lost (%s); exiting", index, exc
        )
        sys.exit(1)


if __name__ == "__main__":
    main(sys.argv[1:])
