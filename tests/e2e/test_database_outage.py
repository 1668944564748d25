"""The database goes away for 30 s under load: the controller stays up and bounded, the agent
keeps checking, and afterwards every result is stored exactly once.

The PostgreSQL server is a private one the test creates, stops and starts (tests/postgres.py),
never the shared one on 5432.
"""

from __future__ import annotations

import asyncio
import itertools
import time
from pathlib import Path

import aiohttp
import pytest

from shared.timefmt import parse
from tests.e2e.conftest import Stack, ready
from tests.helpers import Mosquitto, Target, http_monitor, scrape, wait_for
from tests.postgres import private_cluster

pytestmark = pytest.mark.e2e

MONITORS = 40  # one-second HTTP monitors on a loopback target
OUTAGE_SECONDS = 30
RSS_GROWTH_LIMIT = 200 * 1024 * 1024
# small, so that the outage also fills the ingest queue and batches are refused and resent
QUEUE_BYTES = 40_000


def rss_bytes(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    raise AssertionError(f"no VmRSS for process {pid}")


async def test_a_database_outage_under_load_loses_and_doubles_no_result(
    stack: Stack, mosquitto: Mosquitto, target: Target, http: aiohttp.ClientSession
) -> None:
    with private_cluster() as cluster:
        url = await cluster.create_database("picket")
        controller = stack.controller(
            mosquitto.url, url, PICKET_INGEST_QUEUE_MAX_BYTES=str(QUEUE_BYTES)
        )
        stack.agent(mosquitto.url)
        api = await ready(stack, http)
        guids = [
            await api.create_monitor(http_monitor(f"outage {n}", f"{target.base}/ok"))
            for n in range(MONITORS)
        ]

        async def all_checking() -> bool:
            counts = await asyncio.gather(*(api.checks(g) for g in guids))
            return all(len(c) >= 2 for c in counts)

        await wait_for(all_checking, "every monitor to have stored checks", within=120)

        async def checks_run() -> float:
            metrics = await scrape(http, stack.agent_metrics)
            return metrics.get('picket_agent_checks_total{outcome="ok",type="Http"}', 0.0)

        async def controller_metrics() -> dict[str, float]:
            return await scrape(http, f"{stack.api}/metrics")

        rss_before = rss_bytes(controller.proc.pid)
        rss_peak = rss_before
        await asyncio.to_thread(cluster.stop)
        ran_before = await checks_run()
        answered_503 = False
        deadline = time.monotonic() + OUTAGE_SECONDS
        while time.monotonic() < deadline:  # the outage lasts this long: sample it meanwhile
            assert controller.proc.poll() is None, controller.output()[-5000:]
            rss_peak = max(rss_peak, rss_bytes(controller.proc.pid))
            if not answered_503:
                status, body = await api.call("GET", "/api/v4/Monitor")
                assert status in (200, 503), body  # 200 from a cache is fine, never a 500
                answered_503 = status == 503
            await asyncio.sleep(1.0)
        metrics = await controller_metrics()
        assert metrics["picket_database_up"] == 0
        refused = metrics['picket_result_batches_refused_total{reason="queue_full"}']
        assert refused >= 1, metrics
        assert metrics["picket_ingest_queue_bytes"] <= QUEUE_BYTES + 20_000
        assert answered_503, "the API said the database is away"
        ran_during = await checks_run() - ran_before
        assert ran_during >= MONITORS * OUTAGE_SECONDS * 0.8, "the agent kept checking"

        await asyncio.to_thread(cluster.start)

        async def database_back() -> bool:
            return (await controller_metrics())["picket_database_up"] == 1

        await wait_for(database_back, "the controller to find the database again")
        for guid in guids:
            status, body = await api.call(
                "PATCH", f"/api/v4/Monitor/{guid}", json={"IsActive": False}
            )
            assert status == 204, body

        async def drained() -> bool:
            metrics = await scrape(http, stack.agent_metrics)
            return metrics["picket_agent_assignments"] == 0 and (
                metrics["picket_agent_outbox_results"] == 0
            )

        await wait_for(drained, "the agent to stop and its outbox to drain", within=180)

        async def stored() -> list[list[float]]:
            checks = await asyncio.gather(*(api.checks(g) for g in guids))
            return [
                sorted(round(parse(c["Attributes"]["ScheduledTime"]), 3) for c in per_monitor)
                for per_monitor in checks
            ]

        async def all_stored() -> bool:  # the workers' counts reach /metrics within a second
            return sum(len(slots) for slots in await stored()) == await checks_run()

        await wait_for(all_stored, "every check the agent ran to be stored", within=120)
        rss_peak = max(rss_peak, rss_bytes(controller.proc.pid))
        for guid, slots in zip(guids, await stored(), strict=True):
            assert len(slots) == len(set(slots)), f"monitor {guid}: a slot stored twice"
            gaps = [round(b - a, 3) for a, b in itertools.pairwise(slots)]
            assert all(gap == 1.0 for gap in gaps), f"monitor {guid}: missing slots: {gaps}"
            assert slots[-1] - slots[0] >= OUTAGE_SECONDS, f"monitor {guid}: too few slots"
        assert rss_peak - rss_before < RSS_GROWTH_LIMIT, (rss_before, rss_peak)
        print(
            f"controller RSS {rss_before / 2**20:.1f} MiB before, {rss_peak / 2**20:.1f} MiB at "
            f"most; {ran_during:.0f} checks during the outage; {refused:.0f} batches refused"
        )

        output = controller.output()
        outage_lines = [line for line in output.splitlines() if "unavailable" in line]
        # the store says so once per outage; the ingest queue once per overload
        assert len(outage_lines) == 1, outage_lines  # once per outage, not per batch or request
        assert "Traceback" not in output, output[-5000:]
        assert stack.stop_all() == {"agent-1": 0, "controller": 0}
