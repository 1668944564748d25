from __future__ import annotations

import pytest
from pydantic import ValidationError

from agent.curl import Marks
from agent.probes.http import evaluate
from controller.ingest import CONFIRMED, NO_ERROR, UNCONFIRMED, error_level
from controller.settings import ControllerSettings
from shared.errors import ErrorCode
from shared.messages import CheckResult
from shared.monitors import ErrorCondition, HttpMonitor
from shared.settings import parse_broker_url, parse_listen
from shared.timefmt import iso, parse


def test_phases_from_curl_marks() -> None:
    marks = Marks(
        namelookup=1_000,
        connect=3_000,
        appconnect=10_000,
        pretransfer=10_500,
        posttransfer=10_600,
        starttransfer=160_600,
        total=161_000,
    )
    assert marks.phases_ms() == {
        "ResolveTime": 1.0,
        "ConnectionTime": 2.0,
        "HttpsHandshakeTime": 7.0,
        "SendTime": 0.1,
        "WaitTime": 150.0,
        "DownloadTime": 0.4,
        "TotalTime": 161.0,
    }
    assert Marks(namelookup=5, connect=10, total=12).phases_ms()["HttpsHandshakeTime"] == 0.0


def test_interval_in_minutes_or_seconds_not_both() -> None:
    base = {"Name": "m", "MonitorType": "Http", "Url": "http://127.0.0.1/"}
    assert HttpMonitor.model_validate(base).interval_seconds == 300
    assert HttpMonitor.model_validate({**base, "CheckInterval": 2}).interval_seconds == 120
    assert HttpMonitor.model_validate({**base, "CheckIntervalSeconds": 7}).interval_seconds == 7
    with pytest.raises(ValidationError, match="not both"):
        HttpMonitor.model_validate({**base, "CheckInterval": 1, "CheckIntervalSeconds": 60})
    with pytest.raises(ValidationError):
        HttpMonitor.model_validate({**base, "CheckIntervalSeconds": 0})
    with pytest.raises(ValidationError):
        HttpMonitor.model_validate({**base, "CheckInterval": 241})


def test_url_scheme_follows_the_type() -> None:
    with pytest.raises(ValidationError, match="needs a https"):
        HttpMonitor.model_validate({"Name": "m", "MonitorType": "Https", "Url": "http://x/"})
    with pytest.raises(ValidationError, match="absolute"):
        HttpMonitor.model_validate({"Name": "m", "MonitorType": "Http", "Url": "file:///etc"})


def test_error_conditions() -> None:
    status = ErrorCondition(ErrorConditionType="HttpStatus", Value="201")
    assert evaluate([status], 201, b"") is None
    failed = evaluate([status], 200, b"")
    assert failed is not None and failed.error_code == ErrorCode.HTTP_STATUS_MISMATCH
    assert evaluate([], 302, b"") is None
    assert evaluate([], 503, b"") is not None
    must = ErrorCondition(ErrorConditionType="ContentMatch", Value="hello")
    assert evaluate([must], 200, b"say hello") is None
    assert evaluate([must], 200, b"bye").error_code == ErrorCode.CONTENT_MISMATCH  # type: ignore[union-attr]
    never = ErrorCondition(
        ErrorConditionType="ContentMatch", Value=r"err\w+", MatchType="ErrorWhenContainsRegex"
    )
    assert evaluate([never], 200, b"fine") is None
    assert evaluate([never], 200, b"an error") is not None
    with pytest.raises(ValidationError, match="regular expression"):
        ErrorCondition(
            ErrorConditionType="ContentMatch", Value="(", MatchType="ErrorWhenContainsRegex"
        )


def _result(code: int, confirmation: bool = False) -> CheckResult:
    return CheckResult(
        uid="u",
        monitor_guid="m",
        monitor_type="Http",
        scheduled_at=0,
        started_at=0,
        error_code=code,
        error_description="",
        is_confirmation=confirmation,
    )


def test_error_levels() -> None:
    assert error_level(_result(0), CONFIRMED) == NO_ERROR
    assert error_level(_result(110), NO_ERROR) == UNCONFIRMED
    assert error_level(_result(110, confirmation=True), UNCONFIRMED) == CONFIRMED
    assert error_level(_result(0, confirmation=True), UNCONFIRMED) == NO_ERROR
    assert error_level(_result(110), CONFIRMED) == CONFIRMED


def test_settings_urls() -> None:
    target = parse_broker_url("mqtts://user:p%40ss@broker.example:8884")
    assert (target.host, target.port, target.username, target.password, target.tls) == (
        "broker.example",
        8884,
        "user",
        "p@ss",
        True,
    )
    assert parse_broker_url("mqtt://127.0.0.1").port == 1883
    with pytest.raises(ValueError):
        parse_broker_url("http://x")
    assert parse_listen("[::1]:9000", 1) == ("::1", 9000)
    assert parse_listen(":81", 1) == ("127.0.0.1", 81)
    settings = ControllerSettings(database_url="postgresql://u@h:5432/db")
    assert settings.resolved_database_url() == "postgresql+asyncpg://u@h:5432/db"
    settings = ControllerSettings(database_url="sqlite:////tmp/x.db")
    assert settings.resolved_database_url() == "sqlite+aiosqlite:////tmp/x.db"
    assert ControllerSettings().resolved_database_url().endswith("var/picket.db")


def test_timestamps() -> None:
    assert iso(0.1234) == "1970-01-01T00:00:00.123Z"
    assert parse("1970-01-01T00:00:01Z") == 1.0
    assert parse("1970-01-01T00:00:01") == 1.0  # Uptrends' form, no offset: UTC
    assert parse("1970-01-01T01:00:01+01:00") == 1.0
    with pytest.raises(ValueError, match="ISO 8601"):
        parse("yesterday")


def test_a_result_field_says_where_it_is_stored() -> None:
    """A message field without a storage marker (or with two) is refused when the controller
    derives its row builder, rather than silently not stored."""
    from typing import Annotated

    from pydantic import BaseModel

    from shared.results import Attribute, Column, storage_plan

    class Loose(BaseModel):
        uid: Annotated[str, Column("uid")]
        forgotten: str = ""

    class Twice(BaseModel):
        uid: Annotated[str, Column("uid"), Attribute("Uid")]

    for model in (Loose, Twice):
        with pytest.raises(TypeError, match="must say once where it is stored"):
            storage_plan(model)
    plan = storage_plan(CheckResult)
    names = [n for n, _ in plan.columns] + [n for n, _ in plan.attributes] + list(plan.spreads)
    assert sorted(names) == sorted(set(CheckResult.model_fields) - {"v"})
