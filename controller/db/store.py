"""All SQL the controller runs. The rest of the controller sees plain rows and values.

Database errors are translated here, at the boundary: no SQLAlchemy or driver exception leaves
this module. `StoreUnavailable` means "try again later" (the server is down or unreachable, a
connection broke, SQLite is locked); `StoreRejected` means the database refused these values
(a NUL in text on PostgreSQL, an integer out of range, a string too long, a unique key taken)
and will refuse them again. An outage is logged once when it begins and once when it ends.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import re
import time
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import sqlalchemy as sa
from sqlalchemy import event
from sqlalchemy import exc as sa_exc
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine, create_async_engine

from controller.db import migrate
from controller.db.schema import (
    alert_definition,
    alert_definition_monitor,
    alert_definition_monitor_group,
    alerting_revision,
    api_account,
    assignment,
    assignment_history,
    checkpoint,
    dead_letter,
    duty_schedule,
    enrolment,
    escalation_level,
    escalation_level_integration,
    escalation_level_operator,
    escalation_level_operator_group,
    integration,
    maintenance_period_id,
    monitor,
    monitor_check,
    monitor_group,
    monitor_group_member,
    operator,
    operator_group,
    operator_group_member,
    region,
    server,
)
from controller.duty import DutyOperator, OffDuty, off_duty_of
from controller.trust import published_addresses
from shared.errors import INCONCLUSIVE_CODES, ErrorCode

log = logging.getLogger(__name__)


def now_us() -> int:
    return time.time_ns() // 1000


@dataclass(frozen=True)
class ServerRow:
    id: int
    agent_id: str
    checkpoint_id: int
    checkpoint_name: str
    region_id: int
    ipv4: list[str]
    ipv6: list[str]
    online: bool
    capacity: int
    probe_types: list[str]
    state: str = "active"  # pending, upcoming, active or retired (see SERVER_STATES)
    activate_after_us: int | None = None  # upcoming: takes checks from then (None: on approval)
    version: str = ""
    first_seen_us: int = 0
    last_seen_us: int = 0
    is_primary_checkpoint: bool = True  # its checkpoint's IsPrimaryCheckpoint

    def can_take_checks(self, now_us: int) -> bool:
        """Whether placement may give this server checks (its presence aside): an active
        server, or an upcoming one whose activation time has come. Pending and retired
        servers never do."""
        if self.state == "active":
            return True
        return (
            self.state == "upcoming"
            and self.activate_after_us is not None
            and now_us >= self.activate_after_us
        )

    def listed(self) -> bool:
        """Whether its addresses are in the public IPv4/IPv6 lists: upcoming ones are (users
        open firewalls ahead), pending and retired ones are not."""
        return self.state in ("upcoming", "active")

    def shown_state(self, now_us: int) -> str:
        """The state the API shows: pending, upcoming, active, offline or retired."""
        if self.state in ("pending", "retired"):
            return self.state
        if not self.online:
            return "offline"
        return "active" if self.can_take_checks(now_us) else "upcoming"


SERVER_STATES = ("pending", "upcoming", "active", "offline", "retired")


# (monitor guid, agent id, revision published or None when removed, when: microseconds,
# the turn published: (rotation position, rotation count), or None when not known)
AssignmentChange = tuple[str, str, str | None, int, tuple[int, int] | None]


@dataclass(frozen=True)
class MonitorRow:
    guid: str
    name: str
    monitor_type: str
    is_active: bool
    definition: dict[str, Any]
    revision: str
    created_us: int
    modified_us: int


@dataclass(frozen=True)
class CheckRow:
    id: int
    uid: str
    monitor_guid: str
    server_id: int | None
    ts_us: int
    scheduled_us: int
    error_level: int
    error_code: int
    attributes: dict[str, Any]
    response_body: str | None
    details: dict[str, Any] | None
    kind: int = 0  # CHECK, PARTIAL or CONCURRENT


CHECK, PARTIAL, CONCURRENT = 0, 1, 2  # monitor_check.check_kind


@dataclass(frozen=True)
class GroupRow:
    guid: str
    description: str
    is_all: bool  # the built-in All Monitors group: every monitor, no member rows


class StoreError(Exception):
    """A database operation failed; the message says why (never with a password in it)."""


class StoreUnavailable(StoreError):
    """The database cannot be reached or cannot answer now: the same call may succeed later."""


class StoreRejected(StoreError):
    """The database refused the values given: the same call will fail again."""


class NameTaken(StoreRejected):
    pass


class RevisionChanged(Exception):
    """The monitor was changed by someone else since it was read (its revision differs)."""


# SQLSTATE classes (and codes) that say "not now" rather than "not this": connection exceptions,
# insufficient resources, operator intervention (shutdown, starting up), system errors,
# serialization failures and deadlocks, lock timeouts
_TRANSIENT_CLASSES = ("08", "53", "57", "58")
_TRANSIENT_CODES = ("40001", "40P01", "55P03")
# SQLite's OperationalError: a lock or a disk problem passes; "no such table" does not
_SQLITE_TRANSIENT = ("locked", "busy", "disk", "unable to open", "readonly", "i/o")


# asyncpg quotes the value it could not send: keep the argument and the why, not the value
_ARGUMENT_VALUE = re.compile(r"^(invalid input for query argument \$\d+): .* \(([^()]*)\)$")


def _reason(exc: BaseException) -> str:
    """The first line of the database's message, without the values it quotes."""
    orig = getattr(exc, "orig", None)
    text = str(orig if orig is not None else exc).strip().splitlines()
    first = _ARGUMENT_VALUE.sub(r"\1 (\2)", text[0]) if text else type(exc).__name__
    return first[:500]


def translate(exc: BaseException) -> StoreError | None:
    """Our exception for a database or driver error; None for anything else (a bug of ours)."""
    if isinstance(exc, StoreError):
        return exc
    reason = _reason(exc)
    if isinstance(exc, sa_exc.DBAPIError):
        if exc.connection_invalidated:
            return StoreUnavailable(reason)
        orig = exc.orig
        cause = orig.__cause__ if orig is not None else None
        code = getattr(orig, "sqlstate", None) or getattr(cause, "sqlstate", None)
        if isinstance(code, str) and code:
            if code[:2] in _TRANSIENT_CLASSES or code in _TRANSIENT_CODES:
                return StoreUnavailable(reason)
            return StoreRejected(reason)
        if isinstance(exc, sa_exc.OperationalError):
            if any(word in reason.lower() for word in _SQLITE_TRANSIENT):
                return StoreUnavailable(reason)
            return StoreRejected(reason)
        if isinstance(cause, OSError):
            return StoreUnavailable(reason)
        return StoreRejected(reason)
    if isinstance(exc, sa_exc.TimeoutError):  # no connection free in the pool in time
        return StoreUnavailable(reason)
    code = getattr(exc, "sqlstate", None)  # a driver error SQLAlchemy did not wrap
    if isinstance(code, str) and code:
        transient = code[:2] in _TRANSIENT_CLASSES or code in _TRANSIENT_CODES
        return StoreUnavailable(reason) if transient else StoreRejected(reason)
    if isinstance(exc, OSError | TimeoutError):  # refused, reset, unreachable, timed out
        return StoreUnavailable(reason)
    if isinstance(exc, sa_exc.SQLAlchemyError):
        return StoreRejected(reason)
    # raised while binding values (SQLite: an integer beyond 64 bits, a lone surrogate)
    if isinstance(exc, OverflowError | UnicodeError):
        return StoreRejected(reason)
    if type(exc).__module__.split(".")[0] in ("asyncpg", "aiosqlite", "sqlite3"):
        return StoreRejected(reason)
    return None


