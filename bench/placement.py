"""Benchmark 9: placement and failover of many monitors on three agents of one checkpoint.

Mosquitto, the controller (SQLite) and three agents (`bench-a`, `bench-b`, `bench-c`, one
check worker each, checkpoint `Bench`) run as separate children on free loopback ports; the
monitors check a loopback nginx (one worker, a 3-byte 200).

1. `--monitors` HTTP monitors (default 100,000) at an `--interval` of 60 s are written straight
   into a fresh SQLite database (the controller's own migrations, then bulk INSERTs of rows
   built as POST /Monitor builds them: validated by the monitor model, revision from the
   definition): creating 100,000 through the REST API would take most of an hour (e2e
   measures ≈ 35 monitors/s under load). The agents start and connect first; then the
   controller starts. Measured from the controller's spawn, reading the controller's
   `assignment` table (a row per publish) through a read-only SQLite connection: when every
   monitor is on some agent, and when every monitor is *placed*: on the agent the
   controller's own rendezvous function gives it over the three servers, and on no other.
   Then when each agent holds its share (`picket_agent_assignments`), and when every monitor
   has a stored result. Also the controller's CPU until placed.
2. The controller's CPU (utime + stime from /proc/<pid>/stat) spent on one presence change:
   an agent lost (from when the controller marks it offline, `picket_agents_online` drops,
   until `picket_failovers_total` counts the failover: its monitors were placed on its peers)
   and an agent's return (its hello and its presence online, from its spawn until the
   controller is quiet again). The controller also stores ≈ N/interval results a second
   meanwhile: its CPU rate measured just before (same scraping) is subtracted; the raw
   figure is printed too.
3. `kill -9` of one agent's whole process group (agent and check worker). Its connection
   closes, so the broker publishes its will at once; with `--silent-loss` it is first frozen
   (SIGSTOP: the connection stays open and silent, as a host cut off) until the controller
   notices, which takes 1.5 x its MQTT keepalive (`PICKET_PRESENCE_KEEPALIVE_SECONDS`, set
   to `--keepalive`, default 5 s here, 15 s in production), and then killed. From the
   database: for each monitor it held, its first result from a peer whose check started
   after the kill (p50/p99/max of the delay), and the slots missed (`missed_slots`: the slots
   between the last one stored before the kill and the peer's first one). Goal: every
   monitor taken over within one interval + detection (1.5 x keepalive).
4. No result lost: the killed agent starts again on its data directory (its outbox holds what
   the controller had not acknowledged). Each agent run's `picket_agent_checks_total`
   (checks completed) at a scrape is compared, once the outboxes drained, with the results
   stored from that server whose check started before the scrape; the controller's refusals
   (`picket_results_refused_total`), its dropped duplicates and the agents' outbox drops are
   printed beside them. The killed run's counter is its last scrape, just before the kill:
   results still in its memory at the kill (completed, not yet in the outbox: up to
   PICKET_BATCH_INTERVAL_MS, 200 ms) die with it by design and show as lost there.

Everything is bounded: each wait has a time-out, after which the run reports what it reached
and goes on (or stops, when there is nothing left to measure). On 2 cores, 100,000 monitors
a minute is ≈ 1,667 checks/s and results/s: the run says when the results lagged behind.
"""

from __future__ import annotations

import argparse
import asyncio
import math
import os
import secrets
import signal
import sqlite3
import subprocess
import sys
import time
import uuid
from collections.abc import Callable, Iterable
from contextlib import ExitStack
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import sqlalchemy as sa

from bench import infra
from bench.e2e import Samples, parse_metrics, total
from bench.infra import LOOPBACK, Summary, percentile
from shared.up import find_mosquitto, mosquitto_config

REPO = Path(__file__).resolve().parent.parent
DEFAULT_MONITORS = 100_000
DEFAULT_INTERVAL = 60
DEFAULT_KEEPALIVE = 5
AGENTS = ("bench-a", "bench-b", "bench-c")
VICTIM = AGENTS[-1]
CHECKPOINT = "Bench"
INSERT_CHUNK = 5000
POLL = 1.0  # seconds between database and metrics polls in the long waits
EVENT_POLL = 0.1  # around the CPU measurements: the same rate in the baseline
PLACEMENT_TIMEOUT = 300.0  # from the controller's spawn until every monitor is placed
BASELINE_SECONDS = 31.0  # the assigner reconciles every 30 s: one pass is in it
SCRAPE_TIMEOUT = 60.0
QUIET_MARGIN = 0.25  # of a core above the baseline: the controller is quiet again
QUIET_SAMPLES = 3  # consecutive 1-s windows
EVENT_TIMEOUT = 300.0
DRAIN_TIMEOUT = 90.0
START_TIMEOUT = 60.0
ASSIGNED = 'picket_assignments{agent="'  # the controller's per-agent series
LAG_SHARE = 0.9  # stored below this share of the scheduled rate: the results lag


# --- pure helpers (tests/unit/test_bench_placement.py) ---------------------------------------


def slot_index(scheduled_s: float, interval: float, offset: float) -> int:
    """Which of a monitor's slots (epoch + k * interval + offset, agent/scheduler.py) a result
    scheduled at `scheduled_s` is."""
    return round((scheduled_s - offset) / interval)


def missed_slots(
    stored: Iterable[int], kill_slot: int, takeover_slot: int | None, now_slot: int
) -> int:
    """Slots of one monitor lost to a failover: those after the last slot stored at or before
    `kill_slot` (the slot due at the kill or just before it) up to the first slot a peer ran
    (`takeover_slot`), or up to `now_slot` when no peer ran one yet, that have no result.
    Slots before the last stored one are not the failover's."""
    slots = set(stored)
    before = [s for s in slots if s <= kill_slot]
    start = max(before) + 1 if before else kill_slot
    end = takeover_slot if takeover_slot is not None else now_slot + 1
    return sum(1 for s in range(start, end) if s not in slots)


