"""Settings from `PICKET_` environment variables and command-line flags (flags win)."""

from __future__ import annotations

import argparse
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any, TypeVar
from urllib.parse import quote, unquote, urlsplit

from pydantic import AfterValidator, Field, ValidationError
from pydantic.fields import FieldInfo
from pydantic_settings import BaseSettings, SettingsConfigDict


def _valid_broker(value: str) -> str:
    parse_broker_url(value)
    return value


def _valid_listen(value: str) -> str:
    parse_listen(value, 0)
    return value


# setting types that are checked where they are read, with the variable named in the error
BrokerUrl = Annotated[str, AfterValidator(_valid_broker)]
ListenAddress = Annotated[str, AfterValidator(_valid_listen)]


class PicketSettings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="PICKET_", extra="ignore")

    data_dir: Path = Path("var")
    log_level: str = "INFO"
    # the largest MQTT payload Picket sends (a result batch): below EMQX's default
    # max_packet_size of 1 MB (Mosquitto's default is MQTT's own limit, 256 MB)
    max_message_bytes: int = Field(default=524_288, ge=16_384, le=268_000_000)


S = TypeVar("S", bound=PicketSettings)


# One line per setting for `--help` (a field's own `description` wins). A setting without
# one is caught by tests/unit/test_cli.py.
DESCRIPTIONS: dict[str, str] = {
    "data_dir": "directory for the SQLite database, the agent's outbox and saved assignments, "
    "broker files and the initial admin password",
    "log_level": "DEBUG, INFO, WARNING or ERROR",
    "broker_url": "MQTT broker: mqtt://[user:password@]host[:port], mqtts:// for TLS",
    "database_url": "SQLAlchemy URL of the database; empty: SQLite in the data directory",
    "api_listen": "address and port of the REST API and the controller's /metrics",
    "admin_password": "password of operator 'admin', set on every start; empty: one is "
    "generated on first start and written to <data dir>/initial-admin-password",
    "failed_body_bytes": "response body bytes kept with a failed check",
    "ingest_batch_max": "result batches stored per database transaction",
    "credential_cache_seconds": "how long good credentials are remembered (0: never), so "
    "scrypt runs once per client, not once per request",
    "max_password_checks": "password checks (scrypt, tens of ms each) run at once; more get "
    "429; 0: half the CPUs, at least 1",
    "login_failures_per_user_address": "failed logins allowed per user name and client "
    "address in each window, then 429",
    "login_failures_per_address": "failed logins allowed per client address (IPv6: per /64) "
    "in each window, then 429",
    "login_failure_window_seconds": "the throttle forgets failed logins evenly over this time",
    "login_throttle_max_entries": "user-and-address keys (and, apart, address keys) remembered "
    "by the login throttle; the oldest are forgotten beyond it",
    "database_wait_seconds": "how long the controller keeps retrying an unreachable database "
    "at start before it exits non-zero",
    "agent_id": "this agent's id, unique in the fleet: letters, digits, '.', '_', '-'",
    "checkpoint": "name of the checkpoint this agent checks from",
    "region": "name of the checkpoint's region",
    "agent_ipv4": "comma-separated IPv4 addresses published for this agent; empty: the one "
    "used to reach the broker",
    "agent_ipv6": "comma-separated IPv6 addresses published for this agent; empty: the one "
    "used to reach the broker",
    "metrics_listen": "address and port of the agent's /metrics",
    "workers": "check worker processes; 0: one per CPU",
    "max_concurrency": "checks in flight at once, shared out over the workers",
    "max_per_host": "checks in flight to one host and port, shared out over the workers",
    "ca_file": "PEM bundle of the CAs HTTPS and Certificate checks trust; empty: the system's",
    "max_pending_checks": "checks started but unfinished; beyond it scheduled checks are "
    "skipped and counted",
    "batch_size": "results per batch sent to the controller",
    "batch_interval_ms": "longest wait before a partial batch of results is sent",
    "ack_timeout_seconds": "a batch not acknowledged within this time is sent again",
    "max_batches_in_flight": "result batches sent but not yet acknowledged",
    "max_body_bytes": "response body bytes read for content matching",
    "canary": "connectivity canary, host:port the agent must always reach over TCP; a check "
    "that fails while it does not answer either is inconclusive (error 3, never alerting); "
    "empty: none",
    "canary_timeout_seconds": "how long the canary may take to accept a connection",
    "presence_keepalive_seconds": "MQTT keepalive of the agent: the broker declares it "
    "offline after 1.5 times this without a word, and its monitors move to its peers",
    "embedded_broker": "auto, mosquitto or amqtt: the private broker 'picket up' runs "
    "(auto: mosquitto when installed)",
    "embedded_broker_listen": "address and port of that private broker",
    "restart_limit": "a child of 'picket up' that fails this many times within "
    "restart_window_seconds stops everything (non-zero exit)",
    "restart_window_seconds": "see restart_limit",
    "max_message_bytes": "largest MQTT message a result batch may be (below the broker's "
    "maximum packet size)",
    "outbox_max_bytes": "disk the agent's outbox may use; beyond it the oldest results are "
    "dropped and counted",
    "outbox_memory_max_bytes": "results kept in memory while the disk refuses writes; beyond "
    "it the oldest are dropped and counted",
    "result_retention_days": "checks older than this many days are deleted",
    "retention_batch_rows": "check rows deleted per transaction by the retention task",
    "retention_pause_seconds": "pause between the retention task's delete transactions",
}
SECRET_SETTINGS = frozenset({"admin_password"})


