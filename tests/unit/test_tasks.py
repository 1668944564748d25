"""Stopping background tasks within a bound (shared.tasks)."""

from __future__ import annotations

import asyncio

from shared.tasks import cancel_and_wait


async def test_a_task_whose_clean_up_waits_forever_is_cancelled_again() -> None:
    """Like aiomqtt's client cancelled early in a session: its clean-up waits, unbounded,
    for the broker's goodbye. Stopping must end it (a controller hung here, not exiting)."""
    cleaning = asyncio.Event()

    async def stubborn() -> None:
        try:
            await asyncio.sleep(3600)
        finally:
            cleaning.set()
            await asyncio.Event().wait()  # never set

    async def dies() -> None:
        raise RuntimeError("reported by its owner")

    tasks = [asyncio.create_task(stubborn()), asyncio.create_task(dies())]
    await asyncio.sleep(0)
    await asyncio.wait_for(cancel_and_wait(tasks, grace=0.2), 30)
    assert cleaning.is_set() and all(task.done() for task in tasks)