def net_cpu(raw: float, baseline_rate: float, seconds: float) -> float:
    """CPU seconds an event cost beyond what the process spends anyway at its baseline rate
    (never below zero: noise)."""
    return max(0.0, raw - baseline_rate * seconds)


# --- the monitors -------------------------------------------------------------------------------


def monitor_rows(n: int, target: str, interval: int) -> list[dict[str, Any]]:
    """Rows of the `monitor` table, each built as POST /Monitor builds it."""
    from controller.api.monitors import revision_of, validate
    from controller.db.store import now_us

    rows = []
    for i in range(n):
        model = validate(
            {
                "Name": f"placement {i:06d}",
                "MonitorType": "Http",
                "Url": f"{target}placement/{i}",
                "CheckIntervalSeconds": interval,
                "TimeoutSeconds": 5,
                "ErrorConditions": [{"ErrorConditionType": "HttpStatus", "Value": "200"}],
            }
        )
        definition = model.definition()
        stamp = now_us()
        rows.append(
            {
                "guid": str(uuid.uuid4()),
                "name": model.Name,
                "monitor_type": model.MonitorType,
                "is_active": model.IsActive,
                "definition": _json(definition),
                "revision": revision_of(definition),
                "created_us": stamp,
                "modified_us": stamp,
            }
        )
    return rows


def _json(value: Any) -> str:
    import json

    return json.dumps(value, sort_keys=True)  # as Store.save_monitor stores it


async def _store_monitors(database: Path, rows: list[dict[str, Any]]) -> None:
    from controller.db.schema import monitor
    from controller.db.store import Store

    store = await Store.open(f"sqlite+aiosqlite:///{database}")  # runs the migrations
    try:
        async with store.engine.begin() as conn:
            for start in range(0, len(rows), INSERT_CHUNK):
                await conn.execute(sa.insert(monitor), rows[start : start + INSERT_CHUNK])
    finally:
        await store.close()


def create_monitors(database: Path, n: int, target: str, interval: int) -> tuple[float, float]:
    """(seconds to build the rows, seconds to migrate and insert them)."""
    t0 = time.monotonic()
    rows = monitor_rows(n, target, interval)
    t1 = time.monotonic()
    asyncio.run(_store_monitors(database, rows))
    return t1 - t0, time.monotonic() - t1


# --- the database, read only ------------------------------------------------------------------


class Db:
    """The controller's SQLite database through a read-only connection (WAL: readers do not
    block the controller)."""

    def __init__(self, path: Path) -> None:
        self.conn = sqlite3.connect(f"file:{path}?mode=ro", uri=True, timeout=30)

    def close(self) -> None:
        self.conn.close()

    def scalar(self, sql: str, *args: object) -> int:
        row = self.conn.execute(sql, args).fetchone()
        return int(row[0]) if row and row[0] is not None else 0

    def assigned(self) -> int:
        return self.scalar("SELECT COUNT(DISTINCT monitor_guid) FROM assignment")

    def with_result(self) -> int:
        return self.scalar("SELECT COUNT(*) FROM (SELECT DISTINCT monitor_guid FROM monitor_check)")

    def max_check_id(self) -> int:
        return self.scalar("SELECT MAX(id) FROM monitor_check")

    def server_ids(self) -> dict[str, int]:
        return {a: int(i) for a, i in self.conn.execute("SELECT agent_id, id FROM server")}

    def assigned_to(self, agent: str) -> set[str]:
        rows = self.conn.execute("SELECT monitor_guid FROM assignment WHERE agent_id = ?", (agent,))
        return {g for (g,) in rows}

    def taken_over(self, after_id: int, since_us: int, not_server: int) -> dict[str, int]:
        """Monitor -> start (µs) of its first stored check by another server than
        `not_server` that started at or after `since_us` (rows after `after_id` only)."""
        rows = self.conn.execute(
            "SELECT monitor_guid, MIN(ts_us) FROM monitor_check WHERE id > ? AND ts_us >= ? "
            "AND server_id != ? GROUP BY monitor_guid",
            (after_id, since_us, not_server),
        )
        return {g: int(ts) for g, ts in rows}

    def scheduled_since(self, since_us: int) -> list[tuple[str, int, int]]:
        rows = self.conn.execute(
            "SELECT monitor_guid, server_id, scheduled_us FROM monitor_check "
            "WHERE scheduled_us >= ?",
            (since_us,),
        )
        return [(g, int(s or 0), int(t)) for g, s, t in rows]

    def stored(self, server: int, from_us: int, to_us: int) -> int:
        return self.scalar(
            "SELECT COUNT(*) FROM monitor_check WHERE server_id = ? AND ts_us >= ? AND ts_us <= ?",
            server,
            from_us,
            to_us,
        )


# --- the processes ------------------------------------------------------------------------------


def _errors(samples: Samples) -> float:
    """Failed checks, from picket_agent_checks_total's outcome label."""
    return sum(
        v
        for k, v in samples.items()
        if k.startswith("picket_agent_checks_total{") and 'outcome="error"' in k
    )


def _python() -> str:
    venv = REPO / ".venv" / "bin" / "python"
    return str(venv if venv.exists() else sys.executable)


def _now_us() -> int:
    return time.time_ns() // 1000


