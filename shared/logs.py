from __future__ import annotations

import logging
import sys
import time
from collections.abc import Callable


def setup(level: str, process: str) -> None:
    logging.basicConfig(
        level=level.upper(),
        stream=sys.stderr,
        format=f"%(asctime)s %(levelname)s {process} %(name)s: %(message)s",
    )
    # aiosqlite and amqtt are chatty at INFO/DEBUG
    for noisy in ("aiosqlite", "amqtt", "transitions", "alembic.runtime.migration"):
        logging.getLogger(noisy).setLevel(logging.WARNING)


LOG_EVERY_SECONDS = 10.0
MAX_LOGGED_KEYS = 10_000  # the rate-limit table's bound (agents x reasons)


class LogLimit:
    """At most one log line per key every LOG_EVERY_SECONDS, so that a misbehaving or hostile
    agent cannot flood the log (the metrics count every message). The table holds at most
    MAX_LOGGED_KEYS keys: when full it is emptied, at worst one more line per key."""

    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self._clock = clock
        self._logged: dict[tuple[str, str], tuple[float, int]] = {}

    def __len__(self) -> int:
        return len(self._logged)

    def allow(self, key: tuple[str, str]) -> int | None:
        """None: leave this line out; otherwise log it, with the number left out before it."""
        now = self._clock()
        entry = self._logged.get(key)
        if entry is not None and now - entry[0] < LOG_EVERY_SECONDS:
            self._logged[key] = (entry[0], entry[1] + 1)
            return None
        if entry is None and len(self._logged) >= MAX_LOGGED_KEYS:
            self._logged.clear()
        self._logged[key] = (now, 0)
        return 0 if entry is None else entry[1]
