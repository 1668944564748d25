"""Multi-step API checks: HTTP requests and delays in order, with variables carried between
steps as {{name}} and assertions on each response. The first failing step ends the check."""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass, field
from typing import Any

from agent import curl
from agent.probes.assertions import (
    MISSING,
    AssertionResult,
    StepResponse,
    UndefinedVariable,
    check_assertion,
    extract,
    substitute,
)
from agent.probes.base import Outcome, Probe
from agent.probes.http import PHASES, curl_error_code
from agent.scrub import scrub_outcome
from shared.errors import ErrorCode
from shared.monitors import MonitorBase, MultiStepApiMonitor
from shared.msa import MsaStep, UserDefinedFunction
from shared.secrets import (
    MASK,
    Scrubber,
    basic_token,
    is_secret_header,
    mask_url,
    url_secret_values,
)

STEP_BODY_BYTES = 8192  # of each step's request and response kept in the step results


@dataclass(frozen=True)
class StepPlan:
    """One step of one check run, with what the whole run shares."""

    step: MsaStep
    name: str
    number: int
    functions: dict[str, UserDefinedFunction]
    deadline: float
    cookies: list[str]  # the check's cookie engine lines, the same list for all its steps

    @property
    def label(self) -> str:
        return f"Step {self.number} '{self.name}'"


@dataclass
class StepRun:
    passed: bool
    report: dict[str, Any]
    duration_ms: float
    phases: dict[str, float] = field(default_factory=dict)
    failure: Outcome | None = None
    status: int | None = None
    # secrets made from variables while running ({{token}} in an Authorization header, ...):
    # the assignment's scrub list cannot know them
    secrets: list[str] = field(default_factory=list)


def _reason(raw_headers: str) -> str:
    status_line = raw_headers.split("\r\n", 1)[0] if raw_headers else ""
    parts = status_line.split(" ", 2)
    return parts[2] if len(parts) == 3 else ""


