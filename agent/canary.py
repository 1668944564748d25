"""The agent's connectivity canary: an address the agent must always reach (a TCP connect).

When a check fails, the canary is tried (within `PICKET_CANARY_TIMEOUT_SECONDS`); if it fails
too, the failure says nothing about the target, only that this checkpoint could not reach the
network: the result becomes inconclusive (error 4), which the controller stores as NoError
and never alerts on. An answer is reused for `FRESH_SECONDS`, and one attempt runs at a time
per worker however many checks fail together, so a network outage costs one connect, not one
per failed check.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time

from agent.probes.base import Outcome
from shared.errors import DESCRIPTIONS, ErrorCode
from shared.settings import split_host_port

log = logging.getLogger(__name__)

FRESH_SECONDS = 5.0  # an answer of the canary is reused this long


def parse_canary(value: str) -> tuple[str, int] | None:
    """`host:port` (`[v6]:port`); empty: no canary. The port is required."""
    if not value.strip():
        return None
    host, port = split_host_port(value, 0)
    if not host:
        raise ValueError("needs a host: host:port or [v6]:port")
    return host, port


class Canary:
    def __init__(self, target: str, timeout: float, name: str) -> None:
        parsed = parse_canary(target)
        if parsed is None:
            raise ValueError("no canary given")
        self.host, self.port = parsed
        self.target = target.strip()
        self.timeout = timeout
        self.name = name  # "agent-id/worker-n", for the logs
        self._lock = asyncio.Lock()
        self._answered = -FRESH_SECONDS * 2  # monotonic time of the last answer
        self._reachable = True
        self._why = ""

    async def reachable(self) -> tuple[bool, str]:
        """Whether the canary answers (a recent answer, or a new attempt), and if not, why."""
        async with self._lock:
            if time.monotonic() - self._answered < FRESH_SECONDS:
                return self._reachable, self._why
            ok, why = await self._connect()
            if ok != self._reachable:
                if ok:
                    log.warning("%s: connectivity canary %s answers again", self.name, self.target)
                else:
                    log.warning(
                        "%s: connectivity canary %s does not answer (%s): failed checks are "
                        "inconclusive until it does",
                        self.name,
                        self.target,
                        why,
                    )
            self._reachable, self._why, self._answered = ok, why, time.monotonic()
            return ok, why

    async def _connect(self) -> tuple[bool, str]:
        try:
            async with asyncio.timeout(self.timeout):
                _reader, writer = await asyncio.open_connection(self.host, self.port)
        except TimeoutError:
            return False, f"no connection within {self.timeout:g} s"
        except OSError as exc:
            return False, exc.strerror or type(exc).__name__
        writer.close()
        with contextlib.suppress(OSError):
            await writer.wait_closed()
        return True, ""


def make_inconclusive(outcome: Outcome, canary: str, why: str) -> None:
    """Turn a failed check's outcome into an inconclusive one, keeping what it saw."""
    outcome.attributes["InconclusiveErrorCode"] = int(outcome.error_code)
    seen = outcome.description
    outcome.error_code = ErrorCode.INCONCLUSIVE
    outcome.description_override = (
        f"{DESCRIPTIONS[ErrorCode.INCONCLUSIVE]}: the check failed ({seen}) and the "
        f"connectivity canary {canary} did not answer either ({why})"
    )
