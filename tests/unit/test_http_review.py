"""Issue 9, second review: what the first round left untrue (patterns shown as written, an
agent-side error for the agent's own configuration, a bounded decompression, the declared
charset in multi-step steps, the required IP version named when the name has no such address).

Every target is on loopback, by IP literal or by a name the test's own DNS server answers.
"""

from __future__ import annotations

import asyncio
import gzip
import json
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web
from pydantic import ValidationError

from agent.curl import DECODED_LIMIT_BYTES, CurlEngine
from agent.probes.api import MultiStepApiProbe
from agent.probes.assertions import StepResponse, extract
from agent.probes.base import Outcome, ProbeContext
from agent.probes.http import HttpProbe
from agent.probes.ping import PingProbe
from agent.probes.tcp import ConnectProbe
from agent.probes.tls import CertificateProbe
from agent.runner import make_result
from agent.settings import AgentSettings
from shared.errors import ErrorCode
from shared.monitors import (
    CertificateMonitor,
    ConnectMonitor,
    HttpMonitor,
    MultiStepApiMonitor,
    PingMonitor,
)
from tests.helpers import free_port

BOMB = gzip.compress(bytes(80 << 20), compresslevel=9)


@pytest.fixture
async def engine() -> AsyncIterator[CurlEngine]:
    curl = CurlEngine(max_concurrency=20)
    yield curl
    curl.close()


async def _check(engine: CurlEngine, url: str, max_body: int = 1 << 20, **fields: Any) -> Outcome:
    kind = "Https" if url.startswith("https") else "Http"
    monitor = HttpMonitor.model_validate({"Name": "m", "MonitorType": kind, "Url": url, **fields})
    return await HttpProbe(ProbeContext(curl=engine, max_body_bytes=max_body)).check(monitor)


@pytest.fixture
async def site() -> AsyncIterator[str]:
    async def page(request: web.Request) -> web.StreamResponse:
        if request.path == "/bomb":  # 80 kB on the wire, 80 MiB decoded
            return web.Response(body=BOMB, headers={"Content-Encoding": "gzip"})
        if request.path == "/huge":  # 2 MiB, FATAL after the first MiB
            return web.Response(text="x" * (1 << 20) + " FATAL " + "x" * (1 << 20))
        if request.path == "/plain-large":  # not compressed: read to the end
            return web.Response(body=b"x" * (DECODED_LIMIT_BYTES + 1000))
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