class MultiStepApiProbe(Probe):
    type_names = MultiStepApiMonitor.type_names

    async def check(self, monitor: MonitorBase) -> Outcome:
        assert isinstance(monitor, MultiStepApiMonitor)
        script = monitor.script
        variables = {v.Key: v.Value for v in script.PredefinedVariables}
        functions = {f.Name: f for f in script.UserDefinedFunctions}
        began = time.perf_counter()
        deadline = began + monitor.TimeoutSeconds
        reports: list[dict[str, Any]] = []
        totals = dict.fromkeys(PHASES, 0.0)
        failure: Outcome | None = None
        last_status: int | None = None
        resolved_ip = ""
        passed_steps = 0
        cumulative_ms = 0.0
        made_secrets: list[str] = []
        # a browser's cookies: kept between the steps of this check, never beyond it
        cookies: list[str] = []
        for number, step in enumerate(script.MsaSteps, 1):
            name = step.Name or f"Step {number}"
            if failure is not None:
                reports.append(_not_executed(name, step))
                continue
            if step.StepType == "Delay":
                pause = min(step.Delay / 1000, max(0.0, deadline - time.perf_counter()))
                await asyncio.sleep(pause)
                cumulative_ms += pause * 1000
                reports.append(_delay_report(name, step.Delay))
                passed_steps += 1
                continue
            plan = StepPlan(step, name, number, functions, deadline, cookies)
            run = await self._run_with_retries(plan, variables, cumulative_ms)
            made_secrets += run.secrets
            cumulative_ms += run.duration_ms
            for phase in PHASES:
                totals[phase] += run.phases.get(phase, 0.0)
            reports.append(run.report)
            if run.status is not None:
                last_status = run.status
                resolved_ip = run.report.get("ResolvedIpAddress", resolved_ip)
            if run.passed:
                passed_steps += 1
            else:
                failure = run.failure
        elapsed_ms = (time.perf_counter() - began) * 1000
        outcome = failure or Outcome()
        outcome.http_status_code = last_status
        outcome.resolved_ip = resolved_ip
        outcome.timings_ms = {k: round(v, 3) for k, v in totals.items()}
        outcome.timings_ms["TotalTime"] = round(elapsed_ms, 3)
        outcome.total_bytes = sum(int(r.get("TotalBytes", 0)) for r in reports)
        outcome.attributes = {"TotalSteps": len(reports), "PassedSteps": passed_steps}
        outcome.details = {
            "StepResults": reports,
            "TotalSteps": len(reports),
            "PassedSteps": passed_steps,
        }
        if made_secrets and (scrubber := Scrubber(made_secrets)):
            scrub_outcome(outcome, scrubber)
        return outcome

    async def _run_with_retries(
        self, plan: StepPlan, variables: dict[str, str], cumulative_ms: float
    ) -> StepRun:
        step = plan.step
        attempts = step.MaxAttempts if step.RetryUntilSuccessful else 1
        run: StepRun | None = None
        for attempt in range(1, attempts + 1):
            # variables a failed attempt set must not leak into the next one
            scratch = dict(variables)
            run = await self._run_step(plan, scratch, cumulative_ms)
            run.report["Attempts"] = attempt
            if run.passed:
                variables.update(scratch)
                return run
            wait = step.RetryWaitMilliseconds / 1000
            if attempt == attempts or time.perf_counter() + wait >= plan.deadline:
                break
            await asyncio.sleep(wait)
        assert run is not None
        return run

    async def _run_step(
        self, plan: StepPlan, variables: dict[str, str], cumulative_ms: float
    ) -> StepRun:
        step, label = plan.step, plan.label
        report = _not_executed(plan.name, step)
        remaining = plan.deadline - time.perf_counter()
        if remaining <= 0:
            failure = Outcome(ErrorCode.TIMEOUT, f"{label}: the check ran out of time")
            failure.description_override = f"{label}: timed out"
            return StepRun(False, report, 0.0, failure=failure)
        auth = step.Authentication
        try:
            url = substitute(step.Url, variables)
            body = substitute(step.Body, variables) if step.Body else ""
            headers = tuple(
                (substitute(h.Key, variables), substitute(h.Value, variables))
                for h in step.RequestHeaders
            )
            username = substitute(auth.UserName, variables) if auth else ""
            password = substitute(auth.Password, variables) if auth else ""
        except UndefinedVariable as exc:
            message = f"{label}: variable {{{{{exc.name}}}}} is not defined"
            failure = Outcome(ErrorCode.VARIABLE_UNDEFINED, message)
            failure.description_override = message
            return StepRun(False, report, 0.0, failure=failure)
        made = _made_secrets(step, url, headers, username, password)
        request = curl.HttpRequest(
            url=url,
            method=step.Method,
            headers=headers,
            body=body.encode() if body else None,
            timeout_seconds=remaining,
            max_body_bytes=self.ctx.max_body_bytes,
            auth=auth.AuthenticationType if auth else "None",
            username=username,
            password=password,
            verify_tls=not step.IgnoreCertificateErrors,
            cookies=tuple(plan.cookies),
        )
        try:
            response = await self.ctx.curl.request(request)
        except curl.Unsupported as exc:
            failure = Outcome(ErrorCode.UNSUPPORTED, f"{label}: {exc}")
            failure.description_override = f"{label}: {failure.description}"
            return StepRun(False, report, 0.0, failure=failure)
        plan.cookies[:] = response.cookies  # what the next step sends
        phases = response.marks.phases_ms()
        step_ms = phases["TotalTime"]
        seen = StepResponse(
            completed=response.curl_error == 0,
            status=response.status,
            reason=_reason(response.raw_headers),
            headers=response.headers,
            body=response.body,
            duration_ms=step_ms,
            cumulative_ms=cumulative_ms + step_ms,
            functions=plan.functions,
            body_bytes=response.body_bytes,
        )
        unextracted = ""  # the first variable the step defines and could not extract
        for definition in step.Variables:
            if not definition.Name:
                continue
            problem = ""
            try:
                value = extract(
                    definition.Source, definition.Property, definition.Arguments, seen, variables
                )
            except UndefinedVariable as exc:
                value, problem = MISSING, f"variable {{{{{exc.name}}}}} is not defined"
            except ValueError as exc:
                value, problem = MISSING, str(exc)
            if value is MISSING and not unextracted:
                unextracted = (
                    f"{label}: variable {definition.Name!r} not found in "
                    f"{_where(definition.Source, definition.Property)}"
                    + (f": {problem}" if problem else "")
                )
            variables[definition.Name] = value if isinstance(value, str) else ""
        results = [check_assertion(a, seen, variables) for a in step.Assertions]
        secret = [is_secret_header(h.Key, h.IsSecret) for h in step.RequestHeaders]
        report.update(
            {
                "Url": mask_url(url),
                "HttpMethod": step.Method,
                "HttpStatusCode": str(response.status or ""),
                "HttpStatusDescription": seen.reason,
                "ResponseCompleted": seen.completed,
                "StepExecuted": True,
                "AssertionResultsInfo": {
                    "TotalAssertions": len(results),
                    "PassedAssertions": sum(1 for r in results if r.passed),
                    "AssertionInfos": [r.report() for r in results],
                },
                "TotalTime": round(step_ms),
                "Timings": phases,
                "TotalBytes": response.total_bytes,
                "RequestHeaders": "\r\n".join(
                    f"{k}: {MASK if hidden else v}"
                    for (k, v), hidden in zip(headers, secret, strict=True)
                ),
                "RequestBody": body[:STEP_BODY_BYTES],
                "ResponseHeaders": response.raw_headers,
                "ResponseBody": seen.text()[:STEP_BODY_BYTES],
                "ResolvedIpAddress": response.primary_ip,
                "ErrorMessage": response.curl_message,
            }
        )
        run = StepRun(True, report, step_ms, phases, status=response.status, secrets=made)
        failed = next((r for r in results if not r.passed), None)
        watches_transport = any(
            a.Source in ("ResponseCompleted", "ResponseHasException") for a in step.Assertions
        )
        if response.curl_error and not watches_transport:
            code = curl_error_code(response.curl_error, response.os_errno)
            run.failure = Outcome(code, f"{label}: {response.curl_message}")
            run.failure.description_override = f"{label}: {run.failure.description}"
            run.passed = False
        elif failed is not None:
            run.failure = Outcome(ErrorCode.ASSERTION_FAILED, _assertion_message(label, failed))
            run.failure.description_override = f"{label}: assertion '{failed.description}' failed"
            run.passed = False
        elif unextracted and response.curl_error == 0:
            # the step fails, not the next one with an empty value
            run.failure = Outcome(ErrorCode.VARIABLE_UNDEFINED, unextracted)
            run.failure.description_override = f"{label}: variable not found"
            run.passed = False
        run.report["Passed"] = run.passed
        return run


