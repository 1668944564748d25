"""Values from a multi-step API step's response (variables and assertions), and comparisons."""

from __future__ import annotations

import base64
import hashlib
import json
import re
import xml.etree.ElementTree as ElementTree
from dataclasses import dataclass, field
from http.cookies import CookieError, SimpleCookie
from typing import Any

from agent.probes.content import charset
from agent.probes.functions import execute
from shared.msa import PLACEHOLDER, ApiAssertion, ApiVariableDefinition, UserDefinedFunction


class Missing:
    """A value that is not there at all (as opposed to JSON null, which is None)."""

    def __repr__(self) -> str:
        return "MISSING"


MISSING = Missing()
Value = str | None | Missing


class UndefinedVariable(Exception):
    def __init__(self, name: str) -> None:
        super().__init__(name)
        self.name = name


def substitute(text: str, variables: dict[str, str]) -> str:
    """Replace every {{name}}; an unknown name raises UndefinedVariable."""

    def one(match: re.Match[str]) -> str:
        name = match.group(1)
        if name not in variables:
            raise UndefinedVariable(name)
        return variables[name]

    return PLACEHOLDER.sub(one, text)


@dataclass
class StepResponse:
    """What a step's assertions and variables can look at."""

    completed: bool
    status: int | None = None
    reason: str = ""
    headers: list[tuple[str, str]] = field(default_factory=list)
    body: bytes = b""
    duration_ms: float = 0.0
    cumulative_ms: float = 0.0
    functions: dict[str, UserDefinedFunction] = field(default_factory=dict)
    body_bytes: int = -1  # the whole body's (decoded); `body` keeps the first bytes; -1: all
    _json: Any = field(default=MISSING, repr=False)

    def text(self) -> str:
        """The body in its declared charset (Content-Type, <meta charset>, BOM; else UTF-8)."""
        return self.body.decode(charset(self.headers, self.body), errors="replace")

    def json(self) -> Any:
        if self._json is MISSING:
            try:
                self._json = json.loads(self.body)
            except (ValueError, UnicodeDecodeError):
                self._json = None
                raise
        return self._json


JSON_TOKEN = re.compile(r"\.?([^.\[\]]+)|\[(-?\d+)\]|\[['\"]([^'\"]+)['\"]\]")


def json_path(document: Any, path: str) -> Any:
    """Uptrends' paths (`items[0].id`, `[0].ProductId`), `$.`-prefixed ones too."""
    text = path.strip()
    if text.startswith("$"):
        text = text[1:]
    node = document
    position = 0
    while position < len(text):
        match = JSON_TOKEN.match(text, position)
        if match is None or match.end() == position:
            raise ValueError(f"cannot read JSON path {path!r} at {text[position:]!r}")
        position = match.end()
        key, index, quoted = match.groups()
        name = quoted if quoted is not None else key
        if index is not None:
            if not isinstance(node, list) or not -len(node) <= int(index) < len(node):
                return MISSING
            node = node[int(index)]
        elif isinstance(node, dict) and name in node:
            node = node[name]
        elif (
            isinstance(node, list) and name is not None and name.isdigit() and int(name) < len(node)
        ):
            node = node[int(name)]
        else:
            return MISSING
    return node


def as_text(value: Any) -> Value:
    if value is MISSING or value is None or isinstance(value, str):
        return value
    if isinstance(value, bool):
        return "true" if value else "false"
    return json.dumps(value, ensure_ascii=False)


def xml_path(body: bytes, path: str) -> Value:
    try:
        root = ElementTree.fromstring(body)
    except ElementTree.ParseError as exc:
        raise ValueError(f"the response is not XML: {exc}") from None
    steps = path.strip()
    if steps.startswith("//"):
        found = root.find("." + steps) if root.tag != steps[2:].split("/")[0] else root
    else:
        parts = [p for p in steps.strip("/").split("/") if p]
        if not parts or parts[0] != root.tag:
            return MISSING
        found = root.find("/".join(parts[1:])) if len(parts) > 1 else root
    if found is None:
        return MISSING
    return found.text or ""


def _cookie(headers: list[tuple[str, str]], name: str) -> Value:
    for key, value in headers:
        if key.lower() == "set-cookie":
            jar: SimpleCookie = SimpleCookie()
            try:
                jar.load(value)
            except CookieError:
                continue
            if name in jar:
                return jar[name].value
    return MISSING