class Store:
    def __init__(self, engine: AsyncEngine) -> None:
        self.engine = engine
        self.dialect = engine.dialect.name
        self.available = True
        self.outages = 0
        self._down_since = 0.0

    def _failed(self, error: StoreError) -> None:
        if isinstance(error, StoreUnavailable) and self.available:
            self.available = False
            self.outages += 1
            self._down_since = time.monotonic()
            log.warning(
                "database %s unavailable: %s; retrying with backoff until it returns "
                "(the API answers 503 meanwhile; results wait in memory, then on the agents)",
                self.engine.url.render_as_string(hide_password=True),
                error,
            )

    def _succeeded(self) -> None:
        if not self.available:
            self.available = True
            log.warning(
                "database %s is back after %.1fs",
                self.engine.url.render_as_string(hide_password=True),
                time.monotonic() - self._down_since,
            )

    @contextlib.asynccontextmanager
    async def _translated(self) -> AsyncIterator[None]:
        try:
            yield
        except Exception as exc:
            error = translate(exc)
            if error is None:
                raise
            self._failed(error)
            if error is exc:
                raise
            raise error from exc
        self._succeeded()

    @contextlib.asynccontextmanager
    async def _begin(self) -> AsyncIterator[AsyncConnection]:
        """A transaction, committed at the end; errors translated."""
        async with self._translated(), self.engine.begin() as conn:
            yield conn

    @contextlib.asynccontextmanager
    async def _connect(self) -> AsyncIterator[AsyncConnection]:
        """A connection for reading; errors translated."""
        async with self._translated(), self.engine.connect() as conn:
            yield conn

    @classmethod
    async def open(cls, url: str) -> Store:
        if url.startswith("sqlite"):
            path = url.split(":///", 1)[-1]
            if path and path != ":memory:":
                Path(path).parent.mkdir(parents=True, exist_ok=True)
                # it holds monitor secrets: readable by its owner only (SQLite gives its -wal
                # and -shm files the database file's mode)
                os.close(os.open(path, os.O_WRONLY | os.O_CREAT, 0o600))
            # hide_parameters: an error's text must not quote a definition (its secrets) into a log
            engine = create_async_engine(url, connect_args={"timeout": 30}, hide_parameters=True)

            @event.listens_for(engine.sync_engine, "connect")
            def _pragmas(dbapi_conn: Any, _record: Any) -> None:
                cur = dbapi_conn.cursor()
                cur.execute("PRAGMA journal_mode=WAL")
                cur.execute("PRAGMA synchronous=NORMAL")
                cur.execute("PRAGMA foreign_keys=ON")
                cur.execute("PRAGMA busy_timeout=30000")
                cur.close()

        else:
            engine = create_async_engine(
                url,
                pool_size=10,
                max_overflow=10,
                pool_pre_ping=True,
                hide_parameters=True,
                connect_args={"timeout": 10},  # a server that does not answer is "unavailable"
            )
        store = cls(engine)
        async with store._translated():
            await migrate.upgrade(engine)
        return store

    async def close(self) -> None:
        await self.engine.dispose()

    def _insert(self, table: sa.Table) -> Any:
        return (postgresql.insert if self.dialect == "postgresql" else sqlite.insert)(table)

    # --- regions, checkpoints, servers --------------------------------------------------------

    async def _id_for(self, conn: AsyncConnection, table: sa.Table, name: str, **extra: Any) -> int:
        found = await conn.scalar(sa.select(table.c.id).where(table.c.name == name))
        if found is not None:
            return int(found)
        await conn.execute(self._insert(table).values(name=name, **extra).on_conflict_do_nothing())
        return int(await conn.scalar(sa.select(table.c.id).where(table.c.name == name)) or 0)

    async def register_server(
        self,
        agent_id: str,
        checkpoint_name: str,
        region_name: str,
        ipv4: list[str],
        ipv6: list[str],
        version: str,
        probe_types: list[str],
        capacity: int,
        online: bool = True,
        new_state: str = "active",
        activate_after_us: int | None = None,
    ) -> ServerRow:
        """Ids are assigned on first registration and kept (keyed by names and agent id).
        A server new to the controller starts in `new_state` (with `activate_after_us`); a
        known one keeps its state."""
        stamp = now_us()
        async with self._begin() as conn:
            region_id = await self._id_for(conn, region, region_name)
            checkpoint_id = await self._id_for(
                conn, checkpoint, checkpoint_name, code=checkpoint_name, region_id=region_id
            )
            values = {
                "checkpoint_id": checkpoint_id,
                "ipv4": json.dumps(ipv4),
                "ipv6": json.dumps(ipv6),
                "version": version,
                "probe_types": json.dumps(probe_types),
                "capacity": capacity,
                "online": online,
                "last_seen_us": stamp,
            }
            stmt = self._insert(server).values(
                agent_id=agent_id,
                first_seen_us=stamp,
                state=new_state,
                activate_after_us=activate_after_us,
                **values,
            )
            await conn.execute(stmt.on_conflict_do_update(index_elements=["agent_id"], set_=values))
        found = await self.server_by_agent(agent_id)
        assert found is not None
        return found

    async def set_server_online(self, agent_id: str, online: bool) -> bool:
        async with self._begin() as conn:
            result = await conn.execute(
                sa.update(server)
                .where(server.c.agent_id == agent_id)
                .values(online=online, last_seen_us=now_us())
            )
        return bool(result.rowcount)

    def _servers_query(self) -> sa.Select[Any]:
        return sa.select(
            server.c.id,
            server.c.agent_id,
            server.c.checkpoint_id,
            checkpoint.c.name.label("checkpoint_name"),
            checkpoint.c.region_id,
            server.c.ipv4,
            server.c.ipv6,
            server.c.online,
            server.c.capacity,
            server.c.probe_types,
            server.c.state,
            server.c.activate_after_us,
            server.c.version,
            server.c.first_seen_us,
            server.c.last_seen_us,
            checkpoint.c.is_primary.label("is_primary_checkpoint"),
        ).join(checkpoint, checkpoint.c.id == server.c.checkpoint_id)

    @staticmethod
    def _server(row: Any) -> ServerRow:
        return ServerRow(
            id=row.id,
            agent_id=row.agent_id,
            checkpoint_id=row.checkpoint_id,
            checkpoint_name=row.checkpoint_name,
            region_id=row.region_id,
            ipv4=published_addresses(json.loads(row.ipv4), 4),
            ipv6=published_addresses(json.loads(row.ipv6), 6),
            online=bool(row.online),
            capacity=row.capacity,
            probe_types=json.loads(row.probe_types),
            state=row.state,
            activate_after_us=row.activate_after_us,
            version=row.version,
            first_seen_us=row.first_seen_us,
            last_seen_us=row.last_seen_us,
            is_primary_checkpoint=bool(row.is_primary_checkpoint),
        )

    async def servers(self) -> list[ServerRow]:
        async with self._connect() as conn:
            rows = await conn.execute(self._servers_query().order_by(server.c.id))
            return [self._server(r) for r in rows]

    async def server_by_agent(self, agent_id: str) -> ServerRow | None:
        async with self._connect() as conn:
            rows = await conn.execute(self._servers_query().where(server.c.agent_id == agent_id))
            row = rows.first()
            return self._server(row) if row else None

    async def checkpoints(self) -> list[dict[str, Any]]:
        async with self._connect() as conn:
            rows = await conn.execute(
                sa.select(
                    checkpoint.c.id,
                    checkpoint.c.name,
                    checkpoint.c.code,
                    checkpoint.c.region_id,
                    checkpoint.c.is_primary,
                    region.c.name.label("region_name"),
                )
                .join(region, region.c.id == checkpoint.c.region_id)
                .order_by(checkpoint.c.id)
            )
            return [dict(r._mapping) for r in rows]

    # --- enrolment ------------------------------------------------------------------------------

    async def create_enrolment(
        self, token_hash: str, checkpoint_name: str, region_name: str, expires_us: int
    ) -> None:
        async with self._begin() as conn:
            await conn.execute(
                sa.insert(enrolment).values(
                    token_hash=token_hash,
                    checkpoint_name=checkpoint_name,
                    region_name=region_name,
                    created_us=now_us(),
                    expires_us=expires_us,
                )
            )

    async def use_enrolment(
        self, token_hash: str, agent_id: str, public_key: str
    ) -> tuple[str, dict[str, Any] | None]:
        """Spend a token, once: ("ok", its row), or ("unknown" | "used" | "expired", None)."""
        stamp = now_us()
        async with self._begin() as conn:
            result = await conn.execute(
                sa.update(enrolment)
                .where(
                    enrolment.c.token_hash == token_hash,
                    enrolment.c.used_us.is_(None),
                    enrolment.c.expires_us > stamp,
                )
                .values(used_us=stamp, agent_id=agent_id, public_key=public_key)
            )
            row = (
                await conn.execute(sa.select(enrolment).where(enrolment.c.token_hash == token_hash))
            ).first()
        if row is None:
            return "unknown", None
        if result.rowcount:
            return "ok", dict(row._mapping)
        return ("used" if row.used_us is not None else "expired"), None

    async def peek_enrolment(self, token_hash: str) -> tuple[str, dict[str, Any] | None]:
        """("ok" | "used" | "expired", its row) or ("unknown", None), spending nothing."""
        async with self._connect() as conn:
            row = (
                await conn.execute(sa.select(enrolment).where(enrolment.c.token_hash == token_hash))
            ).first()
        if row is None:
            return "unknown", None
        if row.used_us is not None:
            return "used", dict(row._mapping)
        if row.expires_us <= now_us():
            return "expired", dict(row._mapping)
        return "ok", dict(row._mapping)

    async def release_enrolment(self, token_hash: str) -> None:
        """Unspend a token whose agent could not be given a broker login."""
        async with self._begin() as conn:
            await conn.execute(
                sa.update(enrolment)
                .where(enrolment.c.token_hash == token_hash)
                .values(used_us=None, agent_id=None, public_key=None)
            )

    async def enrolled(self, agent_id: str) -> dict[str, Any] | None:
        """The enrolment of an agent (its checkpoint, region, public key), if it enrolled."""
        async with self._connect() as conn:
            row = (
                await conn.execute(sa.select(enrolment).where(enrolment.c.agent_id == agent_id))
            ).first()
            return dict(row._mapping) if row else None

    async def regions(self) -> list[dict[str, Any]]:
        async with self._connect() as conn:
            rows = await conn.execute(sa.select(region.c.id, region.c.name).order_by(region.c.id))
            return [dict(r._mapping) for r in rows]

    async def set_server_state(
        self, server_id: int, state: str, activate_after_us: int | None = None
    ) -> ServerRow | None:
        async with self._begin() as conn:
            result = await conn.execute(
                sa.update(server)
                .where(server.c.id == server_id)
                .values(state=state, activate_after_us=activate_after_us)
            )
        if not result.rowcount:
            return None
        async with self._connect() as conn:
            rows = await conn.execute(self._servers_query().where(server.c.id == server_id))
            row = rows.first()
            return self._server(row) if row else None

    async def update_checkpoint(
        self, checkpoint_id: int, code: str | None, is_primary: bool | None
    ) -> bool:
        values: dict[str, Any] = {}
        if code is not None:
            values["code"] = code
        if is_primary is not None:
            values["is_primary"] = is_primary
        async with self._begin() as conn:
            found = await conn.scalar(
                sa.select(checkpoint.c.id).where(checkpoint.c.id == checkpoint_id)
            )
            if found is None:
                return False
            if values:
                await conn.execute(
                    sa.update(checkpoint).where(checkpoint.c.id == checkpoint_id).values(**values)
                )
        return True

    # --- operators and API accounts -----------------------------------------------------------

    @staticmethod
    def _operators_query() -> sa.Select[Any]:
        """Operators with `is_admin`: membership of the Administrators group."""
        admin = (
            sa.exists()
            .where(
                operator_group_member.c.operator_guid == operator.c.guid,
                operator_group_member.c.group_guid == operator_group.c.guid,
                operator_group.c.is_administrators == sa.true(),
            )
            .label("is_admin")
        )
        columns = [c for c in operator.c if c.name != "is_admin"]
        return sa.select(*columns, admin)

    @staticmethod
    def _operator(row: Any) -> dict[str, Any]:
        found = dict(row._mapping)
        found["is_admin"] = bool(found["is_admin"])
        found["settings"] = json.loads(found.get("settings") or "{}")
        return found

    async def operator_by_username(self, username: str) -> dict[str, Any] | None:
        async with self._connect() as conn:
            query = self._operators_query().where(operator.c.username == username)
            row = (await conn.execute(query)).first()
            return self._operator(row) if row else None

    async def operator_by_login(self, name: str) -> dict[str, Any] | None:
        """The operator who logs in as `name`: its user name (the built-in `admin`, or an
        older operator's), or its Email in any case."""
        async with self._connect() as conn:
            query = self._operators_query().where(
                sa.or_(operator.c.username == name, operator.c.email_key == name.lower())
            )
            rows = [self._operator(r) for r in await conn.execute(query)]
        exact = [r for r in rows if r["username"] == name]
        found = exact or rows
        return found[0] if found else None

    async def operator_by_guid(self, guid: str) -> dict[str, Any] | None:
        async with self._connect() as conn:
            query = self._operators_query().where(operator.c.guid == guid)
            row = (await conn.execute(query)).first()
            return self._operator(row) if row else None

    async def operators(self) -> list[dict[str, Any]]:
        async with self._connect() as conn:
            query = self._operators_query().order_by(operator.c.created_us, operator.c.guid)
            return [self._operator(r) for r in await conn.execute(query)]

    async def _administrators_guid(self, conn: AsyncConnection) -> str:
        found = await conn.scalar(
            sa.select(operator_group.c.guid).where(operator_group.c.is_administrators == sa.true())
        )
        if found is None:
            raise StoreRejected("the Administrators group is missing")
        return str(found)

    @staticmethod
    def _login_values(values: dict[str, Any]) -> dict[str, Any]:
        if "settings" in values and not isinstance(values["settings"], str):
            values = {**values, "settings": json.dumps(values["settings"], sort_keys=True)}
        return values

    async def _login_taken(self, conn: AsyncConnection, guid: str, values: dict[str, Any]) -> bool:
        checks = []
        if values.get("username") is not None:
            checks.append(operator.c.username == values["username"])
            checks.append(operator.c.email_key == values["username"].lower())
        if values.get("email_key") is not None:
            checks.append(operator.c.email_key == values["email_key"])
            checks.append(operator.c.username == values["email_key"])
        if not checks:
            return False
        query = sa.select(operator.c.guid).where(sa.or_(*checks), operator.c.guid != guid)
        return await conn.scalar(query) is not None

    async def create_operator(
        self,
        guid: str,
        username: str,
        full_name: str,
        password_hash: str,
        is_admin: bool,
        **fields: Any,
    ) -> None:
        """NameTaken when the login (user name or Email) is another operator's."""
        values = self._login_values(
            {
                "guid": guid,
                "username": username,
                "full_name": full_name,
                "password_hash": password_hash,
                "created_us": now_us(),
                **fields,
            }
        )
        try:
            async with self._begin() as conn:
                if await self._login_taken(conn, guid, values):
                    raise NameTaken(username)
                await conn.execute(sa.insert(operator).values(**values))
                if is_admin:
                    group = await self._administrators_guid(conn)
                    await conn.execute(
                        sa.insert(operator_group_member).values(
                            group_guid=group, operator_guid=guid
                        )
                    )
        except NameTaken:
            raise
        except StoreRejected:
            async with self._connect() as conn:  # another writer took it meanwhile
                if await self._login_taken(conn, guid, values):
                    raise NameTaken(username) from None
            raise

    async def update_operator(self, guid: str, values: dict[str, Any]) -> bool:
        """False when the operator is gone; NameTaken when the new login is another's."""
        values = self._login_values({**values, "modified_us": now_us()})
        try:
            async with self._begin() as conn:
                if await self._login_taken(conn, guid, values):
                    raise NameTaken(str(values.get("email_key")))
                result = await conn.execute(
                    sa.update(operator).where(operator.c.guid == guid).values(**values)
                )
                return bool(result.rowcount)
        except NameTaken:
            raise
        except StoreRejected:
            async with self._connect() as conn:
                if await self._login_taken(conn, guid, values):
                    raise NameTaken(str(values.get("email_key"))) from None
            raise

    async def delete_operator(self, guid: str) -> bool:
        """Its API accounts, memberships and schedules go with it."""
        async with self._begin() as conn:
            result = await conn.execute(sa.delete(operator).where(operator.c.guid == guid))
            await self._bump_alerting(conn)  # it may be in alert definitions
        return bool(result.rowcount)

    async def set_operator_password(self, guid: str, password_hash: str) -> None:
        async with self._begin() as conn:
            await conn.execute(
                sa.update(operator)
                .where(operator.c.guid == guid)
                .values(password_hash=password_hash)
            )

    # --- operator groups ----------------------------------------------------------------------

    async def operator_groups(self) -> list[dict[str, Any]]:
        async with self._connect() as conn:
            query = sa.select(operator_group).order_by(
                operator_group.c.is_everyone.desc(),
                operator_group.c.is_administrators.desc(),
                operator_group.c.created_us,
                operator_group.c.guid,
            )
            return [dict(r._mapping) for r in await conn.execute(query)]

    async def operator_group(self, guid: str) -> dict[str, Any] | None:
        async with self._connect() as conn:
            query = sa.select(operator_group).where(operator_group.c.guid == guid)
            row = (await conn.execute(query)).first()
            return dict(row._mapping) if row else None

    async def create_operator_group(self, guid: str, description: str) -> None:
        async with self._begin() as conn:
            await conn.execute(
                sa.insert(operator_group).values(
                    guid=guid, description=description, created_us=now_us()
                )
            )

    async def update_operator_group(self, guid: str, description: str) -> bool:
        """Built-in groups are not changed here (False, as for a missing group)."""
        async with self._begin() as conn:
            result = await conn.execute(
                sa.update(operator_group)
                .where(
                    operator_group.c.guid == guid,
                    operator_group.c.is_everyone == sa.false(),
                    operator_group.c.is_administrators == sa.false(),
                )
                .values(description=description)
            )
        return bool(result.rowcount)

    async def delete_operator_group(self, guid: str) -> bool:
        async with self._begin() as conn:
            result = await conn.execute(
                sa.delete(operator_group).where(
                    operator_group.c.guid == guid,
                    operator_group.c.is_everyone == sa.false(),
                    operator_group.c.is_administrators == sa.false(),
                )
            )
            await self._bump_alerting(conn)  # it may be in alert definitions
        return bool(result.rowcount)

    @staticmethod
    async def _members(conn: AsyncConnection, group_guids: Sequence[str]) -> list[str]:
        """The operators in any of the groups (Everyone: all), in creation order."""
        if not group_guids:
            return []
        everyone = await conn.scalar(
            sa.select(sa.func.count())
            .select_from(operator_group)
            .where(operator_group.c.guid.in_(group_guids), operator_group.c.is_everyone)
        )
        query = sa.select(operator.c.guid).order_by(operator.c.created_us, operator.c.guid)
        if not everyone:
            query = query.where(
                operator.c.guid.in_(
                    sa.select(operator_group_member.c.operator_guid).where(
                        operator_group_member.c.group_guid.in_(group_guids)
                    )
                )
            )
        return [r.guid for r in await conn.execute(query)]

    async def operator_group_members(self, guid: str) -> list[str]:
        async with self._connect() as conn:
            return await self._members(conn, [guid])

    async def groups_of_operator(self, operator_guid: str) -> list[str]:
        """The groups the operator is in: Everyone, then the others."""
        async with self._connect() as conn:
            query = (
                sa.select(operator_group.c.guid)
                .where(
                    sa.or_(
                        operator_group.c.is_everyone == sa.true(),
                        operator_group.c.guid.in_(
                            sa.select(operator_group_member.c.group_guid).where(
                                operator_group_member.c.operator_guid == operator_guid
                            )
                        ),
                    )
                )
                .order_by(
                    operator_group.c.is_everyone.desc(),
                    operator_group.c.is_administrators.desc(),
                    operator_group.c.created_us,
                    operator_group.c.guid,
                )
            )
            return [r.guid for r in await conn.execute(query)]

    async def add_operator_group_member(self, group_guid: str, operator_guid: str) -> bool:
        """True when added, False when a member already."""
        async with self._begin() as conn:
            result = await conn.execute(
                self._insert(operator_group_member)
                .values(group_guid=group_guid, operator_guid=operator_guid)
                .on_conflict_do_nothing()
            )
        return bool(result.rowcount)

    async def remove_operator_group_member(self, group_guid: str, operator_guid: str) -> bool:
        async with self._begin() as conn:
            result = await conn.execute(
                sa.delete(operator_group_member).where(
                    operator_group_member.c.group_guid == group_guid,
                    operator_group_member.c.operator_guid == operator_guid,
                )
            )
        return bool(result.rowcount)

    async def set_duty_of_members(self, group_guid: str, on_duty: bool) -> int:
        """IsOnDuty for every member of the group; how many operators that is."""
        async with self._begin() as conn:
            members = await self._members(conn, [group_guid])
            if members:
                await conn.execute(
                    sa.update(operator)
                    .where(operator.c.guid.in_(members))
                    .values(is_on_duty=on_duty, modified_us=now_us())
                )
            return len(members)

    # --- off-duty schedules -------------------------------------------------------------------

    async def duty_schedules(self, operator_guid: str) -> list[dict[str, Any]]:
        async with self._connect() as conn:
            query = (
                sa.select(duty_schedule)
                .where(duty_schedule.c.operator_guid == operator_guid)
                .order_by(duty_schedule.c.id)
            )
            return [dict(r._mapping) for r in await conn.execute(query)]

    @staticmethod
    async def _schedule_counts(conn: AsyncConnection, guids: Sequence[str]) -> dict[str, int]:
        query = (
            sa.select(duty_schedule.c.operator_guid, sa.func.count())
            .where(duty_schedule.c.operator_guid.in_(guids))
            .group_by(duty_schedule.c.operator_guid)
        )
        return {r[0]: int(r[1]) for r in await conn.execute(query)}

    async def add_duty_schedule(
        self, operator_guid: str, values: dict[str, Any], limit: int
    ) -> int | None:
        """The new schedule's id; None when the operator has `limit` schedules already."""
        async with self._begin() as conn:
            counts = await self._schedule_counts(conn, [operator_guid])
            if counts.get(operator_guid, 0) >= limit:
                return None
            result = await conn.execute(
                sa.insert(duty_schedule)
                .values(operator_guid=operator_guid, created_us=now_us(), **values)
                .returning(duty_schedule.c.id)
            )
            return int(result.scalar_one())

    async def add_duty_schedule_for_members(
        self, group_guid: str, values: dict[str, Any], limit: int
    ) -> tuple[int, list[str]]:
        """The schedule added to every member of the group: (members, []) when done; when
        some members have `limit` schedules already, nothing is added: (0, those members)."""
        async with self._begin() as conn:
            members = await self._members(conn, [group_guid])
            counts = await self._schedule_counts(conn, members)
            full = [m for m in members if counts.get(m, 0) >= limit]
            if full:
                return 0, full
            stamp = now_us()
            if members:
                await conn.execute(
                    sa.insert(duty_schedule),
                    [{"operator_guid": m, "created_us": stamp, **values} for m in members],
                )
            return len(members), []

    async def update_duty_schedule(
        self, operator_guid: str, schedule_id: int, values: dict[str, Any]
    ) -> bool:
        async with self._begin() as conn:
            result = await conn.execute(
                sa.update(duty_schedule)
                .where(
                    duty_schedule.c.id == schedule_id,
                    duty_schedule.c.operator_guid == operator_guid,
                )
                .values(**values)
            )
        return bool(result.rowcount)

    async def delete_duty_schedule(self, operator_guid: str, schedule_id: int) -> bool:
        async with self._begin() as conn:
            result = await conn.execute(
                sa.delete(duty_schedule).where(
                    duty_schedule.c.id == schedule_id,
                    duty_schedule.c.operator_guid == operator_guid,
                )
            )
        return bool(result.rowcount)

    async def duty_roster(
        self, operator_guids: Sequence[str], group_guids: Sequence[str]
    ) -> list[DutyOperator]:
        """The operators named and the members of the groups named, with their off-duty
        schedules, in one read (controller/duty.py decides who is on duty)."""
        async with self._connect() as conn:
            wanted = list(dict.fromkeys([*operator_guids, *await self._members(conn, group_guids)]))
            if not wanted:
                return []
            ops = list(await conn.execute(sa.select(operator).where(operator.c.guid.in_(wanted))))
            schedules: dict[str, list[OffDuty]] = {}
            query = (
                sa.select(duty_schedule)
                .where(duty_schedule.c.operator_guid.in_(wanted))
                .order_by(duty_schedule.c.id)
            )
            for row in await conn.execute(query):
                schedules.setdefault(row.operator_guid, []).append(off_duty_of(dict(row._mapping)))
        order = {guid: i for i, guid in enumerate(wanted)}
        return [
            DutyOperator(
                guid=r.guid,
                full_name=r.full_name,
                email=r.email,
                backup_email=r.backup_email,
                mobile_phone=r.mobile_phone,
                is_on_duty=bool(r.is_on_duty),
                time_zone_id=r.time_zone_id,
                off_duty=tuple(schedules.get(r.guid, ())),
            )
            for r in sorted(ops, key=lambda r: order[r.guid])
        ]

    async def create_api_account(
        self, username: str, password_hash: str, operator_guid: str, description: str
    ) -> None:
        async with self._begin() as conn:
            await conn.execute(
                sa.insert(api_account).values(
                    username=username,
                    password_hash=password_hash,
                    operator_guid=operator_guid,
                    description=description,
                    created_us=now_us(),
                )
            )

    async def api_account(self, username: str) -> dict[str, Any] | None:
        async with self._connect() as conn:
            row = (
                await conn.execute(sa.select(api_account).where(api_account.c.username == username))
            ).first()
            return dict(row._mapping) if row else None

    # --- monitors -----------------------------------------------------------------------------

    @staticmethod
    def _monitor(row: Any) -> MonitorRow:
        return MonitorRow(
            guid=row.guid,
            name=row.name,
            monitor_type=row.monitor_type,
            is_active=bool(row.is_active),
            definition=json.loads(row.definition),
            revision=row.revision,
            created_us=row.created_us,
            modified_us=row.modified_us,
        )

    async def monitors(self) -> list[MonitorRow]:
        async with self._connect() as conn:
            rows = await conn.execute(sa.select(monitor).order_by(monitor.c.created_us))
            return [self._monitor(r) for r in rows]

    async def monitor(self, guid: str) -> MonitorRow | None:
        async with self._connect() as conn:
            row = (await conn.execute(sa.select(monitor).where(monitor.c.guid == guid))).first()
            return self._monitor(row) if row else None

    async def save_monitor(
        self, row: MonitorRow, create: bool, expected_revision: str | None = None
    ) -> bool:
        """False when an update finds the monitor gone (deleted meanwhile). With
        `expected_revision`, an update is a compare-and-swap: RevisionChanged when the stored
        revision is another (a concurrent edit, here or in another controller)."""
        values = {
            "name": row.name,
            "monitor_type": row.monitor_type,
            "is_active": row.is_active,
            "definition": json.dumps(row.definition, sort_keys=True),
            "revision": row.revision,
            "modified_us": row.modified_us,
        }
        taken_by_other = sa.select(monitor.c.guid).where(
            monitor.c.name == row.name, monitor.c.guid != row.guid
        )
        try:
            async with self._begin() as conn:
                if await conn.scalar(taken_by_other) is not None:
                    raise NameTaken(row.name)
                if create:
                    await conn.execute(
                        sa.insert(monitor).values(
                            guid=row.guid, created_us=row.created_us, **values
                        )
                    )
                else:
                    update = sa.update(monitor).where(monitor.c.guid == row.guid)
                    if expected_revision is not None:
                        update = update.where(monitor.c.revision == expected_revision)
                    result = await conn.execute(update.values(**values))
                    if not result.rowcount and expected_revision is not None:
                        found = sa.select(monitor.c.guid).where(monitor.c.guid == row.guid)
                        if await conn.scalar(found) is not None:
                            raise RevisionChanged(row.guid)
                    return bool(result.rowcount)
        except NameTaken:
            raise
        except StoreRejected:
            # another writer took the name between our look and our write (the unique index
            # caught it): the same answer as when we see it first
            async with self._connect() as conn:
                if await conn.scalar(taken_by_other) is not None:
                    raise NameTaken(row.name) from None
            raise
        return True

    async def delete_monitor(self, guid: str) -> bool:
        """The monitor's checks go afterwards, in batches (controller/retention.py)."""
        async with self._begin() as conn:
            result = await conn.execute(sa.delete(monitor).where(monitor.c.guid == guid))
            await self._bump_alerting(conn)  # it may be in alert definitions
        return bool(result.rowcount)

    # --- monitor groups and maintenance period ids -------------------------------------------

    @staticmethod
    def _group(row: Any) -> GroupRow:
        return GroupRow(guid=row.guid, description=row.description, is_all=bool(row.is_all))

    async def monitor_groups(self) -> list[GroupRow]:
        """The All Monitors group first, then the others as created."""
        g = monitor_group.c
        async with self._connect() as conn:
            rows = await conn.execute(
                sa.select(monitor_group).order_by(g.is_all.desc(), g.created_us, g.guid)
            )
            return [self._group(r) for r in rows]

    async def monitor_group(self, guid: str) -> GroupRow | None:
        async with self._connect() as conn:
            row = (
                await conn.execute(sa.select(monitor_group).where(monitor_group.c.guid == guid))
            ).first()
            return self._group(row) if row else None

    async def save_monitor_group(self, row: GroupRow, create: bool) -> bool:
        """Create or rename a group (never the All Monitors group). False: an update found it
        gone or built in; NameTaken: another group has that description."""
        g = monitor_group.c
        taken = sa.select(g.guid).where(g.description == row.description, g.guid != row.guid)
        try:
            async with self._begin() as conn:
                if await conn.scalar(taken) is not None:
                    raise NameTaken(row.description)
                if create:
                    await conn.execute(
                        sa.insert(monitor_group).values(
                            guid=row.guid,
                            description=row.description,
                            is_all=False,
                            created_us=now_us(),
                        )
                    )
                    return True
                result = await conn.execute(
                    sa.update(monitor_group)
                    .where(g.guid == row.guid, g.is_all.is_(False))
                    .values(description=row.description)
                )
                return bool(result.rowcount)
        except NameTaken:
            raise
        except StoreRejected:
            async with self._connect() as conn:  # the unique index caught a concurrent create
                if await conn.scalar(taken) is not None:
                    raise NameTaken(row.description) from None
            raise

    async def delete_monitor_group(self, guid: str) -> bool:
        """Its member rows go with it; the All Monitors group is never deleted."""
        g = monitor_group.c
        async with self._begin() as conn:
            result = await conn.execute(
                sa.delete(monitor_group).where(g.guid == guid, g.is_all.is_(False))
            )
            await self._bump_alerting(conn)  # it may be in alert definitions
        return bool(result.rowcount)

    def _members_query(self, group: GroupRow) -> sa.Select[Any]:
        """The guids of the group's monitors (all monitors for the All Monitors group)."""
        if group.is_all:
            return sa.select(monitor.c.guid)
        m = monitor_group_member.c
        return sa.select(m.monitor_guid).where(m.group_guid == group.guid)

    async def group_monitor_guids(self, group: GroupRow) -> list[str]:
        """The group's monitors, in the order the monitors were created."""
        members = self._members_query(group).subquery()
        query = (
            sa.select(monitor.c.guid)
            .where(monitor.c.guid.in_(sa.select(members.c[0])))
            .order_by(monitor.c.created_us, monitor.c.guid)
        )
        async with self._connect() as conn:
            return [r.guid for r in await conn.execute(query)]

    async def add_group_member(self, group_guid: str, monitor_guid: str) -> None:
        """Idempotent: a member added again stays one member."""
        async with self._begin() as conn:
            await conn.execute(
                self._insert(monitor_group_member)
                .values(group_guid=group_guid, monitor_guid=monitor_guid)
                .on_conflict_do_nothing()
            )
            await self._bump_alerting(conn)  # it may be in alert definitions

    async def remove_group_member(self, group_guid: str, monitor_guid: str) -> bool:
        m = monitor_group_member.c
        async with self._begin() as conn:
            result = await conn.execute(
                sa.delete(monitor_group_member).where(
                    m.group_guid == group_guid, m.monitor_guid == monitor_guid
                )
            )
            await self._bump_alerting(conn)  # it may be in alert definitions
        return bool(result.rowcount)

    async def groups_of_monitor(self, monitor_guid: str) -> list[str]:
        """The guids of the groups a monitor is in: All Monitors and those listing it."""
        g, m = monitor_group.c, monitor_group_member.c
        listing = sa.select(m.group_guid).where(m.monitor_guid == monitor_guid)
        query = (
            sa.select(g.guid)
            .where(sa.or_(g.is_all.is_(True), g.guid.in_(listing)))
            .order_by(g.is_all.desc(), g.created_us, g.guid)
        )
        async with self._connect() as conn:
            return [r.guid for r in await conn.execute(query)]

    async def new_maintenance_period_id(self, monitor_guid: str) -> int:
        """An id no maintenance period has had (ids are never given twice)."""
        async with self._begin() as conn:
            result = await conn.execute(
                sa.insert(maintenance_period_id).values(
                    monitor_guid=monitor_guid, created_us=now_us()
                )
            )
            key = result.inserted_primary_key
            return int(key[0]) if key else 0

    # --- assignments --------------------------------------------------------------------------

    async def assignments(self) -> dict[tuple[str, str], str]:
        """(monitor guid, agent id) -> revision published."""
        async with self._connect() as conn:
            rows = await conn.execute(sa.select(assignment))
            return {(r.monitor_guid, r.agent_id): r.revision for r in rows}

    async def assignment_rows(
        self,
    ) -> list[tuple[str, str, str, tuple[int, int] | None]]:
        """(monitor guid, agent id, revision, turn or None when not known) as published."""
        async with self._connect() as conn:
            rows = await conn.execute(sa.select(assignment))
            return [
                (
                    r.monitor_guid,
                    r.agent_id,
                    r.revision,
                    None
                    if r.rotation_position is None or r.rotation_count is None
                    else (r.rotation_position, r.rotation_count),
                )
                for r in rows
            ]

    async def set_assignment(
        self, monitor_guid: str, agent_id: str, revision: str | None, at_us: int | None = None
    ) -> None:
        """Record what is published, and in the history when the placement began or ended."""
        stamp = now_us() if at_us is None else at_us
        await self.set_assignments([(monitor_guid, agent_id, revision, stamp, None)])

    async def set_assignments(self, changes: Sequence[AssignmentChange]) -> None:
        """`set_assignment` for many, in order, in one transaction with a few statements. A
        change with a revision opens a history interval at its time unless one is open; one
        without closes it. The turn is stored so that a restarted controller knows it."""
        if not changes:
            return
        h = assignment_history.c
        keys = list(dict.fromkeys((change[0], change[1]) for change in changes))
        final: dict[tuple[str, str], tuple[str | None, tuple[int, int] | None]] = {}
        opened: dict[tuple[str, str], list[dict[str, Any]]] = {}  # intervals begun here
        closes: list[dict[str, Any]] = []  # intervals open in the database to close
        async with self._begin() as conn:
            # by monitor, then by agent here: a (guid, agent) IN (...) is a full scan on SQLite
            guids = list({guid for guid, _agent in keys})
            open_rows = await conn.execute(
                sa.select(h.monitor_guid, h.agent_id).where(
                    h.monitor_guid.in_(guids), h.end_us.is_(None)
                )
            )
            wanted = set(keys)
            open_in_db = {(r.monitor_guid, r.agent_id) for r in open_rows} & wanted
            for guid, agent, revision, at_us, turn in changes:
                key = (guid, agent)
                final[key] = (revision, turn)
                begun = opened.setdefault(key, [])
                open_here = bool(begun) and begun[-1]["end_us"] is None
                if revision is not None:
                    if not open_here and key not in open_in_db:
                        begun.append(
                            {
                                "monitor_guid": guid,
                                "agent_id": agent,
                                "start_us": at_us,
                                "end_us": None,
                            }
                        )
                elif open_here:
                    begun[-1]["end_us"] = at_us
                elif key in open_in_db:
                    open_in_db.discard(key)
                    closes.append({"g": guid, "a": agent, "end": at_us})
            await conn.execute(
                sa.delete(assignment).where(
                    assignment.c.monitor_guid == sa.bindparam("g"),
                    assignment.c.agent_id == sa.bindparam("a"),
                ),
                [{"g": guid, "a": agent} for guid, agent in keys],
            )
            rows = [
                {
                    "monitor_guid": guid,
                    "agent_id": agent,
                    "revision": revision,
                    "rotation_position": turn[0] if turn else None,
                    "rotation_count": turn[1] if turn else None,
                }
                for (guid, agent), (revision, turn) in final.items()
                if revision is not None
            ]
            if rows:
                await conn.execute(sa.insert(assignment), rows)
            if closes:
                await conn.execute(
                    sa.update(assignment_history)
                    .where(
                        h.monitor_guid == sa.bindparam("g"),
                        h.agent_id == sa.bindparam("a"),
                        h.end_us.is_(None),
                    )
                    .values(end_us=sa.bindparam("end")),
                    closes,
                )
            intervals = [interval for begun in opened.values() for interval in begun]
            if intervals:
                await conn.execute(sa.insert(assignment_history), intervals)

    async def assignment_history(self) -> list[tuple[str, str, int, int | None]]:
        """(monitor guid, agent id, start, end or None while assigned)."""
        h = assignment_history.c
        async with self._connect() as conn:
            rows = await conn.execute(
                sa.select(h.monitor_guid, h.agent_id, h.start_us, h.end_us).order_by(h.id)
            )
            return [(r.monitor_guid, r.agent_id, r.start_us, r.end_us) for r in rows]

    async def forget_history(
        self, monitor_guid: str | None = None, ended_before_us: int | None = None
    ) -> int:
        """Delete a (deleted) monitor's closed intervals, or all that ended before a time."""
        h = assignment_history.c
        query = sa.delete(assignment_history).where(h.end_us.is_not(None))
        if monitor_guid is not None:
            query = query.where(h.monitor_guid == monitor_guid)
        if ended_before_us is not None:
            query = query.where(h.end_us < ended_before_us)
        async with self._begin() as conn:
            result = await conn.execute(query)
        return int(result.rowcount or 0)

    # --- checks -------------------------------------------------------------------------------

    async def known_uids(self, uids: list[str]) -> set[str]:
        """Which of these result uids are stored already."""
        if not uids:
            return set()
        found: set[str] = set()
        async with self._connect() as conn:
            for start in range(0, len(uids), 500):
                chunk = uids[start : start + 500]
                rows = await conn.execute(
                    sa.select(monitor_check.c.uid).where(monitor_check.c.uid.in_(chunk))
                )
                found.update(r.uid for r in rows)
        return found

    async def check_ids(self, uids: list[str]) -> dict[str, int]:
        """The ids of the stored checks among these result uids."""
        if not uids:
            return {}
        found: dict[str, int] = {}
        c = monitor_check.c
        async with self._connect() as conn:
            for start in range(0, len(uids), 500):
                rows = await conn.execute(
                    sa.select(c.uid, c.id).where(c.uid.in_(uids[start : start + 500]))
                )
                found.update({r.uid: r.id for r in rows})
        return found

    async def slots_stored(
        self, slots: list[tuple[str, int]], late_us: int = 300_000_000
    ) -> set[tuple[str, int, int | None]]:
        """Of these (monitor, scheduled time) slots, the ones with a check stored already, as
        (monitor, scheduled time, server id). A check starts at or after its slot (on the
        agent's clock), so the (monitor, time) index finds it within `late_us` after it."""
        if not slots:
            return set()
        c = monitor_check.c
        found: set[tuple[str, int, int | None]] = set()
        async with self._connect() as conn:
            for start in range(0, len(slots), 100):
                chunk = slots[start : start + 100]
                query = sa.select(c.monitor_guid, c.scheduled_us, c.server_id).where(
                    sa.or_(
                        *(
                            sa.and_(
                                c.monitor_guid == guid,
                                c.ts_us >= slot - 1_000_000,
                                c.ts_us <= slot + late_us,
                                c.scheduled_us == slot,
                            )
                            for guid, slot in chunk
                        )
                    )
                )
                rows = await conn.execute(query)
                found.update((r.monitor_guid, r.scheduled_us, r.server_id) for r in rows)
        return found

    async def insert_checks(self, rows: Sequence[dict[str, Any]]) -> set[str]:
        """Insert what is new; a uid already stored is skipped. Returns the uids inserted."""
        if not rows:
            return set()
        stmt = (
            self._insert(monitor_check)
            .on_conflict_do_nothing(index_elements=["uid"])
            .returning(monitor_check.c.uid)
        )
        async with self._begin() as conn:
            result = await conn.execute(stmt, list(rows))
            return {r.uid for r in result}

    async def withdraw_placeholders(self, uids: Sequence[str]) -> int:
        """Delete these placeholder rows (error NO_LIVE_CHECKPOINT: controller/nolive.py), if
        stored: a real result for their slot has come. Returns how many."""
        if not uids:
            return 0
        c = monitor_check.c
        code = int(ErrorCode.NO_LIVE_CHECKPOINT)
        deleted = 0
        async with self._begin() as conn:
            for start in range(0, len(uids), 500):
                chunk = list(uids[start : start + 500])
                result = await conn.execute(
                    sa.delete(monitor_check).where(c.uid.in_(chunk), c.error_code == code)
                )
                deleted += int(result.rowcount or 0)
        return deleted

    async def delete_superseded_placeholders(
        self, uids: Sequence[str], early_us: int = 60_000_000, late_us: int = 600_000_000
    ) -> set[str]:
        """Of these placeholder rows, delete those whose slot (monitor, scheduled time within
        a millisecond) has another row: a real result stored before or while the placeholder
        was. The other row started within `early_us` before and `late_us` after the slot, so
        the (monitor, time) index finds it. Returns the uids deleted."""
        if not uids:
            return set()
        c = monitor_check.c
        other = monitor_check.alias("other")
        o = other.c
        code = int(ErrorCode.NO_LIVE_CHECKPOINT)
        real = (
            sa.select(o.id)
            .where(
                o.monitor_guid == c.monitor_guid,
                o.ts_us >= c.scheduled_us - early_us,
                o.ts_us <= c.scheduled_us + late_us,
                o.scheduled_us >= c.scheduled_us - 1000,
                o.scheduled_us <= c.scheduled_us + 1000,
                o.error_code != code,
            )
            .exists()
        )
        found: set[str] = set()
        async with self._begin() as conn:
            for start in range(0, len(uids), 500):
                chunk = list(uids[start : start + 500])
                doomed = sa.select(c.uid).where(c.uid.in_(chunk), c.error_code == code, real)
                gone = {r.uid for r in await conn.execute(doomed)}
                if gone:
                    await conn.execute(sa.delete(monitor_check).where(c.uid.in_(sorted(gone))))
                found |= gone
        return found

    async def insert_dead_letters(self, rows: Sequence[dict[str, Any]]) -> None:
        """Results the database refused, kept with the reason (see schema.dead_letter)."""
        if rows:
            async with self._begin() as conn:
                await conn.execute(sa.insert(dead_letter), list(rows))

    async def delete_dead_letters(
        self, before_us: int | None, monitor_guid: str | None, limit: int
    ) -> int:
        """Delete at most `limit` dead letters: those received before `before_us`, or all of
        `monitor_guid`'s, in one short transaction. Returns how many."""
        d = dead_letter.c
        chosen = sa.select(d.id)
        if before_us is not None:
            chosen = chosen.where(d.received_us < before_us)
        if monitor_guid is not None:
            chosen = chosen.where(d.monitor_guid == monitor_guid)
        async with self._begin() as conn:
            ids = list((await conn.execute(chosen.order_by(d.id).limit(limit))).scalars())
            if not ids:
                return 0
            result = await conn.execute(sa.delete(dead_letter).where(d.id.in_(ids)))
        return int(result.rowcount or 0)

    async def dead_letters(self, limit: int = 100) -> list[dict[str, Any]]:
        """The newest dead letters first."""
        async with self._connect() as conn:
            rows = await conn.execute(
                sa.select(dead_letter).order_by(dead_letter.c.id.desc()).limit(limit)
            )
            return [dict(r._mapping) for r in rows]

    @staticmethod
    def _check(row: Any) -> CheckRow:
        return CheckRow(
            id=row.id,
            uid=row.uid,
            monitor_guid=row.monitor_guid,
            server_id=row.server_id,
            ts_us=row.ts_us,
            scheduled_us=row.scheduled_us,
            error_level=row.error_level,
            error_code=row.error_code,
            attributes=json.loads(row.attributes),
            response_body=row.response_body,
            details=json.loads(row.details) if row.details else None,
            kind=row.check_kind,
        )

    async def check(self, check_id: int) -> CheckRow | None:
        async with self._connect() as conn:
            row = (
                await conn.execute(sa.select(monitor_check).where(monitor_check.c.id == check_id))
            ).first()
            return self._check(row) if row else None

    async def checks_page(
        self,
        monitor_guid: str | GroupRow,
        start_us: int | None,
        end_us: int | None,
        min_level: int,
        descending: bool,
        after: tuple[int, int] | None,
        limit: int,
        inconclusive: bool | None = None,
    ) -> list[CheckRow]:
        """A monitor's checks, or a group's monitors' (`monitor_guid` a GroupRow).
        `inconclusive`: only those (True), none of them (False), or all (None)."""
        c = monitor_check.c
        # a concurrent slot is listed as its concurrent check; its partials are
        # partial_checks' (GET /MonitorCheck/{id}/Concurrent)
        whose: sa.ColumnElement[bool]
        if isinstance(monitor_guid, GroupRow):
            whose = c.monitor_guid.in_(self._members_query(monitor_guid))
        else:
            whose = c.monitor_guid == monitor_guid
        query = sa.select(monitor_check).where(whose, c.check_kind != PARTIAL)
        if inconclusive is not None:
            codes = sorted(int(code) for code in INCONCLUSIVE_CODES)
            query = query.where(
                c.error_code.in_(codes) if inconclusive else c.error_code.not_in(codes)
            )
        if start_us is not None:
            query = query.where(c.ts_us >= start_us)
        if end_us is not None:
            query = query.where(c.ts_us < end_us)
        if min_level:
            query = query.where(c.error_level >= min_level)
        # newest first by start time; ascending in the order stored (by id), so a reader that
        # keeps its cursor also finds a check stored late (a slow check, an outbox replay)
        if after is not None:
            if descending:
                query = query.where(sa.tuple_(c.ts_us, c.id) < sa.tuple_(*after))
            else:
                query = query.where(c.id > after[1])
        order = (c.ts_us.desc(), c.id.desc()) if descending else (c.id.asc(),)
        async with self._connect() as conn:
            rows = await conn.execute(query.order_by(*order).limit(limit))
            return [self._check(r) for r in rows]

    async def partial_checks(self, concurrent: CheckRow, within_us: int) -> list[CheckRow]:
        """The partial checks of a concurrent check's slot (started within `within_us` of
        it: the (monitor, time) index finds them)."""
        c = monitor_check.c
        query = sa.select(monitor_check).where(
            c.monitor_guid == concurrent.monitor_guid,
            c.ts_us >= concurrent.scheduled_us - within_us,
            c.ts_us <= concurrent.scheduled_us + within_us,
            c.scheduled_us == concurrent.scheduled_us,
            c.check_kind == PARTIAL,
        )
        async with self._connect() as conn:
            rows = await conn.execute(query.order_by(c.ts_us, c.id))
            return [self._check(r) for r in rows]

    async def recent_partials(self, monitor_guid: str, since_us: int) -> list[CheckRow]:
        """A monitor's partial checks started since `since_us` (the (monitor, time) index)."""
        c = monitor_check.c
        query = sa.select(monitor_check).where(
            c.monitor_guid == monitor_guid, c.ts_us >= since_us, c.check_kind == PARTIAL
        )
        async with self._connect() as conn:
            rows = await conn.execute(query.order_by(c.ts_us, c.id))
            return [self._check(r) for r in rows]

    async def last_levels(self) -> dict[str, int]:
        """Each monitor's most recent error level (alert state survives a controller restart);
        a partial check's level is not the monitor's, nor is an inconclusive check's."""
        c = monitor_check.c
        latest = (
            sa.select(c.monitor_guid, sa.func.max(c.id).label("id"))
            .where(
                c.check_kind != PARTIAL,
                c.error_code.not_in(sorted(int(code) for code in INCONCLUSIVE_CODES)),
            )
            .group_by(c.monitor_guid)
        ).subquery()
        async with self._connect() as conn:
            rows = await conn.execute(
                sa.select(c.monitor_guid, c.error_level).join(latest, latest.c.id == c.id)
            )
            return {r.monitor_guid: r.error_level for r in rows}

    async def delete_checks(self, monitor_guid: str, before_us: int | None, limit: int) -> int:
        """Delete at most `limit` of a monitor's checks (those started before `before_us`, or
        all), in one short transaction on the (monitor, time) index. Returns how many."""
        c = monitor_check.c
        chosen = sa.select(c.id).where(c.monitor_guid == monitor_guid)
        if before_us is not None:
            chosen = chosen.where(c.ts_us < before_us)
        async with self._begin() as conn:
            # read first: a pass that finds nothing to delete takes no write lock
            ids = list((await conn.execute(chosen.order_by(c.ts_us).limit(limit))).scalars())
            if not ids:
                return 0
            result = await conn.execute(sa.delete(monitor_check).where(c.id.in_(ids)))
        return int(result.rowcount or 0)

    # --- integrations ---------------------------------------------------------------------------

    @staticmethod
    def _integration_row(row: Any) -> dict[str, Any]:
        found = dict(row._mapping)
        found["config"] = json.loads(found["config"])
        return found

    async def integrations(self) -> list[dict[str, Any]]:
        async with self._connect() as conn:
            query = sa.select(integration).order_by(integration.c.created_us, integration.c.guid)
            return [self._integration_row(r) for r in await conn.execute(query)]

    async def integration(self, guid: str) -> dict[str, Any] | None:
        async with self._connect() as conn:
            query = sa.select(integration).where(integration.c.guid == guid)
            row = (await conn.execute(query)).first()
            return self._integration_row(row) if row else None

    async def create_integration(
        self,
        guid: str,
        name: str,
        type_: str,
        kind: str | None,
        config: dict[str, Any],
        revision: str,
    ) -> None:
        now = now_us()
        async with self._begin() as conn:
            await conn.execute(
                sa.insert(integration).values(
                    guid=guid,
                    name=name,
                    type=type_,
                    kind=kind,
                    config=json.dumps(config, ensure_ascii=False),
                    revision=revision,
                    created_us=now,
                    modified_us=now,
                )
            )

    async def update_integration(
        self, guid: str, name: str, config: dict[str, Any], revision: str, expected: str
    ) -> bool:
        """Replace the configuration if it is still at revision `expected` (compare-and-set:
        two edits at once cannot merge one's secrets into the other's URL); False if it is
        gone or was changed meanwhile."""
        async with self._begin() as conn:
            result = await conn.execute(
                sa.update(integration)
                .where(integration.c.guid == guid, integration.c.revision == expected)
                .values(
                    name=name,
                    config=json.dumps(config, ensure_ascii=False),
                    revision=revision,
                    modified_us=now_us(),
                )
            )
        return bool(result.rowcount)

    async def delete_integration(self, guid: str) -> bool:
        async with self._begin() as conn:
            result = await conn.execute(sa.delete(integration).where(integration.c.guid == guid))
            await self._bump_alerting(conn)  # it may be in alert definitions
        return bool(result.rowcount)

    # --- alert definitions ----------------------------------------------------------------------

    @staticmethod
    async def _bump_alerting(conn: AsyncConnection) -> None:
        """Raise the alerting revision (in the caller's transaction): every controller's cache
        of alert definitions reloads when it sees it (controller/alerting/definitions.py)."""
        r = alerting_revision.c
        await conn.execute(
            sa.update(alerting_revision).where(r.id == 1).values(revision=r.revision + 1)
        )

    @staticmethod
    async def _definition_locked(conn: AsyncConnection, guid: str) -> bool:
        """Whether the definition exists; on PostgreSQL its row is locked until the end of the
        transaction, so that two writers count its members one after the other."""
        query = (
            sa.select(alert_definition.c.guid)
            .where(alert_definition.c.guid == guid)
            .with_for_update()
        )
        return await conn.scalar(query) is not None

    async def alerting_revision(self) -> int:
        async with self._connect() as conn:
            found = await conn.scalar(
                sa.select(alerting_revision.c.revision).where(alerting_revision.c.id == 1)
            )
            return int(found or 0)

    async def alert_definitions(self) -> list[dict[str, Any]]:
        d = alert_definition.c
        async with self._connect() as conn:
            rows = await conn.execute(sa.select(alert_definition).order_by(d.created_us, d.guid))
            return [dict(r._mapping) for r in rows]

    async def alert_definition(self, guid: str) -> dict[str, Any] | None:
        async with self._connect() as conn:
            row = (
                await conn.execute(
                    sa.select(alert_definition).where(alert_definition.c.guid == guid)
                )
            ).first()
            return dict(row._mapping) if row else None

    async def create_alert_definition(
        self,
        guid: str,
        name: str,
        is_active: bool,
        levels: Sequence[dict[str, Any]],
        limit: int,
    ) -> bool:
        """A definition with its escalation levels; False when `limit` definitions exist."""
        now = now_us()
        async with self._begin() as conn:
            count = await conn.scalar(sa.select(sa.func.count()).select_from(alert_definition))
            if int(count or 0) >= limit:
                return False
            await conn.execute(
                sa.insert(alert_definition).values(
                    guid=guid, name=name, is_active=is_active, created_us=now, modified_us=now
                )
            )
            await conn.execute(
                sa.insert(escalation_level), [{**lv, "definition_guid": guid} for lv in levels]
            )
            await self._bump_alerting(conn)
        return True

    async def update_alert_definition(self, guid: str, values: dict[str, Any]) -> bool:
        async with self._begin() as conn:
            result = await conn.execute(
                sa.update(alert_definition)
                .where(alert_definition.c.guid == guid)
                .values(**values, modified_us=now_us())
            )
            await self._bump_alerting(conn)
        return bool(result.rowcount)

    async def delete_alert_definition(self, guid: str) -> bool:
        """Its levels, members and level integrations go with it."""
        async with self._begin() as conn:
            result = await conn.execute(
                sa.delete(alert_definition).where(alert_definition.c.guid == guid)
            )
            await self._bump_alerting(conn)
        return bool(result.rowcount)

    async def escalation_levels(self, guid: str) -> list[dict[str, Any]]:
        e = escalation_level.c
        async with self._connect() as conn:
            rows = await conn.execute(
                sa.select(escalation_level).where(e.definition_guid == guid).order_by(e.level)
            )
            return [dict(r._mapping) for r in rows]

    async def update_escalation_level(self, guid: str, level: int, values: dict[str, Any]) -> bool:
        e = escalation_level.c
        async with self._begin() as conn:
            result = await conn.execute(
                sa.update(escalation_level)
                .where(e.definition_guid == guid, e.level == level)
                .values(**values)
            )
            if result.rowcount:
                await conn.execute(
                    sa.update(alert_definition)
                    .where(alert_definition.c.guid == guid)
                    .values(modified_us=now_us())
                )
            await self._bump_alerting(conn)
        return bool(result.rowcount)

    # members of a definition: "monitor" or "group"; of a level: "operator" or "group"
    _DEFINITION_MEMBERS = {
        "monitor": (alert_definition_monitor, "monitor_guid"),
        "group": (alert_definition_monitor_group, "group_guid"),
    }
    _LEVEL_MEMBERS = {
        "operator": (escalation_level_operator, "operator_guid"),
        "group": (escalation_level_operator_group, "group_guid"),
    }

    async def alert_definition_members(self, guid: str) -> list[tuple[str, str]]:
        """(kind, guid) of the definition's members, as added."""
        found: list[tuple[int, str, str, str]] = []
        async with self._connect() as conn:
            for kind, (table, column) in self._DEFINITION_MEMBERS.items():
                rows = await conn.execute(
                    sa.select(table.c[column], table.c.created_us).where(
                        table.c.definition_guid == guid
                    )
                )
                found.extend((r.created_us, r[0], kind, r[0]) for r in rows)
        return [(kind, member) for _, _, kind, member in sorted(found)]

    async def add_alert_definition_member(
        self, guid: str, kind: str, member: str, limit: int
    ) -> bool | None:
        """True: added or a member already; False: the definition is gone; None: it has
        `limit` members. StoreRejected: the member is gone (a foreign key refused it)."""
        table, column = self._DEFINITION_MEMBERS[kind]
        async with self._begin() as conn:
            if not await self._definition_locked(conn, guid):
                return False
            exists = await conn.scalar(
                sa.select(sa.func.count())
                .select_from(table)
                .where(table.c.definition_guid == guid, table.c[column] == member)
            )
            if exists:
                return True
            total = 0
            for other, _ in self._DEFINITION_MEMBERS.values():
                total += int(
                    await conn.scalar(
                        sa.select(sa.func.count())
                        .select_from(other)
                        .where(other.c.definition_guid == guid)
                    )
                    or 0
                )
            if total >= limit:
                return None
            await conn.execute(
                self._insert(table)
                .values(definition_guid=guid, created_us=now_us(), **{column: member})
                .on_conflict_do_nothing()
            )
            await self._bump_alerting(conn)
        return True

    async def remove_alert_definition_member(self, guid: str, kind: str, member: str) -> bool:
        table, column = self._DEFINITION_MEMBERS[kind]
        async with self._begin() as conn:
            result = await conn.execute(
                sa.delete(table).where(table.c.definition_guid == guid, table.c[column] == member)
            )
            await self._bump_alerting(conn)
        return bool(result.rowcount)

    async def escalation_level_members(self, guid: str, level: int) -> list[tuple[str, str]]:
        """(kind, guid) of the level's operators and operator groups, as added."""
        found: list[tuple[int, str, str, str]] = []
        async with self._connect() as conn:
            for kind, (table, column) in self._LEVEL_MEMBERS.items():
                rows = await conn.execute(
                    sa.select(table.c[column], table.c.created_us).where(
                        table.c.definition_guid == guid, table.c.level == level
                    )
                )
                found.extend((r.created_us, r[0], kind, r[0]) for r in rows)
        return [(kind, member) for _, _, kind, member in sorted(found)]

    async def add_escalation_level_member(
        self, guid: str, level: int, kind: str, member: str, limit: int
    ) -> bool | None:
        """As add_alert_definition_member, for an escalation level's operators and groups."""
        table, column = self._LEVEL_MEMBERS[kind]
        async with self._begin() as conn:
            if not await self._definition_locked(conn, guid):
                return False
            here = (table.c.definition_guid == guid, table.c.level == level)
            exists = await conn.scalar(
                sa.select(sa.func.count())
                .select_from(table)
                .where(*here, table.c[column] == member)
            )
            if exists:
                return True
            total = 0
            for other, _ in self._LEVEL_MEMBERS.values():
                total += int(
                    await conn.scalar(
                        sa.select(sa.func.count())
                        .select_from(other)
                        .where(other.c.definition_guid == guid, other.c.level == level)
                    )
                    or 0
                )
            if total >= limit:
                return None
            await conn.execute(
                self._insert(table)
                .values(definition_guid=guid, level=level, created_us=now_us(), **{column: member})
                .on_conflict_do_nothing()
            )
            await self._bump_alerting(conn)
        return True

    async def remove_escalation_level_member(
        self, guid: str, level: int, kind: str, member: str
    ) -> bool:
        table, column = self._LEVEL_MEMBERS[kind]
        async with self._begin() as conn:
            result = await conn.execute(
                sa.delete(table).where(
                    table.c.definition_guid == guid,
                    table.c.level == level,
                    table.c[column] == member,
                )
            )
            await self._bump_alerting(conn)
        return bool(result.rowcount)

    @staticmethod
    def _level_integration(row: Any) -> dict[str, Any]:
        found = dict(row._mapping)
        found["variable_values"] = json.loads(found["variable_values"])
        found["extra_email_addresses"] = json.loads(found["extra_email_addresses"])
        return found

    def _level_integrations_query(self, guid: str, level: int) -> sa.Select[Any]:
        li, i = escalation_level_integration.c, integration.c
        return (
            sa.select(
                escalation_level_integration,
                i.name.label("integration_name"),
                i.type.label("integration_type"),
                i.kind.label("integration_kind"),
            )
            .join(integration, i.guid == li.integration_guid)
            .where(li.definition_guid == guid, li.level == level)
            .order_by(li.created_us, li.integration_guid)
        )

    async def escalation_level_integrations(self, guid: str, level: int) -> list[dict[str, Any]]:
        """The level's integrations, each with the integration's name, type and kind."""
        async with self._connect() as conn:
            rows = await conn.execute(self._level_integrations_query(guid, level))
            return [self._level_integration(r) for r in rows]

    async def escalation_level_integration(
        self, guid: str, level: int, integration_guid: str
    ) -> dict[str, Any] | None:
        query = self._level_integrations_query(guid, level).where(
            escalation_level_integration.c.integration_guid == integration_guid
        )
        async with self._connect() as conn:
            row = (await conn.execute(query)).first()
            return self._level_integration(row) if row else None

    @staticmethod
    def _level_integration_values(values: dict[str, Any]) -> dict[str, Any]:
        stored = dict(values)
        for name in ("variable_values", "extra_email_addresses"):
            if name in stored:
                stored[name] = json.dumps(stored[name], ensure_ascii=False)
        return stored

    async def add_escalation_level_integration(
        self, guid: str, level: int, integration_guid: str, values: dict[str, Any], limit: int
    ) -> str:
        """ "added", "exists" (on the level already: nothing changed), "full" (`limit`
        integrations on the level) or "gone" (the definition). StoreRejected: the integration
        is gone."""
        li = escalation_level_integration.c
        here = (li.definition_guid == guid, li.level == level)
        async with self._begin() as conn:
            if not await self._definition_locked(conn, guid):
                return "gone"
            exists = await conn.scalar(
                sa.select(sa.func.count())
                .select_from(escalation_level_integration)
                .where(*here, li.integration_guid == integration_guid)
            )
            if exists:
                return "exists"
            count = await conn.scalar(
                sa.select(sa.func.count()).select_from(escalation_level_integration).where(*here)
            )
            if int(count or 0) >= limit:
                return "full"
            await conn.execute(
                sa.insert(escalation_level_integration).values(
                    definition_guid=guid,
                    level=level,
                    integration_guid=integration_guid,
                    created_us=now_us(),
                    **self._level_integration_values(values),
                )
            )
            await self._bump_alerting(conn)
        return "added"

    async def update_escalation_level_integration(
        self, guid: str, level: int, integration_guid: str, values: dict[str, Any]
    ) -> bool:
        li = escalation_level_integration.c
        async with self._begin() as conn:
            result = await conn.execute(
                sa.update(escalation_level_integration)
                .where(
                    li.definition_guid == guid,
                    li.level == level,
                    li.integration_guid == integration_guid,
                )
                .values(**self._level_integration_values(values))
            )
            await self._bump_alerting(conn)
        return bool(result.rowcount)

    async def remove_escalation_level_integration(
        self, guid: str, level: int, integration_guid: str
    ) -> bool:
        li = escalation_level_integration.c
        async with self._begin() as conn:
            result = await conn.execute(
                sa.delete(escalation_level_integration).where(
                    li.definition_guid == guid,
                    li.level == level,
                    li.integration_guid == integration_guid,
                )
            )
            await self._bump_alerting(conn)
        return bool(result.rowcount)

    async def alerting_snapshot(self) -> tuple[int, dict[str, list[dict[str, Any]]]]:
        """The alerting revision, then every active definition with what hangs from it, by
        table: definitions, levels, monitors, groups (with is_all and, for the others, their
        member monitors in group_members), operators, operator_groups, integrations. The
        revision is read first: a change made while reading raises it past the one returned,
        so the next look reloads."""
        tables: dict[str, list[dict[str, Any]]] = {}
        d = alert_definition.c
        async with self._connect() as conn:
            revision = int(
                await conn.scalar(
                    sa.select(alerting_revision.c.revision).where(alerting_revision.c.id == 1)
                )
                or 0
            )
            active = sa.select(d.guid).where(d.is_active.is_(True))

            async def rows(query: sa.Select[Any]) -> list[dict[str, Any]]:
                return [dict(r._mapping) for r in await conn.execute(query)]

            tables["definitions"] = await rows(
                sa.select(alert_definition)
                .where(d.is_active.is_(True))
                .order_by(d.created_us, d.guid)
            )
            tables["levels"] = await rows(
                sa.select(escalation_level)
                .where(escalation_level.c.definition_guid.in_(active))
                .order_by(escalation_level.c.level)
            )
            for name, table in (
                ("monitors", alert_definition_monitor),
                ("operators", escalation_level_operator),
                ("operator_groups", escalation_level_operator_group),
            ):
                tables[name] = await rows(
                    sa.select(table)
                    .where(table.c.definition_guid.in_(active))
                    .order_by(table.c.created_us)
                )
            adg, g = alert_definition_monitor_group.c, monitor_group.c
            tables["groups"] = await rows(
                sa.select(adg.definition_guid, adg.group_guid, g.is_all)
                .join(monitor_group, g.guid == adg.group_guid)
                .where(adg.definition_guid.in_(active))
                .order_by(adg.created_us)
            )
            m = monitor_group_member.c
            tables["group_members"] = await rows(
                sa.select(m.group_guid, m.monitor_guid).where(
                    m.group_guid.in_(
                        sa.select(adg.group_guid).where(adg.definition_guid.in_(active))
                    )
                )
            )
            li = escalation_level_integration.c
            tables["integrations"] = [
                self._level_integration(r)
                for r in await conn.execute(
                    sa.select(escalation_level_integration)
                    .where(li.definition_guid.in_(active))
                    .order_by(li.created_us, li.integration_guid)
                )
            ]
        return revision, tables
