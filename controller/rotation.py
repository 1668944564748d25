"""Which selected checkpoint runs which slot of a monitor: rotation and concurrent modes.

Slot k of a monitor is at k*interval + offset (epoch seconds, `Schedule`). The assigner places
the monitor on one server per selected checkpoint (controller/assigner.py); this module says
what each of those servers does with the slots:

- **Rotation** (Uptrends' default): the selected checkpoints that have a live server, in
  checkpoint-id order, take the slots in turn. The i-th of n runs slot k when k mod n == i
  (`Turn`), so a 1-minute monitor on 5 checkpoints is checked once a minute and from each place
  every 5 minutes. A checkpoint with no live server gets no turn (and no assignment); the next
  live one takes its slots. The controller re-publishes the turns whenever liveness changes.
- **Concurrent** (`UseConcurrentMonitoring`): every selected checkpoint runs every slot
  (`Turn(0, 1)`); the controller gathers the slot's partial checks into one concurrent check
  (controller/concurrent.py).

Turns depend only on the set of live checkpoints and slot numbers on the epoch, so a restarted
controller computes the same turns, and a peer that takes over a server's monitors in the same
checkpoint takes over its turn without running a slot that server ran.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from controller.db.store import ServerRow


@dataclass(frozen=True)
class Turn:
    """This server runs slot k of the monitor when k mod count == position."""

    position: int = 0
    count: int = 1


EVERY_SLOT = Turn(0, 1)


def live(srv: ServerRow) -> bool:
    """Whether a server is online now (placement has already kept only those whose state lets
    them take checks: `ServerRow.can_take_checks`)."""
    return srv.online


def is_primary(srv: ServerRow) -> bool:
    """Whether the server's checkpoint is primary (`PATCH /Checkpoint/{id}`)."""
    return srv.is_primary_checkpoint


def concurrent(definition: Mapping[str, Any]) -> bool:
    return bool(definition.get("UseConcurrentMonitoring"))


def turns(
    chosen: Mapping[int, ServerRow],
    definition: Mapping[str, Any],
    is_live: Callable[[ServerRow], bool] = live,
) -> dict[str, Turn]:
    """Agent id -> its turn, from the server chosen in each selected checkpoint (checkpoint
    id -> server). Rotation: only checkpoints whose chosen server is live take turns; with
    none live every checkpoint keeps its turn, retained, waiting for its server to return."""
    if concurrent(definition):
        return {srv.agent_id: EVERY_SLOT for srv in chosen.values()}
    order = sorted(chosen)
    rotating = [cp for cp in order if is_live(chosen[cp])] or order
    return {
        chosen[cp].agent_id: Turn(position, len(rotating)) for position, cp in enumerate(rotating)
    }


def slot_number(slot_at: float, interval: float, offset: float) -> int:
    """k of the slot at `slot_at` (k*interval + offset), to the nearest slot."""
    return round((slot_at - offset) / interval)


def runs_slot(turn: Turn, k: int) -> bool:
    return k % turn.count == turn.position


def confirmer(
    failed_agent: str,
    placed: Mapping[str, Turn],
    servers: Mapping[str, ServerRow],
    is_live: Callable[[ServerRow], bool] = live,
) -> str:
    """Who re-checks an error seen by `failed_agent`: the next live server in the rotation
    after it whose checkpoint is another one; only if there is none, the same agent."""
    failed = servers.get(failed_agent)
    ordered = sorted(placed, key=lambda agent: placed[agent].position)
    if failed_agent in ordered:
        at = ordered.index(failed_agent)
        ordered = ordered[at + 1 :] + ordered[:at]
    for agent in ordered:
        srv = servers.get(agent)
        if srv is None or not is_live(srv):
            continue
        if failed is None or srv.checkpoint_id != failed.checkpoint_id:
            return agent
    return failed_agent
