"""Multi-step API checks against a real loopback API."""

from __future__ import annotations

import hashlib
import json
from collections.abc import AsyncIterator
from typing import Any

import pytest

from agent.curl import CurlEngine
from agent.probes.api import MultiStepApiProbe
from agent.probes.assertions import MISSING, json_path
from agent.probes.base import Outcome, ProbeContext
from shared.errors import ErrorCode
from shared.monitors import MultiStepApiMonitor
from tests.servers.api import ApiTarget


@pytest.fixture
async def api() -> AsyncIterator[ApiTarget]:
    server = ApiTarget()
    await server.start()
    yield server
    await server.stop()


async def _run(**fields: Any) -> Outcome:
    monitor = MultiStepApiMonitor.model_validate(
        {"Name": "msa", "MonitorType": "MultiStepApi", **fields}
    )
    curl = CurlEngine(10)
    try:
        return await MultiStepApiProbe(ProbeContext(curl=curl, max_body_bytes=1 << 20)).check(
            monitor
        )
    finally:
        curl.close()


def _assert(source: str, comparison: str, target: str = "", prop: str = "") -> dict[str, str]:
    return {"Source": source, "Property": prop, "Comparison": comparison, "TargetValue": target}


def _steps(base: str) -> list[dict[str, Any]]:
    return [
        {
            "StepType": "HttpRequest",
            "Name": "log in",
            "Method": "POST",
            "Url": "{{base}}/login",
            "Body": '{"user": "{{who}}"}',
            "RequestHeaders": [{"Key": "Content-Type", "Value": "application/json"}],
            "Variables": [
                {"Source": "ResponseBodyJson", "Property": "token", "Name": "token"},
                {"Source": "ResponseBodyJson", "Property": "$.user.id", "Name": "uid"},
                {"Source": "Cookie", "Property": "session", "Name": "session"},
            ],
            "Assertions": [
                _assert("ResponseStatusCode", "Equal", "200"),
                _assert("ResponseBodyJson", "Equal", "Ada", "user.name"),
                _assert("ResponseHeader", "ContainsText", "json", "Content-Type"),
            ],
        },
        {"StepType": "Delay", "Name": "breathe", "Delay": 20},
        {
            "StepType": "HttpRequest",
            "Name": "list orders",
            "Url": f"{base}/orders",
            "RequestHeaders": [{"Key": "Authorization", "Value": "Bearer {{token}}"}],
            "Variables": [
                {"Source": "ResponseBodyJson", "Property": "items[0].id", "Name": "first"},
                {
                    "Source": "Sum",
                    "Name": "sum",
                    "Arguments": [
                        {"Source": "Variable", "Property": "uid"},
                        {"Source": "Constant", "Property": "8"},
                    ],
                },
                {
                    "Source": "ToBase64",
                    "Name": "b64",
                    "Arguments": [{"Source": "Variable", "Property": "session"}],
                },
            ],
            "Assertions": [
                _assert("ResponseStatusCode", "Equal", "200"),
                _assert("ResponseBodyJson", "GreaterThan", "1", "$.count"),
                _assert("ResponseBodyJson", "Equal", "12.5", "items[0].total"),
                _assert("ResponseBodyJson", "IsNull", "", "items[1].total"),
                _assert("ResponseBodyJson", "DoesNotExist", "", "items[5].id"),
                _assert("ResponseBodyJson", "IsNotEmpty", "", "items"),
                _assert("Duration", "LessThan", "10000"),
                _assert("Variable", "Equal", "50", "sum"),
                _assert("Variable", "Equal", "cy0x", "b64"),
            ],
        },
        {
            "StepType": "HttpRequest",
            "Name": "one order",
            "Url": "{{base}}/orders/{{first}}",
            "Assertions": [
                _assert("ResponseBodyText", "ContainsText", "shipped"),
                _assert("ResponseBodyJson", "Equal", "7", "id"),
                _assert("CumulativeDuration", "GreaterThanOrEqual", "20"),
            ],
        },
        {
            "StepType": "HttpRequest",
            "Name": "xml",
            "Url": "{{base}}/xml",
            "Assertions": [
                _assert("ResponseBodyXml", "Equal", "open", "/shop/order/state"),
                _assert("ResponseStatusDescription", "Equal", "OK"),
            ],
        },
    ]


def _variables(base: str) -> list[dict[str, str]]:
    return [{"Key": "base", "Value": base}, {"Key": "who", "Value": "ada"}]


async def test_a_chain_of_steps_with_variables_and_assertions(api: ApiTarget) -> None:
    outcome = await _run(MsaSteps=_steps(api.base), PredefinedVariables=_variables(api.base))
    assert outcome.ok, (outcome.description, outcome.error_message)
    assert outcome.details is not None
    steps = outcome.details["StepResults"]
    assert [s["StepName"] for s in steps] == [
        "log in",
        "breathe",
        "list orders",
        "one order",
        "xml",
    ]
    assert all(s["Passed"] and s["StepExecuted"] for s in steps)
    orders = steps[2]
    assert orders["Url"] == f"{api.base}/orders" and orders["HttpStatusCode"] == "200"
    assert orders["AssertionResultsInfo"]["PassedAssertions"] == 9
    assert "Authorization: ***" in orders["RequestHeaders"]
    assert steps[3]["Url"] == f"{api.base}/orders/7"
    assert outcome.details["PassedSteps"] == 5
    assert outcome.timings_ms["TotalTime"] >= 20 and outcome.http_status_code == 200


