"""The agent's connectivity canary (agent/canary.py) against real sockets on loopback."""

from __future__ import annotations

import asyncio

import pytest

from agent.canary import Canary, make_inconclusive, parse_canary
from agent.probes.base import Outcome
from shared.errors import ErrorCode
from tests.helpers import free_port


async def test_a_listening_canary_answers_and_a_closed_one_does_not() -> None:
    server = await asyncio.start_server(lambda r, w: w.close(), "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    try:
        assert await Canary(f"127.0.0.1:{port}", 2.0, "t").reachable() == (True, "")
    finally:
        server.close()
        await server.wait_closed()
    closed = Canary(f"127.0.0.1:{free_port()}", 2.0, "t")
    reachable, why = await closed.reachable()
    assert not reachable and why
    # many failed checks at once ask once; the answer is reused meanwhile
    answers = await asyncio.gather(*(closed.reachable() for _ in range(20)))
    assert {a[0] for a in answers} == {False}


def test_an_inconclusive_outcome_keeps_what_the_check_saw() -> None:
    outcome = Outcome(ErrorCode.CONNECTION_REFUSED, "Failed to connect")
    make_inconclusive(outcome, "127.0.0.1:9", "Connection refused")
    assert outcome.error_code == ErrorCode.INCONCLUSIVE
    assert outcome.attributes["InconclusiveErrorCode"] == 110
    assert "Connection refused" in outcome.description and "127.0.0.1:9" in outcome.description
    assert outcome.error_message == "Failed to connect"


@pytest.mark.parametrize("bad", ["127.0.0.1", ":80", "host:port", "[::1]:99999"])
def test_a_canary_needs_host_and_port(bad: str) -> None:
    with pytest.raises(ValueError):
        parse_canary(bad)
