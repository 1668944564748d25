"""Operators, API accounts and HTTP Basic authentication."""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import logging
import os
import secrets
import time
import uuid
from dataclasses import dataclass
from pathlib import Path

from controller.db.store import Store

log = logging.getLogger(__name__)

ADMIN_USERNAME = "admin"
_SCRYPT = {"n": 2**14, "r": 8, "p": 1}


def hash_password(password: str) -> str:
    salt = os.urandom(16)
    digest = hashlib.scrypt(password.encode(), salt=salt, dklen=32, **_SCRYPT)
    return "scrypt${n}${r}${p}$".format(**_SCRYPT) + "$".join(
        base64.b64encode(part).decode() for part in (salt, digest)
    )


def verify_password(password: str, stored: str) -> bool:
    try:
        scheme, n, r, p, salt_b64, digest_b64 = stored.split("$")
        if scheme != "scrypt":
            return False
        salt = base64.b64decode(salt_b64)
        expected = base64.b64decode(digest_b64)
        digest = hashlib.scrypt(
            password.encode(), salt=salt, n=int(n), r=int(r), p=int(p), dklen=len(expected)
        )
    except (ValueError, binascii.Error):
        return False
    return hmac.compare_digest(digest, expected)


@dataclass(frozen=True)
class Principal:
    operator_guid: str
    operator_name: str
    is_operator_login: bool  # an operator's own credentials, not an API account
    is_admin: bool
    username: str


def parse_basic(header: str) -> tuple[str, str] | None:
    scheme, _, encoded = header.partition(" ")
    if scheme.lower() != "basic" or not encoded:
        return None
    try:
        decoded = base64.b64decode(encoded.strip(), validate=True).decode("utf-8")
    except (binascii.Error, UnicodeDecodeError):
        return None
    username, sep, password = decoded.partition(":")
    if "\x00" in decoded:  # no stored name holds one, and PostgreSQL cannot compare it
        return None
    return (username, password) if sep else None


class Authenticator:
    """Checks Basic credentials; remembers good ones briefly so scrypt runs once per credential."""

    def __init__(self, store: Store, cache_seconds: float) -> None:
        self._store = store
        self._cache_seconds = cache_seconds
        self._cache: dict[bytes, tuple[Principal, float]] = {}

    async def authenticate(self, header: str | None) -> Principal | None:
        if not header:
            return None
        credentials = parse_basic(header)
        if credentials is None:
            return None
        key = hashlib.sha256(header.encode()).digest()
        cached = self._cache.get(key)
        now = time.monotonic()
        if cached is not None and cached[1] > now:
            return cached[0]
        principal = await self._lookup(*credentials)
        if principal is not None and self._cache_seconds > 0:
            if len(self._cache) > 10_000:
                self._cache.clear()
            self._cache[key] = (principal, now + self._cache_seconds)
        return principal

    def forget(self) -> None:
        self._cache.clear()

    async def _lookup(self, username: str, password: str) -> Principal | None:
        account = await self._store.api_account(username)
        if account is not None:
            if not verify_password(password, account["password_hash"]):
                return None
            owner = await self._store.operator_by_guid(account["operator_guid"])
            if owner is None:
                return None
            return Principal(owner["guid"], owner["full_name"], False, owner["is_admin"], username)
        op = await self._store.operator_by_username(username)
        if op is None or not verify_password(password, op["password_hash"]):
            return None
        return Principal(op["guid"], op["full_name"], True, bool(op["is_admin"]), username)


def _write_secret(path: Path, secret: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as fh:
        fh.write(secret + "\n")


async def ensure_admin(store: Store, data_dir: Path, password: str) -> None:
    """The first operator. PICKET_ADMIN_PASSWORD sets its password; otherwise one is generated
    on first start and written once to <data dir>/initial-admin-password (mode 0600)."""
    existing = await store.operator_by_username(ADMIN_USERNAME)
    if existing is None:
        generated = not password
        secret = password or secrets.token_urlsafe(18)
        await store.create_operator(
            str(uuid.uuid4()), ADMIN_USERNAME, "Administrator", hash_password(secret), True
        )
        if generated:
            path = data_dir / "initial-admin-password"
            _write_secret(path, secret)
            log.info("operator %r created; its password is in %s", ADMIN_USERNAME, path)
        else:
            log.info("operator %r created with PICKET_ADMIN_PASSWORD", ADMIN_USERNAME)
    elif password and not verify_password(password, existing["password_hash"]):
        await store.set_operator_password(existing["guid"], hash_password(password))
        log.info("operator %r: password set from PICKET_ADMIN_PASSWORD", ADMIN_USERNAME)
