"""Uptrends' integer `TimeZoneId`s, each mapped to an IANA zone (read with zoneinfo).

Uptrends does not publish its list. Its knowledge base shows four ids (1, 2, 3 and 56), kept
here with the meaning it gives them; every other zone has a Picket id from 1000 up, so that
no id a client copied from Uptrends can silently mean another zone here (an Uptrends id not in
this table is refused). Ids never change once published: add new zones at the end.

Offsets and daylight saving are read from the zone data for the current year, never written
down here: a country that changes its rules is right after a tzdata update.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any
from zoneinfo import ZoneInfo

UTC_ID = 1000


@dataclass(frozen=True)
class TimeZone:
    id: int
    iana: str
    label: str

    @functools.cached_property
    def zone(self) -> ZoneInfo:
        return ZoneInfo(self.iana)


_TABLE: tuple[tuple[int, str, str], ...] = (
    # the ids Uptrends' knowledge base shows (operator API page)
    (1, "America/Santiago", "Chile"),
    (2, "Indian/Cocos", "Cocos Islands"),
    (3, "Africa/Lagos", "West Central Africa"),
    (56, "America/Chicago", "Central time (US, Canada)"),
    # Picket's
    (1000, "Etc/UTC", "Coordinated Universal Time"),
    (1001, "Europe/London", "United Kingdom"),
    (1002, "Europe/Dublin", "Ireland"),
    (1003, "Europe/Lisbon", "Portugal"),
    (1004, "Europe/Amsterdam", "Netherlands"),
    (1005, "Europe/Brussels", "Belgium"),
    (1006, "Europe/Paris", "France"),
    (1007, "Europe/Berlin", "Germany"),
    (1008, "Europe/Madrid", "Spain"),
    (1009, "Europe/Rome", "Italy"),
    (1010, "Europe/Zurich", "Switzerland"),
    (1011, "Europe/Vienna", "Austria"),
    (1012, "Europe/Stockholm", "Sweden"),
    (1013, "Europe/Oslo", "Norway"),
    (1014, "Europe/Copenhagen", "Denmark"),
    (1015, "Europe/Warsaw", "Poland"),
    (1016, "Europe/Prague", "Czechia"),
    (1017, "Europe/Helsinki", "Finland"),
    (1018, "Europe/Athens", "Greece"),
    (1019, "Europe/Bucharest", "Romania"),
    (1020, "Europe/Kyiv", "Ukraine"),
    (1021, "Europe/Istanbul", "Turkey"),
    (1022, "Europe/Moscow", "Moscow"),
    (1023, "Africa/Johannesburg", "South Africa"),
    (1024, "Africa/Cairo", "Egypt"),
    (1025, "Africa/Nairobi", "East Africa"),
    (1026, "Asia/Dubai", "Gulf (Dubai)"),
    (1027, "Asia/Tehran", "Iran"),
    (1028, "Asia/Karachi", "Pakistan"),
    (1029, "Asia/Kolkata", "India"),
    (1030, "Asia/Kathmandu", "Nepal"),
    (1031, "Asia/Dhaka", "Bangladesh"),
    (1032, "Asia/Bangkok", "Indochina (Bangkok)"),
    (1033, "Asia/Jakarta", "Western Indonesia"),
    (1034, "Asia/Singapore", "Singapore"),
    (1035, "Asia/Shanghai", "China"),
    (1036, "Asia/Hong_Kong", "Hong Kong"),
    (1037, "Asia/Taipei", "Taiwan"),
    (1038, "Asia/Manila", "Philippines"),
    (1039, "Asia/Seoul", "Korea"),
    (1040, "Asia/Tokyo", "Japan"),
    (1041, "Australia/Perth", "Western Australia"),
    (1042, "Australia/Adelaide", "South Australia"),
    (1043, "Australia/Darwin", "Northern Territory"),
    (1044, "Australia/Brisbane", "Queensland"),
    (1045, "Australia/Sydney", "New South Wales, Victoria"),
    (1046, "Pacific/Auckland", "New Zealand"),
    (1047, "Pacific/Honolulu", "Hawaii"),
    (1048, "America/Anchorage", "Alaska"),
    (1049, "America/Los_Angeles", "Pacific time (US, Canada)"),
    (1050, "America/Phoenix", "Arizona"),
    (1051, "America/Denver", "Mountain time (US, Canada)"),
    (1052, "America/Mexico_City", "Mexico City"),
    (1053, "America/New_York", "Eastern time (US, Canada)"),
    (1054, "America/Halifax", "Atlantic time (Canada)"),
    (1055, "America/St_Johns", "Newfoundland"),
    (1056, "America/Bogota", "Colombia"),
    (1057, "America/Lima", "Peru"),
    (1058, "America/Caracas", "Venezuela"),
    (1059, "America/Sao_Paulo", "Brasilia"),
    (1060, "America/Argentina/Buenos_Aires", "Argentina"),
    (1061, "Atlantic/Reykjavik", "Iceland"),
    (1062, "Asia/Jerusalem", "Israel"),
    (1063, "Asia/Riyadh", "Arabia"),
)

ZONES: dict[int, TimeZone] = {i: TimeZone(i, iana, label) for i, iana, label in _TABLE}


def get(zone_id: int | None) -> TimeZone | None:
    return ZONES.get(zone_id) if zone_id is not None else None


def zone_of(zone_id: int | None, default: int = UTC_ID) -> ZoneInfo:
    """The IANA zone of an id; an unknown or missing id: the default's (UTC unless set)."""
    found = ZONES.get(zone_id) if zone_id is not None else None
    return (found or ZONES[default]).zone


def _offsets(zone: ZoneInfo, year: int) -> set[int]:
    """The UTC offsets (minutes) the zone uses during `year`, sampled every half month."""
    found = set()
    start = datetime(year, 1, 1, tzinfo=UTC)
    for step in range(25):
        offset = (start + timedelta(days=step * 15.25)).astimezone(zone).utcoffset()
        assert offset is not None
        found.add(int(offset.total_seconds() // 60))
    return found


def _gmt(minutes: int) -> str:
    sign = "+" if minutes >= 0 else "-"
    hours, mins = divmod(abs(minutes), 60)
    return f"GMT{sign}{hours:02d}:{mins:02d}"


def describe(tz: TimeZone, now: datetime | None = None) -> dict[str, Any]:
    """Uptrends' Timezone object (standard offset and daylight saving for this year), plus
    Picket's `IanaName`."""
    year = (now or datetime.now(UTC)).year
    offsets = _offsets(tz.zone, year)
    standard = min(offsets)
    body: dict[str, Any] = {
        "TimezoneId": tz.id,
        "Description": f"{_gmt(standard)} {tz.label}",
        "OffsetFromUtc": standard,
        "HasDaylightSaving": len(offsets) > 1,
    }
    if len(offsets) > 1:
        body["DaylightSavingOffset"] = max(offsets) - standard
    body["IanaName"] = tz.iana
    return body


def listing(now: datetime | None = None) -> list[dict[str, Any]]:
    return [describe(tz, now) for tz in ZONES.values()]
