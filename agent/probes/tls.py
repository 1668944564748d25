"""Certificate checks: the server's certificate, its chain and name, expiry, expected fields."""

from __future__ import annotations

import asyncio
import datetime
import ssl
import time
from collections import OrderedDict
from typing import Any
from urllib.parse import urlsplit

from cryptography import x509
from cryptography.hazmat.primitives import hashes
from cryptography.x509.oid import NameOID

from agent.bounds import host_key
from agent.probes.base import Outcome, Probe, ProbeContext, span_ms
from agent.probes.tcp import close_quietly, connect_error
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


# SSL contexts kept per worker: building one loads the CA bundle (≈ 18 ms, the loop stopped)
MAX_SSL_CONTEXTS = 16
SslConfig = tuple[bool, str | None]  # (verify chain and name, CA file); more as monitors need


class CertificateProbe(Probe):
    type_names = CertificateMonitor.type_names

    def __init__(self, ctx: ProbeContext) -> None:
        super().__init__(ctx)
        self._contexts: OrderedDict[SslConfig, ssl.SSLContext] = OrderedDict()
        self.contexts_built = 0

    def _context(self, verify: bool) -> ssl.SSLContext:
        """The worker's context for this configuration, built on first use (the least recently
        used goes beyond MAX_SSL_CONTEXTS). A CA file changed on disk counts from the worker's
        next start."""
        config: SslConfig = (verify, self.ctx.ca_file)
        context = self._contexts.get(config)
        if context is not None:
            self._contexts.move_to_end(config)
            return context
        context = ssl.create_default_context(cafile=self.ctx.ca_file)
        if not verify:
            context.check_hostname = False
            context.verify_mode = ssl.CERT_NONE
        self.contexts_built += 1
        self._contexts[config] = context
        if len(self._contexts) > MAX_SSL_CONTEXTS:
            self._contexts.popitem(last=False)
        return context

    async def check(self, monitor: MonitorBase) -> Outcome:
        assert isinstance(monitor, CertificateMonitor)
        parts = urlsplit(monitor.Url)
        host, port = parts.hostname or "", parts.port or 443
        async with self.ctx.bounds.hold(host_key(host, port)):
            return await self._check(monitor, host, port)

    async def _check(self, monitor: CertificateMonitor, host: str, port: int) -> Outcome:
        outcome = Outcome()
        marks = {"began": time.perf_counter()}
        deadline = asyncio.get_running_loop().time() + monitor.TimeoutSeconds
        der: bytes | None = None
        writer: asyncio.StreamWriter | None = None
        try:
            family, address = await self.ctx.lookups.resolve(
                host, monitor.IpVersion, monitor.TimeoutSeconds
            )
            outcome.resolved_ip = address
            marks["resolved"] = time.perf_counter()
            async with asyncio.timeout_at(deadline):
                _reader, writer = await asyncio.open_connection(
                    address,
                    port,
                    family=family,
                    ssl=self._context(monitor.CheckCertificateErrors),
                    server_hostname=host,
                )
                marks["handshake"] = time.perf_counter()
                tls = writer.get_extra_info("ssl_object")
                der = tls.getpeercert(binary_form=True) if tls is not None else None
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
        outcome.timings_ms = {
            "ResolveTime": span_ms(marks, "resolved", "began"),
            "HttpsHandshakeTime": span_ms(marks, "handshake", "resolved"),
            "TotalTime": span_ms(marks, "done", "began"),
        }
        if not outcome.ok or der is None:
            if outcome.ok:
                outcome.error_code = ErrorCode.TLS_ERROR
                outcome.error_message = "the server sent no certificate"
            return outcome
        cert = x509.load_der_x509_certificate(der)
        outcome.attributes = describe(cert)
        left = cert.not_valid_after_utc - datetime.datetime.now(datetime.UTC)
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
