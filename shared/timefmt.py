"""Timestamps: ISO 8601 in UTC with milliseconds and Z, as Picket's API writes them."""

from __future__ import annotations

from datetime import UTC, datetime


def iso(epoch_seconds: float) -> str:
    """Epoch seconds as `2026-11-23T10:00:00.123Z`."""
    moment = datetime.fromtimestamp(epoch_seconds, UTC).replace(tzinfo=None)
    # not strftime: glibc writes the year 1 as "1", not "0001"
    return moment.isoformat(timespec="milliseconds") + "Z"


def parse(text: str) -> float:
    """Parse an ISO 8601 time (with or without fraction or offset; no offset means UTC).

    Raises ValueError with a readable message on bad input.
    """
    value = text.strip()
    if value.endswith(("Z", "z")):
        value = value[:-1] + "+00:00"
    try:
        moment = datetime.fromisoformat(value)
    except ValueError:
        raise ValueError(f"{text!r} is not an ISO 8601 date-time") from None
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=UTC)
    try:
        return moment.timestamp()
    except (OverflowError, ValueError):
        raise ValueError(f"{text!r} is out of range") from None
