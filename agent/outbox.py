"""Results on disk until the controller acknowledges them.

Each batch is one JSON file, written (temp file, fsync, rename) before it is first sent and
deleted only when the controller's ack says the batch is committed. A crash or a restart
loses nothing; the controller's unique key on result ids drops what is sent twice.
"""

from __future__ import annotations

import logging
import os
import time
import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pydantic import ValidationError
from pydantic_core import to_json

from shared.messages import CheckResult, ResultBatch

log = logging.getLogger(__name__)


@dataclass
class PendingBatch:
    batch_id: str
    path: Path
    payload: bytes
    size: int
    sent_at: float | None = None  # monotonic time of the last send


class Outbox:
    def __init__(self, directory: Path, agent_id: str) -> None:
        self._dir = directory
        self._agent = agent_id
        self._dir.mkdir(parents=True, exist_ok=True)
        self._pending: dict[str, PendingBatch] = {}
        self._load()

    def _load(self) -> None:
        for stale in self._dir.glob("*.tmp"):
            stale.unlink(missing_ok=True)
        for path in sorted(self._dir.glob("*.json")):
            try:
                payload = path.read_bytes()
                batch = ResultBatch.model_validate_json(payload)
            except (OSError, ValidationError) as exc:
                log.error("outbox file %s unreadable, moved aside: %s", path, exc)
                path.rename(path.with_suffix(".bad"))
                continue
            if batch.agent != self._agent:
                # the agent id changed: send under the new id, results keep their own ids
                batch = batch.model_copy(update={"agent": self._agent})
                payload = batch.model_dump_json().encode()
            self._pending[batch.batch_id] = PendingBatch(
                batch.batch_id, path, payload, len(batch.results)
            )
        if self._pending:
            log.info("outbox: %d batches (%d results) from before", len(self), self.results)

    def __len__(self) -> int:
        return len(self._pending)

    @property
    def results(self) -> int:
        return sum(batch.size for batch in self._pending.values())

    def add(self, items: bytes, count: int) -> PendingBatch:
        """A new batch of `count` results, given as their JSON objects joined by commas
        (`encode_results`), on disk before this returns."""
        batch_id = uuid.uuid4().hex
        head = _HEAD.format(batch=batch_id, agent=self._agent).encode()
        data = b"".join((head, items, b"]}"))
        path = self._dir / f"{time.time_ns():020d}-{batch_id}.json"
        tmp = path.with_suffix(".tmp")
        with open(tmp, "wb") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
        tmp.rename(path)
        _sync_directory(self._dir)  # the rename itself must survive a crash too
        pending = PendingBatch(batch_id, path, data, count)
        self._pending[batch_id] = pending
        return pending

    def acked(self, batch_ids: list[str]) -> int:
        done = 0
        for batch_id in batch_ids:
            batch = self._pending.pop(batch_id, None)
            if batch is not None:
                batch.path.unlink(missing_ok=True)
                done += 1
        return done

    def due(self, now: float, resend_after: float, limit: int) -> list[PendingBatch]:
        """Batches never sent, or sent longer than `resend_after` ago with no ack, oldest first,
        keeping at most `limit` unacknowledged sends in flight."""
        in_flight = sum(
            1
            for b in self._pending.values()
            if b.sent_at is not None and now - b.sent_at < resend_after
        )
        room = max(0, limit - in_flight)
        chosen: list[PendingBatch] = []
        for batch in self._pending.values():
            if len(chosen) >= room:
                break
            if batch.sent_at is None or now - batch.sent_at >= resend_after:
                chosen.append(batch)
        return chosen

    def mark_unsent(self) -> None:
        """After a reconnect nothing sent before can be trusted to have arrived."""
        for batch in self._pending.values():
            batch.sent_at = None


_HEAD = '{{"batch_id":"{batch}","agent":"{agent}","results":['  # ids are [0-9a-z._-]


def encode_results(results: Sequence[CheckResult | dict[str, Any]]) -> bytes:
    """The results' JSON objects joined by commas: the inside of a batch's `results`."""
    return to_json(results)[1:-1]


def _sync_directory(directory: Path) -> None:
    fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
