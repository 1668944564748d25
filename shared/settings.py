"""Settings from `PICKET_` environment variables and command-line flags (flags win)."""

from __future__ import annotations

import argparse
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any, TypeVar
from urllib.parse import unquote, urlsplit

from pydantic import AfterValidator, Field, ValidationError
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


def add_flags(parser: argparse.ArgumentParser, settings_cls: type[PicketSettings]) -> None:
    """One `--flag-name` per settings field; its help names the environment variable."""
    for name, field in settings_cls.model_fields.items():
        flag = "--" + name.replace("_", "-")
        env = "PICKET_" + name.upper()
        default = field.default if field.default is not None else ""
        parser.add_argument(
            flag, dest=name, default=None, metavar="VALUE", help=f"env {env} (default: {default})"
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
            name = str(error["loc"][0]) if error["loc"] else "?"
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
        scheme = "mqtts" if self.tls else "mqtt"
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"{scheme}://{host}:{self.port}"


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
