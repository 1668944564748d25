"""Certificate checks: the server's certificate, its chain and name, expiry, expected fields."""

from __future__ import annotations

import asyncio
import contextlib
import datetime
import os
import ssl
import threading
import time
from collections import OrderedDict
from concurrent.futures import ThreadPoolExecutor
from typing import Any
from urllib.parse import urlsplit

from cryptography import x509
from cryptography.hazmat.primitives import hashes
from cryptography.x509.oid import NameOID

from agent.curl import authority
from agent.probes.base import Outcome, Probe, ProbeContext, span_ms
from agent.probes.tcp import close_quietly, connect_error, reached
from shared.errors import ErrorCode
from shared.monitors import CertificateMonitor, MonitorBase
from shared.timefmt import iso


def _attr(name: x509.Name, oid: x509.ObjectIdentifier) -> str:
    values = name.get_attributes_for_oid(oid)
    return str(values[0].value) if values else ""


def describe(cert: x509.Certificate) -> dict[str, Any]:
    """The certificate in the fields of Uptrends' Certificate monitor."""
    return {
        "CertificateName": _attr(cert.subject, NameOID.COMMON_NAME),
        "CertificateOrganization": _attr(cert.subject, NameOID.ORGANIZATION_NAME),
        "CertificateOrganizationalUnit": _attr(cert.subject, NameOID.ORGANIZATIONAL_UNIT_NAME),
        "CertificateSerialNumber": format(cert.serial_number, "X"),
        "CertificateFingerprint": cert.fingerprint(hashes.SHA1()).hex().upper(),
        "CertificateIssuerName": _attr(cert.issuer, NameOID.COMMON_NAME),
        "CertificateIssuerCompanyName": _attr(cert.issuer, NameOID.ORGANIZATION_NAME),
        "CertificateIssuerOrganizationalUnit": _attr(cert.issuer, NameOID.ORGANIZATIONAL_UNIT_NAME),
        "CertificateNotAfter": iso(cert.not_valid_after_utc.timestamp()),
        "CertificateSha256Fingerprint": cert.fingerprint(hashes.SHA256()).hex().upper(),
    }


def _read(der: bytes) -> tuple[dict[str, Any], datetime.datetime]:
    cert = x509.load_der_x509_certificate(der)
    return describe(cert), cert.not_valid_after_utc


def _same(field: str, expected: str, actual: str) -> bool:
    if field in ("CertificateSerialNumber", "CertificateFingerprint"):

        def clean(text: str) -> str:
            return text.replace(":", "").replace(" ", "").lstrip("0").upper()

        return clean(expected) == clean(actual)
    return expected.strip().lower() == actual.strip().lower()


EXPECTED_FIELDS = (
    "CertificateName",
    "CertificateOrganization",
    "CertificateOrganizationalUnit",
    "CertificateSerialNumber",
    "CertificateFingerprint",
    "CertificateIssuerName",
    "CertificateIssuerCompanyName",
    "CertificateIssuerOrganizationalUnit",
)


# SSL contexts kept per worker: building one loads the CA bundle (≈ 18 ms of CPU)
MAX_SSL_CONTEXTS = 16
SslConfig = tuple[bool, str | None]  # (verify chain and name, CA file); more as monitors need
# The CPU-heavy steps of a check (the handshake's cryptography, building a context, reading
# the certificate) run in a thread, OpenSSL without the GIL, so the worker's loop, and the
# timings of the other checks it drives, never wait for them; the network waits stay on the
# loop, so a slow or silent server holds no thread. One per worker (a worker per core): more
# only contend with the loop for the GIL and the cores.
TLS_THREADS = 1
TLS_THREAD_NICENESS = 10  # below the loop's thread: the loop first, when the cores are busy
READ_BYTES = 65_536


def _lower_priority() -> None:
    """Linux: a thread has a nice value of its own (setpriority with its thread id)."""
    with contextlib.suppress(OSError, AttributeError):
        os.setpriority(os.PRIO_PROCESS, threading.get_native_id(), TLS_THREAD_NICENESS)


