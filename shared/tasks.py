"""Stopping background tasks: cancelled, and waited for within a bound.

A task's own clean-up may wait without a bound after a cancel (a library's goodbye to a peer
that never answers). A process stopping (or exiting
non-zero because it cannot do its job) must not hang on that, so a task still running after
`grace` seconds is cancelled again, and after three tries left behind with a warning.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Iterable
from typing import Any

log = logging.getLogger(__name__)

TRIES = 3


async def cancel_and_wait(tasks: Iterable[asyncio.Task[Any]], grace: float = 5.0) -> None:
    """Cancel `tasks` and wait until they end (at most TRIES x `grace` seconds). Their
    outcomes are retrieved: a task that died has been reported by its owner."""
    every = list(tasks)
    pending = {task for task in every if not task.done()}
    for _ in range(TRIES):
        if not pending:
            break
        for task in pending:
            task.cancel()
        _, pending = await asyncio.wait(pending, timeout=grace)
    for task in pending:
        log.warning("task %s did not end when cancelled; left behind", task.get_name())
    for task in every:
        if task.done() and not task.cancelled():
            task.exception()