def _made_secrets(
    step: MsaStep, url: str, headers: tuple[tuple[str, str], ...], username: str, password: str
) -> list[str]:
    """The secret values of a step that came from variables (the static ones are known to the
    runner's scrubber from the assignment already)."""
    made: list[str] = []
    if "{{" in step.Url:
        made += url_secret_values(url)
    for (name, value), header in zip(headers, step.RequestHeaders, strict=True):
        if "{{" in header.Key + header.Value and is_secret_header(name, header.IsSecret):
            made.append(value)
            scheme, _, credentials = value.partition(" ")
            if credentials and scheme.isalpha():
                made.append(credentials.strip())
    auth = step.Authentication
    if auth is not None and password and "{{" in auth.UserName + auth.Password:
        made += [password, basic_token(username, password)]
    return made


_SOURCES = {
    "ResponseBodyJson": "the response body at JSON path",
    "ResponseBodyXml": "the response body at XML path",
    "ResponseHeader": "the response headers: no header",
    "Cookie": "the response's cookies: no cookie",
    "Variable": "the variables: no variable",
    "ExecuteFunction": "the result of function",
}


def _where(source: str, prop: str) -> str:
    """Where a variable was looked for, in words, with the property as the user wrote it."""
    words = _SOURCES.get(source)
    if words is None:
        return f"{source} {prop!r}" if prop else source
    return f"{words} {prop!r}" if prop else words.partition(":")[0]


def _assertion_message(label: str, failed: AssertionResult) -> str:
    if failed.problem:
        return f"{label}: {failed.description}: {failed.problem}"
    return f"{label}: {failed.description}: the value was {failed.actual!r}"


def _not_executed(name: str, step: MsaStep) -> dict[str, Any]:
    return {
        "StepName": name,
        "StepType": step.StepType,
        "Url": mask_url(step.Url),
        "HttpMethod": step.Method,
        "StepExecuted": False,
        "Passed": False,
        "TotalTime": 0,
        "TotalBytes": 0,
    }


def _delay_report(name: str, delay_ms: int) -> dict[str, Any]:
    return {
        "StepName": name,
        "StepType": "Delay",
        "StepExecuted": True,
        "Passed": True,
        "DelayMilliseconds": delay_ms,
        "TotalTime": delay_ms,
        "TotalBytes": 0,
    }
