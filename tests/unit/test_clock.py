"""Clock offsets from round trips (controller/clock.py): the NTP formula, the best of the
recent samples, and answers to requests not awaited dropped."""

from __future__ import annotations

import pytest

from controller.clock import ClockTracker
from controller.metrics import ControllerMetrics
from shared.messages import TimeReply, TimeRequest


async def test_offset_from_the_quickest_round_trip_and_stale_answers_dropped(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    sent: list[TimeRequest] = []

    async def send(agent_id: str, request: TimeRequest) -> bool:
        sent.append(request)
        return True

    metrics = ControllerMetrics()
    tracker = ClockTracker(send, metrics)
    now = [1000.0]
    monkeypatch.setattr("controller.clock.time.time", lambda: now[0])

    def answer(agent_time: float, received: float, nonce: str | None = None) -> None:
        reply = TimeReply(nonce=nonce or sent[-1].nonce, agent_time=agent_time)
        tracker.on_reply("a1", reply.model_dump_json().encode(), received)

    assert tracker.offset_ms("a1") is None
    # sent at 1000.0, answered at agent time 1002.1, back at 1000.2: offset 2.0 s, rtt 0.2 s
    await tracker.probe("a1")
    answer(1002.1, 1000.2)
    assert tracker.offset_ms("a1") == 2000.0
    # a slower round trip (a queue on the way) does not replace the better sample
    now[0] = 1010.0
    await tracker.probe("a1")
    answer(1013.0, 1011.0)  # would say 2.5 s
    assert tracker.offset_ms("a1") == 2000.0
    # a quicker one does
    now[0] = 1020.0
    await tracker.probe("a1")
    answer(1021.95, 1020.1)
    assert tracker.offset_ms("a1") == 1900.0
    value = metrics.registry.get_sample_value("picket_agent_clock_offset_seconds", {"agent": "a1"})
    assert value == pytest.approx(1.9)
    # an answer to a request not (or no longer) awaited: dropped and counted
    old = sent[-1].nonce
    now[0] = 1030.0
    await tracker.probe("a1")
    answer(1030.0, 1030.01, nonce=old)
    answer(1030.0, 1030.01, nonce="forged")
    tracker.on_reply("a1", b"{not json", 1030.02)
    assert tracker.offset_ms("a1") == 1900.0
    dropped = metrics.registry.get_sample_value
    assert dropped("picket_mqtt_messages_dropped_total", {"reason": "stale_clock_answer"}) == 2
    assert dropped("picket_mqtt_messages_dropped_total", {"reason": "malformed"}) == 1
    assert tracker.offset_ms("other") is None
