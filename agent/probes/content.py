"""A response body's text for `ContentMatch` conditions: the whole body, not only what is kept.

libcurl hands the body over in pieces (decoded from its Content-Encoding). The first
`max_body_bytes` are kept in memory (the stored excerpt, and what regular expressions see);
past them, each piece goes through `Body.scanner`, which decodes it with the page's charset and
looks for the plain-text conditions' texts, keeping only the last `len(text) - 1` characters
between pieces, so a text split across two pieces is found. Nothing past `SCAN_LIMIT_BYTES`
(decoded) is looked at, and a regular expression cannot be run on a stream: a condition that
the bytes looked at cannot decide is reported as undecided (error 211), never as passed.
"""

from __future__ import annotations

import codecs
import re
from collections.abc import Callable
from email.message import Message

from shared.monitors import ErrorCondition

SCAN_LIMIT_BYTES = 64 << 20  # decoded bytes scanned for plain texts (a decompression bomb stops)
PRESCAN_BYTES = 1024  # where a browser looks for a <meta charset> (HTML's encoding sniffing)
DEFAULT_CHARSET = "utf-8"
_META = re.compile(
    rb"""<meta[^>]+?charset\s*=\s*["']?\s*([A-Za-z0-9._:-]+)""", re.IGNORECASE | re.DOTALL
)
_BOMS = (
    (codecs.BOM_UTF8, "utf-8"),
    (codecs.BOM_UTF16_LE, "utf-16"),
    (codecs.BOM_UTF16_BE, "utf-16"),
)


def _known(name: str) -> str | None:
    try:
        return codecs.lookup(name.strip().strip("\"'")).name
    except (LookupError, ValueError):
        return None


def charset(headers: list[tuple[str, str]], head: bytes) -> str:
    """The body's charset: a byte-order mark, the Content-Type's `charset`, or for HTML a
    `<meta charset>` / `<meta http-equiv=Content-Type>` in the first 1024 bytes; else UTF-8."""
    for bom, name in _BOMS:
        if head.startswith(bom):
            return name
    content_type = ""
    for name, value in headers:
        if name.lower() == "content-type":
            content_type = value
    if content_type:
        message = Message()
        message["Content-Type"] = content_type
        declared = message.get_param("charset")
        if isinstance(declared, str) and (known := _known(declared)):
            return known
    if not content_type or "html" in content_type.lower():
        meta = _META.search(head[:PRESCAN_BYTES])
        if meta and (known := _known(meta.group(1).decode("ascii", "replace"))):
            return known
    return DEFAULT_CHARSET


def _is_regex(cond: ErrorCondition) -> bool:
    return (cond.MatchType or "").endswith("Regex")


class Body:
    """One response's body as text for content conditions (make one per transfer)."""

    def __init__(self, conditions: list[ErrorCondition]) -> None:
        self.texts = sorted(
            {
                c.Value
                for c in conditions
                if c.ErrorConditionType == "ContentMatch" and not _is_regex(c)
            }
        )
        self._overlap = max((len(t) for t in self.texts), default=1) - 1
        self._found: set[str] = set()
        self._decoder: codecs.IncrementalDecoder | None = None
        self._tail = ""
        self.scanned = 0  # decoded bytes past the kept ones that were looked at
        self.overflowed = False  # the body went past the kept bytes
        self.cut = False  # ... and past SCAN_LIMIT_BYTES: the rest was not looked at
        self.charset = DEFAULT_CHARSET
        self.text = ""
        self.kept_bytes = 0
        self.body_bytes = 0

    def scanner(self, headers: list[tuple[str, str]], kept: bytes) -> Callable[[bytes], None]:
        """curl.BodyScan: called when the body first goes past the kept bytes."""
        self.overflowed = True
        decoder = codecs.getincrementaldecoder(charset(headers, kept))(errors="replace")
        self._decoder = decoder
        if self.texts:
            text = decoder.decode(kept)
            self._found.update(t for t in self.texts if t in text)  # no need to look further
            self._tail = text[-self._overlap :] if self._overlap else ""
        return self._feed

    def _feed(self, piece: bytes) -> None:
        if self.cut or self._decoder is None:
            return
        if self.scanned + len(piece) > SCAN_LIMIT_BYTES:
            self.cut = True
            piece = piece[: SCAN_LIMIT_BYTES - self.scanned]
        self.scanned += len(piece)
        pending = [t for t in self.texts if t not in self._found]
        if not pending:
            return
        text = self._tail + self._decoder.decode(piece)
        for wanted in pending:
            if wanted in text:
                self._found.add(wanted)
        self._tail = text[-self._overlap :] if self._overlap else ""

    def finish(self, headers: list[tuple[str, str]], kept: bytes, body_bytes: int) -> str:
        """The kept bytes' text, in the page's charset (what is matched and stored)."""
        self.charset = charset(headers, kept)
        self.kept_bytes = len(kept)
        self.body_bytes = body_bytes
        self.text = kept.decode(self.charset, errors="replace")
        return self.text

    def contains(self, cond: ErrorCondition, search: Callable[[str, str], bool]) -> bool | None:
        """Whether the body holds the condition's text or pattern (`search(pattern, text)` for
        a regular expression); None when the bytes looked at cannot tell."""
        if _is_regex(cond):
            if search(cond.Value, self.text):
                return True
            return None if self.overflowed else False
        if cond.Value in self.text or cond.Value in self._found:
            return True
        return None if self.cut else False

    def undecided(self, cond: ErrorCondition) -> str:
        """Why `contains` could not tell, for the error message."""
        body_bytes = self.body_bytes
        if _is_regex(cond):
            return (
                f'ContentMatch "{cond.Value}" cannot be decided: regular expressions are matched '
                f"on the first {self.kept_bytes} bytes of the body (PICKET_MAX_BODY_BYTES), "
                f"and it has {body_bytes}"
            )
        looked = self.kept_bytes + self.scanned
        return (
            f'ContentMatch "{cond.Value}" cannot be decided: the body has {body_bytes} bytes, '
            f"more than the {looked} looked at"
        )