@dataclass
class Agent:
    name: str
    dir: Path
    metrics_port: int
    env: dict[str, str]
    child: infra.Child | None = None
    runs: int = 0

    @property
    def metrics(self) -> str:
        return f"http://{LOOPBACK}:{self.metrics_port}/metrics"

    def start(self, stack: ExitStack) -> None:
        self.runs += 1
        log = self.dir / f"agent-{self.runs}.log"
        argv = [_python(), "-m", "shared.cli", "agent"]
        self.child = infra.start_child(stack, self.name, argv, log, self.env, REPO)

    def signal(self, signum: int) -> None:
        """To its process group: the agent and its check worker."""
        assert self.child is not None
        os.killpg(self.child.proc.pid, signum)
        if signum == signal.SIGKILL:
            self.child.proc.wait(timeout=10)

    def samples(self) -> Samples:
        return parse_metrics(infra.http_get(self.metrics, timeout=SCRAPE_TIMEOUT))


class Fleet:
    def __init__(self, stack: ExitStack, keepalive: int) -> None:
        self.stack = stack
        self.dir = infra.tempdir(stack, "placement")
        self.database = self.dir / "controller" / "picket.db"
        self.database.parent.mkdir()
        self.broker_port = infra.free_port()
        self.api_port = infra.free_port()
        self.api = f"http://{LOOPBACK}:{self.api_port}"
        self.broker_url = f"mqtt://{LOOPBACK}:{self.broker_port}"
        base = dict(os.environ)
        base.pop("PICKET_ADMIN_PASSWORD", None)
        base.update({"PICKET_BROKER_URL": self.broker_url, "PICKET_LOG_LEVEL": "WARNING"})
        self.agents: dict[str, Agent] = {}
        for name in AGENTS:
            directory = self.dir / name
            directory.mkdir()
            port = infra.free_port()
            env = dict(base)
            env.update(
                {
                    "PICKET_DATA_DIR": str(directory / "data"),
                    "PICKET_AGENT_ID": name,
                    "PICKET_CHECKPOINT": CHECKPOINT,
                    "PICKET_REGION": CHECKPOINT,
                    "PICKET_METRICS_LISTEN": f"{LOOPBACK}:{port}",
                    "PICKET_WORKERS": "1",
                    "PICKET_PRESENCE_KEEPALIVE_SECONDS": str(keepalive),
                }
            )
            self.agents[name] = Agent(name, directory, port, env)
        self.controller_env = dict(base)
        self.controller_env.update(
            {
                "PICKET_DATA_DIR": str(self.database.parent),
                "PICKET_DATABASE_URL": f"sqlite:///{self.database}",
                "PICKET_API_LISTEN": f"{LOOPBACK}:{self.api_port}",
                "PICKET_ADMIN_PASSWORD": secrets.token_urlsafe(18),
                "PICKET_SERVER_ACTIVATION_SECONDS": "0",
            }
        )
        self.controller: infra.Child | None = None
        self.broker: infra.Child | None = None

    def start_broker(self) -> None:
        mosquitto = find_mosquitto()
        if mosquitto is None:
            raise infra.Missing("`mosquitto` is not installed: apt-get install -y mosquitto")
        config = mosquitto_config(self.dir / "broker", LOOPBACK, self.broker_port)
        self.broker = infra.start_child(
            self.stack, "mosquitto", [mosquitto, "-c", str(config)], self.dir / "broker.log"
        )
        infra.wait_port(self.broker_port, self.broker)

    def start_controller(self) -> float:
        """Spawns the controller; returns the monotonic time of the spawn."""
        argv = [_python(), "-m", "shared.cli", "controller"]
        log = self.dir / "controller.log"
        t0 = time.monotonic()
        self.controller = infra.start_child(
            self.stack, "controller", argv, log, self.controller_env, REPO
        )
        return t0

    def controller_cpu(self) -> float:
        assert self.controller is not None
        return sum(infra.cpu_seconds([self.controller.proc.pid]))

    def controller_samples(self) -> Samples:
        # generous: on a loaded machine its event loop may be busy for many seconds
        return parse_metrics(infra.http_get(f"{self.api}/metrics", timeout=SCRAPE_TIMEOUT))

    def metric(self, name: str, otherwise: float) -> float:
        """One of the controller's metrics (summed over its labels); `otherwise` when the
        scrape fails (a time-out under load)."""
        samples = _try(self.controller_samples)
        return otherwise if samples is None else total(samples, name)

    def check_alive(self) -> None:
        for child in (self.broker, self.controller):
            if child is not None and child.proc.poll() is not None:
                raise RuntimeError(f"{child.name} exited: {child.tail()}")


def _try(get: Callable[[], Samples]) -> Samples | None:
    try:
        return get()
    except OSError:  # not listening yet, or a scrape timed out under load
        return None


def _wait(what: str, check: Callable[[], bool], timeout: float, every: float = POLL) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if check():
            return True
        time.sleep(every)
    infra.note(f"gave up waiting for {what} after {timeout:.0f} s")
    return False


# --- the run ------------------------------------------------------------------------------------


@dataclass
class Startup:
    build_seconds: float = 0.0
    insert_seconds: float = 0.0
    # seconds after the controller's spawn
    assigned_at: float | None = None  # every monitor on some agent
    placed_at: float | None = None  # every monitor on the agent placement gives it, alone
    held_at: float | None = None  # each agent holds what placement gives it
    first_results_at: float | None = None
    assigned: int = 0
    placed: int = 0
    held: int = 0
    with_result: int = 0
    cpu_to_placed: float = 0.0
    expected: dict[str, int] = field(default_factory=dict)
    stopped: str = ""  # why placement was not reached


@dataclass
class Event:
    name: str
    seconds: float = math.nan
    raw_cpu: float = math.nan
    net_cpu: float = math.nan
    note: str = ""


@dataclass
class Failover:
    monitors: int = 0
    detected_after: float = math.nan  # seconds from the kill to agents_online dropping
    delays: list[float] = field(default_factory=list)
    not_taken: int = 0
    missed: list[int] = field(default_factory=list)


