"""Operators, API accounts and HTTP Basic authentication."""

from __future__ import annotations

import asyncio
import base64
import binascii
import contextlib
import hashlib
import hmac
import ipaddress
import logging
import math
import os
import secrets
import time
import uuid
from collections import OrderedDict
from collections.abc import AsyncIterator, Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import TypeVar

from controller.db.store import Store
from controller.metrics import ControllerMetrics

log = logging.getLogger(__name__)

ADMIN_USERNAME = "admin"
_SCRYPT = {"n": 2**14, "r": 8, "p": 1}
_T = TypeVar("_T")
# a remembered login is checked again after credential_cache_seconds; if every password check
# is busy then, it is still accepted for this many times as long again
STALE_IF_BUSY = 10
# checked against when the user name is unknown: the same scrypt work, and never a match
_DUMMY_HASH = "scrypt${n}${r}${p}$".format(**_SCRYPT) + "$".join(
    base64.b64encode(bytes(size)).decode() for size in (16, 32)
)


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
    if not sep or "\x00" in decoded:
        return None  # no name has a NUL (PostgreSQL text cannot hold one: it would be a 500)
    return username, password


class TooManyAttempts(Exception):
    """Answered 429 with `Retry-After`: the password checks are all busy, or this client
    failed too often. No hash was computed."""

    def __init__(self, retry_after: float, why: str) -> None:
        super().__init__(why)
        self.retry_after = max(1, math.ceil(retry_after))
        self.why = why


class PasswordChecker:
    """scrypt runs in its own threads (hashlib releases the GIL while hashing), at most
    `limit` at once; when all are busy the caller is told so at once, nothing queues."""

    def __init__(self, limit: int, metrics: ControllerMetrics) -> None:
        self.limit = limit
        self._metrics = metrics
        self._busy = 0
        self._executor = ThreadPoolExecutor(max_workers=limit, thread_name_prefix="password")

    @contextlib.asynccontextmanager
    async def slot(self) -> AsyncIterator[None]:
        """One of the `limit` places; TooManyAttempts at once when none is free. Taken before
        the user is even looked up, so a flood answered 429 costs no database work either."""
        if self._busy >= self.limit:
            self._metrics.password_checks.labels("busy").inc()
            raise TooManyAttempts(1, "every password check is busy")
        self._busy += 1
        self._metrics.password_checks_running.set(self._busy)
        try:
            yield
        finally:
            self._busy -= 1
            self._metrics.password_checks_running.set(self._busy)

    async def _run(self, fn: Callable[[], _T]) -> _T:
        """In a thread of the pool; the caller holds a slot, so it never waits for one."""
        started = time.perf_counter()
        try:
            return await asyncio.get_running_loop().run_in_executor(self._executor, fn)
        finally:
            self._metrics.password_check_duration.observe(time.perf_counter() - started)

    async def verify(self, password: str, stored: str | None) -> bool:
        """Within a slot. `stored` None (no such user): the same work against a dummy hash,
        and False."""
        matched = await self._run(lambda: verify_password(password, stored or _DUMMY_HASH))
        matched = matched and stored is not None
        self._metrics.password_checks.labels("ok" if matched else "wrong").inc()
        return matched

    async def hash(self, password: str) -> str:
        async with self.slot():
            return await self._run(lambda: hash_password(password))

    def close(self) -> None:
        self._executor.shutdown(wait=False, cancel_futures=True)


def address_key(remote: str | None) -> str:
    """Whom a failure counts against: the IPv4 address, or the IPv6 /64 (one host usually
    owns a whole /64, so counting single IPv6 addresses would let it rotate freely)."""
    if not remote:
        return "-"
    try:
        address = ipaddress.ip_address(remote.split("%", 1)[0])
    except ValueError:
        return remote
    if isinstance(address, ipaddress.IPv6Address):
        if address.ipv4_mapped is not None:
            return str(address.ipv4_mapped)
        return str(ipaddress.IPv6Network((address, 64), strict=False))
    return str(address)


@dataclass
class _Bucket:
    tokens: float
    stamp: float