def extract(
    source: str,
    prop: str,
    arguments: list[ApiVariableDefinition],
    response: StepResponse,
    variables: dict[str, str],
) -> Value:
    """One value, from the response or from variables. ValueError when it cannot be read."""

    def args() -> list[str]:
        values = [
            extract(a.Source, a.Property, a.Arguments, response, variables) for a in arguments
        ]
        return [v if isinstance(v, str) else "" for v in values]

    prop_text = substitute(prop, variables) if prop else ""
    match source:
        case "ResponseStatusCode":
            return str(response.status) if response.status is not None else MISSING
        case "ResponseStatusDescription":
            return response.reason
        case "ResponseBodyText":
            return response.text()
        case "ResponseBodyJson":
            try:
                document = response.json()
            except (ValueError, UnicodeDecodeError) as exc:
                raise ValueError(f"the response is not JSON: {exc}") from None
            return as_text(json_path(document, prop_text)) if prop_text else response.text()
        case "ResponseBodyXml":
            return xml_path(response.body, prop_text)
        case "ResponseHeader":
            wanted = prop_text.lower()
            found = [v for k, v in response.headers if k.lower() == wanted]
            return ", ".join(found) if found else MISSING
        case "Cookie":
            return _cookie(response.headers, prop_text)
        case "ResponseCompleted":
            return "true" if response.completed else "false"
        case "ResponseHasException":
            return "false" if response.completed else "true"
        case "ContentLengthCalculated":
            return str(max(response.body_bytes, len(response.body)))
        case "Duration":
            return str(round(response.duration_ms))
        case "CumulativeDuration":
            return str(round(response.cumulative_ms))
        case "Constant":
            return prop_text
        case "Variable":
            return variables.get(prop.strip().strip("{}").strip(), MISSING)
        case "VariablesResolved":
            try:
                substitute(prop, variables)
            except UndefinedVariable:
                return "false"
            return "true"
        case "Sum":
            try:
                total = float(sum(float(v) for v in args()))
            except ValueError:
                raise ValueError("Sum needs numbers") from None
            return str(int(total)) if total.is_integer() else str(total)
        case "Concatenation":
            return "".join(args())
        case "ToBase64" | "ToSHA1Hex" | "ToMD5Hex":
            data = ("".join(args()) if arguments else prop_text).encode()
            if source == "ToBase64":
                return base64.b64encode(data).decode()
            digest = hashlib.sha1 if source == "ToSHA1Hex" else hashlib.md5
            return digest(data, usedforsecurity=False).hexdigest()
        case "ExecuteFunction":
            function = response.functions.get(prop.strip())
            if function is None:
                raise ValueError(f"no user-defined function named {prop.strip()!r}")
            result = execute(function, "".join(args()))
            return MISSING if result is None else result
        case _:  # None, Fail
            return MISSING


def _number(value: Value, what: str) -> float:
    try:
        return float(value) if isinstance(value, str) else float("nan")
    except ValueError:
        raise ValueError(f"{what} {value!r} is not a number") from None


def compare(actual: Value, comparison: str, target: str) -> bool:
    text = actual if isinstance(actual, str) else ""
    match comparison:
        case "ShouldBeIgnored":
            return True
        case "Exists":
            return actual is not MISSING
        case "DoesNotExist":
            return actual is MISSING
        case "IsNull":
            return actual is None
        case "IsNotNull":
            return actual is not None and actual is not MISSING
        case "IsEmpty":
            return actual is not MISSING and text.strip() in ("", "[]", "{}")
        case "IsNotEmpty":
            return isinstance(actual, str) and text.strip() not in ("", "[]", "{}")
        case "Equal":
            return isinstance(actual, str) and actual == target
        case "DoesNotEqual":
            return not (isinstance(actual, str) and actual == target)
        case "ContainsText":
            return isinstance(actual, str) and target in actual
        case "DoesNotContainText":
            return target not in text
    left, right = _number(actual, "value"), _number(target, "target")
    return {
        "LessThan": left < right,
        "GreaterThan": left > right,
        "LessThanOrEqual": left <= right,
        "GreaterThanOrEqual": left >= right,
    }[comparison]


def describe(assertion: ApiAssertion) -> str:
    source = assertion.Source + (f"({assertion.Property})" if assertion.Property else "")
    target = f" {assertion.TargetValue}" if assertion.TargetValue else ""
    return f"{source} {assertion.Comparison}{target}"


@dataclass
class AssertionResult:
    description: str
    passed: bool
    completed: bool
    actual: str
    problem: str = ""

    def report(self) -> dict[str, Any]:
        return {
            "Completed": self.completed,
            "Passed": self.passed,
            "Description": self.description,
            "ExceptionDescription": self.problem,
            "ActualValue": self.actual,
        }


# comparisons that, true of the kept first bytes of a body, are true of the whole body
_TRUE_OF_THE_WHOLE = frozenset(
    {"ContainsText", "IsNotEmpty", "IsNotNull", "Exists", "ShouldBeIgnored"}
)


def check_assertion(
    assertion: ApiAssertion, response: StepResponse, variables: dict[str, str]
) -> AssertionResult:
    description = describe(assertion)
    if assertion.Source == "Fail":
        return AssertionResult(description, False, True, "", "the step is set to fail")
    try:
        actual = extract(assertion.Source, assertion.Property, [], response, variables)
        target = substitute(assertion.TargetValue, variables)
        passed = compare(actual, assertion.Comparison, target)
        if (
            passed
            and assertion.Source == "ResponseBodyText"
            and response.body_bytes > len(response.body)
            and assertion.Comparison not in _TRUE_OF_THE_WHOLE
        ):
            kept = len(response.body)
            problem = (
                f"cannot be decided: the body has {response.body_bytes} bytes and only the "
                f"first {kept} are kept (PICKET_MAX_BODY_BYTES)"
            )
            return AssertionResult(description, False, False, "", problem)
    except UndefinedVariable as exc:
        return AssertionResult(
            description, False, False, "", f"variable {{{{{exc.name}}}}} is not defined"
        )
    except ValueError as exc:
        return AssertionResult(description, False, False, "", str(exc))
    shown = actual if isinstance(actual, str) else ("null" if actual is None else "(missing)")
    return AssertionResult(description, passed, True, shown[:200])