@dataclass
class Account:
    agent: str
    produced: int
    errors: int
    stored: int

    @property
    def lost(self) -> int:
        """Results counted as produced by the scrape that are not stored: each started before
        the scrape, so it would be among the rows counted. (Stored beyond produced: checks in
        flight at the scrape, started before it and counted after.)"""
        return max(0, self.produced - self.stored)


class Run:
    def __init__(self, fleet: Fleet, db_path: Path, n: int, interval: int, keepalive: int) -> None:
        self.fleet = fleet
        self.db_path = db_path
        self.n = n
        self.interval = interval
        self.keepalive = keepalive
        self.detection = 1.5 * keepalive
        self._db: Db | None = None
        self._victim_monitors: set[str] = set()
        self._last_scrape_us = 0

    @property
    def db(self) -> Db:
        if self._db is None:
            self._db = Db(self.db_path)
        return self._db

    def close(self) -> None:
        if self._db is not None:
            self._db.close()

    # 1 ---------------------------------------------------------------------------------------

    def held_by(self) -> dict[str, int]:
        """Monitors each agent holds (its picket_agent_assignments); -1: no answer."""
        held = {}
        for name, agent in self.fleet.agents.items():
            samples = _try(agent.samples)
            held[name] = round(total(samples, "picket_agent_assignments")) if samples else -1
        return held

    def expected(self) -> dict[str, str] | None:
        """Monitor -> the agent rendezvous hashing gives it once all three servers are known
        (the controller's own function), or None before that."""
        from controller.assigner import rendezvous
        from controller.db.store import ServerRow

        rows = self.db.conn.execute("SELECT id, agent_id, capacity FROM server").fetchall()
        if len(rows) < len(AGENTS):
            return None
        servers = [
            ServerRow(int(i), a, 0, CHECKPOINT, 0, [], [], True, int(c), []) for i, a, c in rows
        ]
        guids = [g for (g,) in self.db.conn.execute("SELECT guid FROM monitor")]
        return {g: rendezvous(g, servers).agent_id for g in guids}

    def startup(self, result: Startup) -> bool:
        fleet = self.fleet
        for agent in fleet.agents.values():
            agent.start(fleet.stack)
        for agent in fleet.agents.values():
            assert agent.child is not None
            infra.wait_port(agent.metrics_port, agent.child, within=START_TIMEOUT)
        t0 = fleet.start_controller()
        last_print = 0.0
        expected: dict[str, str] | None = None
        per_agent: dict[str, int] = {}
        deadline = t0 + PLACEMENT_TIMEOUT
        while time.monotonic() < deadline:
            fleet.check_alive()
            now = time.monotonic() - t0
            try:
                result.assigned = self.db.assigned()
                result.with_result = self.db.with_result()
                if expected is None and (expected := self.expected()) is not None:
                    per_agent = {a: 0 for a in AGENTS}
                    for agent in expected.values():
                        per_agent[agent] += 1
                if expected is not None:
                    rows = self.db.conn.execute("SELECT monitor_guid, agent_id FROM assignment")
                    where: dict[str, list[str]] = {}
                    for guid, agent in rows:
                        where.setdefault(guid, []).append(agent)
                    result.placed = sum(1 for g, a in expected.items() if where.get(g) == [a])
            except sqlite3.OperationalError:  # the controller has not migrated yet
                pass
            held = self.held_by()
            result.held = sum(max(0, h) for h in held.values())
            if result.assigned >= self.n and result.assigned_at is None:
                result.assigned_at = now
            if result.placed >= self.n and result.placed_at is None:
                result.placed_at = now
                result.cpu_to_placed = fleet.controller_cpu()
                deadline = max(deadline, time.monotonic() + self.interval + 60)
            if result.placed_at is not None and held == per_agent and result.held_at is None:
                result.held_at = now
            if result.with_result >= self.n and result.first_results_at is None:
                result.first_results_at = now
            if None not in (result.placed_at, result.held_at, result.first_results_at):
                break
            if now - last_print >= 15:
                last_print = now
                infra.note(
                    f"{now:5.0f} s after the controller's spawn: {result.assigned:,} on an "
                    f"agent, {result.placed:,} where placement puts them, {result.held:,} held "
                    f"by the agents, {result.with_result:,} with a result"
                )
            time.sleep(max(POLL, self.n / 50_000))  # reading 100,000 rows takes a while
        if result.placed_at is None:
            result.cpu_to_placed = fleet.controller_cpu()
            samples = _try(fleet.controller_samples) or {}
            shares = ", ".join(f"{agent} {count:,}" for agent, count in _assigned(samples))
            servers = ", ".join(sorted(self.db.server_ids())) or "none"
            pending = total(samples, "picket_control_messages_pending")
            result.stopped = (
                f"not placed after {PLACEMENT_TIMEOUT:.0f} s: servers registered (hellos "
                f"handled): {servers}; hellos and presence waiting: {pending:.0f}; the "
                f"controller's picket_assignments: {shares or '-'}"
            )
        result.expected = per_agent
        return None not in (result.placed_at, result.held_at, result.first_results_at)

    # 2 + 3 -----------------------------------------------------------------------------------

    def baseline(self) -> tuple[float, float, float]:
        """The controller's CPU rate (cores) at steady state, scraping its metrics as often as
        the event measurements do, the results it stored per second meanwhile, and its
        slowest answer to a scrape (its event loop busy)."""
        fleet = self.fleet
        stored0 = total(fleet.controller_samples(), "picket_results_ingested_total")
        c0, t0 = fleet.controller_cpu(), time.monotonic()
        slowest = 0.0
        while time.monotonic() - t0 < BASELINE_SECONDS:
            asked = time.monotonic()
            _try(fleet.controller_samples)
            slowest = max(slowest, time.monotonic() - asked)
            time.sleep(EVENT_POLL)
        rate = (fleet.controller_cpu() - c0) / (time.monotonic() - t0)
        stored = total(fleet.controller_samples(), "picket_results_ingested_total") - stored0
        return rate, stored / (time.monotonic() - t0), slowest

    def _until_quiet(self, baseline: float, timeout: float) -> bool:
        """Until the controller spends no more than baseline + QUIET_MARGIN cores over
        QUIET_SAMPLES consecutive 1-s windows and has no hello or presence waiting."""
        fleet = self.fleet
        deadline = time.monotonic() + timeout
        quiet = 0
        while time.monotonic() < deadline:
            c0, t0 = fleet.controller_cpu(), time.monotonic()
            pending = 0.0
            while time.monotonic() - t0 < 1.0:
                samples = _try(fleet.controller_samples)
                pending = max(pending, total(samples or {}, "picket_control_messages_pending"))
                time.sleep(EVENT_POLL)
            rate = (fleet.controller_cpu() - c0) / (time.monotonic() - t0)
            quiet = quiet + 1 if rate <= baseline + QUIET_MARGIN and pending == 0 else 0
            if quiet >= QUIET_SAMPLES:
                return True
        return False

    def hello(self, baseline: float) -> Event:
        """The controller's CPU on a hello from a known, online agent: its own retained hello
        published again (mosquitto_pub), until the controller sends that agent its Sync, the
        last thing it does for a hello (a mosquitto_sub subscribed a second before)."""
        from shared import topics

        agent = AGENTS[0]
        event = Event(f"hello again from {agent} (no presence change)")
        try:
            sub, pub = infra.require("mosquitto_sub"), infra.require("mosquitto_pub")
        except infra.Missing as exc:
            event.note = f"not measured: {exc}"
            return event
        fleet = self.fleet
        broker = ["-h", LOOPBACK, "-p", str(fleet.broker_port)]
        hello = subprocess.run(
            [sub, *broker, "-t", topics.hello(agent), "-C", "1", "-W", "10", "-N"],
            capture_output=True,
            timeout=30,
            check=False,
        ).stdout
        if not hello:
            event.note = "its retained hello was not found"
            return event
        wait = str(int(EVENT_TIMEOUT))
        waiter = subprocess.Popen(
            [sub, *broker, "-t", topics.sync(agent), "-C", "1", "-W", wait],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,  # a Sync of 33,000 monitors would fill a pipe
            stderr=subprocess.DEVNULL,
            start_new_session=True,
            preexec_fn=infra._die_with_parent,
        )
        try:
            # its subscription is made within milliseconds on loopback (mosquitto_sub cannot
            # say when: its debug output to a pipe is buffered)
            time.sleep(1.0)
            c0, t0 = fleet.controller_cpu(), time.monotonic()
            subprocess.run(
                [pub, *broker, "-t", topics.hello(agent), "-r", "-s"],
                input=hello,
                capture_output=True,
                timeout=30,
                check=True,
            )
            code = waiter.wait(timeout=EVENT_TIMEOUT + 10)
            event.seconds = time.monotonic() - t0
            event.raw_cpu = fleet.controller_cpu() - c0
            event.net_cpu = net_cpu(event.raw_cpu, baseline, event.seconds)
            if code != 0:
                event.note = f"no Sync within {EVENT_TIMEOUT:.0f} s"
        finally:
            if waiter.poll() is None:
                waiter.kill()
                waiter.wait(timeout=5)
        return event

    def kill(
        self, baseline: float, failover: Failover, silent: bool
    ) -> tuple[Event, int, int, int, Samples]:
        """Kills the victim; measures the controller's CPU on noticing it. Returns the event,
        the kill time (µs), the last check id before it, the victim's server id and its last
        metrics scrape."""
        fleet = self.fleet
        victim = fleet.agents[VICTIM]
        event = Event("agent lost (presence offline, its monitors to its peers)")
        server = fleet.controller_samples()
        online0 = total(server, "picket_agents_online")
        failovers0 = total(server, "picket_failovers_total")
        mine = self.db.assigned_to(VICTIM)
        failover.monitors = len(mine)
        self._victim_monitors = mine
        server_id = self.db.server_ids()[VICTIM]
        last_id = self.db.max_check_id()
        last = victim.samples()
        # after the scrape: every check it counted started before this
        self._last_scrape_us = _now_us()
        kill_us = _now_us()
        victim.signal(signal.SIGSTOP if silent else signal.SIGKILL)
        t_kill = time.monotonic()
        how = "froze (SIGSTOP, its connection open and silent)" if silent else "killed (SIGKILL)"
        infra.note(f"{how} {VICTIM}, agent and check worker, holding {len(mine):,} monitors")
        # the controller notices when the broker publishes the agent's will
        noticed = _wait(
            "the controller to mark the agent offline",
            lambda: fleet.metric("picket_agents_online", online0) < online0,
            timeout=4 * self.keepalive + 30,
            every=EVENT_POLL,
        )
        if silent:
            victim.signal(signal.SIGKILL)  # it never comes back with what it had
        if not noticed:
            event.note = "not noticed"
            return event, kill_us, last_id, server_id, last
        c0, t0 = fleet.controller_cpu(), time.monotonic()
        failover.detected_after = t0 - t_kill
        moved = _wait(
            "the controller to move the monitors",
            lambda: fleet.metric("picket_failovers_total", failovers0) > failovers0,
            timeout=EVENT_TIMEOUT,
            every=EVENT_POLL,
        )
        event.seconds = time.monotonic() - t0
        event.raw_cpu = fleet.controller_cpu() - c0
        event.net_cpu = net_cpu(event.raw_cpu, baseline, event.seconds)
        if not moved:
            event.note = f"not done after {EVENT_TIMEOUT:.0f} s"
        return event, kill_us, last_id, server_id, last

    def takeover(self, failover: Failover, kill_us: int, last_id: int, server_id: int) -> None:
        mine = self._victim_monitors
        bound = self.detection + self.interval

        def done() -> bool:
            self.fleet.check_alive()
            found = self.db.taken_over(last_id, kill_us, server_id)
            return len(mine & set(found)) >= len(mine)

        _wait(
            "every monitor of the lost agent to have a result from a peer",
            done,
            timeout=bound + self.interval + 30,
        )

    def restart(self, baseline: float) -> Event:
        fleet = self.fleet
        victim = fleet.agents[VICTIM]
        event = Event("agent back (hello + presence online, a share back to it)")
        server = fleet.controller_samples()
        moved0 = total(server, 'picket_monitors_moved_total{reason="return"}')
        c0, t0 = fleet.controller_cpu(), time.monotonic()
        victim.start(fleet.stack)
        back = _wait(
            "the controller to move monitors back",
            lambda: fleet.metric('picket_monitors_moved_total{reason="return"}', moved0) > moved0,
            timeout=EVENT_TIMEOUT,
            every=EVENT_POLL,
        )
        quiet = back and self._until_quiet(baseline, EVENT_TIMEOUT)
        # the quiet windows themselves are not the event's
        event.seconds = time.monotonic() - t0 - (QUIET_SAMPLES if quiet else 0)
        event.raw_cpu = fleet.controller_cpu() - c0
        event.raw_cpu -= baseline * QUIET_SAMPLES if quiet else 0
        event.net_cpu = net_cpu(event.raw_cpu, baseline, event.seconds)
        if not back:
            event.note = "nothing moved back"
        elif not quiet:
            event.note = f"controller not quiet after {EVENT_TIMEOUT:.0f} s"
        return event

    def failover_figures(
        self, failover: Failover, kill_us: int, last_id: int, server_id: int
    ) -> None:
        from controller.assigner import phase_offset

        mine = self._victim_monitors
        found = self.db.taken_over(last_id, kill_us, server_id)
        kill_s = kill_us / 1e6
        for guid in mine:
            if guid in found:
                failover.delays.append((found[guid] - kill_us) / 1e6)
        failover.not_taken = len(mine) - len(failover.delays)
        failover.delays.sort()
        # slots stored since two intervals before the kill
        since = kill_us - int(2 * self.interval * 1e6)
        stored: dict[str, list[int]] = {}
        takeover: dict[str, int] = {}
        offsets = {g: phase_offset(g, self.interval) for g in mine}
        for guid, server, scheduled_us in self.db.scheduled_since(since):
            if guid not in mine:
                continue
            k = slot_index(scheduled_us / 1e6, self.interval, offsets[guid])
            stored.setdefault(guid, []).append(k)
            if server != server_id and scheduled_us >= kill_us:
                takeover[guid] = min(takeover.get(guid, k), k)
        now = time.time()
        for guid in mine:
            kill_slot = math.floor((kill_s - offsets[guid]) / self.interval)
            now_slot = math.floor((now - offsets[guid]) / self.interval)
            failover.missed.append(
                missed_slots(stored.get(guid, []), kill_slot, takeover.get(guid), now_slot)
            )

    # 4 ---------------------------------------------------------------------------------------

    def accounts(
        self, kill_us: int, restart_us: int, last: Samples
    ) -> tuple[list[Account], Samples]:
        """Produced against stored, per agent run, after the outboxes drained."""
        fleet = self.fleet
        scraped: dict[str, Samples] = {}
        scraped_us: dict[str, int] = {}
        for name, agent in fleet.agents.items():
            scraped[name] = agent.samples()
            scraped_us[name] = _now_us()  # every check the scrape counted started before
        end_us = max(scraped_us.values())
        servers = self.db.server_ids()

        def outboxes() -> float:
            return sum(
                total(a.samples(), "picket_agent_outbox_results") for a in fleet.agents.values()
            )

        stable = {"count": -1, "same": 0}

        def drained() -> bool:
            # rows started before the scrape stop growing, and the outboxes hold only newer ones
            count = self.db.scalar("SELECT COUNT(*) FROM monitor_check WHERE ts_us <= ?", end_us)
            stable["same"] = stable["same"] + 1 if count == stable["count"] else 0
            stable["count"] = count
            return stable["same"] >= 3 and outboxes() < 2 * self.n / self.interval + 1000

        _wait("the results to drain", drained, timeout=DRAIN_TIMEOUT)
        accounts = []
        for name, samples in scraped.items():
            sid = servers[name]
            produced = round(total(samples, "picket_agent_checks_total"))
            errors = round(_errors(samples))
            if name == VICTIM:
                before = round(total(last, "picket_agent_checks_total"))
                accounts.append(
                    Account(
                        f"{name} (killed run, to its last scrape)",
                        before,
                        round(_errors(last)),
                        self.db.stored(sid, 0, self._last_scrape_us),
                    )
                )
                accounts.append(
                    Account(
                        f"{name} (killed run, last scrape to kill)",
                        0,
                        0,
                        self.db.stored(sid, self._last_scrape_us + 1, kill_us),
                    )
                )
                accounts.append(
                    Account(
                        f"{name} (restarted)",
                        produced,
                        errors,
                        self.db.stored(sid, restart_us, scraped_us[name]),
                    )
                )
            else:
                stored = self.db.stored(sid, 0, scraped_us[name])
                accounts.append(Account(name, produced, errors, stored))
        return accounts, fleet.controller_samples()


