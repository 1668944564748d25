"""All SQL the controller runs. The rest of the controller sees plain rows and values."""

from __future__ import annotations

import json
import os
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import sqlalchemy as sa
from sqlalchemy import event
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine, create_async_engine

from controller.db import migrate
from controller.db.schema import (
    api_account,
    assignment,
    assignment_history,
    checkpoint,
    monitor,
    monitor_check,
    operator,
    region,
    server,
)
from controller.trust import published_addresses


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


class NameTaken(Exception):
    pass


class Store:
    def __init__(self, engine: AsyncEngine) -> None:
        self.engine = engine
        self.dialect = engine.dialect.name

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
                url, pool_size=10, max_overflow=10, pool_pre_ping=True, hide_parameters=True
            )
        await migrate.upgrade(engine)
        return cls(engine)

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
    ) -> ServerRow:
        """Ids are assigned on first registration and kept (keyed by names and agent id)."""
        stamp = now_us()
        async with self.engine.begin() as conn:
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
            stmt = self._insert(server).values(agent_id=agent_id, first_seen_us=stamp, **values)
            await conn.execute(stmt.on_conflict_do_update(index_elements=["agent_id"], set_=values))
        found = await self.server_by_agent(agent_id)
        assert found is not None
        return found

    async def set_server_online(self, agent_id: str, online: bool) -> bool:
        async with self.engine.begin() as conn:
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
        )

    async def servers(self) -> list[ServerRow]:
        async with self.engine.connect() as conn:
            rows = await conn.execute(self._servers_query().order_by(server.c.id))
            return [self._server(r) for r in rows]

    async def server_by_agent(self, agent_id: str) -> ServerRow | None:
        async with self.engine.connect() as conn:
            rows = await conn.execute(self._servers_query().where(server.c.agent_id == agent_id))
            row = rows.first()
            return self._server(row) if row else None

    async def checkpoints(self) -> list[dict[str, Any]]:
        async with self.engine.connect() as conn:
            rows = await conn.execute(
                sa.select(
                    checkpoint.c.id,
                    checkpoint.c.name,
                    checkpoint.c.code,
                    checkpoint.c.region_id,
                    region.c.name.label("region_name"),
                )
                .join(region, region.c.id == checkpoint.c.region_id)
                .order_by(checkpoint.c.id)
            )
            return [dict(r._mapping) for r in rows]

    # --- operators and API accounts -----------------------------------------------------------

    async def operator_by_username(self, username: str) -> dict[str, Any] | None:
        async with self.engine.connect() as conn:
            row = (
                await conn.execute(sa.select(operator).where(operator.c.username == username))
            ).first()
            return dict(row._mapping) if row else None

    async def operator_by_guid(self, guid: str) -> dict[str, Any] | None:
        async with self.engine.connect() as conn:
            row = (await conn.execute(sa.select(operator).where(operator.c.guid == guid))).first()
            return dict(row._mapping) if row else None

    async def create_operator(
        self, guid: str, username: str, full_name: str, password_hash: str, is_admin: bool
    ) -> None:
        async with self.engine.begin() as conn:
            await conn.execute(
                sa.insert(operator).values(
                    guid=guid,
                    username=username,
                    full_name=full_name,
                    password_hash=password_hash,
                    is_admin=is_admin,
                    created_us=now_us(),
                )
            )

    async def set_operator_password(self, guid: str, password_hash: str) -> None:
        async with self.engine.begin() as conn:
            await conn.execute(
                sa.update(operator)
                .where(operator.c.guid == guid)
                .values(password_hash=password_hash)
            )

    async def create_api_account(
        self, username: str, password_hash: str, operator_guid: str, description: str
    ) -> None:
        async with self.engine.begin() as conn:
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
        async with self.engine.connect() as conn:
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
        async with self.engine.connect() as conn:
            rows = await conn.execute(sa.select(monitor).order_by(monitor.c.created_us))
            return [self._monitor(r) for r in rows]

    async def monitor(self, guid: str) -> MonitorRow | None:
        async with self.engine.connect() as conn:
            row = (await conn.execute(sa.select(monitor).where(monitor.c.guid == guid))).first()
            return self._monitor(row) if row else None

    async def save_monitor(self, row: MonitorRow, create: bool) -> bool:
        """False when an update finds the monitor gone (deleted meanwhile)."""
        values = {
            "name": row.name,
            "monitor_type": row.monitor_type,
            "is_active": row.is_active,
            "definition": json.dumps(row.definition, sort_keys=True),
            "revision": row.revision,
            "modified_us": row.modified_us,
        }
        async with self.engine.begin() as conn:
            taken = await conn.scalar(
                sa.select(monitor.c.guid).where(
                    monitor.c.name == row.name, monitor.c.guid != row.guid
                )
            )
            if taken is not None:
                raise NameTaken(row.name)
            if create:
                await conn.execute(
                    sa.insert(monitor).values(guid=row.guid, created_us=row.created_us, **values)
                )
            else:
                result = await conn.execute(
                    sa.update(monitor).where(monitor.c.guid == row.guid).values(**values)
                )
                return bool(result.rowcount)
        return True

    async def delete_monitor(self, guid: str) -> bool:
        """The monitor's checks go afterwards, in batches (controller/retention.py)."""
        async with self.engine.begin() as conn:
            result = await conn.execute(sa.delete(monitor).where(monitor.c.guid == guid))
        return bool(result.rowcount)

    # --- assignments --------------------------------------------------------------------------

    async def assignments(self) -> dict[tuple[str, str], str]:
        """(monitor guid, agent id) -> revision published."""
        async with self.engine.connect() as conn:
            rows = await conn.execute(sa.select(assignment))
            return {(r.monitor_guid, r.agent_id): r.revision for r in rows}

    async def set_assignment(
        self, monitor_guid: str, agent_id: str, revision: str | None, at_us: int | None = None
    ) -> None:
        """Record what is published, and in the history when the placement began or ended."""
        stamp = now_us() if at_us is None else at_us
        h = assignment_history.c
        async with self.engine.begin() as conn:
            await conn.execute(
                sa.delete(assignment).where(
                    assignment.c.monitor_guid == monitor_guid, assignment.c.agent_id == agent_id
                )
            )
            current = (h.monitor_guid == monitor_guid) & (h.agent_id == agent_id)
            open_interval = await conn.scalar(
                sa.select(h.id).where(current, h.end_us.is_(None)).limit(1)
            )
            if revision is not None:
                await conn.execute(
                    sa.insert(assignment).values(
                        monitor_guid=monitor_guid, agent_id=agent_id, revision=revision
                    )
                )
                if open_interval is None:
                    await conn.execute(
                        sa.insert(assignment_history).values(
                            monitor_guid=monitor_guid, agent_id=agent_id, start_us=stamp
                        )
                    )
            elif open_interval is not None:
                await conn.execute(
                    sa.update(assignment_history)
                    .where(current, h.end_us.is_(None))
                    .values(end_us=stamp)
                )

    async def assignment_history(self) -> list[tuple[str, str, int, int | None]]:
        """(monitor guid, agent id, start, end or None while assigned)."""
        h = assignment_history.c
        async with self.engine.connect() as conn:
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
        async with self.engine.begin() as conn:
            result = await conn.execute(query)
        return int(result.rowcount or 0)

    # --- checks -------------------------------------------------------------------------------

    async def known_uids(self, uids: list[str]) -> set[str]:
        """Which of these result uids are stored already."""
        if not uids:
            return set()
        found: set[str] = set()
        async with self.engine.connect() as conn:
            for start in range(0, len(uids), 500):
                chunk = uids[start : start + 500]
                rows = await conn.execute(
                    sa.select(monitor_check.c.uid).where(monitor_check.c.uid.in_(chunk))
                )
                found.update(r.uid for r in rows)
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
        async with self.engine.begin() as conn:
            result = await conn.execute(stmt, list(rows))
            return {r.uid for r in result}

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
        )

    async def check(self, check_id: int) -> CheckRow | None:
        async with self.engine.connect() as conn:
            row = (
                await conn.execute(sa.select(monitor_check).where(monitor_check.c.id == check_id))
            ).first()
            return self._check(row) if row else None

    async def checks_page(
        self,
        monitor_guid: str,
        start_us: int | None,
        end_us: int | None,
        min_level: int,
        descending: bool,
        after: tuple[int, int] | None,
        limit: int,
    ) -> list[CheckRow]:
        c = monitor_check.c
        query = sa.select(monitor_check).where(c.monitor_guid == monitor_guid)
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
        async with self.engine.connect() as conn:
            rows = await conn.execute(query.order_by(*order).limit(limit))
            return [self._check(r) for r in rows]

    async def last_levels(self) -> dict[str, int]:
        """Each monitor's most recent error level (alert state survives a controller restart)."""
        c = monitor_check.c
        latest = (
            sa.select(c.monitor_guid, sa.func.max(c.id).label("id")).group_by(c.monitor_guid)
        ).subquery()
        async with self.engine.connect() as conn:
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
        async with self.engine.begin() as conn:
            # read first: a pass that finds nothing to delete takes no write lock
            ids = list((await conn.execute(chosen.order_by(c.ts_us).limit(limit))).scalars())
            if not ids:
                return 0
            result = await conn.execute(sa.delete(monitor_check).where(c.id.in_(ids)))
        return int(result.rowcount or 0)
