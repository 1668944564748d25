"""The agent's bounds on results waiting to be sent, and its assignments kept across restarts,
in-process (no broker: the agent is built but its link never connects)."""

from __future__ import annotations

import json
import logging
import stat
from pathlib import Path
from typing import Any

import pytest

from agent.app import Agent
from agent.outbox import encode_results
from agent.settings import AgentSettings
from shared.messages import Assignment, ResultBatch, Sync
from tests.helpers import free_port, http_monitor


def _settings(tmp_path: Path, **values: Any) -> AgentSettings:
    return AgentSettings(
        data_dir=tmp_path,
        broker_url=f"mqtt://127.0.0.1:{free_port()}",
        agent_id="durable",
        **values,
    )


def _run(first: int, count: int, body: int) -> tuple[int, bytes]:
    """A worker's run of `count` failed results with bodies of `body` characters."""
    results = [
        {
            "uid": f"uid{n}",
            "monitor_guid": "m",
            "monitor_type": "Http",
            "scheduled_at": 1.0,
            "started_at": 1.0,
            "error_code": 200,
            "error_description": "status",
            "response_body": "b" * body,
        }
        for n in range(first, first + count)
    ]
    return count, encode_results(results)


def _sample(agent: Agent, name: str, **labels: str) -> float:
    return agent.metrics.registry.get_sample_value(name, labels) or 0.0


def _outbox_files(agent: Agent) -> list[Path]:
    return sorted((agent.settings.data_dir / "outbox" / agent.id).glob("*.json"))


async def test_batches_are_split_to_fit_a_message(tmp_path: Path) -> None:
    agent = Agent(_settings(tmp_path, max_message_bytes=16_384))
    for n in range(20):
        agent._on_results(*_run(n * 2, 2, 3000))  # 20 runs of ≈ 6.3 KB: 126 KB in all
    agent._flush()
    files = _outbox_files(agent)
    assert len(files) >= 8, "two runs at most per 16 KiB batch"
    uids = []
    for path in files:
        assert path.stat().st_size <= 16_384
        uids += [r.uid for r in ResultBatch.model_validate_json(path.read_bytes()).results]
    assert sorted(uids) == sorted(f"uid{n}" for n in range(40))
    assert _sample(agent, "picket_agent_outbox_results") == 40
    on_disk = sum(path.stat().st_size for path in files)
    assert on_disk <= _sample(agent, "picket_agent_outbox_bytes") <= on_disk + 4096 * len(files)


