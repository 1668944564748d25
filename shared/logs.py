from __future__ import annotations

import logging
import sys


def setup(level: str, process: str) -> None:
    logging.basicConfig(
        level=level.upper(),
        stream=sys.stderr,
        format=f"%(asctime)s %(levelname)s {process} %(name)s: %(message)s",
    )
    # aiosqlite and amqtt are chatty at INFO/DEBUG
    for noisy in ("aiosqlite", "amqtt", "transitions", "alembic.runtime.migration"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