def describe(name: str, field: FieldInfo) -> str:
    """`--help` text of one setting: what it is, its variable and its default."""
    text = field.description or DESCRIPTIONS.get(name, "")
    if name in SECRET_SETTINGS:
        default = "none"
    else:
        value = field.get_default(call_default_factory=True)
        default = "none" if value is None or value == "" else str(value)
    env = "PICKET_" + name.upper()
    return f"{text} [env {env}, default: {default}]".replace("%", "%%")


def add_flags(parser: argparse.ArgumentParser, settings_cls: type[PicketSettings]) -> None:
    """One `--flag-name` per settings field; its help says what it is and names the
    environment variable."""
    for name, field in settings_cls.model_fields.items():
        flag = "--" + name.replace("_", "-")
        parser.add_argument(
            flag, dest=name, default=None, metavar="VALUE", help=describe(name, field)
        )


def load(settings_cls: type[S], flags: argparse.Namespace | None = None) -> S:
    """Build settings; a bad value exits with a message naming the variable and flag."""
    given: dict[str, Any] = {}
    if flags is not None:
        given = {
            k: v for k, v in vars(flags).items() if k in settings_cls.model_fields and v is not None
        }
    try:
        return settings_cls(**given)
    except ValidationError as exc:
        lines = []
        for error in exc.errors():
            if not error["loc"]:  # a check of several settings together: no one to name
                lines.append(f"  {error['msg']}")
                continue
            name = str(error["loc"][0])
            lines.append(f"  PICKET_{name.upper()} / --{name.replace('_', '-')}: {error['msg']}")
        raise SystemExit("picket: invalid settings:\n" + "\n".join(lines)) from None


@dataclass(frozen=True)
class BrokerTarget:
    host: str
    port: int
    username: str | None
    password: str | None
    tls: bool

    def __str__(self) -> str:
        """The URL for logs: a password is never shown."""
        scheme = "mqtts" if self.tls else "mqtt"
        host = f"[{self.host}]" if ":" in self.host else self.host
        login = ""
        if self.username is not None:
            login = quote(self.username, safe="") + (":***" if self.password else "") + "@"
        return f"{scheme}://{login}{host}:{self.port}"


def parse_broker_url(url: str) -> BrokerTarget:
    parts = urlsplit(url)
    if parts.scheme not in ("mqtt", "mqtts"):
        raise ValueError("broker URL must start with mqtt:// or mqtts://")
    if not parts.hostname:
        raise ValueError("broker URL needs a host")
    tls = parts.scheme == "mqtts"
    try:
        port = parts.port or (8883 if tls else 1883)
    except ValueError:
        raise ValueError("broker URL has an invalid port") from None
    return BrokerTarget(
        host=parts.hostname,
        port=port,
        username=unquote(parts.username) if parts.username else None,
        password=unquote(parts.password) if parts.password else None,
        tls=tls,
    )


def split_host_port(value: str, default_port: int, min_port: int = 1) -> tuple[str, int]:
    """`host`, `host:port`, `v6`, `[v6]:port` (and `:port`, with an empty host)."""
    text = value.strip()
    if text.startswith("["):
        host, _, rest = text[1:].partition("]")
        port_text = rest.removeprefix(":")
    elif text.count(":") == 1:
        host, _, port_text = text.partition(":")
    else:
        host, port_text = text, ""
    if port_text and not port_text.isdigit():
        raise ValueError("port must be a number")
    port = int(port_text) if port_text else default_port
    if not min_port <= port <= 65535:
        raise ValueError(f"port must be {min_port}-65535")
    return host, port


def parse_listen(value: str, default_port: int) -> tuple[str, int]:
    """Where to listen: like split_host_port, the host defaulting to 127.0.0.1, port 0 allowed."""
    host, port = split_host_port(value, default_port, min_port=0)
    return host or "127.0.0.1", port
