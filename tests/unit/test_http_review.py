"""Issue 9, second review: what the first round left untrue (patterns shown as written, an
agent-side error for the agent's own configuration, a bounded decompression, the declared
charset in multi-step steps, the required IP version named when the name has no such address).

Every target is on loopback, by IP literal or by a name the test's own DNS server answers.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from typing import Any

import pytest
from aiohttp import web

from agent.curl import CurlEngine
from agent.probes.base import Outcome, ProbeContext
from agent.probes.http import HttpProbe
from shared.errors import ErrorCode
from shared.monitors import HttpMonitor
from tests.helpers import free_port


@pytest.fixture
async def engine() -> AsyncIterator[CurlEngine]:
    curl = CurlEngine(max_concurrency=20)
    yield curl
    curl.close()


async def _check(engine: CurlEngine, url: str, max_body: int = 1 << 20, **fields: Any) -> Outcome:
    monitor = HttpMonitor.model_validate({"Name": "m", "MonitorType": "Http", "Url": url, **fields})
    return await HttpProbe(ProbeContext(curl=engine, max_body_bytes=max_body)).check(monitor)


@pytest.fixture
async def site() -> AsyncIterator[str]:
    async def page(request: web.Request) -> web.StreamResponse:
        return web.Response(text="ok " + json.dumps({"path": request.path}))

    app = web.Application()
    app.router.add_route("*", "/{name:.*}", page)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    port = free_port()
    await web.TCPSite(runner, "127.0.0.1", port).start()
    yield f"http://127.0.0.1:{port}"
    await runner.cleanup()


async def test_a_pattern_is_shown_as_written(engine: CurlEngine, site: str) -> None:
    pattern = r"\d{3} errors"
    outcome = await _check(
        engine,
        f"{site}/ok",
        ErrorConditions=[
            {
                "ErrorConditionType": "ContentMatch",
                "Value": pattern,
                "MatchType": "ErrorWhenNotContainsRegex",
            }
        ],
    )
    assert outcome.error_code == ErrorCode.CONTENT_MISMATCH, outcome
    assert outcome.error_message == f'Response does not contain "{pattern}"'
