"""Which maintenance periods are in force for a monitor at an instant, and which monitors a
group holds: what ingest (the `InMaintenance` flag) and alerting ask.

A monitor's periods live in its definition (shared/maintenance.py); they are read once per
revision and kept, compiled, in a bounded cache.
"""

from __future__ import annotations

import logging
from collections import OrderedDict

from pydantic import TypeAdapter, ValidationError

from controller.db.store import GroupRow, MonitorRow, Store
from shared import maintenance
from shared.monitors import PERIODS

log = logging.getLogger(__name__)

DISABLE_MONITORING = maintenance.DISABLE_MONITORING
DISABLE_NOTIFICATIONS = maintenance.DISABLE_NOTIFICATIONS
CACHE_ENTRIES = 100_000  # monitors; the least recently used beyond it are compiled again
_PERIODS = TypeAdapter(list[maintenance.MaintenancePeriod])
_NONE: tuple[maintenance.Schedule, ...] = ()
_cache: OrderedDict[tuple[str, str], tuple[maintenance.Schedule, ...]] = OrderedDict()


def schedules(monitor: MonitorRow) -> tuple[maintenance.Schedule, ...]:
    """The monitor's maintenance periods, compiled (cached per revision)."""
    raw = monitor.definition.get(PERIODS)
    if not raw:
        return _NONE
    key = (monitor.guid, monitor.revision)
    found = _cache.get(key)
    if found is not None:
        _cache.move_to_end(key)
        return found
    try:
        compiled = maintenance.schedules(_PERIODS.validate_python(raw))
    except (ValidationError, ValueError) as exc:  # stored before a rule was tightened
        log.error("monitor %s: maintenance periods unreadable, ignored: %s", monitor.guid, exc)
        compiled = _NONE
    _cache[key] = compiled
    while len(_cache) > CACHE_ENTRIES:
        _cache.popitem(last=False)
    return compiled


def in_force(monitor: MonitorRow, moment: float) -> frozenset[str]:
    """The maintenance types (DISABLE_MONITORING, DISABLE_NOTIFICATIONS) of the monitor's
    periods in force at `moment` (epoch seconds; a period's end is not in it)."""
    return maintenance.in_force(schedules(monitor), moment)


def notifications_disabled(monitor: MonitorRow, moment: float) -> bool:
    """True when no alert may be sent for the monitor at `moment`: a period of either type is
    in force (checks that ran in a DisableMonitoring period are not to be alerted on either)."""
    return bool(in_force(monitor, moment))


def monitoring_disabled(monitor: MonitorRow, moment: float) -> bool:
    """True when the monitor's agents run no check at `moment`."""
    return DISABLE_MONITORING in in_force(monitor, moment)


async def group_monitors(store: Store, group_guid: str) -> list[str] | None:
    """The guids of the monitors in a group (every monitor for All Monitors); None: no such
    group."""
    group: GroupRow | None = await store.monitor_group(group_guid.lower())
    if group is None:
        return None
    return await store.group_monitor_guids(group)