async def test_a_full_outbox_drops_the_oldest_counts_and_says_so(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    agent = Agent(_settings(tmp_path, max_message_bytes=16_384))
    agent.outbox.max_bytes = 8 * 4096  # the setting's floor is 1 MiB; the bound is the same
    for n in range(10):
        agent._on_results(*_run(n * 2, 2, 5000))  # ≈ 10 KB a run: one 12 KiB batch each
        agent._flush()
    assert agent.outbox.bytes <= 8 * 4096
    kept = agent.outbox.results
    dropped = _sample(agent, "picket_agent_outbox_dropped_results_total", reason="outbox_full")
    assert kept + dropped == 20 and dropped >= 12
    assert "the outbox is full" in caplog.text and "dropped" in caplog.text
    remaining = [
        r.uid
        for path in _outbox_files(agent)
        for r in ResultBatch.model_validate_json(path.read_bytes()).results
    ]
    assert remaining == [f"uid{n}" for n in range(20 - kept, 20)], "the newest are kept"


async def test_results_for_a_disk_that_refuses_writes_are_bounded_in_memory(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    agent = Agent(_settings(tmp_path, max_message_bytes=16_384, outbox_memory_max_bytes=65_536))
    agent.outbox.max_bytes = 8 * 4096  # the setting's floor is 1 MiB; the bound is the same
    for n in range(2):  # the outbox nearly full: 2 batches of 3 blocks
        agent._on_results(*_run(100 + n * 2, 2, 5000))
        agent._flush()
    assert agent.outbox.results == 4
    outbox_dir = tmp_path / "outbox" / "durable"
    # a real refusal that root cannot override (chmod would not stop root): the outbox's
    # directory moved away and a regular file in its place, so every write gets ENOTDIR
    outbox_dir.rename(tmp_path / "away")
    outbox_dir.write_bytes(b"")
    for n in range(30):
        agent._on_results(*_run(n * 2, 2, 2000))  # ≈ 4.2 KB a run, 126 KB in all
        agent._flush()
    assert agent._result_bytes <= 65_536
    assert _sample(agent, "picket_agent_outbox_unwritten_bytes") <= 65_536
    dropped = _sample(agent, "picket_agent_outbox_dropped_results_total", reason="disk_refused")
    assert dropped >= 20 and agent._result_count + dropped == 60
    assert _sample(agent, "picket_agent_outbox_write_errors_total") == 30
    assert "cannot write" in caplog.text and "the disk refuses writes" in caplog.text
    # failed writes cost no batch already on disk
    assert agent.outbox.results == 4
    assert not _sample(agent, "picket_agent_outbox_dropped_results_total", reason="outbox_full")
    outbox_dir.unlink()  # the disk is back: what is still in memory reaches it
    (tmp_path / "away").rename(outbox_dir)
    kept = agent._result_count
    agent._flush()
    assert agent._result_bytes == 0 and agent.outbox.bytes <= 8 * 4096
    full = _sample(agent, "picket_agent_outbox_dropped_results_total", reason="outbox_full")
    assert agent.outbox.results + full == 4 + kept


def _assignment(guid: str, name: str) -> Assignment:
    return Assignment.model_validate(
        {
            "monitor_guid": guid,
            "revision": "r1",
            "monitor": http_monitor(name, "http://127.0.0.1:9/", CheckIntervalSeconds=60),
            "schedule": {"interval_seconds": 60, "offset_seconds": 1.5},
        }
    )


async def test_assignments_survive_a_restart_and_sync_still_reconciles(tmp_path: Path) -> None:
    first = Agent(_settings(tmp_path))
    for guid in ("g1", "g2"):
        first.on_assignment(guid, _assignment(guid, f"monitor {guid}"))
    first._save_assignments()
    saved = tmp_path / "assignments" / "durable.json"
    assert stat.S_IMODE(saved.stat().st_mode) == 0o600, "it carries monitor secrets"
    assert not list(saved.parent.glob("*.tmp"))

    again = Agent(_settings(tmp_path))  # the broker is away: nothing from MQTT
    assert sorted(again.pool.guids()) == ["g1", "g2"]
    assert _sample(again, "picket_agent_assignments") == 2
    again.on_sync(Sync(monitors={"g1": "r1"}))  # the controller is back: g2 was deleted
    assert again.pool.guids() == ["g1"]
    again._save_assignments()
    assert sorted(Agent(_settings(tmp_path)).pool.guids()) == ["g1"]


@pytest.mark.parametrize(
    "content",
    [
        b"{not json",
        b'{"v": 1, "agent": "durable"}',
        b'{"v":1,"agent":"other","saved_at":1,"assignments":[]}',
    ],
)
async def test_a_corrupt_assignments_file_is_logged_and_ignored(
    tmp_path: Path, caplog: pytest.LogCaptureFixture, content: bytes
) -> None:
    path = tmp_path / "assignments" / "durable.json"
    path.parent.mkdir()
    path.write_bytes(content)
    with caplog.at_level(logging.ERROR):
        agent = Agent(_settings(tmp_path))
    assert len(agent.pool) == 0
    assert "saved assignments" in caplog.text and "ignored" in caplog.text


async def test_a_bad_saved_assignment_is_refused_like_an_mqtt_message(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    good = json.loads(_assignment("g1", "fine").model_dump_json())
    not_runnable = {**good, "monitor_guid": "g2", "monitor": {"MonitorType": "Nope"}}
    bad_guid = {**good, "monitor_guid": "g/3"}
    missing = {"monitor_guid": "g4"}
    path = tmp_path / "assignments" / "durable.json"
    path.parent.mkdir()
    entries = [good, not_runnable, bad_guid, missing]
    path.write_text(
        json.dumps({"v": 1, "agent": "durable", "saved_at": 1.0, "assignments": entries})
    )
    agent = Agent(_settings(tmp_path))
    assert agent.pool.guids() == ["g1"]
    assert _sample(agent, "picket_agent_mqtt_messages_dropped_total", reason="malformed") == 2
    assert "cannot run here" in caplog.text


async def test_assignments_that_cannot_be_saved_are_counted_and_retried(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    (tmp_path / "assignments").write_bytes(b"")  # a file where the directory should be
    agent = Agent(_settings(tmp_path))
    agent.on_assignment("g1", _assignment("g1", "one"))
    await agent._save_assignments_in_thread()
    assert _sample(agent, "picket_agent_assignments_save_errors_total") == 1
    assert "cannot save its assignments" in caplog.text and agent._assignments_changed
    (tmp_path / "assignments").unlink()
    await agent._save_assignments_in_thread()
    assert not agent._assignments_changed
    assert Agent(_settings(tmp_path)).pool.guids() == ["g1"]
