"""Result batches in, rows committed, acks out; the controller decides each check's ErrorLevel.

A batch is acknowledged only after its transaction commits; a replayed batch stores nothing
twice (unique result uid). A failed check is re-run at once from another live checkpoint of
the monitor's selection (the next in its rotation), or by the same agent when there is none:
the first failure is Unconfirmed, a failing re-check Confirmed. While a monitor is in a
confirmed error, further failures are Confirmed without another re-check. With concurrent
monitoring each result is a partial check and the slot's concurrent check decides the level
(controller/concurrent.py).

The queue is bounded in bytes (as received). When it is full a new batch is refused: not
queued, not acknowledged, counted; the agent keeps it and sends it again after its ack
timeout. A resend of a batch still queued is not queued twice. While the database is away the
queued batches are held and retried with backoff (the queue fills, then refuses); a batch the
database refuses (`StoreRejected`: a NUL in text, an integer out of range) is tried a few
times, then its refused results go to the dead-letter table with the reason, the rest is
stored, and the batch is acknowledged, so it never holds the agent's in-flight window.

Two kinds of result are stored but never move the alert state nor ask for a re-check: an
inconclusive one (error 4: the agent's connectivity canary failed too; stored as NoError with
`IsInconclusive`; an inconclusive confirmation confirms nothing), and a second result for a
slot a server of the same checkpoint has already reported (an agent cut off from the broker
kept running a monitor its peer took over; flagged `IsDuplicateSlot`): a slot counts once.
A real result for a slot the controller stored as inconclusive because no selected checkpoint
was live (error 5, controller/nolive.py) replaces that placeholder, which is deleted.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from collections import Counter, deque
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from functools import partial
from typing import Any, TypeVar

import orjson

from controller import concurrent, maintenance, rotation
from controller.assigner import Assigner
from controller.bus import ControllerBus
from controller.concurrent import CONFIRMED, NO_ERROR, UNCONFIRMED
from controller.db.store import CHECK, PARTIAL, Store, StoreRejected, StoreUnavailable, now_us
from controller.metrics import ControllerMetrics
from controller.nolive import NoLiveSlots
from shared.errors import INCONCLUSIVE_CODES, ErrorCode
from shared.messages import CheckResult, ResultBatch, RunRequest
from shared.results import storage_plan

log = logging.getLogger(__name__)

LEVEL_NAMES = {NO_ERROR: "NoError", UNCONFIRMED: "Unconfirmed", CONFIRMED: "Confirmed"}
LEVELS_BY_NAME = {name: level for level, name in LEVEL_NAMES.items()}
STORED = storage_plan(CheckResult)  # where each field of a result goes in its row

T = TypeVar("T")
# what a result the database cannot take raises: refused by the database, or a value that
# cannot even become a row (a time beyond any integer, a string with a lone surrogate)
REFUSED = (StoreRejected, ValueError, OverflowError, TypeError)


def error_level(result: CheckResult, current: int) -> int:
    if result.error_code == ErrorCode.OK or result.error_code in INCONCLUSIVE_CODES:
        return NO_ERROR
    if result.is_confirmation or current == CONFIRMED:
        return CONFIRMED
    return UNCONFIRMED


# a confirmation asked for and not answered within this long (the agent restarted, its result
# was lost) no longer holds back the next one: more than the longest check (120 s) and its trip
CONFIRMATION_WAIT_SECONDS = 300.0
MAX_CONFIRMATIONS_REMEMBERED = 100_000  # failed checks awaiting their confirmation's outcome
# partial checks this recent are gathered again after a start: the longest time limit (120 s)
# and the slot's bound beyond it
RECOVER_SECONDS = 300.0
LOGGED_CHARS = 100  # of an agent-chosen name or id in a log line (shown with %r)


@dataclass
class Asked:
    """A confirmation asked for and not answered yet: when, of whom, for which failed check
    (its uid) that which agent saw."""

    at: float
    agent: str
    confirms: str
    failed_agent: str


@dataclass(eq=False)
class Queued:
    batch: ResultBatch
    size: int  # bytes as received
    # results of the batch that failed validation: (their JSON text, why), kept as dead letters
    rejects: list[tuple[str, str]] = field(default_factory=list)
    attempts: int = 0


class Ingest:
    def __init__(
        self,
        store: Store,
        bus: ControllerBus,
        assigner: Assigner,
        metrics: ControllerMetrics,
        failed_body_bytes: int,
        batch_max: int,
        queue_max_bytes: int = 32 * 1024 * 1024,
        attempts: int = 3,
        concurrent_wait_seconds: float = concurrent.DEFAULT_WAIT_SECONDS,
    ) -> None:
        self.store = store
        self.bus = bus
        self.assigner = assigner
        self.metrics = metrics
        self.failed_body_bytes = failed_body_bytes
        self.batch_max = batch_max
        self.queue_max_bytes = queue_max_bytes
        self.attempts = attempts
        self.max_backoff = 5.0
        self.levels: dict[str, int] = {}
        self.latest: dict[str, float] = {}  # start time of each monitor's newest result
        # monitors with a confirmation asked for and no result of it yet (bounded by monitors)
        self.confirming: dict[str, Asked] = {}
        # failed check uid -> the agent that saw it, until its confirmation comes (bounded)
        self._failed_at: dict[str, str] = {}
        self.gatherer = concurrent.Gatherer(concurrent_wait_seconds)
        self._decided: deque[concurrent.Slot] = deque()  # concurrent checks not yet stored
        self._concurrent_lock = asyncio.Lock()
        metrics.concurrent_slots_waiting.set_function(lambda: float(len(self.gatherer)))
        # the newest slot (scheduled time, µs) with a result, per monitor and checkpoint: a
        # second result for it is a duplicate slot; older slots are looked up in the database
        self.slots: dict[tuple[str, int], int] = {}
        # agent id -> its clock's offset from the controller's, in ms (controller/clock.py)
        self.clock_offset_ms: Callable[[str], float | None] = lambda _agent: None
        # the placeholders of slots nobody ran, which real results replace (set by the app)
        self.no_live: NoLiveSlots | None = None
        self._queue: deque[Queued] = deque()
        self._pending: dict[tuple[str, str], Queued] = {}  # queued or being stored
        self._bytes = 0
        self._wake = asyncio.Event()
        self._refused = 0  # batches refused since the queue last filled up
        self._holding = False  # the database is away and batches wait for it
        metrics.ingest_queue_bytes.set_function(lambda: float(self._bytes))
        metrics.ingest_queue_batches.set_function(lambda: float(len(self._pending)))
        metrics.database_up.set_function(lambda: float(store.available))

    async def load(self) -> None:
        self.levels = await self.store.last_levels()
        await self._recover_concurrent()

    async def _recover_concurrent(self) -> None:
        """Slots a previous run was gathering: their partials are stored, their concurrent
        check may not be. Gathered again from the recent partials of concurrent monitors
        (after the assigner has loaded); those already decided are skipped by uid."""
        since_us = now_us() - int((RECOVER_SECONDS + self.gatherer.wait_seconds) * 1e6)
        recovered = 0
        for guid, monitor in self.assigner.monitors.items():
            if not rotation.concurrent(monitor.definition):
                continue
            rows = await self.store.recent_partials(guid, since_us)
            slots = {row.scheduled_us for row in rows}
            decided = await self.store.known_uids(
                [concurrent.concurrent_uid(guid, at) for at in slots]
            )
            for row in rows:
                if concurrent.concurrent_uid(guid, row.scheduled_us) in decided:
                    continue
                partial = concurrent.Partial(
                    agent=str(row.attributes.get("AgentId", row.server_id)),
                    uid=row.uid,
                    error_code=row.error_code,
                    error_description=str(row.attributes.get("ErrorDescription", "")),
                    total_time_ms=row.attributes.get("TotalTime"),
                )
                self._gather_partial(guid, row.scheduled_us, partial)
                recovered += 1
        if recovered:
            log.info(
                "concurrent monitoring: %d partial checks of %d undecided slots gathered again "
                "after the start",
                recovered,
                len(self.gatherer) + len(self._decided),
            )

    # --- the queue ------------------------------------------------------------------------------

    def offer(
        self, batch: ResultBatch, size: int, rejects: list[tuple[str, str]] | None = None
    ) -> bool:
        """Queue a batch, or refuse it at once (no ack: the agent keeps it and resends).
        `rejects`: results of the batch that failed validation, (JSON text, why)."""
        key = (batch.agent, batch.batch_id)
        if key in self._pending:
            self.metrics.batches_refused.labels("already_queued").inc()
            return False
        # an empty queue takes any batch, so that one larger than the bound is not refused forever
        if self._bytes and self._bytes + size > self.queue_max_bytes:
            self.metrics.batches_refused.labels("queue_full").inc()
            if not self._refused:  # logged once until the queue has drained
                log.warning(
                    "ingest queue full (%d bytes in %d batches, limit %d): refusing new result "
                    "batches until it has drained; the agents keep them and resend",
                    self._bytes,
                    len(self._pending),
                    self.queue_max_bytes,
                )
            self._refused += 1
            return False
        entry = Queued(batch, size, rejects or [])
        self._pending[key] = entry
        self._queue.append(entry)
        self._bytes += size
        self._wake.set()
        return True

    def _release(self, entry: Queued) -> None:
        if self._pending.pop((entry.batch.agent, entry.batch.batch_id), None) is entry:
            self._bytes -= entry.size
        if self._refused and not self._pending:
            log.warning(
                "ingest queue drained; %d result batches were refused meanwhile (their agents "
                "resend them)",
                self._refused,
            )
            self._refused = 0

    async def _take(self) -> list[Queued]:
        while not self._queue:
            self._wake.clear()
            await self._wake.wait()
        group = [self._queue.popleft()]
        while self._queue and len(group) < self.batch_max:
            group.append(self._queue.popleft())
        return group

    async def run(self) -> None:
        while True:
            group = await self._take()
            try:
                for entry in group:
                    # once per batch: others dropped and counted (controller/trust.py)
                    entry.batch = self.assigner.acceptance.admit([entry.batch])[0]
                    if entry.rejects:
                        await self._keep_rejects(entry)
                await self._ingest(group)
            finally:
                for entry in group:
                    self._release(entry)

    # --- storing, with the database away or refusing --------------------------------------------

    async def _when_available(self, work: Callable[[], Awaitable[T]]) -> T:
        """Run `work`, again and again with backoff while the database is away."""
        delay = 0.5
        while True:
            try:
                result = await work()
            except StoreUnavailable:
                self.metrics.ingest_errors.inc()
                if not self._holding:
                    self._holding = True
                    log.warning(
                        "ingest: holding %d result batches (%d bytes) until the database "
                        "returns; new batches are refused once %d bytes wait",
                        len(self._pending),
                        self._bytes,
                        self.queue_max_bytes,
                    )
                await asyncio.sleep(delay)
                delay = min(delay * 2, self.max_backoff)
                continue
            if self._holding:
                self._holding = False
                log.warning("ingest: database back; storing the held result batches")
            return result

    async def _ingest(self, group: list[Queued]) -> None:
        try:
            await self._when_available(lambda: self._commit([e.batch for e in group]))
            return
        except REFUSED as exc:
            self.metrics.ingest_errors.inc()
            error: BaseException = exc
        if len(group) > 1:
            # one bad batch must not hold back the others stored with it: one at a time
            log.warning(
                "ingest of %d batches refused by the database (%s); storing them one by one",
                len(group),
                error,
            )
            for entry in group:
                await self._ingest_alone(entry)
        else:
            group[0].attempts += 1
            await self._ingest_alone(group[0], error)

    async def _ingest_alone(self, entry: Queued, error: BaseException | None = None) -> None:
        while entry.attempts < self.attempts or error is None:
            if error is not None:
                await asyncio.sleep(0.2 * entry.attempts)
            try:
                await self._when_available(lambda: self._commit([entry.batch]))
                return
            except REFUSED as exc:
                self.metrics.ingest_errors.inc()
                entry.attempts += 1
                error = exc
        await self._dead_letter(entry)

    async def _dead_letter(self, entry: Queued) -> None:
        """Store what the database takes one result at a time, keep the rest as dead letters
        with the reason, and acknowledge the batch."""
        batch = entry.batch
        letters: list[dict[str, Any]] = []
        confirmations: list[tuple[str, RunRequest]] = []
        for result in batch.results:
            single = [ResultBatch(batch_id=batch.batch_id, agent=batch.agent, results=[result])]
            try:
                confirmations += await self._when_available(partial(self._store, single))
            except REFUSED as exc:
                letters.append(_letter(batch, result, entry.attempts, _why(exc)))
        # none: each alone was stored, what failed was their being together
        await self._keep(batch, letters, len(batch.results))
        await self._acknowledge([batch])
        await self._request_confirmations(confirmations)

    async def _keep_rejects(self, entry: Queued) -> None:
        """Results of a batch that failed validation become dead letters before the rest of
        the batch is stored (and the batch acknowledged)."""
        letters = [
            _letter(entry.batch, None, 1, f"invalid: {reason}", text)
            for text, reason in entry.rejects
        ]
        await self._keep(entry.batch, letters, len(entry.batch.results) + len(letters))
        entry.rejects = []

    async def _keep(self, batch: ResultBatch, letters: list[dict[str, Any]], total: int) -> None:
        if not letters:
            return
        try:
            await self._when_available(lambda: self.store.insert_dead_letters(letters))
        except REFUSED:
            log.exception(
                "agent %r: batch %r: %d results could not even be kept as dead letters; "
                "they are lost",
                batch.agent[:LOGGED_CHARS],
                batch.batch_id[:LOGGED_CHARS],
                len(letters),
            )
            return
        self.metrics.dead_letters.inc(len(letters))
        log.warning(
            "agent %r: batch %r: %d of %d results kept in the dead-letter table after %d "
            "tries (monitors %s; first reason: %r)",
            batch.agent[:LOGGED_CHARS],
            batch.batch_id[:LOGGED_CHARS],
            len(letters),
            total,
            letters[0]["attempts"],
            sorted({str(letter["monitor_guid"])[:LOGGED_CHARS] for letter in letters}),
            str(letters[0]["reason"])[:500],
        )

    # --- one transaction ------------------------------------------------------------------------

    async def process(self, batches: list[ResultBatch]) -> None:
        """Admit the batches' results, store them in one transaction, acknowledge the batches,
        ask for re-checks."""
        await self._commit(self.assigner.acceptance.admit(batches))

    async def _commit(self, admitted: list[ResultBatch]) -> None:
        """`process` for batches admitted already (a retry must not count a refusal again)."""
        confirmations = await self._store(admitted)
        await self._acknowledge(admitted)
        await self._request_confirmations(confirmations)

    async def _store(self, batches: list[ResultBatch]) -> list[tuple[str, RunRequest]]:
        """Insert what is new; the re-checks to ask for (agent, request)."""
        rows: list[dict[str, Any]] = []
        results: dict[str, tuple[ResultBatch, CheckResult, int, bool]] = {}
        levels = dict(self.levels)
        # a replayed result (lost ack, resend) must not move the alert state a second time
        known = await self.store.known_uids([r.uid for b in batches for r in b.results])
        ordered = sorted(
            ((b, r) for b in batches for r in b.results), key=lambda pair: pair[1].started_at
        )
        partials: set[str] = set()
        # a confirmation names the check it confirms by the API's id too
        confirmed_ids = await self.store.check_ids(
            sorted({r.confirms for _, r in ordered if r.is_confirmation and r.confirms})
        )
        stored_slots = await self._stored_slots(ordered)
        seen: set[tuple[str, int, int]] = set()
        for batch, result in ordered:
            if result.uid in results or result.uid in known:
                continue
            if self._is_partial(result):
                # its own level, which is not the monitor's: the concurrent check decides that
                level = error_level(result, NO_ERROR)
                partials.add(result.uid)
                results[result.uid] = (batch, result, level, True)
                rows.append(self._row(batch.agent, result, level, PARTIAL))
                continue
            duplicate = False
            if not result.is_confirmation:
                slot = (result.monitor_guid, _us(result.scheduled_at), self._checkpoint(batch))
                duplicate = (
                    slot in seen
                    or slot in stored_slots
                    or self.slots.get((slot[0], slot[2])) == slot[1]
                )
                seen.add(slot)
            inconclusive = result.error_code in INCONCLUSIVE_CODES
            counts = not (duplicate or inconclusive)  # a slot counts once, and only if it says
            level = error_level(result, levels.get(result.monitor_guid, NO_ERROR))
            # a result older than the newest one seen (an outbox replay after an outage) gets
            # its level but moves neither the state nor asks for a re-check
            if counts and result.started_at >= self.latest.get(result.monitor_guid, 0.0):
                levels[result.monitor_guid] = level
            results[result.uid] = (batch, result, level, counts)
            confirms_id = confirmed_ids.get(result.confirms or "")
            rows.append(
                self._row(batch.agent, result, level, confirms_id=confirms_id, duplicate=duplicate)
            )
        inserted = await self.store.insert_checks(rows)
        now = time.time()
        stale: set[str] = set()
        by_level: Counter[int] = Counter()
        for uid in sorted(inserted, key=lambda u: results[u][1].started_at):
            batch, result, level, counts = results[uid]
            if uid in partials:
                self._gather(batch.agent, result)
                by_level[level] += 1
                continue
            if not result.is_confirmation:
                key = (result.monitor_guid, self._checkpoint(batch))
                self.slots[key] = max(self.slots.get(key, 0), _us(result.scheduled_at))
            if not counts:
                stale.add(uid)
                if result.error_code in INCONCLUSIVE_CODES:
                    self.metrics.inconclusive_slots.labels("canary").inc()
                else:
                    self.metrics.duplicate_slots.inc()
                    log.info(
                        "agent %r: monitor %r: a second result for the slot at %s of its "
                        "checkpoint (a failover overlap); stored as a duplicate slot",
                        batch.agent,
                        result.monitor_guid,
                        result.scheduled_at,
                    )
            elif result.started_at >= self.latest.get(result.monitor_guid, 0.0):
                self.latest[result.monitor_guid] = result.started_at
                self.levels[result.monitor_guid] = level
            else:
                stale.add(uid)
            by_level[level] += 1
            self.metrics.ingest_lag.observe(max(0.0, now - result.started_at))
        for level, count in by_level.items():
            self.metrics.results.labels(LEVEL_NAMES[level]).inc(count)
        self.metrics.duplicates.inc(sum(len(b.results) for b in batches) - len(inserted))
        confirmations: list[tuple[str, RunRequest]] = []
        for uid in sorted(inserted, key=lambda u: results[u][1].started_at):
            batch, result, level, _counts = results[uid]
            if uid in partials:
                continue
            if result.is_confirmation:
                self.confirming.pop(result.monitor_guid, None)
                self._count_confirmation(batch.agent, result)
            elif level == UNCONFIRMED and uid not in stale:
                # at most one confirmation of a monitor in flight: the failures that come in
                # meanwhile (a short interval, a long time limit) wait for its verdict
                # (unless the agent asked can no longer answer: then this failure asks anew)
                asked = self.confirming.get(result.monitor_guid)
                if (
                    asked is not None
                    and now - asked.at < CONFIRMATION_WAIT_SECONDS
                    and self._can_confirm(result.monitor_guid, asked.agent) is not False
                ):
                    continue
                # from another live checkpoint of the selection if there is one
                target = self.assigner.confirmer(result.monitor_guid, batch.agent)
                self.confirming[result.monitor_guid] = Asked(now, target, uid, batch.agent)
                self._failed_at[uid] = batch.agent
                while len(self._failed_at) > MAX_CONFIRMATIONS_REMEMBERED:
                    del self._failed_at[next(iter(self._failed_at))]
                request = RunRequest(monitor_guid=result.monitor_guid, confirms=uid)
                confirmations.append((target, request))
        await self._withdraw_placeholders(ordered)
        await self._store_concurrent()
        return confirmations

    def _can_confirm(self, guid: str, agent: str) -> bool | None:
        """Whether `agent` can still run a confirmation of monitor `guid`: online and the
        monitor still placed on it. None: a server the controller does not know (no say)."""
        srv = self.assigner.server(agent)
        monitor = self.assigner.monitors.get(guid)
        if srv is None or monitor is None:
            return None
        return rotation.live(srv) and agent in self.assigner.turns(monitor)

    async def confirmers_changed(self) -> None:
        """After a presence or placement change: a confirmation asked of an agent that went
        offline or lost the monitor is asked again at once of the confirmer now (or given up,
        counted as `abandoned`, when no agent can run it), instead of holding the monitor's
        next confirmation back for CONFIRMATION_WAIT_SECONDS."""
        for guid, asked in list(self.confirming.items()):
            if self.confirming.get(guid) is not asked:
                continue  # answered meanwhile
            if guid not in self.assigner.monitors:
                del self.confirming[guid]  # deleted: nothing to confirm
                continue
            if self._can_confirm(guid, asked.agent) is not False:
                continue
            target = self.assigner.confirmer(guid, asked.failed_agent)
            if target == asked.agent or not self._can_confirm(guid, target):
                del self.confirming[guid]
                self._failed_at.pop(asked.confirms, None)
                self.metrics.confirmation_outcomes.labels("abandoned", "none").inc()
                log.info(
                    "monitor %s: the confirmation of check %s asked of agent %s is given up: "
                    "that agent went offline or lost the monitor, and no other can run it",
                    guid,
                    asked.confirms,
                    asked.agent,
                )
                continue
            log.info(
                "monitor %s: agent %s, asked to confirm check %s, went offline or lost the "
                "monitor; asking agent %s",
                guid,
                asked.agent,
                asked.confirms,
                target,
            )
            self.confirming[guid] = Asked(time.time(), target, asked.confirms, asked.failed_agent)
            await self._request_confirmations(
                [(target, RunRequest(monitor_guid=guid, confirms=asked.confirms))]
            )

    async def _withdraw_placeholders(self, ordered: list[tuple[ResultBatch, CheckResult]]) -> None:
        """Delete the no-live-checkpoint placeholders of the slots these results ran (after
        their commit: controller/nolive.py). Idempotent, so a retry of the batch does it too."""
        if self.no_live is None:
            return
        uids = sorted(
            {
                uid
                for _batch, result in ordered
                if not result.is_confirmation
                and (uid := self.no_live.withdrawable(result.monitor_guid, result.scheduled_at))
            }
        )
        if not uids:
            return
        withdrawn = await self.store.withdraw_placeholders(uids)
        if withdrawn:
            self.metrics.inconclusive_withdrawn.inc(withdrawn)
            log.info(
                "%d slots stored as inconclusive (no live checkpoint) have a real result now "
                "(an agent cut off from the broker ran them); their placeholders are deleted "
                "(monitors %s)",
                withdrawn,
                sorted({result.monitor_guid for _batch, result in ordered})[:10],
            )

    def _count_confirmation(self, agent: str, result: CheckResult) -> None:
        """picket_confirmations_total: the outcome, and whether it ran at another checkpoint."""
        failed_agent = self._failed_at.pop(result.confirms or "", None)
        where = "unknown"
        if failed_agent is not None:
            failed, srv = self.assigner.server(failed_agent), self.assigner.server(agent)
            if failed is not None and srv is not None:
                same = failed.checkpoint_id == srv.checkpoint_id
                where = "same_checkpoint" if same else "other_checkpoint"
        if result.error_code in INCONCLUSIVE_CODES:
            outcome = "inconclusive"  # it says nothing: the error it re-checked stays unconfirmed
        else:
            outcome = "confirmed" if result.error_code != 0 else "cleared"
        self.metrics.confirmation_outcomes.labels(outcome, where).inc()

    # --- concurrent monitoring (controller/concurrent.py) ---------------------------------------

    def _is_partial(self, result: CheckResult) -> bool:
        monitor = self.assigner.monitors.get(result.monitor_guid)
        return monitor is not None and rotation.concurrent(monitor.definition)

    def _gather(self, agent: str, result: CheckResult) -> None:
        partial = concurrent.Partial(
            agent=agent,
            uid=result.uid,
            error_code=result.error_code,
            error_description=result.error_description,
            total_time_ms=result.timings_ms.get("TotalTime"),
        )
        self._gather_partial(result.monitor_guid, int(result.scheduled_at * 1_000_000), partial)

    def _gather_partial(self, guid: str, scheduled_us: int, partial: concurrent.Partial) -> None:
        if guid not in self.assigner.monitors:
            return  # deleted meanwhile

        def new_slot() -> concurrent.Slot:
            monitor = self.assigner.monitors[guid]
            definition = monitor.definition
            timeout = float(definition.get("TimeoutSeconds") or 30)
            placed = [self.assigner.server(agent) for agent in self.assigner.placement(monitor)]
            return concurrent.Slot(
                monitor_guid=guid,
                scheduled_us=scheduled_us,
                expected=max(1, len(placed)),
                awaited=sum(1 for srv in placed if srv is not None and rotation.live(srv)),
                unconfirmed_threshold=int(
                    definition.get("ConcurrentUnconfirmedErrorThreshold") or 50
                ),
                confirmed_threshold=int(definition.get("ConcurrentConfirmedErrorThreshold") or 75),
                deadline=scheduled_us / 1_000_000 + timeout + self.gatherer.wait_seconds,
                monitor_type=monitor.monitor_type,
                staging=definition.get("MonitorMode") == "Staging",
            )

        slot = self.gatherer.add((guid, scheduled_us), partial, new_slot)
        if slot is not None:
            self._decided.append(slot)

    async def _store_concurrent(self) -> None:
        """Store the concurrent checks of the slots decided so far (kept until stored)."""
        async with self._concurrent_lock:  # the ingest loop and the sweeper, one at a time
            await self._store_decided()

    async def _store_decided(self) -> None:
        while self._decided:
            slot = self._decided[0]
            row, level = concurrent.row_of(slot)
            monitor = self.assigner.monitors.get(slot.monitor_guid)
            if monitor is not None and maintenance.in_force(monitor, slot.scheduled_us / 1e6):
                row["attributes"]["InMaintenance"] = True
            try:
                row["attributes"] = orjson.dumps(row["attributes"]).decode()
                inserted = await self.store.insert_checks([row])
            except REFUSED:
                # never again for the same row: dropped, so it holds back nothing (an outage,
                # StoreUnavailable, goes up: the caller waits and tries again)
                self._decided.popleft()
                log.exception(
                    "monitor %s: the concurrent check of slot %d was refused by the database; "
                    "its partial checks are stored, it is not",
                    slot.monitor_guid,
                    slot.scheduled_us,
                )
                continue
            self._decided.popleft()
            missing = max(0, slot.expected - len(slot.partials))
            if missing:
                self.metrics.partials_missing.inc(missing)
            if not inserted:
                continue  # stored before (a replay after a restart)
            self.metrics.concurrent_checks.labels(LEVEL_NAMES[level]).inc()
            self.metrics.results.labels(LEVEL_NAMES[level]).inc()
            at = slot.scheduled_us / 1_000_000
            if row["error_code"] in INCONCLUSIVE_CODES:
                # every partial that came was inconclusive: it moves no alert state
                self.metrics.inconclusive_slots.labels("canary").inc()
            elif at >= self.latest.get(slot.monitor_guid, 0.0):
                self.latest[slot.monitor_guid] = at
                self.levels[slot.monitor_guid] = level
            log.info(
                "monitor %s: concurrent check of slot %.3f: %s (%d of %d partial checks in)",
                slot.monitor_guid,
                at,
                LEVEL_NAMES[level],
                len(slot.partials),
                slot.expected,
            )

    async def decide_concurrent_forever(self, every: float = 1.0) -> None:
        """Slots whose partial checks did not all come within their bound are decided here,
        the missing ones counted as missing."""
        while True:
            await asyncio.sleep(every)
            self._decided.extend(self.gatherer.due())
            if self._decided:
                await self._when_available(self._store_concurrent)

    def _checkpoint(self, batch: ResultBatch) -> int:
        srv = self.assigner.server(batch.agent)
        return srv.checkpoint_id if srv is not None else -1

    async def _stored_slots(
        self, ordered: list[tuple[ResultBatch, CheckResult]]
    ) -> set[tuple[str, int, int]]:
        """Slots of these results (monitor, scheduled µs, checkpoint) with a result stored
        already, for those not decided in memory: older than the newest slot seen of their
        monitor and checkpoint, or of one not seen since the controller started."""
        wanted: set[tuple[str, int]] = set()
        for batch, result in ordered:
            if result.is_confirmation:
                continue
            newest = self.slots.get((result.monitor_guid, self._checkpoint(batch)))
            at = _us(result.scheduled_at)
            if newest is None or at < newest:
                wanted.add((result.monitor_guid, at))
        if not wanted:
            return set()
        stored = await self.store.slots_stored(sorted(wanted))
        found: set[tuple[str, int, int]] = set()
        for guid, at, server_id in stored:
            srv = self.assigner.server_by_id(server_id)
            found.add((guid, at, srv.checkpoint_id if srv is not None else -1))
        return found

    async def _acknowledge(self, batches: list[ResultBatch]) -> None:
        by_agent: dict[str, list[str]] = {}
        for batch in batches:
            by_agent.setdefault(batch.agent, []).append(batch.batch_id)
        for agent, batch_ids in by_agent.items():
            await self.bus.ack(agent, batch_ids)
        self.metrics.batches.inc(len(batches))

    async def _request_confirmations(self, confirmations: list[tuple[str, RunRequest]]) -> None:
        for agent, request in confirmations:
            self.metrics.confirmations.inc()
            await self.bus.run_now(agent, request)

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
                "agent %r: monitor %r: result %r has details that are not a JSON object; "
                "stored without them",
                agent_id[:LOGGED_CHARS],
                result.monitor_guid[:LOGGED_CHARS],
                result.uid[:LOGGED_CHARS],
            )
            return None
        return result.details

    def _row(
        self,
        agent_id: str,
        result: CheckResult,
        level: int,
        kind: int = CHECK,
        confirms_id: int | None = None,
        duplicate: bool = False,
    ) -> dict[str, Any]:
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
        if kind == PARTIAL:
            attributes["IsPartialCheck"] = True
        if confirms_id is not None:
            attributes["ConfirmsCheckId"] = confirms_id
        if result.error_code in INCONCLUSIVE_CODES:
            attributes["IsInconclusive"] = True
        if duplicate:
            attributes["IsDuplicateSlot"] = True
        if monitor is not None and maintenance.in_force(monitor, result.scheduled_at):
            # its slot is in a maintenance period: alerting passes it by (docs/results.md)
            attributes["InMaintenance"] = True
        offset = self.clock_offset_ms(agent_id)
        if offset is not None:
            # Timestamp and ScheduledTime are the agent's clock; this is how far it was off
            attributes["ClockOffsetMilliseconds"] = offset
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
            check_kind=kind,
        )
        return row


def _us(seconds: float) -> int:
    """Seconds as stored: integer microseconds (as `_row` makes a `micros` column)."""
    return int(seconds * 1_000_000)


def _escaped(text: object, limit: int) -> str:
    """ASCII text any database takes: no NUL, no lone surrogate."""
    return str(text).encode("unicode_escape").decode("ascii")[:limit]


def _why(error: BaseException) -> str:
    return f"{type(error).__name__}: {error}"


def _letter(
    batch: ResultBatch,
    result: CheckResult | None,
    attempts: int,
    reason: str,
    text: str | None = None,
) -> dict[str, Any]:
    """A dead-letter row: the result as received (`text` when it failed validation)."""
    raw: Any = result.model_dump(mode="python") if result is not None else None
    if text is not None:
        raw = json.loads(text)
    payload = json.dumps(raw, ensure_ascii=True, default=repr, allow_nan=True)
    fields = raw if isinstance(raw, dict) else {}
    return {
        "received_us": now_us(),
        "agent_id": _escaped(batch.agent, 200),
        "batch_id": _escaped(batch.batch_id, 200),
        "result_uid": _escaped(fields.get("uid"), 200) if "uid" in fields else None,
        "monitor_guid": (
            _escaped(fields.get("monitor_guid"), 200) if "monitor_guid" in fields else None
        ),
        "attempts": attempts,
        "reason": _escaped(reason, 2000),
        "payload": payload,
    }
