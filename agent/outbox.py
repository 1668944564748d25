"""Results on disk until the controller acknowledges them.

Each batch is one JSON file, written (temp file, fsync, rename) before it is first sent and
deleted only when the controller's ack says the batch is committed. A crash or a restart
loses nothing; the controller's unique key on result ids drops what is sent twice.

The outbox is bounded: at most `max_bytes` on disk (counted in 4 KiB blocks, as the file
system stores them). A batch that would go over the bound first drops the oldest batches:
the one place Picket drops results (counted and logged by the agent). Only an index of the
files is kept in memory; a batch's payload is read from its file each time it is sent.
"""

from __future__ import annotations

import logging
import re
import time
import uuid
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pydantic import ValidationError
from pydantic_core import to_json

from agent.files import write_atomically as _write_atomically
from shared.messages import CheckResult, ResultBatch

log = logging.getLogger(__name__)

BLOCK = 4096
# <ns since epoch>-<batch id>-<result count>.json; files written before the count was in the
# name (<ns>-<batch id>.json) are read and counted when loaded
_NAME = re.compile(r"^\d+-(?P<batch>[0-9A-Za-z._]+)-(?P<count>\d+)\.json$")

# (reason, results, batches): outbox_full (dropped to stay within the bound), unreadable
# (a file whose content is bad, set aside as .bad)
OnDrop = Callable[[str, int, int], None]


@dataclass(slots=True)
class PendingBatch:
    batch_id: str
    path: Path
    count: int  # results in it
    size: int  # bytes on disk, in whole blocks
    checked: bool  # written by this process, or validated since it was loaded
    sent_at: float | None = None  # monotonic time of the last send


