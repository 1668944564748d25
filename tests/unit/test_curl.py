"""The libcurl engine against real loopback servers."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import pytest

from agent.curl import CurlEngine, HttpRequest
from agent.probes.base import ProbeContext
from agent.probes.http import HttpProbe
from shared.errors import ErrorCode
from shared.monitors import HttpMonitor
from tests.helpers import Target, free_port


@pytest.fixture
async def engine() -> AsyncIterator[CurlEngine]:
    curl = CurlEngine(max_concurrency=50)
    yield curl
    curl.close()


def _probe(engine: CurlEngine, max_body: int = 1_048_576) -> HttpProbe:
    return HttpProbe(ProbeContext(curl=engine, max_body_bytes=max_body))


def _monitor(url: str, **fields: object) -> HttpMonitor:
    return HttpMonitor.model_validate({"Name": "m", "MonitorType": "Http", "Url": url, **fields})


async def test_timings_put_the_delay_in_wait_time(engine: CurlEngine, target: Target) -> None:
    outcome = await _probe(engine).check(_monitor(f"{target.base}/slow?ms=120"))
    assert outcome.ok, outcome
    t = outcome.timings_ms
    assert t["WaitTime"] >= 115 and t["TotalTime"] >= 120
    assert t["ConnectionTime"] < 100 and t["HttpsHandshakeTime"] == 0
    parts = sum(v for k, v in t.items() if k != "TotalTime")
    # connect..pretransfer (request set-up) belongs to no phase: a few microseconds
    assert abs(parts - t["TotalTime"]) < 1.0
    assert outcome.http_status_code == 200 and outcome.resolved_ip == "127.0.0.1"


async def test_failures_are_results(engine: CurlEngine, target: Target) -> None:
    probe = _probe(engine)
    refused = await probe.check(_monitor(f"http://127.0.0.1:{free_port()}/"))
    assert refused.error_code == ErrorCode.CONNECTION_REFUSED
    slow = await probe.check(_monitor(f"{target.base}/slow?ms=5000", TimeoutSeconds=1))
    assert slow.error_code == ErrorCode.TIMEOUT
    assert 990 <= slow.timings_ms["TotalTime"] < 3000
    status = await probe.check(_monitor(f"{target.base}/status/503"))
    assert status.error_code == ErrorCode.HTTP_STATUS_MISMATCH and status.http_status_code == 503
    content = await probe.check(
        _monitor(
            f"{target.base}/ok",
            ErrorConditions=[{"ErrorConditionType": "ContentMatch", "Value": "nowhere"}],
        )
    )
    assert content.error_code == ErrorCode.CONTENT_MISMATCH and content.body


async def test_redirects_followed_up_to_ten(engine: CurlEngine, target: Target) -> None:
    probe = _probe(engine)
    ok = await probe.check(_monitor(f"{target.base}/redirect/10"))
    assert ok.ok and ok.http_status_code == 200
    too_many = await probe.check(_monitor(f"{target.base}/redirect/11"))
    assert too_many.error_code == ErrorCode.TOO_MANY_REDIRECTS


async def test_body_kept_up_to_the_limit_but_counted_whole(
    engine: CurlEngine, target: Target
) -> None:
    outcome = await _probe(engine, max_body=1024).check(_monitor(f"{target.base}/big?bytes=200000"))
    assert outcome.ok and outcome.total_bytes == 200_000 and len(outcome.body or b"") == 1024


async def test_many_transfers_at_once_respect_the_bound(engine: CurlEngine, target: Target) -> None:
    peak = 0

    async def watch() -> None:
        nonlocal peak
        while True:
            peak = max(peak, engine.in_flight)
            await asyncio.sleep(0.001)

    watcher = asyncio.create_task(watch())
    request = HttpRequest(url=f"{target.base}/slow?ms=20", timeout_seconds=30)
    responses = await asyncio.gather(*(engine.request(request) for _ in range(300)))
    watcher.cancel()
    assert all(r.curl_error == 0 and r.status == 200 for r in responses)
    assert 1 < peak <= 50
    assert target.hits == 300


async def test_cancelling_a_transfer_frees_it(engine: CurlEngine, target: Target) -> None:
    task = asyncio.create_task(engine.request(HttpRequest(url=f"{target.base}/slow?ms=5000")))
    while engine.in_flight == 0:
        await asyncio.sleep(0.01)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert engine.in_flight == 0
    again = await engine.request(HttpRequest(url=f"{target.base}/ok"))
    assert again.status == 200