class FailureBuckets:
    """Token buckets of failed logins: `burst` failures, refilled evenly over `window`
    seconds. Bounded: beyond `max_entries` the least recently touched key is forgotten
    (counted), which at worst gives that key its burst again."""

    def __init__(
        self,
        name: str,
        burst: int,
        window: float,
        max_entries: int,
        metrics: ControllerMetrics,
    ) -> None:
        self.name = name
        self.burst = float(burst)
        self.rate = burst / window if window > 0 else float("inf")
        self.max_entries = max_entries
        self._metrics = metrics
        self._buckets: OrderedDict[str, _Bucket] = OrderedDict()

    def __len__(self) -> int:
        return len(self._buckets)

    def _refilled(self, key: str, now: float) -> _Bucket | None:
        bucket = self._buckets.get(key)
        if bucket is None:
            return None
        bucket.tokens = min(self.burst, bucket.tokens + (now - bucket.stamp) * self.rate)
        bucket.stamp = now
        if bucket.tokens >= self.burst:
            del self._buckets[key]  # full again: as if never seen
            self._update_size()
            return None
        return bucket

    def wait(self, key: str, now: float) -> float:
        """Seconds until `key` may try again; 0: now."""
        bucket = self._refilled(key, now)
        if bucket is None or bucket.tokens >= 1:
            return 0.0
        return (1 - bucket.tokens) / self.rate

    def failed(self, key: str, now: float) -> None:
        bucket = self._refilled(key, now)
        if bucket is None:
            bucket = self._buckets[key] = _Bucket(self.burst, now)
            while len(self._buckets) > self.max_entries:
                self._buckets.popitem(last=False)
                self._metrics.login_throttle_evictions.labels(self.name).inc()
        else:
            self._buckets.move_to_end(key)
        bucket.tokens -= 1
        self._update_size()

    def forget(self, key: str) -> None:
        if self._buckets.pop(key, None) is not None:
            self._update_size()

    def _update_size(self) -> None:
        self._metrics.login_throttle_entries.labels(self.name).set(len(self._buckets))


@dataclass(frozen=True)
class AuthLimits:
    max_password_checks: int
    cache_seconds: float
    failures_per_user_address: int
    failures_per_address: int
    failure_window_seconds: float
    throttle_max_entries: int


class Authenticator:
    """Checks Basic credentials.

    - Failed logins are throttled per (user name, client address) and per client address,
      never per user name alone: a flood against `admin` from one place does not lock
      `admin` out of another. A throttled client gets 429 before any hashing.
    - scrypt runs off the event loop, at most `max_password_checks` at once (429 when busy).
    - An unknown user name costs the same hash and gets the same 401 as a wrong password.
    - Good credentials are remembered for `cache_seconds`, keyed by an HMAC (a key made at
      start, never stored) of user name and password: a memory dump does not give a fast
      hash to guess against. A password change through `set_operator_password` forgets them.
      Once stale they are checked again; if every check is busy then (a flood), they still
      count for up to STALE_IF_BUSY times `cache_seconds`, so good clients ride out a flood.
    """

    def __init__(self, store: Store, limits: AuthLimits, metrics: ControllerMetrics) -> None:
        self._store = store
        self._limits = limits
        self._metrics = metrics
        self.checker = PasswordChecker(limits.max_password_checks, metrics)
        self.pairs = FailureBuckets(
            "user_address",
            limits.failures_per_user_address,
            limits.failure_window_seconds,
            limits.throttle_max_entries,
            metrics,
        )
        self.addresses = FailureBuckets(
            "address",
            limits.failures_per_address,
            limits.failure_window_seconds,
            limits.throttle_max_entries,
            metrics,
        )
        self._cache_key = secrets.token_bytes(32)
        # digest -> (principal, fresh until, usable while the checks are busy until)
        self._cache: OrderedDict[bytes, tuple[Principal, float, float]] = OrderedDict()
        self._running: dict[bytes, asyncio.Future[Principal | None]] = {}

    def _digest(self, username: str, password: str) -> bytes:
        message = username.encode() + b"\x00" + password.encode()
        return hmac.new(self._cache_key, message, hashlib.sha256).digest()

    async def authenticate(self, header: str | None, remote: str | None) -> Principal | None:
        """The principal, or None (401); raises TooManyAttempts (429)."""
        if not header:
            return None
        credentials = parse_basic(header)
        if credentials is None:
            return None
        username, password = credentials
        now = time.monotonic()
        address = address_key(remote)
        # a user name may be kilobytes long: the throttle keeps a short digest of it, so its
        # memory is bounded by its entry count alone
        pair = hashlib.blake2b(username.encode(), digest_size=12).hexdigest() + " " + address
        # before the cache: a throttled client must not learn that a guess was right
        wait = max(self.addresses.wait(address, now), self.pairs.wait(pair, now))
        if wait > 0:
            self._metrics.login_throttled.inc()
            raise TooManyAttempts(wait, "too many failed logins from this address")
        key = self._digest(username, password)
        cached = self._cache.get(key)
        if cached is not None and cached[1] > now:
            return cached[0]
        running = self._running.get(key)
        if running is not None:
            # the same credentials already being checked (a client's parallel requests):
            # share that one check, and count its failure once
            return await asyncio.shield(running)
        lookup = asyncio.ensure_future(self._lookup(username, password))
        self._running[key] = lookup
        # retrieved even if every request waiting for it went away
        lookup.add_done_callback(lambda f: f.cancelled() or f.exception())
        try:
            principal = await asyncio.shield(lookup)
        except TooManyAttempts:
            if cached is not None and cached[2] > now:
                # every check is busy (a flood from many addresses): a login verified a little
                # while ago, with no password change since, still counts
                self._metrics.password_checks.labels("stale_ok").inc()
                return cached[0]
            raise
        finally:
            if self._running.get(key) is lookup:
                del self._running[key]
        now = time.monotonic()
        if principal is None:
            self._cache.pop(key, None)
            self.pairs.failed(pair, now)
            self.addresses.failed(address, now)
            self._metrics.login_failures.inc()
            if self.addresses.wait(address, now) > 0 or self.pairs.wait(pair, now) > 0:
                # no user name in the log: people type passwords into that field too
                log.warning("failed logins from %s: throttled", address)
            return None
        self.pairs.forget(pair)
        if self._limits.cache_seconds > 0:
            fresh = now + self._limits.cache_seconds
            self._cache[key] = (
                principal,
                fresh,
                fresh + STALE_IF_BUSY * self._limits.cache_seconds,
            )
            self._cache.move_to_end(key)
            while len(self._cache) > 10_000:
                self._cache.popitem(last=False)
        return principal

    def forget(self, username: str | None = None) -> None:
        """Forget remembered credentials: one user's, or all."""
        if username is None:
            self._cache.clear()
            return
        for key in [k for k, (p, _, _) in self._cache.items() if p.username == username]:
            del self._cache[key]

    def forget_operator(self, guid: str) -> None:
        """Forget every remembered login of an operator and of its API accounts (its password,
        login, rights changed, or it is gone). Another controller forgets them when its
        `credential_cache_seconds` run out."""
        for key in [k for k, (p, _, _) in self._cache.items() if p.operator_guid == guid]:
            del self._cache[key]

    async def set_operator_password(self, guid: str, username: str, password: str) -> None:
        await self._store.set_operator_password(guid, await self.checker.hash(password))
        self.forget(username)
        self.forget_operator(guid)

    def close(self) -> None:
        self.checker.close()

    async def _lookup(self, username: str, password: str) -> Principal | None:
        async with self.checker.slot():
            return await self._lookup_in_slot(username, password)

    async def _lookup_in_slot(self, username: str, password: str) -> Principal | None:
        account = await self._store.api_account(username)
        if account is not None:
            if not await self.checker.verify(password, account["password_hash"]):
                return None
            owner = await self._store.operator_by_guid(account["operator_guid"])
            if owner is None:
                return None
            return Principal(owner["guid"], owner["full_name"], False, owner["is_admin"], username)
        # an operator logs in with its Email (any case); the built-in admin with its name
        op = await self._store.operator_by_login(username)
        if op is not None and op["allow_native_login"] is False:
            op = None  # the same work and the same answer as an unknown name
        if not await self.checker.verify(password, op["password_hash"] if op else None):
            return None
        assert op is not None
        return Principal(op["guid"], op["full_name"], True, bool(op["is_admin"]), username)


