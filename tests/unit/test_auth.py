"""Logins: password checks off the event loop and bounded, failed logins throttled per
(user, address) and per address, unknown users indistinguishable, the credential cache."""

from __future__ import annotations

import asyncio
import base64
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from aiohttp.test_utils import TestServer

from controller.api.common import CONTROLLER
from controller.app import Controller, create_app
from controller.db.store import Store
from controller.settings import ControllerSettings
from tests.helpers import free_port

PASSWORD = "unit-test-password"


def basic(user: str, password: str) -> dict[str, str]:
    return {"Authorization": "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode()}


class Server:
    def __init__(self, server: TestServer) -> None:
        self.server = server
        self.ctl: Controller = server.app[CONTROLLER]  # type: ignore[index]
        self._sessions: dict[str, aiohttp.ClientSession] = {}

    def url(self, path: str) -> str:
        return str(self.server.make_url(path))

    def session(self, source: str = "127.0.0.1") -> aiohttp.ClientSession:
        """A client whose connections come from `source` (any 127.0.0.0/8 address is ours)."""
        if source not in self._sessions:
            connector = aiohttp.TCPConnector(local_addr=(source, 0), force_close=True)
            self._sessions[source] = aiohttp.ClientSession(connector=connector)
        return self._sessions[source]

    async def get(
        self, user: str, password: str, source: str = "127.0.0.1"
    ) -> tuple[int, dict[str, Any], dict[str, str]]:
        async with self.session(source).get(
            self.url("/api/v4/Monitor"), headers=basic(user, password)
        ) as resp:
            return resp.status, await resp.json(), dict(resp.headers)

    async def metrics(self) -> dict[str, float]:
        async with self.session().get(self.url("/metrics")) as resp:
            text = await resp.text()
        values = {}
        for line in text.splitlines():
            if line and not line.startswith("#"):
                name, _, value = line.rpartition(" ")
                values[name] = float(value)
        return values

    async def close(self) -> None:
        for session in self._sessions.values():
            await session.close()


ServerFactory = Callable[..., Any]


@pytest.fixture
async def make_server(tmp_path: Path) -> AsyncIterator[ServerFactory]:
    made: list[tuple[Server, Store]] = []

    async def make(**settings: Any) -> Server:
        config = ControllerSettings(
            data_dir=tmp_path,
            admin_password=PASSWORD,
            broker_url=f"mqtt://127.0.0.1:{free_port()}",
            **settings,
        )
        store = await Store.open(config.resolved_database_url())
        server = TestServer(create_app(Controller(config, store)), host="127.0.0.1")
        await server.start_server()
        made.append((Server(server), store))
        return made[-1][0]

    yield make
    for server, store in made:
        await server.close()
        await server.server.close()
        await store.close()


async def test_password_checks_are_bounded_and_off_the_loop(make_server: ServerFactory) -> None:
    """One check at a time: of many wrong passwords sent at once, the ones that find it busy
    are answered 429 with Retry-After at once, without hashing. (Were scrypt run on the event
    loop, the requests would queue behind each other and all be answered 401.)"""
    server = await make_server(max_password_checks=1, login_failures_per_address=1000)
    answers = await asyncio.gather(*(server.get(f"user-{i}", "wrong") for i in range(30)))
    statuses = [status for status, _, _ in answers]
    assert 401 in statuses and 429 in statuses, statuses
    busy = [headers for status, _, headers in answers if status == 429]
    assert all(int(h["Retry-After"]) >= 1 for h in busy)
    metrics = await server.metrics()
    assert metrics['picket_password_checks_total{outcome="busy"}'] == len(busy)
    # every 401 cost one hash, every 429 none
    assert metrics["picket_password_check_duration_seconds_count"] == statuses.count(401)
    assert metrics["picket_password_checks_running"] == 0


async def test_parallel_requests_with_one_credential_share_one_check(
    make_server: ServerFactory,
) -> None:
    server = await make_server(max_password_checks=1)
    answers = await asyncio.gather(*(server.get("admin", PASSWORD) for _ in range(10)))
    assert [status for status, _, _ in answers] == [200] * 10
    metrics = await server.metrics()
    assert metrics["picket_password_check_duration_seconds_count"] == 1


async def test_failed_logins_throttled_per_user_and_address(make_server: ServerFactory) -> None:
    server = await make_server(login_failures_per_user_address=3, login_failures_per_address=50)
    for _ in range(3):
        assert (await server.get("admin", "wrong"))[0] == 401
    status, body, headers = await server.get("admin", "wrong")
    assert status == 429 and int(headers["Retry-After"]) >= 1, body
    assert body["Messages"][0]["Message"]
    # the right password from the throttled place is refused too: no oracle for guesses
    assert (await server.get("admin", PASSWORD))[0] == 429
    # admin from elsewhere is not locked out
    assert (await server.get("admin", PASSWORD, source="127.0.0.2"))[0] == 200
    # another user from the same address is judged on its own
    assert (await server.get("someone", "wrong"))[0] == 401
    metrics = await server.metrics()
    assert metrics["picket_login_throttled_total"] == 2
    # the throttled attempts were answered without hashing: 3 + 1 + 1 failures, 1 success
    assert metrics["picket_password_check_duration_seconds_count"] == 5


async def test_failed_logins_throttled_per_address(make_server: ServerFactory) -> None:
    """A flood of many user names from one address stops that address, not the users."""
    server = await make_server(login_failures_per_user_address=5, login_failures_per_address=4)
    for i in range(4):
        assert (await server.get(f"guess-{i}", "wrong", source="127.0.0.5"))[0] == 401
    assert (await server.get("admin", PASSWORD, source="127.0.0.5"))[0] == 429
    assert (await server.get("admin", PASSWORD, source="127.0.0.6"))[0] == 200


async def test_throttle_tables_are_bounded(make_server: ServerFactory) -> None:
    server = await make_server(
        login_throttle_max_entries=10,
        login_failures_per_address=1000,
        max_password_checks=4,
    )
    for i in range(15):
        assert (await server.get(f"user-{i}", "wrong"))[0] == 401
    metrics = await server.metrics()
    assert metrics['picket_login_throttle_entries{table="user_address"}'] == 10
    assert metrics['picket_login_throttle_evictions_total{table="user_address"}'] == 5
    assert metrics['picket_login_throttle_entries{table="address"}'] == 1
    assert len(server.ctl.auth.pairs) == 10


async def test_unknown_user_costs_a_hash_and_answers_like_a_wrong_password(
    make_server: ServerFactory,
) -> None:
    server = await make_server()
    wrong_status, wrong_body, wrong_headers = await server.get("admin", "wrong")
    unknown_status, unknown_body, unknown_headers = await server.get("nobody-here", "wrong")
    assert (wrong_status, wrong_body) == (unknown_status, unknown_body) == (401, wrong_body)
    assert wrong_headers["WWW-Authenticate"] == unknown_headers["WWW-Authenticate"]
    metrics = await server.metrics()
    assert metrics['picket_password_checks_total{outcome="wrong"}'] == 2
    assert metrics["picket_password_check_duration_seconds_count"] >= 2


async def test_a_password_change_forgets_remembered_logins(make_server: ServerFactory) -> None:
    server = await make_server(credential_cache_seconds=3600)
    assert (await server.get("admin", PASSWORD))[0] == 200
    assert (await server.get("admin", PASSWORD))[0] == 200  # remembered: no second hash
    metrics = await server.metrics()
    assert metrics["picket_password_check_duration_seconds_count"] == 1
    admin = await server.ctl.store.operator_by_username("admin")
    assert admin is not None
    await server.ctl.auth.set_operator_password(admin["guid"], "admin", "a-new-password")
    assert (await server.get("admin", PASSWORD))[0] == 401
    assert (await server.get("admin", "a-new-password"))[0] == 200


async def test_register_for_another_operator_checks_permission_first(
    make_server: ServerFactory,
) -> None:
    """A non-administrator asking for another operator's account gets 403 whether or not that
    operator exists: existence is not revealed to whoever may not act on it."""
    server = await make_server()
    store = server.ctl.store
    password_hash = await server.ctl.auth.checker.hash("operator-password")
    await store.create_operator("guid-bob", "bob", "Bob", password_hash, False)
    await store.create_operator("guid-carol", "carol", "Carol", password_hash, False)
    session = server.session()
    bob = basic("bob", "operator-password")
    for other in ("guid-carol", "guid-nobody"):
        async with session.post(
            server.url(f"/api/v4/Register?operatorGuid={other}"), headers=bob
        ) as resp:
            assert resp.status == 403, (other, await resp.text())
    admin = basic("admin", PASSWORD)
    async with session.post(
        server.url("/api/v4/Register?operatorGuid=guid-nobody"), headers=admin
    ) as resp:
        body = await resp.json()
        assert resp.status == 404 and body["Messages"][0]["Field"] == "operatorGuid"
    async with session.post(
        server.url("/api/v4/Register?operatorGuid=guid-carol"), headers=admin
    ) as resp:
        assert resp.status == 201 and (await resp.json())["OperatorName"] == "Carol"


async def test_busy_checks_answer_429_at_once_but_keep_recent_logins(
    make_server: ServerFactory,
) -> None:
    """With the one check slot taken, a new login is 429 without a lookup or hash; a login
    verified a moment ago whose memory has gone stale still gets in (a flood from many
    addresses must not lock out the clients already working)."""
    server = await make_server(max_password_checks=1, credential_cache_seconds=0.2)
    assert (await server.get("admin", PASSWORD))[0] == 200
    await asyncio.sleep(0.3)  # stale now: it would be checked again
    async with server.ctl.auth.checker.slot():  # the pool is busy
        status, body, headers = await server.get("admin", PASSWORD)
        assert status == 200, body
        status, body, headers = await server.get("someone-else", "whatever")
        assert status == 429 and headers["Retry-After"] == "1", body
    metrics = await server.metrics()
    assert metrics['picket_password_checks_total{outcome="stale_ok"}'] == 1
    assert metrics['picket_password_checks_total{outcome="busy"}'] == 2
    assert metrics["picket_password_check_duration_seconds_count"] == 1
    # free again: the stale login is checked for real
    assert (await server.get("admin", PASSWORD))[0] == 200
    metrics = await server.metrics()
    assert metrics["picket_password_check_duration_seconds_count"] == 2


def test_failures_count_against_an_ipv4_address_or_an_ipv6_64() -> None:
    from controller.auth import address_key

    assert address_key("192.0.2.7") == "192.0.2.7"
    assert address_key("::ffff:192.0.2.7") == "192.0.2.7"
    assert address_key("2001:db8:1:2:aaaa::1") == address_key("2001:db8:1:2:bbbb::9")
    assert address_key("2001:db8:1:2::1") == "2001:db8:1:2::/64"
    assert address_key("2001:db8:1:3::1") != address_key("2001:db8:1:2::1")
    assert address_key("fe80::1%eth0") == "fe80::/64"
    assert address_key(None) == "-"


async def test_the_throttle_keeps_a_short_key_for_a_long_user_name(
    make_server: ServerFactory,
) -> None:
    """A failed login with a user name of kilobytes costs the throttle a short key: its
    memory is bounded by its entry limit, not by what clients send."""
    server = await make_server()
    status, _, _ = await server.get("u" * 6000, "wrong")
    assert status == 401
    keys = list(server.ctl.auth.pairs._buckets)
    assert len(keys) == 1 and len(keys[0]) < 100, [len(k) for k in keys]


async def test_register_while_every_password_check_is_busy_is_429_not_500(
    make_server: ServerFactory,
) -> None:
    """Register hashes the new account's password in the pool: with every slot taken it is
    429 with Retry-After, as docs/api.md says, not an internal error."""
    server = await make_server(max_password_checks=1)
    assert (await server.get("admin", PASSWORD))[0] == 200  # remembered: no slot needed
    async with (
        server.ctl.auth.checker.slot(),
        server.session().post(
            server.url("/api/v4/Register"), headers=basic("admin", PASSWORD)
        ) as resp,
    ):
        body = await resp.json()
        assert resp.status == 429, body
        assert int(resp.headers["Retry-After"]) >= 1
    async with server.session().post(
        server.url("/api/v4/Register"), headers=basic("admin", PASSWORD)
    ) as resp:
        assert resp.status == 201, await resp.text()


async def test_a_name_or_password_with_a_nul_is_401(
    database_url: str, make_server: ServerFactory
) -> None:
    """PostgreSQL text cannot hold NUL: looking such a name up failed, and answered 500."""
    server = await make_server(database_url=database_url)
    for user, password in (("ad\x00min", "x"), ("admin", "pass\x00word")):
        status, body, _ = await server.get(user, password)
        assert status == 401, body
    assert (await server.get("admin", PASSWORD))[0] == 200
