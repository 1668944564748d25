"""Each agent's clock offset, measured over MQTT as NTP does it, with one round trip.

The controller publishes `agents/{id}/time` with a nonce and notes its own clock then (t0);
the agent answers on `agents/{id}/clock` with its clock when the request arrived (t1); the
controller notes when the answer arrived (t2). With the two legs taken as equal,

    offset = t1 - (t0 + t2) / 2,    round trip = t2 - t0,

and the error of the offset is at most half the round trip. The sample with the smallest
round trip of the last `SAMPLES_KEPT` is the one used (the one least delayed by queues).
Samples are taken in rounds, `ROUND_SAMPLES` per online agent one second apart, every
`ROUND_EVERY_SECONDS`, and at once after a hello. Only the newest request per agent is
awaited: an answer to any other (late, replayed, forged) is dropped and counted. The offset is
shown with the server (`ClockOffsetMilliseconds`), as a metric, and with every result of the
agent (results' times are the agent's clock).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import secrets
import time
from collections import deque
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

from pydantic import ValidationError

from controller.metrics import ControllerMetrics
from shared.messages import TimeReply, TimeRequest

log = logging.getLogger(__name__)

SAMPLES_KEPT = 8
ROUND_SAMPLES = 3
ROUND_EVERY_SECONDS = 60.0
SAMPLE_GAP_SECONDS = 1.0
MAX_ROUND_TRIP_SECONDS = 10.0  # a slower answer says too little about the clock
WARN_OFFSET_SECONDS = 1.0  # an agent this far off is logged


@dataclass(frozen=True, slots=True)
class Sample:
    offset: float  # seconds: agent clock minus controller clock
    round_trip: float  # seconds


Send = Callable[[str, TimeRequest], Awaitable[bool]]


class ClockTracker:
    def __init__(self, send: Send, metrics: ControllerMetrics) -> None:
        self._send = send
        self._metrics = metrics
        self._pending: dict[str, tuple[str, float]] = {}  # agent -> (nonce, t0)
        self._samples: dict[str, deque[Sample]] = {}
        self._warned: set[str] = set()
        self._wake = asyncio.Event()

    def best(self, agent_id: str) -> Sample | None:
        samples = self._samples.get(agent_id)
        if not samples:
            return None
        return min(samples, key=lambda s: s.round_trip)

    def offset_ms(self, agent_id: str) -> float | None:
        sample = self.best(agent_id)
        return None if sample is None else round(sample.offset * 1000, 1)

    def forget(self, agent_id: str) -> None:
        """A retired server: its samples, its awaited answer and its metric series go (an
        agent that is gone would otherwise keep its last offset in the metrics forever)."""
        self._pending.pop(agent_id, None)
        self._samples.pop(agent_id, None)
        self._warned.discard(agent_id)
        for gauge in (self._metrics.clock_offset, self._metrics.clock_rtt):
            with contextlib.suppress(KeyError):
                gauge.remove(agent_id)

    def round_now(self) -> None:
        """After a hello: sample soon, not at the next round."""
        self._wake.set()

    async def probe(self, agent_id: str) -> None:
        nonce = secrets.token_hex(8)
        self._pending[agent_id] = (nonce, time.time())
        await self._send(agent_id, TimeRequest(nonce=nonce))

    def on_reply(self, agent_id: str, payload: bytes, received: float) -> None:
        """An answer on `agents/{agent_id}/clock`, `received` by the controller's clock when
        it was read off the connection."""
        try:
            reply = TimeReply.model_validate_json(payload)
        except ValidationError:
            self._metrics.dropped.labels("malformed").inc()
            log.warning("controller: malformed clock answer of agent %r dropped", agent_id[:100])
            return
        pending = self._pending.get(agent_id)
        if pending is None or pending[0] != reply.nonce:
            self._metrics.dropped.labels("stale_clock_answer").inc()
            return
        del self._pending[agent_id]
        sent = pending[1]
        round_trip = received - sent
        if not 0 <= round_trip <= MAX_ROUND_TRIP_SECONDS:
            return
        sample = Sample(reply.agent_time - (sent + received) / 2, round_trip)
        self._samples.setdefault(agent_id, deque(maxlen=SAMPLES_KEPT)).append(sample)
        best = self.best(agent_id)
        assert best is not None
        self._metrics.clock_offset.labels(agent_id).set(best.offset)
        self._metrics.clock_rtt.labels(agent_id).set(best.round_trip)
        off = abs(best.offset) > WARN_OFFSET_SECONDS
        if off and agent_id not in self._warned:
            self._warned.add(agent_id)
            log.warning(
                "agent %s: its clock is %+.3f s off the controller's (round trip %.3f s): its "
                "results' times are its own clock's; check its NTP",
                agent_id,
                best.offset,
                best.round_trip,
            )
        elif not off:
            self._warned.discard(agent_id)

    async def run(self, online: Callable[[], list[str]]) -> None:
        """Rounds of samples of every online agent, until cancelled."""
        while True:
            for _ in range(ROUND_SAMPLES):
                agents = online()
                # one request each, side by side: a publish waits for the broker's ack
                await asyncio.gather(*(self.probe(a) for a in agents))
                await asyncio.sleep(SAMPLE_GAP_SECONDS)
            self._wake.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), ROUND_EVERY_SECONDS)
