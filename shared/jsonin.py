"""JSON from outside (API bodies, JSON strings inside them): parsed with bounded nesting, and
refused when it holds what no database can store as text (NUL, lone surrogates).

`json.loads` recurses once per nesting level and raises RecursionError (not ValueError) on a
deep enough document; everything here raises ValueError with a readable message instead, and
walks parsed values without recursion.
"""

from __future__ import annotations

import json
from typing import Any

MAX_DEPTH = 64  # a monitor's deepest legitimate nesting (variables' Arguments) is far less
_SURROGATES = range(0xD800, 0xE000)


def loads(text: str | bytes, what: str = "is", max_depth: int = MAX_DEPTH) -> Any:
    """Parse JSON; ValueError(`{what} not valid JSON: …` or `… nested deeper than …`)."""
    try:
        value = json.loads(text)
    except RecursionError:
        raise ValueError(f"{what} nested deeper than {max_depth} levels") from None
    except (ValueError, UnicodeDecodeError) as exc:  # JSONDecodeError, or an over-long number
        raise ValueError(f"{what} not valid JSON: {exc}") from None
    if depth(value, max_depth) > max_depth:
        raise ValueError(f"{what} nested deeper than {max_depth} levels")
    return value


def depth(value: Any, stop_after: int = MAX_DEPTH) -> int:
    """How deeply lists and objects nest (a scalar is 0), counting no further than
    `stop_after + 1`."""
    deepest = 0
    pending: list[tuple[Any, int]] = [(value, 0)]
    while pending:
        item, level = pending.pop()
        if isinstance(item, dict | list):
            level += 1
            deepest = max(deepest, level)
            if deepest > stop_after:
                return deepest
            children = item.values() if isinstance(item, dict) else item
            pending.extend((child, level) for child in children)
    return deepest


def problem_in(text: str) -> str | None:
    """What makes this text unstorable, or None."""
    if "\x00" in text:
        return "must not contain NUL characters"
    if any(ord(ch) in _SURROGATES for ch in text):
        return "must not contain lone surrogates (not UTF-8 text)"
    return None


def unstorable(value: Any, root: str = "") -> tuple[str, str] | None:
    """(path, problem) of the first string, or object key, that no database stores as text:
    NUL characters, or lone surrogates (`"\\ud800"` parses, but is not UTF-8)."""
    pending: list[tuple[Any, str]] = [(value, root)]
    while pending:
        item, path = pending.pop()
        if isinstance(item, str):
            problem = problem_in(item)
            if problem:
                return path or "body", problem
        elif isinstance(item, dict):
            for key, child in reversed(item.items()):
                where = f"{path}.{key}" if path else str(key)
                problem = problem_in(key)
                if problem:
                    return ascii(key), f"field name {problem}"
                pending.append((child, where))
        elif isinstance(item, list):
            pending.extend((child, f"{path}[{i}]") for i, child in reversed(list(enumerate(item))))
    return None
