from __future__ import annotations

import os
from typing import Literal

from pydantic import Field, field_validator

from controller import timezones
from shared.settings import BrokerUrl, ListenAddress, PicketSettings, parse_broker_url


class ControllerSettings(PicketSettings):
    broker_url: BrokerUrl = "mqtt://127.0.0.1:1883"
    database_url: str = ""  # empty: sqlite+aiosqlite:///<data dir>/picket.db
    api_listen: ListenAddress = "127.0.0.1:8080"
    admin_password: str = ""
    failed_body_bytes: int = Field(default=65_536, ge=0)
    ingest_batch_max: int = Field(default=64, ge=1)  # result batches per transaction
    credential_cache_seconds: float = Field(default=60.0, ge=0)
    max_password_checks: int = Field(default=0, ge=0, le=256)  # 0: half the CPUs, at least 1
    login_failures_per_user_address: int = Field(default=10, ge=1)
    login_failures_per_address: int = Field(default=100, ge=1)
    login_failure_window_seconds: float = Field(default=600.0, gt=0)
    login_throttle_max_entries: int = Field(default=100_000, ge=10)
    database_wait_seconds: float = Field(default=60.0, ge=0)
    result_retention_days: int = Field(default=30, ge=1, le=36_500)  # checks older are deleted
    retention_batch_rows: int = Field(default=1000, ge=1, le=100_000)  # per delete transaction
    retention_pause_seconds: float = Field(default=0.05, ge=0, le=60)  # between transactions
    ingest_queue_max_bytes: int = Field(
        default=32 * 1024 * 1024,
        ge=1,
        description="result batches waiting to be stored, in bytes as received; when full, "
        "new batches are refused (not acknowledged) and the agents keep and resend them",
    )
    ingest_attempts: int = Field(
        default=3,
        ge=1,
        description="tries to store a result batch the database refuses before its results "
        "go to the dead-letter table (and the batch is acknowledged)",
    )

    server_activation_seconds: float = Field(
        default=86_400.0,
        ge=0,
        description="a server new to the controller is upcoming this long: its addresses are "
        "listed at once (so firewalls can be opened ahead) but it takes no checks until then, "
        "or until an operator approves it; 0: it takes checks at once (picket up uses 0)",
    )
    require_approval: bool = Field(
        default=False,
        description="a server new to the controller is pending (not listed, no checks) until "
        "an operator approves it",
    )

    broker_admin_url: str = Field(
        default="",
        description="mqtt://user:password@host:port of a broker login allowed to use "
        "Mosquitto's dynamic-security API ($CONTROL/dynamic-security/#): enrolment makes "
        "each agent's own login through it; empty: enrolment is off",
    )
    agent_broker_url: str = Field(
        default="",
        description="the broker URL enrolled agents are given (no credentials); empty: the "
        "controller's own PICKET_BROKER_URL without its credentials",
    )

    concurrent_wait_seconds: float = Field(
        default=30.0,
        ge=0,
        le=3600,
        description="how long after a concurrent slot's time limit its partial checks are "
        "waited for; one not in by then is counted as missing",
    )

    time_zone_id: int = Field(
        default=timezones.UTC_ID,
        description="the account's time zone, a TimezoneId of GET /api/v4/Timezone (1000: "
        "UTC, 1004: Europe/Amsterdam, ...): a maintenance period sent without a TimeZoneId is "
        "read in it, as Uptrends reads them in the account's time zone, and keeps it",
    )

    @field_validator("time_zone_id")
    @classmethod
    def _known_zone(cls, value: int) -> int:
        if timezones.get(value) is None:
            raise ValueError(f"{value} is not a TimezoneId of GET /api/v4/Timezone")
        return value

    notify_timeout_seconds: float = Field(
        default=10.0,
        gt=0,
        le=300,
        description="time limit of one notification's delivery (connecting, sending, the "
        "answer), after which it counts as a temporary failure",
    )
    notify_response_bytes: int = Field(
        default=16_384,
        ge=0,
        le=1_048_576,
        description="bytes of an integration endpoint's answer read (the rest is not), of "
        "which the start is kept with a failure",
    )
    notify_connections: int = Field(
        default=100,
        ge=1,
        le=10_000,
        description="HTTP connections open at once to integration endpoints, all together; "
        "more sends wait for one",
    )
    smtp_host: str = Field(
        default="",
        max_length=253,
        description="SMTP server that e-mail notifications are sent through; empty: Email "
        "integrations fail (permanently) until it is set",
    )
    smtp_port: int = Field(
        default=587, ge=1, le=65535, description="port of the SMTP server (587, 465 for tls, 25)"
    )
    smtp_security: Literal["none", "starttls", "tls"] = Field(
        default="starttls",
        description="none (plain text), starttls (upgrade, required) or tls (TLS from the "
        "first byte, usually port 465)",
    )
    smtp_username: str = Field(default="", description="login at the SMTP server; empty: no login")
    smtp_password: str = Field(
        default="", description="password of the SMTP login (never shown or logged)"
    )
    smtp_from: str = Field(
        default="", max_length=254, description="sender address of e-mail notifications"
    )
    smtp_ca_file: str = Field(
        default="",
        description="PEM file of the CAs that the SMTP server's certificate is verified "
        "against; empty: the system's",
    )
    no_live_grace_seconds: float = Field(
        default=60.0,
        ge=0,
        le=3600,
        description="after the controller starts (or gets its broker back) it waits this long "
        "before storing inconclusive slots (error 5) for monitors with no live checkpoint: "
        "the agents' presence is not known before",
    )
    no_live_rows_per_second: int = Field(
        default=5000,
        ge=1,
        le=1_000_000,
        description="at most this many inconclusive slots (error 5, no live checkpoint) are "
        "stored a second; beyond it they are skipped, logged and counted "
        "(picket_inconclusive_slots_skipped_total)",
    )

    @field_validator("broker_admin_url", "agent_broker_url")
    @classmethod
    def _broker_or_empty(cls, value: str) -> str:
        if value:
            parse_broker_url(value)
        return value

    def enrolled_agents_broker_url(self) -> str:
        """The broker URL an enrolled agent is given: never with anyone's credentials."""
        target = parse_broker_url(self.agent_broker_url or self.broker_url)
        host = f"[{target.host}]" if ":" in target.host else target.host
        return f"{'mqtts' if target.tls else 'mqtt'}://{host}:{target.port}"

    def password_check_limit(self) -> int:
        return self.max_password_checks or max(1, len(os.sched_getaffinity(0)) // 2)

    def resolved_database_url(self) -> str:
        """SQLAlchemy async URL; plain sqlite:// and postgresql:// mean aiosqlite and asyncpg."""
        url = self.database_url or f"sqlite+aiosqlite:///{self.data_dir / 'picket.db'}"
        for plain, driver in (
            ("sqlite://", "sqlite+aiosqlite://"),
            ("postgresql://", "postgresql+asyncpg://"),
            ("postgres://", "postgresql+asyncpg://"),
        ):
            if url.startswith(plain):
                return driver + url[len(plain) :]
        return url