def _assigned(samples: Samples) -> list[tuple[str, int]]:
    """The controller's picket_assignments, (agent, monitors)."""
    return [
        (key[len(ASSIGNED) :].split('"', 1)[0], round(value))
        for key, value in sorted(samples.items())
        if key.startswith(ASSIGNED)
    ]


def _load() -> str:
    return ", ".join(f"{x:.1f}" for x in os.getloadavg())


def _s(value: float | None) -> str:
    return "-" if value is None or math.isnan(value) else f"{value:.1f}"


def main(args: argparse.Namespace) -> list[Summary]:
    n = max(10, min(int(getattr(args, "monitors", DEFAULT_MONITORS)), 1_000_000))
    interval = max(10, min(int(getattr(args, "interval", DEFAULT_INTERVAL)), 3600))
    keepalive = max(1, min(int(getattr(args, "keepalive", DEFAULT_KEEPALIVE)), 60))
    detection = 1.5 * keepalive
    silent = bool(getattr(args, "silent_loss", False))
    print(
        f"\n=== placement: {n:,} HTTP monitors every {interval} s on three agents of one "
        f"checkpoint ({n / interval:,.0f} checks/s), agent keepalive {keepalive} s "
        f"(detection {detection:g} s) ==="
    )
    if find_mosquitto() is None:
        raise infra.Missing("`mosquitto` is not installed: apt-get install -y mosquitto")
    summaries: list[Summary] = []
    load = _load()
    infra.note(f"load average (1, 5, 15 min): {load}; other work on this machine skews the run")
    with ExitStack() as stack:
        nginx = infra.Nginx(stack)
        fleet = Fleet(stack, keepalive)
        startup = Startup()
        startup.build_seconds, startup.insert_seconds = create_monitors(
            fleet.database, n, nginx.url, interval
        )
        infra.note(
            f"target: nginx (1 worker) at {nginx.url}; {n:,} monitors built (validated as "
            f"POST /Monitor does) in {startup.build_seconds:.1f} s and stored with bulk "
            f"INSERTs in {startup.insert_seconds:.1f} s (the REST API would take far longer)"
        )
        fleet.start_broker()
        run = Run(fleet, fleet.database, n, interval, keepalive)
        stack.callback(run.close)
        complete = run.startup(startup)
        _print_startup(startup, n, interval)
        summaries += _startup_summaries(startup, n)
        if not complete:
            infra.note("startup did not complete: the failover is not measured")
            return summaries
        baseline, stored_rate, slowest = run.baseline()
        expected = n / interval
        infra.note(
            f"steady state over {BASELINE_SECONDS:g} s (one periodic reconcile pass): the "
            f"controller used {100 * baseline:.0f}% of a core and stored {stored_rate:,.0f} "
            f"results/s (the schedule asks {expected:,.0f}/s); its slowest answer to a metrics "
            f"scrape: {slowest:.2f} s"
        )
        lagging = stored_rate < LAG_SHARE * expected
        if lagging:
            infra.note(
                f"RESULTS LAG: stored {stored_rate / expected:.0%} of the scheduled rate; this "
                f"machine does not keep up with {n:,} monitors every {interval} s (try a smaller "
                "--monitors); the figures below are those of an overloaded system"
            )
        again = run.hello(baseline)
        failover = Failover()
        victim = fleet.agents[VICTIM]
        lost, kill_us, last_id, server_id, last = run.kill(baseline, failover, silent)
        run.takeover(failover, kill_us, last_id, server_id)
        restart_us = _now_us()
        back = run.restart(baseline)
        assert victim.child is not None
        accounts, controller = run.accounts(kill_us, restart_us, last)
        # after the drain: the slots the killed run's outbox held are stored by now
        run.failover_figures(failover, kill_us, last_id, server_id)
        _print_events([again, lost, back], baseline)
        summaries += _print_failover(failover, interval, keepalive, detection, lost, silent)
        summaries += _print_accounts(accounts, controller, fleet)
        summaries.append(
            Summary("placement", "slowest controller /metrics at steady state, s", f"{slowest:.2f}")
        )
        summaries.append(
            Summary(
                "placement",
                "results stored/s at steady state",
                f"{stored_rate:,.0f}",
                f">= {LAG_SHARE:.0%} of {expected:,.0f}",
                not lagging,
            )
        )
        infra.note(
            f"load average at the end: {_load()} (at the start: {load}); stopping the agents, "
            "the controller, the broker and nginx"
        )
    return summaries


