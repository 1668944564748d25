from __future__ import annotations

from pydantic import Field, field_validator

from shared.settings import PicketSettings, parse_broker_url, parse_listen


class ControllerSettings(PicketSettings):
    broker_url: str = "mqtt://127.0.0.1:1883"
    database_url: str = ""  # empty: sqlite+aiosqlite:///<data dir>/picket.db
    api_listen: str = "127.0.0.1:8080"
    admin_password: str = ""
    failed_body_bytes: int = Field(default=65_536, ge=0)
    ingest_batch_max: int = Field(default=64, ge=1)  # result batches per transaction
    credential_cache_seconds: float = Field(default=300.0, ge=0)

    @field_validator("broker_url")
    @classmethod
    def _broker(cls, value: str) -> str:
        parse_broker_url(value)
        return value

    @field_validator("api_listen")
    @classmethod
    def _listen(cls, value: str) -> str:
        parse_listen(value, 8080)
        return value

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
