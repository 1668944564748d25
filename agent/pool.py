"""The agent's check workers, seen from its main process.

Monitors are spread over the workers by a hash of their guid, so each monitor always runs in
the same worker. The pool keeps every assignment it forwarded: a worker that ends unasked is
started again (with a growing pause if it keeps ending) and given its monitors again.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import signal
import socket
import sys
import time
import zlib
from collections.abc import Callable

from agent.metrics import AgentMetrics
from agent.settings import AgentSettings
from agent.snapshot import WorkerMetrics
from agent.wire import (
    ASSIGN,
    METRICS,
    REMOVE,
    RESULTS,
    RUN,
    STOP,
    FrameError,
    frame,
    read_frame,
    split_results,
)
from agent.worker import SETTINGS_ENV
from shared.messages import Assignment

log = logging.getLogger(__name__)

STOP_GRACE_SECONDS = 10.0
RESTART_PAUSE_MAX = 30.0

OnResults = Callable[[int, bytes], None]


MAX_QUEUED_RUNS = 1000


class _Worker:
    def __init__(self, index: int) -> None:
        self.index = index
        self.proc: asyncio.subprocess.Process | None = None
        self.writer: asyncio.StreamWriter | None = None
        self.stopping = False
        self.queued_runs: list[bytes] = []  # run requests that came while it was restarting

    def send(self, data: bytes) -> bool:
        if self.writer is None or self.writer.is_closing():
            return False
        self.writer.write(data)
        return True


class WorkerPool:
    def __init__(
        self, settings: AgentSettings, metrics: AgentMetrics, on_results: OnResults
    ) -> None:
        self.settings = settings
        self.count = settings.worker_count()
        self.metrics = metrics
        self.worker_metrics = WorkerMetrics()
        metrics.registry.register(self.worker_metrics)
        self._on_results = on_results
        self._workers = [_Worker(index) for index in range(self.count)]
        # guid -> ((revision, interval, offset, rotation position, count), the Assignment's JSON)
        self._assignments: dict[str, tuple[tuple[str, int, float, int, int], bytes]] = {}
        # the settings, but not the broker's URL and credentials: workers never talk to it
        self._env = {k: v for k, v in os.environ.items() if not k.startswith("PICKET_")}
        self._env[SETTINGS_ENV] = settings.model_dump_json(exclude={"broker_url"})
        self._task: asyncio.Task[None] | None = None
        self._stopping = asyncio.Event()

    def __len__(self) -> int:
        return len(self._assignments)

    def __contains__(self, guid: str) -> bool:
        return guid in self._assignments

    def guids(self) -> list[str]:
        return list(self._assignments)

    def payloads(self) -> list[bytes]:
        """Every assignment's JSON, as it came (to save them)."""
        return [payload for _, payload in self._assignments.values()]

    def _owner(self, guid: str) -> _Worker:
        return self._workers[zlib.crc32(guid.encode()) % self.count]

    def assign(self, assignment: Assignment) -> bool:
        """Hand the monitor to its worker. False, and nothing sent, if the worker has this very
        assignment already: the same revision, interval, offset and rotation (a resend after a
        reconnect); a new phase or turn in the rotation alone is news."""
        guid, schedule = assignment.monitor_guid, assignment.schedule
        version = (
            assignment.revision,
            schedule.interval_seconds,
            schedule.offset_seconds,
            schedule.rotation_position,
            schedule.rotation_count,
        )
        known = self._assignments.get(guid)
        if known is not None and known[0] == version:
            return False
        payload = assignment.model_dump_json().encode()
        self._assignments[guid] = (version, payload)
        self._owner(guid).send(frame(ASSIGN, payload))
        return True

    def remove(self, guid: str) -> bool:
        if self._assignments.pop(guid, None) is None:
            return False
        self._owner(guid).send(frame(REMOVE, guid.encode()))
        return True

    def run_now(self, guid: str, request: bytes) -> None:
        """Forward a run request to the monitor's worker; while that worker restarts, it is
        kept (up to MAX_QUEUED_RUNS) and sent once the worker has its monitors again."""
        worker = self._owner(guid)
        if worker.send(frame(RUN, request)):
            return
        if len(worker.queued_runs) < MAX_QUEUED_RUNS:
            worker.queued_runs.append(request)
        else:
            log.warning(
                "agent %s: check worker %d is restarting and %d run requests wait; monitor %s's "
                "dropped",
                self.settings.agent_id,
                worker.index,
                len(worker.queued_runs),
                guid,
            )

    # --- processes ----------------------------------------------------------------------------

    def start(self) -> asyncio.Task[None]:
        """Start the workers; the task ends when they have all stopped (`stop`)."""
        self._task = asyncio.create_task(self._run(), name="workers")
        return self._task

    async def _run(self) -> None:
        async with asyncio.TaskGroup() as group:
            for worker in self._workers:
                group.create_task(self._keep(worker), name=f"worker-{worker.index}")

    async def _keep(self, worker: _Worker) -> None:
        """Run the worker until the pool stops; start it again whenever it ends or cannot be
        started (a fork refused for lack of memory or descriptors is retried, not fatal)."""
        pause = 0.5
        while not worker.stopping:
            started = time.monotonic()
            try:
                code = await self._run_once(worker)
                why = f"was killed by signal {-code}" if code < 0 else f"exited with code {code}"
            except OSError as exc:
                why = f"could not be started ({exc})"
            if worker.stopping:
                return
            self.metrics.worker_restarts.inc()
            if time.monotonic() - started > 60:
                pause = 0.5  # it ran a good while: not a crash loop
            log.error(
                "agent %s: check worker %d %s; starting it again in %.1fs",
                self.settings.agent_id,
                worker.index,
                why,
                pause,
            )
            with contextlib.suppress(TimeoutError):  # a stop ends the pause
                await asyncio.wait_for(self._stopping.wait(), pause)
            pause = min(RESTART_PAUSE_MAX, pause * 2)

    async def _run_once(self, worker: _Worker) -> int:
        ours, theirs = socket.socketpair()
        try:
            try:
                worker.proc = await asyncio.create_subprocess_exec(
                    sys.executable,
                    "-m",
                    "agent.worker",
                    str(theirs.fileno()),
                    str(worker.index),
                    str(os.getpid()),
                    env=self._env,
                    stdin=asyncio.subprocess.DEVNULL,
                    pass_fds=(theirs.fileno(),),
                )
            finally:
                theirs.close()
            reader, worker.writer = await asyncio.open_connection(sock=ours)
        except BaseException:
            ours.close()
            raise
        if worker.stopping:  # asked to stop while it was starting
            worker.writer.write(frame(STOP, b""))
        for guid, (_, payload) in self._assignments.items():
            if self._owner(guid) is worker:
                worker.writer.write(frame(ASSIGN, payload))
        for request in worker.queued_runs:
            worker.writer.write(frame(RUN, request))
        worker.queued_runs.clear()
        self.metrics.workers.inc()
        try:
            await self._read(worker, reader)
        finally:
            self.metrics.workers.dec()
            self.worker_metrics.retire(worker.index)
            worker.writer.close()
            worker.writer = None
        return await self._reap(worker)

    async def _read(self, worker: _Worker, reader: asyncio.StreamReader) -> None:
        try:
            while (got := await read_frame(reader)) is not None:
                kind, payload = got
                if kind == RESULTS:
                    self._on_results(*split_results(payload))
                elif kind == METRICS:
                    self.worker_metrics.update(worker.index, payload)
                else:
                    raise FrameError(f"unknown frame kind {kind}")
        except (FrameError, ConnectionError) as exc:
            log.error("agent %s: check worker %d: %s", self.settings.agent_id, worker.index, exc)

    async def _reap(self, worker: _Worker) -> int:
        assert worker.proc is not None
        try:
            return await asyncio.wait_for(worker.proc.wait(), STOP_GRACE_SECONDS)
        except TimeoutError:
            log.error(
                "agent %s: check worker %d closed its end but did not exit; killing it",
                self.settings.agent_id,
                worker.index,
            )
            worker.proc.kill()
            return await worker.proc.wait()

    async def stop(self) -> None:
        """Ask every worker to finish: it cancels its checks, sends the results it has and
        exits; those results have reached `on_results` when this returns. A worker that
        does not finish within STOP_GRACE_SECONDS is killed. Never raises: a pool that failed
        has been reported by its task already."""
        task = self._task
        if task is None or task.done():
            return
        self._stopping.set()
        for worker in self._workers:
            worker.stopping = True
            worker.send(frame(STOP, b""))
        try:
            await asyncio.wait_for(asyncio.shield(task), STOP_GRACE_SECONDS)
            return
        except TimeoutError:
            log.error("agent %s: check workers did not stop; killing them", self.settings.agent_id)
        except Exception:
            log.exception("agent %s: check workers failed while stopping", self.settings.agent_id)
        for worker in self._workers:
            if worker.proc is not None and worker.proc.returncode is None:
                with contextlib.suppress(ProcessLookupError):
                    worker.proc.send_signal(signal.SIGKILL)
        with contextlib.suppress(Exception):
            await task