def _build_context(verify: bool, ca_file: str | None) -> ssl.SSLContext:
    context = ssl.create_default_context(cafile=ca_file)
    if not verify:
        context.check_hostname = False
        context.verify_mode = ssl.CERT_NONE
    return context


def _handshake_step(tls: ssl.SSLObject) -> bool:
    """One go at the handshake: True when done, False when it waits for the server."""
    try:
        tls.do_handshake()
    except ssl.SSLWantReadError:
        return False
    return True


class CertificateProbe(Probe):
    type_names = CertificateMonitor.type_names

    def __init__(self, ctx: ProbeContext) -> None:
        super().__init__(ctx)
        self._contexts: OrderedDict[SslConfig, asyncio.Future[ssl.SSLContext]] = OrderedDict()
        self._threads = ThreadPoolExecutor(
            TLS_THREADS, thread_name_prefix="picket-tls", initializer=_lower_priority
        )

    async def _context(self, verify: bool) -> ssl.SSLContext:
        """The worker's context for this configuration, built on first use (the least recently
        used goes beyond MAX_SSL_CONTEXTS; one that could not be built is tried again next
        time). A CA file changed on disk counts from the worker's next start."""
        config: SslConfig = (verify, self.ctx.ca_file)
        building = self._contexts.get(config)
        if building is None:
            building = asyncio.get_running_loop().run_in_executor(
                self._threads, _build_context, verify, self.ctx.ca_file
            )
            self._contexts[config] = building
            if len(self._contexts) > MAX_SSL_CONTEXTS:
                self._contexts.popitem(last=False)
        else:
            self._contexts.move_to_end(config)
        try:
            return await asyncio.shield(building)
        except (OSError, ssl.SSLError):
            if self._contexts.get(config) is building:
                del self._contexts[config]
            raise

    async def _handshake(
        self,
        reader: asyncio.StreamReader,
        writer: asyncio.StreamWriter,
        context: ssl.SSLContext,
        host: str,
    ) -> bytes | None:
        """The TLS handshake over an open connection; the server's certificate (DER)."""
        loop = asyncio.get_running_loop()
        incoming, outgoing = ssl.MemoryBIO(), ssl.MemoryBIO()
        tls = context.wrap_bio(incoming, outgoing, server_hostname=host)
        while True:
            done = await loop.run_in_executor(self._threads, _handshake_step, tls)
            if pending := outgoing.read():
                writer.write(pending)
                await writer.drain()
            if done:
                break
            chunk = await reader.read(READ_BYTES)
            if not chunk:
                raise ssl.SSLEOFError("the server closed the connection during the handshake")
            incoming.write(chunk)
        der = tls.getpeercert(binary_form=True)
        with contextlib.suppress(ssl.SSLError):
            tls.unwrap()  # close_notify: a polite goodbye, no answer awaited
        writer.write(outgoing.read())
        return der

    async def _unverified_certificate(
        self, address: str, port: int, host: str, seconds: float
    ) -> bytes | None:
        """The server's certificate (DER) without verifying it; None if it cannot be had. (The
        worker's unverifying context, the handshake in the TLS thread, as for every check.)"""
        if not address or seconds <= 0:
            return None
        writer: asyncio.StreamWriter | None = None
        try:
            async with asyncio.timeout(seconds):
                context = await self._context(verify=False)
                reader, writer = await asyncio.open_connection(address, port)
                return await self._handshake(reader, writer, context, host)
        except (TimeoutError, OSError):  # ssl.SSLError is an OSError
            return None
        finally:
            await close_quietly(writer)

    async def check(self, monitor: MonitorBase) -> Outcome:
        assert isinstance(monitor, CertificateMonitor)
        parts = urlsplit(monitor.Url)
        host, port = parts.hostname or "", parts.port or 443
        # the per-host key of an HTTP check of the same URL: they share the host's slots
        async with self.ctx.bounds.hold(authority(monitor.Url), paced=True):
            return await self._check(monitor, host, port)

    async def _check(self, monitor: CertificateMonitor, host: str, port: int) -> Outcome:
        outcome = Outcome()
        marks = {"began": time.perf_counter()}
        deadline = asyncio.get_running_loop().time() + monitor.TimeoutSeconds
        der: bytes | None = None
        writer: asyncio.StreamWriter | None = None
        try:
            context = await self._context(monitor.CheckCertificateErrors)
        except OSError as exc:  # the agent's CA file, not the target: an agent-side error
            problem = exc.strerror or str(exc)
            message = f"the agent's CA file {self.ctx.ca_file} cannot be used: {problem}"
            return Outcome(ErrorCode.AGENT_CONFIGURATION, message)
        try:
            family, address = await self.ctx.lookups.resolve(
                host, monitor.IpVersion, monitor.TimeoutSeconds
            )
            outcome.resolved_ip = address
            marks["resolved"] = time.perf_counter()
            async with asyncio.timeout_at(deadline):
                reader, writer = await asyncio.open_connection(address, port, family=family)
                der = await self._handshake(reader, writer, context, host)
                marks["handshake"] = time.perf_counter()
        except TimeoutError:
            outcome.error_code = ErrorCode.TIMEOUT
            outcome.error_message = f"no TLS handshake within {monitor.TimeoutSeconds} s"
        except ssl.SSLCertVerificationError as exc:
            outcome.error_code = ErrorCode.CERTIFICATE_INVALID
            outcome.error_message = exc.verify_message or str(exc)
        except ssl.SSLError as exc:
            outcome.error_code = ErrorCode.TLS_ERROR
            outcome.error_message = exc.reason or str(exc)
        except OSError as exc:
            outcome.error_code = connect_error(exc)
            outcome.error_message = str(exc) or type(exc).__name__
        finally:
            marks["done"] = time.perf_counter()  # the close is not part of the check's time
            await close_quietly(writer)
        end = reached(marks)  # a failed handshake's time is the handshake's
        outcome.timings_ms = {
            "ResolveTime": span_ms(marks, end("resolved"), "began"),
            "HttpsHandshakeTime": span_ms(marks, end("handshake"), "resolved"),
            "TotalTime": span_ms(marks, "done", "began"),
        }
        if outcome.error_code == ErrorCode.CERTIFICATE_INVALID and der is None:
            # the chain failed verification: still say which certificate it was (NotAfter,
            # issuer, ...), from a second handshake that does not verify, in the time left
            left_s = monitor.TimeoutSeconds - (time.perf_counter() - marks["began"])
            der = await self._unverified_certificate(outcome.resolved_ip, port, host, left_s)
            if der is not None:
                loop = asyncio.get_running_loop()
                outcome.attributes, not_after = await loop.run_in_executor(
                    self._threads, _read, der
                )
                left = not_after - datetime.datetime.now(datetime.UTC)
                outcome.attributes["CertificateDaysLeft"] = left.days
            return outcome
        if not outcome.ok or der is None:
            if outcome.ok:
                outcome.error_code = ErrorCode.TLS_ERROR
                outcome.error_message = "the server sent no certificate"
            return outcome
        loop = asyncio.get_running_loop()
        outcome.attributes, not_after = await loop.run_in_executor(self._threads, _read, der)
        left = not_after - datetime.datetime.now(datetime.UTC)
        outcome.attributes["CertificateDaysLeft"] = left.days
        if left.total_seconds() <= 0:
            outcome.error_code = ErrorCode.CERTIFICATE_INVALID
            outcome.error_message = f"expired on {outcome.attributes['CertificateNotAfter']}"
        elif left.days < monitor.CertificateExpirationWarningDays:
            outcome.error_code = ErrorCode.CERTIFICATE_EXPIRING
            warn_days = monitor.CertificateExpirationWarningDays
            outcome.error_message = f"expires in {left.days} days (warning at {warn_days})"
        for field in EXPECTED_FIELDS:
            expected = getattr(monitor, field)
            actual = outcome.attributes[field]
            if outcome.ok and expected and not _same(field, expected, actual):
                outcome.error_code = ErrorCode.CERTIFICATE_MISMATCH
                outcome.error_message = f"{field} is {actual!r}, expected {expected!r}"
        return outcome