def _print_startup(s: Startup, n: int, interval: int) -> None:
    shares = ", ".join(f"{a} {c:,}" for a, c in s.expected.items()) or "-"
    infra.table(
        f"placement: from the controller's spawn ({n:,} monitors stored, 3 agents connected)",
        ["step", "seconds", "reached"],
        [
            ["every monitor on some agent", _s(s.assigned_at), f"{s.assigned:,}"],
            [
                "every monitor placed: on its rendezvous agent only",
                _s(s.placed_at),
                f"{s.placed:,}",
            ],
            ["each agent holds its share", _s(s.held_at), f"{s.held:,}"],
            ["every monitor with a stored result", _s(s.first_results_at), f"{s.with_result:,}"],
        ],
    )
    infra.note(
        "on an agent / placed: the controller's assignment table (a row per publish), read each\n"
        "second; placed compares it with the controller's own rendezvous function over the\n"
        f"three servers ({shares}). Held: each agent's picket_agent_assignments equals its\n"
        f"share. Controller CPU from its spawn until placed (or the time-out): "
        f"{s.cpu_to_placed:.1f} s (migrations,\n"
        "load, three hellos, placement). A first result comes up to one interval\n"
        f"({interval} s) after the assignment: the monitor's slot is its phase."
    )
    if s.stopped:
        infra.note(s.stopped)


