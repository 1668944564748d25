from __future__ import annotations

from pydantic import Field

from shared.settings import BrokerUrl, ListenAddress, PicketSettings


class ControllerSettings(PicketSettings):
    broker_url: BrokerUrl = "mqtt://127.0.0.1:1883"
    database_url: str = ""  # empty: sqlite+aiosqlite:///<data dir>/picket.db
    api_listen: ListenAddress = "127.0.0.1:8080"
    admin_password: str = ""
    failed_body_bytes: int = Field(default=65_536, ge=0)
    ingest_batch_max: int = Field(default=64, ge=1)  # result batches per transaction
    credential_cache_seconds: float = Field(default=300.0, ge=0)
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
