"""The agent's check workers: one process per core, restarted when they die, never orphaned."""

from __future__ import annotations

import os
import signal
from pathlib import Path

import aiohttp
import pytest

from tests.e2e.conftest import Stack, ready
from tests.helpers import Mosquitto, Target, http_monitor, scrape, wait_for

pytestmark = pytest.mark.e2e

CHECKS_OK = 'picket_agent_checks_total{outcome="ok",type="Http"}'


def children(pid: int) -> list[int]:
    """The live processes whose parent is `pid`."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:
            continue
        fields = stat.rpartition(")")[2].split()  # after "pid (comm)": state, ppid, ...
        if int(fields[1]) == pid and fields[0] != "Z":
            found.append(int(entry.name))
    return found


async def test_a_killed_worker_comes_back_with_its_monitors_and_dies_with_the_agent(
    stack: Stack, mosquitto: Mosquitto, target: Target, http: aiohttp.ClientSession
) -> None:
    stack.controller(mosquitto.url, f"sqlite+aiosqlite:///{stack.workdir / 'picket.db'}")
    agent = stack.agent(mosquitto.url, PICKET_WORKERS="2")
    api = await ready(stack, http)
    guids = [
        await api.create_monitor(http_monitor(f"m{n}", f"{target.base}/ok"))
        for n in range(8)  # spread by hash: both workers very likely run some
    ]

    async def two_workers() -> list[int] | None:
        metrics = await scrape(http, stack.agent_metrics)
        pids = children(agent.proc.pid)
        return pids if metrics["picket_agent_workers"] == 2 and len(pids) == 2 else None

    workers = await wait_for(two_workers, "two check workers")

    async def stored() -> dict[str, int]:
        return {guid: len(await api.checks(guid)) for guid in guids}

    async def every_monitor_checked() -> dict[str, int] | None:
        counts = await stored()
        return counts if min(counts.values()) >= 1 else None

    await wait_for(every_monitor_checked, "a check of every monitor")
    before = (await scrape(http, stack.agent_metrics))[CHECKS_OK]
    os.kill(workers[0], signal.SIGKILL)

    async def restarted() -> bool:
        metrics = await scrape(http, stack.agent_metrics)
        return (
            metrics["picket_agent_worker_restarts_total"] == 1
            and metrics["picket_agent_workers"] == 2
            and workers[0] not in children(agent.proc.pid)
        )

    await wait_for(restarted, "the killed worker to be started again")
    # the dead worker's counts are kept: the total never goes below what it was
    assert (await scrape(http, stack.agent_metrics))[CHECKS_OK] >= before, "counters went back"
    counts = await stored()

    async def all_run_again() -> bool:
        now = await stored()
        return all(now[guid] >= counts[guid] + 2 for guid in guids)

    await wait_for(all_run_again, "every monitor, the dead worker's too, to run on")
    assert "was killed by signal 9; starting it again" in agent.output()

    survivors = children(agent.proc.pid)
    agent.proc.kill()  # no clean stop: the kernel's parent-death signal ends the workers

    async def orphans_gone() -> bool:
        return not any(Path(f"/proc/{pid}").exists() for pid in survivors)

    await wait_for(orphans_gone, "the workers to die with their agent")
