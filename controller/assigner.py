"""Places monitors on agents and keeps the broker's retained assignments equal to that placement.

One live server per selected checkpoint, chosen by rendezvous (highest-random-weight) hashing
weighted by capacity: when a server leaves only its monitors move, and when it returns little
else moves. Which slots each of them runs (rotation or concurrent) is controller/rotation.py's.
Desired state is published as retained messages; what was published is recorded in the
database so a restarted controller removes what it no longer wants.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import hashlib
import logging
import math
import time
from collections.abc import Callable

from pydantic import ValidationError

from controller import rotation
from controller.bus import ControllerBus
from controller.db.store import MonitorRow, ServerRow, Store, StoreUnavailable, now_us
from controller.metrics import ControllerMetrics
from controller.trust import Acceptance, AssignmentHistory
from shared import monitors
from shared.messages import Assignment, Hello, Schedule, Sync

log = logging.getLogger(__name__)


def _unit_hash(*parts: str) -> float:
    """A stable number in (0, 1) from the parts."""
    digest = hashlib.sha256("\x00".join(parts).encode()).digest()
    return (int.from_bytes(digest[:8], "big") + 1) / (2**64 + 2)


def rendezvous(monitor_guid: str, candidates: list[ServerRow]) -> ServerRow:
    """Weighted highest-random-weight choice: score = -capacity / ln(h)."""
    return max(
        candidates,
        key=lambda s: (-max(1, s.capacity) / math.log(_unit_hash(monitor_guid, s.agent_id)), s.id),
    )


PHASE_STEP_MS = 10


def phase_offset(monitor_guid: str, interval_seconds: int) -> float:
    """Where in its interval a monitor runs, spread evenly by its id, in PHASE_STEP_MS steps:
    monitors that share a step start together, so an agent wakes once for all of them (on
    these VMs a wake-up per check costs more CPU than the check itself)."""
    slots = max(1, interval_seconds * 1000 // PHASE_STEP_MS)
    return (int(_unit_hash(monitor_guid, "phase") * slots) % slots) * PHASE_STEP_MS / 1000.0


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
        self._published: dict[tuple[str, str], str] = {}
        # the turn last published per (monitor, agent); empty after a start, so the first
        # pass publishes every turn once (the agents ignore a resend of what they have)
        self._turns: dict[tuple[str, str], rotation.Turn] = {}
        self._lock = asyncio.Lock()
        self._presence: dict[str, bool] = {}  # from the agents' state topics
        self.history = AssignmentHistory()
        self.acceptance = Acceptance(self.history, bus.requested_runs, self, metrics)
        self.monitor_deleted = asyncio.Event()  # wakes the retention task to purge its checks
        self.deleted: set[str] = set()  # monitors deleted since the last retention pass
        # told the agent id of a server just retired (the clock tracker forgets it)
        self.on_retired: Callable[[str], None] | None = None

    async def load(self) -> None:
        self.servers = {s.agent_id: s for s in await self.store.servers()}
        self.monitors = {m.guid: m for m in await self.store.monitors()}
        self._published = await self.store.assignments()
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
        for _guid, agent in self._published:
            per_agent[agent] = per_agent.get(agent, 0) + 1
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
        if not monitor.is_active:
            return {}
        definition = monitor.definition
        selected = definition.get("SelectedCheckpoints") or {}
        wanted_checkpoints = set(selected.get("Checkpoints") or [])
        wanted_regions = set(selected.get("Regions") or [])
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
        for checkpoint_id, candidates in by_checkpoint.items():
            # prefer live servers; with none live the assignment waits, retained, for one to return
            live = [s for s in candidates if rotation.live(s)] or candidates
            chosen_servers[checkpoint_id] = rendezvous(monitor.guid, live)
        return rotation.turns(chosen_servers, definition)

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
        model = monitors.model_for(monitor.monitor_type)
        try:
            interval = model.model_validate(monitor.definition).interval_seconds if model else 300
        except ValidationError:
            # stored before a rule was tightened: placed all the same (its agent refuses it,
            # counted), rather than stopping every placement behind it
            interval = _stored_interval(monitor.definition)
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

    # --- reconciliation -------------------------------------------------------------------------

    async def _apply(self, guid: str, force_agent: str | None = None) -> None:
        monitor = self.monitors.get(guid)
        desired = self.turns(monitor) if monitor is not None else {}
        current = {agent for (g, agent) in self._published if g == guid}
        for agent, turn in desired.items():
            assert monitor is not None
            stored = self._published.get((guid, agent)) == monitor.revision
            # a new turn in the rotation (a checkpoint came or went) is published again too
            unchanged = stored and self._turns.get((guid, agent)) == turn
            if unchanged and agent != force_agent:
                continue
            stamp = now_us()  # before the agent can have it
            if not await self.bus.assign(agent, guid, self.assignment(monitor, turn)):
                continue
            self._turns[(guid, agent)] = turn
            if not stored:
                self._published[(guid, agent)] = monitor.revision
                await self.store.set_assignment(guid, agent, monitor.revision, stamp)
                self.history.opened(guid, agent, stamp)
                log.info(
                    "monitor %s (revision %s) assigned to agent %s, slot %d of every %d",
                    guid,
                    monitor.revision,
                    agent,
                    turn.position,
                    turn.count,
                )
        for agent in current - set(desired):
            if await self.bus.assign(agent, guid, None):
                stamp = now_us()  # after the agent can have run it
                self._published.pop((guid, agent), None)
                self._turns.pop((guid, agent), None)
                await self.store.set_assignment(guid, agent, None, stamp)
                self.history.closed(guid, agent, stamp)
                log.info("monitor %s removed from agent %s", guid, agent)

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
            await self._apply(monitor.guid)
            return True

    async def delete_monitor(self, guid: str) -> bool:
        async with self._lock:
            deleted = await self.store.delete_monitor(guid)
            self.monitors.pop(guid, None)
            await self._apply(guid)
            self.deleted.add(guid)
            self.monitor_deleted.set()
            return deleted

    async def sync_all(self, force_agent: str | None = None) -> None:
        async with self._lock:
            guids = set(self.monitors) | {g for (g, _agent) in self._published}
            for guid in sorted(guids):
                await self._apply(guid, force_agent)

    async def checkpoint_primary(self, checkpoint_id: int, is_primary: bool) -> None:
        """A checkpoint became primary or stopped being one: its servers' monitors that use
        primary checkpoints only are placed again."""
        for agent_id, srv in list(self.servers.items()):
            if srv.checkpoint_id == checkpoint_id:
                self.servers[agent_id] = dataclasses.replace(srv, is_primary_checkpoint=is_primary)
        await self.sync_all()

    async def reconcile_forever(self, every: float = 30.0) -> None:
        """Publishes that failed (a broker hiccup) are retried here, not only on reconnect."""
        while True:
            await asyncio.sleep(every)
            # the store logs an outage; the next round tries again
            with contextlib.suppress(StoreUnavailable):
                await self.sync_all()

    async def on_hello(self, hello: Hello, vouched: bool = False) -> None:
        """`vouched`: the agent enrolled with an administrator's token, which is its approval
        (it is still upcoming for the activation time, so firewalls can be opened first)."""
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
        self.servers[srv.agent_id] = srv
        self._fleet_changed.set()
        self._update_online_metric()
        # re-send this agent's assignments (the broker may have lost them), then the full list
        await self.sync_all(force_agent=srv.agent_id)
        mine = {g: rev for (g, agent), rev in self._published.items() if agent == srv.agent_id}
        await self.bus.sync(srv.agent_id, Sync(monitors=mine))

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
        before = self._placed_on(agent_id)
        await self.sync_all()
        self._count_moves(agent_id, online, before, self._placed_on(agent_id))

    def _placed_on(self, agent_id: str) -> set[str]:
        return {guid for (guid, agent) in self._published if agent == agent_id}

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
        self.servers[updated.agent_id] = updated
        log.info(
            "agent %s at checkpoint %s (server id %d) is now %s",
            updated.agent_id,
            updated.checkpoint_name,
            updated.id,
            state,
        )
        self._fleet_changed.set()
        await self.sync_all()
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
