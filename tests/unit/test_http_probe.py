"""HTTP checks against real loopback servers: TLS, auth, versions, redirects, conditions."""

from __future__ import annotations

import datetime
import json
import socket
import ssl
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import pytest
import trustme

from agent.curl import AVAILABLE_AUTH, HTTP3_AVAILABLE, CurlEngine
from agent.probes.base import Outcome, ProbeContext
from agent.probes.http import HttpProbe
from shared.errors import ErrorCode
from shared.monitors import HttpMonitor
from tests.helpers import REPO, Target, free_port


@pytest.fixture(scope="module")
def ca() -> trustme.CA:
    return trustme.CA()


@pytest.fixture
def ca_file(ca: trustme.CA, tmp_path: Path) -> str:
    path = tmp_path / "ca.pem"
    ca.cert_pem.write_to_path(str(path))
    return str(path)


@pytest.fixture
async def engine(ca_file: str) -> AsyncIterator[CurlEngine]:
    curl = CurlEngine(max_concurrency=20, ca_file=ca_file)
    yield curl
    curl.close()


def _server_context(cert: trustme.LeafCert, client_ca: trustme.CA | None = None) -> ssl.SSLContext:
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    cert.configure_cert(context)
    if client_ca is not None:
        client_ca.configure_trust(context)
        context.verify_mode = ssl.CERT_REQUIRED
    return context


async def _tls_target(context: ssl.SSLContext) -> Target:
    server = Target()
    await server.start(ssl_context=context)
    return server


async def _check(engine: CurlEngine, url: str, **fields: Any) -> Outcome:
    monitor_type = "Https" if url.startswith("https") else "Http"
    monitor = HttpMonitor.model_validate(
        {"Name": "m", "MonitorType": monitor_type, "Url": url, **fields}
    )
    return await HttpProbe(ProbeContext(curl=engine, max_body_bytes=1 << 20)).check(monitor)


async def test_redirects_hop_by_hop_with_a_waterfall(engine: CurlEngine, target: Target) -> None:
    outcome = await _check(engine, f"{target.base}/redirect/3")
    assert outcome.ok and outcome.http_status_code == 200
    assert outcome.details is not None
    elements = outcome.details["Waterfall"]
    assert [e["HttpStatusCode"] for e in elements] == [302, 302, 302, 200]
    assert [e["Index"] for e in elements] == [0, 1, 2, 3]
    assert elements[-1]["Url"] == f"{target.base}/ok"
    starts = [e["StartTime"] for e in elements]
    assert starts == sorted(starts) and starts[0] < 5
    total = sum(e["TotalTime"] for e in elements)
    assert abs(outcome.timings_ms["TotalTime"] - total) < 0.01
    assert "200" in elements[-1]["ResponseHeaders"].splitlines()[0]  # the final response
    assert target.hits == 4


async def test_credentials_stay_with_their_origin(engine: CurlEngine, target: Target) -> None:
    other = Target()
    await other.start()
    try:
        outcome = await _check(
            engine,
            f"{target.base}/goto?url={other.base}/echo",
            RequestHeaders=[
                {"Name": "Authorization", "Value": "Bearer s3cret"},
                {"Name": "X-Trace", "Value": "t1"},
            ],
        )
        assert outcome.ok
        seen = json.loads(outcome.body or b"{}")["headers"]
        assert "Authorization" not in seen and seen["X-Trace"] == "t1"
        assert outcome.details is not None
        sent = outcome.details["Waterfall"][0]["RequestHeaders"]
        assert "Authorization: ***" in sent and "s3cret" not in json.dumps(outcome.details)
    finally:
        await other.stop()


async def test_method_body_headers_and_user_agent(engine: CurlEngine, target: Target) -> None:
    outcome = await _check(
        engine,
        f"{target.base}/echo",
        HttpMethod="Post",
        RequestBody='{"a": 1}',
        UserAgent="PicketTest/1",
        RequestHeaders=[{"Name": "Content-Type", "Value": "application/json"}],
    )
    echoed = json.loads(outcome.body or b"{}")
    assert echoed["method"] == "POST" and echoed["body"] == '{"a": 1}'
    assert echoed["headers"]["User-Agent"] == "PicketTest/1"
    assert echoed["headers"]["Content-Type"] == "application/json"