async def test_the_script_form_runs_the_same(api: ApiTarget) -> None:
    script = json.dumps(
        {
            "MsaSteps": [
                {**step, "discriminator": "HttpRequestStepV2", "Encoding": "Utf8"}
                for step in _steps(api.base)
            ],
            "PredefinedVariables": _variables(api.base),
            "UserDefinedFunctions": [],
            "Version": 2,
        }
    )
    outcome = await _run(MultiStepApiTransactionScript=script)
    assert outcome.ok, (outcome.description, outcome.error_message)


async def test_the_first_failing_step_ends_the_check(api: ApiTarget) -> None:
    steps = _steps(api.base)
    steps[2]["Assertions"].append(_assert("ResponseBodyJson", "Equal", "99", "items[0].id"))
    outcome = await _run(MsaSteps=steps, PredefinedVariables=_variables(api.base))
    assert outcome.error_code == ErrorCode.ASSERTION_FAILED
    assert outcome.description == (
        "Step 3 'list orders': assertion 'ResponseBodyJson(items[0].id) Equal 99' failed"
    )
    assert "'7'" in outcome.error_message
    assert outcome.details is not None
    executed = [s["StepExecuted"] for s in outcome.details["StepResults"]]
    assert executed == [True, True, True, False, False]
    assert api.calls.get("/orders/7") is None


@pytest.mark.parametrize(
    ("variable", "where"),
    [
        (
            {"Source": "ResponseBodyJson", "Property": "data.token", "Name": "token"},
            "the response body at JSON path 'data.token'",
        ),
        (
            {"Source": "ResponseHeader", "Property": "X-Token", "Name": "token"},
            "the response headers: no header 'X-Token'",
        ),
        (
            {"Source": "Cookie", "Property": "auth", "Name": "token"},
            "the response's cookies: no cookie 'auth'",
        ),
    ],
)
async def test_a_variable_that_cannot_be_extracted_fails_its_own_step(
    api: ApiTarget, variable: dict[str, str], where: str
) -> None:
    steps = _steps(api.base)
    steps[0]["Variables"].append(variable)
    outcome = await _run(MsaSteps=steps, PredefinedVariables=_variables(api.base))
    assert outcome.error_code == ErrorCode.VARIABLE_UNDEFINED, outcome
    assert outcome.error_message == f"Step 1 'log in': variable 'token' not found in {where}"
    assert outcome.details is not None
    first, *rest = outcome.details["StepResults"]
    assert first["StepExecuted"] and not first["Passed"]
    assert not any(s["StepExecuted"] for s in rest)
    assert api.calls.get("/orders") is None  # never called with an empty token


async def test_steps_keep_cookies_within_a_check_never_across_checks(api: ApiTarget) -> None:
    login, *_ = _steps(api.base)
    whoami = {
        "StepType": "HttpRequest",
        "Name": "who am i",
        "Url": f"{api.base}/whoami",
        "Variables": [{"Source": "ResponseBodyJson", "Property": "session", "Name": "seen"}],
    }
    monitor = MultiStepApiMonitor.model_validate(
        {
            "Name": "msa",
            "MonitorType": "MultiStepApi",
            "PredefinedVariables": _variables(api.base),
            "MsaSteps": [whoami, login, whoami],
        }
    )
    curl = CurlEngine(10)
    probe = MultiStepApiProbe(ProbeContext(curl=curl, max_body_bytes=1 << 20))
    try:
        for _ in range(2):  # the second check starts without the first one's cookie
            outcome = await probe.check(monitor)
            assert outcome.ok, outcome
            assert outcome.details is not None
            seen = [json.loads(s["ResponseBody"]) for s in outcome.details["StepResults"]]
            assert seen == [
                {"session": "none"},
                {"token": "tok-123", "user": {"id": 42, "name": "Ada"}},
                {"session": "s-1"},
            ]
    finally:
        curl.close()


async def test_undefined_variables_and_transport_errors(api: ApiTarget) -> None:
    undefined = await _run(
        MsaSteps=[{"StepType": "HttpRequest", "Url": "{{nowhere}}/x", "Name": "lost"}]
    )
    assert undefined.error_code == ErrorCode.VARIABLE_UNDEFINED
    assert "Step 1 'lost'" in undefined.description and "{{nowhere}}" in undefined.error_message
    refused = await _run(MsaSteps=[{"StepType": "HttpRequest", "Url": "http://127.0.0.1:9/"}])
    assert refused.error_code == ErrorCode.CONNECTION_REFUSED
    assert refused.description == "Step 1 'Step 1': Connection refused"
    expected = await _run(
        MsaSteps=[
            {
                "StepType": "HttpRequest",
                "Url": "http://127.0.0.1:9/",
                "Assertions": [_assert("ResponseHasException", "Equal", "true")],
            }
        ]
    )
    assert expected.ok, expected


