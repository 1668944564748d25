"""Broker logins for enrolled agents, made through Mosquitto's dynamic-security plugin.

The plugin takes JSON commands on `$CONTROL/dynamic-security/v1` and answers on
`.../response`; `mosquitto_ctrl dynsec` is a command-line client of the same API. Speaking it
over MQTT lets the broker run on another host and keeps passwords out of any process list.
Each agent gets a login named by its agent id and a role of its own that lets it touch only
its own topics (the same rules as deploy/mosquitto/picket.acl).
"""

from __future__ import annotations

import json
import logging
import secrets
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
        await self._run(
            [
                {"command": "deleteClient", "username": agent_id},
                {"command": "deleteRole", "rolename": role_name(agent_id)},
            ]
        )
