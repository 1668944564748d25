"""Concurrent monitoring: the partial checks of one slot gathered into one concurrent check.

With `UseConcurrentMonitoring` every selected checkpoint runs every slot (controller/rotation.py).
Each result is stored as it comes, as a partial check (`IsPartialCheck`); the slot's
concurrent check (`IsConcurrentCheck`) is stored once every expected partial is in, or once
the slot's bound has passed (the monitor's time limit plus `wait_seconds`): a partial that
has not come by then is counted as missing, not waited for. Its ErrorLevel is the thresholds'
(percentages of the checkpoints expected for the slot):

    failed * 100 >= ConcurrentConfirmedErrorThreshold * expected   -> Confirmed
    failed * 100 >= ConcurrentUnconfirmedErrorThreshold * expected -> Unconfirmed
    otherwise                                                      -> NoError

A missing partial is not a failure (nothing was observed), but it stays in the denominator: a
slot half of whose checkpoints were silent cannot reach a 75 % threshold on the other half.
An inconclusive partial (error 4: its agent's connectivity canary failed too) is counted like a
missing one: neither failed nor passed, in the denominator. When every partial that came is
inconclusive, the concurrent check is inconclusive itself (error 4, NoError, `IsInconclusive`,
moving no alert state); when none came at all, no concurrent check is made here (a slot with
no live checkpoint is controller/nolive.py's).

Slots being gathered live in memory, bounded (`max_slots`: the oldest is decided early when
full). The concurrent check's uid is derived from the monitor and slot, so one stored twice
(a partial replayed after a controller restart) is stored once.
"""

from __future__ import annotations

import hashlib
import logging
import time
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

from controller.db.store import CONCURRENT
from shared.errors import DESCRIPTIONS, INCONCLUSIVE_CODES, ErrorCode

log = logging.getLogger(__name__)

NO_ERROR, UNCONFIRMED, CONFIRMED = 0, 1, 2
DEFAULT_WAIT_SECONDS = 30.0
MAX_SLOTS = 100_000


@dataclass
class Partial:
    agent: str
    uid: str
    error_code: int
    error_description: str
    total_time_ms: float | None


@dataclass
class Slot:
    monitor_guid: str
    scheduled_us: int
    expected: int
    unconfirmed_threshold: int
    confirmed_threshold: int
    deadline: float  # time.time() after which missing partials are counted as missing
    monitor_type: str = ""
    staging: bool = False
    # how many partials can come (servers live when the slot opened): once they are in, the
    # rest are missing at once (a checkpoint without a live server is not waited for)
    awaited: int | None = None
    partials: dict[str, Partial] = field(default_factory=dict)

    @property
    def complete(self) -> bool:
        awaited = self.expected if self.awaited is None else min(self.awaited, self.expected)
        return len(self.partials) >= max(1, awaited)


def concurrent_uid(monitor_guid: str, scheduled_us: int) -> str:
    return hashlib.sha256(f"{monitor_guid}\x00{scheduled_us}".encode()).hexdigest()[:32]


def level_of(failed: int, expected: int, unconfirmed: int, confirmed: int) -> int:
    """The concurrent check's ErrorLevel from the number of failed partials."""
    if failed == 0 or expected <= 0:
        return NO_ERROR
    if failed * 100 >= confirmed * expected:
        return CONFIRMED
    if failed * 100 >= unconfirmed * expected:
        return UNCONFIRMED
    return NO_ERROR


