"""Probe registry: one module per monitor type, registered once by type name."""

from __future__ import annotations

from agent.probes.api import MultiStepApiProbe
from agent.probes.base import Outcome, Probe, ProbeContext
from agent.probes.dns import DnsProbe
from agent.probes.http import HttpProbe
from agent.probes.ping import PingProbe
from agent.probes.tcp import ConnectProbe
from agent.probes.tls import CertificateProbe
from shared.registry import Registry

_PROBES: Registry[type[Probe]] = Registry("probe")


def register(probe: type[Probe]) -> None:
    _PROBES.register(probe.type_names, probe)


def probe_types() -> list[str]:
    return _PROBES.names()


def build(ctx: ProbeContext) -> dict[str, Probe]:
    """One probe instance per type name, sharing the context (engines, limits)."""
    instances: dict[type[Probe], Probe] = {}
    by_name: dict[str, Probe] = {}
    for name, cls in _PROBES.items():
        if cls not in instances:
            instances[cls] = cls(ctx)
        by_name[name] = instances[cls]
    return by_name


for _probe in (
    HttpProbe,
    DnsProbe,
    ConnectProbe,
    CertificateProbe,
    PingProbe,
    MultiStepApiProbe,
):
    register(_probe)

__all__ = ["Outcome", "Probe", "ProbeContext", "build", "probe_types", "register"]
