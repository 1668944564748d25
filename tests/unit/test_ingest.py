"""Ingest against a real database (SQLite and PostgreSQL); the broker is away, so acks and
re-check requests go nowhere, which these tests do not need."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator
from typing import Any

import pytest

from controller.assigner import Assigner
from controller.bus import ControllerBus
from controller.db.store import MonitorRow, Store
from controller.ingest import CONFIRMED, NO_ERROR, UNCONFIRMED, Ingest
from controller.metrics import ControllerMetrics
from shared.messages import CheckResult, ResultBatch
from tests.helpers import free_port

MONITOR = "11111111-1111-4111-8111-111111111111"


@pytest.fixture
async def ingest(database_url: str) -> AsyncIterator[Ingest]:
    store = await Store.open(database_url)
    metrics = ControllerMetrics()
    bus = ControllerBus(f"mqtt://127.0.0.1:{free_port()}", _NoHandler(), metrics)
    assigner = Assigner(store, bus, metrics)
    # MONITOR exists and is placed on agent a1, which sends these results (controller/trust.py)
    assigner.monitors[MONITOR] = MonitorRow(MONITOR, "m", "Http", True, {}, "r1", 0, 0)
    assigner.history.opened(MONITOR, "a1", 0)
    yield Ingest(store, bus, assigner, metrics, 65536, 64)
    await store.close()


class _NoHandler:
    async def on_connected(self) -> None: ...
    async def on_hellos(self, hellos: list[Any], more: Any = None) -> None: ...
    async def on_state(self, agent_id: str, online: bool) -> None: ...
    def on_results(
        self, batch: ResultBatch, size: int, rejects: list[tuple[str, str]] | None = None
    ) -> bool:
        return False


def _result(
    started: float, code: int = 0, confirms: str | None = None, **extra: Any
) -> CheckResult:
    fields: dict[str, Any] = {
        "uid": uuid.uuid4().hex,
        "monitor_guid": MONITOR,
        "monitor_type": "Http",
        "scheduled_at": started,
        "started_at": started,
        "error_code": code,
        "error_description": "",
        "is_confirmation": confirms is not None,
        "confirms": confirms,
    }
    return CheckResult(**{**fields, **extra})


def _batch(*results: CheckResult) -> ResultBatch:
    return ResultBatch(batch_id=uuid.uuid4().hex, agent="a1", results=list(results))


async def _levels(ingest: Ingest) -> list[int]:
    rows = await ingest.store.checks_page(MONITOR, None, None, 0, False, None, 100)
    return [r.error_level for r in rows]


async def test_a_binary_body_is_stored(ingest: Ingest) -> None:
    failed = _result(100.0, code=200, response_body="GIF89a\x00\x01binary")
    await ingest.process([_batch(failed)])
    (row,) = await ingest.store.checks_page(MONITOR, None, None, 0, False, None, 10)
    assert row.response_body is not None and row.response_body.startswith("GIF89a\ufffd")


async def test_a_replayed_batch_does_not_move_the_alert_state(ingest: Ingest) -> None:
    first = _result(100.0, code=110)
    confirmation = _batch(_result(100.5, code=110, confirms=first.uid))
    await ingest.process([_batch(first)])
    await ingest.process([confirmation])
    await ingest.process([_batch(_result(101.0))])  # recovered
    # the confirmation's batch comes again (a lost ack), with a new failure
    await ingest.process([confirmation, _batch(_result(102.0, code=110))])
    assert await _levels(ingest) == [UNCONFIRMED, CONFIRMED, NO_ERROR, UNCONFIRMED]


async def test_late_results_do_not_move_the_alert_state(ingest: Ingest) -> None:
    await ingest.process([_batch(_result(200.0))])
    await ingest.process([_batch(_result(150.0, code=110))])  # an old failure, delivered late
    await ingest.process([_batch(_result(201.0, code=110))])
    # the late one is stored as Unconfirmed, but the state was OK: the next failure is too
    assert await _levels(ingest) == [NO_ERROR, UNCONFIRMED, UNCONFIRMED]
    assert ingest.metrics.registry.get_sample_value("picket_confirmation_requests_total") == 1


async def test_one_confirmation_at_a_time_until_it_has_a_result(ingest: Ingest) -> None:
    def asked() -> float | None:
        return ingest.metrics.registry.get_sample_value("picket_confirmation_requests_total")

    first = _result(100.0, code=120)
    await ingest.process([_batch(first)])
    # more failures of the same monitor before the confirmation's result (checks that outlast
    # their interval): no confirmation each
    for started in (105.0, 110.0, 115.0):
        await ingest.process([_batch(_result(started, code=120))])
    assert asked() == 1
    await ingest.process([_batch(_result(116.0, code=120, confirms=first.uid))])
    await ingest.process([_batch(_result(120.0))])  # recovered
    second = _result(125.0, code=120)
    await ingest.process([_batch(second)])
    assert asked() == 2  # answered: the next error has its own
    # a confirmation whose result never comes (the agent restarted) holds nothing for ever
    ingest.confirming[MONITOR].at -= 3600
    await ingest.process([_batch(_result(130.0, code=120))])
    assert asked() == 3
    assert await _levels(ingest) == [UNCONFIRMED] * 4 + [CONFIRMED, NO_ERROR] + [UNCONFIRMED] * 2


async def test_details_are_stored_as_sent_when_they_are_a_json_object(ingest: Ingest) -> None:
    text = '{"Waterfall":[{"Url":"http://127.0.0.1/","ResponseHeaders":"HTTP/1.1 200 OK"}]}'
    await ingest.process([_batch(_result(1.0, details=text))])
    await ingest.process([_batch(_result(2.0, details='{"Waterfall": [trunc'))])
    await ingest.process([_batch(_result(3.0, details="[1, 2]"))])
    rows = await ingest.store.checks_page(MONITOR, None, None, 0, False, None, 10)
    by_time = {row.ts_us: row for row in rows}
    assert by_time[1_000_000].details == {
        "Waterfall": [{"Url": "http://127.0.0.1/", "ResponseHeaders": "HTTP/1.1 200 OK"}]
    }
    # not JSON, or not an object: the check is stored, its details are not
    assert by_time[2_000_000].details is None and by_time[3_000_000].details is None
    assert len(rows) == 3


async def test_a_result_from_the_agent_is_stored_field_by_field_where_declared(
    ingest: Ingest,
) -> None:
    """Every field of a result (shared/results.py declares them once) travels from the agent's
    Outcome through the message to its row: each where its declaration says."""
    from agent.probes.base import Outcome
    from agent.runner import make_result
    from controller.ingest import STORED
    from shared.errors import ErrorCode

    outcome = Outcome(ErrorCode.HTTP_STATUS_MISMATCH, "HTTP status 503")
    outcome.http_status_code = 503
    outcome.total_bytes = 17
    outcome.resolved_ip = "127.0.0.9"
    outcome.timings_ms = {"TotalTime": 12.5, "ConnectionTime": 0.25}
    outcome.warnings = ["worth a look"]
    outcome.attributes = {"DnsRcode": "NOERROR"}
    outcome.body = b"down for maintenance"
    outcome.details = {"Waterfall": [{"Url": "http://127.0.0.9/"}]}
    sent = make_result(MONITOR, "rev-7", "Http", outcome, 1000.25, 1000.5, "f" * 32, 4)
    result = CheckResult.model_validate(sent)
    await ingest.process([_batch(result)])
    (row,) = await ingest.store.checks_page(MONITOR, None, None, 0, False, None, 10)
    assert row.details == outcome.details and row.response_body == "down"
    for name, column in STORED.columns:
        stored = getattr(row, column.name)
        if column.micros:
            assert stored == int(getattr(result, name) * 1_000_000), name
        elif name not in ("details", "response_body"):
            assert stored == getattr(result, name), name
    for name, attribute in STORED.attributes:
        assert row.attributes[attribute.name] == getattr(result, name), name
    for name in STORED.spreads:
        assert getattr(result, name) and getattr(result, name).items() <= row.attributes.items()
    assert row.attributes["IsConfirmation"] is True and row.attributes["AgentId"] == "a1"


def _row_flags(rows: list[Any]) -> list[tuple[int, bool, bool]]:
    return [
        (
            r.error_level,
            bool(r.attributes.get("IsInconclusive")),
            bool(r.attributes.get("IsDuplicateSlot")),
        )
        for r in rows
    ]


async def test_an_inconclusive_check_is_no_error_and_moves_no_alert_state(ingest: Ingest) -> None:
    await ingest.process([_batch(_result(100.0, code=110))])  # Unconfirmed, re-check asked
    await ingest.process([_batch(_result(101.0, code=4))])  # the canary failed too
    await ingest.process([_batch(_result(102.0, code=4))])
    # the state is still the failure's: a confirmation that fails is Confirmed
    first = await ingest.store.checks_page(MONITOR, None, None, 0, False, None, 10)
    await ingest.process([_batch(_result(103.0, code=110, confirms=first[0].uid))])
    rows = await ingest.store.checks_page(MONITOR, None, None, 0, False, None, 10)
    assert _row_flags(rows) == [
        (UNCONFIRMED, False, False),
        (NO_ERROR, True, False),
        (NO_ERROR, True, False),
        (CONFIRMED, False, False),
    ]
    metric = ingest.metrics.registry.get_sample_value
    assert metric("picket_inconclusive_slots_total", {"reason": "canary"}) == 2
    assert metric("picket_confirmation_requests_total") == 1  # none for the inconclusive ones
    # an inconclusive slot alone never starts an error either
    await ingest.process([_batch(_result(110.0))])
    await ingest.process([_batch(_result(111.0, code=4))])
    assert ingest.levels[MONITOR] == NO_ERROR
    assert metric("picket_confirmation_requests_total") == 1
    # the list filter
    kept = await ingest.store.checks_page(MONITOR, None, None, 0, False, None, 10, False)
    assert [r.error_code for r in kept] == [110, 110, 0]
    only = await ingest.store.checks_page(MONITOR, None, None, 0, False, None, 10, True)
    assert [r.error_code for r in only] == [4, 4, 4]


async def test_a_second_result_for_a_slot_is_a_duplicate_and_counts_once(ingest: Ingest) -> None:
    # the peer that took the monitor over reports slots 200 and 201, the second one failing
    await ingest.process([_batch(_result(200.0)), _batch(_result(201.0, code=110))])
    assert ingest.levels[MONITOR] == UNCONFIRMED
    # the agent that was cut off delivers its own results for the same slots later: a failure
    # for 200 (older than the newest slot: found in the database) and a success for 201
    late_failure = _result(200.0, code=110, started_at=200.4)
    late_ok = _result(201.0, started_at=201.3)
    await ingest.process([_batch(late_failure, late_ok)])
    assert ingest.levels[MONITOR] == UNCONFIRMED  # the OK of a duplicate slot clears nothing
    # two results for one slot in one batch: the later one is the duplicate
    await ingest.process([_batch(_result(202.0, code=110), _result(202.0, started_at=202.5))])
    rows = await ingest.store.checks_page(MONITOR, None, None, 0, False, None, 10)
    by_uid = {r.uid: r for r in rows}
    assert by_uid[late_failure.uid].attributes["IsDuplicateSlot"] is True
    assert by_uid[late_ok.uid].attributes["IsDuplicateSlot"] is True
    assert [r.attributes.get("IsDuplicateSlot", False) for r in rows] == [
        False,
        False,
        True,
        True,
        False,
        True,
    ]
    assert ingest.levels[MONITOR] == UNCONFIRMED
    metric = ingest.metrics.registry.get_sample_value
    assert metric("picket_duplicate_slots_total") == 3
    # a fresh controller (nothing in memory) still finds a replayed slot in the database
    ingest.slots.clear()
    again = _result(201.0, code=110, started_at=201.7)
    await ingest.process([_batch(again)])
    (row,) = [
        r
        for r in await ingest.store.checks_page(MONITOR, None, None, 0, False, None, 10)
        if r.uid == again.uid
    ]
    assert row.attributes["IsDuplicateSlot"] is True
