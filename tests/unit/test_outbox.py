from __future__ import annotations

import json
import time
from pathlib import Path

from agent.outbox import Outbox, PendingBatch, encode_results
from shared.messages import CheckResult, ResultBatch


def _result(n: int) -> CheckResult:
    return CheckResult(
        uid=f"uid{n}",
        monitor_guid="m",
        monitor_type="Http",
        scheduled_at=1.0,
        started_at=1.0,
        error_code=0,
        error_description="OK",
    )


def _add(box: Outbox, *results: CheckResult) -> PendingBatch:
    return box.add(encode_results(list(results)), len(results))


def test_batches_survive_a_restart_until_acked(tmp_path: Path) -> None:
    box = Outbox(tmp_path, "a1")
    first = _add(box, _result(1), _result(2))
    _add(box, _result(3))
    assert box.results == 3 and len(box) == 2
    reopened = Outbox(tmp_path, "a1")
    assert reopened.results == 3
    assert reopened.acked([first.batch_id]) == 1
    assert reopened.acked([first.batch_id]) == 0  # a repeated ack is harmless
    assert Outbox(tmp_path, "a1").results == 1


def test_due_resends_after_timeout_and_bounds_in_flight(tmp_path: Path) -> None:
    box = Outbox(tmp_path, "a1")
    batches = [_add(box, _result(n)) for n in range(5)]
    now = time.monotonic()
    due = box.due(now, resend_after=10, limit=2)
    assert [b.batch_id for b in due] == [b.batch_id for b in batches[:2]]
    for b in due:
        b.sent_at = now
    assert box.due(now + 1, resend_after=10, limit=2) == []
    assert len(box.due(now + 11, resend_after=10, limit=2)) == 2  # unacked: sent again
    box.mark_unsent()
    assert len(box.due(now, resend_after=10, limit=10)) == 5


def test_a_corrupt_file_is_set_aside(tmp_path: Path) -> None:
    (tmp_path / "0001-bad.json").write_text("{not json")
    box = Outbox(tmp_path, "a1")
    assert len(box) == 0
    assert (tmp_path / "0001-bad.bad").exists()


def test_a_batch_from_before_details_were_text_is_kept_and_read(tmp_path: Path) -> None:
    old = {
        "batch_id": "b1",
        "agent": "a1",
        "results": [
            {
                "uid": "uid1",
                "monitor_guid": "m",
                "monitor_type": "Http",
                "scheduled_at": 1.0,
                "started_at": 1.0,
                "error_code": 0,
                "error_description": "OK",
                "details": {"Waterfall": [{"Url": "http://127.0.0.1/"}]},
            }
        ],
    }
    (tmp_path / "00000000000000000001-b1.json").write_text(json.dumps(old))
    box = Outbox(tmp_path, "a1")
    assert box.results == 1 and not list(tmp_path.glob("*.bad"))
    (batch,) = box.due(time.monotonic(), resend_after=10, limit=10)
    (result,) = ResultBatch.model_validate_json(batch.payload).results  # as the controller does
    assert json.loads(result.details or "") == {"Waterfall": [{"Url": "http://127.0.0.1/"}]}