async def _silent(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    try:
        while await reader.read(65536):
            pass
    finally:
        writer.close()


async def test_an_unreadable_ca_file_is_the_agents_error(tmp_path: Path) -> None:
    missing = str(tmp_path / "gone.pem")
    server = await asyncio.start_server(_silent, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    curl = CurlEngine(max_concurrency=2, ca_file=missing)
    try:
        https = await _check(curl, f"https://127.0.0.1:{port}/", TimeoutSeconds=5)
        certificate = await CertificateProbe(
            ProbeContext(curl=curl, max_body_bytes=0, ca_file=missing)
        ).check(
            CertificateMonitor.model_validate(
                {"Name": "c", "MonitorType": "Certificate", "Url": f"https://127.0.0.1:{port}/"}
            )
        )
    finally:
        curl.close()
        server.close()
    assert https.error_code == ErrorCode.AGENT_CONFIGURATION, https
    assert certificate.error_code == ErrorCode.AGENT_CONFIGURATION, certificate
    assert "gone.pem" in certificate.error_message
    with pytest.raises(ValidationError, match="not a readable file"):
        AgentSettings(ca_file=missing)


async def test_a_decompression_bomb_is_not_decoded_in_full(engine: CurlEngine, site: str) -> None:
    bomb = await _check(engine, f"{site}/bomb")  # no content condition: nothing to scan
    assert bomb.error_code == ErrorCode.RECEIVE_FAILED, bomb
    assert f"decodes to more than {DECODED_LIMIT_BYTES} bytes" in bomb.error_message
    assert bomb.total_bytes <= len(BOMB)
    plain = await _check(engine, f"{site}/plain-large")
    assert plain.ok, plain
    assert plain.total_bytes == DECODED_LIMIT_BYTES + 1000


def test_a_steps_body_is_read_in_its_declared_charset() -> None:
    latin1 = StepResponse(
        completed=True,
        headers=[("Content-Type", "text/plain; charset=iso-8859-1")],
        body="prix: café crème".encode("latin-1"),
    )
    assert latin1.text() == "prix: café crème"
    assert extract("ResponseBodyText", "", [], latin1, {}) == "prix: café crème"
    undeclared = StepResponse(completed=True, body="déjà".encode())
    assert undeclared.text() == "déjà"


async def test_a_step_assertion_past_the_kept_bytes_is_no_pass(
    engine: CurlEngine, site: str
) -> None:
    async def run(comparison: str, target: str) -> Outcome:
        assertion = {"Source": "ResponseBodyText", "Comparison": comparison, "TargetValue": target}
        length = {"Source": "ContentLengthCalculated", "Comparison": "GreaterThan"}
        monitor = MultiStepApiMonitor.model_validate(
            {
                "Name": "msa",
                "MonitorType": "MultiStepApi",
                "MsaSteps": [
                    {
                        "StepType": "HttpRequest",
                        "Name": "page",
                        "Url": f"{site}/huge",
                        "Assertions": [{**length, "TargetValue": str(2 << 20)}, assertion],
                    }
                ],
            }
        )
        return await MultiStepApiProbe(ProbeContext(curl=engine, max_body_bytes=1 << 20)).check(
            monitor
        )

    hidden = await run("DoesNotContainText", "FATAL")  # past the kept MiB: not a pass
    assert hidden.error_code == ErrorCode.ASSERTION_FAILED, hidden
    assert "cannot be decided" in hidden.error_message
    found = await run("ContainsText", "xxxx")  # in the kept bytes: true of the whole body
    assert found.ok, found


@pytest.mark.parametrize(("address", "version"), [("127.0.0.1", "IpV6"), ("::1", "IpV4")])
async def test_an_address_of_the_other_family_is_not_a_dns_failure(
    address: str, version: str
) -> None:
    """Connect, Certificate and Ping checks of an IP address of the family the monitor does not
    allow: 143 naming both (was 100, "DNS lookup failed", with no lookup made)."""
    ctx = ProbeContext(curl=None, max_body_bytes=0)  # type: ignore[arg-type]
    host = f"[{address}]" if ":" in address else address
    common = {"Name": "m", "IpVersion": version, "TimeoutSeconds": 5}
    outcomes = [
        await ConnectProbe(ctx).check(
            ConnectMonitor.model_validate(
                {**common, "MonitorType": "Connect", "NetworkAddress": address, "Port": 9}
            )
        ),
        await CertificateProbe(ctx).check(
            CertificateMonitor.model_validate(
                {**common, "MonitorType": "Certificate", "Url": f"https://{host}:9/"}
            )
        ),
        await PingProbe(ctx).check(
            PingMonitor.model_validate({**common, "MonitorType": "Ping", "NetworkAddress": address})
        ),
    ]
    other = "IPv4" if version == "IpV6" else "IPv6"
    for outcome in outcomes:
        assert outcome.error_code == ErrorCode.VERSION_NOT_AS_REQUIRED, outcome
        assert outcome.error_message == f"{version} required, {address} is {other}"


def test_a_stored_body_cut_at_its_limit_keeps_whole_characters() -> None:
    outcome = Outcome(ErrorCode.CONTENT_MISMATCH, "m")
    outcome.body = "é".encode() * 10  # two bytes each
    result = make_result("m", "r", "Http", outcome, 1.0, 1.0, None, 5)
    assert result["response_body"] == "éé"  # 5 bytes: the third é is cut, so left out
    outcome.body = b"bad \xff byte"
    assert make_result("m", "r", "Http", outcome, 1.0, 1.0, None, 100)["response_body"] == (
        "bad \ufffd byte"
    )
