"""Several `picket agent` processes at three checkpoints on one private broker: rotation visits
every checkpoint in turn, once per slot in all; an error is confirmed from another checkpoint;
concurrent monitoring stores one concurrent check per slot with its partials, its level the
thresholds'."""

from __future__ import annotations

import itertools
from typing import Any

import aiohttp
import pytest
from aiohttp import web

from tests.e2e.conftest import Stack
from tests.helpers import Api, Mosquitto, Target, free_port, http_monitor, scrape, wait_for

pytestmark = pytest.mark.e2e

CITIES = ("Amsterdam", "Boston", "Chennai")


async def fleet(stack: Stack, mosquitto: Mosquitto, http: aiohttp.ClientSession) -> Api:
    stack.controller(mosquitto.url, f"sqlite+aiosqlite:///{stack.workdir / 'picket.db'}")
    for n, city in enumerate(CITIES):
        stack.agent(
            mosquitto.url,
            f"agent-{n}",
            PICKET_CHECKPOINT=city,
            PICKET_DATA_DIR=str(stack.workdir / f"agent-{n}"),
            PICKET_METRICS_LISTEN=f"127.0.0.1:{free_port()}",
            PICKET_WORKERS="1",
        )
    admin = Api(http, stack.api, "admin", stack.password)

    async def all_online() -> bool:
        status, body = await admin.call("GET", "/api/v4/Checkpoint")
        if status != 200:
            return False
        online = [c for c in body["Data"] if c["Attributes"].get("ServersOnline")]
        return len(online) == len(CITIES)

    await wait_for(all_online, "three checkpoints with a live agent", within=120)
    status, account = await admin.call("POST", "/api/v4/Register")
    assert status == 201, account
    return Api(http, stack.api, account["UserName"], account["Password"])


def _attrs(check: dict[str, Any]) -> dict[str, Any]:
    return check["Attributes"]  # type: ignore[no-any-return]


async def test_rotation_visits_every_checkpoint_in_turn_and_confirms_elsewhere(
    stack: Stack, mosquitto: Mosquitto, target: Target, http: aiohttp.ClientSession
) -> None:
    api = await fleet(stack, mosquitto, http)
    guid = await api.create_monitor(
        http_monitor("rotating", f"{target.base}/ok", CheckIntervalSeconds=2)
    )

    async def enough() -> list[dict[str, Any]] | None:
        checks = [_attrs(c) for c in await api.checks(guid)]
        return checks if len(checks) >= 12 else None

    checks = sorted(
        await wait_for(enough, "twelve checks", within=120), key=lambda c: c["ScheduledTime"]
    )
    times = [c["ScheduledTime"] for c in checks]
    # one check per slot in all: no slot run twice
    assert len(set(times)) == len(times), times
    places = [c["CheckpointId"] for c in checks]
    assert len(set(places)) == 3, places
    # in turn: two consecutive slots never from the same checkpoint, and every run of three
    # consecutive slots visits all three
    consecutive = list(itertools.pairwise(places))
    assert all(a != b for a, b in consecutive), places
    triples = [places[i : i + 3] for i in range(len(places) - 2)]
    assert sum(len(set(t)) == 3 for t in triples) >= len(triples) - 2, places

    # an error is re-checked at once from another checkpoint, and confirmed there
    failing = await api.create_monitor(
        http_monitor("failing", f"{target.base}/status/500", CheckIntervalSeconds=3)
    )

    async def confirmation() -> dict[str, Any] | None:
        found = [_attrs(c) for c in await api.checks(failing, ErrorLevel="Unconfirmed")]
        confirmations = [c for c in found if c.get("IsConfirmation")]
        return confirmations[0] if confirmations else None

    confirmed = await wait_for(confirmation, "a confirmation of the failing monitor", within=120)
    assert confirmed["ErrorLevel"] == "Confirmed"
    status, body = await api.call("GET", f"/api/v4/MonitorCheck/{confirmed['ConfirmsCheckId']}")
    assert status == 200, body
    original = body["Data"]["Attributes"]
    assert original["ErrorLevel"] == "Unconfirmed"
    assert original["CheckpointId"] != confirmed["CheckpointId"]
    metrics = await scrape(http, f"{stack.api}/metrics")
    key = 'picket_confirmations_total{outcome="confirmed",where="other_checkpoint"}'
    assert metrics.get(key, 0) >= 1, {k: v for k, v in metrics.items() if "confirm" in k}
    assert not metrics.get(
        'picket_confirmations_total{outcome="confirmed",where="same_checkpoint"}', 0
    )


class OneInThree:
    """Fails every third request: with three checkpoints checking every slot at once, one
    partial check of each slot fails."""

    def __init__(self) -> None:
        self.count = 0
        self.port = free_port()
        self.runner: web.AppRunner | None = None

    async def _handle(self, request: web.Request) -> web.Response:
        self.count += 1
        return web.Response(status=500 if self.count % 3 == 0 else 200, text="x")

    async def __aenter__(self) -> OneInThree:
        app = web.Application()
        app.router.add_get("/", self._handle)
        self.runner = web.AppRunner(app)
        await self.runner.setup()
        await web.TCPSite(self.runner, "127.0.0.1", self.port).start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        assert self.runner is not None
        await self.runner.cleanup()


async def test_concurrent_monitoring_gathers_partials_under_one_check(
    stack: Stack, mosquitto: Mosquitto, http: aiohttp.ClientSession
) -> None:
    api = await fleet(stack, mosquitto, http)
    async with OneInThree() as server:
        guid = await api.create_monitor(
            http_monitor(
                "concurrent",
                f"http://127.0.0.1:{server.port}/",
                CheckIntervalSeconds=3,
                UseConcurrentMonitoring=True,
                ConcurrentUnconfirmedErrorThreshold=30,
                ConcurrentConfirmedErrorThreshold=60,
            )
        )

        async def one_failed_of_three() -> dict[str, Any] | None:
            for check in await api.checks(guid):
                a = _attrs(check)
                if a["PartialChecks"] == 3 and a["FailedPartialChecks"] == 1:
                    return check
            return None

        check = await wait_for(one_failed_of_three, "a slot with one failed partial", within=120)
    a = _attrs(check)
    # 1 of 3 is 33 %: at least the Unconfirmed threshold (30 %), below the Confirmed one (60 %)
    assert (a["IsConcurrentCheck"], a["IsPartialCheck"], a["ErrorLevel"]) == (
        True,
        False,
        "Unconfirmed",
    )
    status, body = await api.call("GET", f"/api/v4/MonitorCheck/{check['Id']}/Concurrent")
    assert status == 200, body
    partials = [_attrs(p) for p in body["Data"]]
    assert len(partials) == 3
    assert all(p["IsPartialCheck"] and not p["IsConcurrentCheck"] for p in partials)
    assert len({p["CheckpointId"] for p in partials}) == 3
    assert sorted(p["ErrorCode"] != 0 for p in partials) == [False, False, True]
    # the list holds concurrent checks only, one per slot
    listed = [_attrs(c) for c in await api.checks(guid)]
    assert all(c["IsConcurrentCheck"] for c in listed)
    slots = [c["ScheduledTime"] for c in listed]
    assert len(set(slots)) == len(slots)
