"""Users' regular expressions, run by RE2 in time linear in the text: the only module that
imports `re2` (google-re2).

A pattern from outside (an error condition's `ContentMatch` regex, a multi-step function's
`Regex`) is checked once at the API with `check`, which names the construct RE2 refuses
(look-around, back-references, ...) so the answer is a 400 that says what to change: the
monitor models call `validate` with the validation context the API passes (FROM_OUTSIDE).
Checks match with `search`. There is no fallback to Python's backtracking `re`: a pattern RE2
cannot run never runs. One stored before this check existed still loads (the controller
assigns it, the agent accepts it) and fails its checks with `RegexError`'s message, so the
monitor says what to change instead of going quiet. See docs/api.md, "Regular expressions".

Compatibility with Python's `re` for ordinary patterns: the same syntax for classes, groups,
named groups `(?P<name>...)`, repetition, anchors and the inline flags `(?i)`, `(?m)`, `(?s)`;
`\\Z` is taken as RE2's `\\z` (the end of the text). Differences: `\\d`, `\\w`, `\\s` and `\\b`
are ASCII-only, and `$` without `(?m)` matches only at the very end (not before a final
newline).
"""

from __future__ import annotations

import functools
import re
import warnings
from typing import Any, Protocol

import re2

MAX_PATTERN_CHARS = 4096
PATTERN_CACHE_SIZE = 512  # compiled patterns per process; an agent matches the same few often
_MEMORY_BYTES = 8 << 20  # RE2's default per-pattern budget: a bigger program is refused


class Match(Protocol):
    def group(self, index: int = 0, /) -> str | None: ...
    def groups(self) -> tuple[str | None, ...]: ...


class RegexError(ValueError):
    """A pattern RE2 will not run; the message names the reason or the construct."""


def _options() -> Any:
    options = re2.Options()
    options.log_errors = False  # else RE2 writes every refused pattern to stderr
    options.max_mem = _MEMORY_BYTES
    return options


_OPTIONS = _options()


def _construct(pattern: str) -> str | None:
    """The construct of `pattern` that RE2 does not support, by Python's parser (which is
    linear: it parses, never matches), or None when Python's parser finds none."""
    from re import _constants as c  # type: ignore[attr-defined]
    from re import _parser  # type: ignore[attr-defined]

    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # e.g. FutureWarning "possible nested set"
            tree = _parser.parse(pattern)
    except (re.error, OverflowError, RecursionError):
        return None
    names = {
        (c.ASSERT, 1): "look-ahead (?=...)",
        (c.ASSERT, -1): "look-behind (?<=...)",
        (c.ASSERT_NOT, 1): "negative look-ahead (?!...)",
        (c.ASSERT_NOT, -1): "negative look-behind (?<!...)",
    }
    stack: list[Any] = [tree]
    while stack:
        node = stack.pop()
        for op, av in node:
            if op in (c.ASSERT, c.ASSERT_NOT):
                return names[(op, av[0])]
            if op == c.GROUPREF:
                return "back-reference (\\1 or (?P=name))"
            if op == c.GROUPREF_EXISTS:
                return "conditional group (?(1)...)"
            if op == getattr(c, "ATOMIC_GROUP", None):
                return "atomic group (?>...)"
            if op == getattr(c, "POSSESSIVE_REPEAT", None):
                return "possessive repetition (*+, ++, ?+)"
            stack.extend(_children(av))
    if tree.state.flags & re.VERBOSE:
        return "verbose flag (?x)"
    return None


def _children(av: Any) -> list[Any]:
    """The sub-patterns among an opcode's arguments."""
    from re import _parser  # type: ignore[attr-defined]

    found = []
    items = av if isinstance(av, tuple | list) else (av,)
    for item in items:
        if isinstance(item, _parser.SubPattern):
            found.append(item)
        elif isinstance(item, tuple | list):
            found.extend(_children(item))
    return found


def _translate(pattern: str) -> str:
    r"""Python's `\Z` (the end of the text) is RE2's `\z`; every other escape stays."""
    if "\\Z" not in pattern:
        return pattern
    out = []
    index = 0
    while index < len(pattern):
        char = pattern[index]
        if char == "\\" and index + 1 < len(pattern):
            pair = pattern[index : index + 2]
            out.append("\\z" if pair == "\\Z" else pair)
            index += 2
        else:
            out.append(char)
            index += 1
    return "".join(out)


@functools.lru_cache(maxsize=PATTERN_CACHE_SIZE)
def compile(pattern: str) -> Any:
    """The compiled pattern, or RegexError naming what RE2 refuses."""
    if len(pattern) > MAX_PATTERN_CHARS:
        raise RegexError(f"longer than {MAX_PATTERN_CHARS} characters")
    try:
        return re2.compile(_translate(pattern), _OPTIONS)
    except re2.error as exc:
        construct = _construct(pattern)
        if construct is not None:
            raise RegexError(
                f"{construct} is not supported: patterns run with RE2, in time linear in the "
                "text, which has no look-around or back-references"
            ) from None
        reason = exc.args[0] if exc.args else exc
        if isinstance(reason, bytes):
            reason = reason.decode("utf-8", "replace")
        raise RegexError(f"not a valid pattern for RE2: {reason}") from None


def check(pattern: str) -> None:
    """Raise RegexError if the pattern cannot be run."""
    compile(pattern)


# pydantic's validation context for input from outside (the API): patterns checked in full
FROM_OUTSIDE: dict[str, bool] = {"from_outside": True}


def validate(pattern: str, context: Any) -> None:
    """A monitor model's check of a pattern: in full (RE2 runs it) for input from outside;
    for a definition already stored, only that it parses, as it always had to."""
    if isinstance(context, dict) and context.get("from_outside"):
        check(pattern)
        return
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            re.compile(pattern)
    except (re.error, OverflowError, RecursionError) as exc:
        raise RegexError(f"not a valid pattern: {exc}") from None


def search(pattern: str, text: str) -> Match | None:
    """The first match of `pattern` in `text` (`.group(n)`, `.groups()`), or None; in time
    linear in the text. RegexError if the pattern cannot be run."""
    found: Match | None = compile(pattern).search(text)
    return found