def _startup_summaries(s: Startup, n: int) -> list[Summary]:
    return [
        Summary(
            "placement",
            f"{n:,} monitors placed, s",
            _s(s.placed_at)
            if s.placed_at is not None
            else f"not in {PLACEMENT_TIMEOUT:.0f} ({s.assigned:,} on an agent)",
            "< 30",
            s.placed_at is not None and s.placed_at < 30,
        ),
        Summary("placement", "controller CPU to place them, s", f"{s.cpu_to_placed:.1f}"),
        Summary("placement", "every monitor has a result, s", _s(s.first_results_at)),
    ]


def _print_events(events: list[Event], baseline: float) -> None:
    infra.table(
        "placement: the controller's CPU per hello and per presence change",
        ["event", "seconds", "CPU s raw", "CPU s net", "note"],
        [
            [e.name, _s(e.seconds), f"{e.raw_cpu:.2f}", f"{e.net_cpu:.2f}", e.note or "-"]
            for e in events
        ],
    )
    infra.note(
        f"raw: the controller's utime + stime over the event; net: minus its steady rate "
        f"({100 * baseline:.0f}% of a core, storing results) times the event's length. Hello: "
        "from publishing the agent's own retained hello again until the controller sent it its "
        "Sync (it re-sends all that agent's assignments first). Lost: from "
        f"the controller marking the agent offline until it counted the failover. Back: from the "
        f"agent's spawn until the controller was quiet again (its CPU within {QUIET_MARGIN:g} "
        f"core of the steady rate for {QUIET_SAMPLES} s, no hello or presence waiting)."
    )


