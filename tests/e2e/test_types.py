"""Every monitor type through the whole path: API -> controller -> MQTT -> agent -> stored check."""

from __future__ import annotations

import os
import ssl
from pathlib import Path
from typing import Any

import aiohttp
import pytest
import trustme

from tests.e2e.conftest import Stack, ready
from tests.helpers import Mosquitto, Target, wait_for
from tests.servers.api import ApiTarget
from tests.servers.dns import DnsServer

pytestmark = pytest.mark.e2e


async def test_every_monitor_type(
    tmp_path: Path,
    stack: Stack,
    mosquitto: Mosquitto,
    http: aiohttp.ClientSession,
    echo_port: int,
) -> None:
    ca = trustme.CA()
    ca_file = tmp_path / "ca.pem"
    ca.cert_pem.write_to_path(str(ca_file))
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ca.issue_cert("127.0.0.1", common_name="picket.test").configure_cert(context)
    tls = Target()
    await tls.start(ssl_context=context)
    dns_server = DnsServer({("www.picket.test.", "A"): ["192.0.2.10"]})
    await dns_server.start()
    api_target = ApiTarget()
    await api_target.start()
    try:
        stack.controller(mosquitto.url, f"sqlite+aiosqlite:///{tmp_path / 'picket.db'}")
        stack.agent(mosquitto.url, PICKET_CA_FILE=str(ca_file))
        api = await ready(stack, http)
        every = {"CheckIntervalSeconds": 2}
        definitions: dict[str, dict[str, Any]] = {
            "https": {"MonitorType": "Https", "Url": f"{tls.base}/ok"},
            "dns": {
                "MonitorType": "DNS",
                "DnsServer": dns_server.address,
                "DnsQuery": "ARecord",
                "DnsTestValue": "www.picket.test",
                "DnsExpectedResult": "192.0.2.10",
            },
            "connect": {
                "MonitorType": "Connect",
                "NetworkAddress": "127.0.0.1",
                "Port": echo_port,
                "SendString": "hi\n",
                "ExpectString": "echo: hi",
            },
            "certificate": {
                "MonitorType": "Certificate",
                "Url": tls.base,
                "CertificateName": "picket.test",
            },
            "msa": {
                "MonitorType": "MultiStepApi",
                "MsaSteps": [
                    {
                        "StepType": "HttpRequest",
                        "Url": f"{api_target.base}/orders/5",
                        "Assertions": [
                            {
                                "Source": "ResponseBodyJson",
                                "Property": "id",
                                "Comparison": "Equal",
                                "TargetValue": "5",
                            }
                        ],
                    }
                ],
            },
        }
        if os.geteuid() == 0:
            definitions["ping"] = {"MonitorType": "Ping", "NetworkAddress": "127.0.0.1"}
        guids = {}
        for name, definition in definitions.items():
            status, body = await api.call(
                "POST", "/api/v4/Monitor", json={"Name": name, **every, **definition}
            )
            assert status == 201, (name, body)
            guids[name] = body["MonitorGuid"]

        async def all_checked() -> dict[str, dict[str, Any]] | None:
            latest = {}
            for name, guid in guids.items():
                checks = await api.checks(guid)
                if not checks:
                    return None
                latest[name] = checks[-1]
            return latest

        latest = await wait_for(all_checked, "a stored check of every monitor type")
        for name, check in latest.items():
            assert check["Attributes"]["ErrorLevel"] == "NoError", (name, check)
        assert latest["dns"]["Attributes"]["DnsAnswers"] == ["192.0.2.10"]
        assert latest["certificate"]["Attributes"]["CertificateName"] == "picket.test"
        assert latest["https"]["Attributes"]["HttpsHandshakeTime"] > 0
        if "ping" in latest:
            assert latest["ping"]["Attributes"]["PingReceived"] == 3
        msa_id = latest["msa"]["Id"]
        status, details = await api.call("GET", f"/api/v4/MonitorCheck/{msa_id}/MultiStepAPI")
        assert status == 200, details
        (step,) = details["Data"]["Attributes"]["StepResults"]
        assert step["Passed"] and step["HttpStatusCode"] == "200"
    finally:
        await tls.stop()
        await dns_server.stop()
        await api_target.stop()