async def test_retry_until_successful(api: ApiTarget) -> None:
    step = {
        "StepType": "HttpRequest",
        "Name": "wait for ready",
        "Url": f"{api.base}/flaky",
        "Assertions": [_assert("ResponseBodyJson", "Equal", "true", "ready")],
        "RetryUntilSuccessful": True,
        "MaxAttempts": 4,
        "RetryWaitMilliseconds": 10,
    }
    outcome = await _run(MsaSteps=[step])
    assert outcome.ok and api.calls["/flaky"] == 3
    assert outcome.details is not None and outcome.details["StepResults"][0]["Attempts"] == 3
    api.calls.clear()
    api.flaky_failures = 10
    outcome = await _run(MsaSteps=[{**step, "MaxAttempts": 2}])
    assert outcome.error_code == ErrorCode.ASSERTION_FAILED and api.calls["/flaky"] == 2


def test_json_paths() -> None:
    document = {"items": [{"id": 1, "tags": ["a"]}], "a.b": 2}
    assert json_path(document, "items[0].id") == 1
    assert json_path(document, "$.items[0].tags[0]") == "a"
    assert json_path(document, "$['a.b']") == 2
    assert json_path(document, "items[3]") is MISSING
    assert json_path([{"ProductId": 5}], "[0].ProductId") == 5


def test_invalid_definitions_are_refused() -> None:
    with pytest.raises(ValueError, match="no step"):
        MultiStepApiMonitor.model_validate({"Name": "m", "MonitorType": "MultiStepApi"})
    with pytest.raises(ValueError, match=r"MsaSteps\[0\]\.Url"):
        MultiStepApiMonitor.model_validate(
            {
                "Name": "m",
                "MonitorType": "MultiStepApi",
                "MultiStepApiTransactionScript": json.dumps({"MsaSteps": [{"Url": "ftp://x"}]}),
            }
        )
    with pytest.raises(ValueError, match="Comparison"):
        MultiStepApiMonitor.model_validate(
            {
                "Name": "m",
                "MonitorType": "MultiStepApi",
                "MsaSteps": [
                    {"Url": "http://x/", "Assertions": [{"Source": "ResponseStatusCode"}]}
                ],
            }
        )


async def test_user_defined_functions(api: ApiTarget) -> None:
    def call(
        name: str, source: str = "ResponseBodyJson", prop: str = "user.name"
    ) -> dict[str, Any]:
        return {
            "Source": "ExecuteFunction",
            "Property": name,
            "Name": name.lower(),
            "Arguments": [{"Source": source, "Property": prop}],
        }

    step = {
        "StepType": "HttpRequest",
        "Method": "POST",
        "Url": f"{api.base}/login",
        "Body": '{"user": "ada"}',
        "Variables": [
            call("Initials"),
            call("FirstLetters"),
            call("Sha"),
            call("Token", "Constant", '{"sub": "ada"}'),
        ],
        "Assertions": [
            _assert("Variable", "Equal", "A.L.", "initials"),
            _assert("Variable", "Equal", "Ad", "firstletters"),
            _assert("Variable", "Equal", hashlib.sha256(b"Ada").hexdigest(), "sha"),
        ],
    }
    decode = {
        "StepType": "HttpRequest",
        "Url": f"{api.base}/orders/1",
        "Variables": [
            {
                "Source": "ExecuteFunction",
                "Property": "Claims",
                "Name": "claims",
                "Arguments": [{"Source": "Variable", "Property": "token"}],
            }
        ],
        "Assertions": [_assert("Variable", "Equal", '{"sub":"ada"}', "claims")],
    }
    script = {
        "MsaSteps": [step, decode],
        "UserDefinedFunctions": [
            {
                "Name": "Initials",
                "Mapping": {"Ada": "A.L."},
                "discriminator": "UserDefinedFunctionMapping",
            },
            {"Name": "FirstLetters", "Type": "Regex", "Regex": "^(..)"},
            {"Name": "Sha", "Type": "Hash", "HashAlgorithm": "SHA256"},
            {"Name": "Token", "Type": "JwtEncode", "JwtSigningKey": "k3y"},
            {"Name": "Claims", "Type": "JwtDecode", "JwtSigningKey": "k3y"},
        ],
    }
    outcome = await _run(MultiStepApiTransactionScript=json.dumps(script))
    assert outcome.ok, (outcome.description, outcome.error_message)
    script["UserDefinedFunctions"][4]["JwtSigningKey"] = "other key"  # type: ignore[index]
    tampered = await _run(MultiStepApiTransactionScript=json.dumps(script))
    assert tampered.error_code == ErrorCode.ASSERTION_FAILED
    assert "Step 2" in tampered.description
