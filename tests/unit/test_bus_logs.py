"""Refused hellos and malformed MQTT messages are counted every one, but logged at most once
per agent (or topic) and reason every 10 s, with the number left out; the table behind that
limit is bounded."""

from __future__ import annotations

import logging
from typing import Any

import pytest

from controller.bus import ControllerBus
from controller.metrics import ControllerMetrics
from shared import logs as shared_logs
from shared import topics
from shared.messages import Hello, ResultBatch
from shared.mqtt import Inbound
from tests.helpers import free_port


class Handler:
    async def on_connected(self) -> None:
        return None

    async def on_hellos(self, hellos: list[Hello], more: Any = None) -> None:
        return None

    async def on_state(self, agent_id: str, online: bool) -> None:
        return None

    def on_results(
        self, batch: ResultBatch, size: int, rejects: list[tuple[str, str]] | None = None
    ) -> bool:
        return True


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def _lines(caplog: pytest.LogCaptureFixture, word: str) -> list[str]:
    return [r.getMessage() for r in caplog.records if word in r.getMessage()]


async def test_floods_are_logged_once_per_agent_and_reason_every_ten_seconds(
    caplog: pytest.LogCaptureFixture,
) -> None:
    metrics = ControllerMetrics()
    bus = ControllerBus(f"mqtt://127.0.0.1:{free_port()}", Handler(), metrics)
    clock = Clock()
    bus.log_limit = shared_logs.LogLimit(clock)
    caplog.set_level(logging.WARNING, logger="controller.bus")
    for _ in range(500):
        await bus._on_message(Inbound(topics.hello("a1"), b"{}", False))
        await bus._on_message(Inbound(topics.results("a1"), b"not json", False))
    await bus._on_message(
        Inbound(topics.results("a2"), b"not json", False)
    )  # another agent: logged
    assert len(_lines(caplog, "hello of agent")) == 1
    assert len(_lines(caplog, "malformed message on 'picket/v1/results/a1'")) == 1
    assert len(_lines(caplog, "malformed message on 'picket/v1/results/a2'")) == 1
    assert (
        metrics.registry.get_sample_value(
            "picket_mqtt_messages_dropped_total", {"reason": "malformed"}
        )
        == 501
    )
    refused = sum(
        s.value
        for m in metrics.registry.collect()
        if m.name == "picket_hellos_refused"
        for s in m.samples
        if s.name.endswith("_total")
    )
    assert refused == 500

    clock.now += 10.0
    await bus._on_message(Inbound(topics.hello("a1"), b"{}", False))
    await bus._on_message(Inbound(topics.results("a1"), b"not json", False))
    assert "499 more like it not logged" in _lines(caplog, "hello of agent")[-1]
    assert "499 more like it" in _lines(caplog, "malformed message on 'picket/v1/results/a1'")[-1]


def test_the_rate_limit_table_is_bounded(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(shared_logs, "MAX_LOGGED_KEYS", 100)
    limit = shared_logs.LogLimit(Clock())
    for n in range(1000):
        assert limit.allow((f"agent-{n}", "malformed")) == 0
        assert len(limit) <= 100
