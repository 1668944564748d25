"""Places monitors on agents and keeps the broker's retained assignments equal to that placement.

One live server per selected checkpoint, chosen by rendezvous (highest-random-weight) hashing
weighted by capacity: when a server leaves only its monitors move, and when it returns little
else moves. Which slots each of them runs (rotation or concurrent) is controller/rotation.py's.
Desired state is published as retained messages; what was published (revision and turn) is
recorded in the database so a restarted controller removes what it no longer wants and does
not publish again what the broker already holds.

Placement is incremental, so that an event costs work in proportion to the monitors it can
move, not to all of them (100,000 monitors on a few agents must not be re-placed per hello):

- What was published is indexed both ways (`Published`: per monitor and per agent).
- While placing a monitor, the servers whose *liveness* its placement depends on are
  recorded (`_placement`): at each selected checkpoint, the candidates ranked (by rendezvous
  score) at or above the best live one (all of them when none is live). A server ranked below
  the best live one cannot change the choice by coming or going, and in rotation the turns
  depend only on the chosen servers' liveness, which are in that set. `_watchers[agent]` is the
  reverse: the monitors to place again when that agent goes offline or comes back.
- A presence change re-places only its watchers (and what is published to the agent); a hello
  that changes nothing but presence does the same, and a plain hello re-sends only that agent's
  own assignments, then its Sync.
- Events that change who is a *candidate* (a new server; a hello with another checkpoint,
  capacity or probe types; approve, retire, activation; a checkpoint becoming primary or not)
  re-place the monitors that could select that server's checkpoint (an index by selected
  checkpoint and region). That computes their placement but publishes only what changed; these
  events are rare, and a new server in a checkpoint that 100,000 monitors select must be
  offered to all of them anyway.
- A full pass remains on (re)connecting to the broker, whose retained state may have changed
  while away. Publishes that failed are retried by `reconcile_forever` (only those monitors).
- Publishes are pipelined (at most PUBLISH_WINDOW in flight; a pass touches each (monitor,
  agent) once and passes are serialised by `_lock`, so their order per (monitor, agent) is
  kept). Database writes of assignment changes go in batches of STORE_BATCH, in one
  transaction each (`Store.set_assignments`), while the publishes go on.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import functools
import hashlib
import itertools
import logging
import math
import time
from collections.abc import Awaitable, Callable, Iterable, Iterator, Mapping, MutableMapping
from typing import Any

from controller import rotation
from controller.bus import ControllerBus
from controller.db.store import (
    AssignmentChange,
    MonitorRow,
    ServerRow,
    Store,
    StoreUnavailable,
    now_us,
)
from controller.metrics import ControllerMetrics
from controller.trust import Acceptance, AssignmentHistory
from shared import monitors
from shared.messages import Assignment, Hello, Schedule, Sync

log = logging.getLogger(__name__)


def _unit_hash(*parts: str) -> float:
    """A stable number in (0, 1) from the parts."""
    digest = hashlib.sha256("\x00".join(parts).encode()).digest()
    return (int.from_bytes(digest[:8], "big") + 1) / (2**64 + 2)


def _score(monitor_guid: str, srv: ServerRow) -> tuple[float, int]:
    """A server's weighted rendezvous rank for a monitor: score = -capacity / ln(h)."""
    return (-max(1, srv.capacity) / math.log(_unit_hash(monitor_guid, srv.agent_id)), srv.id)


def rendezvous(monitor_guid: str, candidates: list[ServerRow]) -> ServerRow:
    """Weighted highest-random-weight choice."""
    return max(candidates, key=lambda s: _score(monitor_guid, s))


def _selection(definition: Mapping[str, Any]) -> tuple[frozenset[int], frozenset[int]]:
    """The checkpoint ids and region ids a monitor selects (both empty: all)."""
    selected = definition.get("SelectedCheckpoints") or {}
    return frozenset(selected.get("Checkpoints") or []), frozenset(selected.get("Regions") or [])


def _candidacy(srv: ServerRow) -> tuple[object, ...]:
    """What decides whether, and how strongly, a server is a candidate (its liveness aside)."""
    return (
        srv.checkpoint_id,
        srv.region_id,
        srv.capacity,
        tuple(srv.probe_types),
        srv.state,
        srv.activate_after_us,
        srv.is_primary_checkpoint,
    )


PHASE_STEP_MS = 10
# how long a hello waits for the rest of its burst before placing (controller/bus.py)
HELLO_SETTLE_SECONDS = 0.3


