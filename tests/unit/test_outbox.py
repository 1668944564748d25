from __future__ import annotations

import json
import time
from pathlib import Path

import pytest

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
        box.mark_sent(b, now)
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
    payload = box.payload(batch)
    assert payload is not None
    (result,) = ResultBatch.model_validate_json(payload).results  # as the controller does
    assert json.loads(result.details or "") == {"Waterfall": [{"Url": "http://127.0.0.1/"}]}


def _sized(n: int, body_bytes: int) -> dict[str, object]:
    """A failed check's result whose body makes it about `body_bytes` long."""
    return {**_result(n).model_dump(), "error_code": 200, "response_body": "x" * body_bytes}


def test_the_outbox_is_bounded_on_disk_and_drops_the_oldest(tmp_path: Path) -> None:
    drops: list[tuple[int, int]] = []

    def on_drop(reason: str, results: int, batches: int) -> None:
        assert reason == "outbox_full"
        drops.append((results, batches))

    box = Outbox(tmp_path, "a1", max_bytes=5 * 4096, on_drop=on_drop)
    batches = [box.add(encode_results([_sized(n, 5000)] * 2), 2) for n in range(4)]
    # each batch takes 3 blocks (≈ 10 KB): two fit, the third and fourth push the oldest out
    assert box.bytes <= box.max_bytes and len(box) == 1
    assert drops == [(2, 1), (2, 1), (2, 1)]
    assert box.results == 2 and [b.batch_id for b in box.due(0.0, 10, 10)] == [batches[-1].batch_id]
    on_disk = sorted(tmp_path.glob("*.json"))
    assert [p.name for p in on_disk] == [batches[-1].path.name]
    assert sum(p.stat().st_size for p in on_disk) <= box.max_bytes
    # a lower bound after a restart applies at once
    Outbox(tmp_path, "a1", max_bytes=4096, on_drop=on_drop)
    assert drops[-1] == (2, 1) and not list(tmp_path.glob("*.json"))


def test_payloads_stay_on_disk_and_are_read_when_sent(tmp_path: Path) -> None:
    box = Outbox(tmp_path, "a1")
    batch = _add(box, _result(1))
    assert not hasattr(batch, "payload")  # the index holds names and sizes, not results
    payload = box.payload(batch)
    assert payload is not None and payload == batch.path.read_bytes()
    assert ResultBatch.model_validate_json(payload).results[0].uid == "uid1"
    batch.path.unlink()  # gone behind our back: forgotten, not an exception
    assert box.payload(batch) is None and len(box) == 0 and box.bytes == 0


def test_a_file_from_before_is_validated_when_first_sent(tmp_path: Path) -> None:
    box = Outbox(tmp_path, "old-id")
    good = _add(box, _result(1))
    bad = _add(box, _result(2))
    bad.path.write_text('{"batch_id": "nonsense"')  # corrupted while the agent was down
    reopened = Outbox(tmp_path, "new-id")
    assert reopened.results == 2  # counted from the names, without reading gigabytes
    first, second = reopened.due(time.monotonic(), resend_after=10, limit=10)
    # written under the old agent id: its results move to a new batch under the new one
    assert reopened.payload(first) is None and not good.path.exists()
    assert reopened.payload(second) is None  # set aside, logged, forgotten
    assert reopened.results == 1 and bad.path.with_suffix(".bad").exists()
    (moved,) = reopened.due(time.monotonic(), resend_after=10, limit=10)
    payload = reopened.payload(moved)
    assert payload is not None
    resent = ResultBatch.model_validate_json(payload)
    assert resent.agent == "new-id" and [r.uid for r in resent.results] == ["uid1"]


def test_an_oversized_batch_from_before_is_split_to_fit(tmp_path: Path) -> None:
    box = Outbox(tmp_path, "a1")  # an older agent: no bound on a batch's size
    _add(box, *(_sized(n, 3000) for n in range(20)))
    reopened = Outbox(tmp_path, "a1", max_message_bytes=16_384)
    (old,) = reopened.due(time.monotonic(), resend_after=10, limit=10)
    assert reopened.payload(old) is None
    uids = []
    for batch in reopened.due(time.monotonic(), resend_after=10, limit=100):
        payload = reopened.payload(batch)
        assert payload is not None and len(payload) <= 16_384
        uids += [r.uid for r in ResultBatch.model_validate_json(payload).results]
    assert uids == [f"uid{n}" for n in range(20)] and reopened.results == 20


