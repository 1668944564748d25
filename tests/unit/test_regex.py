"""Users' regular expressions run in linear time (RE2): refused at the API when RE2 cannot
run them, naming the construct; matched without backtracking when it can."""

from __future__ import annotations

import base64
import re
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from aiohttp.test_utils import TestClient
from pydantic import ValidationError

from agent.curl import CurlEngine
from agent.probes.base import ProbeContext
from agent.probes.functions import execute
from agent.probes.http import HttpProbe
from shared import regex
from shared.errors import ErrorCode
from shared.monitors import HttpMonitor
from shared.msa import UserDefinedFunction
from tests.helpers import Target, controller_client

PASSWORD = "unit-test-password"
ADMIN = {"Authorization": "Basic " + base64.b64encode(f"admin:{PASSWORD}".encode()).decode()}
CATASTROPHIC = r"(x+)+y"  # Python's backtracking `re` needs ~2**n steps on n x's and no y


@pytest.fixture
async def client(tmp_path: Path) -> AsyncIterator[TestClient[Any, Any]]:
    async with controller_client(tmp_path, PASSWORD) as (test_client, _ctl):
        yield test_client


def _http(pattern: str) -> dict[str, Any]:
    return {
        "Name": "regex",
        "MonitorType": "Http",
        "Url": "http://127.0.0.1:9/",
        "ErrorConditions": [
            {
                "ErrorConditionType": "ContentMatch",
                "Value": pattern,
                "MatchType": "ErrorWhenNotContainsRegex",
            }
        ],
    }


def _msa(pattern: str) -> dict[str, Any]:
    return {
        "Name": "regex msa",
        "MonitorType": "MultiStepApi",
        "MsaSteps": [{"Url": "http://127.0.0.1:9/"}],
        "UserDefinedFunctions": [{"Name": "Pick", "Type": "Regex", "Regex": pattern}],
    }


@pytest.mark.parametrize(
    ("pattern", "construct"),
    [
        (r"price(?= EUR)", "look-ahead"),
        (r"(?<=id=)\d+", "look-behind"),
        (r"error(?!s)", "negative look-ahead"),
        (r"(ab)\1", "back-reference"),
        (r"(?P<q>['\"]).*(?P=q)", "back-reference"),
        (r"(?>a+)b", "atomic group"),
        (r"a++b", "possessive repetition"),
    ],
)
async def test_the_api_refuses_what_re2_cannot_run_naming_it(
    client: TestClient[Any, Any], pattern: str, construct: str
) -> None:
    for body, field in ((_http(pattern), "ErrorConditions[0]"), (_msa(pattern), "Regex")):
        resp = await client.post("/api/v4/Monitor", json=body, headers=ADMIN)
        assert resp.status == 400, await resp.text()
        messages = (await resp.json())["Messages"]
        assert any(construct in m["Message"] for m in messages), messages
        assert any(field in (m["Field"] or "") + m["Message"] for m in messages), messages


async def test_the_api_accepts_a_catastrophic_pattern_that_re2_runs(
    client: TestClient[Any, Any],
) -> None:
    for body in (_http(CATASTROPHIC), _msa(CATASTROPHIC)):
        resp = await client.post("/api/v4/Monitor", json=body, headers=ADMIN)
        assert resp.status == 201, await resp.text()


@pytest.mark.timeout(60)  # with backtracking this check would not end for years
async def test_a_catastrophic_pattern_is_matched_in_linear_time(target: Target) -> None:
    monitor = HttpMonitor.model_validate(_http(CATASTROPHIC) | {"Url": f"{target.base}/big"})
    curl = CurlEngine(4)
    try:
        probe = HttpProbe(ProbeContext(curl=curl, max_body_bytes=1 << 20))
        for size in (40, 100_000):
            monitor.Url = f"{target.base}/big?bytes={size}"  # x's only: no match
            began = time.perf_counter()
            outcome = await probe.check(monitor)
            assert outcome.error_code == ErrorCode.CONTENT_MISMATCH, outcome
            assert time.perf_counter() - began < 30
    finally:
        curl.close()
    function = UserDefinedFunction.model_validate({"Name": "f", "Type": "Regex", "Regex": "(x+)+y"})
    assert execute(function, "x" * 64) is None


@pytest.mark.parametrize(
    ("pattern", "text"),
    [
        (r"^(..)", "Ada Lovelace"),
        (r"order (\d+)", "your order 12345 is ready"),
        (r"(?i)ERROR", "an error occurred"),
        (r"(?P<key>[a-z]+)=(?P<value>[^&]*)", "?a=1&bee=two"),
        (r"(?m)^status: (\w+)$", "x: 1\nstatus: up\ny: 2"),
        (r"(?s)<b>(.*?)</b>", "<b>one\ntwo</b><b>3</b>"),
        (r"done\Z", "all done"),
        (r"done\Z", "done or not"),
        (r"[^\s]+@[^\s]+\.(com|org)", "write to ada@example.org today"),
        (r"\\Z", r"a literal \Z"),
        (r"colou?r", "no match here"),
    ],
)
def test_ordinary_patterns_match_as_python_does(pattern: str, text: str) -> None:
    ours, python = regex.search(pattern, text), re.search(pattern, text)
    assert (ours is None) == (python is None)
    if ours is not None and python is not None:
        assert ours.group(0) == python.group(0)
        assert ours.groups() == python.groups()


def test_bad_patterns_say_why() -> None:
    with pytest.raises(regex.RegexError, match="missing \\)"):
        regex.check("(unclosed")
    with pytest.raises(regex.RegexError, match="verbose"):
        regex.check("(?x) a b")
    with pytest.raises(regex.RegexError, match="longer than"):
        regex.check("a" * (regex.MAX_PATTERN_CHARS + 1))
    regex.check("(" * 2000 + ")" * 2000)  # deep nesting: never a RecursionError
    with pytest.raises(regex.RegexError, match="missing"):
        regex.check("(" * 4000)


async def test_a_pattern_stored_before_re2_loads_and_its_checks_say_why(target: Target) -> None:
    stored = _http(r"good(?=:)") | {"Url": f"{target.base}/ok"}
    with pytest.raises(ValidationError, match="look-ahead"):
        HttpMonitor.model_validate(stored, context=regex.FROM_OUTSIDE)  # as the API does
    monitor = HttpMonitor.model_validate(stored)  # as the controller and agent load it
    curl = CurlEngine(4)
    try:
        outcome = await HttpProbe(ProbeContext(curl=curl, max_body_bytes=1 << 20)).check(monitor)
    finally:
        curl.close()
    assert outcome.error_code == ErrorCode.UNSUPPORTED, outcome
    assert "look-ahead" in outcome.error_message
    function = UserDefinedFunction.model_validate({"Name": "f", "Type": "Regex", "Regex": "(a)\\1"})
    with pytest.raises(ValueError, match="back-reference"):
        execute(function, "aa")
