"""The MQTT topic tree of contract v1 (see docs/mqtt.md)."""

from __future__ import annotations

import re

PREFIX = "picket/v1"
AGENT_ID_PATTERN = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")


def agent_id(value: str) -> str:
    """An agent id fit to be a topic level (the agent's setting, a hello's field)."""
    if not AGENT_ID_PATTERN.fullmatch(value):
        raise ValueError("1-64 characters: letters, digits, '.', '_' and '-'")
    return value


def hello(agent: str) -> str:
    return f"{PREFIX}/agents/{agent}/hello"


def state(agent: str) -> str:
    return f"{PREFIX}/agents/{agent}/state"


def assignment(agent: str, monitor: str) -> str:
    return f"{PREFIX}/agents/{agent}/monitors/{monitor}"


def assignments_of(agent: str) -> str:
    return f"{PREFIX}/agents/{agent}/monitors/+"


def run(agent: str) -> str:
    return f"{PREFIX}/agents/{agent}/run"


def ack(agent: str) -> str:
    return f"{PREFIX}/agents/{agent}/ack"


def sync(agent: str) -> str:
    return f"{PREFIX}/agents/{agent}/sync"


def time_request(agent: str) -> str:
    """Controller -> agent: a clock sample is asked for."""
    return f"{PREFIX}/agents/{agent}/time"


def clock(agent: str) -> str:
    """Agent -> controller: its clock, in answer to a `time` request."""
    return f"{PREFIX}/agents/{agent}/clock"


def results(agent: str) -> str:
    return f"{PREFIX}/results/{agent}"


ALL_HELLOS = f"{PREFIX}/agents/+/hello"
ALL_STATES = f"{PREFIX}/agents/+/state"
ALL_RESULTS = f"{PREFIX}/results/+"
ALL_CLOCKS = f"{PREFIX}/agents/+/clock"


def split(topic: str) -> list[str]:
    """The levels below the prefix, or [] for a topic outside the tree."""
    if not topic.startswith(PREFIX + "/"):
        return []
    return topic[len(PREFIX) + 1 :].split("/")
