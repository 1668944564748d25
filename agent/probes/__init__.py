"""Probe registry: one module per monitor type, registered once by type name."""

from __future__ import annotations

from agent.probes.base import Outcome, Probe, ProbeContext
from agent.probes.http import HttpProbe

_PROBES: dict[str, type[Probe]] = {}


def register(probe: type[Probe]) -> None:
    for name in probe.type_names:
        if name in _PROBES:
            raise RuntimeError(f"probe for {name} registered twice")
        _PROBES[name] = probe


def probe_types() -> list[str]:
    return sorted(_PROBES)


def build(ctx: ProbeContext) -> dict[str, Probe]:
    """One probe instance per type name, sharing the context (engines, limits)."""
    instances: dict[type[Probe], Probe] = {}
    return {name: instances.setdefault(cls, cls(ctx)) for name, cls in _PROBES.items()}


register(HttpProbe)

__all__ = ["Outcome", "Probe", "ProbeContext", "build", "probe_types", "register"]
