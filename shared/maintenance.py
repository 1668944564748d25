"""Maintenance periods (Uptrends' MaintenancePeriod): the model and when each one is in force.

The controller validates periods with this model and keeps them in the monitor's definition,
so each agent receives them with its assignment and skips the slots a `DisableMonitoring`
period covers by itself (it needs neither the controller nor the broker when a period starts);
the controller flags the results a period covers (`InMaintenance`) with the same code.

Times are wall-clock times in the period's `TimeZone`, an IANA name the controller resolves from
its `TimeZoneId` when the period is saved (Uptrends reads them in the account's time zone:
Picket's PICKET_TIME_ZONE_ID, kept with each period). Recurring periods
(Daily, Weekly, Monthly) run from `StartTime` to `EndTime` ("HH:mm") on each matching day; an
`EndTime` not after the `StartTime` ends on the next day (equal: 24 hours). `MonthDay` past the
end of a month means that month's last day. A wall-clock time that a daylight-saving change
skips is read with the offset before the change (02:30 on a spring-forward night is 03:30), one
that occurs twice is its first occurrence.
"""

from __future__ import annotations

import calendar
import datetime as dt
import re
import zoneinfo
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

ScheduleModeName = Literal["OneTime", "Daily", "Weekly", "Monthly"]
MaintenanceTypeName = Literal["DisableMonitoring", "DisableNotifications"]
WeekDayName = Literal["Sunday", "Monday", "Tuesday", "Wednesday", "Thursday", "Friday", "Saturday"]
DISABLE_MONITORING = "DisableMonitoring"
DISABLE_NOTIFICATIONS = "DisableNotifications"
# Python's weekday(): Monday is 0
WEEKDAY_NUMBER = {
    "Monday": 0,
    "Tuesday": 1,
    "Wednesday": 2,
    "Thursday": 3,
    "Friday": 4,
    "Saturday": 5,
    "Sunday": 6,
}
MAX_PERIODS = 100  # per monitor
_CLOCK = re.compile(r"([01][0-9]|2[0-3]):([0-5][0-9])")
DAY = dt.timedelta(days=1)


def zone(name: str) -> zoneinfo.ZoneInfo:
    """The IANA zone of that name; ValueError says it is not one."""
    try:
        return zoneinfo.ZoneInfo(name)
    except (zoneinfo.ZoneInfoNotFoundError, ValueError, OSError):
        raise ValueError(
            f"{name[:64]!r} is not an IANA time zone name (such as UTC or Europe/Amsterdam)"
        ) from None


def _clock(value: str) -> dt.time:
    match = _CLOCK.fullmatch(value)
    if not match:
        raise ValueError(f"{value[:20]!r} is not a time of day as HH:mm (24-hour, 00:00 to 23:59)")
    return dt.time(int(match[1]), int(match[2]))


def _moment(value: str) -> dt.datetime:
    try:
        moment = dt.datetime.fromisoformat(value)
    except ValueError:
        raise ValueError(
            f"{value[:40]!r} is not a date and time as yyyy-MM-ddTHH:mm:ss "
            "(in the period's TimeZone, or with an offset)"
        ) from None
    return moment


def _local(text: str, tz: zoneinfo.ZoneInfo) -> float:
    """Epoch seconds of a date and time: with its own offset, or else in `tz`."""
    moment = _moment(text)
    return (moment if moment.tzinfo else moment.replace(tzinfo=tz)).timestamp()


