"""REST API v4, one module per resource; each module exports `routes`."""

from __future__ import annotations

from aiohttp import web

from controller.api import (
    alert_definitions,
    checkpoints,
    checks,
    enrolment,
    integrations,
    maintenance,
    monitor_groups,
    monitors,
    operators,
    register,
)

RESOURCES = (
    register,
    monitors,
    checks,
    checkpoints,
    enrolment,
    operators,
    integrations,
    monitor_groups,
    maintenance,
    alert_definitions,
)


def setup(app: web.Application) -> None:
    for module in RESOURCES:
        app.add_routes(module.routes)