def _blocks(size: int) -> int:
    return -(-size // BLOCK) * BLOCK


class Outbox:
    def __init__(
        self,
        directory: Path,
        agent_id: str,
        max_bytes: int = 4 * 1024**3,
        on_drop: OnDrop | None = None,
        max_message_bytes: int = 524_288,
    ) -> None:
        self._dir = directory
        self._agent = agent_id
        self.max_bytes = max_bytes
        self.max_message_bytes = max_message_bytes
        self._on_drop = on_drop
        self._dir.mkdir(parents=True, exist_ok=True)
        self._pending: dict[str, PendingBatch] = {}  # oldest first
        self._sent: dict[str, PendingBatch] = {}  # those with sent_at set
        self.bytes = 0
        self.results = 0
        self._load()

    def _load(self) -> None:
        for stale in self._dir.glob("*.tmp"):
            stale.unlink(missing_ok=True)
        for path in sorted(self._dir.glob("*.json")):
            match = _NAME.match(path.name)
            try:
                size = _blocks(path.stat().st_size)
                if match:  # validated when first sent, not all at start (gigabytes)
                    self._index(
                        PendingBatch(match["batch"], path, int(match["count"]), size, False)
                    )
                    continue
                batch = ResultBatch.model_validate_json(path.read_bytes())
            except (OSError, ValidationError) as exc:
                self._set_aside(path, exc, int(match["count"]) if match else 0)
                continue
            self._index(PendingBatch(batch.batch_id, path, len(batch.results), size, False))
        if self._pending:
            log.info(
                "outbox: %d batches (%d results, %d bytes) from before",
                len(self),
                self.results,
                self.bytes,
            )
        self._make_room(0)

    def _index(self, batch: PendingBatch) -> None:
        self._pending[batch.batch_id] = batch
        self.bytes += batch.size
        self.results += batch.count

    def _forget(self, batch_id: str, unlink: bool = True) -> PendingBatch | None:
        batch = self._pending.pop(batch_id, None)
        if batch is not None:
            self._sent.pop(batch_id, None)
            self.bytes -= batch.size
            self.results -= batch.count
            if unlink:
                batch.path.unlink(missing_ok=True)
        return batch

    def _set_aside(self, path: Path, exc: Exception, count: int = 0) -> None:
        """A file that cannot be used: renamed to .bad and its `count` results counted as
        dropped (the file stays for a person to look at)."""
        log.error("outbox file %s unreadable, moved aside: %s", path, str(exc).splitlines()[0])
        if count and self._on_drop is not None:
            self._on_drop("unreadable", count, 1)
        try:
            path.rename(path.with_suffix(".bad"))
        except OSError as err:
            log.error("outbox file %s cannot be moved aside: %s", path, err)

    def __len__(self) -> int:
        return len(self._pending)

    def _make_room(self, size: int) -> None:
        """Drop the oldest batches until `size` more bytes fit within the bound."""
        results = batches = 0
        while self._pending and self.bytes + size > self.max_bytes:
            oldest = self._forget(next(iter(self._pending)))
            assert oldest is not None
            results += oldest.count
            batches += 1
        if batches and self._on_drop is not None:
            self._on_drop("outbox_full", results, batches)

    def add(self, items: bytes, count: int) -> PendingBatch:
        """A new batch of `count` results, given as their JSON objects joined by commas
        (`encode_results`), on disk before this returns. To stay within `max_bytes` the
        oldest batches are dropped first (`on_drop`)."""
        batch_id = uuid.uuid4().hex
        head = _HEAD.format(batch=batch_id, agent=self._agent).encode()
        data = b"".join((head, items, b"]}"))
        size = _blocks(len(data))
        path = self._dir / f"{time.time_ns():020d}-{batch_id}-{count}.json"
        _write_atomically(path, data)
        # room is made once the batch is written: a disk that refuses it costs no older batch
        self._make_room(size)
        pending = PendingBatch(batch_id, path, count, size, True)
        self._index(pending)
        return pending

    def payload(self, batch: PendingBatch) -> bytes | None:
        """The batch as sent, read from its file; a file from before this process is validated
        first (and re-addressed if the agent id changed). None if it is gone or unusable: then
        it has been logged, moved aside and forgotten."""
        try:
            data = batch.path.read_bytes()
        except FileNotFoundError as exc:  # removed behind our back: nothing left to send
            log.error("outbox file %s is gone: %s", batch.path, exc)
            self._forget(batch.batch_id, unlink=False)
            return None
        except OSError as exc:
            # a read that fails now (no file descriptor left under load, an I/O error) says
            # nothing about the file: keep it and try again after the ack timeout
            log.error("outbox file %s not readable now (retried later): %s", batch.path, exc)
            self.mark_sent(batch, time.monotonic())
            return None
        try:
            if batch.checked:
                return data
            parsed = ResultBatch.model_validate_json(data)
            if parsed.batch_id != batch.batch_id or len(parsed.results) != batch.count:
                raise ValueError("its name does not match its content")
        except ValueError as exc:  # pydantic's ValidationError is one: the file is bad
            self._set_aside(batch.path, exc, batch.count)
            self._forget(batch.batch_id, unlink=False)
            return None
        if parsed.agent != self._agent or len(data) > self.max_message_bytes:
            self._rewrite(batch, parsed)
            return None
        batch.checked = True
        return data

    def _rewrite(self, batch: PendingBatch, parsed: ResultBatch) -> None:
        """A batch from before that was written under another agent id, or before batches
        were bounded by size: its results go into new batches (sent on the next round) and it
        is forgotten. Results keep their ids, so one stored already is not stored twice."""
        room = self.max_message_bytes - batch_overhead(self._agent)
        results = [result.model_dump() for result in parsed.results]
        try:
            for count, joined in encode_chunks(results, room, len(results)):
                self.add(joined, count)
        except OSError as exc:
            log.error("outbox file %s not rewritten (retried later): %s", batch.path, exc)
            # due again only after the ack timeout, like a send: else the send loop would
            # retry it at once, forever, while the disk refuses
            self.mark_sent(batch, time.monotonic())
            return
        self._forget(batch.batch_id)

    def acked(self, batch_ids: list[str]) -> int:
        done = 0
        for batch_id in batch_ids:
            if self._forget(batch_id) is not None:
                done += 1
        return done

    def mark_sent(self, batch: PendingBatch, now: float) -> None:
        if batch.batch_id in self._pending:
            batch.sent_at = now
            self._sent[batch.batch_id] = batch

    def due(self, now: float, resend_after: float, limit: int) -> list[PendingBatch]:
        """Batches never sent, or sent longer than `resend_after` ago with no ack, oldest first,
        keeping at most `limit` unacknowledged sends in flight."""
        in_flight = sum(
            1
            for b in self._sent.values()
            if b.sent_at is not None and now - b.sent_at < resend_after
        )
        room = max(0, limit - in_flight)
        chosen: list[PendingBatch] = []
        if not room:
            return chosen
        for batch in self._pending.values():  # the sent ones are mostly the oldest
            if batch.sent_at is None or now - batch.sent_at >= resend_after:
                chosen.append(batch)
                if len(chosen) >= room:
                    break
        return chosen

    def mark_unsent(self) -> None:
        """After a reconnect nothing sent before can be trusted to have arrived."""
        for batch in self._sent.values():
            batch.sent_at = None
        self._sent.clear()


_HEAD = '{{"batch_id":"{batch}","agent":"{agent}","results":['  # ids are [0-9a-z._-]
_TAIL = 2  # "]}"


def batch_overhead(agent_id: str) -> int:
    """Bytes a batch adds around its results' joined JSON objects."""
    return len(_HEAD.format(batch="0" * 32, agent=agent_id)) + _TAIL


def encode_results(results: Sequence[CheckResult | dict[str, Any]]) -> bytes:
    """The results' JSON objects joined by commas: the inside of a batch's `results`."""
    return to_json(results)[1:-1]


def encode_chunks(
    results: Sequence[dict[str, Any]], limit: int, most: int
) -> Iterator[tuple[int, bytes]]:
    """The results' JSON objects joined by commas in runs of at most `most` results and
    `limit` bytes; a result too large on its own is cut to fit (`fit_result`)."""
    run: list[bytes] = []
    size = 0
    for result in results:
        encoded = to_json(result)
        if len(encoded) > limit:
            encoded = fit_result(result, limit)
        if run and (size + 1 + len(encoded) > limit or len(run) >= most):
            yield len(run), b",".join(run)
            run, size = [], 0
        size += len(encoded) + (1 if run else 0)
        run.append(encoded)
    if run:
        yield len(run), b",".join(run)


_CUT = "result cut by the agent to fit PICKET_MAX_MESSAGE_BYTES ({limit} bytes; it had {size}): "


def fit_result(result: dict[str, Any], limit: int) -> bytes:
    """A result that does not fit in one message, cut down until it does and marked: its
    details become {"Truncated": ...}, then its body, messages, warnings and attributes are
    trimmed. Never dropped, never sent oversized."""
    size = len(to_json(result))
    cut = dict(result)
    notes: list[str] = []

    def fits() -> bytes | None:
        marked = {
            **cut,
            "warnings": [
                *cut.get("warnings", []),
                _CUT.format(limit=limit, size=size) + ", ".join(notes),
            ],
        }
        encoded = to_json(marked)
        return encoded if len(encoded) <= limit else None

    if cut.get("details"):
        original = len(cut["details"])
        cut["details"] = to_json({"Truncated": {"OriginalBytes": original}}).decode()
        notes.append(f"details removed ({original} bytes)")
        if (done := fits()) is not None:
            return done
    body = cut.get("response_body")
    if body:
        # the room left for the body, shared out by how much JSON escaping grows it
        cut["response_body"] = ""
        room = limit - len(to_json(cut)) - 600  # 600: the marker warning
        escaped = len(to_json(body)) - 2
        keep = max(0, int(len(body) * room / escaped)) if escaped else 0
        for _ in range(8):
            cut["response_body"] = body[:keep]
            notes.append(f"response body cut to {keep} of {len(body)} characters")
            if (done := fits()) is not None:
                return done
            notes.pop()
            keep = keep * 3 // 4
    cut["error_message"] = str(cut.get("error_message", ""))[:1000]
    cut["error_description"] = str(cut.get("error_description", ""))[:1000]
    cut["warnings"] = [str(w)[:500] for w in cut.get("warnings", [])[:10]]
    cut["response_body"] = None
    notes.append("messages and warnings shortened, response body removed")
    if (done := fits()) is not None:
        return done
    cut["attributes"] = {}
    cut["timings_ms"] = {}
    cut["warnings"] = []
    cut["error_message"] = cut["error_message"][:200]
    cut["error_description"] = cut["error_description"][:200]
    notes.append("attributes and timings removed")
    if (done := fits()) is not None:
        return done
    raise ValueError(f"a result cannot be cut to {limit} bytes")  # limit is >= 16 KiB
