"""Broker logins for enrolled agents, made through Mosquitto's dynamic-security plugin.

The plugin takes JSON commands on `$CONTROL/dynamic-security/v1` and answers on
`.../response`; `mosquitto_ctrl dynsec` is a command-line client of the same API. Speaking it
over MQTT lets the broker run on another host and keeps passwords out of any process list.
Each agent gets a login named by its agent id and a role of its own that lets it touch only
its own topics (the same rules as deploy/mosquitto/picket.acl).
"""

from __future__ import annotations

import asyncio
import json
import logging
import secrets
from collections.abc import Callable
from typing import Any

from shared import topics
from shared.mqtt import ControlRequestFailed, control_request
from shared.settings import BrokerTarget

log = logging.getLogger(__name__)

CONTROL_TOPIC = "$CONTROL/dynamic-security/v1"
RESPONSE_TOPIC = CONTROL_TOPIC + "/response"


class BrokerAdminError(Exception):
    """The broker did not make the login: unreachable, or it refused a command."""


def role_name(agent_id: str) -> str:
    return f"picket-agent-{agent_id}"


def agent_acls(agent_id: str) -> list[dict[str, Any]]:
    """What an agent may do, and nothing else (dynsec denies publishing and subscribing by
    default; receiving is allowed, so what it may subscribe to is what it can read)."""
    reads = [
        topics.assignments_of(agent_id),
        topics.run(agent_id),
        topics.ack(agent_id),
        topics.sync(agent_id),
    ]
    writes = [topics.hello(agent_id), topics.state(agent_id), topics.results(agent_id)]
    return [
        *({"acltype": "subscribePattern", "topic": t, "allow": True} for t in reads),
        *({"acltype": "publishClientSend", "topic": t, "allow": True} for t in writes),
    ]


class BrokerAdmin:
    def __init__(self, target: BrokerTarget, tls_ca_file: str | None = None) -> None:
        self.target = target
        self.tls_ca_file = tls_ca_file

    async def _run(self, commands: list[dict[str, Any]]) -> list[dict[str, Any]]:
        payload = json.dumps({"commands": commands}).encode()
        try:
            raw = await control_request(
                self.target,
                f"picket-enrol-{secrets.token_hex(4)}",
                CONTROL_TOPIC,
                RESPONSE_TOPIC,
                payload,
                tls_ca_file=self.tls_ca_file,
            )
        except ControlRequestFailed as exc:
            raise BrokerAdminError(str(exc)) from None
        try:
            responses = json.loads(raw)["responses"]
        except (ValueError, KeyError, TypeError):
            raise BrokerAdminError("the broker's dynamic-security answer is not JSON") from None
        if not isinstance(responses, list):
            raise BrokerAdminError("the broker's dynamic-security answer has no responses")
        return [r for r in responses if isinstance(r, dict)]

    async def create_agent_login(self, agent_id: str, password: str) -> None:
        """A login `agent_id` with `password` and its own role; BrokerAdminError if not made."""
        role = role_name(agent_id)
        commands: list[dict[str, Any]] = [{"command": "createRole", "rolename": role}]
        commands += [
            {"command": "addRoleACL", "rolename": role, **acl} for acl in agent_acls(agent_id)
        ]
        commands.append(
            {
                "command": "createClient",
                "username": agent_id,
                "password": password,
                "roles": [{"rolename": role}],
            }
        )
        failed = [r for r in await self._run(commands) if r.get("error")]
        if failed:
            first = failed[0]
            await self.delete_agent_login(agent_id)
            raise BrokerAdminError(
                f"the broker refused {first.get('command')!s}: {str(first.get('error'))[:200]}"
            )
        log.info("broker login and role %s made for agent %s at %s", role, agent_id, self.target)

    async def delete_agent_login(self, agent_id: str) -> None:
        """Remove the login and its role (what does not exist is no error)."""
        await self.delete_agent_logins([agent_id])

    async def delete_agent_logins(self, agent_ids: list[str]) -> None:
        """Remove these agents' logins and roles in one request; what does not exist (deleted
        before) is no error. BrokerAdminError if the broker did not answer or refused."""
        commands: list[dict[str, Any]] = []
        for agent_id in agent_ids:
            commands.append({"command": "deleteClient", "username": agent_id})
            commands.append({"command": "deleteRole", "rolename": role_name(agent_id)})
        failed = [
            r
            for r in await self._run(commands)
            if r.get("error") and "not found" not in str(r.get("error")).lower()
        ]
        if failed:
            first = failed[0]
            raise BrokerAdminError(
                f"the broker refused {first.get('command')!s}: {str(first.get('error'))[:200]}"
            )


class LoginRemover:
    """Deletes retired agents' broker logins, and keeps trying until the broker has done it.

    What waits is one agent id per retired server (bounded by the servers the controller
    knows; `picket_broker_logins_to_delete` shows it); every attempt is counted by outcome in
    `picket_broker_login_deletions_total`, a failure logged with the plan (retry with backoff
    up to MAX_BACKOFF seconds). At start the controller hands it every retired enrolled server
    again: a deletion the broker never confirmed is not forgotten by a restart (deleting one
    already gone is no error)."""

    MAX_BACKOFF = 60.0

    def __init__(
        self,
        admin: BrokerAdmin,
        on_outcome: Callable[[str, int], None],
        on_waiting: Callable[[int], None],
    ) -> None:
        self._admin = admin
        self._on_outcome = on_outcome
        self._on_waiting = on_waiting
        self._pending: set[str] = set()
        self._wake = asyncio.Event()

    @property
    def pending(self) -> frozenset[str]:
        return frozenset(self._pending)

    def add(self, agent_id: str) -> None:
        self._pending.add(agent_id)
        self._on_waiting(len(self._pending))
        self._wake.set()

    def discard(self, agent_id: str) -> None:
        self._pending.discard(agent_id)
        self._on_waiting(len(self._pending))

    async def run(self) -> None:
        backoff = 1.0
        while True:
            if not self._pending:
                self._wake.clear()
                await self._wake.wait()
            batch = sorted(self._pending)
            try:
                await self._admin.delete_agent_logins(batch)
            except BrokerAdminError as exc:
                self._on_outcome("failed", len(batch))
                log.warning(
                    "broker logins of retired agents %s not deleted yet: %s; retrying in %gs",
                    ", ".join(batch),
                    exc,
                    backoff,
                )
                # a new retirement does not cut this wait short: the broker is away
                await asyncio.sleep(backoff)
                backoff = min(backoff * 2, self.MAX_BACKOFF)
                continue
            backoff = 1.0
            self._pending.difference_update(batch)
            self._on_waiting(len(self._pending))
            self._on_outcome("deleted", len(batch))
            for agent_id in batch:
                log.info(
                    "broker login and role %s of retired agent %s deleted at %s: it cannot "
                    "connect any more",
                    role_name(agent_id),
                    agent_id,
                    self._admin.target,
                )