def row_of(slot: Slot) -> tuple[dict[str, Any], int]:
    """The concurrent check's row (columns as controller/ingest.py builds them) and level."""
    partials = list(slot.partials.values())
    inconclusive = [p for p in partials if p.error_code in INCONCLUSIVE_CODES]
    failed = [p for p in partials if p.error_code != 0 and p.error_code not in INCONCLUSIVE_CODES]
    missing = max(0, slot.expected - len(partials))
    level = level_of(
        len(failed), slot.expected, slot.unconfirmed_threshold, slot.confirmed_threshold
    )
    percentage = round(100.0 * len(failed) / slot.expected, 1) if slot.expected else 0.0
    summary = (
        f"{len(failed)} of {slot.expected} checkpoints failed ({percentage:g} %)"
        + (f", {len(inconclusive)} inconclusive" if inconclusive else "")
        + (f", {missing} did not report" if missing else "")
    )
    if partials and len(inconclusive) == len(partials):
        # nothing conclusive was observed: the slot says nothing about the target
        code = int(ErrorCode.INCONCLUSIVE)
        description = f"{DESCRIPTIONS[ErrorCode.INCONCLUSIVE]} ({summary})"
    elif level == NO_ERROR:
        code, description = 0, "OK" if not failed else f"OK: {summary}"
    else:
        # the error most partials saw
        code = Counter(p.error_code for p in failed).most_common(1)[0][0]
        first = next(p for p in failed if p.error_code == code)
        description = f"{first.error_description} ({summary})"
    times = [
        p.total_time_ms for p in partials if p.total_time_ms is not None and p not in inconclusive
    ]
    attributes: dict[str, Any] = {
        "MonitorType": slot.monitor_type,
        "ErrorDescription": description,
        "ErrorMessage": summary if failed or missing or inconclusive else "",
        "StagingMode": slot.staging,
        "IsConcurrentCheck": True,
        "PartialChecks": len(partials),
        "FailedPartialChecks": len(failed),
        "MissingPartialChecks": missing,
        "ErrorPercentage": percentage,
    }
    if inconclusive:
        attributes["InconclusivePartialChecks"] = len(inconclusive)
    if code in INCONCLUSIVE_CODES:
        attributes["IsInconclusive"] = True
    if times:
        attributes["TotalTime"] = round(sum(times) / len(times), 3)
    row = {
        "uid": concurrent_uid(slot.monitor_guid, slot.scheduled_us),
        "monitor_guid": slot.monitor_guid,
        "server_id": None,
        "ts_us": slot.scheduled_us,
        "scheduled_us": slot.scheduled_us,
        "error_level": level,
        "error_code": code,
        "attributes": attributes,  # JSON-encoded by the caller
        "response_body": None,
        "details": None,
        "check_kind": CONCURRENT,
    }
    return row, level


class Gatherer:
    """Concurrent slots waiting for their partial checks."""

    def __init__(self, wait_seconds: float = DEFAULT_WAIT_SECONDS, max_slots: int = MAX_SLOTS):
        self.wait_seconds = wait_seconds
        self.max_slots = max_slots
        self.slots: dict[tuple[str, int], Slot] = {}
        self.decided: set[tuple[str, int]] = set()  # recent slots already decided (bounded)
        self._decided_order: list[tuple[str, int]] = []

    def __len__(self) -> int:
        return len(self.slots)

    def add(
        self,
        key: tuple[str, int],
        partial: Partial,
        make_slot: Any,
    ) -> Slot | None:
        """Add a partial to its slot (made by `make_slot()` when new); the slot if it is now
        complete (removed from the waiting ones), else None. A partial of a slot already
        decided is stored but decides nothing again."""
        if key in self.decided:
            return None
        slot = self.slots.get(key)
        if slot is None:
            slot = make_slot()
            self.slots[key] = slot
        slot.partials.setdefault(partial.agent, partial)
        if slot.complete:
            return self._decide(key)
        return None

    def due(self, now: float | None = None) -> list[Slot]:
        """Slots whose bound has passed, and the oldest beyond `max_slots`: decided now."""
        now = time.time() if now is None else now
        keys = [k for k, s in self.slots.items() if s.deadline <= now]
        overflow = len(self.slots) - len(keys) - self.max_slots
        if overflow > 0:
            log.warning(
                "%d concurrent slots waiting for partial checks (limit %d): deciding the "
                "oldest %d early, their missing partials counted as missing",
                len(self.slots),
                self.max_slots,
                overflow,
            )
            rest = sorted((s.deadline, k) for k, s in self.slots.items() if s.deadline > now)
            keys += [k for _, k in rest[:overflow]]
        return [slot for key in keys if (slot := self._decide(key)) is not None]

    def _decide(self, key: tuple[str, int]) -> Slot | None:
        slot = self.slots.pop(key, None)
        if slot is None:
            return None
        self.decided.add(key)
        self._decided_order.append(key)
        if len(self._decided_order) > 2 * self.max_slots:
            old = self._decided_order[: self.max_slots]
            del self._decided_order[: self.max_slots]
            self.decided.difference_update(old)
        return slot
