"""Certificate checks: the server's certificate, its chain and name, expiry, expected fields."""

from __future__ import annotations

import asyncio
import datetime
import functools
import ssl
import time
from typing import Any
from urllib.parse import urlsplit

from cryptography import x509
from cryptography.hazmat.primitives import hashes
from cryptography.x509.oid import NameOID

from agent.probes.base import Outcome, Probe, span_ms
from agent.probes.tcp import close_quietly, connect_error, reached, resolve
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


@functools.cache
def _unverifying_context() -> ssl.SSLContext:
    """For reading a certificate that failed verification: no CA bundle to load (cheap), built
    once per worker."""
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE
    return context


class CertificateProbe(Probe):
    type_names = CertificateMonitor.type_names

    def _context(self, verify: bool) -> ssl.SSLContext:
        context = ssl.create_default_context(cafile=self.ctx.ca_file)
        if not verify:
            context.check_hostname = False
            context.verify_mode = ssl.CERT_NONE
        return context

    async def _unverified_certificate(
        self, address: str, port: int, host: str, seconds: float
    ) -> bytes | None:
        """The server's certificate (DER) without verifying it; None if it cannot be had."""
        if not address or seconds <= 0:
            return None
        writer: asyncio.StreamWriter | None = None
        try:
            async with asyncio.timeout(seconds):
                _reader, writer = await asyncio.open_connection(
                    address, port, ssl=_unverifying_context(), server_hostname=host
                )
                tls = writer.get_extra_info("ssl_object")
                return tls.getpeercert(binary_form=True) if tls is not None else None
        except (TimeoutError, OSError):  # ssl.SSLError is an OSError
            return None
        finally:
            await close_quietly(writer)

    async def check(self, monitor: MonitorBase) -> Outcome:
        assert isinstance(monitor, CertificateMonitor)
        parts = urlsplit(monitor.Url)
        host, port = parts.hostname or "", parts.port or 443
        outcome = Outcome()
        marks = {"began": time.perf_counter()}
        der: bytes | None = None
        writer: asyncio.StreamWriter | None = None
        try:
            context = self._context(monitor.CheckCertificateErrors)
        except OSError as exc:  # the agent's CA file, not the target: an agent-side error
            problem = exc.strerror or str(exc)
            message = f"the agent's CA file {self.ctx.ca_file} cannot be used: {problem}"
            return Outcome(ErrorCode.AGENT_CONFIGURATION, message)
        try:
            async with asyncio.timeout(monitor.TimeoutSeconds):
                family, address = await resolve(host, port, monitor.IpVersion)
                outcome.resolved_ip = address
                marks["resolved"] = time.perf_counter()
                _reader, writer = await asyncio.open_connection(
                    address,
                    port,
                    family=family,
                    ssl=context,
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
                cert = x509.load_der_x509_certificate(der)
                outcome.attributes = describe(cert)
                left = cert.not_valid_after_utc - datetime.datetime.now(datetime.UTC)
                outcome.attributes["CertificateDaysLeft"] = left.days
            return outcome
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