def _write_secret(path: Path, secret: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as fh:
        fh.write(secret + "\n")


async def ensure_admin(
    store: Store, data_dir: Path, password: str, auth: Authenticator | None = None
) -> None:
    """The first operator. PICKET_ADMIN_PASSWORD sets its password; otherwise one is generated
    on first start and written once to <data dir>/initial-admin-password (mode 0600)."""
    existing = await store.operator_by_username(ADMIN_USERNAME)
    if existing is None:
        generated = not password
        secret = password or secrets.token_urlsafe(18)
        path = data_dir / "initial-admin-password"
        if generated:
            # written before the operator exists: a password nobody can read locks everyone out
            try:
                _write_secret(path, secret)
            except OSError as exc:
                raise SystemExit(
                    f"controller: cannot write the initial admin password to {path}: {exc}; "
                    "fix the data directory or set PICKET_ADMIN_PASSWORD; exiting"
                ) from None
        await store.create_operator(
            str(uuid.uuid4()), ADMIN_USERNAME, "Administrator", hash_password(secret), True
        )
        if generated:
            log.info("operator %r created; its password is in %s", ADMIN_USERNAME, path)
        else:
            log.info("operator %r created with PICKET_ADMIN_PASSWORD", ADMIN_USERNAME)
    elif password and not verify_password(password, existing["password_hash"]):
        if auth is not None:  # it forgets the old password's remembered logins
            await auth.set_operator_password(existing["guid"], ADMIN_USERNAME, password)
        else:
            await store.set_operator_password(existing["guid"], hash_password(password))
        log.info("operator %r: password set from PICKET_ADMIN_PASSWORD", ADMIN_USERNAME)