async def test_basic_and_digest_auth(engine: CurlEngine, target: Target) -> None:
    denied = await _check(engine, f"{target.base}/basic")
    assert denied.error_code == ErrorCode.HTTP_STATUS_MISMATCH and denied.http_status_code == 401
    basic = await _check(
        engine,
        f"{target.base}/basic",
        AuthenticationType="Basic",
        Username="alice",
        Password="wonder land",
    )
    assert basic.ok, basic
    digest = await _check(
        engine, f"{target.base}/digest", AuthenticationType="Digest", Username="bob", Password="b0b"
    )
    assert digest.ok, digest
    # the waterfall shows the request that carried the answer to the challenge (the trace of
    # a Digest transfer is kept past its first request)
    assert digest.details is not None
    assert "Authorization: ******" in digest.details["Waterfall"][0]["RequestHeaders"]
    wrong = await _check(
        engine, f"{target.base}/digest", AuthenticationType="Digest", Username="bob", Password="x"
    )
    assert wrong.http_status_code == 401


async def test_time_and_size_conditions(engine: CurlEngine, target: Target) -> None:
    def cond(kind: str, value: int) -> dict[str, str]:
        return {"ErrorConditionType": kind, "Value": str(value)}

    slow = f"{target.base}/slow?ms=120"
    warned = await _check(engine, slow, ErrorConditions=[cond("LoadTimeLimit1", 50)])
    assert warned.ok and warned.warnings and "LoadTimeLimit1" in warned.warnings[0]
    limit = await _check(engine, slow, ErrorConditions=[cond("LoadTimeLimit2", 50)])
    assert limit.error_code == ErrorCode.LOAD_TIME_EXCEEDED
    fine = await _check(engine, slow, ErrorConditions=[cond("LoadTimeLimit2", 10_000)])
    assert fine.ok and not fine.warnings
    ttfb = await _check(engine, slow, ErrorConditions=[cond("TimeToFirstByteMaximum", 60)])
    assert ttfb.error_code == ErrorCode.TIME_TO_FIRST_BYTE_EXCEEDED
    big = f"{target.base}/big?bytes=5000"
    assert (
        await _check(engine, big, ErrorConditions=[cond("TotalMaxBytes", 4000)])
    ).error_code == (ErrorCode.TOO_MANY_BYTES)
    assert (
        await _check(engine, big, ErrorConditions=[cond("TotalMinBytes", 6000)])
    ).error_code == (ErrorCode.TOO_FEW_BYTES)
    assert (await _check(engine, big, ErrorConditions=[cond("TotalMinBytes", 4000)])).ok


async def test_tls_verification(engine: CurlEngine, ca: trustme.CA) -> None:
    good = await _tls_target(_server_context(ca.issue_cert("127.0.0.1")))
    wrong_host = await _tls_target(_server_context(ca.issue_cert("other.example")))
    past = datetime.datetime.now(datetime.UTC) - datetime.timedelta(days=30)
    expired = await _tls_target(
        _server_context(
            ca.issue_cert("127.0.0.1", not_before=past, not_after=past + datetime.timedelta(days=1))
        )
    )
    stranger = trustme.CA()  # a CA the agent does not trust: as good as self-signed
    untrusted = await _tls_target(_server_context(stranger.issue_cert("127.0.0.1")))
    try:
        ok = await _check(engine, f"{good.base}/ok")
        assert ok.ok, ok
        assert ok.timings_ms["HttpsHandshakeTime"] > 0
        for server in (wrong_host, expired, untrusted):
            bad = await _check(engine, f"{server.base}/ok")
            assert bad.error_code == ErrorCode.CERTIFICATE_INVALID, bad
            relaxed = await _check(engine, f"{server.base}/ok", CheckCertificateErrors=False)
            assert relaxed.ok, relaxed
        pinned = await _check(engine, f"{good.base}/ok", TlsVersion="Tls12")
        assert pinned.ok, pinned
    finally:
        for server in (good, wrong_host, expired, untrusted):
            await server.stop()


