"""Places monitors on agents and keeps the broker's retained assignments equal to that placement.

One live server per selected checkpoint, chosen by rendezvous (highest-random-weight) hashing
weighted by capacity: when a server leaves only its monitors move, and when it returns little
else moves. Desired state is published as retained messages; what was published is recorded
in the database so a restarted controller removes what it no longer wants.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import logging
import math
import time

from controller.bus import ControllerBus
from controller.db.store import MonitorRow, ServerRow, Store, StoreUnavailable
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
    def __init__(self, store: Store, bus: ControllerBus, metrics: ControllerMetrics) -> None:
        self.store = store
        self.bus = bus
        self.metrics = metrics
        self.servers: dict[str, ServerRow] = {}
        self.monitors: dict[str, MonitorRow] = {}
        self._published: dict[tuple[str, str], str] = {}
        self._lock = asyncio.Lock()
        self._presence: dict[str, bool] = {}  # from the agents' state topics
        self.history = AssignmentHistory()
        self.acceptance = Acceptance(self.history, bus.requested_runs, self, metrics)
        self.monitor_deleted = asyncio.Event()  # wakes the retention task to purge its checks
        self.deleted: set[str] = set()  # monitors deleted since the last retention pass

    async def load(self) -> None:
        self.servers = {s.agent_id: s for s in await self.store.servers()}
        self.monitors = {m.guid: m for m in await self.store.monitors()}
        self._published = await self.store.assignments()
        self.history.load(await self.store.assignment_history())
        self._update_online_metric()

    def server(self, agent_id: str) -> ServerRow | None:
        return self.servers.get(agent_id)

    def server_by_id(self, server_id: int | None) -> ServerRow | None:
        return next((s for s in self.servers.values() if s.id == server_id), None)

    def _update_online_metric(self) -> None:
        self.metrics.agents_online.set(sum(1 for s in self.servers.values() if s.online))

    # --- placement ----------------------------------------------------------------------------

    def placement(self, monitor: MonitorRow) -> set[str]:
        if not monitor.is_active:
            return set()
        selected = monitor.definition.get("SelectedCheckpoints") or {}
        wanted_checkpoints = set(selected.get("Checkpoints") or [])
        wanted_regions = set(selected.get("Regions") or [])
        excluded = set(selected.get("ExcludeLocations") or [])
        by_checkpoint: dict[int, list[ServerRow]] = {}
        for srv in self.servers.values():
            if monitor.monitor_type not in srv.probe_types:
                continue
            chosen = (not wanted_checkpoints and not wanted_regions) or (
                srv.checkpoint_id in wanted_checkpoints or srv.region_id in wanted_regions
            )
            if chosen and srv.checkpoint_id not in excluded:
                by_checkpoint.setdefault(srv.checkpoint_id, []).append(srv)
        agents = set()
        for candidates in by_checkpoint.values():
            # prefer live servers; with none live the assignment waits, retained, for one to return
            live = [s for s in candidates if s.online] or candidates
            agents.add(rendezvous(monitor.guid, live).agent_id)
        return agents

    def assignment(self, monitor: MonitorRow) -> Assignment:
        model = monitors.model_for(monitor.monitor_type)
        interval = model.model_validate(monitor.definition).interval_seconds if model else 300
        return Assignment(
            monitor_guid=monitor.guid,
            revision=monitor.revision,
            monitor=monitor.definition,
            schedule=Schedule(
                interval_seconds=interval, offset_seconds=phase_offset(monitor.guid, interval)
            ),
        )

    # --- reconciliation -------------------------------------------------------------------------

    async def _apply(self, guid: str, force_agent: str | None = None) -> None:
        monitor = self.monitors.get(guid)
        desired = self.placement(monitor) if monitor is not None else set()
        current = {agent for (g, agent) in self._published if g == guid}
        for agent in desired:
            assert monitor is not None
            unchanged = self._published.get((guid, agent)) == monitor.revision
            if unchanged and agent != force_agent:
                continue
            stamp = time.time_ns() // 1000  # before the agent can have it
            if await self.bus.assign(agent, guid, self.assignment(monitor)) and not unchanged:
                self._published[(guid, agent)] = monitor.revision
                await self.store.set_assignment(guid, agent, monitor.revision, stamp)
                self.history.opened(guid, agent, stamp)
                log.info(
                    "monitor %s (revision %s) assigned to agent %s", guid, monitor.revision, agent
                )
        for agent in current - desired:
            if await self.bus.assign(agent, guid, None):
                stamp = time.time_ns() // 1000  # after the agent can have run it
                self._published.pop((guid, agent), None)
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

    async def reconcile_forever(self, every: float = 30.0) -> None:
        """Publishes that failed (a broker hiccup) are retried here, not only on reconnect."""
        while True:
            await asyncio.sleep(every)
            # the store logs an outage; the next round tries again
            with contextlib.suppress(StoreUnavailable):
                await self.sync_all()

    async def on_hello(self, hello: Hello) -> None:
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
        )
        log.info(
            "agent %s %s at checkpoint %s (id %d), server id %d, %s %s",
            srv.agent_id,
            "online" if srv.online else "registered (offline)",
            srv.checkpoint_name,
            srv.checkpoint_id,
            srv.id,
            srv.ipv4,
            srv.ipv6,
        )
        self.servers[srv.agent_id] = srv
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