class MaintenancePeriod(BaseModel):
    """One maintenance period as the API and the agents see it. The fields a ScheduleMode does
    not use are stored as null (a GET shows every field, as Uptrends does)."""

    model_config = ConfigDict(extra="forbid", strict=True)  # "1" is not a MonthDay

    Id: Annotated[int, Field(ge=0, lt=2**31)] = 0
    ScheduleMode: ScheduleModeName
    MaintenanceType: MaintenanceTypeName
    StartDateTime: str | None = None
    EndDateTime: str | None = None
    WeekDay: WeekDayName | None = None
    MonthDay: Annotated[int, Field(ge=1, le=31)] | None = None
    StartTime: str | None = None
    EndTime: str | None = None
    Description: Annotated[str, Field(max_length=1000)] = ""
    # Picket: the zone of the times, as GET /Timezone numbers it, and its IANA name (set by
    # the controller from the id; what the agents read)
    TimeZoneId: Annotated[int, Field(ge=0, lt=2**31)] | None = None
    TimeZone: Annotated[str, Field(min_length=1, max_length=64)] = "UTC"

    @field_validator("TimeZone")
    @classmethod
    def _known_zone(cls, name: str) -> str:
        zone(name)
        return name

    @field_validator("StartTime", "EndTime")
    @classmethod
    def _hh_mm(cls, value: str | None) -> str | None:
        if value is not None:
            _clock(value)
        return value

    @field_validator("StartDateTime", "EndDateTime")
    @classmethod
    def _date_time(cls, value: str | None) -> str | None:
        if value is None:
            return None
        moment = _moment(value)
        if moment.tzinfo is None:
            return moment.strftime("%Y-%m-%dT%H:%M:%S")
        return moment.isoformat(timespec="seconds")

    @model_validator(mode="after")
    def _fields_of_the_mode(self) -> MaintenancePeriod:
        one_time = self.ScheduleMode == "OneTime"
        needed = ["StartDateTime", "EndDateTime"] if one_time else ["StartTime", "EndTime"]
        if self.ScheduleMode == "Weekly":
            needed.append("WeekDay")
        if self.ScheduleMode == "Monthly":
            needed.append("MonthDay")
        missing = [name for name in needed if getattr(self, name) is None]
        if missing:
            raise ValueError(
                f"{', '.join(missing)}: required when ScheduleMode is {self.ScheduleMode}"
            )
        unused = {"StartDateTime", "EndDateTime", "StartTime", "EndTime", "WeekDay", "MonthDay"}
        for name in sorted(unused - set(needed)):
            setattr(self, name, None)
        if one_time:
            schedule = Schedule.of(self)
            if schedule.end <= schedule.start:
                raise ValueError("EndDateTime: must be later than StartDateTime")
        return self


@dataclass(frozen=True)
class Schedule:
    """A period ready to answer "in force at t?" (epoch seconds) many times over."""

    mode: str
    kind: str
    tz: zoneinfo.ZoneInfo
    start: float = 0.0  # OneTime: epoch seconds
    end: float = 0.0
    start_time: dt.time = dt.time()
    end_time: dt.time = dt.time()
    weekday: int | None = None
    month_day: int | None = None

    @classmethod
    def of(cls, period: MaintenancePeriod) -> Schedule:
        tz = zone(period.TimeZone)
        if period.ScheduleMode == "OneTime":
            assert period.StartDateTime is not None and period.EndDateTime is not None
            start, end = (_local(text, tz) for text in (period.StartDateTime, period.EndDateTime))
            return cls("OneTime", period.MaintenanceType, tz, start=start, end=end)
        assert period.StartTime is not None and period.EndTime is not None
        return cls(
            period.ScheduleMode,
            period.MaintenanceType,
            tz,
            start_time=_clock(period.StartTime),
            end_time=_clock(period.EndTime),
            weekday=WEEKDAY_NUMBER[period.WeekDay] if period.WeekDay else None,
            month_day=period.MonthDay,
        )

    def _starts_on(self, day: dt.date) -> bool:
        if self.mode == "Weekly":
            return day.weekday() == self.weekday
        if self.mode == "Monthly":
            assert self.month_day is not None
            last = calendar.monthrange(day.year, day.month)[1]
            return day.day == min(self.month_day, last)
        return True  # Daily

    def _window_from(self, day: dt.date) -> tuple[float, float]:
        start = dt.datetime.combine(day, self.start_time, tzinfo=self.tz)
        end_day = day if self.end_time > self.start_time else day + DAY
        end = dt.datetime.combine(end_day, self.end_time, tzinfo=self.tz)
        return start.timestamp(), end.timestamp()

    def covers(self, moment: float) -> bool:
        """In force at `moment`: from its start (included) to its end (excluded)."""
        if self.mode == "OneTime":
            return self.start <= moment < self.end
        today = dt.datetime.fromtimestamp(moment, self.tz).date()
        # a window that began the day before may still run (past midnight)
        for day in (today - DAY, today):
            if self._starts_on(day):
                start, end = self._window_from(day)
                if start <= moment < end:
                    return True
        return False

    def windows(self, since: float, until: float) -> list[tuple[float, float]]:
        """The windows that overlap [since, until), as (start, end) epoch seconds."""
        if self.mode == "OneTime":
            return [(self.start, self.end)] if self.start < until and since < self.end else []
        found: list[tuple[float, float]] = []
        day = dt.datetime.fromtimestamp(since, self.tz).date() - DAY
        last = dt.datetime.fromtimestamp(until, self.tz).date()
        while day <= last:
            if self._starts_on(day):
                start, end = self._window_from(day)
                if start < until and since < end:
                    found.append((start, end))
            day += DAY
        return found


def schedules(periods: Iterable[MaintenancePeriod]) -> tuple[Schedule, ...]:
    return tuple(Schedule.of(p) for p in periods)


def in_force(compiled: Sequence[Schedule], moment: float) -> frozenset[str]:
    """The maintenance types (DisableMonitoring, DisableNotifications) in force at `moment`."""
    return frozenset(s.kind for s in compiled if s.covers(moment))
