"""SIGINT/SIGTERM for every Picket process: the first asks for a clean stop; a second one,
should the clean stop hang, ends the process at once."""

from __future__ import annotations

import asyncio
import logging
import os
import signal
import sys

log = logging.getLogger(__name__)


def stop_event() -> asyncio.Event:
    """An event set by the first SIGINT or SIGTERM; the next signal exits immediately."""
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()

    def on_signal(number: int) -> None:
        if stop.is_set():
            sys.stderr.write(f"picket: {signal.Signals(number).name} again, exiting now\n")
            os._exit(128 + number)
        log.info("%s received: stopping", signal.Signals(number).name)
        stop.set()

    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, on_signal, sig)
    return stop