def _print_failover(
    f: Failover,
    interval: int,
    keepalive: int,
    detection: float,
    lost: Event,
    silent: bool,
) -> list[Summary]:
    how = "SIGSTOP (silent), then kill -9," if silent else "kill -9"
    goal = interval + detection
    p50 = percentile(f.delays, 50)
    p99 = percentile(f.delays, 99)
    worst = f.delays[-1] if f.delays else math.nan
    missed_total = sum(f.missed)
    missed_monitors = sum(1 for m in f.missed if m)
    allowed = math.ceil(2 * keepalive / interval)
    infra.table(
        f"placement: {how} of {VICTIM} ({f.monitors:,} monitors)",
        ["figure", "value"],
        [
            ["controller noticed after, s", _s(f.detected_after)],
            ["monitors moved to peers in, s", _s(lost.seconds)],
            ["taken over (a peer's result)", f"{len(f.delays):,} of {f.monitors:,}"],
            ["delay from the kill p50, s", _s(p50)],
            ["p99, s", _s(p99)],
            ["max, s", _s(worst)],
            ["slots missed, all monitors", f"{missed_total:,}"],
            ["monitors that missed a slot", f"{missed_monitors:,}"],
            ["most slots missed by one monitor", f"{max(f.missed, default=0)}"],
        ],
    )
    infra.note(
        f"delay: from the kill to the start of the monitor's first check by a peer (stored). "
        f"Goal: within one interval + detection = {interval} + 1.5 x {keepalive} = {goal:g} s; "
        f"slots missed per monitor at most ceil(2 x keepalive / interval) = {allowed}."
    )
    met = bool(f.delays) and f.not_taken == 0 and worst <= goal
    return [
        Summary(
            "placement",
            "failover max delay, s",
            _s(worst),
            f"<= {goal:g}",
            met if f.monitors else None,
        ),
        Summary("placement", "failover p50 / p99, s", f"{_s(p50)} / {_s(p99)}"),
        Summary(
            "placement",
            "slots missed (monitors missing one)",
            f"{missed_total:,} ({missed_monitors:,})",
            f"<= {allowed} per monitor",
            max(f.missed, default=0) <= allowed if f.monitors else None,
        ),
    ]


def _print_accounts(accounts: list[Account], controller: Samples, fleet: Fleet) -> list[Summary]:
    infra.table(
        "placement: results produced and stored, per agent run",
        ["agent run", "produced", "failed", "stored", "not stored"],
        [[a.agent, f"{a.produced:,}", a.errors, f"{a.stored:,}", a.lost] for a in accounts],
    )
    refused = {
        k: round(v)
        for k, v in controller.items()
        if k.startswith("picket_results_refused_total") and v
    }
    dropped = sum(
        total(_try(a.samples) or {}, "picket_agent_outbox_dropped_results_total")
        for a in fleet.agents.values()
    )
    # the killed run's last moments die with it by design (see the module's docstring)
    live = sum(a.lost for a in accounts if "killed" not in a.agent)
    at_kill = sum(a.lost for a in accounts if "killed" in a.agent)
    lost = max(0, live - sum(refused.values()))
    infra.note(
        "produced: the run's picket_agent_checks_total (checks completed, failed ones among\n"
        "them) at the scrape, after which the benchmark waits for the outboxes to drain;\n"
        "stored: rows from that server whose check started up to the scrape (the killed run:\n"
        "up to its last scrape, just before the kill, and from then to the kill, which no\n"
        "counter saw). A check counted by the scrape started before it, so not stored =\n"
        "produced - stored when positive (stored beyond produced are checks in flight at the\n"
        "scrape: started before, counted after). Not stored is either refused by the controller\n"
        "(picket_results_refused_total: e.g. not_assigned, a result for a monitor that was not\n"
        "the agent's at that slot) or lost. The killed run loses by design what it completed\n"
        "but had not yet written to its outbox (up to PICKET_BATCH_INTERVAL_MS, 200 ms).\n"
        f"controller refusals: {refused or 'none'}; agents' outbox drops: {dropped:.0f}; "
        f"duplicates dropped: {total(controller, 'picket_results_duplicate_total'):.0f}\n"
        f"live runs: {live} not stored - {sum(refused.values())} refused = {lost} lost"
    )
    return [
        Summary("placement", "results lost (live runs)", f"{lost}", "0", lost == 0),
        Summary("placement", "results refused by the controller", f"{sum(refused.values())}"),
        Summary("placement", "results lost at the kill -9", f"{at_kill}"),
    ]
