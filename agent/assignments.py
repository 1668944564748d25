"""The agent's last known assignments, kept on disk so that an agent started while the broker
is away goes on checking; the retained assignments and `sync` reconcile them once it is back.

The file holds monitor definitions with their secrets (as the retained assignments do), so it
is written with mode 0600. It is read like an MQTT message: nothing in it is trusted unchecked.
"""

from __future__ import annotations

import logging
import threading
import time
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, ValidationError

from agent.files import write_atomically
from shared.messages import Assignment

log = logging.getLogger(__name__)


class _SavedFile(BaseModel):
    model_config = ConfigDict(extra="ignore")
    v: Literal[1]
    agent: str
    saved_at: float
    assignments: list[dict[str, Any]]  # each validated on its own: one bad one spoils nothing


class SavedAssignments:
    def __init__(self, directory: Path, agent_id: str) -> None:
        self.path = directory / f"{agent_id}.json"
        self._agent = agent_id
        self._lock = threading.Lock()  # one writer at a time (a thread's, then the stop's)

    def load(self) -> tuple[list[Assignment], int]:
        """The assignments saved last, and how many entries were refused. A file that cannot
        be read or parsed is logged and ignored (nothing runs until the broker says)."""
        try:
            data = self.path.read_bytes()
        except FileNotFoundError:
            return [], 0
        except OSError as exc:
            log.error(
                "agent %s: saved assignments %s unreadable, ignored: %s",
                self._agent,
                self.path,
                exc,
            )
            return [], 0
        try:
            saved = _SavedFile.model_validate_json(data)
            if saved.agent != self._agent:
                raise ValueError(f"written for agent {saved.agent!r}")
        except ValueError as exc:  # pydantic's ValidationError is one
            log.error(
                "agent %s: saved assignments %s are corrupt, ignored: %s",
                self._agent,
                self.path,
                str(exc).splitlines()[0],
            )
            return [], 0
        good: list[Assignment] = []
        refused = 0
        for entry in saved.assignments:
            try:
                assignment = Assignment.model_validate(entry)
                if not assignment.monitor_guid or any(c in assignment.monitor_guid for c in "/+#"):
                    raise ValueError("monitor_guid is not a topic level")
            except (ValidationError, ValueError) as exc:
                refused += 1
                log.error(
                    "agent %s: a saved assignment in %s is invalid, ignored: %s",
                    self._agent,
                    self.path,
                    str(exc).splitlines()[0],
                )
                continue
            good.append(assignment)
        age = time.time() - saved.saved_at
        log.info(
            "agent %s: %d assignments saved %.0fs ago; running them until the controller says "
            "otherwise",
            self._agent,
            len(good),
            age,
        )
        return good, refused

    def save(self, payloads: list[bytes]) -> None:
        """Replace the file with these assignments (each an Assignment's JSON): temp file,
        fsync, rename, directory fsync; mode 0600 (they carry monitor secrets)."""
        with self._lock:
            self._write(payloads)

    def _write(self, payloads: list[bytes]) -> None:
        self.path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
        head = f'{{"v":1,"agent":"{self._agent}","saved_at":{time.time():.3f},"assignments":['
        data = b"".join((head.encode(), b",".join(payloads), b"]}"))
        write_atomically(self.path, data, mode=0o600)