async def test_client_certificate(engine: CurlEngine, ca: trustme.CA) -> None:
    server = await _tls_target(_server_context(ca.issue_cert("127.0.0.1"), client_ca=ca))
    client = ca.issue_cert("picket-agent-test", common_name="picket-agent-test")
    try:
        refused = await _check(engine, f"{server.base}/echo")
        assert not refused.ok
        accepted = await _check(
            engine,
            f"{server.base}/echo",
            ClientCertificate=client.cert_chain_pems[0].bytes().decode(),
            ClientCertificateKey=client.private_key_pem.bytes().decode(),
        )
        assert accepted.ok, accepted
        assert json.loads(accepted.body or b"{}")["client_cn"] == "picket-agent-test"
    finally:
        await server.stop()


def _udp_free(port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as probe:
        try:
            probe.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


@pytest.fixture
def h2_server(ca: trustme.CA, tmp_path: Path) -> Iterator[str]:
    cert = ca.issue_cert("127.0.0.1")
    cert.cert_chain_pems[0].write_to_path(str(tmp_path / "cert.pem"))
    cert.private_key_pem.write_to_path(str(tmp_path / "key.pem"))
    port = free_port()
    while HTTP3_AVAILABLE and not _udp_free(port):  # HTTP/3 takes the same number over UDP
        port = free_port()
    quic = ["--quic-bind", f"127.0.0.1:{port}"] if HTTP3_AVAILABLE else []
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "hypercorn",
            "--certfile",
            str(tmp_path / "cert.pem"),
            "--keyfile",
            str(tmp_path / "key.pem"),
            "--bind",
            f"127.0.0.1:{port}",
            *quic,
            "tests.servers.h2app:app",
        ],
        cwd=REPO,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    deadline = time.monotonic() + 30
    while True:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.5).close()
            break
        except OSError:
            if time.monotonic() > deadline or proc.poll() is not None:
                proc.kill()
                pytest.fail(f"hypercorn did not start on port {port} (exit {proc.poll()})")
            time.sleep(0.05)
    yield f"https://127.0.0.1:{port}/"
    proc.terminate()
    proc.wait(10)


async def test_http_versions(engine: CurlEngine, h2_server: str) -> None:
    versions = [("Negotiate", "2"), ("Http2", "2"), ("Http1_1", "1.1")]
    if HTTP3_AVAILABLE:
        versions.append(("Http3", "3"))
    for wanted, seen in versions:
        outcome = await _check(engine, h2_server, HttpVersion=wanted)
        assert outcome.ok, outcome
        assert outcome.details is not None
        assert outcome.details["Waterfall"][-1]["HttpVersion"] == seen, wanted
        assert (outcome.body or b"").decode().strip() == f"http/{seen}"


@pytest.mark.skipif("NTLM" in AVAILABLE_AUTH, reason="this libcurl has NTLM")
async def test_ntlm_without_libcurl_support_says_so(engine: CurlEngine, target: Target) -> None:
    outcome = await _check(
        engine, f"{target.base}/ok", AuthenticationType="NTLM", Username="u", Password="p"
    )
    assert outcome.error_code == ErrorCode.UNSUPPORTED
    assert "NTLM" in outcome.error_message


async def test_effect_indicate_warns_and_does_not_fail(engine: CurlEngine, target: Target) -> None:
    def cond(kind: str, value: str, effect: str | None = None) -> dict[str, str]:
        return {
            "ErrorConditionType": kind,
            "Value": value,
            **({"Effect": effect} if effect else {}),
        }

    url = f"{target.base}/status/503"
    indicated = await _check(
        engine,
        url,
        ErrorConditions=[
            cond("HttpStatus", "200", "Indicate"),
            cond("ContentMatch", "no such text", "Indicate"),
        ],
    )
    assert indicated.ok and indicated.http_status_code == 503, indicated
    assert len(indicated.warnings) == 2 and "Effect Indicate" in indicated.warnings[0]
    failed = await _check(
        engine,
        url,
        ErrorConditions=[
            cond("ContentMatch", "no such text", "Indicate"),
            cond("HttpStatus", "200"),
        ],
    )
    assert failed.error_code == ErrorCode.HTTP_STATUS_MISMATCH
    slow = f"{target.base}/slow?ms=120"
    limit1 = await _check(engine, slow, ErrorConditions=[cond("LoadTimeLimit1", "50", "Error")])
    assert limit1.error_code == ErrorCode.LOAD_TIME_EXCEEDED
    limit2 = await _check(engine, slow, ErrorConditions=[cond("LoadTimeLimit2", "50", "Indicate")])
    assert limit2.ok and "LoadTimeLimit2, Effect Indicate" in limit2.warnings[0]