def phase_offset(monitor_guid: str, interval_seconds: int) -> float:
    """Where in its interval a monitor runs, spread evenly by its id, in PHASE_STEP_MS steps:
    monitors that share a step start together, so an agent wakes once for all of them (on
    these VMs a wake-up per check costs more CPU than the check itself)."""
    slots = max(1, interval_seconds * 1000 // PHASE_STEP_MS)
    return (int(_unit_hash(monitor_guid, "phase") * slots) % slots) * PHASE_STEP_MS / 1000.0


PUBLISH_WINDOW = 32  # assignment publishes in flight at once (see _place)
STORE_BATCH = 500  # assignment changes per database transaction
YIELD_EVERY = 1000  # monitors placed between yields to the event loop
LOG_EACH = 20  # a pass that changes more is logged as counts per agent (each at DEBUG)


class Published(MutableMapping[tuple[str, str], str]):
    """(monitor guid, agent id) -> revision published, indexed by monitor and by agent."""

    def __init__(self, items: Mapping[tuple[str, str], str] | None = None) -> None:
        self._by_monitor: dict[str, dict[str, str]] = {}
        self._by_agent: dict[str, set[str]] = {}
        self._count = 0
        for key, revision in (items or {}).items():
            self[key] = revision

    def __getitem__(self, key: tuple[str, str]) -> str:
        guid, agent = key
        return self._by_monitor[guid][agent]

    def __setitem__(self, key: tuple[str, str], revision: str) -> None:
        guid, agent = key
        agents = self._by_monitor.setdefault(guid, {})
        if agent not in agents:
            self._count += 1
            self._by_agent.setdefault(agent, set()).add(guid)
        agents[agent] = revision

    def __delitem__(self, key: tuple[str, str]) -> None:
        guid, agent = key
        agents = self._by_monitor[guid]
        del agents[agent]
        if not agents:
            del self._by_monitor[guid]
        guids = self._by_agent[agent]
        guids.discard(guid)
        if not guids:
            del self._by_agent[agent]
        self._count -= 1

    def __iter__(self) -> Iterator[tuple[str, str]]:
        for guid, agents in list(self._by_monitor.items()):
            for agent in list(agents):
                yield guid, agent

    def __len__(self) -> int:
        return self._count

    def agents_of(self, guid: str) -> dict[str, str]:
        """Agent id -> revision, of one monitor (a copy)."""
        return dict(self._by_monitor.get(guid, {}))

    def monitors_of(self, agent: str) -> set[str]:
        """The monitors published to one agent (a copy)."""
        return set(self._by_agent.get(agent, ()))

    def of_agent(self, agent: str) -> dict[str, str]:
        """Monitor guid -> revision, of one agent."""
        return {guid: self._by_monitor[guid][agent] for guid in self._by_agent.get(agent, ())}

    def count_of(self, agent: str) -> int:
        return len(self._by_agent.get(agent, ()))

    def agents(self) -> list[str]:
        return list(self._by_agent)

    def monitors(self) -> set[str]:
        return set(self._by_monitor)


@dataclasses.dataclass
class _PassLog:
    """What one pass changed, logged one line per change when few, else counted per agent."""

    lines: list[tuple[str, tuple[object, ...]]] = dataclasses.field(default_factory=list)
    assigned: dict[str, int] = dataclasses.field(default_factory=dict)
    removed: dict[str, int] = dataclasses.field(default_factory=dict)

    def add(self, counts: dict[str, int], agent: str, line: str, *args: object) -> None:
        counts[agent] = counts.get(agent, 0) + 1
        if len(self.lines) <= LOG_EACH:
            self.lines.append((line, args))
        log.debug(line, *args)

    def emit(self) -> None:
        if len(self.lines) <= LOG_EACH:
            for line, args in self.lines:
                log.info(line, *args)
            return
        for agent in sorted(set(self.assigned) | set(self.removed)):
            log.info(
                "agent %s: %d monitors assigned (or given another turn), %d removed",
                agent,
                self.assigned.get(agent, 0),
                self.removed.get(agent, 0),
            )


# a pending database write: (revision or None for removed, when, turn)
_Write = tuple[str | None, int, rotation.Turn | None]


def _merge_write(pending: list[_Write], write: _Write) -> None:
    """Append a write of one (monitor, agent) to those not yet stored, keeping at most two:
    an assignment after an assignment keeps the first time (the interval is open already);
    a removal followed by an assignment bridges the gap (the stored history is widened, never
    narrowed: results in the gap are accepted). So a database outage cannot grow this list."""
    if pending and (pending[-1][0] is None) == (write[0] is None):
        if write[0] is not None:
            pending[-1] = (write[0], pending[-1][1], write[2])
        return
    if pending and write[0] is not None:
        pending.pop()  # the removal: bridged
        if pending:
            pending[-1] = (write[0], pending[-1][1], write[2])
            return
    pending.append(write)


class Assigner:
    def __init__(
        self,
        store: Store,
        bus: ControllerBus,
        metrics: ControllerMetrics,
        activation_seconds: float = 0.0,
        require_approval: bool = False,
    ) -> None:
        self.store = store
        self.bus = bus
        self.metrics = metrics
        # a server new to the controller is upcoming for this long (listed, no checks), or,
        # with require_approval, pending (not listed, no checks) until an operator approves it
        self.activation_seconds = activation_seconds
        self.require_approval = require_approval
        self._fleet_changed = asyncio.Event()  # wakes activate_forever
        self.servers: dict[str, ServerRow] = {}
        self.monitors: dict[str, MonitorRow] = {}
        self._published = Published()
        # the turn last published per (monitor, agent), stored with it; unknown (absent) for
        # rows stored before turns were, so those are published once more
        self._turns: dict[tuple[str, str], rotation.Turn] = {}
        # whose liveness each monitor's placement depends on, and the reverse
        self._depends: dict[str, frozenset[str]] = {}
        self._watchers: dict[str, set[str]] = {}
        # the monitors selecting all checkpoints, or a checkpoint id, or a region id
        self._select_all: set[str] = set()
        self._select_checkpoint: dict[int, set[str]] = {}
        self._select_region: dict[int, set[str]] = {}
        self._selection: dict[str, tuple[frozenset[int], frozenset[int]]] = {}
        self._intervals: dict[str, tuple[str, int]] = {}  # guid -> (revision, interval)
        # monitors whose publish failed (retried by reconcile_forever), and database writes
        # not yet made (at most two per (monitor, agent), see _merge_write)
        self._retry: set[str] = set()
        self._unstored: dict[tuple[str, str], list[_Write]] = {}
        # the dependencies are unknown until a full pass (after load): events do one first
        self._full_pass_needed = True
        self._lock = asyncio.Lock()
        self._presence: dict[str, bool] = {}  # from the agents' state topics
        self.history = AssignmentHistory()
        self.acceptance = Acceptance(self.history, bus.requested_runs, self, metrics)
        self.monitor_deleted = asyncio.Event()  # wakes the retention task to purge its checks
        self.deleted: set[str] = set()  # monitors deleted since the last retention pass
        # told the agent id of a server just retired (the clock tracker forgets it)
        self.on_retired: Callable[[str], None] | None = None
        metrics.placement_retry.set_function(lambda: float(len(self._retry)))
        metrics.placement_unstored.set_function(
            lambda: float(sum(len(w) for w in self._unstored.values()))
        )

    async def load(self) -> None:
        self.servers = {s.agent_id: s for s in await self.store.servers()}
        self.monitors = {m.guid: m for m in await self.store.monitors()}
        rows = await self.store.assignment_rows()
        self._published = Published({(g, a): rev for g, a, rev, _turn in rows})
        self._turns = {
            (g, a): rotation.Turn(*turn) for g, a, _rev, turn in rows if turn is not None
        }
        self._select_all.clear()
        self._select_checkpoint.clear()
        self._select_region.clear()
        self._selection.clear()
        for monitor in self.monitors.values():
            self._index_selection(monitor)
        self._depends.clear()
        self._watchers.clear()
        self._full_pass_needed = True
        self.history.load(await self.store.assignment_history())
        self._update_online_metric()
        self.metrics.watch_fleet(self._fleet_figures)

    def _fleet_figures(self) -> tuple[dict[tuple[str, str], int], dict[str, int]]:
        """Servers by (checkpoint, shown state) and assignments by agent, for the metrics."""
        now = now_us()
        by_state: dict[tuple[str, str], int] = {}
        for srv in self.servers.values():
            key = (srv.checkpoint_name, srv.shown_state(now))
            by_state[key] = by_state.get(key, 0) + 1
        # a retired server with nothing left assigned leaves the per-agent series
        retired = {a for a, srv in self.servers.items() if srv.state == "retired"}
        per_agent = {
            agent: count
            for agent, count in self.assigned_per_agent().items()
            if count or agent not in retired
        }
        return by_state, per_agent

    def assigned_per_agent(self) -> dict[str, int]:
        """How many monitors are assigned (published) to each known agent."""
        per_agent = dict.fromkeys(self.servers, 0)
        for agent in self._published.agents():
            per_agent[agent] = self._published.count_of(agent)
        return per_agent

    def server(self, agent_id: str) -> ServerRow | None:
        return self.servers.get(agent_id)

    def server_by_id(self, server_id: int | None) -> ServerRow | None:
        return next((s for s in self.servers.values() if s.id == server_id), None)

    def _update_online_metric(self) -> None:
        self.metrics.agents_online.set(sum(1 for s in self.servers.values() if s.online))

    # --- placement ----------------------------------------------------------------------------

    def turns(self, monitor: MonitorRow) -> dict[str, rotation.Turn]:
        """Agent id -> which of the monitor's slots it runs (controller/rotation.py): one
        server per selected checkpoint, chosen by rendezvous among its live servers."""
        return self._placement(monitor)[0]

    def _placement(self, monitor: MonitorRow) -> tuple[dict[str, rotation.Turn], frozenset[str]]:
        """The turns, and the agents whose liveness they depend on (see the module's text)."""
        if not monitor.is_active:
            return {}, frozenset()
        definition = monitor.definition
        wanted_checkpoints, wanted_regions = _selection(definition)
        selected = definition.get("SelectedCheckpoints") or {}
        excluded = set(selected.get("ExcludeLocations") or [])
        primary_only = bool(definition.get("UsePrimaryCheckpointsOnly"))
        by_checkpoint: dict[int, list[ServerRow]] = {}
        now = now_us()
        for srv in self.servers.values():
            if not srv.can_take_checks(now) or monitor.monitor_type not in srv.probe_types:
                continue
            if primary_only and not rotation.is_primary(srv):
                continue
            chosen = (not wanted_checkpoints and not wanted_regions) or (
                srv.checkpoint_id in wanted_checkpoints or srv.region_id in wanted_regions
            )
            if chosen and srv.checkpoint_id not in excluded:
                by_checkpoint.setdefault(srv.checkpoint_id, []).append(srv)
        chosen_servers: dict[int, ServerRow] = {}
        depends: set[str] = set()
        for checkpoint_id, candidates in by_checkpoint.items():
            # prefer live servers; with none live the assignment waits, retained, for one to return
            if len(candidates) == 1:
                (pick,) = candidates
                depends.add(pick.agent_id)
                chosen_servers[checkpoint_id] = pick
                continue
            scores = {s.agent_id: _score(monitor.guid, s) for s in candidates}
            live = [s for s in candidates if rotation.live(s)]
            pick = max(live or candidates, key=lambda s: scores[s.agent_id])
            bar = scores[pick.agent_id] if live else min(scores.values())
            depends.update(agent for agent, score in scores.items() if score >= bar)
            chosen_servers[checkpoint_id] = pick
        return rotation.turns(chosen_servers, definition), frozenset(depends)

    def placement(self, monitor: MonitorRow) -> set[str]:
        return set(self.turns(monitor))

    def has_live_server(self, monitor: MonitorRow) -> bool:
        """Whether a server placed for the monitor is live now: False when no selected
        checkpoint has a live server that can run it (controller/nolive.py)."""
        placed = (self.servers.get(agent) for agent in self.turns(monitor))
        return any(srv is not None and rotation.live(srv) for srv in placed)

    def confirmer(self, guid: str, failed_agent: str) -> str:
        """The agent to re-check an error `failed_agent` saw: a live one at another selected
        checkpoint, the next in the rotation; only if there is none, the same agent."""
        monitor = self.monitors.get(guid)
        placed = self.turns(monitor) if monitor is not None else {}
        return rotation.confirmer(failed_agent, placed, self.servers)

    def assignment(
        self, monitor: MonitorRow, turn: rotation.Turn = rotation.EVERY_SLOT
    ) -> Assignment:
        interval = self._interval(monitor)
        return Assignment(
            monitor_guid=monitor.guid,
            revision=monitor.revision,
            monitor=monitor.definition,
            schedule=Schedule(
                interval_seconds=interval,
                offset_seconds=phase_offset(monitor.guid, interval),
                rotation_position=turn.position,
                rotation_count=turn.count,
            ),
        )

    def _interval(self, monitor: MonitorRow) -> int:
        """The monitor's check interval, read once per revision. Definitions are stored as
        their model dumps them (`model.definition()`), so the two interval fields are read as
        they are: the value `interval_seconds` of the validated model gives, without validating
        the whole monitor again (a tenth of a millisecond each, which 100,000 monitors feel).
        One stored before a rule was tightened is placed all the same (its agent refuses it,
        counted), rather than stopping every placement behind it."""
        cached = self._intervals.get(monitor.guid)
        if cached is not None and cached[0] == monitor.revision:
            return cached[1]
        interval = _stored_interval(monitor.definition)
        self._intervals[monitor.guid] = (monitor.revision, interval)
        return interval

    # --- indexes ------------------------------------------------------------------------------

    def _index_selection(self, monitor: MonitorRow | None, guid: str = "") -> None:
        """Keep the index of which checkpoints and regions each monitor selects."""
        guid = monitor.guid if monitor is not None else guid
        old = self._selection.pop(guid, None)
        if old is not None:
            checkpoints, regions = old
            self._select_all.discard(guid)
            for cp in checkpoints:
                self._select_checkpoint.get(cp, set()).discard(guid)
            for region_id in regions:
                self._select_region.get(region_id, set()).discard(guid)
        if monitor is None:
            return
        checkpoints, regions = _selection(monitor.definition)
        self._selection[guid] = (checkpoints, regions)
        if not checkpoints and not regions:
            self._select_all.add(guid)
        for cp in checkpoints:
            self._select_checkpoint.setdefault(cp, set()).add(guid)
        for region_id in regions:
            self._select_region.setdefault(region_id, set()).add(guid)

    def _set_depends(self, guid: str, depends: frozenset[str]) -> None:
        old = self._depends.get(guid, frozenset())
        if old == depends:
            return
        for agent in old - depends:
            watchers = self._watchers.get(agent)
            if watchers is not None:
                watchers.discard(guid)
                if not watchers:
                    del self._watchers[agent]
        for agent in depends - old:
            self._watchers.setdefault(agent, set()).add(guid)
        if depends:
            self._depends[guid] = depends
        else:
            self._depends.pop(guid, None)

    def _may_select(self, srv: ServerRow) -> set[str]:
        """The monitors that could choose this server (its checkpoint or region selected, or
        all), those that depend on it, and those published to it."""
        return (
            self._select_all
            | self._select_checkpoint.get(srv.checkpoint_id, set())
            | self._select_region.get(srv.region_id, set())
            | self._watchers.get(srv.agent_id, set())
            | self._published.monitors_of(srv.agent_id)
        )

    def _on_liveness(self, agent_id: str) -> set[str]:
        """The monitors whose placement an agent's coming or going can change."""
        return self._watchers.get(agent_id, set()) | self._published.monitors_of(agent_id)

    # --- reconciliation -------------------------------------------------------------------------

    async def _place(self, guids: Iterable[str], force: frozenset[str] = frozenset()) -> None:
        """Place these monitors again and publish what changed (to the agents in `force`: all
        they have).
        The caller holds `_lock`. StoreUnavailable: the publishes are made and the database
        writes wait (retried by the next pass and by reconcile_forever)."""
        if self._full_pass_needed:
            guids = set(self.monitors) | self._published.monitors()
        full = guids if isinstance(guids, set) else set(guids)
        record = _PassLog()
        window = asyncio.Semaphore(PUBLISH_WINDOW)
        store_failed = False

        async def bounded(job: Callable[[], Awaitable[None]]) -> None:
            try:
                await job()
            finally:
                window.release()

        async with asyncio.TaskGroup() as tasks:
            for done, guid in enumerate(sorted(full), 1):
                for job in self._plan(guid, force, record):
                    await window.acquire()
                    tasks.create_task(bounded(job))
                if done % YIELD_EVERY == 0:
                    await asyncio.sleep(0)  # a long pass that publishes little: let others run
                if len(self._unstored) >= STORE_BATCH and not store_failed:
                    try:
                        await self._flush(once=True)
                    except StoreUnavailable:
                        store_failed = True  # logged by the store; the rest waits
            self._full_pass_needed = False
        record.emit()
        await self._flush()

    def _plan(
        self, guid: str, force: frozenset[str], record: _PassLog
    ) -> list[Callable[[], Awaitable[None]]]:
        """The publishes that bring one monitor's assignments to its placement now."""
        self._retry.discard(guid)
        monitor = self.monitors.get(guid)
        if monitor is None:
            desired: dict[str, rotation.Turn] = {}
            self._set_depends(guid, frozenset())
        else:
            desired, depends = self._placement(monitor)
            self._set_depends(guid, depends)
            self.metrics.placements.inc()
        current = self._published.agents_of(guid)
        jobs: list[Callable[[], Awaitable[None]]] = []
        for agent, turn in desired.items():
            assert monitor is not None
            stored = current.get(agent) == monitor.revision
            # a new turn in the rotation (a checkpoint came or went) is published again too
            unchanged = stored and self._turns.get((guid, agent)) == turn
            if unchanged and agent not in force:
                continue
            jobs.append(functools.partial(self._publish, monitor, agent, turn, stored, record))
        for agent in current:
            if agent not in desired:
                jobs.append(functools.partial(self._remove, guid, agent, record))
        return jobs

    async def _publish(
        self, monitor: MonitorRow, agent: str, turn: rotation.Turn, stored: bool, record: _PassLog
    ) -> None:
        guid = monitor.guid
        stamp = now_us()  # before the agent can have it
        if not await self.bus.assign(agent, guid, self.assignment(monitor, turn)):
            self.metrics.assignment_publishes.labels("failed").inc()
            self._retry.add(guid)
            return
        self.metrics.assignment_publishes.labels("assigned").inc()
        changed_turn = self._turns.get((guid, agent)) != turn
        self._turns[(guid, agent)] = turn
        if stored and not changed_turn:
            return  # sent again (a hello): nothing new to store
        self._published[(guid, agent)] = monitor.revision
        _merge_write(self._unstored.setdefault((guid, agent), []), (monitor.revision, stamp, turn))
        if not stored:
            self.history.opened(guid, agent, stamp)
        record.add(
            record.assigned,
            agent,
            "monitor %s (revision %s) assigned to agent %s, slot %d of every %d",
            guid,
            monitor.revision,
            agent,
            turn.position,
            turn.count,
        )

    async def _remove(self, guid: str, agent: str, record: _PassLog) -> None:
        if not await self.bus.assign(agent, guid, None):
            self.metrics.assignment_publishes.labels("failed").inc()
            self._retry.add(guid)
            return
        self.metrics.assignment_publishes.labels("removed").inc()
        stamp = now_us()  # after the agent can have run it
        self._published.pop((guid, agent), None)
        self._turns.pop((guid, agent), None)
        _merge_write(self._unstored.setdefault((guid, agent), []), (None, stamp, None))
        self.history.closed(guid, agent, stamp)
        record.add(record.removed, agent, "monitor %s removed from agent %s", guid, agent)

    async def _flush(self, once: bool = False) -> None:
        """Store the assignment changes made, STORE_BATCH per transaction. On StoreUnavailable
        the batch is put back, in front of anything newer for the same (monitor, agent)."""
        while self._unstored:
            keys = list(itertools.islice(self._unstored, STORE_BATCH))
            taken = {key: self._unstored.pop(key) for key in keys}
            changes: list[AssignmentChange] = [
                (guid, agent, revision, at_us, (turn.position, turn.count) if turn else None)
                for (guid, agent), writes in taken.items()
                for revision, at_us, turn in writes
            ]
            try:
                await self.store.set_assignments(changes)
            except BaseException:
                for key, writes in taken.items():
                    for write in self._unstored.pop(key, []):
                        _merge_write(writes, write)
                    self._unstored[key] = writes
                raise
            if once:
                return

    async def save_monitor(
        self, monitor: MonitorRow, create: bool, expected_revision: str | None = None
    ) -> bool:
        """Store a monitor and place it, as one step: concurrent edits of one monitor cannot
        leave the database and the agents disagreeing. False: it was deleted meanwhile;
        RevisionChanged: its stored revision is not `expected_revision` (when given)."""
        async with self._lock:
            if not await self.store.save_monitor(monitor, create, expected_revision):
                return False
            self.monitors[monitor.guid] = monitor
            self._index_selection(monitor)
            await self._place({monitor.guid})
            return True

    async def delete_monitor(self, guid: str) -> bool:
        async with self._lock:
            deleted = await self.store.delete_monitor(guid)
            self.monitors.pop(guid, None)
            self._index_selection(None, guid)
            self._intervals.pop(guid, None)
            await self._place({guid})
            self.deleted.add(guid)
            self.monitor_deleted.set()
            return deleted

    async def sync_all(self) -> None:
        """A full pass: every monitor placed again (after a (re)connection to the broker)."""
        async with self._lock:
            await self._place(set(self.monitors) | self._published.monitors())

    async def retry_failed(self) -> None:
        """Publishes and database writes that failed, tried again."""
        async with self._lock:
            await self._place(set(self._retry))

    async def checkpoint_primary(self, checkpoint_id: int, is_primary: bool) -> None:
        """A checkpoint became primary or stopped being one: its servers' monitors that use
        primary checkpoints only are placed again."""
        async with self._lock:
            affected: set[str] = set()
            for agent_id, srv in list(self.servers.items()):
                if srv.checkpoint_id == checkpoint_id:
                    changed = dataclasses.replace(srv, is_primary_checkpoint=is_primary)
                    self.servers[agent_id] = changed
                    affected |= self._may_select(changed)
            await self._place(affected)

    async def reconcile_forever(self, every: float = 30.0) -> None:
        """Publishes that failed (a broker hiccup) and database writes that failed are retried
        here, not only on reconnect: those monitors only, not a pass over all."""
        while True:
            await asyncio.sleep(every)
            # the store logs an outage; the next round tries again
            with contextlib.suppress(StoreUnavailable):
                await self.retry_failed()

    async def on_hello(self, hello: Hello, vouched: bool = False) -> None:
        """`vouched`: the agent enrolled with an administrator's token, which is its approval
        (it is still upcoming for the activation time, so firewalls can be opened first)."""
        await self.on_hellos([(hello, vouched)])

    async def on_hellos(
        self,
        hellos: list[tuple[Hello, bool]],
        more: Callable[[], Awaitable[list[tuple[Hello, bool]]]] | None = None,
    ) -> None:
        """Hellos that came together (a controller's start reads every agent's retained hello
        at once), handled as one: every server is registered first, then one placement pass
        covers what they all change. One at a time, three new servers would each re-place
        every monitor that may select them, and the first would be handed all of them only to
        give two thirds away again. `more`: hellos that came since, asked for after a short
        settle and again once the lock is held (a pass that held it, or the event loop busy
        reading the retained messages, can let a burst arrive in parts)."""
        registered: list[tuple[ServerRow | None, ServerRow]] = []

        async def register(batch: list[tuple[Hello, bool]]) -> None:
            for hello, vouched in batch:
                srv = await self._register(hello, vouched)
                registered.append((self.servers.get(srv.agent_id), srv))
                self.servers[srv.agent_id] = srv
            self._fleet_changed.set()
            self._update_online_metric()

        await register(hellos)
        if more is not None:
            await asyncio.sleep(HELLO_SETTLE_SECONDS)  # not holding the lock: saves go on
        async with self._lock:
            if more is not None:
                while extra := await more():
                    await register(extra)
            if not registered:
                return
            now = now_us()
            affected: set[str] = set()
            for old, srv in registered:
                if old is None or _candidacy(old) != _candidacy(srv):
                    # a server that could take no checks before nor now changes no placement
                    could = srv.can_take_checks(now) or (
                        old is not None and old.can_take_checks(now)
                    )
                    affected |= self._published.monitors_of(srv.agent_id)
                    if could:
                        affected |= self._may_select(srv) | (
                            self._may_select(old) if old else set()
                        )
                elif old.online != srv.online:
                    affected |= self._on_liveness(srv.agent_id)
                else:
                    affected |= self._published.monitors_of(srv.agent_id)
            # re-send these agents' assignments (the broker may have lost them), then the lists
            agents = frozenset(srv.agent_id for _old, srv in registered)
            await self._place(affected, force=agents)
            listed = {agent: self._published.of_agent(agent) for agent in agents}
        for agent in sorted(agents):
            await self.bus.sync(agent, Sync(monitors=listed[agent]))

    async def _register(self, hello: Hello, vouched: bool) -> ServerRow:
        stamp = now_us()
        if self.require_approval and not vouched:
            new_state, activate_after = "pending", None
        elif self.activation_seconds > 0:
            new_state, activate_after = "upcoming", stamp + int(self.activation_seconds * 1e6)
        else:
            new_state, activate_after = "active", None
        srv = await self.store.register_server(
            hello.agent,
            hello.checkpoint,
            hello.region,
            hello.ipv4,
            hello.ipv6,
            hello.version,
            hello.probe_types,
            hello.capacity,
            # a retained hello says who the agent is, the LWT-backed state whether it is up
            online=self._presence.get(hello.agent, True),
            new_state=new_state,
            activate_after_us=activate_after,
        )
        log.info(
            "agent %s %s at checkpoint %s (id %d), server id %d, %s %s, %s",
            srv.agent_id,
            "online" if srv.online else "registered (offline)",
            srv.checkpoint_name,
            srv.checkpoint_id,
            srv.id,
            srv.ipv4,
            srv.ipv6,
            _state_note(srv),
        )
        return srv

    async def on_state(self, agent_id: str, online: bool) -> None:
        self._presence[agent_id] = online
        srv = self.servers.get(agent_id)
        if srv is None or srv.online == online:
            return
        await self.store.set_server_online(agent_id, online)
        refreshed = await self.store.server_by_agent(agent_id)
        if refreshed is not None:
            self.servers[agent_id] = refreshed
        log.info("agent %s is %s", agent_id, "online" if online else "offline")
        self._update_online_metric()
        async with self._lock:
            before = self._published.monitors_of(agent_id)
            try:
                await self._place(self._on_liveness(agent_id))
            finally:
                self._count_moves(agent_id, online, before, self._published.monitors_of(agent_id))

    def _count_moves(self, agent_id: str, online: bool, before: set[str], after: set[str]) -> None:
        """Failover: the monitors that left a server that went offline; return: those that
        came back to it (rendezvous hashing moves only a share back: its own)."""
        moved = before - after if not online else after - before
        if not moved:
            return
        reason = "return" if online else "failover"
        if not online:
            self.metrics.failovers.inc()
        self.metrics.monitors_moved.labels(reason).inc(len(moved))
        srv = self.servers.get(agent_id)
        log.warning(
            "agent %s (checkpoint %s) %s: %d monitors moved %s",
            agent_id,
            srv.checkpoint_name if srv else "?",
            "is back" if online else "is offline",
            len(moved),
            "back to it" if online else "to its peers",
        )

    # --- server states ----------------------------------------------------------------------

    async def set_state(self, server_id: int, state: str) -> ServerRow | None:
        """An operator's Approve (state "active") or Retire ("retired"); the server's monitors
        are placed again at once. None: no such server."""
        updated = await self.store.set_server_state(server_id, state)
        if updated is None:
            return None
        old = self.servers.get(updated.agent_id)
        self.servers[updated.agent_id] = updated
        log.info(
            "agent %s at checkpoint %s (server id %d) is now %s",
            updated.agent_id,
            updated.checkpoint_name,
            updated.id,
            state,
        )
        self._fleet_changed.set()
        async with self._lock:
            affected = self._may_select(updated) | (self._may_select(old) if old else set())
            await self._place(affected)
        if state == "retired" and self.on_retired is not None:
            self.on_retired(updated.agent_id)
        return updated

    async def activate_forever(self, longest_wait: float = 60.0) -> None:
        """Upcoming servers whose activation time has come become active, and monitors are
        placed on them. (Placement already counts them from that time on, see
        ServerRow.can_take_checks; this stores the state and re-places at that moment.)"""
        while True:
            self._fleet_changed.clear()
            now = now_us()
            timed = [
                s
                for s in self.servers.values()
                if s.state == "upcoming" and s.activate_after_us is not None
            ]
            due = [s for s in timed if s.can_take_checks(now)]
            if due:
                try:
                    for srv in due:
                        await self.set_state(srv.id, "active")
                except StoreUnavailable:  # the store logs the outage; try again shortly
                    await asyncio.sleep(min(5.0, longest_wait))
                continue
            wait = longest_wait
            if timed:
                soonest = min(s.activate_after_us or now for s in timed)
                wait = min(wait, max(0.0, (soonest - now) / 1e6))
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._fleet_changed.wait(), wait)


def _state_note(srv: ServerRow) -> str:
    if srv.state == "upcoming" and srv.activate_after_us is not None:
        when = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(srv.activate_after_us / 1e6))
        return f"upcoming: listed now, takes checks from {when} or on approval"
    if srv.state == "upcoming":
        return "upcoming: listed now, takes checks on approval"
    if srv.state == "pending":
        return "pending: waits for an operator's approval (POST /Checkpoint/Server/{id}/Approve)"
    return srv.state


def _stored_interval(definition: dict[str, object]) -> int:
    """A stored definition's check interval in seconds, read without validating it."""
    seconds, minutes = definition.get("CheckIntervalSeconds"), definition.get("CheckInterval")
    if isinstance(seconds, int) and seconds > 0:
        return seconds
    if isinstance(minutes, int) and minutes > 0:
        return minutes * 60
    return monitors.DEFAULT_CHECK_INTERVAL_MINUTES * 60