def test_results_are_cut_into_runs_that_fit_a_message() -> None:
    from agent.outbox import encode_chunks

    results = [_sized(n, 3000) for n in range(40)]
    runs = list(encode_chunks(results, 16_384, 100))
    assert sum(count for count, _ in runs) == 40
    assert all(len(joined) <= 16_384 for _, joined in runs)
    uids = [
        r.uid
        for _, joined in runs
        for r in ResultBatch.model_validate_json(
            b'{"batch_id":"b","agent":"a","results":[' + joined + b"]}"
        ).results
    ]
    assert uids == [f"uid{n}" for n in range(40)]
    assert [count for count, _ in encode_chunks(results[:10], 1_000_000, 4)] == [4, 4, 2]


def test_a_result_too_large_for_a_message_is_cut_and_marked_never_dropped() -> None:
    from agent.outbox import encode_chunks

    huge = {
        **_sized(1, 900_000),
        "details": json.dumps({"Waterfall": [{"Url": "http://127.0.0.1/", "x": "y" * 500_000}]}),
        "warnings": ["w" * 100_000],
        "error_message": "boom " * 10_000,
    }
    ((count, joined),) = encode_chunks([_result(0).model_dump(), huge], 16_384, 100)
    assert count == 2 and len(joined) <= 16_384
    batch = ResultBatch.model_validate_json(
        b'{"batch_id":"b","agent":"a","results":[' + joined + b"]}"
    )
    cut = batch.results[1]
    assert cut.uid == "uid1" and cut.error_code == 200  # the verdict survives
    assert json.loads(cut.details or "") == {"Truncated": {"OriginalBytes": len(huge["details"])}}
    assert "cut by the agent to fit PICKET_MAX_MESSAGE_BYTES" in cut.warnings[-1]


def test_a_long_body_alone_is_trimmed_not_removed() -> None:
    from agent.outbox import fit_result

    big = _sized(1, 40_000)
    cut = CheckResult.model_validate_json(fit_result(big, 16_384))
    assert cut.response_body and 1000 < len(cut.response_body) < 16_384
    assert "response body cut to" in cut.warnings[-1]


def test_a_batch_that_cannot_be_rewritten_waits_before_the_next_try(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """An oversized batch from before must be rewritten; while the disk refuses, it is due
    again only after the resend time (else the send loop spun on it, logging each turn)."""
    import errno

    import agent.outbox

    box = Outbox(tmp_path, "a1")
    _add(box, *(_sized(n, 3000) for n in range(20)))
    reopened = Outbox(tmp_path, "a1", max_message_bytes=16_384)
    (old,) = reopened.due(time.monotonic(), resend_after=10, limit=10)

    def disk_full(path: Path, data: bytes) -> None:  # reads work, writes do not
        raise OSError(errno.ENOSPC, "No space left on device")

    with monkeypatch.context() as patched:
        patched.setattr(agent.outbox, "_write_atomically", disk_full)
        assert reopened.payload(old) is None
    assert reopened.due(time.monotonic(), resend_after=10, limit=10) == []
    assert reopened.results == 20  # nothing lost
    (again,) = reopened.due(time.monotonic() + 11, resend_after=10, limit=10)
    assert reopened.payload(again) is None  # rewritten now: its results are in new batches
    assert len(reopened.due(time.monotonic() + 11, resend_after=10, limit=100)) > 1


def test_a_batch_unreadable_for_a_while_is_kept_not_set_aside(tmp_path: Path) -> None:
    """A read that fails (no file descriptor left, an I/O error) does not make a good batch
    bad: it stays in the outbox, is tried again later, and is sent then."""
    box = Outbox(tmp_path, "a1")
    batch = _add(box, _sized(1, 100))
    data = batch.path.read_bytes()
    batch.path.unlink()
    batch.path.mkdir()  # reading it fails for now (IsADirectoryError)
    assert box.payload(batch) is None
    assert box.results == 1 and not list(tmp_path.glob("*.bad"))
    assert box.due(time.monotonic(), resend_after=10, limit=10) == []  # not at once
    batch.path.rmdir()
    batch.path.write_bytes(data)
    (again,) = box.due(time.monotonic() + 11, resend_after=10, limit=10)
    assert box.payload(again) == data


def test_a_corrupt_batch_set_aside_is_counted_as_dropped(tmp_path: Path) -> None:
    dropped: list[tuple[str, int, int]] = []
    box = Outbox(tmp_path, "a1")
    batch = _add(box, _result(1), _result(2))
    reopened = Outbox(tmp_path, "a1", on_drop=lambda *d: dropped.append(d))
    batch.path.write_bytes(b'{"not": "a batch"}')  # its name still says 2 results
    (loaded,) = reopened.due(time.monotonic(), resend_after=10, limit=10)
    assert reopened.payload(loaded) is None
    assert dropped == [("unreadable", 2, 1)] and reopened.results == 0
