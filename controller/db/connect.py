"""Opening the database at start: an unreachable one is retried with backoff and said so in
one line (password masked), then given up on with a non-zero exit; a URL that can never work
is refused at once."""

from __future__ import annotations

import asyncio
import logging
import time

import sqlalchemy as sa
from sqlalchemy.engine import make_url

from controller.db.store import Store

log = logging.getLogger(__name__)


class DatabaseUnusable(Exception):
    """The controller cannot work with this database; the message says why, in one line."""


def masked(url: str) -> str:
    """The URL for logs: its password replaced by ***."""
    try:
        return make_url(url).render_as_string(hide_password=True)
    except (sa.exc.ArgumentError, ValueError):  # ValueError: a port that is not a number
        return "<unparsable database URL>"


def _reason(exc: BaseException) -> str:
    """The driver's own words, on one line (SQLAlchemy appends its SQL and a link)."""
    inner = getattr(exc, "orig", None) or exc
    text = str(inner).strip().splitlines()[0] if str(inner).strip() else type(inner).__name__
    return f"{type(inner).__name__}: {text}"


async def open_store(url: str, wait_seconds: float) -> Store:
    shown = masked(url)
    try:
        make_url(url)
    except (sa.exc.ArgumentError, ValueError) as exc:
        # SQLAlchemy's words never quote the URL (its password); a bad port is a ValueError
        raise DatabaseUnusable(f"the database URL {shown} is not valid: {exc}") from None
    deadline = time.monotonic() + wait_seconds
    delay = 0.5
    last = ""
    while True:
        try:
            return await Store.open(url)
        except (sa.exc.NoSuchModuleError, ModuleNotFoundError) as exc:
            raise DatabaseUnusable(f"no driver for {shown}: {_reason(exc)}") from None
        except Exception as exc:  # StoreError, OSError, or a driver's own (a missing database)
            reason = _reason(exc)
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            raise DatabaseUnusable(
                f"cannot reach the database at {shown}: {reason}; "
                f"gave up after {wait_seconds:g}s (PICKET_DATABASE_WAIT_SECONDS)"
            )
        if reason != last:
            log.warning(
                "controller: cannot reach the database at %s: %s; retrying with backoff for "
                "up to %.0fs more, then exiting",
                shown,
                reason,
                remaining,
            )
            last = reason
        await asyncio.sleep(min(delay, remaining))
        delay = min(delay * 2, 10.0)
